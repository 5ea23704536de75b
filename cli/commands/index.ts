import type { CommandModule } from 'yargs';
import type { GlobalArgs } from '../common.js';
import { doctor } from './doctor.js';

// One module per command; each only parses its options and calls the library.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<GlobalArgs, any>[] = [doctor];

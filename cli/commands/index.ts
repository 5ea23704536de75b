import type { CommandModule } from 'yargs';
import type { GlobalArgs } from '../common.js';
import { ablateCommand } from './ablate.js';
import { attentionCommand } from './attention.js';
import { benchCommand } from './bench.js';
import { doctor } from './doctor.js';
import { emergenceCommand } from './emergence.js';
import { generateCommand } from './generate.js';
import { prepare } from './prepare.js';
import { scoreCommand } from './score.js';
import { streamEvalCommand } from './stream-eval.js';
import { trainCommand } from './train.js';
import { validateCommand } from './validate.js';

// One module per command; each only parses its options and calls the library.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export const commands: CommandModule<GlobalArgs, any>[] = [doctor, prepare, trainCommand, scoreCommand, streamEvalCommand, generateCommand, attentionCommand, emergenceCommand, benchCommand, ablateCommand, validateCommand];

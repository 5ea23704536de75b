/** Entry of a data-parallel training helper process (see train/replicas.ts). */
import { initBackend, retainFreedMemory, type BackendName } from '../core/backend.js';
import { replicaMain } from './replicas.js';

replicaMain(async (backend) => {
  await initBackend({ prefer: backend as BackendName, quiet: true, intraOpThreads: 1 });
  retainFreedMemory();
});

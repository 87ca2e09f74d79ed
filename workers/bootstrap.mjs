// Node 20 cannot start a worker from a .ts file, even when the main thread
// runs under tsx. This bootstrap registers tsx's loader inside the worker and
// then imports the real TypeScript entry named in workerData.
import { workerData } from 'node:worker_threads';
import { register } from 'tsx/esm/api';

register();
await import(workerData.__entry);

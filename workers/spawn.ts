/**
 * Starts a worker thread from one of the entries in workers/, on any runtime.
 *
 * - Node runs the tsc build directly; from TypeScript source it goes through
 *   bootstrap.mjs, which registers tsx inside the worker first.
 * - Bun and Deno start `.ts` workers themselves, as web Workers.
 *
 * Every entry attaches its message listener synchronously and posts
 * `{ type: 'ready' }` before anything else, because Deno drops messages that
 * arrive before the listener exists. `spawnWorker` resolves only after that.
 */
import { Worker as NodeWorker } from 'node:worker_threads';
import { errors } from '../engine/errors.ts';
import { runtime, sourceExtension } from '../engine/runtime.ts';

export interface WorkerHandle {
  post(message: unknown): void;
  onMessage(listener: (message: any) => void): void;
  /** Called once if the worker dies or fails to load. */
  onError(listener: (error: Error) => void): void;
  terminate(): Promise<void>;
}

/** How long a worker may take to post `ready` before start-up counts as failed. */
export const workerStartTimeoutMs = 15_000;

/** `name` is the entry's file name without extension, e.g. `hasher`. */
export function spawnWorker(name: string): Promise<WorkerHandle> {
  const entry = new URL(`./${name}${sourceExtension}`, import.meta.url);
  const handle = runtime === 'node' ? nodeWorker(entry) : webWorker(entry);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      void handle.terminate();
      reject(errors.WORKER(`Cannot start worker '${name}': no ready message within ${workerStartTimeoutMs} ms`));
    }, workerStartTimeoutMs);
    let started = false;
    handle.onError((err) => {
      if (started) return;
      clearTimeout(timer);
      reject(errors.WORKER(`Cannot start worker '${name}': ${err.message}`));
    });
    handle.onMessage((msg) => {
      if (!started && msg && msg.type === 'ready') {
        started = true;
        clearTimeout(timer);
        resolve(handle);
      }
    });
  });
}

/** Listeners for a worker's death: each called at most once, then dropped. */
function deathListeners(): { add(l: (e: Error) => void): void; fire(e: Error): void; clear(): void } {
  let listeners: Array<(e: Error) => void> = [];
  return {
    add: (l) => void listeners.push(l),
    fire: (e) => {
      const ls = listeners;
      listeners = [];
      for (const l of ls) l(e);
    },
    clear: () => void (listeners = []),
  };
}

function nodeWorker(entry: URL): WorkerHandle {
  const fromSource = entry.pathname.endsWith('.ts');
  const worker = fromSource
    ? new NodeWorker(new URL('./bootstrap.mjs', import.meta.url), { workerData: { __entry: entry.href } })
    : new NodeWorker(entry);
  const listeners: Array<(m: unknown) => void> = [];
  worker.on('message', (m) => {
    for (const l of listeners) l(m);
  });
  const death = deathListeners();
  worker.on('error', (e) => death.fire(e as Error));
  worker.on('exit', (code) => death.fire(new Error(`worker exited with code ${code}`)));
  return {
    post: (m) => worker.postMessage(m),
    onMessage: (l) => void listeners.push(l),
    onError: (l) => death.add(l),
    terminate: async () => {
      death.clear();
      await worker.terminate();
    },
  };
}

function webWorker(entry: URL): WorkerHandle {
  const worker = new Worker(entry, { type: 'module' });
  const listeners: Array<(m: unknown) => void> = [];
  worker.addEventListener('message', (e: MessageEvent) => {
    for (const l of listeners) l(e.data);
  });
  const death = deathListeners();
  worker.addEventListener('error', (e: ErrorEvent) => {
    e.preventDefault?.();
    death.fire(new Error(e.message || 'worker error'));
  });
  return {
    post: (m) => worker.postMessage(m),
    onMessage: (l) => void listeners.push(l),
    onError: (l) => death.add(l),
    terminate: async () => {
      death.clear();
      worker.terminate();
    },
  };
}

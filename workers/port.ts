/**
 * The worker side of spawn.ts: one way to talk to the parent on every runtime.
 *
 * Import this first in a worker entry and call `parentPort.onMessage`
 * synchronously at the top of the file: Deno drops messages that arrive
 * before a listener exists. Then post `{ type: 'ready' }`.
 */
import { parentPort as nodeParentPort } from 'node:worker_threads';

export interface ParentPort {
  post(message: unknown): void;
  onMessage(listener: (message: any) => void): void;
}

const web = globalThis as unknown as {
  postMessage(m: unknown): void;
  addEventListener(type: 'message', l: (e: MessageEvent) => void): void;
};

export const parentPort: ParentPort = nodeParentPort
  ? {
      post: (m) => nodeParentPort!.postMessage(m),
      onMessage: (l) => void nodeParentPort!.on('message', l),
    }
  : {
      post: (m) => web.postMessage(m),
      onMessage: (l) => web.addEventListener('message', (e) => l(e.data)),
    };

/**
 * A primary's control endpoint (`--control URL`): answers status requests
 * over tcp:// or ws:// with the same framing as the mirror link. The
 * consistency-group issue adds FREEZE and RUN here.
 *
 * A connection that sends a bad frame or an unknown request gets a refusal
 * with a stable code and is closed; nothing changes state.
 */
import { errors, type BlockmirrorError } from './errors.ts';
import { FrameDecoder } from './frame-decoder.ts';
import { FrameEncoder } from './frame-encoder.ts';
import { FrameType } from './frame.ts';
import { connect, listen, type Link, type Listener } from './link.ts';

/** Requests carry no payload; a status reply carries JSON of at most this many bytes. */
export const statusBytesMax = 1024 * 1024;

export class ControlServer {
  readonly listener: Listener;

  private constructor(listener: Listener) {
    this.listener = listener;
  }

  static async start(url: string, status: () => object): Promise<ControlServer> {
    const listener = await listen(url, (link) => serve(link, status), { payloadBytesMax: 1024 });
    return new ControlServer(listener);
  }

  get url(): string {
    const e = this.listener.endpoint;
    return `${e.scheme}://${e.host}:${this.listener.port}`;
  }

  close(): Promise<void> {
    return this.listener.close();
  }
}

function serve(link: Link, status: () => object): void {
  const encoder = new FrameEncoder(statusBytesMax);
  const refuse = (e: BlockmirrorError) => {
    link.send(encoder.encode([FrameType.refuse, e.code, e.message]));
    link.end();
  };
  const decoder = new FrameDecoder({
    payloadBytesMax: 0,
    onError: refuse,
    onFrame: (frame) => {
      if (frame.type === FrameType.status) {
        return void link.send(encoder.encode([FrameType.statusReply], new TextEncoder().encode(JSON.stringify(status()))));
      }
      if (frame.type === FrameType.ping) return void link.send(encoder.encode([FrameType.pong, frame.header[1]]));
      refuse(errors.FRAME_TYPE(`Cannot answer frame type ${frame.type} on a control endpoint`));
    },
  });
  link.onData((chunk) => decoder.feed(chunk));
  link.onClose(() => {});
}

/** Asks the control endpoint at `url` for its status. */
export async function requestStatus(url: string, timeoutMs = 5000): Promise<Record<string, unknown>> {
  const link = await connect(url, timeoutMs);
  const encoder = new FrameEncoder(0);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      link.destroy('timeout');
      reject(errors.TIMEOUT(`Cannot read status from ${url}: no answer within ${timeoutMs} ms`));
    }, timeoutMs);
    const done = (f: () => void) => {
      clearTimeout(timer);
      link.destroy('done');
      f();
    };
    const decoder = new FrameDecoder({
      payloadBytesMax: statusBytesMax,
      onError: (e) => done(() => reject(e)),
      onFrame: (frame) => {
        if (frame.type === FrameType.statusReply) {
          const text = new TextDecoder().decode(frame.payload);
          return done(() => resolve(JSON.parse(text)));
        }
        if (frame.type === FrameType.refuse) return done(() => reject(errors.REFUSED(`${url} refused: ${frame.header[2]} [${frame.header[1]}]`)));
      },
    });
    link.onData((chunk) => decoder.feed(chunk));
    link.onClose((reason) => done(() => reject(errors.LINK_LOST(`Cannot read status from ${url}: ${reason}`))));
    link.send(encoder.encode([FrameType.status]));
  });
}

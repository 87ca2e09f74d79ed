/**
 * A dependent-write workload and its consistent-cut checker, for the
 * consistency-group tests, the soak script and the demo's cousins.
 *
 * One writer issues records strictly one after another (write i+1 is issued
 * only after write i completed), round-robin over volumes that may sit on
 * different primaries, channels, transports and processes. Record i goes to
 * volume (i-1) mod V, block ((i-1) div V) mod B, and fills the whole block
 * with a pattern derived from i, so a torn or foreign block is recognised.
 *
 * The secondary images form a consistent cut exactly when they hold a
 * prefix 1..k of the records: every block holds the newest record ≤ k that
 * maps to it (or zeroes if none does). `checkCut` finds k (the newest record
 * present anywhere) and reports every block that differs from that.
 */
export const recordBytes = 4096;
const magic = 0x52444d42; // 'BMDR'

export interface ChainTarget {
  write(offset: number, data: Uint8Array): Promise<void>;
}

export function recordPlace(seq: number, volumes: number, blocks: number): { volume: number; block: number } {
  const i = seq - 1;
  return { volume: i % volumes, block: Math.floor(i / volumes) % blocks };
}

export function recordBlock(seq: number, target = new Uint8Array(recordBytes)): Uint8Array {
  const view = new DataView(target.buffer, target.byteOffset, target.byteLength);
  view.setUint32(0, magic, true);
  view.setUint32(4, seq, true);
  let x = (seq * 0x9e3779b1) >>> 0;
  for (let at = 8; at < recordBytes; at += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    view.setUint32(at, x >>> 0, true);
  }
  return target;
}

/** The record a block holds: its sequence number, 0 for zeroes, -1 for anything else (torn, foreign). */
export function readRecord(block: Uint8Array): number {
  if (block.every((b) => b === 0)) return 0;
  const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
  if (view.getUint32(0, true) !== magic) return -1;
  const seq = view.getUint32(4, true);
  const expected = recordBlock(seq);
  for (let i = 0; i < recordBytes; i++) if (expected[i] !== block[i]) return -1;
  return seq;
}

/** The sequential writer. `next` is the sequence number of the next record. */
export class DependentChain {
  next = 1;
  private readonly targets: ChainTarget[];
  /** Blocks of each volume the chain uses (from offset 0). */
  readonly blocks: number;
  private readonly scratch = new Uint8Array(recordBytes);
  private running: Promise<void> | undefined;
  private stopRequested = false;
  /** Errors a write raised (BM_ERR_FROZEN under policy stop, say), by code. */
  readonly errorsByCode = new Map<string, number>();

  constructor(targets: ChainTarget[], blocks: number, first = 1) {
    this.targets = targets;
    this.blocks = blocks;
    this.next = first;
  }

  /** Writes `count` records, one after another. `before(seq)` runs before each is issued. */
  async writeSome(count: number, before?: (seq: number) => void): Promise<void> {
    for (let n = 0; n < count && !this.stopRequested; n++) await this.writeOne(before);
  }

  /** Writes in the background until `stop()`. */
  start(before?: (seq: number) => void): void {
    this.stopRequested = false;
    this.running = (async () => {
      // Writes that complete locally resolve in microtasks alone: yield to
      // the event loop now and then, or timers and sockets would starve.
      for (let n = 1; !this.stopRequested; n++) {
        await this.writeOne(before);
        if (n % 8 === 0) await new Promise((r) => setTimeout(r, 0));
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopRequested = true;
    await this.running;
    this.running = undefined;
    this.stopRequested = false;
  }

  private async writeOne(before?: (seq: number) => void): Promise<void> {
    const seq = this.next;
    before?.(seq);
    const { volume, block } = recordPlace(seq, this.targets.length, this.blocks);
    try {
      await this.targets[volume]!.write(block * recordBytes, recordBlock(seq, this.scratch));
      this.next++;
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'unknown';
      this.errorsByCode.set(code, (this.errorsByCode.get(code) ?? 0) + 1);
      // A refused write is retried later with the same record; do not spin.
      await new Promise((r) => setTimeout(r, 2));
    }
  }
}

export interface CutReport {
  /** The newest record found on any image. */
  newest: number;
  /** Blocks that do not hold what a cut at `newest` needs. */
  violations: Array<{ volume: number; block: number; found: number; expected: number }>;
}

/** Checks that `images` (one per volume, in chain order) hold a prefix of the chain. */
export function checkCut(images: Uint8Array[], blocks: number): CutReport {
  const volumes = images.length;
  const found = images.map((image) => Array.from({ length: blocks }, (_, b) => readRecord(image.subarray(b * recordBytes, (b + 1) * recordBytes))));
  const newest = Math.max(0, ...found.flat());
  const violations: CutReport['violations'] = [];
  for (let v = 0; v < volumes; v++) {
    for (let b = 0; b < blocks; b++) {
      // Records that map to (v, b): seq = 1 + v + volumes * (b + blocks * r).
      const first = 1 + v + volumes * b;
      const period = volumes * blocks;
      const expected = newest < first ? 0 : first + period * Math.floor((newest - first) / period);
      if (found[v]![b] !== expected) violations.push({ volume: v, block: b, found: found[v]![b]!, expected });
    }
  }
  return { newest, violations };
}

/**
 * Hashing pool worker: keeps the segment codes of attached volumes current.
 *
 * Every `delayMs` it makes a quiet pass over the chunks it owns in each
 * attached volume (a segment is rehashed once it has stayed unchanged for a
 * pass, so bursts of writes cost one rehash, not one per write). A pass is
 * cut at `passBudgetMs` so that commands from the main thread (settle,
 * detach, stop) are answered promptly; the next pass resumes where it
 * stopped.
 *
 * Messages in:  init {stats, index}, attach {id, setup, delayMs}, detach {id, req}, settle {id, req, range?}, stop.
 * Messages out: ready, done {req}, failed {req, error}.
 */
import { parentPort } from './port.ts';
import { SegmentHasher, type HasherSetup } from '../engine/segment-hasher.ts';
import { BlockmirrorError } from '../engine/errors.ts';

// Deno drops messages that arrive before a listener exists: attach first.
parentPort.onMessage((msg) => void handle(msg));

/** Longest stretch of hashing between two looks at the message queue. */
const passBudgetMs = 20;

const volumes = new Map<number, SegmentHasher>();
let delayMs = 5;
/** This worker's share of the pool's cap: the largest share of one core its background passes may take (explicit settles are not capped). */
let dutyMax = 0.25;
let timer: ReturnType<typeof setTimeout> | undefined;
let stopped = false;
/** This worker's counters in the pool's shared stats: segments hashed, bytes hashed. */
let stats = new Float64Array(2);
let statsAt = 0;

function count(result: { hashed: number; bytes: number }): void {
  stats[statsAt] = stats[statsAt]! + result.hashed;
  stats[statsAt + 1] = stats[statsAt + 1]! + result.bytes;
}

async function handle(msg: any): Promise<void> {
  try {
    switch (msg.type) {
      case 'init':
        stats = new Float64Array(msg.stats);
        statsAt = msg.index * 2;
        break;
      case 'attach': {
        const setup: HasherSetup = msg.setup;
        volumes.set(msg.id, await SegmentHasher.create(setup));
        delayMs = msg.delayMs;
        dutyMax = msg.dutyMax;
        schedule(0);
        break;
      }
      case 'detach':
        volumes.delete(msg.id);
        break;
      case 'settle': {
        const hasher = volumes.get(msg.id);
        if (hasher) count(msg.range ? hasher.passRange(msg.range.first, msg.range.end) : hasher.pass('all'));
        break;
      }
      case 'stop':
        stopped = true;
        if (timer) clearTimeout(timer);
        volumes.clear();
        break;
    }
    if (msg.req !== undefined) parentPort.post({ type: 'done', req: msg.req });
  } catch (err) {
    const error = err instanceof BlockmirrorError ? err.toPlain() : { code: 'BM_ERR_WORKER', message: String((err as Error)?.message ?? err) };
    parentPort.post({ type: 'failed', req: msg.req, error });
  }
}

function schedule(ms: number): void {
  if (stopped || timer) return;
  timer = setTimeout(tick, ms);
}

function tick(): void {
  timer = undefined;
  const started = performance.now();
  let more = false;
  for (const hasher of volumes.values()) {
    const result = hasher.pass('quiet', passBudgetMs);
    count(result);
    if (result.cutShort) more = true;
  }
  // Rest long enough that background hashing takes at most `dutyMax` of a
  // core: under a storm of small random writes codes then lag (and are
  // computed on demand by settle) instead of taking a core from the writers.
  const busy = performance.now() - started;
  const rest = dutyMax >= 1 ? 0 : (busy * (1 - dutyMax)) / dutyMax;
  if (volumes.size > 0) schedule(Math.max(more ? 0 : delayMs, rest));
}

parentPort.post({ type: 'ready' });

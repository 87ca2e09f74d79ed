/**
 * Computes segment codes and publishes them into a code table.
 *
 * One `SegmentHasher` serves one volume inside one thread: a pool worker, or
 * the main thread of a volume opened without a pool. It owns the chunks
 * `c` with `c % owners === owner`, so two hashers never work on the same
 * segment (see codes.ts for the seqlock this relies on).
 *
 * XXH3-64 runs in our WebAssembly SIMD kernel, reading the volume's shared
 * memory in place. xxh128 and blake3 come from hash-wasm, which copies its
 * input into its own memory first (slower, and only used when chosen).
 */
import { createBLAKE3, createXXHash128, type IHasher } from 'hash-wasm';
import { chunkSegments, CodeTable, type CodeAlgorithm, type SharedCodeTable } from './codes.ts';
import { instantiateKernel, type Kernel } from './kernel.ts';
import { VolumeMemory, type SharedMemoryLayout } from './memory.ts';

export type HashMode = 'quiet' | 'all';

export interface HasherSetup {
  layout: SharedMemoryLayout;
  table: SharedCodeTable;
  segmentSize: number;
  owner: number;
  owners: number;
}

export interface PassResult {
  /** Segments hashed in this pass. */
  hashed: number;
  /** Bytes hashed in this pass. */
  bytes: number;
  /** True when the pass stopped at its time budget with owned chunks left unvisited. */
  cutShort: boolean;
}

type Compute = (offset: number, length: number) => bigint | Uint8Array;

export class SegmentHasher {
  readonly table: CodeTable;
  private readonly memory: VolumeMemory;
  private readonly segmentSize: number;
  private readonly owner: number;
  private readonly owners: number;
  private readonly compute: Compute;
  /** Generation last seen per segment, to hash only segments that went quiet. */
  private readonly seen: Int32Array;
  /** Where the next pass resumes, in owned-chunk order, after a cut-short pass. */
  private resumeChunk = 0;

  private constructor(setup: HasherSetup, compute: Compute, memory: VolumeMemory) {
    this.table = CodeTable.fromShared(setup.table);
    this.memory = memory;
    this.segmentSize = setup.segmentSize;
    this.owner = setup.owner;
    this.owners = setup.owners;
    this.compute = compute;
    this.seen = new Int32Array(this.table.segmentCount);
  }

  static async create(setup: HasherSetup): Promise<SegmentHasher> {
    const memory = VolumeMemory.fromShared(setup.layout);
    const compute = await makeCompute(setup.table.algorithm, memory);
    return new SegmentHasher(setup, compute, memory);
  }

  /** Hashes one segment and publishes its code for the generation read first. */
  hashSegment(segment: number): number {
    const generation = Atomics.load(this.table.generation, segment);
    const offset = segment * this.segmentSize;
    const length = Math.min(this.segmentSize, this.memory.size - offset);
    this.table.publish(segment, generation, this.compute(offset, length));
    return length;
  }

  /** Hashes every invalid owned segment in [first, end). Returns what it hashed. */
  passRange(first: number, end: number): PassResult {
    const { generation, validGeneration } = this.table;
    let hashed = 0;
    let bytes = 0;
    const lastChunk = Math.floor((end - 1) / chunkSegments);
    for (let c = Math.floor(first / chunkSegments); c <= lastChunk; c++) {
      if (c % this.owners !== this.owner) continue;
      const stop = Math.min(end, (c + 1) * chunkSegments);
      for (let s = Math.max(first, c * chunkSegments); s < stop; s++) {
        if (Atomics.load(validGeneration, s) === Atomics.load(generation, s)) continue;
        bytes += this.hashSegment(s);
        hashed++;
      }
    }
    return { hashed, bytes, cutShort: false };
  }

  /**
   * One pass over the owned chunks. In `quiet` mode only dirty chunks are
   * visited and a segment is hashed only once its generation stayed the same
   * since the previous pass (so a segment under a stream of writes is not
   * rehashed after every one of them). In `all` mode every invalid owned
   * segment is hashed now. A pass stops after `budgetMs` (checked between
   * chunks) and the next one resumes where it stopped.
   */
  pass(mode: HashMode, budgetMs = Infinity): PassResult {
    const { generation, validGeneration, dirty, chunkCount, segmentCount } = this.table;
    const deadline = budgetMs === Infinity ? Infinity : performance.now() + budgetMs;
    const ownedCount = Math.ceil((chunkCount - this.owner) / this.owners);
    let hashed = 0;
    let bytes = 0;
    for (let k = 0; k < ownedCount; k++) {
      const i = (this.resumeChunk + k) % ownedCount;
      const c = this.owner + i * this.owners;
      if (mode === 'quiet' && Atomics.load(dirty, c) === 0) continue;
      Atomics.store(dirty, c, 0);
      let again = false;
      const end = Math.min(segmentCount, (c + 1) * chunkSegments);
      for (let s = c * chunkSegments; s < end; s++) {
        const g = Atomics.load(generation, s);
        if (Atomics.load(validGeneration, s) === g) continue;
        if (mode === 'quiet' && this.seen[s] !== g) {
          this.seen[s] = g;
          again = true;
          continue;
        }
        bytes += this.hashSegment(s);
        hashed++;
        if (!this.table.isValid(s)) again = true;
      }
      if (again) Atomics.store(dirty, c, 1);
      if (performance.now() > deadline && k + 1 < ownedCount) {
        this.resumeChunk = (i + 1) % ownedCount;
        return { hashed, bytes, cutShort: true };
      }
    }
    this.resumeChunk = 0;
    return { hashed, bytes, cutShort: false };
  }
}

async function makeCompute(algorithm: CodeAlgorithm, memory: VolumeMemory): Promise<Compute> {
  if (algorithm === 'xxh3') {
    const kernels: Kernel[] = memory.memories.map((m) => instantiateKernel(m));
    return (offset, length) => {
      const { memory: index, address } = memory.locate(offset);
      return kernels[index]!.xxh3(address, length);
    };
  }
  const hasher: IHasher = algorithm === 'xxh128' ? await createXXHash128() : await createBLAKE3();
  return (offset, length) => {
    hasher.init();
    hasher.update(memory.view(offset, length));
    return hasher.digest('binary');
  };
}

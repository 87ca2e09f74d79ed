/**
 * The raw image file behind a volume: `DIR/NAME.img`, exactly the volume's
 * size, byte for byte what the volume holds.
 *
 * Writes go through the operating system's cache with a positioned write
 * before the call that made them returns, so a process killed with SIGKILL
 * loses nothing it completed; `flush()` (fdatasync) makes them survive power
 * loss too. The file never sees the network and knows nothing of codes.
 */
import fs from 'node:fs';
import { errors } from './errors.ts';
import type { VolumeMemory } from './memory.ts';

/** Largest single read or write issued to the file (bounds the zero buffer too). */
export const ioChunkBytes = 8 * 1024 * 1024;

let zeroes: Uint8Array | undefined;

export class ImageFile {
  readonly path: string;
  readonly size: number;
  private fd: number;
  /**
   * Set when a sync failed. The kernel may have dropped the dirty pages and
   * their error with them, so a later sync that succeeds proves nothing:
   * every later write and flush fails with this error, until the image is
   * opened again (and, at the next start, compared by codes).
   */
  private failure: Error | undefined;

  private constructor(path: string, fd: number, size: number) {
    this.path = path;
    this.fd = fd;
    this.size = size;
  }

  /** Creates a new image of `size` zero bytes; an existing file is refused. */
  static create(path: string, size: number): ImageFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'wx+');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') throw errors.IMAGE_EXISTS(`Cannot create image '${path}': it already exists (open it instead)`);
      throw errors.IMAGE_OPEN(`Cannot create image '${path}': ${code ?? (e as Error).message}`);
    }
    try {
      fs.ftruncateSync(fd, size);
    } catch (e) {
      fs.closeSync(fd);
      fs.rmSync(path, { force: true });
      throw errors.IO(`Cannot size image '${path}' to ${size} bytes: ${(e as NodeJS.ErrnoException).code ?? e}`);
    }
    return new ImageFile(path, fd, size);
  }

  /** Opens an existing image; when `size` is given the file must have exactly that size. */
  static open(path: string, size?: number): ImageFile {
    let fd: number;
    try {
      fd = fs.openSync(path, 'r+');
    } catch (e) {
      throw errors.IMAGE_OPEN(`Cannot open image '${path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    const stat = fs.fstatSync(fd);
    if (!stat.isFile()) {
      fs.closeSync(fd);
      throw errors.IMAGE_OPEN(`Cannot open image '${path}': it is not a regular file`);
    }
    if (size !== undefined && stat.size !== size) {
      fs.closeSync(fd);
      throw errors.IMAGE_SIZE(`Cannot open image '${path}': it holds ${stat.size} bytes, the volume has ${size}`);
    }
    return new ImageFile(path, fd, stat.size);
  }

  /** Reads the whole image into volume memory. */
  load(memory: VolumeMemory): void {
    const buffer = new Uint8Array(Math.min(ioChunkBytes, this.size));
    for (let offset = 0; offset < this.size; ) {
      const want = Math.min(buffer.length, this.size - offset);
      const got = this.io('read', () => fs.readSync(this.fd, buffer, 0, want, offset), offset);
      if (got === 0) throw errors.IO(`Cannot read image '${this.path}' at ${offset}: the file ended early`);
      memory.write(offset, buffer.subarray(0, got));
      offset += got;
    }
  }

  /**
   * Positioned write of all of `data` at `offset`, through the OS cache. If
   * it fails part way (ENOSPC, EIO), `restore(done)` is asked for the old
   * bytes of what was written, which are put back, so a failed write leaves
   * the file as it was wherever that is possible.
   */
  write(offset: number, data: Uint8Array, restore?: (length: number) => Uint8Array): void {
    this.checkHealthy('write');
    let done = 0;
    try {
      while (done < data.length) done += this.io('write', () => fs.writeSync(this.fd, data, done, data.length - done, offset + done), offset + done);
    } catch (e) {
      if (done > 0 && restore) {
        try {
          const old = restore(done);
          for (let put = 0; put < old.length; ) put += fs.writeSync(this.fd, old, put, old.length - put, offset + put);
        } catch {
          this.failure ??= errors.IO(`Cannot trust image '${this.path}': a failed write at ${offset} could not be undone`);
        }
      }
      throw e;
    }
  }

  /** Writes `length` zero bytes at `offset`. */
  zero(offset: number, length: number, restore?: (at: number, length: number) => Uint8Array): void {
    zeroes ??= new Uint8Array(Math.min(ioChunkBytes, 1024 * 1024));
    for (let done = 0; done < length; ) {
      const n = Math.min(zeroes.length, length - done);
      const at = done;
      try {
        this.write(offset + done, zeroes.subarray(0, n), restore && ((k) => restore(offset + at, k)));
      } catch (e) {
        // Put back the whole pieces already zeroed too.
        if (restore && at > 0) {
          try {
            this.write(offset, restore(offset, at));
          } catch {
            this.failure ??= errors.IO(`Cannot trust image '${this.path}': a failed zero write at ${offset} could not be undone`);
          }
        }
        throw e;
      }
      done += n;
    }
  }

  /** Makes every completed write durable (fdatasync). A failure is final (see `failure`). */
  flush(): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      fs.fdatasync(this.fd, (e) => {
        if (!e) return resolve();
        this.failure ??= errors.IO(`Cannot flush image '${this.path}': ${e.code ?? e.message}; its durability is unknown from now on`);
        reject(this.failure);
      });
    });
  }

  private checkHealthy(what: string): void {
    if (this.failure) throw errors.IO(`Cannot ${what} image '${this.path}': ${this.failure.message}`);
  }

  /** `flush()`, blocking: for the rare paths that must finish before anything else runs (a rollback). */
  flushSync(): void {
    if (this.failure) throw this.failure;
    try {
      fs.fdatasyncSync(this.fd);
    } catch (e) {
      this.failure ??= errors.IO(`Cannot flush image '${this.path}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}; its durability is unknown from now on`);
      throw this.failure;
    }
  }

  /** Flushes and closes; the file is closed even when the flush fails (which is then thrown). */
  async close(): Promise<void> {
    if (this.fd < 0) return;
    try {
      await this.flush();
    } finally {
      fs.closeSync(this.fd);
      this.fd = -1;
    }
  }

  private io(what: string, op: () => number, offset: number): number {
    try {
      return op();
    } catch (e) {
      throw errors.IO(`Cannot ${what} image '${this.path}' at ${offset}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
}

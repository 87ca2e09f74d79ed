/**
 * What the long-running subcommands share: waiting for SIGTERM or SIGINT,
 * parsing `NAME:SIZE`, reading a secret file, and printing events as JSON
 * lines.
 */
import fs from 'node:fs';
import { readSecretFile } from './auth.ts';
import { errors } from './errors.ts';
import { parseSize } from './geometry.ts';
import { onStopSignal } from './runtime.ts';

/** Resolves with the signal's name on the first SIGTERM or SIGINT. */
export function untilStopped(): Promise<string> {
  return new Promise((resolve) => onStopSignal(resolve));
}

export function parseVolumeSpec(spec: string): { name: string; size: number } {
  const at = spec.lastIndexOf(':');
  if (at <= 0) throw errors.USAGE(`primary: cannot read volume '${spec}': write NAME:SIZE, e.g. db:256MiB`);
  return { name: spec.slice(0, at), size: parseSize(spec.slice(at + 1)) };
}

export function secretFrom(file: string | undefined): Uint8Array | undefined {
  return file === undefined ? undefined : readSecretFile(file);
}

/** Writes each event as one JSON line to `file` (appending) or to stdout. */
export function eventWriter(file: string | undefined): (event: object) => void {
  if (file === undefined) return (event) => process.stdout.write(JSON.stringify(event) + '\n');
  const fd = fs.openSync(file, 'a');
  return (event) => fs.writeSync(fd, JSON.stringify(event) + '\n');
}

export function log(line: string): void {
  process.stderr.write(`blockmirror: ${line}\n`);
}

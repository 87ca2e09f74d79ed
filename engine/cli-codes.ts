/**
 * `blockmirror codes`: prints the segment codes of a raw image, the same
 * codes a volume keeps, so two images can be compared segment by segment
 * with nothing but `diff`.
 */
import path from 'node:path';
import { parseArgs } from './args.ts';
import { errors } from './errors.ts';
import { defaultSegmentBytes, parseSize } from './geometry.ts';
import { Volume } from './volume.ts';
import { checkAlgorithm, codeBytes } from './codes.ts';

const help = `Usage: blockmirror codes --image FILE.img [--segment-size 64KiB] [--code xxh3|xxh128|blake3] [--json]

Prints one line per segment: its index, byte offset and code (hex).
With --json, prints one JSON object {segmentSize, algorithm, codes: [hex, ...]}.
`;

export async function codesCommand(argv: string[]): Promise<number> {
  const args = parseArgs('codes', argv, { image: { required: true }, 'segment-size': {}, code: {}, json: { flag: true } });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const image = args.image as string;
  if (!image.endsWith('.img')) throw errors.USAGE(`codes: the image '${image}' must be a NAME.img file`);
  const segmentSize = args['segment-size'] ? parseSize(args['segment-size'] as string) : defaultSegmentBytes;
  const code = checkAlgorithm((args.code as string | undefined) ?? 'xxh3');
  const volume = await Volume.open({
    dir: path.dirname(image),
    name: path.basename(image, '.img'),
    segmentSize,
    blockSize: Math.min(4096, segmentSize),
    code,
  });
  try {
    await volume.settle();
    const { codes } = volume.codes();
    const size = codeBytes[code];
    const hexes: string[] = [];
    for (let s = 0; s < volume.segmentCount; s++) {
      hexes.push(Array.from(codes.subarray(s * size, (s + 1) * size), (b) => b.toString(16).padStart(2, '0')).join(''));
    }
    if (args.json) process.stdout.write(JSON.stringify({ segmentSize, algorithm: code, codes: hexes }) + '\n');
    else process.stdout.write(hexes.map((h, s) => `${s}\t${s * segmentSize}\t${h}\n`).join(''));
    return 0;
  } finally {
    await volume.close();
  }
}

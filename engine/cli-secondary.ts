/** `blockmirror secondary`: runs a secondary node until SIGTERM or SIGINT. */
import { parseArgs } from './args.ts';
import { log, secretFrom, untilStopped } from './cli-run.ts';
import { Secondary } from './secondary.ts';

const help = `Usage: blockmirror secondary --dir DIR --listen URL [--listen URL] [--secret-file FILE]

Receives the writes of primaries and applies them, in order, to DIR/NAME.img.
URL is tcp://HOST:PORT or ws://HOST:PORT. With --secret-file, every primary
must prove it holds the same secret (HMAC challenge; the secret never crosses
the wire). Stops cleanly on SIGTERM or SIGINT, with every image complete.
`;

export async function secondaryCommand(argv: string[]): Promise<number> {
  const args = parseArgs('secondary', argv, { dir: { required: true }, listen: { required: true, repeat: true }, 'secret-file': {} });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const secondary = await Secondary.start({
    dir: args.dir as string,
    listen: args.listen as string[],
    secret: secretFrom(args['secret-file'] as string | undefined),
  });
  log(`secondary listening on ${secondary.urls.join(', ')}, images in ${secondary.dir}`);
  const signal = await untilStopped();
  log(`${signal}: stopping`);
  await secondary.close();
  return 0;
}

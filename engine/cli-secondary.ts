/** `blockmirror secondary`: runs a secondary node until SIGTERM or SIGINT. */
import { parseArgs } from './args.ts';
import { log, secretFrom, untilStopped } from './cli-run.ts';
import { Secondary } from './secondary.ts';
import { ControlServer } from './control-server.ts';

const help = `Usage: blockmirror secondary --dir DIR --listen URL [--listen URL] [--secret-file FILE] [--discard-my-data]
                             [--control URL]

Receives the writes of primaries and applies them, in order, to DIR/NAME.img.
URL is tcp://HOST:PORT or ws://HOST:PORT. With --secret-file, every primary
must prove it holds the same secret (HMAC challenge; the secret never crosses
the wire). A primary's resync compares segment codes and copies only what
differs; a resync that stops half way is resumed, or rolled back with the undo
log (DIR/NAME.undo) before any other use. Split brain (both sides written since
they last agreed) and an image newer than its primary's are refused, unless
--discard-my-data names the primary as the survivor: its resync then
overwrites this side's own changes. Stops cleanly on SIGTERM or SIGINT, with
every image complete.
`;

export async function secondaryCommand(argv: string[]): Promise<number> {
  const args = parseArgs('secondary', argv, { dir: { required: true }, listen: { required: true, repeat: true }, 'secret-file': {}, 'discard-my-data': { flag: true }, control: {} });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const secondary = await Secondary.start({
    dir: args.dir as string,
    listen: args.listen as string[],
    secret: secretFrom(args['secret-file'] as string | undefined),
    discardMyData: args['discard-my-data'] === true,
  });
  let control: ControlServer | undefined;
  try {
    if (args.control) control = await ControlServer.start(args.control as string, secondary.controlEndpoint());
  } catch (e) {
    await secondary.close();
    throw e;
  }
  log(`secondary listening on ${secondary.urls.join(', ')}, images in ${secondary.dir}${control ? `, control on ${control.url}` : ''}`);
  const signal = await untilStopped();
  log(`${signal}: stopping`);
  await control?.close();
  await secondary.close();
  return 0;
}

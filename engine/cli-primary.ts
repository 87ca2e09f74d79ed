/** `blockmirror primary`: runs a primary whose volumes are mirrored, until SIGTERM or SIGINT. */
import { parseArgs } from './args.ts';
import { eventWriter, log, parseVolumeSpec, secretFrom, untilStopped } from './cli-run.ts';
import { ControlServer } from './control-server.ts';
import { errors } from './errors.ts';
import { parseSize } from './geometry.ts';
import { Primary } from './primary.ts';
import { NbdServer } from './nbd-server.ts';

const help = `Usage: blockmirror primary --dir DIR --volume NAME:SIZE [--volume NAME:SIZE] --mirror URL
                           [--mode sync|async] [--secret-file FILE] [--control URL] [--events FILE]
                           [--nbd unix:PATH | --nbd tcp://HOST:PORT] [--resync-rate SIZE]

Serves volumes DIR/NAME.img (created when missing, SIZE with KiB, MiB or GiB)
and mirrors every write to the secondary at URL (tcp://HOST:PORT or
ws://HOST:PORT). sync (default): a write completes when the secondary has
applied it. async: at once; the secondary lags by at most the journal (64 MiB).
--control URL answers 'blockmirror status --control URL', takes 'blockmirror
freeze|run --control URL', and lets a controller ('blockmirror controller
--member URL') join this primary to a consistency group; with --secret-file the
controller and operators must prove they hold the same secret. --nbd exports every
volume over NBD (export name = volume name) for qemu-img, nbdcopy, fio and the
kernel client; a WRITE is answered only once the engine completes it. Events (link and
state changes) are printed as JSON lines to stdout or appended to --events FILE.
A resync compares segment codes with the secondary and copies only what
differs; --resync-rate (e.g. 100MiB, per second and volume) paces its copies.
A secondary's copy is refused until promoted ('blockmirror promote').
Stops cleanly on SIGTERM or SIGINT.
`;

export async function primaryCommand(argv: string[]): Promise<number> {
  const args = parseArgs('primary', argv, {
    dir: { required: true },
    volume: { required: true, repeat: true },
    mirror: { required: true },
    mode: {},
    'secret-file': {},
    control: {},
    events: {},
    nbd: {},
    'resync-rate': {},
  });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const mode = (args.mode as string | undefined) ?? 'sync';
  if (mode !== 'sync' && mode !== 'async') throw errors.USAGE(`primary: --mode must be sync or async, not '${mode}'`);
  const secret = secretFrom(args['secret-file'] as string | undefined);
  const primary = await Primary.start({
    dir: args.dir as string,
    volumes: (args.volume as string[]).map(parseVolumeSpec),
    mirror: args.mirror as string,
    mode,
    secret,
    name: args.control as string | undefined,
    resyncRateBytesPerSec: args['resync-rate'] === undefined ? undefined : parseSize(args['resync-rate'] as string),
  });
  primary.onEvent(eventWriter(args.events as string | undefined));
  let control: ControlServer | undefined;
  let nbd: NbdServer | undefined;
  try {
    if (args.control) control = await ControlServer.start(args.control as string, primary.controlEndpoint(secret));
    if (args.nbd) nbd = await NbdServer.start({ listen: args.nbd as string, exports: primary.pairs });
  } catch (e) {
    await control?.close();
    await primary.close();
    throw e;
  }
  log(
    `primary mirroring ${primary.pairs.map((p) => p.name).join(', ')} to ${primary.mirror} (${mode})` +
      `${control ? `, control on ${control.url}` : ''}${nbd ? `, NBD on ${nbd.address}` : ''}`,
  );
  const signal = await untilStopped();
  log(`${signal}: stopping`);
  await nbd?.close();
  await control?.close();
  await primary.close();
  return 0;
}

/**
 * `blockmirror freeze`, `run` and `verify`: an operator's commands, through a
 * control endpoint. `verify` shows its progress while it runs (a bar on a
 * terminal, a line a second otherwise), read from the endpoint's status.
 */
import { parseArgs } from './args.ts';
import { secretFrom } from './cli-run.ts';
import { requestStatus, sendCommand, type OperatorVerb } from './control-server.ts';
import { progressLine } from './cli-status.ts';

const help: Record<OperatorVerb, string> = {
  freeze: `Usage: blockmirror freeze --control URL [--secret-file FILE]

Freezes a consistency group now: through a controller's control endpoint, every
member holds its writes and stops mirroring, then the group's policy runs (go:
writes complete locally, recorded; stop: they fail until 'blockmirror run').
Through a primary's control endpoint, that primary holds its writes and, when it
belongs to a group, its controller freezes the whole group.
`,
  run: `Usage: blockmirror run --control URL [--secret-file FILE]

Releases writes that a frozen group holds or fails (policy stop): through a
controller, for every member; the group resumes mirroring together once every
member's link is up. Through a primary that has no controller connected, for
that primary alone (a primary whose controller is connected refuses: run the
group there).
`,
  verify: `Usage: blockmirror verify --control URL [--volume NAME] [--secret-file FILE]

Online verify of a live pair: the primary whose control endpoint is URL compares
the code of every segment of each duplex volume (or of NAME) with its
secondary's; only codes cross the network. It lists the segments that differ,
marks them out of sync and resyncs them. Progress is shown while it runs.
`,
};

export async function operatorCommand(verb: OperatorVerb, argv: string[]): Promise<number> {
  const args = parseArgs(verb, argv, { control: { required: true }, 'secret-file': {}, ...(verb === 'verify' ? { volume: {} } : {}) });
  if (args.help) {
    process.stdout.write(help[verb]);
    return 0;
  }
  const url = args.control as string;
  const options = { secret: secretFrom(args['secret-file'] as string | undefined), volume: args.volume as string | undefined };
  if (verb !== 'verify') {
    process.stdout.write(`${await sendCommand(url, verb, options)}\n`);
    return 0;
  }
  const tty = process.stdout.isTTY === true;
  let shown = '';
  const watcher = setInterval(async () => {
    try {
      const status = (await requestStatus(url)) as { volumes?: Array<{ name: string; resync?: any }> };
      const lines = (status.volumes ?? []).filter((v) => v.resync?.kind === 'verify' && (!options.volume || v.name === options.volume)).map((v) => progressLine(v.name, v.resync));
      const text = lines.join('  ');
      if (!text || text === shown) return;
      shown = text;
      process.stdout.write(tty ? `\r${text}` : `${text}\n`);
    } catch {
      // Progress is a courtesy; the verify's own answer is what counts.
    }
  }, tty ? 200 : 1000);
  try {
    const message = await sendCommand(url, 'verify', { ...options, timeoutMs: 24 * 3600 * 1000 });
    process.stdout.write(`${tty && shown ? '\n' : ''}${message}\n`);
  } finally {
    clearInterval(watcher);
  }
  return 0;
}

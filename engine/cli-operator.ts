/** `blockmirror freeze` and `blockmirror run`: an operator's freeze and run, through a control endpoint. */
import { parseArgs } from './args.ts';
import { secretFrom } from './cli-run.ts';
import { sendCommand, type OperatorVerb } from './control-server.ts';

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
};

export async function operatorCommand(verb: OperatorVerb, argv: string[]): Promise<number> {
  const args = parseArgs(verb, argv, { control: { required: true }, 'secret-file': {} });
  if (args.help) {
    process.stdout.write(help[verb]);
    return 0;
  }
  const message = await sendCommand(args.control as string, verb, { secret: secretFrom(args['secret-file'] as string | undefined) });
  process.stdout.write(`${message}\n`);
  return 0;
}

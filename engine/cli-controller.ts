/** `blockmirror controller`: runs the controller of one consistency group until SIGTERM or SIGINT. */
import { parseArgs, parseDuration } from './args.ts';
import { eventWriter, log, secretFrom, untilStopped } from './cli-run.ts';
import { ControlServer } from './control-server.ts';
import { Controller } from './controller.ts';
import { errors } from './errors.ts';
import { parseEndpoint } from './link.ts';

const help = `Usage: blockmirror controller --member URL [--member URL] [--policy go|stop] [--hold-timeout DURATION]
                              [--group NAME] [--lease DURATION] [--control URL] [--secret-file FILE]
                              [--events FILE]

Joins the primaries whose control endpoints are the URLs (tcp:// or ws://, each
member over its own network and protocol) into one consistency group. When any
member cannot mirror a write, it holds its writes and tells the controller,
which sends FREEZE to every member, waits until every member has acknowledged
(or has been declared lost after its lease ran out), and only then sends RUN:

  --policy go     (default) held and new writes complete locally and are
                  recorded; the group resyncs together once every member can
                  mirror again
  --policy stop   held and new writes fail (BM_ERR_FROZEN) until an operator
                  runs 'blockmirror run --control URL'

--hold-timeout (default 30s): no member holds writes longer; the policy then
applies there. --lease (default 3s): a member that hears nothing from the
controller this long freezes itself. DURATION is a number with ms, s or m
(seconds when bare). --control URL answers 'blockmirror status', 'freeze' and
'run' for the whole group. Events are printed as JSON lines to stdout or
appended to --events FILE. SIGTERM or SIGINT stops the controller cleanly: it
tells every member to leave the group first, so none freezes for want of it.
`;

export async function controllerCommand(argv: string[]): Promise<number> {
  const args = parseArgs('controller', argv, {
    member: { required: true, repeat: true },
    policy: {},
    'hold-timeout': {},
    lease: {},
    group: {},
    control: {},
    'secret-file': {},
    events: {},
  });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const policy = (args.policy as string | undefined) ?? 'go';
  if (policy !== 'go' && policy !== 'stop') throw errors.USAGE(`controller: --policy must be go or stop, not '${policy}'`);
  const members = args.member as string[];
  for (const m of members) {
    try {
      parseEndpoint(m, 'member URL');
    } catch (e) {
      throw errors.USAGE(`controller: ${(e as Error).message}`);
    }
  }
  const secret = secretFrom(args['secret-file'] as string | undefined);
  const controller = Controller.start({
    members,
    policy,
    group: args.group as string | undefined,
    holdTimeoutMs: args['hold-timeout'] === undefined ? undefined : parseDuration(args['hold-timeout'] as string, 'controller: --hold-timeout'),
    leaseMs: args.lease === undefined ? undefined : parseDuration(args.lease as string, 'controller: --lease'),
    secret,
  });
  const write = eventWriter(args.events as string | undefined);
  controller.onEvent((e) => {
    write(e);
    if (e.event === 'group-error') log(`${e.member}: ${e.reason}`);
  });
  let control: ControlServer | undefined;
  try {
    if (args.control) {
      control = await ControlServer.start(args.control as string, {
        role: 'controller',
        secret,
        status: () => controller.status(),
        command: (verb) => {
          if (verb === 'verify') throw errors.ROLE('Cannot verify through a controller: verify each primary through its own control endpoint');
          return verb === 'freeze' ? controller.freeze() : controller.run();
        },
      });
    }
  } catch (e) {
    await controller.close();
    throw e;
  }
  log(`controller of group '${controller.group}' (policy ${controller.policy}) for ${members.join(', ')}${control ? `, control on ${control.url}` : ''}`);
  const signal = await untilStopped();
  log(`${signal}: stopping (members leave the group)`);
  await control?.close();
  await controller.close();
  return 0;
}

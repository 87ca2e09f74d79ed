/** `blockmirror promote`, `demote` and `swap`: role changes of stopped volumes (roles.ts). */
import { parseArgs, type OptionSpec } from './args.ts';
import { errors } from './errors.ts';
import { checkDemotable, checkPromotable, demoteVolumes, promoteVolumes, type RoleChange } from './roles.ts';

const help = {
  promote: `Usage: blockmirror promote --dir DIR [--volume NAME] [--force]

Failover: turns the secondary's copies in DIR (every volume, or NAME) into
primary volumes with a new generation id; then run 'blockmirror primary --dir
DIR ...'. Stop the secondary first. A copy caught in the middle of a resync is
rolled back to its last consistent image first; one whose first copy never
finished is refused unless --force. When the old primary returns, start it as
a secondary of the new one (failback): every segment's code is compared and
only what differs is copied. If it was written after the failover, that is
split brain, refused until you start it with --discard-my-data.
`,
  demote: `Usage: blockmirror demote --dir DIR [--volume NAME]

Planned swap, first half: turns the primary volumes in DIR (stopped cleanly
while in sync with their secondary) into secondaries' copies at the same
generation, so that attaching them to the new primary copies nothing. A volume
holding writes its secondary lacks is refused.
`,
  swap: `Usage: blockmirror swap --primary-dir DIR --secondary-dir DIR [--volume NAME]

Planned role swap of a stopped pair whose two directories are on this machine:
demote the primary's volumes and promote the secondary's. Then start the old
secondary as the primary and the old primary as its secondary; nothing is
copied. (On two machines: 'demote' on one, 'promote' on the other.)
`,
};

function report(changes: RoleChange[]): void {
  for (const c of changes) {
    process.stdout.write(`${c.name}: ${c.from} → ${c.to}, generation ${c.gen}${c.rolledBack ? ' (an interrupted resync was rolled back first)' : ''}\n`);
  }
}

export async function roleCommand(verb: 'promote' | 'demote' | 'swap', argv: string[]): Promise<number> {
  const spec: Record<string, OptionSpec> =
    verb === 'swap'
      ? { 'primary-dir': { required: true }, 'secondary-dir': { required: true }, volume: { repeat: true } }
      : { dir: { required: true }, volume: { repeat: true }, ...(verb === 'promote' ? { force: { flag: true } } : {}) };
  const args = parseArgs(verb, argv, spec);
  if (args.help) {
    process.stdout.write(help[verb]);
    return 0;
  }
  const names = args.volume as string[] | undefined;
  if (verb === 'promote') report(await promoteVolumes({ dir: args.dir as string, names, force: args.force === true }));
  else if (verb === 'demote') report(await demoteVolumes({ dir: args.dir as string, names }));
  else {
    if (args['primary-dir'] === args['secondary-dir']) throw errors.USAGE('swap: --primary-dir and --secondary-dir must differ');
    // Both halves are checked before either changes anything.
    checkDemotable({ dir: args['primary-dir'] as string, names });
    checkPromotable({ dir: args['secondary-dir'] as string, names });
    report(await demoteVolumes({ dir: args['primary-dir'] as string, names }));
    report(await promoteVolumes({ dir: args['secondary-dir'] as string, names }));
  }
  return 0;
}

/** `blockmirror status`: asks a control endpoint for its status. */
import { parseArgs } from './args.ts';
import { requestStatus } from './control-server.ts';
import { formatSize } from './geometry.ts';

const help = `Usage: blockmirror status --control URL [--json]

Prints the role, each volume's pair state, out-of-sync bytes, journal fill
and acknowledged sequence of the primary whose control endpoint is URL.
--json prints one JSON object with at least role and volumes (name, state,
outOfSyncBytes).
`;

export async function statusCommand(argv: string[]): Promise<number> {
  const args = parseArgs('status', argv, { control: { required: true }, json: { flag: true } });
  if (args.help) {
    process.stdout.write(help);
    return 0;
  }
  const status = (await requestStatus(args.control as string)) as any;
  if (args.json) {
    process.stdout.write(JSON.stringify(status) + '\n');
    return 0;
  }
  const lines = [
    `role: ${status.role}   mirror: ${status.mirror}   mode: ${status.mode}   link: ${status.connected ? 'connected' : 'down'}`,
    `journal: ${formatSize(status.journalBytesUsed)} of ${formatSize(status.journalBytes)}   acknowledged: ${status.ackedSeq}   next: ${status.nextSeq}`,
  ];
  if (status.lastError) lines.push(`last error: ${status.lastError.message} [${status.lastError.code}]`);
  lines.push('', 'volume            size        state       out of sync   mirrored      rate');
  for (const v of status.volumes) {
    lines.push(
      `${v.name.padEnd(16)}  ${formatSize(v.size).padEnd(10)}  ${v.state.padEnd(10)}  ${formatSize(v.outOfSyncBytes).padEnd(12)}  ${formatSize(v.bytesMirrored).padEnd(12)}  ${formatSize(v.mirrorBytesPerSec)}/s`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

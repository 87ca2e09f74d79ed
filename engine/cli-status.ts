/** `blockmirror status`: asks a control endpoint for its status. */
import { parseArgs } from './args.ts';
import { requestStatus } from './control-server.ts';
import { formatSize } from './geometry.ts';

const help = `Usage: blockmirror status --control URL [--json]

Prints the role, each volume's pair state, out-of-sync bytes, journal fill,
acknowledged sequence and group phase of the primary whose control endpoint is
URL; or, for a controller's control endpoint, the group's phase, its members
and every member's volumes.
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
  if (status.role === 'secondary') {
    const lines = ['role: secondary', '', 'volume            size        state       image          role        generation        codes not current'];
    for (const v of status.volumes) {
      lines.push(`${v.name.padEnd(16)}  ${formatSize(v.size).padEnd(10)}  ${v.state.padEnd(10)}  ${(v.consistent ? 'consistent' : 'inconsistent').padEnd(13)}  ${String(v.role).padEnd(10)}  ${String(v.gen ?? '-').padEnd(16)}  ${v.invalidCodes}`);
    }
    process.stdout.write(lines.join('\n') + '\n');
    return 0;
  }
  if (status.role === 'controller') {
    process.stdout.write(controllerTable(status));
    return 0;
  }
  const lines = [
    `role: ${status.role}   mirror: ${status.mirror}   mode: ${status.mode}   link: ${status.connected ? 'connected' : 'down'}`,
    `journal: ${formatSize(status.journalBytesUsed)} of ${formatSize(status.journalBytes)}   acknowledged: ${status.ackedSeq}   next: ${status.nextSeq}`,
  ];
  if (status.lastError) lines.push(`last error: ${status.lastError.message} [${status.lastError.code}]`);
  if (status.group) {
    const g = status.group;
    lines.push(`group: ${g.name}   phase: ${g.phase}   policy: ${g.policy}   controller: ${g.controllerConnected ? 'connected' : 'lost'}   epoch: ${g.epoch}`);
  }
  lines.push('', 'volume            size        state       out of sync   mirrored      rate          secondary');
  for (const v of status.volumes) {
    lines.push(
      `${v.name.padEnd(16)}  ${formatSize(v.size).padEnd(10)}  ${v.state.padEnd(10)}  ${formatSize(v.outOfSyncBytes).padEnd(12)}  ${formatSize(v.bytesMirrored).padEnd(12)}  ${(formatSize(v.mirrorBytesPerSec) + '/s').padEnd(12)}  ${v.consistent === false ? 'inconsistent' : 'consistent'}`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n');
  return 0;
}

function controllerTable(status: any): string {
  const lines = [
    `role: controller   group: ${status.group}   phase: ${status.phase}   policy: ${status.policy}   epoch: ${status.epoch}   secondaries: ${status.consistent ? 'consistent' : 'inconsistent (resyncing)'}`,
    '',
    'member                          joined  phase       link',
  ];
  for (const m of status.members) lines.push(`${String(m.member).padEnd(30)}  ${(m.connected ? 'yes' : 'no').padEnd(6)}  ${String(m.phase ?? '-').padEnd(10)}  ${m.linkUp === undefined ? '-' : m.linkUp ? 'up' : 'down'}`);
  lines.push('', 'volume            member                          state       out of sync');
  for (const v of status.volumes) lines.push(`${String(v.name).padEnd(16)}  ${String(v.member).padEnd(30)}  ${String(v.state).padEnd(10)}  ${formatSize(v.outOfSyncBytes)}`);
  return lines.join('\n') + '\n';
}

/** One volume's resync or verify progress: a bar, bytes compared and copied, rate and time left. */
export function progressLine(name: string, p: { kind: string; bytesCompared: number; bytesTotal: number; bytesCopied: number; rateBytesPerSec: number; etaSec: number }): string {
  const fraction = p.bytesTotal > 0 ? Math.min(1, p.bytesCompared / p.bytesTotal) : 1;
  const width = 24;
  const filled = Math.round(fraction * width);
  const bar = '#'.repeat(filled) + '.'.repeat(width - filled);
  return `${name} ${p.kind} [${bar}] ${(fraction * 100).toFixed(0)}% ${formatSize(p.bytesCompared)}/${formatSize(p.bytesTotal)} compared, ${formatSize(p.bytesCopied)} copied, ${formatSize(p.rateBytesPerSec)}/s, ${Math.ceil(p.etaSec)} s left`;
}

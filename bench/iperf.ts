/** iperf3 on loopback, as the ceiling a mirror link is compared with. */
import { spawn, spawnSync } from 'node:child_process';

export async function iperf3Loopback(seconds: number): Promise<{ bytesPerSec: number } | { skipped: string }> {
  if (spawnSync('iperf3', ['--version']).status !== 0) return { skipped: 'iperf3 is not installed (apt-get install iperf3)' };
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn('iperf3', ['-s', '-1', '-p', String(port)], { stdio: 'ignore' });
  await new Promise((r) => setTimeout(r, 300));
  const client = spawnSync('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J'], { encoding: 'utf8' });
  server.kill();
  if (client.status !== 0) return { skipped: `iperf3 failed: ${client.stderr.trim().split('\n')[0]}` };
  const report = JSON.parse(client.stdout);
  return { bytesPerSec: report.end.sum_received.bits_per_second / 8 };
}

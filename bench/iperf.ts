/**
 * iperf3 on loopback, as the ceiling a mirror link is compared with.
 *
 * The server is started on a port the kernel just handed out, and the client
 * starts only once the server says it listens: on a loaded two-core machine a
 * fixed sleep was sometimes too short, and the client then reported an error
 * object instead of a result. A failed attempt is retried (at most 3); what
 * still fails is reported as skipped with iperf3's own error, never as a number.
 */
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';

const attemptsMax = 3;
const listenWaitMs = 10_000;

export async function iperf3Loopback(seconds: number): Promise<{ bytesPerSec: number } | { skipped: string }> {
  if (spawnSync('iperf3', ['--version']).status !== 0) return { skipped: 'iperf3 is not installed (apt-get install iperf3)' };
  let lastError = '';
  for (let attempt = 0; attempt < attemptsMax; attempt++) {
    const result = await once(seconds);
    if ('bytesPerSec' in result) return result;
    lastError = result.error;
  }
  return { skipped: `iperf3 failed ${attemptsMax} times: ${lastError}` };
}

async function once(seconds: number): Promise<{ bytesPerSec: number } | { error: string }> {
  const port = await freePort();
  const server = spawn('iperf3', ['-s', '-1', '--forceflush', '-p', String(port)], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    const listening = await new Promise<boolean>((resolve) => {
      let seen = '';
      const timer = setTimeout(() => resolve(false), listenWaitMs);
      server.stdout!.on('data', (chunk: Buffer) => {
        seen += chunk.toString();
        if (seen.includes('listening')) { clearTimeout(timer); resolve(true); }
      });
      server.once('exit', () => { clearTimeout(timer); resolve(false); });
    });
    if (!listening) return { error: `the server did not listen on port ${port} within ${listenWaitMs} ms` };
    const out = await run('iperf3', ['-c', '127.0.0.1', '-p', String(port), '-t', String(seconds), '-J']);
    let report: any;
    try {
      report = JSON.parse(out.stdout);
    } catch {
      return { error: `unreadable output (exit ${out.status}): ${out.stderr.trim().split('\n')[0] ?? ''}` };
    }
    const bits = report?.end?.sum_received?.bits_per_second;
    if (typeof bits !== 'number' || !(bits > 0)) return { error: String(report?.error ?? `exit ${out.status}, no result`) };
    return { bytesPerSec: bits / 8 };
  } finally {
    server.kill();
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}

function run(cmd: string, args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('close', (status) => resolve({ status, stdout, stderr }));
  });
}

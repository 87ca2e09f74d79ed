// The README's embedding example, run as written (only the import path and
// the directory are changed), so that the documentation cannot drift from
// the API.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { tempDir } from './helpers.ts';

const root = new URL('..', import.meta.url).pathname;

/**
 * Runs the first ts block after `heading` in the README, with the import
 * path pointed at the source, '/srv/a' and '/srv/b' (or '/tmp') pointed at
 * `dir`, and the given lines replaced; returns the module's exports.
 */
async function runExample(heading: string, dir: string, replacements: Array<[string, string]>, tail = ''): Promise<any> {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const code = /```ts\n([\s\S]*?)```/.exec(readme.slice(readme.indexOf(heading)))?.[1];
  assert.ok(code, `the README has a ts example under "${heading}"`);
  let source = code!
    .replace("from 'blockmirror'", `from ${JSON.stringify(pathToFileURL(path.join(root, 'engine/index.ts')).href)}`)
    .replaceAll("'/tmp'", JSON.stringify(dir))
    .replaceAll("'/srv/a'", JSON.stringify(path.join(dir, 'a')))
    .replaceAll("'/srv/b'", JSON.stringify(path.join(dir, 'b')));
  for (const [from, to] of replacements) {
    assert.ok(source.includes(from), `the example still has: ${from}`);
    source = source.replace(from, to);
  }
  const file = path.join(dir, 'example.mts');
  fs.writeFileSync(file, source + tail);
  return import(pathToFileURL(file).href);
}

test('the README example for embedding a volume runs', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const mod = await runExample('## Embedding a volume', dir, [], '\nawait again.close();\nexport const result = { bytes: new TextDecoder().decode(bytes), codes: codes.length, valid: valid.length, algorithm };\n');
    assert.equal(mod.result, { bytes: 'hello', codes: 1024 * 8, valid: 1024, algorithm: 'xxh3' });
  } finally {
    cleanup();
  }
});

test('the README example for embedding a mirrored pair runs', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const mod = await runExample(
      '### Embedding a mirrored pair',
      dir,
      [
        ['primary.onEvent((event) => console.log(event));', 'const seen = []; primary.onEvent((event) => seen.push(event));'],
        ['console.log(primary.status());', 'export const status = primary.status();'],
      ],
      '\nexport { seen };\n',
    );
    assert.is(mod.status.role, 'primary');
    assert.is(mod.status.volumes[0].state, 'duplex');
    assert.ok(mod.seen.length > 0, 'events were delivered');
    const a = fs.readFileSync(path.join(dir, 'a', 'db.img'));
    const b = fs.readFileSync(path.join(dir, 'b', 'db.img'));
    assert.ok(a.equals(b), 'the mirrored image equals the primary image');
    assert.is(b[0], 1);
  } finally {
    cleanup();
  }
});

test('the README example for embedding a consistency group runs', async () => {
  const { dir, cleanup } = tempDir();
  try {
    const mod = await runExample(
      '### Embedding a consistency group',
      dir,
      [
        ['group.onEvent((event) => console.log(event));', 'const seen = []; group.onEvent((event) => seen.push(event));'],
        ['console.log(group.status());', 'export const status = group.status();'],
      ],
      '\nexport { seen };\n',
    );
    assert.is(mod.status.role, 'controller');
    assert.is(mod.status.phase, 'mirroring');
    assert.equal(mod.status.volumes.map((v: { name: string; state: string }) => `${v.name} ${v.state}`), ['orders duplex', 'audit duplex']);
    assert.ok(mod.seen.some((e: { event: string }) => e.event === 'member-joined'), 'events were delivered');
    for (const [name, byte] of [['orders', 1], ['audit', 2]] as const) {
      assert.is(fs.readFileSync(path.join(dir, 'b', `${name}.img`))[0], byte, `${name} is mirrored`);
    }
  } finally {
    cleanup();
  }
});

test.run();

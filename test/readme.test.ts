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

test('the README example for embedding a volume runs', async () => {
  const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8');
  const section = readme.slice(readme.indexOf('## Embedding a volume'));
  const code = /```ts\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(code, 'the README has a ts example under "Embedding a volume"');
  const { dir, cleanup } = tempDir();
  try {
    const source =
      code!
        .replace("from 'blockmirror'", `from ${JSON.stringify(pathToFileURL(path.join(root, 'engine/index.ts')).href)}`)
        .replaceAll("'/tmp'", JSON.stringify(dir)) +
      '\nawait again.close();\nexport const result = { bytes: new TextDecoder().decode(bytes), codes: codes.length, valid: valid.length, algorithm };\n';
    const file = path.join(dir, 'example.mts');
    fs.writeFileSync(file, source);
    const mod = await import(pathToFileURL(file).href);
    assert.equal(mod.result, { bytes: 'hello', codes: 1024 * 8, valid: 1024, algorithm: 'xxh3' });
  } finally {
    cleanup();
  }
});

test.run();

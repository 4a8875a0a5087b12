// The usage ledger, the read side: GET /admin/usage[?key=NAME] on the admin listener and
// `tollgate -c FILE usage [--key NAME] [--json]`, against a real redis-server started here on a
// free loopback port (password and a non-zero db, so AUTH and SELECT are exercised).
//
// The gateway does not call the ledger on the request path yet, so the records are written
// here with the ledger's own Lua script (read out of tenancy/ledger.c, so there is one source
// of truth), exactly as a worker would send them. The write side (spooling, replay, exactly
// once) is tested in tests/unit/test_ledger.c.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import {
  REPO_ROOT, startMocknode, startGateway, backendFor, cleanup, get, errorShapeProblems,
  adminListener, freePort, makeTempDir, runTollgate, writeTempFile, waitFor,
} from '../lib/harness.mjs';
import { redisClient, startRedis } from '../lib/redis.mjs';

const REDIS_PASS = 'tg-test-ledger-pass';
const REDIS_DB = 5;

// ---- the ledger's script, from its C source ----------------------------------------------

function ledgerLua() {
  const src = fs.readFileSync(path.join(REPO_ROOT, 'tenancy/ledger.c'), 'utf8');
  const m = /const char ledger_lua\[\] =([\s\S]*?);\n/.exec(src);
  assert.ok(m, 'ledger_lua not found in tenancy/ledger.c');
  const parts = [...m[1].matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((x) => x[1]);
  return parts.join('').replace(/\\(.)/g, (_, c) => (c === 'n' ? '\n' : c));
}

// ---- records, as a worker sends them ------------------------------------------------------

let uidSeq = 0;
const LUA = ledgerLua();

// EVAL ledger_lua 4 seen stream sum keyset  maxlen ttl uid id key model backend cache status
// prompt completion cost latency ts saved cached_tokens estimated (tenancy/ledger.h,
// ledger_script_args()). Arguments past the script's last are ignored.
async function record(r, { key, model, prompt = 0, completion = 0, cost = '0', saved = '0', uid } = {}) {
  uid ??= (++uidSeq).toString(16).padStart(32, '0');
  return r.call('EVAL', LUA, 4, `tg:usage:seen:${uid}`, 'tg:usage', `tg:usage:sum:${key}`,
    'tg:usage:keys', 1000000, 604800, uid, `req-${uid.slice(-6)}`, key, model, 'node-a', 'miss',
    200, prompt, completion, cost, '12.500', Date.now(), saved, '0', '0');
}

// ---- the suite ---------------------------------------------------------------------------

let redis;
let admin;
let cfgFile;

before(async () => {
  redis = await startRedis({ pass: REDIS_PASS, db: REDIS_DB });
  const node = await startMocknode({ name: 'ledger-node', models: ['m1'], quiet: true });
  admin = await adminListener();
  const config = { ...admin.config, redis: { url: redis.url }, backends: [backendFor(node)] };
  await startGateway(config);
  cfgFile = await writeTempFile('ledger-cli.json', JSON.stringify({ ...config, listen: '127.0.0.1:9' }));

  const r = redis.client;
  assert.equal(await record(r, { key: 'alice', model: 'm1', prompt: 10, completion: 1, cost: '0.1' }), 1);
  assert.equal(await record(r, { key: 'alice', model: 'm1', prompt: 20, completion: 2, cost: '0.2' }), 1);
  assert.equal(await record(r, { key: 'alice', model: 'llama3:8b', prompt: 5, completion: 5, cost: '1.5' }), 1);
  assert.equal(await record(r, { key: 'bob', model: 'm1', prompt: 1, completion: 1, cost: '0.000001', uid: 'b'.repeat(32) }), 1);
  // The same record again (an answer lost, then replayed from a spool): not counted.
  assert.equal(await record(r, { key: 'bob', model: 'm1', prompt: 1, completion: 1, cost: '0.000001', uid: 'b'.repeat(32) }), 0);
});

after(async () => {
  await redis?.stop();
  await cleanup();
});

const ALICE = [
  { key: 'alice', model: 'llama3:8b', requests: 1, prompt_tokens: 5, completion_tokens: 5, cost_usd: 1.5 },
  { key: 'alice', model: 'm1', requests: 2, prompt_tokens: 30, completion_tokens: 3, cost_usd: 0.3 },
];
const BOB = [{ key: 'bob', model: 'm1', requests: 1, prompt_tokens: 1, completion_tokens: 1, cost_usd: 0.000001 }];

describe('GET /admin/usage', () => {
  test('every key, per model, sorted; a replayed record counted once', async () => {
    assert.equal(await redis.client.call('XLEN', 'tg:usage'), 4);
    const r = await admin.get('/admin/usage');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    assert.deepEqual(r.json, { object: 'list', data: [...ALICE, ...BOB] });
    assert.ok(r.text.includes('"cost_usd":0.3}'), 'sums print as decimals, not 0.30000000000000004');
  });

  test('?key=NAME: that key only; an unknown key has no rows', async () => {
    let r = await admin.get('/admin/usage?key=alice');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { object: 'list', data: ALICE });
    r = await admin.get('/admin/usage?key=bob');
    assert.deepEqual(r.json.data, BOB);
    r = await admin.get('/admin/usage?key=nobody');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { object: 'list', data: [] });
  });

  test('an empty key is 400, other methods 405, no admin key 401', async () => {
    let r = await admin.get('/admin/usage?key=');
    assert.equal(r.status, 400, r.text);
    assert.deepEqual(errorShapeProblems(r.json), [], r.text);
    r = await admin.get('/admin/usage', { method: 'POST' });
    assert.equal(r.status, 405, r.text);
    r = await get(admin.url + '/admin/usage');
    assert.equal(r.status, 401, r.text);
  });
});

describe('tollgate usage', () => {
  test('--json prints what the admin API answers', async () => {
    const r = await runTollgate(['-c', cfgFile, 'usage', '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { object: 'list', data: [...ALICE, ...BOB] });
    const k = await runTollgate(['-c', cfgFile, 'usage', '--key', 'bob', '--json']);
    assert.equal(k.code, 0, k.stderr);
    assert.deepEqual(JSON.parse(k.stdout).data, BOB);
  });

  test('a table by default', async () => {
    const r = await runTollgate(['-c', cfgFile, 'usage', '--key', 'alice']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split('\n').map((l) => l.trim().split(/\s+/));
    assert.deepEqual(lines, [
      ['KEY', 'MODEL', 'REQUESTS', 'PROMPT_TOKENS', 'COMPLETION_TOKENS', 'COST_USD'],
      ['alice', 'llama3:8b', '1', '5', '5', '1.5'],
      ['alice', 'm1', '2', '30', '3', '0.3'],
    ]);
  });

  test('bad usage exits 2', async () => {
    for (const args of [['usage', '--bogus'], ['usage', 'extra'], ['usage', '--key', '']]) {
      const r = await runTollgate(['-c', cfgFile, ...args]);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
    }
    const h = await runTollgate(['-c', cfgFile, 'usage', '--help']);
    assert.equal(h.code, 0);
    assert.match(h.stdout, /usage \[--key NAME\] \[--json\]/);
  });
});

describe('Redis down', () => {
  test('the admin API answers 503 and the CLI exits 1, at once', async () => {
    await redis.stop();
    const t0 = Date.now();
    const r = await admin.get('/admin/usage');
    assert.equal(r.status, 503, r.text);
    assert.deepEqual(errorShapeProblems(r.json), [], r.text);
    assert.equal(r.json.error.code, 'usage_store_unavailable');
    const c = await runTollgate(['-c', cfgFile, 'usage']);
    assert.equal(c.code, 1, c.stdout);
    assert.match(c.stderr, /unreachable/);
    assert.ok(Date.now() - t0 < 5000, `took ${Date.now() - t0} ms`);
  });
});

// Redis-held API keys, the management side: POST/GET/DELETE /admin/keys on the admin
// listener and `tollgate -c FILE keys ...`, against a real redis-server started here on a
// free loopback port (password and a non-zero db, so AUTH and SELECT are exercised).
// Authenticating requests with these keys is tested elsewhere.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, errorShapeProblems,
  adminListener, freePort, makeTempDir, runTollgate, writeTempFile, waitFor,
} from '../lib/harness.mjs';
import { redisClient, startRedis } from '../lib/redis.mjs';

const REDIS_PASS = 'tg-test-redis-pass';
const REDIS_DB = 3;
const STATIC_KEY = 'sk-keys-admin-static';
const KEY_RE = /^tg-[0-9a-f]{32}$/;
const sha256 = (s) => crypto.createHash('sha256').update(s).digest('hex');
const now = () => Math.floor(Date.now() / 1000);

// Every key and value (strings, hashes, sets) of the test db, as one text.
async function dumpRedis(r) {
  const keys = await r.call('KEYS', '*');
  const parts = [];
  for (const k of keys) {
    const type = await r.call('TYPE', k);
    const v = type === 'hash' ? await r.call('HGETALL', k)
      : type === 'set' ? await r.call('SMEMBERS', k) : await r.call('GET', k);
    parts.push(k, JSON.stringify(v));
  }
  return parts.join('\n');
}

const hashObject = (arr) => Object.fromEntries(arr.reduce((acc, v, i) => (i % 2
  ? acc[acc.length - 1].push(v) : acc.push([v]), acc), []));

// ---- the suite ---------------------------------------------------------------------------

let redis;
let gw;
let admin;
let cfgFile;
const createdKeys = []; // every key material seen; none may leak anywhere else

before(async () => {
  redis = await startRedis({ pass: REDIS_PASS, db: REDIS_DB });
  const node = await startMocknode({ name: 'keys-node', models: ['m1', 'm2'], quiet: true });
  admin = await adminListener();
  const config = { keys: [{ name: 'static-one', key: STATIC_KEY }], ...admin.config,
    redis: { url: redis.url }, backends: [backendFor(node)] };
  gw = await startGateway(config);
  cfgFile = await writeTempFile('keys-cli.json', JSON.stringify({ ...config, listen: '127.0.0.1:9' }));
});

after(async () => {
  await redis?.stop();
  await cleanup();
});

const akey = (p, opts = {}) => admin.url + '/admin/keys' + p;
const create = (body, opts = {}) => post(akey(''), body, { key: admin.key, ...opts });
const show = (name, opts = {}) => get(akey('/' + name), { key: admin.key, ...opts });
const list = (opts = {}) => get(akey(''), { key: admin.key, ...opts });
const revoke = (name, opts = {}) => get(akey('/' + name), { key: admin.key, method: 'DELETE', ...opts });

function assertError(r, status, code, param) {
  assert.equal(r.status, status, r.text);
  assert.deepEqual(errorShapeProblems(r.json), [], r.text);
  assert.equal(r.json.error.code, code, r.text);
  if (param !== undefined) assert.equal(r.json.error.param, param, r.text);
}

const LIST_FIELDS = ['budget_usd', 'created_at', 'expires_at', 'models', 'name', 'rpm', 'sha256_prefix', 'tpm'];

describe('POST /admin/keys', () => {
  test('creates a key: 201, shown once, only its SHA-256 stored', async () => {
    const expires = now() + 3600;
    const t0 = now();
    const r = await create({ name: 'alice', models: ['m1', 'm2'], rpm: 60, tpm: 100000,
      budget_usd: 12.5, expires_at: expires });
    assert.equal(r.status, 201, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^application\/json/);
    const k = r.json;
    assert.deepEqual(Object.keys(k).sort(),
      ['budget_usd', 'created_at', 'expires_at', 'key', 'models', 'name', 'rpm', 'sha256', 'tpm']);
    assert.match(k.key, KEY_RE);
    createdKeys.push(k.key);
    assert.equal(k.sha256, sha256(k.key));
    assert.equal(k.name, 'alice');
    assert.deepEqual(k.models, ['m1', 'm2']);
    assert.equal(k.rpm, 60);
    assert.equal(k.tpm, 100000);
    assert.equal(k.budget_usd, 12.5);
    assert.equal(k.expires_at, expires);
    assert.ok(k.created_at >= t0 - 1 && k.created_at <= now() + 1, `created_at ${k.created_at}`);

    // The data model, exactly as the spec says.
    const h = hashObject(await redis.client.call('HGETALL', `tg:key:${k.sha256}`));
    assert.deepEqual(h, { name: 'alice', models: '["m1","m2"]', rpm: '60', tpm: '100000',
      budget_usd: '12.5', expires_at: String(expires), created_at: String(k.created_at) });
    assert.equal(await redis.client.call('GET', 'tg:keyname:alice'), k.sha256);
    assert.equal(await redis.client.call('SISMEMBER', 'tg:keys', 'alice'), 1);
    const dump = await dumpRedis(redis.client);
    assert.ok(!dump.includes(k.key), 'the key itself is nowhere in Redis');
    assert.ok(!dump.includes(k.key.slice(3)), 'not even its hex part');
  });

  test('only a name: every limit absent', async () => {
    const r = await create({ name: 'minimal' });
    assert.equal(r.status, 201, r.text);
    createdKeys.push(r.json.key);
    assert.match(r.json.key, KEY_RE);
    for (const f of ['models', 'rpm', 'tpm', 'budget_usd', 'expires_at']) assert.equal(r.json[f], null, f);
    const h = hashObject(await redis.client.call('HGETALL', `tg:key:${r.json.sha256}`));
    assert.deepEqual(Object.keys(h).sort(), ['created_at', 'name']);
    // null counts as absent too; a budget of 0 and a 64-character name are valid.
    const z = await create({ name: 'N'.repeat(64), models: null, rpm: null, budget_usd: 0 });
    assert.equal(z.status, 201, z.text);
    createdKeys.push(z.json.key);
    assert.equal(z.json.budget_usd, 0);
    assert.equal(z.json.models, null);
    assert.notEqual(z.json.key, r.json.key);
  });

  test('a duplicate name is 409 key_exists and changes nothing; so is a static key\'s name', async () => {
    const before_ = await redis.client.call('GET', 'tg:keyname:alice');
    const r = await create({ name: 'alice', rpm: 1 });
    assertError(r, 409, 'key_exists', 'name');
    assert.ok(!/tg-[0-9a-f]{32}/.test(r.text));
    assert.equal(await redis.client.call('GET', 'tg:keyname:alice'), before_);
    const s = await create({ name: 'static-one' });
    assertError(s, 409, 'key_exists', 'name');
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:static-one'), 0);
  });

  test('bad input is 400 naming the field, and creates nothing', async () => {
    const count = await redis.client.call('SCARD', 'tg:keys');
    const past = now() - 10;
    const cases = [
      [{}, 'missing_required_parameter', 'name'],
      [{ rpm: 5 }, 'missing_required_parameter', 'name'],
      [{ name: 5 }, 'invalid_type', 'name'],
      [{ name: '' }, 'invalid_value', 'name'],
      [{ name: 'has space' }, 'invalid_value', 'name'],
      [{ name: 'a/b' }, 'invalid_value', 'name'],
      [{ name: 'ü' }, 'invalid_value', 'name'],
      [{ name: 'x'.repeat(65) }, 'invalid_value', 'name'],
      [{ name: '..' }, 'invalid_value', 'name'],
      [{ name: 'b1', models: 'm1' }, 'invalid_type', 'models'],
      [{ name: 'b1', models: [] }, 'invalid_value', 'models'],
      [{ name: 'b1', models: ['m1', 2] }, 'invalid_type', 'models'],
      [{ name: 'b1', models: [''] }, 'invalid_value', 'models'],
      [{ name: 'b1', rpm: 0 }, 'invalid_value', 'rpm'],
      [{ name: 'b1', rpm: -5 }, 'invalid_value', 'rpm'],
      [{ name: 'b1', rpm: 1.5 }, 'invalid_type', 'rpm'],
      [{ name: 'b1', rpm: '10' }, 'invalid_type', 'rpm'],
      [{ name: 'b1', tpm: 0 }, 'invalid_value', 'tpm'],
      [{ name: 'b1', tpm: true }, 'invalid_type', 'tpm'],
      [{ name: 'b1', budget_usd: -0.01 }, 'invalid_value', 'budget_usd'],
      [{ name: 'b1', budget_usd: '5' }, 'invalid_type', 'budget_usd'],
      [{ name: 'b1', expires_at: past }, 'invalid_value', 'expires_at'],
      [{ name: 'b1', expires_at: now() + 0.5 }, 'invalid_type', 'expires_at'],
      [{ name: 'b1', expires_at: '2099-01-01' }, 'invalid_type', 'expires_at'],
      [{ name: 'b1', colour: 'blue' }, 'unknown_parameter', 'colour'],
    ];
    for (const [body, code, param] of cases) {
      const r = await create(body);
      assert.equal(r.status, 400, `${JSON.stringify(body)}: ${r.status} ${r.text}`);
      assertError(r, 400, code, param);
    }
    for (const raw of ['not json', '[1,2]', '"name"', '', '{"name":"b1","name":"b2"}']) {
      const r = await create(raw);
      assertError(r, 400, 'invalid_json', null);
    }
    assert.equal(await redis.client.call('SCARD', 'tg:keys'), count);
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:b1'), 0);
  });

  test('bodies up to 64 KiB are read; larger ones are 413', async () => {
    const pad = (n) => `{"name":"big-body"${' '.repeat(n - 19)}}`;
    assert.equal(pad(65536).length, 65536);
    const tooBig = await create(pad(65537));
    assertError(tooBig, 413, 'request_too_large');
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:big-body'), 0);
    const ok = await create(pad(65536));
    assert.equal(ok.status, 201, ok.text);
    createdKeys.push(ok.json.key);
  });
});

describe('GET and DELETE /admin/keys', () => {
  test('the list: every key, sorted by name, never the key or its full hash', async () => {
    await create({ name: 'zed' }).then((r) => { assert.equal(r.status, 201, r.text); createdKeys.push(r.json.key); });
    await create({ name: 'bob', models: ['m2'] }).then((r) => { assert.equal(r.status, 201); createdKeys.push(r.json.key); });
    const r = await list();
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.object, 'list');
    const names = r.json.data.map((k) => k.name);
    assert.deepEqual(names, [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)));
    for (const n of ['alice', 'bob', 'minimal', 'zed']) assert.ok(names.includes(n), n);
    assert.ok(!names.includes('static-one'), 'static keys are not Redis keys');
    for (const k of r.json.data) {
      assert.deepEqual(Object.keys(k).sort(), LIST_FIELDS);
      assert.match(k.sha256_prefix, /^[0-9a-f]{8}$/);
    }
    const alice = r.json.data.find((k) => k.name === 'alice');
    assert.deepEqual(alice.models, ['m1', 'm2']);
    assert.equal(alice.rpm, 60);
    for (const key of createdKeys) {
      assert.ok(!r.text.includes(key), 'no key in the list');
      assert.ok(!r.text.includes(sha256(key)), 'no full hash in the list');
    }
  });

  test('the list comes in pages: ?limit and ?after (a name), with has_more, first_id and last_id', async () => {
    const all = (await list()).json.data.map((k) => k.name);
    assert.ok(all.length >= 3, all.join());
    const seen = [];
    let after;
    for (let page = 0; page < all.length + 1; page++) {
      const q = `?limit=2${after ? `&after=${encodeURIComponent(after)}` : ''}`;
      const r = await get(akey(q), { key: admin.key });
      assert.equal(r.status, 200, r.text);
      const names = r.json.data.map((k) => k.name);
      assert.ok(names.length <= 2);
      seen.push(...names);
      assert.equal(r.json.first_id, names[0] ?? null);
      assert.equal(r.json.last_id, names.at(-1) ?? null);
      if (!r.json.has_more) break;
      after = r.json.last_id;
    }
    assert.deepEqual(seen, all, 'the pages together are the whole sorted list, once');
    for (const bad of ['0', '1001', 'x', '']) {
      assertError(await get(akey(`?limit=${bad}`), { key: admin.key }), 400, 'invalid_value');
    }
  });

  test('one key by name; unknown names are 404 key_not_found', async () => {
    const r = await show('alice');
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(Object.keys(r.json).sort(), LIST_FIELDS);
    assert.equal(r.json.name, 'alice');
    assert.equal(r.json.sha256_prefix, (await redis.client.call('GET', 'tg:keyname:alice')).slice(0, 8));
    assert.equal(r.json.budget_usd, 12.5);
    assertError(await show('nobody'), 404, 'key_not_found');
    assertError(await show('bad%20name'), 404, 'key_not_found');
    assertError(await show(''), 404, 'key_not_found');
  });

  test('DELETE revokes: everything gone, published on tg:keys:revoked, 404 afterwards', async () => {
    const c = await create({ name: 'doomed', rpm: 5 });
    assert.equal(c.status, 201, c.text);
    createdKeys.push(c.json.key);
    const sub = await redisClient(redis.port, { db: 0, pass: REDIS_PASS });
    try {
      assert.deepEqual(await sub.call('SUBSCRIBE', 'tg:keys:revoked'), ['subscribe', 'tg:keys:revoked', 1]);
      const r = await revoke('doomed');
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json, { name: 'doomed', revoked: true });
      const msg = await waitFor(() => sub.pushes.find((p) => p[0] === 'message'),
        { timeoutMs: 2000, what: 'the revocation message' });
      assert.deepEqual(msg, ['message', 'tg:keys:revoked', c.json.sha256]);
    } finally {
      sub.close();
    }
    assert.equal(await redis.client.call('EXISTS', `tg:key:${c.json.sha256}`), 0);
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:doomed'), 0);
    assert.equal(await redis.client.call('SISMEMBER', 'tg:keys', 'doomed'), 0);
    assertError(await show('doomed'), 404, 'key_not_found');
    assertError(await revoke('doomed'), 404, 'key_not_found');
    assert.ok(!(await list()).json.data.some((k) => k.name === 'doomed'));
    // The name is free again, with a new key.
    const again = await create({ name: 'doomed' });
    assert.equal(again.status, 201, again.text);
    createdKeys.push(again.json.key);
    assert.notEqual(again.json.sha256, c.json.sha256);
  });

  test('wrong methods are 405', async () => {
    assertError(await get(akey(''), { key: admin.key, method: 'PUT' }), 405, 'method_not_allowed');
    assertError(await post(akey('/alice'), {}, { key: admin.key }), 405, 'method_not_allowed');
  });

  test('the admin key is required: 401, and nothing happens', async () => {
    for (const opts of [{ key: undefined }, { key: 'wrong-admin-key-0123456789' }, { key: STATIC_KEY },
      { key: createdKeys[0] }]) {
      assertError(await list(opts), 401, 'invalid_api_key');
      assertError(await show('alice', opts), 401, 'invalid_api_key');
      assertError(await create({ name: 'intruder' }, opts), 401, 'invalid_api_key');
      assertError(await revoke('alice', opts), 401, 'invalid_api_key');
    }
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:intruder'), 0);
    assert.equal((await show('alice')).status, 200);
    // The endpoints are not on the client-facing port.
    const main = await get(gw.url + '/admin/keys', { key: admin.key });
    assert.equal(main.status, 404, main.text);
  });

  test('/admin/backends and /metrics still answer', async () => {
    assert.equal((await admin.get('/admin/backends')).status, 200);
    assert.equal((await admin.get('/metrics')).status, 200);
  });
});

describe('the CLI: tollgate -c FILE keys ...', () => {
  const cli = (...args) => runTollgate(['-c', cfgFile, 'keys', ...args]);

  test('create prints the key once; list, show and revoke see the same Redis', async () => {
    const expires = now() + 86400;
    const c = await cli('create', 'cli-one', '--models', 'm1,m2', '--rpm', '30', '--tpm', '5000',
      '--budget-usd', '0.75', '--expires-at', String(expires));
    assert.equal(c.code, 0, c.stderr);
    const key = c.stdout.trim();
    assert.match(key, KEY_RE, c.stdout);
    createdKeys.push(key);
    assert.ok(!c.stderr.includes(key), 'the key is printed once, on stdout');
    assert.equal(await redis.client.call('GET', 'tg:keyname:cli-one'), sha256(key));

    // The admin API sees it as created.
    const s = await show('cli-one');
    assert.equal(s.status, 200, s.text);
    assert.deepEqual(s.json, { name: 'cli-one', sha256_prefix: sha256(key).slice(0, 8),
      models: ['m1', 'm2'], rpm: 30, tpm: 5000, budget_usd: 0.75, expires_at: expires,
      created_at: s.json.created_at });

    const j = await cli('create', '--json', 'cli-two');
    assert.equal(j.code, 0, j.stderr);
    const lines = j.stdout.trim().split('\n');
    assert.equal(lines.length, 1, j.stdout);
    const doc = JSON.parse(lines[0]);
    assert.match(doc.key, KEY_RE);
    createdKeys.push(doc.key);
    assert.equal(doc.name, 'cli-two');
    assert.equal(doc.sha256, sha256(doc.key));

    const l = await cli('list', '--json');
    assert.equal(l.code, 0, l.stderr);
    const listed = JSON.parse(l.stdout);
    assert.equal(listed.object, 'list');
    const names = listed.data.map((k) => k.name);
    for (const n of ['alice', 'cli-one', 'cli-two']) assert.ok(names.includes(n), n);
    const plain = await cli('list');
    assert.equal(plain.code, 0, plain.stderr);
    assert.match(plain.stdout, /^cli-one\s/m);
    for (const k of createdKeys) assert.ok(!l.stdout.includes(k) && !plain.stdout.includes(k));

    const sh = await cli('show', 'alice', '--json');
    assert.equal(sh.code, 0, sh.stderr);
    assert.equal(JSON.parse(sh.stdout).rpm, 60);
    const shPlain = await cli('show', 'cli-one');
    assert.equal(shPlain.code, 0, shPlain.stderr);
    assert.match(shPlain.stdout, /^rpm:\s+30$/m);

    const rv = await cli('revoke', 'cli-two');
    assert.equal(rv.code, 0, rv.stderr);
    assert.equal((await show('cli-two')).status, 404);
    assert.equal(await redis.client.call('EXISTS', `tg:key:${doc.sha256}`), 0);
  });

  test('errors exit 1, usage errors exit 2', async () => {
    const dup = await cli('create', 'alice');
    assert.equal(dup.code, 1, dup.stderr);
    assert.match(dup.stderr, /exists/);
    assert.equal(dup.stdout, '');
    for (const args of [['show', 'nobody'], ['revoke', 'nobody'], ['create', 'bad name'],
      ['create', 'x1', '--rpm', '0'], ['create', 'x1', '--expires-at', '1000'], ['create', 'static-one']]) {
      const r = await cli(...args);
      assert.equal(r.code, 1, `${args.join(' ')}: ${r.stdout} ${r.stderr}`);
      assert.ok(!KEY_RE.test(r.stdout.trim()), 'no key printed');
    }
    for (const args of [[], ['frob'], ['create'], ['show'], ['list', 'extra'], ['create', 'x1', '--rpm', 'ten'],
      ['create', 'x1', '--nope'], ['show', 'alice', '--rpm', '5'], ['create', 'a', 'b']]) {
      const r = await cli(...args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stdout} ${r.stderr}`);
    }
    assert.equal(await redis.client.call('EXISTS', 'tg:keyname:x1'), 0);
    const help = await runTollgate(['--help']);
    assert.match(help.stdout, /keys create NAME/);
  });
});

describe('Redis unavailable', () => {
  // A port nobody listens on, and a server that accepts connections but never answers.
  let silent;
  const sockets = new Set();
  before(async () => {
    silent = net.createServer((s) => { sockets.add(s); s.on('error', () => {}); });
    silent.listen(0, '127.0.0.1');
    await once(silent, 'listening');
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise((resolve) => silent.close(resolve));
  });

  async function expectUnavailable(url, maxMs) {
    const a = await adminListener();
    const node = await startMocknode({ name: 'keys-down', models: ['m1'], quiet: true });
    const cfg = { keys: [{ name: 'k', key: STATIC_KEY }], ...a.config, backends: [backendFor(node)] };
    if (url) cfg.redis = { url };
    const g = await startGateway(cfg);
    const calls = [
      () => post(a.url + '/admin/keys', { name: 'nope' }, { key: a.key }),
      () => get(a.url + '/admin/keys', { key: a.key }),
      () => get(a.url + '/admin/keys/alice', { key: a.key }),
      () => get(a.url + '/admin/keys/alice', { key: a.key, method: 'DELETE' }),
    ];
    for (const call of calls) {
      const t0 = Date.now();
      const r = await call();
      assertError(r, 503, 'key_store_unavailable');
      assert.ok(Date.now() - t0 < maxMs, `answered in ${Date.now() - t0} ms`);
    }
    // Bad input is still 400: validation comes first.
    assertError(await post(a.url + '/admin/keys', { name: 'x', rpm: 0 }, { key: a.key }), 400, 'invalid_value', 'rpm');
    assert.equal((await a.get('/metrics')).status, 200);
    const file = await writeTempFile('down.json', JSON.stringify({ ...cfg, listen: '127.0.0.1:9' }));
    const t0 = Date.now();
    const r = await runTollgate(['-c', file, 'keys', 'create', 'nope']);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, '');
    assert.ok(Date.now() - t0 < maxMs + 1000, `the CLI gave up in ${Date.now() - t0} ms`);
    await g.stop();
  }

  test('nothing listening: 503 key_store_unavailable at once', async () => {
    await expectUnavailable(`redis://127.0.0.1:${await freePort()}/0`, 1500);
  });

  test('a server that never answers: 503 within the command timeout, not a hang', async () => {
    await expectUnavailable(`redis://127.0.0.1:${silent.address().port}/0`, 3000);
  });

  test('no redis.url: 503 key_store_unavailable', async () => {
    await expectUnavailable(null, 1500);
  });
});

test('no key material in the gateway log', async () => {
  assert.ok(createdKeys.length >= 8, `${createdKeys.length} keys seen`);
  const text = gw.logs.text();
  for (const k of createdKeys) {
    assert.ok(!text.includes(k), 'a key reached the log');
    assert.ok(!text.includes(k.slice(3)), 'its hex part reached the log');
  }
  const events = gw.logs.json().map((e) => e.event);
  assert.ok(events.includes('key_created') && events.includes('key_revoked'), events.join(','));
});

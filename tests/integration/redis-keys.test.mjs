// Keys held in Redis, on two gateway replicas sharing one real redis-server: a key works on
// every replica, per-key model lists hold, a revocation reaches both within a second, and a
// Redis outage costs no cached key and lets no unknown key in (503, never 401).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { promisify } from 'node:util';
import {
  cleanup, freePort, makeTempDir, waitFor, startMocknode, backendFor, startGateway, post, get,
} from '../lib/harness.mjs';

const run = promisify(execFile);
let redis_port, redis_dir, redis_proc, node, gw_a, gw_b;

async function start_redis() {
  redis_proc = spawn('redis-server', ['--port', String(redis_port), '--bind', '127.0.0.1',
    '--save', '', '--appendonly', 'no', '--dir', redis_dir], { stdio: 'ignore' });
  await waitFor(async () => (await cli('PING')) === 'PONG', { what: 'redis-server up' });
}

async function stop_redis() {
  if (!redis_proc || redis_proc.exitCode !== null) return;
  const gone = once(redis_proc, 'exit');
  redis_proc.kill('SIGKILL');
  await gone;
}

async function cli(...args) {
  try {
    const { stdout } = await run('redis-cli', ['-p', String(redis_port), ...args], { timeout: 3000 });
    return stdout.trim();
  } catch {
    return null;
  }
}

const sha = (key) => createHash('sha256').update(key).digest('hex');

async function add_key(key, fields) {
  const flat = Object.entries({ created_at: '1', ...fields }).flat().map(String);
  assert.equal(Number(await cli('HSET', `tg:key:${sha(key)}`, ...flat)) > 0, true);
}

async function revoke(key) {
  await cli('DEL', `tg:key:${sha(key)}`);
  await cli('PUBLISH', 'tg:keys:revoked', sha(key));
}

const chat = (gw, key, model = 'llama') =>
  post(gw.v1 + '/chat/completions', { model, messages: [{ role: 'user', content: 'hi' }] }, { key, timeoutMs: 5000 });

before(async () => {
  redis_port = await freePort();
  redis_dir = await makeTempDir('tollgate-redis-');
  await start_redis();
  node = await startMocknode({ name: 'n1', models: ['llama', 'qwen'] });
  const config = {
    log_level: 'warn',
    workers: 2,
    redis: { url: `redis://127.0.0.1:${redis_port}/0` },
    keys: [{ name: 'static-admin', key: 'sk-static-key-for-tests' }],
    backends: [backendFor(node, { models: ['llama', 'qwen'], prices: [1000, 2000] })],
  };
  gw_a = await startGateway(config);
  gw_b = await startGateway(config);
});

after(async () => {
  await stop_redis();
  await cleanup();
});

test('a key stored in Redis works on both replicas; unknown keys are refused', async () => {
  const key = 'tg-11111111111111111111111111111111';
  await add_key(key, { name: 'alice' });
  for (const gw of [gw_a, gw_b]) {
    const ok = await chat(gw, key);
    assert.equal(ok.status, 200, ok.text);
    const bad = await chat(gw, 'tg-ffffffffffffffffffffffffffffffff');
    assert.equal(bad.status, 401);
    assert.equal(bad.json.error.code, 'invalid_api_key');
    const none = await chat(gw, undefined);
    assert.equal(none.status, 401);
    const stat = await chat(gw, 'sk-static-key-for-tests');
    assert.equal(stat.status, 200, 'static keys from config keep working');
  }
  const log = gw_a.logs.text() + gw_b.logs.text();
  assert.ok(!log.includes(key), 'the key never appears in the logs');
});

test("a key's model list holds on every replica: 403 model_not_allowed, /v1/models filtered", async () => {
  const key = 'tg-22222222222222222222222222222222';
  await add_key(key, { name: 'bob', models: '["llama"]' });
  for (const gw of [gw_a, gw_b]) {
    assert.equal((await chat(gw, key, 'llama')).status, 200);
    const denied = await chat(gw, key, 'qwen');
    assert.equal(denied.status, 403, denied.text);
    assert.equal(denied.json.error.code, 'model_not_allowed');
    assert.equal(denied.json.error.param, 'model');
    const models = await get(gw.v1 + '/models', { key });
    assert.deepEqual(models.json.data.map((m) => m.id), ['llama']);
    assert.equal((await get(gw.v1 + '/models/qwen', { key })).status, 404);
  }
});

test('an expired key is refused', async () => {
  const key = 'tg-33333333333333333333333333333333';
  await add_key(key, { name: 'carol', expires_at: Math.floor(Date.now() / 1000) - 10 });
  const r = await chat(gw_a, key);
  assert.equal(r.status, 401);
  assert.match(r.json.error.message, /expired/);
});

test('a revocation reaches both replicas within one second', async () => {
  const key = 'tg-44444444444444444444444444444444';
  await add_key(key, { name: 'dave' });
  // Both replicas (and both workers of each) have it cached.
  for (let i = 0; i < 6; i++) {
    assert.equal((await chat(gw_a, key)).status, 200);
    assert.equal((await chat(gw_b, key)).status, 200);
  }
  const t0 = Date.now();
  await revoke(key);
  for (const gw of [gw_a, gw_b]) {
    await waitFor(async () => {
      // Several requests, so that every worker's cache is exercised.
      const codes = await Promise.all([1, 2, 3, 4].map(() => chat(gw, key).then((r) => r.status)));
      return codes.every((c) => c === 401);
    }, { timeoutMs: 3000, intervalMs: 20, what: 'revoked key refused' });
  }
  const elapsed = Date.now() - t0;
  assert.ok(elapsed < 1000, `revocation took ${elapsed} ms`);
});

test('Redis down: cached keys keep working, unknown keys get 503, nothing hangs; back up: new keys work', async () => {
  const seen = 'tg-55555555555555555555555555555555';
  const fresh = 'tg-66666666666666666666666666666666';
  await add_key(seen, { name: 'erin' });
  for (let i = 0; i < 6; i++) assert.equal((await chat(gw_a, seen)).status, 200);
  await stop_redis();
  for (let i = 0; i < 10; i++) {
    const r = await chat(gw_a, seen);
    assert.equal(r.status, 200, `cached key during the outage: ${r.text}`);
  }
  // Not a 401: the gateway cannot tell whether the key is good (README, Redis outage policy).
  const unknown = await chat(gw_a, fresh);
  assert.equal(unknown.status, 503);
  assert.equal(unknown.json.error.code, 'key_store_unavailable');
  assert.equal((await chat(gw_a, 'sk-static-key-for-tests')).status, 200);

  await start_redis(); // an empty Redis on the same port
  await add_key(fresh, { name: 'frank' });
  await waitFor(async () => (await chat(gw_a, fresh)).status === 200,
    { timeoutMs: 30000, intervalMs: 200, what: 'a new key works once Redis is back' });
  // The outage left the old key unknown to the new Redis: after reconnecting, the
  // replicas fetch keys again rather than trusting what they cached.
  await waitFor(async () => (await chat(gw_a, seen)).status === 401,
    { timeoutMs: 30000, intervalMs: 200, what: 'a key the new Redis does not hold is refused' });
  // The other replica reconnects on its own schedule; the tests after this one use both.
  await waitFor(async () => (await chat(gw_b, fresh)).status === 200,
    { timeoutMs: 30000, intervalMs: 200, what: 'the second replica is back on Redis' });
});

// A minute boundary in the middle would reset the counts: start early in a minute.
async function early_in_minute() {
  const into = Date.now() % 60000;
  if (into > 45000) await new Promise((r) => setTimeout(r, 60000 - into + 200));
}

test('an RPM limit holds across both replicas: 429 rate_limit_exceeded with retry-after and x-ratelimit headers', async () => {
  const key = 'tg-77777777777777777777777777777777';
  await add_key(key, { name: 'grace', rpm: 5 });
  await early_in_minute();
  const results = [];
  for (let i = 0; i < 12; i++) results.push(await chat(i % 2 ? gw_b : gw_a, key));
  const ok = results.filter((r) => r.status === 200);
  const limited = results.filter((r) => r.status === 429);
  const statuses = results.map((r) => `${r.status}${r.status === 200 || r.status === 429 ? '' : ` ${r.text}`}`).join(',');
  assert.equal(ok.length, 5, `admitted: ${statuses}`);
  assert.equal(limited.length, 7, `limited: ${statuses}`);
  for (const r of limited) {
    assert.equal(r.json.error.code, 'rate_limit_exceeded');
    const wait = Number(r.headers.get('retry-after'));
    assert.ok(wait >= 1 && wait <= 60, `retry-after ${wait}`);
    assert.equal(r.headers.get('x-ratelimit-limit-requests'), '5');
    assert.equal(r.headers.get('x-ratelimit-remaining-requests'), '0');
    assert.match(r.headers.get('x-ratelimit-reset-requests'), /^\d+s$/);
  }
  // Every answer carries the headers, the admitted ones too.
  assert.equal(ok[0].headers.get('x-ratelimit-limit-requests'), '5');
  assert.ok(Number(ok[0].headers.get('x-ratelimit-remaining-requests')) <= 4);
});

test('a TPM limit refuses a request whose estimate no longer fits', async () => {
  const key = 'tg-88888888888888888888888888888888';
  await add_key(key, { name: 'heidi', tpm: 300 });
  await early_in_minute();
  const ask = (gw) => post(gw.v1 + '/chat/completions',
    { model: 'llama', max_tokens: 100, messages: [{ role: 'user', content: 'hi' }] }, { key, timeoutMs: 5000 });
  // Each request is estimated at about 110 tokens (a short prompt and max_tokens 100).
  const first = await ask(gw_a);
  assert.equal(first.status, 200, first.text);
  assert.equal(first.headers.get('x-ratelimit-limit-tokens'), '300');
  const statuses = [first.status];
  for (let i = 0; i < 4; i++) statuses.push((await ask(i % 2 ? gw_a : gw_b)).status);
  assert.ok(statuses.includes(429), `statuses ${statuses}`);
  assert.ok(statuses.filter((s) => s === 200).length <= 3, `statuses ${statuses}`);
});

test('100 concurrent requests on two replicas never overspend a small budget; then 429 insufficient_quota', async () => {
  const key = 'tg-99999999999999999999999999999999';
  const budget = 0.5;
  await add_key(key, { name: 'ivan', budget_usd: budget });
  const body = { model: 'llama', max_tokens: 16, messages: [{ role: 'user', content: 'hi' }] };
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) =>
    post((i % 2 ? gw_b : gw_a).v1 + '/chat/completions', body, { key, timeoutMs: 10000 })));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status === 429);
  assert.equal(ok.length + refused.length, 100, `statuses ${results.map((r) => r.status)}`);
  assert.ok(ok.length > 0 && refused.length > 0, `${ok.length} served, ${refused.length} refused`);
  for (const r of refused) {
    assert.equal(r.json.error.code, 'insufficient_quota');
    assert.equal(r.headers.get('x-should-retry'), 'false');
  }
  const costs = ok.map((r) => Number(r.headers.get('x-tollgate-cost-usd')));
  const one = Math.max(...costs);
  // Settlements are sent when each request completes; give them a moment to land.
  await waitFor(async () => Number(await cli('HGET', `tg:budget:ivan`, 'reserved')) < 1e-9,
    { timeoutMs: 5000, what: 'reservations settled' });
  const spent = Number(await cli('HGET', 'tg:budget:ivan', 'spent'));
  const served = costs.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(spent - served) < 1e-6, `recorded ${spent} vs served ${served}`);
  assert.ok(spent <= budget + one, `spent ${spent} > budget ${budget} + one request ${one}`);
  // Spent: the next request is refused at once on both replicas.
  for (const gw of [gw_a, gw_b]) assert.equal((await chat(gw, key)).status, 429);
});

test('the cache is shared through Redis: an answer cached on one replica is a hit on the other; Redis down means misses, never errors', async () => {
  const key = 'sk-static-key-for-tests';
  const q = (gw, content) => post(gw.v1 + '/chat/completions',
    { model: 'llama', temperature: 0, max_tokens: 4, messages: [{ role: 'user', content }] }, { key, timeoutMs: 5000 });
  const first = await q(gw_a, 'shared question');
  assert.equal(first.status, 200);
  assert.equal(first.headers.get('x-tollgate-cache'), 'miss');
  // A stores it in Redis after answering (fire and forget): wait until it is there, or B
  // would answer its own miss and then hit its own store.
  await waitFor(async () => Boolean(await cli('KEYS', 'tg:cache:*')),
    { what: 'the answer in Redis' });
  // B has never seen it: its workers' own stores are empty, Redis has it.
  let hit;
  await waitFor(async () => {
    hit = await q(gw_b, 'shared question');
    return hit.headers.get('x-tollgate-cache') === 'hit';
  }, { timeoutMs: 3000, intervalMs: 50, what: 'a hit on the other replica' });
  assert.equal(hit.text, first.text);
  await stop_redis();
  for (const gw of [gw_a, gw_b]) {
    const r = await q(gw, `asked while Redis is down ${gw.port}`);
    assert.equal(r.status, 200, 'a cache never fails a request');
    assert.notEqual(r.headers.get('x-tollgate-cache'), 'hit');
  }
  await start_redis();
});

// Hardening of the graceful stop and of the usage ledger (issue 13, items 2, 3 and 15):
// - a SIGTERM with streams in flight leaves every usage record in Redis, none in the spool,
//   and no "Redis unavailable" in the log while Redis is healthy;
// - during the drain the listener stays open: /readyz answers 503 draining, new inference
//   requests 503 shutting_down with retry-after, in-flight work finishes, then the listener
//   closes;
// - with the spool's disk full (the spool is /dev/full) and Redis down, records are held in
//   memory up to spool_memory_bytes (the rest dropped and counted), shown in /metrics, and
//   written to Redis once it is back.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, streamPost, parseEvents, rawHttp,
  tryConnect, waitFor, makeTempDir, freePort,
} from '../lib/harness.mjs';
import { redisClient } from '../lib/redis.mjs';

const redis_procs = [];
after(async () => {
  for (const p of redis_procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
  await cleanup();
});

// A redis-server on `port` (restartable on the same port), and a client for it.
async function startRedisOn(port, dir) {
  const proc = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir,
    '--save', '', '--appendonly', 'no'], { stdio: 'ignore' });
  redis_procs.push(proc);
  const client = await waitFor(async () => {
    const c = await redisClient(port);
    return (await c.call('PING')) === 'PONG' ? c : (c.close(), null);
  }, { timeoutMs: 10000, what: 'redis-server to answer PING' });
  return {
    proc,
    client,
    url: `redis://127.0.0.1:${port}/0`,
    async kill() {
      client.close();
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = once(proc, 'exit');
      proc.kill('SIGKILL');
      await gone;
    },
  };
}

// One series' value from the gateway's own /metrics (no admin listener in these tests).
async function metric(gw, name) {
  const r = await get(gw.url + '/metrics', { timeoutMs: 2000 });
  const m = new RegExp(`^${name.replace(/[{}"=]/g, '\\$&')} (\\S+)$`, 'm').exec(r.text);
  return m ? Number(m[1]) : undefined;
}

const spoolFiles = (dir) => fs.readdirSync(dir).filter((f) => f.endsWith('.spool'))
  .map((f) => ({ name: f, size: fs.statSync(path.join(dir, f)).size }));

test('SIGTERM with streams in flight: every usage record reaches Redis, none the spool', async () => {
  const redis_dir = await makeTempDir('tollgate-hs-redis-');
  const redis = await startRedisOn(await freePort(), redis_dir);
  const spool_dir = await makeTempDir('tollgate-hs-spool-');
  const node = await startMocknode({ name: 'hs-stream', models: ['hs'], tokenMs: 40, tokens: 12, quiet: true });
  const gw = await startGateway({
    workers: 2,
    drain_timeout_ms: 15000,
    spool_dir,
    redis: { url: redis.url },
    keys: [{ name: 'k', key: 'sk-hs-drain' }],
    backends: [backendFor(node)],
  });
  await waitFor(async () => (await metric(gw, 'tollgate_redis_up')) === 1,
    { timeoutMs: 5000, what: 'every worker connected to Redis' });

  const warm = await post(gw.v1 + '/chat/completions',
    { model: 'hs', messages: [{ role: 'user', content: 'warm' }] }, { key: 'sk-hs-drain' });
  assert.equal(warm.status, 200, warm.text);

  const N = 6;
  const started = new Array(N).fill(false);
  const streams = started.map((_, i) => streamPost(gw.v1 + '/chat/completions',
    { model: 'hs', messages: [{ role: 'user', content: `s${i}` }], stream: true },
    { key: 'sk-hs-drain', timeoutMs: 20000, onEvent: () => { started[i] = true; } }));
  const all = Promise.allSettled(streams);
  await waitFor(async () => started.every(Boolean), { timeoutMs: 5000, what: `${N} streams started` });
  gw.proc.kill('SIGTERM');

  for (const r of await all) {
    assert.equal(r.status, 'fulfilled', r.reason?.stack);
    assert.equal(r.value.status, 200, r.value.raw);
    assert.equal(parseEvents(r.value.events).at(-1).data, '[DONE]', 'the stream finished');
  }
  assert.deepEqual(await gw.waitExit(15000), { code: 0, signal: null }, gw.logs.text());

  // One record per request, all in Redis: the warm-up and the N streams.
  assert.equal(Number(await redis.client.call('XLEN', 'tg:usage')), N + 1,
    `records in Redis; spools: ${JSON.stringify(spoolFiles(spool_dir))}\n${gw.logs.text()}`);
  assert.deepEqual(spoolFiles(spool_dir).filter((f) => f.size > 0), [], 'nothing left in a spool');
  // The stop is not a Redis outage, and nothing says so. (On a loaded machine a record may
  // pass its command deadline and be spooled as such; the stop then replays it.)
  const logs = gw.logs.json();
  assert.deepEqual(logs.filter((l) => /unavailable/i.test(l.message ?? '')), [], gw.logs.text());
  assert.ok(!logs.some((l) => l.event === 'ledger_spooled_at_stop'), gw.logs.text());
  await redis.kill();
});

test('during the drain the listener stays open: readyz 503, new requests 503 shutting_down, in-flight work finishes', async () => {
  const node = await startMocknode({ name: 'hs-open', models: ['ho'], tokenMs: 100, tokens: 25, quiet: true });
  const gw = await startGateway({
    workers: 1,
    drain_timeout_ms: 20000,
    keys: [{ name: 'k', key: 'sk-hs-open' }],
    backends: [backendFor(node)],
  });
  let first = false;
  const stream = streamPost(gw.v1 + '/chat/completions',
    { model: 'ho', messages: [{ role: 'user', content: 'long' }], stream: true },
    { key: 'sk-hs-open', timeoutMs: 20000, onEvent: () => { first = true; } });
  stream.catch(() => {});
  await waitFor(async () => first, { timeoutMs: 5000, what: 'the stream started' });
  gw.proc.kill('SIGTERM');

  // Fresh connections, as a load balancer or a kubelet probe makes them.
  const readyz = () => rawHttp(gw.port, 'GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n',
    { timeoutMs: 2000 }).catch((err) => ({ status: err.code ?? err.message }));
  const drained = await waitFor(async () => {
    const r = await readyz();
    return r.status === 200 ? null : r;
  }, { timeoutMs: 5000, intervalMs: 20, what: '/readyz to stop answering 200 after SIGTERM' });
  assert.equal(drained.status, 503, `/readyz during the drain: ${drained.status}`);
  assert.deepEqual(drained.json, { status: 'draining' });

  const body = JSON.stringify({ model: 'ho', messages: [{ role: 'user', content: 'late' }] });
  const late = await rawHttp(gw.port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n' +
    'Authorization: Bearer sk-hs-open\r\nContent-Type: application/json\r\n' +
    `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`, { timeoutMs: 3000 });
  assert.equal(late.status, 503, late.text);
  assert.equal(late.json?.error?.code, 'shutting_down', late.text);
  assert.ok(Number(late.headers['retry-after']) > 0, `retry-after: ${late.headers['retry-after']}`);
  const health = await rawHttp(gw.port, 'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n');
  assert.equal(health.status, 200, 'the process is alive while it drains');

  const s = await stream;
  assert.equal(s.status, 200, s.raw);
  assert.equal(s.ended, 'end');
  const parsed = parseEvents(s.events);
  assert.equal(parsed.at(-1).data, '[DONE]', 'the in-flight stream finished');
  assert.equal(parsed.filter((p) => p.json?.choices?.[0]?.delta?.content).length, 25);

  // The work is done: the listener closes and the process exits.
  await waitFor(async () => (await tryConnect(gw.port, { timeoutMs: 500 })) === 'refused',
    { timeoutMs: 5000, intervalMs: 50, what: 'the listener closed after the drain' });
  assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  assert.equal((await node.stats()).by_path?.['/v1/chat/completions'], 1,
    'the late request never reached a backend');
});

test('spool disk full and Redis down: records held in memory up to spool_memory_bytes, then written to Redis', async () => {
  const redis_port = await freePort();
  const redis_dir = await makeTempDir('tollgate-hs-redis-');
  let redis = await startRedisOn(redis_port, redis_dir);
  const spool_dir = await makeTempDir('tollgate-hs-full-');
  const port = await freePort();
  // The worker's spool is a disk that is always full: every write fails with ENOSPC.
  fs.symlinkSync('/dev/full', path.join(spool_dir, `tollgate-ledger-${port}-0.spool`));
  const node = await startMocknode({ name: 'hs-full', models: ['hf'], quiet: true });
  const gw = await startGateway({
    listen: `127.0.0.1:${port}`,
    workers: 1,
    spool_dir,
    spool_memory_bytes: 8192, // a few dozen records at most
    redis: { url: redis.url },
    keys: [{ name: 'k', key: 'sk-hs-full' }],
    backends: [backendFor(node)],
  });
  await waitFor(async () => (await metric(gw, 'tollgate_redis_up')) === 1,
    { timeoutMs: 5000, what: 'the worker connected to Redis' });
  const ask = (i) => post(gw.v1 + '/chat/completions',
    { model: 'hf', messages: [{ role: 'user', content: `q${i}` }] }, { key: 'sk-hs-full' });
  assert.equal((await ask(-1)).status, 200);
  await waitFor(async () => Number(await redis.client.call('XLEN', 'tg:usage')) === 1,
    { what: 'the first record in Redis' });

  await redis.kill();
  const N = 60;
  for (let i = 0; i < N; i++) assert.equal((await ask(i)).status, 200, 'served while Redis is down');
  const counted = await waitFor(async () => {
    const held = await metric(gw, 'tollgate_ledger_held_records');
    const dropped = await metric(gw, 'tollgate_ledger_records_total{outcome="dropped"}');
    return held + dropped === N ? { held, dropped } : null;
  }, { what: 'every record held or dropped' });
  assert.ok(counted.held > 0, 'records are held in memory');
  assert.ok(counted.dropped > 0, 'beyond spool_memory_bytes they are dropped and counted');
  assert.ok(await metric(gw, 'tollgate_ledger_held_bytes') <= 8192, 'within the cap');
  const events = gw.logs.json();
  assert.ok(events.some((l) => l.event === 'ledger_holding'), gw.logs.text());

  redis = await startRedisOn(redis_port, redis_dir);
  await waitFor(async () => Number(await redis.client.call('XLEN', 'tg:usage')) === counted.held,
    { timeoutMs: 15000, what: `the ${counted.held} held records in Redis` });
  await waitFor(async () => (await metric(gw, 'tollgate_ledger_held_records')) === 0,
    { what: 'nothing held any more' });
  assert.equal(await metric(gw, 'tollgate_ledger_records_total{outcome="dropped"}'), counted.dropped);
  assert.deepEqual(await gw.stop('SIGTERM'), { code: 0, signal: null }, gw.logs.text());
  await redis.kill();
});

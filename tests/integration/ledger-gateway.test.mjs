// The usage ledger through real gateways: two replicas share one redis-server; Redis is killed
// in the middle of traffic and restarted. No valid request fails, and afterwards the ledger
// counts every answered request exactly once (records spooled during the outage replayed).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import {
  cleanup, freePort, makeTempDir, waitFor, startMocknode, backendFor, startGateway, post,
  adminListener,
} from '../lib/harness.mjs';

const run = promisify(execFile);
let redis_port, redis_dir, redis_proc, gw_a, gw_b, admin;

async function cli(...args) {
  try {
    return (await run('redis-cli', ['-p', String(redis_port), ...args], { timeout: 3000 })).stdout.trim();
  } catch {
    return null;
  }
}

async function start_redis() {
  redis_proc = spawn('redis-server', ['--port', String(redis_port), '--bind', '127.0.0.1',
    // Persistent, as a production Redis is: what it acknowledged survives the restart.
    '--save', '', '--appendonly', 'yes', '--appendfsync', 'always', '--dir', redis_dir],
    { stdio: 'ignore' });
  await waitFor(async () => (await cli('PING')) === 'PONG', { what: 'redis-server up' });
}

async function stop_redis() {
  if (!redis_proc || redis_proc.exitCode !== null) return;
  const gone = once(redis_proc, 'exit');
  redis_proc.kill('SIGKILL');
  await gone;
}

before(async () => {
  redis_port = await freePort();
  redis_dir = await makeTempDir('tollgate-ledger-redis-');
  const spool_dir = await makeTempDir('tollgate-spool-');
  await start_redis();
  const node = await startMocknode({ name: 'n1', models: ['llama'] });
  admin = await adminListener();
  const base = {
    log_level: 'warn',
    workers: 2,
    spool_dir,
    redis: { url: `redis://127.0.0.1:${redis_port}/0` },
    keys: [{ name: 'team-static', key: 'sk-ledger-test-key' }],
    backends: [backendFor(node, { prices: [1000, 2000] })],
  };
  gw_a = await startGateway({ ...base, ...admin.config });
  gw_b = await startGateway(base);
});

after(async () => {
  await stop_redis();
  await cleanup();
});

const ask = (gw) => post(gw.v1 + '/chat/completions',
  { model: 'llama', max_tokens: 8, messages: [{ role: 'user', content: 'hi' }] },
  { key: 'sk-ledger-test-key', timeoutMs: 10000 });

async function usage() {
  const r = await admin.get('/admin/usage?key=team-static');
  assert.equal(r.status, 200, r.text);
  return r.json.data.find((row) => row.model === 'llama') ?? { requests: 0, cost_usd: 0 };
}

test('every answered request is in the ledger exactly once, across a Redis outage', async () => {
  let answered = 0, failed = 0, served_usd = 0;
  const wave = async (n) => {
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => ask(i % 2 ? gw_b : gw_a)));
    for (const r of rs) {
      if (r.status === 200) {
        answered++;
        served_usd += Number(r.headers.get('x-tollgate-cost-usd'));
      } else {
        failed++;
      }
    }
  };
  await wave(40);
  await stop_redis();
  await wave(40); // Redis is gone: these records go to the spool
  await wave(20);
  assert.equal(failed, 0, 'no valid request fails while Redis is down');
  await start_redis(); // the outage's records can only come from the replicas' spools
  await wave(20);
  assert.equal(failed, 0);
  assert.equal(answered, 120);
  let held = -1;
  try {
    await waitFor(async () => (held = Number((await usage()).requests)) === answered,
      { timeoutMs: 45000, intervalMs: 250, what: 'the ledger to hold every answered request' });
  } catch (err) {
    const spools = gw_a.logs.text() + gw_b.logs.text();
    throw new Error(`${err.message}: ledger holds ${held} of ${answered}; stream has ` +
      `${await cli('XLEN', 'tg:usage')}; gateway logs:\n${spools.split('\n').filter((l) => /ledger|redis/.test(l)).slice(-12).join('\n')}`);
  }
  // ...and no more than that, even after the replay timers ran again.
  await new Promise((r) => setTimeout(r, 1500));
  const row = await usage();
  assert.equal(Number(row.requests), answered);
  assert.ok(Math.abs(Number(row.cost_usd) - served_usd) < 1e-6, `${row.cost_usd} vs ${served_usd}`);
  assert.equal(Number(await cli('XLEN', 'tg:usage')), answered, 'one stream entry per request');
});

test('a key made through the admin API of one replica works on the other; revoked there, refused on both', async () => {
  const made = await post(admin.url + '/admin/keys', { name: 'cross', models: ['llama'] },
    { key: admin.key });
  assert.equal(made.status, 201, made.text);
  const key = made.json.key;
  const use = (gw) => post(gw.v1 + '/chat/completions',
    { model: 'llama', messages: [{ role: 'user', content: 'hi' }] }, { key, timeoutMs: 5000 });
  assert.equal((await use(gw_b)).status, 200, 'made on A, works on B');
  assert.equal((await use(gw_a)).status, 200);
  const gone = await fetch(admin.url + '/admin/keys/cross',
    { method: 'DELETE', headers: { authorization: `Bearer ${admin.key}` } });
  assert.equal(gone.status, 200);
  const t0 = Date.now();
  for (const gw of [gw_a, gw_b])
    await waitFor(async () => (await use(gw)).status === 401, { timeoutMs: 3000, what: 'revoked' });
  assert.ok(Date.now() - t0 < 1000, 'revocation took effect on both within a second');
});

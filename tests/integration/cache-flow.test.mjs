// The response cache, second part (issue 5): streamed misses are stored once complete (and
// only then), identical concurrent misses share one upstream call (bounded wait, leader
// failure), hits are accounted for (cost 0, saved_usd in the ledger, /metrics counters), and
// Redis as the shared store survives being killed and comes back.
// The in-memory store is per worker, so every gateway here that coalesces runs workers: 1.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  cleanup, startMocknode, backendFor, startGateway, post, streamPost, parseEvents, chatCalls,
  adminListener, waitFor, freePort, makeTempDir, mockText, startRawBackend, chunk,
} from '../lib/harness.mjs';
import { redisClient } from '../lib/redis.mjs';

const KEY = 'sk-cache-flow-tests';
const IN = 1000, OUT = 2000; // USD per Mtok: costs big enough to compare

// ---------------------------------------------------------------------------
// Redis servers of our own, restartable on their port (the harness does not track them).
// ---------------------------------------------------------------------------

const redis_procs = new Set();
process.on('exit', () => {
  for (const p of redis_procs) try { p.kill('SIGKILL'); } catch { /* gone */ }
});

after(async () => {
  await Promise.all([...redis_procs].map(async (p) => {
    if (p.exitCode !== null || p.signalCode !== null) return;
    const gone = once(p, 'exit');
    p.kill('SIGKILL');
    await Promise.race([gone, sleep(3000)]);
  }));
  await cleanup();
});

async function redisCall(port, ...args) {
  const c = await redisClient(port);
  try { return await c.call(...args); } finally { c.close(); }
}

async function ownRedis() {
  const r = {
    port: await freePort(),
    dir: await makeTempDir('tollgate-cacheflow-redis-'),
    proc: null,
    call: (...args) => redisCall(r.port, ...args),
    async start() {
      const proc = spawn('redis-server', ['--port', String(r.port), '--bind', '127.0.0.1',
        '--save', '', '--appendonly', 'no', '--dir', r.dir], { stdio: 'ignore' });
      redis_procs.add(proc);
      proc.once('exit', () => redis_procs.delete(proc));
      r.proc = proc;
      await waitFor(async () => (await r.call('PING')) === 'PONG', { timeoutMs: 10000, what: 'redis-server up' });
    },
    async kill() {
      const p = r.proc;
      if (!p || p.exitCode !== null || p.signalCode !== null) return;
      const gone = once(p, 'exit');
      p.kill('SIGKILL');
      await gone;
    },
  };
  r.url = `redis://127.0.0.1:${r.port}/0`;
  await r.start();
  return r;
}

// ---------------------------------------------------------------------------
// Gateways and requests
// ---------------------------------------------------------------------------

function gatewayConfig(backends, { cache, routing, redis, admin, spool_dir, workers = 1 } = {}) {
  const cfg = {
    log_level: 'warn',
    workers,
    // No probes in the way, and no ejection from the failures some tests cause on purpose.
    health: { interval_ms: 60000, eject_after_failures: 1000 },
    keys: [{ name: 'flow', key: KEY }],
    backends,
  };
  if (cache) cfg.cache = cache;
  if (routing) cfg.routing = routing;
  if (redis) cfg.redis = { url: redis.url };
  if (spool_dir) cfg.spool_dir = spool_dir;
  if (admin) Object.assign(cfg, admin.config);
  return cfg;
}

// One mocknode (model llama, 4 tokens: "[n1] lorem ipsum dolor") behind one gateway.
async function setup({ node: node_opts = {}, ...gw_opts } = {}) {
  const node = await startMocknode({ name: 'n1', models: ['llama'], tokens: 4, ...node_opts });
  const gw = await startGateway(gatewayConfig([backendFor(node, { prices: [IN, OUT] })], gw_opts));
  return { node, gw, calls: async () => chatCalls(await node.stats()) };
}

const TEXT = mockText('n1', 4);
const user = (content) => [{ role: 'user', content }];

const chat = (gw, body, { headers, timeoutMs = 15000 } = {}) =>
  post(gw.v1 + '/chat/completions', { model: 'llama', ...body }, { key: KEY, headers, timeoutMs });

// A streamed chat request, with what the tests look at worked out.
async function streamChat(gw, body, { headers, timeoutMs = 15000 } = {}) {
  const out = await streamPost(gw.v1 + '/chat/completions', { model: 'llama', stream: true, ...body },
    { key: KEY, headers, timeoutMs });
  const parsed = parseEvents(out.events);
  const chunks = parsed.filter((p) => p.json).map((p) => p.json);
  const choices = chunks.flatMap((c) => c.choices ?? []);
  out.cache = out.headers['x-tollgate-cache'];
  out.text = choices.map((c) => c.delta?.content ?? '').join('');
  out.contentEvents = chunks.filter((c) => (c.choices ?? []).some((ch) => ch.delta?.content)).length;
  out.finish = choices.find((c) => c.finish_reason)?.finish_reason ?? null;
  out.usage = chunks.find((c) => c.usage) ?? null;
  out.errorEvent = chunks.find((c) => c.error) ?? null;
  out.done = parsed.at(-1)?.done === true;
  return out;
}

const cacheOf = (r) => r.headers.get('x-tollgate-cache');
const costOf = (r) => Number(r.headers.get('x-tollgate-cost-usd'));
const tally = (results) => results.reduce((m, x) => ((m[x] = (m[x] ?? 0) + 1), m), {});

// ---------------------------------------------------------------------------
// Streamed misses are stored
// ---------------------------------------------------------------------------

test('a complete streamed miss is stored: the repeat is a hit, streamed or not, same text, no backend call', async () => {
  const { gw, calls } = await setup({ node: { tokenMs: 20 } });
  const body = { temperature: 0, messages: user('stream me, then remember me') };
  const c0 = await calls();
  const first = await streamChat(gw, body);
  assert.equal(first.status, 200, first.raw);
  assert.equal(first.cache, 'miss');
  assert.equal(first.ended, 'end');
  assert.ok(first.done, `the miss ends with [DONE]: ${first.raw}`);
  assert.equal(first.contentEvents, 4, 'relayed event by event, one per token');
  assert.equal(first.text, TEXT);
  assert.equal(await calls(), c0 + 1);

  const whole = await chat(gw, body);
  assert.equal(whole.status, 200, whole.text);
  assert.equal(cacheOf(whole), 'hit', 'a non-stream repeat of a streamed miss is a hit');
  assert.equal(whole.json.choices[0].message.content, first.text, 'the concatenated deltas');
  assert.equal(whole.json.choices[0].finish_reason, first.finish);
  assert.equal(costOf(whole), 0);
  assert.equal(await calls(), c0 + 1, 'no backend call for the non-stream hit');

  const again = await streamChat(gw, { ...body, stream_options: { include_usage: true } });
  assert.equal(again.status, 200, again.raw);
  assert.equal(again.cache, 'hit', 'a streamed repeat is a hit');
  assert.ok(again.done, again.raw);
  assert.equal(again.text, first.text, 'the same deltas, concatenated');
  assert.equal(again.finish, first.finish);
  assert.ok(again.usage, `the usage chunk was asked for: ${again.raw}`);
  assert.equal(again.usage.usage.cost, 0, 'a hit costs nothing');
  assert.deepEqual(again.usage.choices, []);
  assert.equal(await calls(), c0 + 1, 'no backend call for the streamed hit');

  // A seed alone makes a request cacheable too.
  const seeded = { seed: 42, messages: user('seeded stream') };
  const s1 = await streamChat(gw, seeded);
  assert.equal(s1.cache, 'miss');
  assert.ok(s1.done);
  const s2 = await streamChat(gw, seeded);
  assert.equal(s2.cache, 'hit');
  assert.equal(s2.text, s1.text);
  assert.equal(await calls(), c0 + 2);
});

test('a stream cut by the node is not stored: the repeat is a miss again', async () => {
  const { node, gw, calls } = await setup({ node: { tokenMs: 10 } });
  const body = { temperature: 0, messages: user('cut me off') };
  await node.setConfig({ fault: 'close-mid-stream' });
  const cut = await streamChat(gw, body);
  await node.setConfig({ fault: 'none' });
  // Held until the first event, so the cut comes after the 200 (ending in an error event).
  assert.equal(cut.status, 200, cut.raw);
  assert.equal(cut.cache, 'miss');
  assert.ok(cut.errorEvent || !cut.done, `the caller sees the cut: ${cut.raw}`);
  assert.notEqual(cut.text, TEXT, 'only part of the answer got through');

  const c0 = await calls();
  const again = await streamChat(gw, body);
  assert.equal(again.status, 200, again.raw);
  assert.equal(again.cache, 'miss', 'the cut answer was not kept');
  assert.ok(again.done);
  assert.equal(again.text, TEXT);
  assert.equal(await calls(), c0 + 1);
  // ...and the complete one that followed was.
  const third = await chat(gw, body);
  assert.equal(cacheOf(third), 'hit');
  assert.equal(third.json.choices[0].message.content, TEXT);
  assert.equal(await calls(), c0 + 1);
});

test('streams with an error event or without a finish reason are not stored', async () => {
  // A scripted node: the message content picks the flaw of the stream it gets.
  const ev = (delta, finish = null) => `data: ${JSON.stringify({ id: 'chatcmpl-raw', object: 'chat.completion.chunk',
    created: 1, model: 'llama', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
  const raw = await startRawBackend((sock, req) => {
    if (req.method === 'GET') { // a health probe: GET /v1/models
      const b = JSON.stringify({ object: 'list', data: [{ id: 'llama', object: 'model', created: 1, owned_by: 'raw' }] });
      sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n${b}`);
      return;
    }
    const what = req.body?.messages?.[0]?.content ?? '';
    if (!req.body?.stream) {
      const b = JSON.stringify({ id: 'chatcmpl-raw', object: 'chat.completion', created: 1, model: 'llama',
        choices: [{ index: 0, message: { role: 'assistant', content: 'partial answer' }, finish_reason: 'stop' }] });
      sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\nConnection: close\r\n\r\n${b}`);
      return;
    }
    sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n');
    sock.write(chunk(ev({ role: 'assistant', content: 'partial ' })));
    sock.write(chunk(ev({ content: 'answer' })));
    if (what === 'error event') {
      sock.write(chunk(`data: ${JSON.stringify({ error: { message: 'node exploded', type: 'server_error', param: null, code: null } })}\n\n`));
    } else if (what !== 'no finish') {
      sock.write(chunk(ev({}, 'stop')));
    }
    sock.write(chunk('data: [DONE]\n\n'));
    sock.end('0\r\n\r\n');
  });
  const gw = await startGateway(gatewayConfig([{ name: 'raw', url: raw.v1,
    models: [{ name: 'llama', input_usd_per_mtok: IN, output_usd_per_mtok: OUT }] }]));
  const posts = () => raw.requests.filter((r) => r.method === 'POST').length;

  for (const what of ['error event', 'no finish']) {
    const body = { temperature: 0, messages: user(what) };
    const first = await streamChat(gw, body);
    assert.equal(first.status, 200, first.raw);
    assert.equal(first.cache, 'miss', what);
    const n = posts();
    const again = await streamChat(gw, body);
    assert.equal(again.cache, 'miss', `${what}: not stored, so the repeat is a miss`);
    assert.equal(posts(), n + 1, `${what}: the repeat went to the node`);
  }
  // The control: the same node's complete stream is stored.
  const ok = { temperature: 0, messages: user('complete') };
  const first = await streamChat(gw, ok);
  assert.equal(first.cache, 'miss');
  assert.equal(first.text, 'partial answer');
  const n = posts();
  const hit = await chat(gw, ok);
  assert.equal(cacheOf(hit), 'hit', hit.text);
  assert.equal(hit.json.choices[0].message.content, 'partial answer');
  assert.equal(posts(), n);
});

// ---------------------------------------------------------------------------
// Coalescing
// ---------------------------------------------------------------------------

test('50 identical concurrent non-stream misses make one backend call; one miss, 49 hits, one answer', async () => {
  const { gw, calls } = await setup({ node: { ttfbMs: 300 } });
  const body = { temperature: 0, messages: user('everyone asks this at once') };
  const c0 = await calls();
  const rs = await Promise.all(Array.from({ length: 50 }, () => chat(gw, body)));
  assert.deepEqual(rs.map((r) => r.status), Array(50).fill(200), rs.find((r) => r.status !== 200)?.text);
  assert.equal(await calls(), c0 + 1, 'exactly one upstream call');
  assert.deepEqual(new Set(rs.map((r) => r.json.choices[0].message.content)), new Set([TEXT]), 'identical content');
  assert.deepEqual(tally(rs.map(cacheOf)), { miss: 1, hit: 49 });
  for (const r of rs.filter((x) => cacheOf(x) === 'hit')) assert.equal(costOf(r), 0, 'followers cost nothing');
  assert.ok(costOf(rs.find((r) => cacheOf(r) === 'miss')) > 0, 'the leader pays');
});

test('10 identical concurrent streamed misses make one backend call; all get the same deltas', async () => {
  const { gw, calls } = await setup({ node: { ttfbMs: 300, tokenMs: 20 } });
  const body = { temperature: 0, messages: user('everyone streams this at once') };
  const c0 = await calls();
  const rs = await Promise.all(Array.from({ length: 10 }, () => streamChat(gw, body)));
  for (const r of rs) {
    assert.equal(r.status, 200, r.raw);
    assert.ok(r.done, `every stream ends with [DONE]: ${r.raw}`);
    assert.equal(r.text, TEXT, 'identical deltas');
    assert.equal(r.finish, 'stop');
  }
  assert.equal(await calls(), c0 + 1, 'exactly one upstream call');
  assert.deepEqual(tally(rs.map((r) => r.cache)), { miss: 1, hit: 9 });
});

test('cache.coalesce_wait_ms bounds the wait: followers of a slow leader make their own calls', async () => {
  const { gw, calls } = await setup({ node: { ttfbMs: 1000 }, cache: { coalesce_wait_ms: 300 } });
  const body = { temperature: 0, messages: user('slow and popular') };
  const c0 = await calls();
  const rs_p = Promise.all(Array.from({ length: 5 }, () => chat(gw, body)));
  await sleep(120);
  const waiting = await calls();
  const rs = await rs_p;
  assert.deepEqual(rs.map((r) => r.status), Array(5).fill(200), rs.find((r) => r.status !== 200)?.text);
  for (const r of rs) assert.equal(r.json.choices[0].message.content, TEXT);
  assert.equal(waiting, c0 + 1, 'at first the followers wait for the leader');
  assert.ok(await calls() > c0 + 1, `followers stopped waiting after 300 ms: ${(await calls()) - c0} call(s)`);
});

test('cache.coalesce_wait_ms 0 turns coalescing off', async () => {
  const { gw, calls } = await setup({ node: { ttfbMs: 300 }, cache: { coalesce_wait_ms: 0 } });
  const body = { temperature: 0, messages: user('no coalescing please') };
  const c0 = await calls();
  const rs = await Promise.all(Array.from({ length: 5 }, () => chat(gw, body)));
  assert.deepEqual(rs.map((r) => r.status), Array(5).fill(200));
  assert.equal(await calls(), c0 + 5, 'every request made its own call');
});

test('when the leader\'s upstream call fails, its followers proceed on their own and succeed', async () => {
  // One node, no retries. The fault is drawn when a request reaches the node, so the leader
  // (the only request there) is cut after its ttfb; the node is healthy for everyone after it.
  const { node, gw, calls } = await setup({ routing: { retries: 0 } });
  const body = { temperature: 0, messages: user('the leader falls') };
  await node.setConfig({ ttfb_ms: 500, fault: 'close-mid-stream' });
  const c0 = await calls();
  const leader_p = chat(gw, body);
  await waitFor(async () => (await calls()) === c0 + 1, { what: 'the leader to reach the node' });
  await node.setConfig({ fault: 'none' });
  const followers_p = Array.from({ length: 10 }, () => chat(gw, body));
  await sleep(150); // the leader has ~300 ms left
  const while_leading = await calls();
  const leader = await leader_p;
  const followers = await Promise.all(followers_p);
  assert.equal(leader.status, 502, `the leader's call failed: ${leader.text}`);
  assert.equal(while_leading, c0 + 1, 'the followers waited for the leader instead of calling the node');
  for (const f of followers) {
    assert.equal(f.status, 200, `no follower gets the leader's error: ${f.text}`);
    assert.equal(f.json.choices[0].message.content, TEXT);
  }
  assert.ok(await calls() > c0 + 1, 'the followers made calls of their own');
  // What they got was stored.
  const later = await chat(gw, body);
  assert.equal(cacheOf(later), 'hit');
});

// ---------------------------------------------------------------------------
// Accounting: ledger saved_usd and /metrics
// ---------------------------------------------------------------------------

function metricValue(text, name, labels = '') {
  const want = labels ? `${name}{${labels}}` : name;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    if (i > 0 && line.slice(0, i) === want) return Number(line.slice(i + 1));
  }
  return undefined;
}

async function ledgerById(redis) {
  const entries = await redis.call('XRANGE', 'tg:usage', '-', '+');
  const out = new Map();
  for (const [, flat] of entries) {
    const rec = {};
    for (let i = 0; i < flat.length; i += 2) rec[flat[i]] = flat[i + 1];
    out.set(rec.id, rec);
  }
  return out;
}

test('hits cost 0 and record what they saved: ledger saved_usd, cache counters and savings in /metrics', async () => {
  const redis = await ownRedis();
  const admin = await adminListener();
  const { gw } = await setup({ redis, admin, spool_dir: await makeTempDir('tollgate-cacheflow-spool-') });
  const rid = (n) => ({ 'x-request-id': `cache-flow-acct-${n}` });
  const A = { temperature: 0, messages: user('account for me') };
  const B = { seed: 11, messages: user('account for my stream') };

  const a_miss = await chat(gw, A, { headers: rid(1) });
  assert.equal(cacheOf(a_miss), 'miss');
  const cost_a = costOf(a_miss);
  assert.ok(cost_a > 0, 'a miss costs something');
  const a_hit = await chat(gw, A, { headers: rid(2) });
  assert.equal(cacheOf(a_hit), 'hit');
  assert.equal(costOf(a_hit), 0, `x-tollgate-cost-usd: ${a_hit.headers.get('x-tollgate-cost-usd')}`);
  const a_hit_s = await streamChat(gw, { ...A, stream_options: { include_usage: true } }, { headers: rid(3) });
  assert.equal(a_hit_s.cache, 'hit');
  assert.equal(a_hit_s.usage?.usage?.cost, 0);

  const b_miss = await streamChat(gw, { ...B, stream_options: { include_usage: true } }, { headers: rid(4) });
  assert.equal(b_miss.cache, 'miss');
  assert.ok(b_miss.done, b_miss.raw);
  const cost_b = b_miss.usage?.usage?.cost;
  assert.ok(cost_b > 0, `the streamed miss's usage chunk has its cost: ${b_miss.raw}`);
  const b_hit = await chat(gw, B, { headers: rid(5) });
  assert.equal(cacheOf(b_hit), 'hit');
  assert.equal(costOf(b_hit), 0);

  const c_bypass = await chat(gw, { temperature: 0.7, messages: user('never cached') }, { headers: rid(6) });
  assert.equal(cacheOf(c_bypass), 'bypass');

  // The ledger: one record per request, hits saying what they saved.
  let recs;
  await waitFor(async () => (recs = await ledgerById(redis)).size >= 6,
    { timeoutMs: 5000, what: 'six ledger records' });
  const expect = [
    [1, 'miss', 0], [2, 'hit', cost_a], [3, 'hit', cost_a], [4, 'miss', 0], [5, 'hit', cost_b], [6, 'bypass', 0],
  ];
  for (const [n, cache, saved] of expect) {
    const rec = recs.get(`cache-flow-acct-${n}`);
    assert.ok(rec, `ledger record ${n}`);
    assert.equal(rec.cache, cache, `record ${n}: cache`);
    if (cache === 'hit') assert.equal(Number(rec.cost_usd), 0, `record ${n}: a hit costs 0`);
    if (cache !== 'bypass' || rec.saved_usd !== undefined) {
      assert.match(rec.saved_usd ?? '', /^\d+(\.\d+)?$/, `record ${n}: saved_usd is a decimal string: ${JSON.stringify(rec)}`);
      assert.ok(Math.abs(Number(rec.saved_usd) - saved) < 1e-9, `record ${n}: saved_usd ${rec.saved_usd}, expected ${saved}`);
    }
  }
  // What a hit saved is what its miss cost, as the ledger has it too.
  const miss_a = recs.get('cache-flow-acct-1'), miss_b = recs.get('cache-flow-acct-4');
  assert.ok(Math.abs(Number(miss_a.cost_usd) - cost_a) < 1e-9);
  assert.ok(Math.abs(Number(miss_b.cost_usd) - cost_b) < 1e-9);

  // /metrics on the admin listener: exactly the traffic above.
  const m = await admin.get('/metrics');
  assert.equal(m.status, 200, m.text);
  const ctr = (result) => metricValue(m.text, 'tollgate_cache_requests_total', `result="${result}"`);
  assert.deepEqual({ hit: ctr('hit'), miss: ctr('miss'), bypass: ctr('bypass') }, { hit: 3, miss: 2, bypass: 1 },
    m.text.split('\n').filter((l) => l.includes('cache')).join('\n'));
  const savings = metricValue(m.text, 'tollgate_cache_savings_usd_total');
  assert.ok(savings !== undefined, 'tollgate_cache_savings_usd_total is exported');
  assert.ok(Math.abs(savings - (2 * cost_a + cost_b)) < 1e-6, `savings ${savings}, expected ${2 * cost_a + cost_b}`);
});

// ---------------------------------------------------------------------------
// Redis as the store, and its outage
// ---------------------------------------------------------------------------

test('Redis as the store: shared hits; killed mid-traffic every request still gets 200; restarted, hits come back', async () => {
  const redis = await ownRedis();
  const node = await startMocknode({ name: 'n1', models: ['llama'], tokens: 4 });
  const spool_dir = await makeTempDir('tollgate-cacheflow-spool-');
  const cfg = gatewayConfig([backendFor(node, { prices: [IN, OUT] })], { redis, spool_dir });
  const gw_a = await startGateway(cfg);
  const gw_b = await startGateway(cfg);
  const q = (gw, content, stream = false) => (stream
    ? streamChat(gw, { temperature: 0, messages: user(content) }, { timeoutMs: 10000 })
    : chat(gw, { temperature: 0, messages: user(content) }, { timeoutMs: 10000 }));

  // A repeat hits, and the entry is in Redis: B has never seen the question.
  const first = await q(gw_a, 'shared through redis');
  assert.equal(cacheOf(first), 'miss');
  await waitFor(async () => (await redis.call('KEYS', 'tg:cache:*')).length > 0, { what: 'a tg:cache: key in Redis' });
  const shared = await q(gw_b, 'shared through redis');
  assert.equal(cacheOf(shared), 'hit', 'B is answered from Redis');
  assert.equal(shared.json.choices[0].message.content, first.json.choices[0].message.content);
  // Traffic on both replicas, some repeats and some new questions; Redis dies in the middle.
  const results = [];
  let stop = false, n = 0;
  const loop = async (id) => {
    while (!stop) {
      const i = n++;
      const gw = i % 2 ? gw_b : gw_a;
      const content = i % 3 === 0 ? 'shared through redis' : `traffic ${id} ${i}`;
      const stream = i % 5 === 0;
      const r = await q(gw, content, stream).catch((err) => ({ status: `error: ${err.message}`, headers: new Headers() }));
      results.push({ status: r.status, cache: stream ? r.cache : r.headers.get('x-tollgate-cache'), done: stream ? r.done : true });
    }
  };
  const loops = [loop(1), loop(2), loop(3)];
  await sleep(300);
  const before_kill = results.length;
  await redis.kill();
  await sleep(1500);
  stop = true;
  await Promise.all(loops);
  assert.ok(results.length > before_kill + 10, `answers kept coming after the kill: ${results.length - before_kill}`);
  const bad = results.filter((r) => r.status !== 200 || !r.done || !['hit', 'miss', 'bypass'].includes(r.cache));
  assert.deepEqual(bad, [], 'every request got a complete 200 while Redis died');

  // Down: a new question asked on A is not a hit on B, and nothing fails.
  for (const gw of [gw_a, gw_b]) {
    const r = await q(gw, 'asked while redis is down');
    assert.equal(r.status, 200, r.text);
    assert.notEqual(cacheOf(r), 'hit', 'nothing to share while Redis is down');
  }

  // Back on the same port (empty): hits through Redis come back.
  await redis.start();
  let i = 0;
  await waitFor(async () => {
    const content = `after the restart ${i++}`;
    const a = await q(gw_a, content);
    assert.equal(a.status, 200, a.text);
    const b = await q(gw_b, content);
    assert.equal(b.status, 200, b.text);
    return cacheOf(b) === 'hit';
  }, { timeoutMs: 20000, intervalMs: 200, what: 'hits through Redis after its restart' });
  // A streamed miss lands in Redis too (asked once on B: a miss there would be stored in B).
  const stored = (await redis.call('KEYS', 'tg:cache:*')).length;
  const s = await q(gw_a, 'streamed into redis', true);
  assert.equal(s.cache, 'miss');
  assert.ok(s.done, s.raw);
  await waitFor(async () => (await redis.call('KEYS', 'tg:cache:*')).length > stored,
    { what: 'the streamed answer in Redis' });
  const s_b = await q(gw_b, 'streamed into redis');
  assert.equal(cacheOf(s_b), 'hit', 'the streamed answer is a hit on the other replica');
  assert.equal(s_b.json.choices[0].message.content, s.text);
});

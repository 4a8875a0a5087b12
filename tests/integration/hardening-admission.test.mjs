// Issue 13, the admission side of hardening, end to end:
//  - item 1: with Redis out (stopped or killed), a key the gateway cannot check gets 503
//    key_store_unavailable with retry-after, never 401; keys it has cached keep working;
//  - item 5: max_tokens × n never wraps: billing, cost and budget reservations stay sane;
//  - item 7: a body's parse cost is bounded by the config (413 for too many JSON values,
//    nothing built) and memory goes back after a big request;
//  - item 8: unauthenticated requests write nothing to Redis (no ledger record, no
//    tg:usage:seen:* key), and are still counted in the metrics and logged;
//  - item 9: duplicate JSON object keys are refused (400, param the key's path) at any depth.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import {
  cleanup, startMocknode, startGateway, startRawBackend, backendFor, post, get, waitFor,
  errorShapeProblems, apiCalls,
} from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const STATIC_KEY = 'sk-hardening-static-key';
const sha = (key) => createHash('sha256').update(key).digest('hex');
const msgs = [{ role: 'user', content: 'hi' }];

let node;
let raw;

// A node that answers three choices of 500 bytes each and reports 400 completion tokens.
const RAW_ANSWER = JSON.stringify({
  id: 'chatcmpl-raw', object: 'chat.completion', created: 1, model: 'raw',
  choices: [0, 1, 2].map((index) => ({
    index, message: { role: 'assistant', content: 'word '.repeat(100) }, finish_reason: 'stop',
  })),
  usage: { prompt_tokens: 10, completion_tokens: 400, total_tokens: 410 },
});

before(async () => {
  node = await startMocknode({ name: 'n1', models: ['llama'], quiet: true });
  raw = await startRawBackend((sock, req) => {
    const body = req.path.endsWith('/models')
      ? JSON.stringify({ object: 'list', data: [{ id: 'raw', object: 'model' }] })
      : RAW_ANSWER;
    sock.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
});

let redis;
let gw;
let plain;

after(async () => {
  await redis?.stop();
  await cleanup();
});

function expectError(r, status, code) {
  const ctx = `${r.status} ${r.text}`;
  assert.equal(r.status, status, ctx);
  assert.deepEqual(errorShapeProblems(r.json), [], ctx);
  assert.equal(r.json.error.code, code, ctx);
}

const chat = (gw, key, body = {}) =>
  post(gw.v1 + '/chat/completions', { model: 'llama', messages: msgs, ...body }, { key, timeoutMs: 10000 });

async function redisKey(redis, key, fields) {
  await redis.client.call('HSET', `tg:key:${sha(key)}`,
    ...Object.entries({ created_at: '1', ...fields }).flat().map(String));
}

// ---- item 1 -----------------------------------------------------------------------------

test('Redis stopped or killed: an unknown key gets 503 key_store_unavailable with retry-after, a cached key keeps working', async (t) => {
  const down = await startRedis();
  t.after(() => down.stop());
  const gw1 = await startGateway({
    workers: 1, log_level: 'warn', redis: { url: down.url },
    keys: [{ name: 'static', key: STATIC_KEY }], backends: [backendFor(node)],
  });
  const cached = 'tg-1111aaaa1111aaaa1111aaaa1111aaaa';
  const unknown = 'tg-2222bbbb2222bbbb2222bbbb2222bbbb';
  await redisKey(down, cached, { name: 'cached' });
  assert.equal((await chat(gw1, cached)).status, 200);
  // While Redis answers, an unknown key is a 401.
  expectError(await chat(gw1, unknown), 401, 'invalid_api_key');
  const unknown2 = 'tg-3333cccc3333cccc3333cccc3333cccc';

  const check_outage = async (what) => {
    // Several in a row: the first ones time out (breaker still closed), later ones meet the
    // open breaker; every one is 503, none 401.
    for (let i = 0; i < 8; i++) {
      const r = await chat(gw1, unknown2);
      expectError(r, 503, 'key_store_unavailable');
      assert.equal(r.json.error.type, 'api_error');
      assert.match(r.json.error.message, /key store is unavailable/);
      assert.ok(Number(r.headers.get('retry-after')) >= 1, `retry-after on ${what}`);
      const ok = await chat(gw1, cached);
      assert.equal(ok.status, 200, `a cached key during ${what}: ${ok.text}`);
    }
    assert.equal((await chat(gw1, STATIC_KEY)).status, 200);
  };

  down.proc.kill('SIGSTOP'); // hangs: commands time out
  try {
    await check_outage('a stopped Redis');
  } finally {
    down.proc.kill('SIGCONT');
  }
  await down.stop(); // SIGKILL: connection refused
  await check_outage('a killed Redis');
  await gw1.stop();
});

// ---- items 5 and 8: one gateway with Redis keys, the ledger and budgets -------------------

async function ledgerLen() {
  return Number(await redis.client.call('XLEN', 'tg:usage'));
}

async function seenKeys() {
  return (await redis.client.call('KEYS', 'tg:usage:seen:*')).length;
}

test('unauthenticated requests write nothing to Redis: no ledger record, no seen key; they are counted and logged', async () => {
  redis = await startRedis();
  gw = await startGateway({
    workers: 1, log_level: 'info', redis: { url: redis.url },
    keys: [{ name: 'static', key: STATIC_KEY }],
    backends: [
      backendFor(node, { prices: [1, 1000] }),
      backendFor(raw, { name: 'raw', models: ['raw'] }),
    ],
  });
  const before_len = await ledgerLen();
  const before_seen = await seenKeys();
  let refused = 0;
  for (let i = 0; i < 5; i++) {
    expectError(await chat(gw, undefined), 401, 'invalid_api_key'); // no key
    expectError(await chat(gw, `sk-not-a-key-${i}`), 401, 'invalid_api_key'); // no such key
    expectError(await post(gw.v1 + '/embeddings', { model: 'llama', input: 'x' },
      { key: 'tg-ffffffffffffffffffffffffffffffff' }), 401, 'invalid_api_key');
    refused += 3;
    const wrong_method = await get(gw.v1 + '/chat/completions');
    assert.equal(wrong_method.status, 405);
  }
  // One authenticated request: its record lands after everything sent before it (one
  // worker, records in order), so once it is there the refused ones would be too.
  assert.equal((await chat(gw, STATIC_KEY)).status, 200);
  await waitFor(async () => (await ledgerLen()) >= before_len + 1,
    { timeoutMs: 5000, what: 'the authenticated request in the ledger' });
  await new Promise((r) => setTimeout(r, 200));
  assert.equal(await ledgerLen(), before_len + 1, 'only the authenticated request is recorded');
  assert.equal(await seenKeys(), before_seen + 1, 'one tg:usage:seen:* key, the authenticated one');
  const entries = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
  const last = entries.at(-1)[1];
  assert.equal(last[last.indexOf('key') + 1], 'static');

  // Counted in the metrics and logged, all the same.
  const metrics = (await get(gw.url + '/metrics')).text;
  const n401 = metrics.split('\n').filter((l) => l.startsWith('tollgate_requests_total{') && l.includes('status="401"'))
    .reduce((n, l) => n + Number(l.split(' ').pop()), 0);
  assert.equal(n401, refused);
  await waitFor(() => gw.logs.json().filter((e) => e.event === 'request' && e.status === 401).length === refused,
    { timeoutMs: 3000, what: 'a log line per refused request' });
});

test('max_tokens × n never wraps: a node\'s 400 tokens are billed as 400, cost is never negative', async () => {
  const ask = (max_tokens, n) => post(gw.v1 + '/chat/completions',
    `{"model":"raw","messages":[{"role":"user","content":"hi"}],"max_tokens":${max_tokens},"n":${n}}`,
    { key: STATIC_KEY });
  // 6148914691236517206 × 3 wrapped to 2 as signed 64-bit; 9223372036854775807 × 128 to -128.
  for (const [max_tokens, n] of [['6148914691236517206', 3], ['9223372036854775807', 128], ['500', 3]]) {
    const r = await ask(max_tokens, n);
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.usage.completion_tokens, 400, `max_tokens ${max_tokens}, n ${n}`);
    assert.equal(r.json.usage.total_tokens, r.json.usage.prompt_tokens + 400);
    const cost = Number(r.headers.get('x-tollgate-cost-usd'));
    assert.ok(cost > 0, `cost ${cost}`);
  }
  // The clamp by max_tokens × n still holds where it is the smaller bound.
  const small = await ask('100', 3);
  assert.equal(small.json.usage.completion_tokens, 300);
  const metrics = (await get(gw.url + '/metrics')).text;
  for (const l of metrics.split('\n').filter((x) => /^tollgate_(cost_usd|tokens)_total\{/.test(x)))
    assert.ok(Number(l.split(' ').pop()) >= 0, l);
});

test('a budget reservation never passes on a wrapped estimate', async () => {
  const key = 'tg-4444dddd4444dddd4444dddd4444dddd';
  await redisKey(redis, key, { name: 'budgeted', budget_usd: '1' });
  // llama costs 1000 USD per million output tokens here: any honest estimate of a huge
  // max_tokens is far above the 1 USD budget; the wrapped one was 2 tokens.
  // Written out: as a JavaScript number the value would be rounded.
  const r = await post(gw.v1 + '/chat/completions',
    '{"model":"llama","messages":[{"role":"user","content":"hi"}],"max_tokens":6148914691236517206,"n":3}',
    { key });
  expectError(r, 429, 'insufficient_quota');
  const reserved = Number(await redis.client.call('HGET', 'tg:budget:budgeted', 'reserved') ?? 0);
  assert.equal(reserved, 0);
  // A modest request still fits.
  const ok = await chat(gw, key, { max_tokens: 16 });
  assert.equal(ok.status, 200, ok.text);
});

// ---- items 7 and 9: a gateway with the default body limit, no Redis -----------------------

function memory(pid) {
  const out = {};
  for (const l of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const m = /^(VmRSS|VmHWM):\s+(\d+) kB/.exec(l);
    if (m) out[m[1]] = Number(m[2]) * 1024;
  }
  return out;
}
const MiB = 1 << 20;
// Under AddressSanitizer or ThreadSanitizer (make asan, make tsan) memory is the sanitizer's
// (shadow memory, a quarantine of freed blocks): resident sizes say nothing about the gateway.
const sanitized = (pid) => /lib(asan|tsan)/.test(fs.readFileSync(`/proc/${pid}/maps`, 'utf8'));

test('a body of millions of small values is refused (413) before it is built; peak memory stays small', async () => {
  plain = await startGateway({
    workers: 1, log_level: 'warn', keys: [{ name: 'static', key: STATIC_KEY }],
    backends: [backendFor(node)],
  });
  assert.equal((await chat(plain, STATIC_KEY)).status, 200);
  const start = memory(plain.proc.pid);
  // The body: 7.6 MiB of small integers (404 MiB per request once parsed).
  const body = '{"model":"llama","messages":[{"role":"user","content":[' + '1,'.repeat(4000000) + '1]}]}';
  const r = await post(plain.v1 + '/chat/completions', body, { key: STATIC_KEY, timeoutMs: 30000 });
  const grown = memory(plain.proc.pid).VmHWM - start.VmHWM;
  if (!sanitized(plain.proc.pid))
    assert.ok(grown < 64 * MiB, `peak memory grew by ${(grown / MiB).toFixed(1)} MiB`);
  expectError(r, 413, 'request_too_large');
  assert.match(r.json.error.message, /more than 524288 JSON values/);
  // Too deep is a 400.
  const deep = await post(plain.v1 + '/chat/completions',
    `{"model":"llama","messages":${'['.repeat(200)}${']'.repeat(200)}}`, { key: STATIC_KEY });
  expectError(deep, 400, 'invalid_json');
  assert.match(deep.json.error.message, /levels deep/);
});

test('memory goes back after a big request, and /v1/models is answered meanwhile', async (t) => {
  const fresh = await startGateway({
    workers: 1, log_level: 'warn', keys: [{ name: 'static', key: STATIC_KEY }],
    backends: [backendFor(node)],
  });
  t.after(() => fresh.stop());
  assert.equal((await chat(fresh, STATIC_KEY)).status, 200);
  const start = memory(fresh.proc.pid);
  // 400,000 token ids: under the value cap (524,288 at 8 MiB), about 25 MiB once parsed.
  const input = Array.from({ length: 400000 }, (_, i) => i % 50000);
  const body = JSON.stringify({ model: 'llama', input });
  const t0 = performance.now();
  let models_ms = -1;
  const [a, b, m] = await Promise.all([
    post(fresh.v1 + '/embeddings', body, { key: STATIC_KEY, timeoutMs: 30000 }),
    post(fresh.v1 + '/embeddings', body, { key: STATIC_KEY, timeoutMs: 30000 }),
    get(fresh.v1 + '/models', { key: STATIC_KEY }).then((r) => { models_ms = performance.now() - t0; return r; }),
  ]);
  assert.equal(a.status, 200, a.text);
  assert.equal(b.status, 200, b.text);
  assert.equal(m.status, 200);
  t.diagnostic(`GET /v1/models answered ${models_ms.toFixed(0)} ms after two 400k-value bodies were sent`);
  if (sanitized(fresh.proc.pid)) {
    t.diagnostic('a sanitizer build: resident memory not checked');
    return;
  }
  let rss = 0;
  try {
    await waitFor(() => (rss = memory(fresh.proc.pid).VmRSS) < start.VmRSS + 24 * MiB,
      { timeoutMs: 5000, intervalMs: 100, what: 'resident memory back near where it was' });
  } catch (err) {
    throw new Error(`${err.message}: ${(start.VmRSS / MiB).toFixed(1)} MiB before, ${(rss / MiB).toFixed(1)} MiB after`);
  }
});

test('duplicate keys are refused at any depth (400, param the path), and nothing reaches a node', async () => {
  const calls = apiCalls(await node.stats());
  const cases = [
    ['{"model":"llama","model":"other","messages":[{"role":"user","content":"hi"}]}', 'model'],
    ['{"model":"llama","messages":[{"role":"user","content":"a","content":"b"}]}', 'messages.[0].content'],
    ['{"model":"llama","messages":[{"role":"user","content":"a"}],"stream_options":{"include_usage":true,"include_usage":false}}', 'stream_options.include_usage'],
    ['{"mod\\u0065l":"other","model":"llama","messages":[{"role":"user","content":"a"}]}', 'model'],
  ];
  for (const [body, param] of cases) {
    const r = await post(plain.v1 + '/chat/completions', body, { key: STATIC_KEY });
    expectError(r, 400, 'invalid_json');
    assert.equal(r.json.error.type, 'invalid_request_error');
    assert.equal(r.json.error.param, param, body);
    assert.match(r.json.error.message, /twice/);
  }
  assert.equal(apiCalls(await node.stats()), calls, 'no duplicate-key body reached the node');
  // The same key in different objects is fine.
  const ok = await post(plain.v1 + '/chat/completions',
    '{"model":"llama","messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}]}',
    { key: STATIC_KEY });
  assert.equal(ok.status, 200, ok.text);
});

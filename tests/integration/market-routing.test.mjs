// Routing in a churning market (issue 12): behaviour against small simulated nodes written
// here (node:http), each with a capacity, a mode and a price feed of its own:
// - a full node's 429 is a full node, not a failure: the request moves on at once, the node
//   stays up, and its learned concurrency limit comes down;
// - a node that takes requests and answers none is suspected at once: requests fail over
//   long before the first-byte timeout, and it gets no new traffic;
// - a good probe ends a failing node's cooldown early, and it gets traffic again;
// - price feeds are read on their own (sub-second) schedule with ETag / If-None-Match, an
//   unchanged feed costs a 304, and a change routes and bills at once;
// - a node that reports inflated usage is flagged, billed at its peers' rate (or the
//   gateway's estimate) and loses the traffic it only won by its listed price.
// Behaviour, not timings: every bound here is far from what the mechanism needs.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents,
  adminListener, waitFor,
} from '../lib/harness.mjs';
import { setTimeout as sleep } from 'node:timers/promises';

const KEY = 'sk-market-routing-tests';
const keys = [{ name: 'market', key: KEY }];
const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) => post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 30000 });

const nodes = new Set();
after(async () => {
  for (const n of nodes) await n.close();
  await cleanup();
});

// A simulated node: chat completions (whole or streamed, usage included), GET /v1/models (the
// probe), GET /feed (an OpenRouter-style price document with an ETag). `capacity` requests in
// service at most, more get 429 + retry-after; mode 'ok' | 'hang' (requests and probes never
// answered) | '500'; `usageFactor` multiplies the usage it reports.
async function startNode(name, { capacity = 100, serviceMs = 50, retryAfter = 1, price = [1, 1], usageFactor = 1, tokens = 8 } = {}) {
  const node = {
    name, capacity, serviceMs, retryAfter, usageFactor, tokens, mode: 'ok', price,
    inService: 0, served: 0, rateLimited: 0, stalled: 0, feedReads: 0, feed304: 0, ifNoneMatch: 0,
    priceVersion: 1, stalledRes: new Set(),
  };
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => handle(node, req, res, body));
  });
  server.keepAliveTimeout = 60000;
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  node.url = `http://127.0.0.1:${server.address().port}`;
  node.setPrice = (p) => { node.price = p; node.priceVersion++; };
  node.close = () => {
    for (const r of node.stalledRes) r.destroy();
    server.closeAllConnections();
    return new Promise((ok) => server.close(() => ok()));
  };
  nodes.add(node);
  return node;
}

function handle(node, req, res, body) {
  if (req.method === 'GET' && req.url === '/v1/models') {
    if (node.mode === '500') return void res.writeHead(500).end('{}');
    if (node.mode === 'hang') return void node.stalledRes.add(res);
    res.writeHead(200, { 'content-type': 'application/json' });
    return void res.end(JSON.stringify({ object: 'list', data: [{ id: 'm', object: 'model' }] }));
  }
  if (req.method === 'GET' && req.url === '/feed') {
    node.feedReads++;
    const etag = `"v${node.priceVersion}"`;
    if (req.headers['if-none-match']) node.ifNoneMatch++;
    if (req.headers['if-none-match'] === etag) {
      node.feed304++;
      return void res.writeHead(304, { etag }).end();
    }
    res.writeHead(200, { 'content-type': 'application/json', etag });
    const [i, o] = node.price;
    return void res.end(JSON.stringify({ data: [{ id: 'm', pricing: { prompt: String(i / 1e6), completion: String(o / 1e6) } }] }));
  }
  if (req.method !== 'POST' || req.url !== '/v1/chat/completions') return void res.writeHead(404).end('{}');
  if (node.mode === '500') return void res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":{"message":"down"}}');
  if (node.inService >= node.capacity) {
    node.rateLimited++;
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': String(node.retryAfter) });
    return void res.end('{"error":{"message":"full","type":"rate_limit_error"}}');
  }
  node.inService++;
  if (node.mode === 'hang') {
    node.stalled++;
    node.stalledRes.add(res);
    res.on('close', () => { node.inService--; node.stalledRes.delete(res); });
    return;
  }
  const doc = JSON.parse(body);
  const text = Array.from({ length: node.tokens }, () => ' tok').join('');
  const promptText = doc.messages.map((m) => m.content).join(' ');
  // About one token per four bytes plus a few per message, as the gateway estimates.
  const prompt = Math.ceil(promptText.length / 4) + 4 * doc.messages.length + 3;
  const usage = {
    prompt_tokens: Math.round(prompt * node.usageFactor),
    completion_tokens: Math.round(node.tokens * node.usageFactor),
  };
  usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
  const finish = () => { node.inService--; node.served++; };
  setTimeout(() => {
    if (!doc.stream) {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        id: 'c1', object: 'chat.completion', created: 1, model: 'm',
        choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }], usage,
      }));
      return finish();
    }
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    const ev = (o) => res.write(`data: ${JSON.stringify(o)}\n\n`);
    const base = { id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm' };
    ev({ ...base, choices: [{ index: 0, delta: { role: 'assistant', content: text }, finish_reason: null }] });
    ev({ ...base, choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
    if (doc.stream_options?.include_usage) ev({ ...base, choices: [], usage });
    res.end('data: [DONE]\n\n');
    finish();
  }, node.serviceMs);
}

const backend = (node, { price = node.price, feed = false, refresh = 0.2 } = {}) => ({
  name: node.name,
  url: node.url + '/v1',
  models: [{ name: 'm', input_usd_per_mtok: price[0], output_usd_per_mtok: price[1] }],
  ...(feed ? { prices_url: node.url + '/feed', prices_refresh_s: refresh } : {}),
});

const served = (rs) => rs.reduce((m, r) => ((m[r.headers.get('x-tollgate-backend')] = (m[r.headers.get('x-tollgate-backend')] ?? 0) + 1), m), {});

test('a full node\'s 429 moves the request on at once: no failure, the node stays up, its learned limit comes down', async () => {
  const cheap = await startNode('full-cheap', { capacity: 2, serviceMs: 400, price: [1, 1] });
  const dear = await startNode('full-dear', { serviceMs: 50, price: [2, 2] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, routing: { retries: 0 }, backends: [backend(cheap), backend(dear)] });
  // One answer each: a node is on probation (one request at a time) until it answered.
  assert.equal((await chat(gw, { model: 'm', messages: user('warm') })).headers.get('x-tollgate-backend'), 'full-cheap');

  const burst = () => Promise.all(Array.from({ length: 8 }, (_, i) => chat(gw, { model: 'm', messages: user(`b${i}`) })));
  const first = await burst();
  assert.deepEqual(first.filter((r) => r.status !== 200).map((r) => r.text), [], 'a 429 is not a failure, even with retries: 0');
  assert.ok(cheap.rateLimited >= 1, 'the cheap node was asked past its capacity and said 429');
  assert.ok(served(first)['full-cheap'] >= 2, JSON.stringify(served(first)));
  const view = await admin.backend('full-cheap');
  assert.equal(view.health, 'up', 'a full node is not taken out: its limit says it is full');
  assert.equal(view.limit_phase, 'steady');
  assert.ok(view.limit < 8, `the learned limit came down: ${view.limit}`);
  assert.equal(view.failures, 0);

  // Learned: the next burst asks it past its capacity less often.
  const before = cheap.rateLimited;
  const second = await burst();
  assert.deepEqual(second.filter((r) => r.status !== 200).map((r) => r.text), []);
  assert.ok(cheap.rateLimited - before <= before, `429s: ${before}, then ${cheap.rateLimited - before}`);
  assert.ok(served(second)['full-cheap'] >= 2, JSON.stringify(served(second)));
});

test('a 429 with a long retry-after takes the node out for it, even with other requests in flight', async () => {
  const cheap = await startNode('pause-cheap', { capacity: 1, serviceMs: 300, retryAfter: 30, price: [1, 1] });
  const dear = await startNode('pause-dear', { price: [2, 2] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, routing: { rate_limit_pause_ms: 10000 }, backends: [backend(cheap), backend(dear)] });
  await chat(gw, { model: 'm', messages: user('warm') });
  const rs = await Promise.all(Array.from({ length: 4 }, (_, i) => chat(gw, { model: 'm', messages: user(`p${i}`) })));
  assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.text).join('\n'));
  assert.ok(cheap.rateLimited >= 1);
  const view = await admin.backend('pause-cheap');
  assert.equal(view.health, 'rate_limited');
  assert.ok(view.ejected_for_ms > 20000, `out for its retry-after: ${view.ejected_for_ms}`);
  const later = await chat(gw, { model: 'm', messages: user('later') });
  assert.equal(later.headers.get('x-tollgate-backend'), 'pause-dear');
});

test('a node that takes requests and answers none is suspected at once: requests fail over long before the first-byte timeout', async () => {
  const cheap = await startNode('stuck-cheap', { serviceMs: 30, price: [1, 1] });
  const dear = await startNode('stuck-dear', { serviceMs: 30, price: [2, 2] });
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    upstream: { first_byte_timeout_ms: 20000 },
    // Probes of the hanging node hang too, and fail only after 10 s.
    health: { interval_ms: 250, timeout_ms: 10000 },
    backends: [backend(cheap), backend(dear)],
  });
  // Its usual time to a first byte is measured on streams.
  for (let i = 0; i < 4; i++) {
    const s = await streamPost(gw.v1 + '/chat/completions', { model: 'm', stream: true, messages: user(`w${i}`) }, { key: KEY });
    assert.equal(s.headers['x-tollgate-backend'], 'stuck-cheap');
  }
  await chat(gw, { model: 'm', messages: user('warm dear') }, { 'x-tollgate-route': 'latency' });
  cheap.mode = 'hang';
  const t0 = performance.now();
  const rs = await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2
    ? streamPost(gw.v1 + '/chat/completions', { model: 'm', stream: true, messages: user(`s${i}`) }, { key: KEY, timeoutMs: 30000 })
      .then((s) => ({ status: s.status, backend: s.headers['x-tollgate-backend'], done: parseEvents(s.events).at(-1)?.data === '[DONE]' }))
    : chat(gw, { model: 'm', messages: user(`s${i}`) })
      .then((r) => ({ status: r.status, backend: r.headers.get('x-tollgate-backend'), done: true })))));
  const took = performance.now() - t0;
  assert.deepEqual(rs.filter((r) => r.status !== 200 || !r.done), [], JSON.stringify(rs));
  assert.ok(rs.every((r) => r.backend === 'stuck-dear'), JSON.stringify(rs));
  assert.ok(cheap.stalled >= 1, 'the stuck node took requests');
  assert.ok(took < 10000, `failed over after ${took.toFixed(0)} ms, not at the 20 s first-byte timeout`);
  const view = await admin.backend('stuck-cheap');
  assert.equal(view.health, 'suspected');
  assert.equal(view.suspected, true);
  assert.ok(view.stuck_total >= 1);
  assert.equal(view.inflight, 0, 'the attempts it ignored were given up');
  assert.ok(gw.logs.json().some((l) => l.event === 'backend_suspected' && l.backend === 'stuck-cheap'));
  // No new traffic while suspected.
  const stalled = cheap.stalled;
  const next = await chat(gw, { model: 'm', messages: user('next') });
  assert.equal(next.headers.get('x-tollgate-backend'), 'stuck-dear');
  assert.equal(cheap.stalled, stalled);
});

test('a good probe ends a failing node\'s cooldown early, and it gets traffic again (slow start)', async () => {
  const cheap = await startNode('back-cheap', { price: [1, 1] });
  const dear = await startNode('back-dear', { price: [2, 2] });
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { interval_ms: 200, eject_after_failures: 2, cooldown_ms: 600000, max_cooldown_ms: 600000, slow_start_ms: 60000 },
    backends: [backend(cheap), backend(dear)],
  });
  await chat(gw, { model: 'm', messages: user('warm') });
  cheap.mode = '500';
  for (let i = 0; i < 3; i++)
    assert.equal((await chat(gw, { model: 'm', messages: user(`f${i}`) })).status, 200);
  const out = await admin.backend('back-cheap');
  assert.ok(out.health === 'ejected' || out.health === 'down', out.health);
  cheap.mode = 'ok';
  const back = await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('again') });
    return r.headers.get('x-tollgate-backend') === 'back-cheap' ? r : null;
  }, { timeoutMs: 15000, intervalMs: 100, what: 'the cheap node to get traffic again' });
  assert.equal(back.status, 200);
  const view = await admin.backend('back-cheap');
  assert.equal(view.health, 'up');
  assert.ok(view.slow_start < 1, `ramping up: ${view.slow_start}`);
  assert.ok(view.effective_limit < view.limit * 2, JSON.stringify(view));
});

test('price feeds: read on their own schedule with If-None-Match; a change routes and bills at once', async () => {
  const a = await startNode('feed-a', { price: [1, 1] });
  const b = await startNode('feed-b', { price: [2, 2] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: [backend(a, { feed: true }), backend(b, { feed: true })] });
  await waitFor(() => a.feed304 >= 3 && b.feed304 >= 3, { timeoutMs: 10000, what: 'several unchanged reads answered 304' });
  assert.ok(a.ifNoneMatch >= 3);
  const view = await admin.backend('feed-a');
  assert.equal(view.models[0].price_source, 'live');
  assert.ok(view.models[0].price_age_ms < 5000, `confirmed recently: ${view.models[0].price_age_ms}`);
  assert.ok(view.models[0].price_changed_ago_ms >= view.models[0].price_age_ms);

  let r = await chat(gw, { model: 'm', messages: user('x') });
  assert.equal(r.headers.get('x-tollgate-backend'), 'feed-a');
  a.setPrice([5, 5]);
  r = await waitFor(async () => {
    const x = await chat(gw, { model: 'm', messages: user('x') });
    return x.headers.get('x-tollgate-backend') === 'feed-b' ? x : null;
  }, { timeoutMs: 10000, intervalMs: 50, what: 'the traffic to move to feed-b' });
  // Billed at feed-b's price in force: (prompt + completion tokens) × 2 USD per million.
  const usage = r.json.usage;
  const want = (usage.prompt_tokens + usage.completion_tokens) * 2 / 1e6;
  assert.ok(Math.abs(Number(r.headers.get('x-tollgate-cost-usd')) - want) < 1e-12, `${r.headers.get('x-tollgate-cost-usd')} vs ${want}`);
  // And back: the feed's change is read, applied and billed.
  a.setPrice([1.5, 1.5]);
  r = await waitFor(async () => {
    const x = await chat(gw, { model: 'm', messages: user('x') });
    return x.headers.get('x-tollgate-backend') === 'feed-a' ? x : null;
  }, { timeoutMs: 10000, intervalMs: 50, what: 'the traffic to come back to feed-a' });
  const u = r.json.usage;
  assert.ok(Math.abs(Number(r.headers.get('x-tollgate-cost-usd')) - (u.prompt_tokens + u.completion_tokens) * 1.5 / 1e6) < 1e-12);
});

test('a node reporting impossible usage is flagged on its first answer, then billed at the estimate, and loses the traffic', async () => {
  const [liar, honest] = await Promise.all([
    startMocknode({ name: 'liar100', models: ['m', 'only-liar'], tokens: 4, fault: 'inflate-usage', quiet: true }),
    startMocknode({ name: 'honest100', models: ['m'], tokens: 4, quiet: true }),
  ]);
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: [
    backendFor(liar, { models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 },
      { name: 'only-liar', upstream: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }),
    backendFor(honest, { prices: [1.5, 1.5] })] });
  const first = await chat(gw, { model: 'm', messages: user('how much') });
  assert.equal(first.status, 200);
  assert.equal(first.headers.get('x-tollgate-backend'), 'liar100');
  // The answer that flags it is billed by the caps (bytes sent and delivered), as before.
  assert.ok(first.json.usage.prompt_tokens > 20, JSON.stringify(first.json.usage));
  const view = await admin.backend('liar100');
  assert.equal(view.models[0].overreporting, true);
  assert.ok(view.models[0].usage_inflation > 10, JSON.stringify(view.models[0]));
  assert.ok(gw.logs.json().some((l) => l.event === 'backend_overreporting' && l.backend === 'liar100'));
  // Routed at its listed price × ~100 from now on.
  const rs = [];
  for (let i = 0; i < 5; i++) rs.push(await chat(gw, { model: 'm', messages: user(`q${i}`) }));
  assert.deepEqual(served(rs), { honest100: 5 });
  // Where only it serves a model, a flagged node is billed at the gateway's own estimate (no
  // peer has answered that model): what was sent and delivered, not 100x, not the caps.
  for (let i = 0; i < 6; i++) await chat(gw, { model: 'only-liar', messages: user(`only ${i}`) });
  const again = await chat(gw, { model: 'only-liar', messages: user('how much') });
  assert.equal(again.headers.get('x-tollgate-backend'), 'liar100');
  const text = again.json.choices[0].message.content;
  assert.ok(again.json.usage.prompt_tokens < 20, JSON.stringify(again.json.usage));
  assert.equal(again.json.usage.completion_tokens, Math.ceil(Buffer.byteLength(text) / 4));
});

test('a node reporting more than its peers is flagged once it has answered enough, billed at their rate, and routed at its effective price', async () => {
  const liar = await startNode('x3-liar', { usageFactor: 3, price: [5, 5] });
  const peer = await startNode('x3-peer', { price: [1.5, 1.5] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, routing: { honesty_min_samples: 5 }, backends: [backend(liar, { feed: true }), backend(peer, { feed: true })] });
  // The peer answers first (cheaper): it is the reference.
  for (let i = 0; i < 6; i++)
    assert.equal((await chat(gw, { model: 'm', messages: user(`peer ${i}`) })).headers.get('x-tollgate-backend'), 'x3-peer');
  // The liar becomes the cheapest at its listed price.
  liar.setPrice([1, 1]);
  await waitFor(async () => (await admin.backend('x3-liar')).models[0].input_usd_per_mtok === 1, { what: 'the new price' });
  const rs = [];
  for (let i = 0; i < 12; i++) rs.push(await chat(gw, { model: 'm', messages: user(`liar ${i}`) }));
  const by = rs.map((r) => r.headers.get('x-tollgate-backend'));
  const first_peer = by.indexOf('x3-peer');
  assert.ok(first_peer >= 5 && first_peer <= 6, `the liar served until it was judged: ${by.join(',')}`);
  assert.ok(by.slice(first_peer).every((b) => b === 'x3-peer'), by.join(','));
  const view = await admin.backend('x3-liar');
  assert.equal(view.models[0].overreporting, true);
  assert.ok(Math.abs(view.models[0].usage_inflation - 3) < 0.5, JSON.stringify(view.models[0]));
  assert.ok(gw.logs.json().some((l) => l.event === 'backend_overreporting' && l.backend === 'x3-liar'));
  // Honest nodes keep their own numbers.
  assert.equal(rs[first_peer].json.usage.completion_tokens, 8);
  // Where it is the cheapest even at the usage it claims (x3 at 1 USD < the peer at 4), it
  // wins again, billed at the peer's rate: a third of what it claims.
  peer.setPrice([4, 4]);
  const moved = await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('again') });
    return r.headers.get('x-tollgate-backend') === 'x3-liar' ? r : null;
  }, { timeoutMs: 10000, intervalMs: 50, what: 'the liar to win at its effective price' });
  assert.equal(moved.json.usage.completion_tokens, 8, JSON.stringify(moved.json.usage));
});

// Backend selection (the "routing" issue): every request's cost is estimated on each
// backend serving the model, from the request's shape and the backend's prices:
//   prompt tokens (bytes of message contents / 4 + 4 per message + 3, plus tool
//   definitions' JSON bytes / 4) x input price
//   + (max_completion_tokens or max_tokens, else routing.default_output_tokens) x n x output price
// and the strategy (routing.strategy or x-tollgate-route) picks among the healthy,
// unsaturated ones under the caller's x-tollgate-max-price-usd.
//
// Traffic is counted at the nodes (/_mock/stats, chat calls only: health probes are
// GET /v1/models). Every test has its own gateway, so no backend state leaks between tests.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, errorShapeProblems,
  mockText, chatCalls, apiCalls, adminListener, waitFor,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-routing-tests';
const keys = [{ name: 'routing', key: KEY }];

const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) => post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 20000 });

async function chatCounts(...nodes) {
  const stats = await Promise.all(nodes.map((n) => n.stats()));
  return Object.fromEntries(nodes.map((n, i) => [n.name, chatCalls(stats[i])]));
}

function expectError(res, status, { code, param, type } = {}) {
  const ctx = `${res.status} ${res.text}`;
  assert.equal(res.status, status, ctx);
  assert.deepEqual(errorShapeProblems(res.json), [], ctx);
  if (code !== undefined) assert.equal(res.json.error.code, code, ctx);
  if (param !== undefined) assert.equal(res.json.error.param, param, ctx);
  if (type !== undefined) assert.equal(res.json.error.type, type, ctx);
}

// Runs `total` requests, `concurrency` at a time; resolves with the responses in order.
async function batches(total, concurrency, send) {
  const out = [];
  for (let i = 0; i < total; i += concurrency) {
    const n = Math.min(concurrency, total - i);
    out.push(...await Promise.all(Array.from({ length: n }, (_, j) => send(i + j))));
  }
  return out;
}

test('the cheapest backend gets all the traffic: whole answers, streams, completions', async () => {
  const [dear, mid, cheap] = await Promise.all([
    startMocknode({ name: 'r-dear', models: ['m'], tokens: 2, quiet: true }),
    startMocknode({ name: 'r-mid', models: ['m'], tokens: 2, quiet: true }),
    startMocknode({ name: 'r-cheap', models: ['m'], tokens: 2, quiet: true }),
  ]);
  // Listed dearest first, so "first listed" and "cheapest" disagree.
  const gw = await startGateway({ keys, backends: [
    backendFor(dear, { prices: [2, 2] }), backendFor(mid, { prices: [1, 1] }), backendFor(cheap, { prices: [0.5, 0.5] }),
  ] });
  const results = await batches(12, 4, (i) => chat(gw, { model: 'm', messages: user(`q${i}`) }));
  for (const r of results) {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-tollgate-backend'), 'r-cheap');
    assert.equal(r.json.choices[0].message.content, mockText('r-cheap', 2));
  }
  const s = await streamPost(gw.v1 + '/chat/completions', { model: 'm', messages: user('s'), stream: true }, { key: KEY });
  assert.equal(s.status, 200, s.raw);
  assert.equal(s.headers['x-tollgate-backend'], 'r-cheap');
  assert.equal(parseEvents(s.events).at(-1).data, '[DONE]');
  const c = await post(gw.v1 + '/completions', { model: 'm', prompt: 'p' }, { key: KEY });
  assert.equal(c.status, 200, c.text);
  assert.equal(c.headers.get('x-tollgate-backend'), 'r-cheap');

  assert.deepEqual(await chatCounts(dear, mid, cheap), { 'r-dear': 0, 'r-mid': 0, 'r-cheap': 13 });
  const [d, m] = await Promise.all([dear.stats(), mid.stats()]);
  assert.equal(apiCalls(d) + apiCalls(m), 0, 'no inference call reached a dearer node');
});

test('the ranking follows the request\'s shape: input-cheap vs output-cheap nodes', async () => {
  // in: cheap input, dear output; out: the reverse (USD per million tokens).
  const [inNode, outNode] = await Promise.all([
    startMocknode({ name: 'in-cheap', models: ['m'], tokens: 2, quiet: true }),
    startMocknode({ name: 'out-cheap', models: ['m'], tokens: 2, quiet: true }),
  ]);
  const gw = await startGateway({ keys, backends: [
    backendFor(inNode, { prices: [0.1, 10] }), backendFor(outNode, { prices: [10, 0.1] }),
  ] });
  const served = async (body, headers) => {
    const r = await chat(gw, { model: 'm', ...body }, headers);
    assert.equal(r.status, 200, r.text);
    return r.headers.get('x-tollgate-backend');
  };
  // Long prompt, one token out: 2007 x 0.1 + 1 x 10 vs 2007 x 10 + 1 x 0.1.
  assert.equal(await served({ messages: user('x'.repeat(8000)), max_tokens: 1 }), 'in-cheap');
  // Short prompt, long answer: 6 x 0.1 + 2000 x 10 vs 6 x 10 + 2000 x 0.1.
  assert.equal(await served({ messages: user('hi'), max_tokens: 2000 }), 'out-cheap');
  assert.equal(await served({ messages: user('hi'), max_completion_tokens: 2000 }), 'out-cheap');
  // No limit: routing.default_output_tokens (256) is assumed.
  assert.equal(await served({ messages: user('hi') }), 'out-cheap');
  // Messages and their framing add up: many small messages make a long prompt.
  const many = Array.from({ length: 400 }, (_, i) => ({ role: i % 2 ? 'assistant' : 'user', content: 'y'.repeat(20) }));
  assert.equal(await served({ messages: many, max_tokens: 2 }), 'in-cheap');
  // n multiplies the output: 107 x 0.1 + 10n x 10 vs 107 x 10 + 10n x 0.1.
  assert.equal(await served({ messages: user('z'.repeat(400)), max_tokens: 10, n: 1 }), 'in-cheap');
  assert.equal(await served({ messages: user('z'.repeat(400)), max_tokens: 10, n: 12 }), 'out-cheap');
  // Tool definitions count as prompt: ~1000 tokens of tools flip a 50-token answer.
  const tools = Array.from({ length: 20 }, (_, i) => ({ type: 'function', function: {
    name: `tool_${i}`, description: 'd'.repeat(150), parameters: { type: 'object', properties: {} } } }));
  assert.ok(JSON.stringify(tools).length > 3600);
  assert.equal(await served({ messages: user('hi'), max_tokens: 50 }), 'out-cheap');
  assert.equal(await served({ messages: user('hi'), max_tokens: 50, tools }), 'in-cheap');
  // Completions too: the prompt string is the prompt.
  const comp = async (body) => {
    const r = await post(gw.v1 + '/completions', { model: 'm', ...body }, { key: KEY });
    assert.equal(r.status, 200, r.text);
    return r.headers.get('x-tollgate-backend');
  };
  assert.equal(await comp({ prompt: 'p'.repeat(8000), max_tokens: 1 }), 'in-cheap');
  assert.equal(await comp({ prompt: 'p', max_tokens: 2000 }), 'out-cheap');

  assert.deepEqual(await chatCounts(inNode, outNode), { 'in-cheap': 4, 'out-cheap': 5 });
});

test('routing.default_output_tokens is the output assumed when the request sets no limit', async () => {
  const [inNode, outNode] = await Promise.all([
    startMocknode({ name: 'd-in-cheap', models: ['m'], tokens: 2, quiet: true }),
    startMocknode({ name: 'd-out-cheap', models: ['m'], tokens: 2, quiet: true }),
  ]);
  const gw = await startGateway({ keys, routing: { default_output_tokens: 1 }, backends: [
    backendFor(inNode, { prices: [0.1, 10] }), backendFor(outNode, { prices: [10, 0.1] }),
  ] });
  // 6 x 0.1 + 1 x 10 vs 6 x 10 + 1 x 0.1: with the default 256 it would be the reverse.
  const r = await chat(gw, { model: 'm', messages: user('hi') });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get('x-tollgate-backend'), 'd-in-cheap');
  const capped = await chat(gw, { model: 'm', messages: user('hi'), max_tokens: 2000 });
  assert.equal(capped.headers.get('x-tollgate-backend'), 'd-out-cheap');
});

test('price-weighted spreads the load by 1/estimate^2; the cheaper node gets more', async () => {
  const [a, b] = await Promise.all([
    startMocknode({ name: 'pw-a', models: ['m'], tokens: 1, quiet: true }),
    startMocknode({ name: 'pw-b', models: ['m'], tokens: 1, quiet: true }),
  ]);
  // Prices 1:2, so estimates 1:2 and weights 4:1: about 80/20.
  const gw = await startGateway({ keys, backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [2, 2] })] });
  const N = 120;
  const results = await batches(N, 8, (i) => chat(gw, { model: 'm', messages: user(`w${i}`) },
    { 'x-tollgate-route': 'price-weighted' }));
  assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => r.text), []);
  const byHeader = { 'pw-a': 0, 'pw-b': 0 };
  for (const r of results) byHeader[r.headers.get('x-tollgate-backend')]++;
  const counts = await chatCounts(a, b);
  assert.deepEqual(counts, byHeader, 'the header names the node that served');
  assert.ok(counts['pw-b'] > 0, `the dearer node got no traffic: ${JSON.stringify(counts)}`);
  assert.ok(counts['pw-a'] > counts['pw-b'], `the cheaper node did not get more: ${JSON.stringify(counts)}`);
  const share = counts['pw-a'] / N;
  // Expected 0.8 (sd ~0.037 over 120 requests); the bounds are > 5 sd away.
  assert.ok(share > 0.6 && share < 0.98, `cheaper node's share ${share.toFixed(2)} (expected about 0.8)`);

  // Without the header the configured strategy (cheapest) applies.
  await Promise.all([a.reset(), b.reset()]);
  await batches(10, 5, (i) => chat(gw, { model: 'm', messages: user(`c${i}`) }));
  assert.deepEqual(await chatCounts(a, b), { 'pw-a': 10, 'pw-b': 0 });
});

test('routing.strategy price-weighted from the config; x-tollgate-route cheapest overrides it', async () => {
  const [a, b] = await Promise.all([
    startMocknode({ name: 'cfg-pw-a', models: ['m'], tokens: 1, quiet: true }),
    startMocknode({ name: 'cfg-pw-b', models: ['m'], tokens: 1, quiet: true }),
  ]);
  // Equal prices: weights 1:1.
  const gw = await startGateway({ keys, routing: { strategy: 'price-weighted' },
    backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [1.1, 1.1] })] });
  const results = await batches(60, 6, (i) => chat(gw, { model: 'm', messages: user(`w${i}`) }));
  assert.ok(results.every((r) => r.status === 200));
  const counts = await chatCounts(a, b);
  assert.ok(counts['cfg-pw-a'] > 0 && counts['cfg-pw-b'] > 0, `both nodes get traffic: ${JSON.stringify(counts)}`);

  await Promise.all([a.reset(), b.reset()]);
  await batches(10, 5, (i) => chat(gw, { model: 'm', messages: user(`c${i}`) }, { 'x-tollgate-route': 'cheapest' }));
  assert.deepEqual(await chatCounts(a, b), { 'cfg-pw-a': 10, 'cfg-pw-b': 0 });
});

test('x-tollgate-route latency picks the node answering faster, once both are measured', async () => {
  const [slow, fast] = await Promise.all([
    startMocknode({ name: 'lat-slow', models: ['m'], tokens: 1, ttfbMs: 80, quiet: true }),
    startMocknode({ name: 'lat-fast', models: ['m'], tokens: 1, ttfbMs: 0, quiet: true }),
  ]);
  const admin = await adminListener();
  // The slow node is the cheaper one: cheapest and latency disagree.
  const gw = await startGateway({ keys, ...admin.config, backends: [
    backendFor(slow, { prices: [0.5, 0.5] }), backendFor(fast, { prices: [1, 1] }),
  ] });
  const latency = { 'x-tollgate-route': 'latency' };
  // Warm-up: each node serves at least once so the gateway has its time to first byte.
  for (let i = 0; i < 6; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`warm${i}`) }, latency);
    assert.equal(r.status, 200, r.text);
  }
  await chat(gw, { model: 'm', messages: user('warm-cheapest') }); // cheapest: the slow node
  const warm = await chatCounts(slow, fast);
  assert.ok(warm['lat-slow'] >= 1 && warm['lat-fast'] >= 1, `warm-up reached both nodes: ${JSON.stringify(warm)}`);
  const [as, af] = await Promise.all([admin.backend('lat-slow'), admin.backend('lat-fast')]);
  assert.ok(as.ttfb_ms > af.ttfb_ms, `admin ttfb_ms: slow ${as.ttfb_ms}, fast ${af.ttfb_ms}`);

  await Promise.all([slow.reset(), fast.reset()]);
  for (let i = 0; i < 10; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`l${i}`) }, latency);
    assert.equal(r.headers.get('x-tollgate-backend'), 'lat-fast');
  }
  assert.deepEqual(await chatCounts(slow, fast), { 'lat-slow': 0, 'lat-fast': 10 });
  // The default strategy still goes by price.
  const r = await chat(gw, { model: 'm', messages: user('cheap') });
  assert.equal(r.headers.get('x-tollgate-backend'), 'lat-slow');
});

test('max_inflight: a saturated cheap node spills concurrent requests to the next cheapest', async () => {
  const [cheap, next] = await Promise.all([
    startMocknode({ name: 'sat-cheap', models: ['m', 'only-cheap'], tokens: 1, ttfbMs: 600, threads: 4, quiet: true }),
    startMocknode({ name: 'sat-next', models: ['m'], tokens: 1, quiet: true }),
  ]);
  const admin = await adminListener();
  // One worker: the in-flight count is read and raised on one thread, so the limit is exact.
  const gw = await startGateway({ keys, workers: 1, ...admin.config, backends: [
    { ...backendFor(cheap, { prices: [0.5, 0.5] }), max_inflight: 2 },
    backendFor(next, { prices: [1, 1] }),
  ] });
  // Each node answers once first: a node that never answered takes one request at a time.
  await Promise.all([0, 1].map((i) => chat(gw, { model: 'm', messages: user(`warm${i}`) })));
  await Promise.all([cheap.reset(), next.reset()]);
  const pending = Array.from({ length: 6 }, (_, i) => chat(gw, { model: 'm', messages: user(`c${i}`) }));
  // While they run (the cheap node takes 600 ms) the admin view shows it full.
  const during = await waitFor(async () => {
    const b = await admin.backend('sat-cheap');
    return b.inflight === 2 ? b : null;
  }, { timeoutMs: 3000, what: 'sat-cheap at 2 requests in flight' });
  assert.equal(during.max_inflight, 2);
  const results = await Promise.all(pending);
  assert.deepEqual(results.filter((r) => r.status !== 200).map((r) => r.text), []);
  const by = results.map((r) => r.headers.get('x-tollgate-backend'));
  assert.equal(by.filter((b) => b === 'sat-cheap').length, 2, by.join(','));
  assert.equal(by.filter((b) => b === 'sat-next').length, 4, by.join(','));
  assert.deepEqual(await chatCounts(cheap, next), { 'sat-cheap': 2, 'sat-next': 4 });

  // A model only the saturated node serves: the request over the limit gets 503 with retry-after.
  const only = await Promise.all(Array.from({ length: 3 }, (_, i) => chat(gw, { model: 'only-cheap', messages: user(`o${i}`) })));
  const statuses = only.map((r) => r.status).sort();
  assert.deepEqual(statuses, [200, 200, 503], only.map((r) => `${r.status} ${r.text}`).join('\n'));
  const refused = only.find((r) => r.status === 503);
  expectError(refused, 503, { code: 'no_healthy_backend', type: 'api_error' });
  assert.ok(Number(refused.headers.get('retry-after')) >= 1, `retry-after: ${refused.headers.get('retry-after')}`);
  const after = await admin.backend('sat-cheap');
  assert.equal(after.inflight, 0, 'the in-flight count returns to 0');
  assert.equal(after.failures, 0, 'saturation is not a failure');
});

test('x-tollgate-max-price-usd: a ceiling on the estimate', async () => {
  const [a, b] = await Promise.all([
    startMocknode({ name: 'mp-a', models: ['m'], tokens: 1, quiet: true }),
    startMocknode({ name: 'mp-b', models: ['m'], tokens: 1, quiet: true }),
  ]);
  const gw = await startGateway({ keys, backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [3, 3] })] });
  // 'x' x 400: 100 + 4 + 3 = 107 prompt tokens, 100 out: $0.000207 on mp-a, $0.000621 on mp-b.
  const body = { model: 'm', messages: user('x'.repeat(400)), max_tokens: 100 };
  const ceiling = (v, extra = {}) => chat(gw, body, { 'x-tollgate-max-price-usd': v, ...extra });

  for (const v of ['0.0001', '0', '0.000000']) {
    const r = await ceiling(v);
    expectError(r, 400, { code: 'max_price_exceeded', param: 'x-tollgate-max-price-usd', type: 'invalid_request_error' });
  }
  // A ceiling between the estimates: the cheaper node, even when the strategy would spread.
  const between = await ceiling('0.0003');
  assert.equal(between.status, 200, between.text);
  assert.equal(between.headers.get('x-tollgate-backend'), 'mp-a');
  const spread = await batches(20, 5, () => ceiling('0.0003', { 'x-tollgate-route': 'price-weighted' }));
  assert.ok(spread.every((r) => r.status === 200 && r.headers.get('x-tollgate-backend') === 'mp-a'),
    spread.map((r) => `${r.status} ${r.headers.get('x-tollgate-backend')}`).join(','));
  // A ceiling above both: as without one.
  const high = await ceiling('1');
  assert.equal(high.headers.get('x-tollgate-backend'), 'mp-a');
  // The same request streamed: the ceiling applies before anything is sent.
  const s = await post(gw.v1 + '/chat/completions', { ...body, stream: true },
    { key: KEY, headers: { 'x-tollgate-max-price-usd': '0.0001' } });
  expectError(s, 400, { code: 'max_price_exceeded' });

  for (const v of ['abc', '-1', '0.5usd', 'NaN', '1e400', '']) {
    const r = await ceiling(v);
    expectError(r, 400, { param: 'x-tollgate-max-price-usd', type: 'invalid_request_error' });
    assert.notEqual(r.json.error.code, 'max_price_exceeded', `${JSON.stringify(v)} is not a price: ${r.text}`);
  }
  const badRoute = await chat(gw, body, { 'x-tollgate-route': 'fastest' });
  expectError(badRoute, 400, { param: 'x-tollgate-route', type: 'invalid_request_error' });

  // Rejected requests never reached a node: mp-a served exactly the 200s above.
  assert.deepEqual(await chatCounts(a, b), { 'mp-a': 22, 'mp-b': 0 });
});

test('routing.retries bounds how many backends one request tries', async () => {
  const nodes = await Promise.all([1, 2, 3].map((i) => startMocknode({ name: `try-${i}`, models: ['m'], fault: '500', quiet: true })));
  const backends = nodes.map((n, i) => backendFor(n, { prices: [i + 1, i + 1] }));
  const reset = () => Promise.all(nodes.map((n) => n.reset()));
  const tried = async () => Object.values(await chatCounts(...nodes));

  // Default retries (2): three backends tried, cheapest first; the last one is named.
  const gw = await startGateway({ keys, backends });
  await reset();
  const r = await chat(gw, { model: 'm', messages: user('x') });
  expectError(r, 502, { code: 'bad_backend_response', type: 'api_error' });
  assert.match(r.json.error.message, /try-3/);
  assert.match(r.json.error.message, /\b500\b/);
  assert.equal(r.headers.get('x-should-retry'), 'false');
  assert.deepEqual(await tried(), [1, 1, 1]);

  for (const [retries, expected] of [[1, [1, 1, 0]], [0, [1, 0, 0]]]) {
    const g = await startGateway({ keys, routing: { retries }, backends });
    await reset();
    const res = await chat(g, { model: 'm', messages: user('x') });
    expectError(res, 502, { code: 'bad_backend_response' });
    assert.match(res.json.error.message, new RegExp(`try-${retries + 1}`));
    assert.equal(res.headers.get('x-should-retry'), 'false');
    assert.deepEqual(await tried(), expected, `routing.retries ${retries}`);
    await g.stop();
  }
});

test('near-ties (routing.tie_tolerance) are shared by requests in flight; tie_tolerance 0 is strict', async () => {
  const [a, b] = await Promise.all([
    startMocknode({ name: 'tie-a', models: ['m'], tokens: 1, ttfbMs: 300, threads: 4, quiet: true }),
    startMocknode({ name: 'tie-b', models: ['m'], tokens: 1, ttfbMs: 300, threads: 4, quiet: true }),
  ]);
  // 0.5% apart: within the default 1% tolerance.
  const backends = [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [1.005, 1.005] })];
  const burst = async (gw) => {
    await Promise.all([a.reset(), b.reset()]);
    const rs = await Promise.all(Array.from({ length: 4 }, (_, i) => chat(gw, { model: 'm', messages: user(`t${i}`) })));
    assert.ok(rs.every((r) => r.status === 200), rs.map((r) => r.text).join('\n'));
    return chatCounts(a, b);
  };
  // Each node answers once first: a node that never answered takes one request at a time.
  const warm = (gw) => Promise.all([0, 1].map((i) => chat(gw, { model: 'm', messages: user(`warm${i}`) })));
  const tolerant = await startGateway({ keys, workers: 1, backends });
  await warm(tolerant);
  assert.deepEqual(await burst(tolerant), { 'tie-a': 2, 'tie-b': 2 }, 'a tie goes to the node with fewer requests in flight');
  const strict = await startGateway({ keys, workers: 1, routing: { tie_tolerance: 0 }, backends });
  await warm(strict);
  assert.deepEqual(await burst(strict), { 'tie-a': 4, 'tie-b': 0 });
});

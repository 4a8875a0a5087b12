// What a request is billed for (the "routing" issue). Nodes are not trusted:
// - completion_tokens is clamped to max_tokens x n and to the bytes of generated text
//   delivered (+1 per choice); prompt_tokens to the prompt's bytes + 8 per message + 64
//   (text-only requests); a node reporting no usage is estimated (bytes / 4);
// - cost = prompt x input price + completion x output price (USD per million tokens, live
//   prices when a prices_url feed set them): header x-tollgate-cost-usd on whole answers,
//   usage.cost in the usage chunk of a stream whose caller asked for it;
// - live prices from an OpenRouter-style document at prices_url move traffic.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  get, startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, mockText,
  mockPromptTokens, chatCalls, adminListener, waitFor, startRawBackend, startJsonServer, chunk,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-billing-tests';
const keys = [{ name: 'billing', key: KEY }];
const IN = 2; // USD per million input tokens
const OUT = 3; // USD per million output tokens

const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) => post(gw.v1 + '/chat/completions', body, { key: KEY, headers });
const usd = (prompt, completion, input = IN, output = OUT) => (prompt * input + completion * output) / 1e6;

function assertCostHeader(res, expected) {
  const h = res.headers.get('x-tollgate-cost-usd');
  assert.match(h ?? '', /^\d+\.\d+$/, `x-tollgate-cost-usd is a plain decimal string: ${h}`);
  assert.ok(Math.abs(Number(h) - expected) < 1e-10, `x-tollgate-cost-usd ${h}, expected ${expected.toFixed(10)}`);
}

function usageChunkOf(r) {
  assert.equal(r.status, 200, r.raw);
  const parsed = parseEvents(r.events);
  assert.equal(parsed.at(-1).data, '[DONE]', r.raw);
  const usageChunks = parsed.filter((p) => p.json?.usage);
  assert.equal(usageChunks.length, 1, `one usage chunk: ${r.raw}`);
  assert.equal(parsed.at(-2), usageChunks[0], 'the usage chunk comes right before [DONE]');
  assert.deepEqual(usageChunks[0].json.choices, []);
  return usageChunks[0].json.usage;
}

const streamText = (r) => parseEvents(r.events).map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');

describe('usage from a node that inflates it (inflate-usage: numbers x 100)', () => {
  let node;
  let gw;
  before(async () => {
    node = await startMocknode({ name: 'liar', models: ['m'], fault: 'inflate-usage', tokens: 4, quiet: true });
    // The caps alone: never flagged as over-reporting (that is market-routing.test.mjs).
    gw = await startGateway({ keys, routing: { honesty_tolerance: 1000 }, backends: [backendFor(node, { prices: [IN, OUT] })] });
  });

  // 'hello there': 11 bytes, one message: the prompt can be at most 11 + 8 + 64 = 83 tokens.
  const messages = user('hello there');
  const promptCap = 11 + 8 + 64;

  test('non-stream, max_tokens 3: completion clamped to 3, prompt to its bytes; cost from the clamped numbers', async () => {
    const r = await chat(gw, { model: 'm', messages, max_tokens: 3 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].message.content, mockText('liar', 3), 'the answer itself is untouched');
    assert.deepEqual(r.json.usage, { prompt_tokens: promptCap, completion_tokens: 3, total_tokens: promptCap + 3 },
      `the node claimed ${mockPromptTokens(messages) * 100} + 300`);
    assertCostHeader(r, usd(promptCap, 3));
  });

  test('non-stream without max_tokens: completion clamped to the bytes delivered + 1', async () => {
    const r = await chat(gw, { model: 'm', messages });
    assert.equal(r.status, 200, r.text);
    const text = r.json.choices[0].message.content;
    assert.equal(text, mockText('liar', 4));
    const cap = Buffer.byteLength(text) + 1;
    assert.deepEqual(r.json.usage, { prompt_tokens: promptCap, completion_tokens: cap, total_tokens: promptCap + cap });
    assertCostHeader(r, usd(promptCap, cap));
  });

  test('stream with include_usage: the usage chunk is clamped and carries the cost', async () => {
    const r = await streamPost(gw.v1 + '/chat/completions',
      { model: 'm', messages, max_tokens: 3, stream: true, stream_options: { include_usage: true } }, { key: KEY });
    assert.equal(streamText(r), mockText('liar', 3));
    const usage = usageChunkOf(r);
    const { cost, ...tokens } = usage;
    assert.deepEqual(tokens, { prompt_tokens: promptCap, completion_tokens: 3, total_tokens: promptCap + 3 });
    assert.equal(typeof cost, 'number');
    assert.ok(Math.abs(cost - usd(promptCap, 3)) < 1e-12, `cost ${cost}, expected ${usd(promptCap, 3)}`);
  });

  test('stream without max_tokens: clamped to the bytes streamed + 1', async () => {
    const r = await streamPost(gw.v1 + '/chat/completions',
      { model: 'm', messages, stream: true, stream_options: { include_usage: true } }, { key: KEY });
    const text = streamText(r);
    assert.equal(text, mockText('liar', 4));
    const usage = usageChunkOf(r);
    assert.equal(usage.completion_tokens, Buffer.byteLength(text) + 1);
    assert.equal(usage.prompt_tokens, promptCap);
    assert.ok(Math.abs(usage.cost - usd(promptCap, Buffer.byteLength(text) + 1)) < 1e-12, `cost ${usage.cost}`);
  });

  test('completions are clamped the same way', async () => {
    const r = await post(gw.v1 + '/completions', { model: 'm', prompt: 'once upon', max_tokens: 2 }, { key: KEY });
    assert.equal(r.status, 200, r.text);
    // 'once upon': 9 bytes, one item: 9 + 8 + 64.
    assert.deepEqual(r.json.usage, { prompt_tokens: 81, completion_tokens: 2, total_tokens: 83 });
    assertCostHeader(r, usd(81, 2));
  });

  test('every clamped answer is counted against the node in /metrics', async () => {
    const m = await get(gw.url + '/metrics');
    assert.equal(m.status, 200);
    const line = /^tollgate_backend_usage_clamped_total\{backend="liar"\} (\d+)$/m.exec(m.text);
    assert.ok(line, m.text.split('\n').filter((l) => l.includes('clamped')).join('\n'));
    assert.equal(Number(line[1]), 5, 'the five answers above');
  });
});

describe('usage from a node that reports none', () => {
  let gw;
  const content = 'abcdefghijklmnopqrst'; // 20 bytes: 5 tokens estimated
  before(async () => {
    const raw = await startRawBackend((sock, req) => {
      if (req.body?.stream) {
        const ev = (delta, finish = null) => `data: ${JSON.stringify({ id: 'chatcmpl-nu', object: 'chat.completion.chunk',
          created: 1, model: 'm', choices: [{ index: 0, delta, finish_reason: finish }] })}\n\n`;
        sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n');
        sock.write(chunk(ev({ role: 'assistant', content: content.slice(0, 8) })));
        sock.write(chunk(ev({ content: content.slice(8) })));
        sock.write(chunk(ev({}, 'stop')));
        sock.write(chunk('data: [DONE]\n\n'));
        sock.end('0\r\n\r\n');
        return;
      }
      const body = JSON.stringify({ id: 'chatcmpl-nu', object: 'chat.completion', created: 1, model: 'm',
        choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }] });
      sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
    });
    gw = await startGateway({ keys, backends: [{ name: 'no-usage', url: raw.v1,
      models: [{ name: 'm', input_usd_per_mtok: IN, output_usd_per_mtok: OUT }] }] });
  });

  // 'hello there' (11 bytes, one message): ceil(11 / 4) + 4 + 3 = 10 prompt tokens estimated.
  const messages = user('hello there');

  test('non-stream: the cost is estimated from the bytes', async () => {
    const r = await chat(gw, { model: 'm', messages });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].message.content, content);
    assertCostHeader(r, usd(10, 5));
  });

  test('stream with include_usage: the gateway adds an estimated usage chunk with the cost', async () => {
    const r = await streamPost(gw.v1 + '/chat/completions',
      { model: 'm', messages, stream: true, stream_options: { include_usage: true } }, { key: KEY });
    assert.equal(streamText(r), content);
    const usage = usageChunkOf(r);
    assert.deepEqual({ ...usage, cost: undefined }, { prompt_tokens: 10, completion_tokens: 5, total_tokens: 15, cost: undefined });
    assert.ok(Math.abs(usage.cost - usd(10, 5)) < 1e-12, `cost ${usage.cost}`);
  });

  test('stream without include_usage: no usage chunk is invented', async () => {
    const r = await streamPost(gw.v1 + '/chat/completions', { model: 'm', messages, stream: true }, { key: KEY });
    assert.equal(r.status, 200, r.raw);
    const parsed = parseEvents(r.events);
    assert.equal(parsed.at(-1).data, '[DONE]');
    assert.ok(!parsed.some((p) => p.json?.usage), r.raw);
  });
});

const perToken = (mtok) => String(mtok / 1e6);

test('a price change at prices_url moves the traffic', async (t) => {
  // feed-a is the dearer node by config and by the first document; then the feed makes it cheaper.
  const [pa, pb] = await Promise.all([
    startMocknode({ name: 'feed-a', models: ['a-upstream'], tokens: 2, quiet: true }),
    startMocknode({ name: 'feed-b', models: ['m'], tokens: 2, quiet: true }),
  ]);
  const doc = (aPrice) => ({ data: [
    { id: 'unrelated/model', pricing: { prompt: '0.1', completion: '0.1' } },
    // Matched by the upstream name for feed-a, by the name for feed-b.
    { id: 'a-upstream', name: 'A', pricing: { prompt: perToken(aPrice), completion: perToken(aPrice) } },
    { id: 'm', pricing: { prompt: perToken(2), completion: perToken(2) } },
  ] });
  const feed = await startJsonServer(doc(5));
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: [
    { ...backendFor(pa, { models: [{ name: 'm', upstream: 'a-upstream', input_usd_per_mtok: 9, output_usd_per_mtok: 9 }] }),
      prices_url: feed.url + '/api/v1/models', prices_refresh_s: 1 },
    { ...backendFor(pb, { prices: [3, 3] }), prices_url: feed.url + '/models', prices_refresh_s: 1 },
  ] });

  const live = await waitFor(async () => {
    const bs = await admin.backends();
    return bs.every((b) => b.models[0].price_source === 'live') ? bs : null;
  }, { timeoutMs: 5000, what: 'live prices for both backends' });
  const byName = Object.fromEntries(live.map((b) => [b.name, b.models[0]]));
  const { name, upstream, input_usd_per_mtok, output_usd_per_mtok, price_source } = byName['feed-a'];
  assert.deepEqual({ name, upstream, input_usd_per_mtok, output_usd_per_mtok, price_source },
    { name: 'm', upstream: 'a-upstream', input_usd_per_mtok: 5, output_usd_per_mtok: 5, price_source: 'live' });
  assert.equal(byName['feed-b'].input_usd_per_mtok, 2);
  assert.equal(byName['feed-b'].output_usd_per_mtok, 2);

  for (let i = 0; i < 3; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`before${i}`) });
    assert.equal(r.headers.get('x-tollgate-backend'), 'feed-b');
    // Billed at the live price, not the config's 3/3.
    assertCostHeader(r, usd(r.json.usage.prompt_tokens, r.json.usage.completion_tokens, 2, 2));
  }
  assert.equal(chatCalls(await pa.stats()), 0);

  feed.set(doc(0.5));
  const t0 = performance.now();
  const moved = await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('after') });
    return r.headers.get('x-tollgate-backend') === 'feed-a' ? r : null;
  }, { timeoutMs: 8000, intervalMs: 100, what: 'traffic to move to feed-a after its price fell' });
  t.diagnostic(`traffic moved ${(performance.now() - t0).toFixed(0)} ms after the price change (prices_refresh_s 1)`);
  assertCostHeader(moved, usd(moved.json.usage.prompt_tokens, moved.json.usage.completion_tokens, 0.5, 0.5));
  assert.equal(moved.json.choices[0].message.content, mockText('feed-a', 2));
  assert.equal((await pa.stats()).last.body.model, 'a-upstream');
  const a = await admin.backend('feed-a');
  assert.equal(a.models[0].price_source, 'live');
  assert.equal(a.models[0].input_usd_per_mtok, 0.5);
  // And it stays there.
  for (let i = 0; i < 3; i++) {
    assert.equal((await chat(gw, { model: 'm', messages: user(`stay${i}`) })).headers.get('x-tollgate-backend'), 'feed-a');
  }
});

test('a broken prices document, or prices that are not numbers, keep the last good prices', async () => {
  const node = await startMocknode({ name: 'feed-c', models: ['m'], tokens: 1, quiet: true });
  const good = { data: [{ id: 'm', pricing: { prompt: perToken(0.5), completion: perToken(0.7) } }] };
  // One backend per kind of bad document, each with its own feed path (all on one node).
  const bad = {
    'not-json': '{"data": [',
    negative: { data: [{ id: 'm', pricing: { prompt: '-1', completion: perToken(1) } }] },
    'no-pricing': { data: [{ id: 'm' }] },
    'not-numbers': { data: [{ id: 'm', pricing: { prompt: 'free', completion: 'n/a' } }] },
    'trailing-junk': { data: [{ id: 'm', pricing: { prompt: '0.000001abc', completion: '0.000001abc' } }] },
  };
  const feed = await startJsonServer(good);
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: Object.keys(bad).map((kind) => (
    { ...backendFor(node, { name: `feed-${kind}`, prices: [3, 3] }), prices_url: `${feed.url}/${kind}`, prices_refresh_s: 1 })) });
  const prices = async () => Object.fromEntries((await admin.backends()).map((b) => [b.name.slice(5),
    [b.models[0].input_usd_per_mtok, b.models[0].output_usd_per_mtok, b.models[0].price_source]]));
  const allGood = Object.fromEntries(Object.keys(bad).map((k) => [k, [0.5, 0.7, 'live']]));
  await waitFor(async () => JSON.stringify(await prices()) === JSON.stringify(allGood),
    { timeoutMs: 5000, what: 'the first live prices' });

  feed.set((p) => bad[p.slice(1)] ?? good);
  const hits = Object.fromEntries(Object.keys(bad).map((k) => [k, feed.hitsFor(`/${k}`)]));
  await waitFor(async () => Object.keys(bad).every((k) => feed.hitsFor(`/${k}`) >= hits[k] + 2),
    { timeoutMs: 8000, what: 'each bad document fetched twice' });
  const got = await prices();
  const problems = Object.entries(got).filter(([, v]) => JSON.stringify(v) !== JSON.stringify([0.5, 0.7, 'live']))
    .map(([k, v]) => `${k}: ${JSON.stringify(bad[k])} made the prices ${JSON.stringify(v)}`);
  assert.deepEqual(problems, [], 'a bad document must keep the last good prices');
  // The billing follows the live prices.
  const r = await chat(gw, { model: 'm', messages: user('x') });
  assertCostHeader(r, usd(r.json.usage.prompt_tokens, r.json.usage.completion_tokens, 0.5, 0.7));
});

test('the backend\'s api_key goes to a prices_url on its own origin, never to one elsewhere', async () => {
  const doc = { data: [{ id: 'm', pricing: { prompt: perToken(0.5), completion: perToken(0.7) } }] };
  // Same origin: the backend's url and its feed are one server.
  const own = await startJsonServer(doc);
  const node = await startMocknode({ name: 'feed-key', models: ['m'], tokens: 1, quiet: true });
  const elsewhere = await startJsonServer(doc);
  const gw = await startGateway({
    keys,
    backends: [
      { name: 'own', url: own.url + '/v1', api_key: 'own-node-key', prices_url: own.url + '/prices',
        prices_refresh_s: 1, models: [{ name: 'm', input_usd_per_mtok: 3, output_usd_per_mtok: 3 }] },
      { ...backendFor(node, { name: 'other', api_key: 'other-node-key', prices: [3, 3] }),
        prices_url: elsewhere.url + '/prices', prices_refresh_s: 1 },
    ],
  });
  await waitFor(() => own.hitsFor('/prices') >= 2 && elsewhere.hitsFor('/prices') >= 2,
    { timeoutMs: 5000, what: 'both feeds fetched twice' });
  assert.deepEqual([...new Set(own.authorizationsFor('/prices'))], ['Bearer own-node-key']);
  assert.deepEqual([...new Set(elsewhere.authorizationsFor('/prices'))], [null]);
  await gw.stop();
});

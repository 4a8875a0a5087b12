// Cached-token pricing (issue 14 item 5): `cached_input_usd_per_mtok` per backend model (or a
// price feed's pricing.input_cache_read); the node's usage.prompt_tokens_details.cached_tokens,
// clamped to the prompt tokens billed, are billed at it and the rest of the prompt at the input
// price; the usage record (ledger) and the metrics show them.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, cleanup, post, get, startRawBackend, startJsonServer, waitFor, adminListener,
  streamPost, parseEvents, chunk,
} from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';
import { sendJson, chatAnswer, chatChunk, sse, sseHead, LAST_CHUNK } from '../lib/hostile.mjs';

after(cleanup);

const KEY = 'sk-cached-pricing-tests';
const keys = [{ name: 'cached', key: KEY }];
const chat = (gw, body) => post(gw.v1 + '/chat/completions', body, { key: KEY, timeoutMs: 20000 });
// About 2,000 bytes: room for the 400 prompt tokens the node reports (no clamp).
const messages = [{ role: 'user', content: 'cache me '.repeat(220) }];

// A node that reports 400 prompt tokens, `cached` of them cached, and 2 completion tokens.
async function node(cached) {
  return startRawBackend((sock, req) => sendJson(sock, 200, chatAnswer(req, {
    content: 'hello',
    usage: { prompt_tokens: 400, completion_tokens: 2, total_tokens: 402,
      prompt_tokens_details: { cached_tokens: cached } },
  })));
}
const usd = (res) => Number(res.headers.get('x-tollgate-cost-usd'));
const near = (a, b) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);

test('cached prompt tokens are billed at the cached price, in the ledger and the metrics', async (t) => {
  const redis = await startRedis();
  t.after(() => redis.stop()); // its process would keep this file's run alive
  const n = await node(300);
  const gw = await startGateway({ keys, redis: { url: redis.url }, backends: [{ name: 'cn', url: n.v1,
    models: [{ name: 'm', input_usd_per_mtok: 10, output_usd_per_mtok: 20, cached_input_usd_per_mtok: 1 }] }] });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 8 });
  assert.equal(res.status, 200, res.text);
  // 100 uncached x 10 + 300 cached x 1 + 2 x 20, per million.
  near(usd(res), (100 * 10 + 300 * 1 + 2 * 20) / 1e6);
  assert.equal(res.json.usage.prompt_tokens_details.cached_tokens, 300);

  const id = res.headers.get('x-request-id');
  const entry = await waitFor(async () => {
    const rows = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
    for (const [, fields] of rows) {
      const rec = {};
      for (let i = 0; i < fields.length; i += 2) rec[fields[i]] = fields[i + 1];
      if (rec.id === id) return rec;
    }
    return null;
  }, { what: 'the usage record' });
  assert.equal(entry.cached_tokens, '300');
  assert.equal(entry.prompt_tokens, '400');
  near(Number(entry.cost_usd), usd(res));
  const sums = await redis.client.call('HGET', 'tg:usage:sum:cached', 'm:cached_tokens');
  assert.equal(sums, '300');

  const metrics = await get(gw.url + '/metrics');
  assert.match(metrics.text, /^tollgate_cached_tokens_total\{backend="cn",model="m"\} 300$/m);
});

test('cached tokens are clamped to the prompt; without a cached price they cost the input price', async () => {
  const liar = await node(5000);
  const plain = await node(300);
  const gw = await startGateway({ keys, backends: [
    { name: 'liar', url: liar.v1, models: [{ name: 'a', input_usd_per_mtok: 10, output_usd_per_mtok: 20,
      cached_input_usd_per_mtok: 1 }] },
    { name: 'plain', url: plain.v1, models: [{ name: 'b', input_usd_per_mtok: 10, output_usd_per_mtok: 20 }] },
  ] });
  const a = await chat(gw, { model: 'a', messages, max_tokens: 8 });
  assert.equal(a.status, 200, a.text);
  near(usd(a), (400 * 1 + 2 * 20) / 1e6);
  assert.equal(a.json.usage.prompt_tokens_details.cached_tokens, 400, 'the caller sees what it is billed');
  const b = await chat(gw, { model: 'b', messages, max_tokens: 8 });
  near(usd(b), (400 * 10 + 2 * 20) / 1e6);
});

test('the cached price from the feed (pricing.input_cache_read)', async () => {
  const n = await node(300);
  const feed = await startJsonServer({ data: [{ id: 'm', pricing: {
    prompt: '0.00001', completion: '0.00002', input_cache_read: '0.000002' } }] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: [{ name: 'fn', url: n.v1,
    prices_url: feed.url + '/models', prices_refresh_s: 1,
    models: [{ name: 'm', input_usd_per_mtok: 99, output_usd_per_mtok: 99 }] }] });
  await waitFor(async () => (await admin.backends())[0].models[0].price_source === 'live',
    { timeoutMs: 5000, what: 'the feed read' });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 8 });
  near(usd(res), (100 * 10 + 300 * 2 + 2 * 20) / 1e6);
});

test('a stream\'s usage chunk: its cached tokens are billed at the cached price too', async () => {
  const n = await startRawBackend((sock, req) => {
    sock.write(sseHead());
    sock.write(chunk(sse(chatChunk(req, { role: 'assistant', content: 'hello' }))));
    sock.write(chunk(sse(chatChunk(req, {}, { finish: 'stop' }))));
    sock.write(chunk(sse({ id: 'c', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [],
      usage: { prompt_tokens: 400, completion_tokens: 2, total_tokens: 402,
        prompt_tokens_details: { cached_tokens: 300 } } })));
    sock.end(Buffer.concat([chunk(sse('[DONE]')), LAST_CHUNK]));
  });
  const gw = await startGateway({ keys, backends: [{ name: 'sn', url: n.v1,
    models: [{ name: 'm', input_usd_per_mtok: 10, output_usd_per_mtok: 20, cached_input_usd_per_mtok: 1 }] }] });
  const r = await streamPost(gw.v1 + '/chat/completions',
    { model: 'm', messages, max_tokens: 8, stream: true, stream_options: { include_usage: true } },
    { key: KEY, timeoutMs: 20000 });
  assert.equal(r.status, 200, r.raw);
  const usage = parseEvents(r.events).map((e) => e.json?.usage).find(Boolean);
  assert.ok(usage, r.raw);
  near(usage.cost, (100 * 10 + 300 * 1 + 2 * 20) / 1e6);
});

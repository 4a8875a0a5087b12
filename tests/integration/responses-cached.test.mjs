// Cached-token pricing on POST /v1/responses (issue 14 item 5), as cached-pricing.test.mjs
// checks it for chat: the node's usage.input_tokens_details.cached_tokens, from a whole
// answer or from a stream's response.completed event, clamped to the input tokens billed,
// are billed at `cached_input_usd_per_mtok` and the rest of the input at the input price; the
// usage the caller gets, the usage record (ledger) and the metrics show them.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startGateway, cleanup, post, get, startRawBackend, waitFor, streamPost,
} from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';
import { sendJson, chunk, sseHead, LAST_CHUNK } from '../lib/hostile.mjs';

let redis;
before(async () => { redis = await startRedis(); });
after(async () => { await redis?.stop(); await cleanup(); });

const KEY = 'sk-responses-cached-tests';
const keys = [{ name: 'rcached', key: KEY }];
// About 2,000 bytes: room for the 400 input tokens the node reports (no clamp).
const input = 'cache me '.repeat(220);
const prices = { input_usd_per_mtok: 10, output_usd_per_mtok: 20, cached_input_usd_per_mtok: 1 };
// 100 uncached x 10 + 300 cached x 1 + 2 x 20, per million.
const BILLED = (100 * 10 + 300 * 1 + 2 * 20) / 1e6;

const usd = (res) => Number(res.headers.get('x-tollgate-cost-usd'));
const near = (a, b) => assert.ok(Math.abs(a - b) < 1e-12, `${a} vs ${b}`);

function usage(cached) {
  return { input_tokens: 400, input_tokens_details: { cached_tokens: cached }, output_tokens: 2,
    output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 402 };
}

function response(req, status, u) {
  return {
    id: 'resp_cached0123456789', object: 'response', created_at: 1, status, error: null,
    incomplete_details: null, model: req.body?.model ?? 'x',
    output: status === 'completed' ? [{ id: 'msg_1', type: 'message', status: 'completed',
      role: 'assistant', content: [{ type: 'output_text', text: 'hello', annotations: [] }] }] : [],
    usage: u,
  };
}

const typed = (type, doc) => `event: ${type}\ndata: ${JSON.stringify({ type, ...doc })}\n\n`;

// A node answering /v1/responses with 400 input tokens, `cached` of them cached, and 2
// output tokens: whole, or as the typed events of a stream whose usage is in
// response.completed.
async function node(cached) {
  return startRawBackend((sock, req) => {
    if (!req.body?.stream) {
      sendJson(sock, 200, response(req, 'completed', usage(cached)));
      return;
    }
    let seq = 0;
    const ev = (type, doc) => chunk(typed(type, { sequence_number: seq++, ...doc }));
    sock.write(sseHead());
    sock.write(ev('response.created', { response: response(req, 'in_progress', null) }));
    sock.write(ev('response.output_item.added', { output_index: 0,
      item: { id: 'msg_1', type: 'message', status: 'in_progress', role: 'assistant', content: [] } }));
    sock.write(ev('response.content_part.added', { item_id: 'msg_1', output_index: 0, content_index: 0,
      part: { type: 'output_text', text: '', annotations: [] } }));
    sock.write(ev('response.output_text.delta', { item_id: 'msg_1', output_index: 0, content_index: 0,
      delta: 'hello' }));
    sock.write(ev('response.output_text.done', { item_id: 'msg_1', output_index: 0, content_index: 0,
      text: 'hello' }));
    sock.write(ev('response.completed', { response: response(req, 'completed', usage(cached)) }));
    sock.end(LAST_CHUNK);
  });
}

const responses = (gw, body) => post(gw.v1 + '/responses', body, { key: KEY, timeoutMs: 20000 });
const stream = (gw, body) => streamPost(gw.v1 + '/responses', { ...body, stream: true },
  { key: KEY, timeoutMs: 20000 });
const dataOf = (r) => r.events.map((e) => { try { return JSON.parse(e.data); } catch { return undefined; } });

async function ledgerRecord(id) {
  return waitFor(async () => {
    const rows = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
    for (const [, fields] of rows) {
      const rec = {};
      for (let i = 0; i < fields.length; i += 2) rec[fields[i]] = fields[i + 1];
      if (rec.id === id) return rec;
    }
    return null;
  }, { what: 'the usage record' });
}

test('a whole Responses answer: cached input tokens billed at the cached price', async () => {
  const n = await node(300);
  const gw = await startGateway({ keys, redis: { url: redis.url }, cache: { mode: 'off' },
    backends: [{ name: 'rn', url: n.v1, models: [{ name: 'm', ...prices }] }] });
  const res = await responses(gw, { model: 'm', input, max_output_tokens: 8 });
  assert.equal(res.status, 200, res.text);
  near(usd(res), BILLED);
  assert.equal(res.json.usage.input_tokens, 400);
  assert.equal(res.json.usage.input_tokens_details.cached_tokens, 300);
  assert.equal(res.json.usage.output_tokens, 2);

  const rec = await ledgerRecord(res.headers.get('x-request-id'));
  assert.equal(rec.cached_tokens, '300');
  assert.equal(rec.prompt_tokens, '400');
  assert.equal(rec.completion_tokens, '2');
  near(Number(rec.cost_usd), BILLED);
  const metrics = await get(gw.url + '/metrics');
  assert.match(metrics.text, /^tollgate_cached_tokens_total\{backend="rn",model="m"\} 300$/m);
});

test('a streamed Responses answer: the cached tokens of response.completed billed at the cached price', async () => {
  const n = await node(300);
  const gw = await startGateway({ keys, redis: { url: redis.url }, cache: { mode: 'off' },
    backends: [{ name: 'rs', url: n.v1, models: [{ name: 'm', ...prices }] }] });
  const r = await stream(gw, { model: 'm', input, max_output_tokens: 8 });
  assert.equal(r.status, 200, r.raw);
  const done = dataOf(r).find((d) => d?.type === 'response.completed');
  assert.ok(done, r.raw);
  assert.equal(done.response.usage.input_tokens_details.cached_tokens, 300);

  const rec = await ledgerRecord(r.headers['x-request-id']);
  assert.equal(rec.cached_tokens, '300');
  assert.equal(rec.prompt_tokens, '400');
  assert.equal(rec.completion_tokens, '2');
  near(Number(rec.cost_usd), BILLED);
  const metrics = await get(gw.url + '/metrics');
  assert.match(metrics.text, /^tollgate_cached_tokens_total\{backend="rs",model="m"\} 300$/m);
});

test('Responses: cached tokens are clamped to the input; without a cached price they cost the input price', async () => {
  const liar = await node(5000);
  const plain = await node(300);
  const gw = await startGateway({ keys, redis: { url: redis.url }, cache: { mode: 'off' }, backends: [
    { name: 'liar', url: liar.v1, models: [{ name: 'a', ...prices }] },
    { name: 'plain', url: plain.v1, models: [{ name: 'b', input_usd_per_mtok: 10, output_usd_per_mtok: 20 }] },
  ] });
  const a = await responses(gw, { model: 'a', input, max_output_tokens: 8 });
  assert.equal(a.status, 200, a.text);
  near(usd(a), (400 * 1 + 2 * 20) / 1e6);
  assert.equal(a.json.usage.input_tokens_details.cached_tokens, 400, 'the caller sees what it is billed');
  const as = await stream(gw, { model: 'a', input, max_output_tokens: 8 });
  assert.equal(as.status, 200, as.raw);
  const asRec = await ledgerRecord(as.headers['x-request-id']);
  assert.equal(asRec.cached_tokens, '400');
  near(Number(asRec.cost_usd), (400 * 1 + 2 * 20) / 1e6);
  const asDone = dataOf(as).find((d) => d?.type === 'response.completed');
  assert.equal(asDone.response.usage.input_tokens_details.cached_tokens, 400, as.raw);
  const b = await responses(gw, { model: 'b', input, max_output_tokens: 8 });
  assert.equal(b.status, 200, b.text);
  near(usd(b), (400 * 10 + 2 * 20) / 1e6);
  const bs = await stream(gw, { model: 'b', input, max_output_tokens: 8 });
  assert.equal(bs.status, 200, bs.raw);
  near(Number((await ledgerRecord(bs.headers['x-request-id'])).cost_usd), (400 * 10 + 2 * 20) / 1e6);
  // The liar's two answers were clamped claims; the plain node's were not.
  const metrics = (await get(gw.url + '/metrics')).text;
  assert.match(metrics, /^tollgate_backend_usage_clamped_total\{backend="liar"\} 2$/m);
  assert.doesNotMatch(metrics, /^tollgate_backend_usage_clamped_total\{backend="plain"\} [1-9]/m);
});

// Server-sent event streams through the gateway: framing, incremental delivery,
// [DONE] pass-through, include_usage (always asked upstream, stripped or priced for the
// caller), completions streams.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents,
  mockText, mockPromptTokens,
  apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-stream-test';
const TOKEN_MS = 50;
const TOKENS = 10;

let node;
let gw;

before(async () => {
  node = await startMocknode({ name: 'streamer', models: ['s1', 's-up'], tokenMs: TOKEN_MS, tokens: TOKENS, quiet: true });
  gw = await startGateway({
    keys: [{ name: 't', key: KEY }],
    backends: [backendFor(node, {
      models: ['s1', { name: 's2', upstream: 's-up', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }],
    })],
  });
});

function assertSseResponse(r) {
  assert.equal(r.status, 200, r.raw);
  assert.match(r.headers['content-type'] ?? '', /^text\/event-stream/);
  assert.equal(r.headers['transfer-encoding'], 'chunked');
  assert.equal(r.headers['content-length'], undefined);
  assert.equal(r.ended, 'end', 'chunked body must end with the terminator');
}

// Returns {chunks, text, contentChunks, done}
function chatStreamSummary(events) {
  const parsed = parseEvents(events);
  const bad = parsed.filter((p) => p.bad);
  assert.deepEqual(bad.map((b) => b.data), [], 'every event is JSON or [DONE]');
  const chunks = parsed.filter((p) => p.json).map((p) => p.json);
  let text = '';
  let contentChunks = 0;
  for (const c of chunks) {
    const content = c.choices?.[0]?.delta?.content;
    if (typeof content === 'string' && content.length) { text += content; contentChunks++; }
  }
  return { parsed, chunks, text, contentChunks };
}

test('chat stream is relayed as chunked text/event-stream, event by event, ending with [DONE]', async () => {
  await node.reset();
  const messages = [{ role: 'user', content: 'stream please' }];
  const r = await streamPost(gw.v1 + '/chat/completions', { model: 's1', messages, stream: true },
    { key: KEY, headers: { 'x-request-id': 'stream-rid-1' } });
  assertSseResponse(r);
  assert.equal(r.headers['x-request-id'], 'stream-rid-1');
  assert.equal(r.headers['x-tollgate-backend'], 'streamer');
  assert.equal(r.rest.trim(), '', 'no bytes after the last event');

  const { parsed, chunks, text, contentChunks } = chatStreamSummary(r.events);
  assert.equal(parsed.at(-1).data, '[DONE]', 'last event is [DONE]');
  assert.equal(parsed.filter((p) => p.done).length, 1, 'exactly one [DONE]');
  for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  assert.equal(contentChunks, TOKENS, 'one event per token');
  assert.ok(text.startsWith(mockText('streamer', 4)), `text: ${text}`);
  const final = chunks.at(-1);
  assert.deepEqual(final.choices[0].delta, {});
  assert.equal(final.choices[0].finish_reason, 'stop');
  assert.ok(!chunks.some((c) => Array.isArray(c.choices) && c.choices.length === 0), 'no usage chunk without include_usage');
  assert.ok(!chunks.some((c) => c.usage), 'no usage anywhere without include_usage');

  const stats = await node.stats();
  assert.equal(apiCalls(stats), 1);
  assert.equal(stats.last.x_request_id, 'stream-rid-1');
  assert.equal(stats.last.body.model, 's1');
  assert.equal(stats.last.body.stream, true);
  // The gateway asks for the usage chunk upstream (that is how it learns what a stream
  // cost) even though the caller did not; it stripped it above.
  assert.deepEqual(stats.last.body.stream_options, { include_usage: true });

  // Same text as the non-stream answer for the same request.
  const ns = await post(gw.v1 + '/chat/completions', { model: 's1', messages }, { key: KEY });
  assert.equal(ns.status, 200, ns.text);
  assert.equal(text, ns.json.choices[0].message.content);
});

test('stream events arrive incrementally, not buffered until the end', async () => {
  const r = await streamPost(gw.v1 + '/chat/completions',
    { model: 's1', messages: [{ role: 'user', content: 'hi' }], stream: true }, { key: KEY });
  assertSseResponse(r);
  const ev = r.events;
  assert.ok(ev.length >= TOKENS + 2, `only ${ev.length} events`);
  const tFirst = ev[0].t;
  const tLast = ev.at(-1).t;
  const total = tLast - r.tStart;
  // The node spends about TOKENS * TOKEN_MS producing the stream; a relaying gateway
  // delivers the first event near the start of that window, a buffering one at its end.
  assert.ok(tFirst - r.tStart < total / 2,
    `first event at ${(tFirst - r.tStart).toFixed(0)} ms, last at ${total.toFixed(0)} ms`);
  assert.ok(tLast - tFirst >= (TOKENS - 2) * TOKEN_MS * 0.5,
    `events spread over ${(tLast - tFirst).toFixed(0)} ms only`);
  const distinctArrivals = new Set(ev.map((e) => e.t)).size;
  assert.ok(distinctArrivals >= TOKENS / 2, `events arrived in only ${distinctArrivals} reads`);
  // Headers themselves are sent before the last token is generated.
  assert.ok(r.tHeaders < tLast);
});

test('include_usage: the usage chunk (choices []) comes before [DONE] with the settled numbers and cost', async () => {
  await node.reset();
  const messages = [{ role: 'user', content: 'count my tokens' }, { role: 'user', content: 'twice' }];
  const body = { model: 's1', messages, stream: true, stream_options: { include_usage: true }, max_tokens: 4 };
  const r = await streamPost(gw.v1 + '/chat/completions', body, { key: KEY });
  assertSseResponse(r);
  const { parsed, chunks, text, contentChunks } = chatStreamSummary(r.events);
  assert.equal(parsed.at(-1).data, '[DONE]');
  assert.equal(text, mockText('streamer', 4));
  assert.equal(contentChunks, 4);
  const usageChunk = parsed.at(-2).json;
  assert.ok(usageChunk, 'an event before [DONE]');
  assert.deepEqual(usageChunk.choices, []);
  const P = mockPromptTokens(messages);
  const { prompt_tokens, completion_tokens, total_tokens } = usageChunk.usage;
  assert.deepEqual({ prompt_tokens, completion_tokens, total_tokens },
    { prompt_tokens: P, completion_tokens: 4, total_tokens: P + 4 });
  const finish = chunks.find((c) => c.choices?.[0]?.finish_reason);
  assert.equal(finish.choices[0].finish_reason, 'length');
  // The request options reached the node untouched.
  const stats = await node.stats();
  assert.deepEqual(stats.last.body, body);
  // The node's numbers are plausible, so the settled ones equal them; the gateway adds the
  // cost in USD (a number): prompt x input price + completion x output price, per Mtok (1/1).
  assert.deepEqual(Object.keys(usageChunk.usage).sort(), ['completion_tokens', 'cost', 'prompt_tokens', 'total_tokens']);
  assert.equal(typeof usageChunk.usage.cost, 'number');
  assert.ok(Math.abs(usageChunk.usage.cost - (P * 1 + 4 * 1) / 1e6) < 1e-12, `cost ${usageChunk.usage.cost}`);
  // The rest of the chunk is the node's.
  assert.equal(usageChunk.object, 'chat.completion.chunk');
  assert.equal(usageChunk.id, chunks[0].id);
  // A stream has no cost header: it is sent before the cost is known.
  assert.equal(r.headers['x-tollgate-cost-usd'], undefined);
});

test('include_usage false: still asked upstream, and nothing of it reaches the caller', async () => {
  await node.reset();
  const body = { model: 's1', messages: [{ role: 'user', content: 'no usage please' }], stream: true,
    stream_options: { include_usage: false }, max_tokens: 3 };
  const r = await streamPost(gw.v1 + '/chat/completions', body, { key: KEY });
  assertSseResponse(r);
  const { parsed, chunks, text } = chatStreamSummary(r.events);
  assert.equal(parsed.at(-1).data, '[DONE]');
  assert.equal(text, mockText('streamer', 3));
  assert.ok(!chunks.some((c) => c.usage || (Array.isArray(c.choices) && c.choices.length === 0)),
    `a usage chunk reached the caller: ${r.raw}`);
  assert.deepEqual((await node.stats()).last.body.stream_options, { include_usage: true });

  // The same for a completions stream.
  const c = await streamPost(gw.v1 + '/completions', { model: 's1', prompt: 'p', stream: true, max_tokens: 2 }, { key: KEY });
  assertSseResponse(c);
  const cp = parseEvents(c.events);
  assert.equal(cp.at(-1).data, '[DONE]');
  assert.ok(!cp.some((p) => p.json?.usage), `usage reached the caller: ${c.raw}`);
  const last = (await node.stats()).last;
  assert.equal(last.path, '/v1/completions');
  assert.deepEqual(last.body.stream_options, { include_usage: true });
});

test('a stream request body reaches the node unchanged but for "model" and stream_options.include_usage', async () => {
  await node.reset();
  const body = { model: 's1', messages: [{ role: 'user', content: 'as is' }], stream: true, temperature: 0.5, max_tokens: 2 };
  const r = await streamPost(gw.v1 + '/chat/completions', body, { key: KEY });
  assertSseResponse(r);
  const renamed = { ...body, model: 's2' };
  const r2 = await streamPost(gw.v1 + '/chat/completions', renamed, { key: KEY });
  assertSseResponse(r2);
  const stats = await node.stats();
  assert.deepEqual(stats.last.body, { ...renamed, model: 's-up', stream_options: { include_usage: true } });
  await node.reset();
  await streamPost(gw.v1 + '/chat/completions', body, { key: KEY });
  assert.deepEqual((await node.stats()).last.body, { ...body, stream_options: { include_usage: true } });
  // Other stream_options the caller sent are kept.
  await streamPost(gw.v1 + '/chat/completions', { ...body, stream_options: { x_custom: 1 } }, { key: KEY });
  assert.deepEqual((await node.stats()).last.body, { ...body, stream_options: { x_custom: 1, include_usage: true } });
  // A caller who asked already is forwarded as is.
  const asked = { ...body, stream_options: { include_usage: true } };
  await streamPost(gw.v1 + '/chat/completions', asked, { key: KEY });
  assert.deepEqual((await node.stats()).last.body, asked);
});

test('streamed completions are relayed and match the non-stream text', async () => {
  await node.reset();
  const r = await streamPost(gw.v1 + '/completions', { model: 's1', prompt: 'Tell me', stream: true }, { key: KEY });
  assertSseResponse(r);
  const parsed = parseEvents(r.events);
  assert.deepEqual(parsed.filter((p) => p.bad).map((p) => p.data), []);
  assert.equal(parsed.at(-1).data, '[DONE]');
  const chunks = parsed.filter((p) => p.json).map((p) => p.json);
  const text = chunks.map((c) => c.choices?.[0]?.text ?? '').join('');
  assert.ok(text.startsWith(mockText('streamer', 4)), text);
  const ns = await post(gw.v1 + '/completions', { model: 's1', prompt: 'Tell me' }, { key: KEY });
  assert.equal(ns.status, 200, ns.text);
  assert.equal(text, ns.json.choices[0].text);
  const stats = await node.stats();
  assert.equal(stats.by_path['/v1/completions'], 2);
});

test('streams use the upstream model name and forward x-request-id', async () => {
  await node.reset();
  const r = await streamPost(gw.v1 + '/chat/completions',
    { model: 's2', messages: [{ role: 'user', content: 'x' }], stream: true, max_tokens: 2 }, { key: KEY });
  assertSseResponse(r);
  const rid = r.headers['x-request-id'];
  assert.match(rid ?? '', /^[0-9a-f]{32}$/);
  const { text } = chatStreamSummary(r.events);
  assert.equal(text, mockText('streamer', 2));
  const stats = await node.stats();
  assert.equal(stats.last.body.model, 's-up');
  assert.equal(stats.last.body.stream, true);
  assert.equal(stats.last.x_request_id, rid);
  assert.equal(stats.last.authorization, null);
});

test('stream:false is a normal JSON answer', async () => {
  const res = await post(gw.v1 + '/chat/completions',
    { model: 's1', messages: [{ role: 'user', content: 'x' }], stream: false, max_tokens: 3 }, { key: KEY });
  assert.equal(res.status, 200, res.text);
  assert.match(res.headers.get('content-type') ?? '', /application\/json/);
  assert.equal(res.json.choices[0].message.content, mockText('streamer', 3));
});

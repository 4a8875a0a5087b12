// Backend failures seen through the gateway when no other backend can take over:
// unreachable, timeout, truncated answers, streams cut mid-way, 5xx and 429 answers.
// (Failover between backends is in failover.test.mjs.)
//
// Every scenario has its own backend (and model): the gateway takes a backend out of
// rotation after a few consecutive failures, so sharing one faulty node between tests
// would make each test depend on the ones before it. No backend gets more than 3 failures:
// routing.retries is 0, so a request tries its one node once (a node asked again after a
// failure is retry-same-node.test.mjs).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, streamPost, parseEvents,
  freePort, errorShapeProblems, mockText, startRawBackend, chunk, apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-backend-errors';
const IDLE_MS = 4000;
let gw;
const nodes = {};

const sseHead = 'HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n';
const ev = (content, first) => `data: ${JSON.stringify({
  id: 'chatcmpl-raw', object: 'chat.completion.chunk', created: 1, model: 'x',
  choices: [{ index: 0, delta: first ? { role: 'assistant', content } : { content }, finish_reason: null }],
})}\n\n`;

// Scripted backends: each writes raw HTTP and breaks it in one precise way.
const scripts = {
  // Two events, then the connection is closed without the terminating 0-chunk.
  'cut-between-events': (sock) => {
    sock.write(sseHead);
    sock.write(chunk(ev('[raw]', true)));
    setTimeout(() => sock.write(chunk(ev(' one'))), 30);
    setTimeout(() => sock.destroy(), 60);
  },
  // One event, then half of the next chunk, then the connection is closed.
  'cut-inside-chunk': (sock) => {
    sock.write(sseHead);
    sock.write(chunk(ev('[raw]', true)));
    const next = chunk(ev(' two'));
    setTimeout(() => { sock.write(next.subarray(0, 20)); sock.destroy(); }, 30);
  },
  // A JSON body shorter than its Content-Length.
  'short-body': (sock) => {
    const body = JSON.stringify({ id: 'x', object: 'chat.completion', choices: [] });
    sock.end(`HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: ${body.length + 50}\r\n\r\n${body}`);
  },
};

const price = (name) => ({ name, input_usd_per_mtok: 1, output_usd_per_mtok: 1 });

before(async () => {
  const specs = {
    steady: { models: ['ok1'], tokens: 2 },
    hanger: { models: ['hang1'], fault: 'hang' },
    trunc: { models: ['trunc1'], fault: 'close-mid-stream' },
    garbage: { models: ['garbage1'], fault: 'invalid-json' },
    cutmid: { models: ['cut1'], fault: 'close-mid-stream', tokens: 10, tokenMs: 20 },
    err500: { models: ['e500'], fault: '500' },
    err429: { models: ['e429'], fault: '429', retryAfter: 3 },
  };
  await Promise.all(Object.entries(specs).map(async ([name, spec]) => {
    nodes[name] = await startMocknode({ name, quiet: true, threads: 1, ...spec });
  }));
  const raw = {};
  for (const name of Object.keys(scripts)) raw[name] = await startRawBackend(scripts[name]);
  const deadPort = await freePort(); // nothing listens here
  gw = await startGateway({
    upstream: { connect_timeout_ms: 1000, first_byte_timeout_ms: 300, idle_timeout_ms: IDLE_MS },
    routing: { retries: 0 },
    keys: [{ name: 'k', key: KEY }],
    backends: [
      ...Object.values(nodes).map((n) => backendFor(n)),
      { name: 'ghost-node', url: `http://127.0.0.1:${deadPort}/v1`, models: [price('ghost')] },
      ...Object.entries(raw).map(([name, srv]) => ({ name: `raw-${name}`, url: srv.v1, models: [price(name)] })),
    ],
  });
});

function expectError(res, status, { code, type, param } = {}) {
  const ctx = `${res.status} ${res.text ?? res.raw}`;
  assert.equal(res.status, status, ctx);
  assert.deepEqual(errorShapeProblems(res.json), [], ctx);
  if (code !== undefined) assert.equal(res.json.error.code, code, ctx);
  if (type !== undefined) assert.equal(res.json.error.type, type, ctx);
  if (param !== undefined) assert.equal(res.json.error.param, param, ctx);
}

const chatBody = (model, extra = {}) => ({ model, messages: [{ role: 'user', content: 'hello' }], ...extra });

async function gatewayStillServes() {
  const res = await post(gw.v1 + '/chat/completions', chatBody('ok1'), { key: KEY });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.json.choices[0].message.content, mockText('steady', 2));
}

// A stream that broke after it started: 200 SSE, relayed events, then exactly one
// backend_stream_error event, a proper end of the chunked body, and no [DONE].
function assertBrokenStream(r, backendName) {
  assert.equal(r.status, 200, r.raw);
  assert.match(r.headers['content-type'] ?? '', /^text\/event-stream/);
  assert.equal(r.headers['x-tollgate-backend'], backendName);
  assert.equal(r.ended, 'end', `the gateway must finish the chunked body properly; raw: ${JSON.stringify(r.raw)}`);
  const parsed = parseEvents(r.events);
  assert.ok(!parsed.some((p) => p.done), 'no [DONE] after a broken stream');
  const last = parsed.at(-1);
  assert.ok(last?.json, `last event is JSON: ${last?.data}`);
  assert.deepEqual(errorShapeProblems(last.json), [], last.data);
  assert.deepEqual({ type: last.json.error.type, param: last.json.error.param, code: last.json.error.code },
    { type: 'api_error', param: null, code: 'backend_stream_error' });
  assert.equal(r.rest, '', 'nothing after the error event');
  return parsed;
}

const relayedText = (parsed) => parsed.slice(0, -1)
  .map((p) => p.json?.choices?.[0]?.delta?.content ?? p.json?.choices?.[0]?.text ?? '').join('');

test('backend URL on a closed port -> 502 backend_unreachable naming the backend', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('ghost'), { key: KEY });
  expectError(res, 502, { code: 'backend_unreachable', type: 'api_error' });
  assert.match(res.json.error.message, /ghost-node/);
  assert.match(res.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);

  const emb = await post(gw.v1 + '/embeddings', { model: 'ghost', input: 'x' }, { key: KEY });
  expectError(emb, 502, { code: 'backend_unreachable', type: 'api_error' });

  // A stream that never started is still a plain JSON error.
  const s = await post(gw.v1 + '/chat/completions', chatBody('ghost', { stream: true }), { key: KEY });
  expectError(s, 502, { code: 'backend_unreachable', type: 'api_error' });
  assert.match(s.json.error.message, /ghost-node/);
  await gatewayStillServes();
});

test('backend that never answers -> 504 backend_timeout naming the backend', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('hang1'), { key: KEY });
  expectError(res, 504, { code: 'backend_timeout', type: 'api_error' });
  assert.match(res.json.error.message, /hanger/);
  assert.equal(apiCalls(await nodes.hanger.stats()), 1, 'the request did reach the node');

  const s = await post(gw.v1 + '/chat/completions', chatBody('hang1', { stream: true }), { key: KEY });
  expectError(s, 504, { code: 'backend_timeout', type: 'api_error' });
  assert.match(s.json.error.message, /hanger/);

  const c = await post(gw.v1 + '/completions', { model: 'hang1', prompt: 'x' }, { key: KEY });
  expectError(c, 504, { code: 'backend_timeout', type: 'api_error' });
  await gatewayStillServes();
});

test('truncated non-stream answer (mocknode close-mid-stream) -> 502 bad_backend_response', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('trunc1'), { key: KEY });
  expectError(res, 502, { code: 'bad_backend_response' });
  assert.match(res.json.error.message, /trunc/);
  const c = await post(gw.v1 + '/completions', { model: 'trunc1', prompt: 'x' }, { key: KEY });
  expectError(c, 502, { code: 'bad_backend_response' });
  await gatewayStillServes();
});

test('body shorter than its Content-Length (scripted backend) -> 502 bad_backend_response', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('short-body'), { key: KEY });
  expectError(res, 502, { code: 'bad_backend_response' });
  assert.match(res.json.error.message, /raw-short-body/);
});

test('a 200 answer that is not JSON (mocknode invalid-json) -> 502 bad_backend_response', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('garbage1'), { key: KEY });
  expectError(res, 502, { code: 'bad_backend_response' });
});

test('connection cut between events (scripted backend) -> backend_stream_error event', async () => {
  const r = await streamPost(gw.v1 + '/chat/completions', chatBody('cut-between-events', { stream: true }), { key: KEY });
  const parsed = assertBrokenStream(r, 'raw-cut-between-events');
  assert.equal(relayedText(parsed), '[raw] one', 'events before the cut are relayed unchanged');
  // The cut was noticed, not the idle timeout.
  assert.ok(r.events.at(-1).t - r.events.at(-2).t < IDLE_MS / 2, 'error event came only after the idle timeout');
});

test('connection cut inside a chunk (scripted backend) -> backend_stream_error event', async () => {
  const r = await streamPost(gw.v1 + '/chat/completions', chatBody('cut-inside-chunk', { stream: true }), { key: KEY });
  const parsed = assertBrokenStream(r, 'raw-cut-inside-chunk');
  assert.equal(relayedText(parsed), '[raw]', 'a partial event is not relayed');
});

test('mocknode stream cut mid-way -> backend_stream_error event, proper chunked end, no [DONE]', async () => {
  const r = await streamPost(gw.v1 + '/chat/completions', chatBody('cut1', { stream: true }), { key: KEY });
  const parsed = assertBrokenStream(r, 'cutmid');
  const text = relayedText(parsed);
  assert.ok(text.startsWith(mockText('cutmid', 2)), `tokens before the cut are relayed: ${text}`);
  const contentEvents = parsed.slice(0, -1).filter((p) => p.json?.choices?.[0]?.delta?.content).length;
  assert.ok(contentEvents < 10, `only part of the 10 tokens can have arrived, got ${contentEvents}`);
  // The node cut the connection: the gateway reports it at once, not after idle_timeout_ms.
  const gap = r.events.at(-1).t - r.events.at(-2).t;
  assert.ok(gap < IDLE_MS / 2,
    `error event ${gap.toFixed(0)} ms after the last token: the cut was not seen (idle timeout instead)`);

  const c = await streamPost(gw.v1 + '/completions', { model: 'cut1', prompt: 'x', stream: true }, { key: KEY });
  const cp = assertBrokenStream(c, 'cutmid');
  assert.ok(relayedText(cp).startsWith(mockText('cutmid', 2)));
  await gatewayStillServes();
});

// Routing issue: a backend 5xx is not relayed. With nothing else serving the model, every
// try failed: 502 bad_backend_response naming the backend and its status, and
// x-should-retry: false (the gateway already retried; an SDK must not multiply that).
test('a node 500 with no other backend -> 502 bad_backend_response naming backend and status', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('e500'), { key: KEY });
  expectError(res, 502, { code: 'bad_backend_response', type: 'api_error' });
  assert.match(res.json.error.message, /err500/);
  assert.match(res.json.error.message, /\b500\b/);
  assert.equal(res.headers.get('x-should-retry'), 'false');
  assert.equal(res.headers.get('x-tollgate-cost-usd'), null, 'nothing was served, nothing is billed');
  assert.equal(apiCalls(await nodes.err500.stats()), 1, 'one node, one try');
});

// A 429 pauses the backend for its retry-after; with nothing else to fail over to the
// caller gets 503 backend_rate_limited, the node's retry-after, and x-should-retry: false.
test('a node 429 with no other backend -> 503 backend_rate_limited with retry-after', async () => {
  const res = await post(gw.v1 + '/chat/completions', chatBody('e429'), { key: KEY });
  expectError(res, 503, { code: 'backend_rate_limited', type: 'api_error' });
  assert.match(res.json.error.message, /err429/);
  assert.equal(res.headers.get('retry-after'), '3', 'the node said retry-after: 3');
  assert.equal(res.headers.get('x-should-retry'), 'false');
  assert.equal(apiCalls(await nodes.err429.stats()), 1);

  // While the node's pause lasts it is not asked at all: still a 503 with a retry-after.
  const again = await post(gw.v1 + '/chat/completions', chatBody('e429'), { key: KEY });
  expectError(again, 503, { type: 'api_error' });
  assert.ok(['backend_rate_limited', 'no_healthy_backend'].includes(again.json.error.code), again.text);
  const ra = Number(again.headers.get('retry-after'));
  assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 3, `retry-after ${again.headers.get('retry-after')}`);
  assert.equal(apiCalls(await nodes.err429.stats()), 1, 'the paused node was not asked again');
});

test('the gateway is healthy after all of the above', async () => {
  const h = await get(gw.url + '/healthz');
  assert.equal(h.status, 200);
  assert.equal(gw.proc.exitCode, null);
  await gatewayStillServes();
});

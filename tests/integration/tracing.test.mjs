// Traces over OTLP/HTTP (issue 15 item 1) and W3C trace context (issue 14 item 6): a local
// OTLP receiver decodes the gateway's exports with the OpenTelemetry project's .proto files
// and checks the span tree, the attributes, propagation to the node, sampling, and that a
// dead or hung collector costs no request.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import {
  cleanup, startGateway, startMocknode, backendFor, post, get, waitFor,
} from '../lib/harness.mjs';
import { startCollector, deadPort, SpanKind, StatusCode } from '../lib/otlp.mjs';

after(cleanup);

const KEY = 'sk-tracing-test-key-0123456789';
const PROMPT = 'the secret prompt text 4242';
const CALLER_TRACE = '0af7651916cd43dd8448eb211c80319c';
const CALLER_SPAN = 'b7ad6b7169203331';
const chat = (model = 'm1', extra = {}) => ({
  model, messages: [{ role: 'user', content: PROMPT }], max_tokens: 8, ...extra,
});

// A node that records the headers it gets: answers chat completions with a fixed usage,
// or `status` with an error body.
async function recordingNode({ status = 200 } = {}) {
  const seen = [];
  const srv = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      if (req.method === 'GET') {
        const body = JSON.stringify({ object: 'list', data: [{ id: 'm1', object: 'model' }] });
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(body);
        return;
      }
      seen.push({ path: req.url, headers: req.headers, body: Buffer.concat(chunks).toString() });
      if (status !== 200) {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { message: 'node failure', type: 'server_error', param: null, code: null } }));
        return;
      }
      const model = JSON.parse(Buffer.concat(chunks).toString()).model;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({
        id: 'chatcmpl-rec', object: 'chat.completion', created: 1, model,
        choices: [{ index: 0, message: { role: 'assistant', content: 'hello there' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 },
      }));
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const url = `http://127.0.0.1:${srv.address().port}`;
  after(() => new Promise((r) => { srv.closeAllConnections?.(); srv.close(r); }));
  return { seen, v1: url + '/v1', port: srv.address().port };
}

const model = (name, price) => ({ name, input_usd_per_mtok: price, output_usd_per_mtok: price });

async function metric(gw, name) {
  const r = await get(gw.url + '/metrics');
  const m = new RegExp(`^${name} (\\d+)`, 'm').exec(r.text);
  return m ? Number(m[1]) : NaN;
}

function logLine(gw, requestId) {
  return gw.logs.json().find((l) => l.event === 'request' && l.request_id === requestId);
}

// Every string an export carries: no key, no prompt, no answer may be among them.
function assertNoSecrets(collector) {
  for (const raw of collector.raw) {
    const text = raw.toString('latin1');
    assert.ok(!text.includes(KEY), 'an export holds the caller key');
    assert.ok(!text.includes(PROMPT), 'an export holds the prompt');
    assert.ok(!text.includes('hello there'), 'an export holds the answer');
    assert.ok(!/authorization|bearer/i.test(text), 'an export holds an Authorization header');
  }
}

test('span tree, GenAI attributes and trace context through a failover', async () => {
  const collector = await startCollector();
  const flaky = await recordingNode({ status: 500 }); // the cheaper one: tried first
  const good = await recordingNode();
  const gw = await startGateway({
    workers: 2,
    keys: [{ name: 'team-a', key: KEY }],
    backends: [
      { name: 'flaky', url: flaky.v1, models: [model('m1', 0.5)] },
      { name: 'good', url: good.v1, provider: 'vllm', models: [{ ...model('m1', 2), upstream: 'vendor/m1-large' }] },
    ],
    routing: { retries: 2 },
    tracing: {
      otlp_endpoint: collector.endpoint,
      headers: { 'x-collector-token': 'collector-secret' },
      sample_ratio: 1,
      service_name: 'tollgate-test',
      resource_attributes: { 'deployment.environment': 'test' },
    },
  });
  const res = await post(gw.v1 + '/chat/completions', chat(), {
    key: KEY,
    headers: {
      traceparent: `00-${CALLER_TRACE}-${CALLER_SPAN}-01`,
      tracestate: 'vendor=abc,other=1',
      'x-request-id': 'trace-req-1',
    },
  });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-backend'), 'good');

  await waitFor(() => collector.spans.filter((s) => s.traceId === CALLER_TRACE).length >= 3,
    { timeoutMs: 5000, what: 'three spans of the caller trace' });
  assert.deepEqual(collector.state.problems, []);
  const spans = collector.spans.filter((s) => s.traceId === CALLER_TRACE);
  assert.equal(spans.length, 3, JSON.stringify(spans.map((s) => s.name)));

  // The server span continues the caller's trace under the caller's span.
  const server = spans.find((s) => s.kind === SpanKind.SPAN_KIND_SERVER);
  assert.ok(server, 'a server span');
  assert.equal(server.parentSpanId, CALLER_SPAN);
  assert.equal(server.traceState, 'vendor=abc,other=1');
  assert.equal(server.name, 'POST /v1/chat/completions');
  assert.ok(server.end >= server.start && server.start > 0n);
  assert.equal(server.status.code, StatusCode.STATUS_CODE_UNSET);
  const a = server.attributes;
  assert.equal(a['gen_ai.operation.name'], 'chat');
  assert.equal(a['gen_ai.request.model'], 'm1');
  assert.equal(a['gen_ai.response.model'], 'vendor/m1-large');
  assert.equal(a['gen_ai.provider.name'], 'vllm'); // the serving backend's
  assert.equal(a['gen_ai.usage.input_tokens'], 11);
  assert.equal(a['gen_ai.usage.output_tokens'], 3);
  assert.equal(a['http.request.method'], 'POST');
  assert.equal(a['http.route'], '/v1/chat/completions');
  assert.equal(a['http.response.status_code'], 200);
  assert.equal(a['tollgate.backend'], 'good');
  assert.ok(Math.abs(a['tollgate.cost_usd'] - (11 * 2 + 3 * 2) / 1e6) < 1e-12, String(a['tollgate.cost_usd']));
  assert.equal(a['tollgate.route.strategy'], 'cheapest');
  assert.equal(a['tollgate.key.name'], 'team-a');
  assert.equal(a['tollgate.request_id'], 'trace-req-1');
  assert.equal(a['tollgate.attempts'], 2);
  assert.ok(['miss', 'bypass'].includes(a['tollgate.cache']));
  assert.equal(a['error.type'], undefined);
  assert.equal(server.resource['service.name'], 'tollgate-test');
  assert.equal(server.resource['deployment.environment'], 'test');
  assert.ok(server.resource['service.version']);

  // Two attempts, siblings under the server span: the failed one first.
  const clients = spans.filter((s) => s.kind === SpanKind.SPAN_KIND_CLIENT)
    .sort((x, y) => x.attributes['tollgate.attempt'] - y.attributes['tollgate.attempt']);
  assert.equal(clients.length, 2);
  for (const c of clients) {
    assert.equal(c.parentSpanId, server.spanId);
    assert.equal(c.attributes['gen_ai.operation.name'], 'chat');
    assert.equal(c.attributes['server.address'], '127.0.0.1');
    assert.ok(c.start >= server.start && c.end <= server.end, 'an attempt lies within its request');
  }
  const [first, second] = clients;
  assert.equal(first.attributes['tollgate.backend'], 'flaky');
  assert.equal(first.attributes['server.port'], flaky.port);
  assert.equal(first.attributes['http.response.status_code'], 500);
  assert.equal(first.attributes['error.type'], '500');
  assert.equal(first.status.code, StatusCode.STATUS_CODE_ERROR);
  assert.equal(first.name, 'chat m1');
  assert.equal(first.attributes['gen_ai.provider.name'], 'openai'); // the default
  assert.equal(second.attributes['tollgate.backend'], 'good');
  assert.equal(second.attributes['gen_ai.request.model'], 'vendor/m1-large');
  assert.equal(second.name, 'chat vendor/m1-large');
  assert.equal(second.attributes['gen_ai.provider.name'], 'vllm');
  assert.equal(second.attributes['gen_ai.usage.input_tokens'], 11);
  assert.equal(second.attributes['gen_ai.usage.output_tokens'], 3);
  assert.equal(second.attributes['error.type'], undefined);
  assert.equal(second.status.code, StatusCode.STATUS_CODE_UNSET);

  // Each node got a traceparent naming its own attempt's span, and the caller's tracestate.
  assert.equal(flaky.seen.at(-1).headers.traceparent, `00-${CALLER_TRACE}-${first.spanId}-01`);
  assert.equal(good.seen.at(-1).headers.traceparent, `00-${CALLER_TRACE}-${second.spanId}-01`);
  assert.equal(good.seen.at(-1).headers.tracestate, 'vendor=abc,other=1');

  // The exporter's headers reach the collector; nothing secret is in any export.
  assert.equal(collector.state.headers.at(-1)['x-collector-token'], 'collector-secret');
  assertNoSecrets(collector);

  // The log line names the trace and the server span.
  const line = logLine(gw, 'trace-req-1');
  assert.ok(line, 'a request log line');
  assert.equal(line.trace_id, CALLER_TRACE);
  assert.equal(line.span_id, server.spanId);
  assert.ok(!gw.logs.text().includes('collector-secret'), 'the exporter header is never logged');

  // A request without a traceparent starts a trace of its own (a root server span).
  const res2 = await post(gw.v1 + '/chat/completions', chat(), { key: KEY, headers: { 'x-request-id': 'trace-req-2' } });
  assert.equal(res2.status, 200);
  await waitFor(() => collector.spans.some((s) => s.attributes['tollgate.request_id'] === 'trace-req-2'),
    { timeoutMs: 5000, what: 'the second request span' });
  const root = collector.spans.find((s) => s.attributes['tollgate.request_id'] === 'trace-req-2');
  assert.equal(root.parentSpanId, '');
  assert.notEqual(root.traceId, CALLER_TRACE);
  assert.match(good.seen.at(-1).headers.traceparent, new RegExp(`^00-${root.traceId}-[0-9a-f]{16}-01$`));
  assert.equal(good.seen.at(-1).headers.tracestate, undefined);
  assert.equal(logLine(gw, 'trace-req-2').trace_id, root.traceId);

  await waitFor(async () => (await metric(gw, 'tollgate_trace_spans_exported_total')) >= 5,
    { timeoutMs: 5000, what: 'exported counter' });
  assert.equal(await metric(gw, 'tollgate_trace_spans_failed_total'), 0);
  await gw.stop();
  await collector.close();
});

test('a streamed answer: the server span carries the usage; errors and cache hits are traced', async () => {
  const collector = await startCollector();
  const node = await startMocknode({ name: 'streamer', models: ['m1'], tokens: 4 });
  const gw = await startGateway({
    keys: [{ name: 'team-b', key: KEY }],
    backends: [backendFor(node)],
    cache: { mode: 'all' },
    tracing: { otlp_endpoint: collector.endpoint },
  });
  const res = await post(gw.v1 + '/chat/completions', chat('m1', { stream: true }), {
    key: KEY, headers: { 'x-request-id': 'trace-stream' },
  });
  assert.equal(res.status, 200);
  const miss = await post(gw.v1 + '/chat/completions', chat('m1'), { key: KEY, headers: { 'x-request-id': 'trace-miss' } });
  const hit = await post(gw.v1 + '/chat/completions', chat('m1'), { key: KEY, headers: { 'x-request-id': 'trace-hit' } });
  assert.equal(hit.headers.get('x-tollgate-cache'), 'hit', miss.text);
  const unknown = await post(gw.v1 + '/chat/completions', chat('no-such-model'), { key: KEY, headers: { 'x-request-id': 'trace-404' } });
  assert.equal(unknown.status, 404);
  const byId = (id) => collector.spans.find((s) => s.kind === SpanKind.SPAN_KIND_SERVER && s.attributes['tollgate.request_id'] === id);
  await waitFor(() => ['trace-stream', 'trace-hit', 'trace-404'].every(byId), { timeoutMs: 5000, what: 'server spans' });
  const stream = byId('trace-stream');
  assert.equal(stream.attributes['tollgate.stream'], true);
  assert.ok(stream.attributes['gen_ai.usage.output_tokens'] > 0);
  assert.equal(stream.attributes['tollgate.key.name'], 'team-b');
  const attempts = collector.spans.filter((s) => s.parentSpanId === stream.spanId);
  assert.equal(attempts.length, 1);
  assert.equal(attempts[0].attributes['tollgate.backend'], 'streamer');
  const hitSpan = byId('trace-hit');
  assert.equal(hitSpan.attributes['tollgate.cache'], 'hit');
  assert.equal(hitSpan.attributes['tollgate.attempts'], 0);
  assert.equal(collector.spans.filter((s) => s.parentSpanId === hitSpan.spanId).length, 0);
  const notFound = byId('trace-404');
  assert.equal(notFound.attributes['http.response.status_code'], 404);
  assert.equal(notFound.status.code, StatusCode.STATUS_CODE_UNSET); // a 4xx is the caller's
  assertNoSecrets(collector);
  await gw.stop();
  await collector.close();
});

test('a caller that leaves mid-stream: the attempt is cancelled, the request is a 499', async () => {
  const collector = await startCollector();
  const node = await startMocknode({ name: 'slow', models: ['m1'], tokens: 40, tokenMs: 100 });
  const gw = await startGateway({
    backends: [backendFor(node)],
    tracing: { otlp_endpoint: collector.endpoint },
  });
  const ac = new AbortController();
  const res = await fetch(gw.v1 + '/chat/completions', {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-request-id': 'trace-left' },
    body: JSON.stringify(chat('m1', { stream: true })),
    signal: ac.signal,
  });
  const reader = res.body.getReader();
  await reader.read(); // the first event is in: the stream began
  ac.abort();
  const byId = () => collector.spans.find((s) => s.attributes['tollgate.request_id'] === 'trace-left');
  await waitFor(byId, { timeoutMs: 10000, what: 'the abandoned request span' });
  const server = byId();
  assert.equal(server.attributes['http.response.status_code'], 499);
  const attempt = collector.spans.find((s) => s.parentSpanId === server.spanId);
  assert.equal(attempt.attributes['error.type'], 'cancelled');
  assert.equal(attempt.status.code, StatusCode.STATUS_CODE_ERROR);
  await gw.stop();
  await collector.close();
});

test('sample_ratio 0 exports nothing of new traces, but honours a sampled caller', async () => {
  const collector = await startCollector();
  const node = await recordingNode();
  const gw = await startGateway({
    backends: [{ name: 'n', url: node.v1, models: [model('m1', 1)] }],
    tracing: { otlp_endpoint: collector.endpoint, sample_ratio: 0 },
  });
  for (let i = 0; i < 20; i++)
    assert.equal((await post(gw.v1 + '/chat/completions', chat())).status, 200);
  // Not sampled: the node still gets a traceparent, flagged not sampled.
  assert.match(node.seen.at(-1).headers.traceparent, /^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/);
  // A caller that samples its trace: parent-based, so it is recorded.
  const tp = `00-${CALLER_TRACE}-${CALLER_SPAN}-01`;
  assert.equal((await post(gw.v1 + '/chat/completions', chat(), { headers: { traceparent: tp } })).status, 200);
  await waitFor(() => collector.spans.length >= 2, { timeoutMs: 5000, what: 'the sampled caller trace' });
  await new Promise((r) => setTimeout(r, 300)); // any stray span of the unsampled 20 would be in by now
  assert.ok(collector.spans.every((s) => s.traceId === CALLER_TRACE),
    `only the caller's trace: ${collector.spans.map((s) => s.traceId)}`);
  // A caller that does not sample: nothing, and its flags go on to the node.
  const unsampled = `00-${'1'.repeat(32)}-${CALLER_SPAN}-00`;
  assert.equal((await post(gw.v1 + '/chat/completions', chat(), { headers: { traceparent: unsampled } })).status, 200);
  assert.match(node.seen.at(-1).headers.traceparent, new RegExp(`^00-${'1'.repeat(32)}-[0-9a-f]{16}-00$`));
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(collector.spans.every((s) => s.traceId === CALLER_TRACE));
  await gw.stop();
  await collector.close();
});

test('tracing off: the caller\'s traceparent and tracestate reach the node unchanged', async () => {
  const node = await recordingNode();
  const gw = await startGateway({ backends: [{ name: 'n', url: node.v1, models: [model('m1', 1)] }] });
  const tp = `00-${CALLER_TRACE}-${CALLER_SPAN}-01`;
  const res = await post(gw.v1 + '/chat/completions', chat(), {
    headers: { traceparent: tp, tracestate: 'congo=t61rcWkgMzE', 'x-request-id': 'off-1' },
  });
  assert.equal(res.status, 200);
  assert.equal(node.seen.at(-1).headers.traceparent, tp);
  assert.equal(node.seen.at(-1).headers.tracestate, 'congo=t61rcWkgMzE');
  await waitFor(() => logLine(gw, 'off-1'), { what: 'log line' });
  assert.equal(logLine(gw, 'off-1').trace_id, CALLER_TRACE);
  // An invalid traceparent is not passed on (nor its tracestate); no trace header is made up.
  await post(gw.v1 + '/chat/completions', chat(), {
    headers: { traceparent: '00-XYZ-not-a-trace', tracestate: 'a=b' },
  });
  assert.equal(node.seen.at(-1).headers.traceparent, undefined);
  assert.equal(node.seen.at(-1).headers.tracestate, undefined);
  assert.equal(await metric(gw, 'tollgate_trace_spans_exported_total'), 0);
  await gw.stop();
});

// Requests in parallel; every one must succeed.
async function load(gw, n, concurrency = 16) {
  let next = 0;
  const statuses = [];
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (next < n) {
      next++;
      const r = await post(gw.v1 + '/chat/completions', chat(), { timeoutMs: 20000 });
      statuses.push(r.status);
    }
  }));
  return statuses;
}

test('a collector that is not there costs no request: the failed counter rises', async () => {
  const node = await startMocknode({ name: 'fast', models: ['m1'], tokens: 2 });
  const port = await deadPort();
  const gw = await startGateway({
    backends: [backendFor(node)],
    tracing: { otlp_endpoint: `http://127.0.0.1:${port}/v1/traces`, timeout_ms: 1000 },
  });
  const statuses = await load(gw, 200);
  assert.equal(statuses.length, 200);
  assert.ok(statuses.every((s) => s === 200), JSON.stringify(statuses.filter((s) => s !== 200)));
  await waitFor(async () => (await metric(gw, 'tollgate_trace_spans_failed_total')) > 0,
    { timeoutMs: 5000, what: 'failed spans counted' });
  assert.equal(await metric(gw, 'tollgate_trace_spans_exported_total'), 0);
  const code = await gw.stop();
  assert.equal(code.code, 0);
});

test('a collector that hangs costs no request: spans are dropped, and it does not hold the shutdown', async () => {
  const collector = await startCollector({ hang: true });
  const node = await startMocknode({ name: 'fast', models: ['m1'], tokens: 2 });
  const gw = await startGateway({
    workers: 1,
    backends: [backendFor(node)],
    tracing: { otlp_endpoint: collector.endpoint, timeout_ms: 600000 },
  });
  // 2 spans a request: more than one worker's queue (2048) and a batch (512) can hold.
  const statuses = await load(gw, 1500, 24);
  assert.ok(statuses.every((s) => s === 200), JSON.stringify(statuses.filter((s) => s !== 200)));
  await waitFor(() => collector.state.headers.length >= 1, { timeoutMs: 5000, what: 'an export that hangs' });
  assert.ok((await metric(gw, 'tollgate_trace_spans_dropped_total')) > 0);
  assert.equal(await metric(gw, 'tollgate_trace_spans_exported_total'), 0);
  // The export in flight is given up at shutdown (its timeout is ten minutes).
  const code = await gw.stop('SIGTERM', 15000);
  assert.equal(code.code, 0);
  await collector.close();
});

test('tracing config is checked', async () => {
  const { runTollgate, writeTempFile } = await import('../lib/harness.mjs');
  const cfg = await writeTempFile('bad.json', JSON.stringify({
    backends: [{ name: 'n', url: 'http://127.0.0.1:9/v1', models: [model('m1', 1)] }],
    tracing: { otlp_endpoint: 'collector:4318', sample_ratio: 2, headers: { 'bad header': 'x' }, bogus: 1 },
  }));
  const r = await runTollgate(['--check-config', '-c', cfg]);
  assert.notEqual(r.code, 0);
  const text = r.stdout + r.stderr;
  for (const want of ['tracing.otlp_endpoint', 'tracing.sample_ratio', 'tracing.headers.bad header', 'tracing.bogus'])
    assert.ok(text.includes(want), `${want} in: ${text}`);
});

// Same-node retries (issue 14 item 3: "retries to the same node use a short jittered backoff;
// retries to another node do not wait"). An attempt that fails before the caller got a byte
// (connect error, 5xx, 429 with a short or no Retry-After, first-byte timeout) moves on to
// another node of the model at once; when there is none, the node that failed is asked again
// after a short jittered wait, within routing.retries and routing.deadline_ms. A node whose
// Retry-After is longer than the wait's cap is not asked again. A model group moves to its next
// model only after its current model's retries, with one retry kept for the move.
// No assertion on how long a wait took: only on what was asked of whom, and the answers.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, streamPost, chatCalls, waitFor,
  freePort, errorShapeProblems,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-retry-same-node-tests';
const keys = [{ name: 'retry', key: KEY }];
const messages = [{ role: 'user', content: 'hi' }];
const chat = (gw, body) => post(gw.v1 + '/chat/completions', body, { key: KEY, timeoutMs: 20000 });
// Long probe intervals: only requests change what the gateway thinks of a node.
const base = { keys, log_level: 'info', cache: { mode: 'off' }, health: { interval_ms: 60000 } };

async function logLine(gw, id) {
  let line;
  await waitFor(() => (line = gw.logs.json().find((l) => l.event === 'request' && l.request_id === id)),
    { what: `the request log line of ${id}` });
  return line;
}

// The node records a request once it is complete, which may come after the caller's answer.
async function callsOf(node, want) {
  let n;
  await waitFor(async () => (n = chatCalls(await node.stats())) >= want,
    { what: `${node.name}: ${want} chat requests` });
  return n;
}

const retriesMetric = async (gw) =>
  Number(/^tollgate_retries_total (\d+)$/m.exec((await get(gw.url + '/metrics')).text)[1]);

test('one node failing twice with 5xx: asked a third time, the caller gets 200 with attempts 3', async () => {
  const node = await startMocknode({ name: 'only', models: ['m'], tokens: 3, quiet: true });
  const gw = await startGateway({ ...base, backends: [backendFor(node)] });
  await node.setConfig({ fault: '500', fault_count: 2 });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-backend'), 'only');
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 3);
  assert.equal(await callsOf(node, 3), 3);
  assert.equal(await retriesMetric(gw), 2, 'same-node retries count as retries');

  // A stream the same way: nothing reached the caller before the node answered.
  await node.setConfig({ fault: '500', fault_count: 2 });
  const s = await streamPost(gw.v1 + '/chat/completions', { model: 'm', messages, max_tokens: 4, stream: true },
    { key: KEY, timeoutMs: 20000 });
  assert.equal(s.status, 200, s.raw);
  assert.equal(s.events.at(-1).data, '[DONE]');
  assert.ok(!s.raw.includes('"error"'), s.raw);
  assert.equal((await logLine(gw, s.headers['x-request-id'])).attempts, 3);
});

test('two nodes: a failure on the first goes to the second at once, the first is not asked again', async () => {
  const cheap = await startMocknode({ name: 'cheap', models: ['m'], tokens: 3, quiet: true });
  const dear = await startMocknode({ name: 'dear', models: ['m'], tokens: 3, quiet: true });
  const gw = await startGateway({ ...base,
    backends: [backendFor(cheap, { prices: [1, 1] }), backendFor(dear, { prices: [5, 5] })] });
  await cheap.setConfig({ fault: '500', fault_count: 1 });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-backend'), 'dear');
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 2);
  assert.equal(await callsOf(cheap, 1), 1, 'the failed node is not asked again');
  assert.equal(await callsOf(dear, 1), 1);
});

test('retries exhausted on one node: the same error as before, after 1 + routing.retries attempts', async () => {
  const sick = await startMocknode({ name: 'sick', models: ['m'], fault: '500', quiet: true });
  const gw = await startGateway({ ...base, routing: { retries: 2 }, backends: [backendFor(sick)] });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 502, res.text);
  assert.deepEqual(errorShapeProblems(res.json), []);
  assert.match(res.json.error.message, /^Backend sick answered HTTP 500/);
  assert.equal(res.headers.get('x-should-retry'), 'false');
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 3);
  assert.equal(await callsOf(sick, 3), 3);

  // routing.retries 0: one attempt, as before.
  const once = await startMocknode({ name: 'once', models: ['m'], fault: '500', quiet: true });
  const gw0 = await startGateway({ ...base, routing: { retries: 0 }, backends: [backendFor(once)] });
  const r0 = await chat(gw0, { model: 'm', messages, max_tokens: 4 });
  assert.equal(r0.status, 502, r0.text);
  assert.equal((await logLine(gw0, r0.headers.get('x-request-id'))).attempts, 1);
  assert.equal(await callsOf(once, 1), 1);
});

test('an unreachable node is asked again too, then answered as before', async () => {
  const dead = await freePort();
  const gw = await startGateway({ ...base, upstream: { connect_timeout_ms: 500 },
    backends: [{ name: 'gone', url: `http://127.0.0.1:${dead}/v1`,
      models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }] });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 502, res.text);
  assert.match(res.json.error.message, /^Backend gone is unreachable/);
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 3);
});

test('a first-byte timeout on a lone node: asked again, the caller gets 200 with attempts 2', async () => {
  const slow = await startMocknode({ name: 'once-hung', models: ['m'], tokens: 3, quiet: true });
  const gw = await startGateway({ ...base, upstream: { first_byte_timeout_ms: 300 }, backends: [backendFor(slow)] });
  await slow.setConfig({ fault: 'hang', fault_count: 1 });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 2);
});

test('a 429 with retry-after: 30 is not retried on the same node', async () => {
  const full = await startMocknode({ name: 'full', models: ['m'], fault: '429', retryAfter: 30, quiet: true });
  const gw = await startGateway({ ...base, backends: [backendFor(full)] });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 503, res.text);
  assert.deepEqual(errorShapeProblems(res.json), []);
  assert.equal(res.json.error.code, 'backend_rate_limited');
  assert.equal(res.headers.get('retry-after'), '30');
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 1);
  assert.equal(await callsOf(full, 1), 1);
  assert.equal(await retriesMetric(gw), 0);
});

test('a 429 with retry-after: 0 is retried on the same node once it takes requests again', async () => {
  const busy = await startMocknode({ name: 'busy', models: ['m'], tokens: 3, quiet: true });
  const gw = await startGateway({ ...base, backends: [backendFor(busy)] });
  await busy.setConfig({ fault: '429', retry_after_s: 0, fault_count: 1 });
  const res = await chat(gw, { model: 'm', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 2);
  assert.equal(await callsOf(busy, 2), 2);
});

test('a model group: its first model\'s node is retried, then the next model serves', async () => {
  const a = await startMocknode({ name: 'grp-a', models: ['model-a'], fault: '500', quiet: true });
  const b = await startMocknode({ name: 'grp-b', models: ['model-b'], tokens: 3, quiet: true });
  const gw = await startGateway({ ...base, routing: { retries: 2 },
    backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [3, 3] })],
    model_groups: { smart: ['model-a', 'model-b'] } });
  const res = await chat(gw, { model: 'smart', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-model'), 'model-b');
  assert.equal((await logLine(gw, res.headers.get('x-request-id'))).attempts, 3);
  assert.equal(await callsOf(a, 2), 2, 'model-a\'s node: its try and one retry');
  assert.equal(await callsOf(b, 1), 1);

  // With one retry, it is kept for the next model: model-a's node is not asked again.
  const a1 = await startMocknode({ name: 'grp1-a', models: ['model-a'], fault: '500', quiet: true });
  const b1 = await startMocknode({ name: 'grp1-b', models: ['model-b'], tokens: 3, quiet: true });
  const gw1 = await startGateway({ ...base, routing: { retries: 1 },
    backends: [backendFor(a1, { prices: [1, 1] }), backendFor(b1, { prices: [3, 3] })],
    model_groups: { smart: ['model-a', 'model-b'] } });
  const r1 = await chat(gw1, { model: 'smart', messages, max_tokens: 4 });
  assert.equal(r1.status, 200, r1.text);
  assert.equal(r1.headers.get('x-tollgate-model'), 'model-b');
  assert.equal((await logLine(gw1, r1.headers.get('x-request-id'))).attempts, 2);
  assert.equal(await callsOf(a1, 1), 1);
});

// A request waiting to ask its node again while the gateway drains: no new try starts, and the
// caller gets an answer (the node's last failure; a forced drain cuts the wait at once).
// The node's 429 pauses it for a second (retry-after: 1), so the wait outlasts the signal.
test('a drain during the wait: no new try, the caller gets the last failure', async () => {
  const node = await startMocknode({ name: 'drain-429', models: ['m'], fault: '429', retryAfter: 1, quiet: true });
  const gw = await startGateway({ ...base, workers: 1, backends: [backendFor(node)] });
  const pending = chat(gw, { model: 'm', messages, max_tokens: 4 });
  await callsOf(node, 1);
  gw.proc.kill('SIGTERM');
  const res = await pending;
  assert.equal(res.status, 503, res.text);
  assert.equal(res.json.error.code, 'backend_rate_limited');
  assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  assert.equal(chatCalls(await node.stats()), 1, 'no try after the drain began');
});

test('a forced drain answers a request waiting to ask its node again, at once', async () => {
  const node = await startMocknode({ name: 'force-429', models: ['m'], fault: '429', retryAfter: 1, quiet: true });
  const gw = await startGateway({ ...base, workers: 1, drain_timeout_ms: 50, backends: [backendFor(node)] });
  const pending = chat(gw, { model: 'm', messages, max_tokens: 4 });
  await callsOf(node, 1);
  gw.proc.kill('SIGTERM');
  const res = await pending;
  assert.equal(res.status, 503, res.text);
  assert.equal(res.json.error.code, 'shutting_down');
  assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  const line = gw.logs.json().find((l) => l.event === 'drain_timeout');
  assert.equal(line?.aborted, 1, gw.logs.text());
  assert.equal(chatCalls(await node.stats()), 1, 'no try after the drain began');
});

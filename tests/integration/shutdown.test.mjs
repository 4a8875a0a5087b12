// Graceful shutdown: SIGTERM drains in-flight requests and streams (the listener stays open
// meanwhile, see hardening-shutdown.test.mjs), then refuses new connections and exits 0;
// drain_timeout_ms bounds the wait.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, rawHttp,
  tryConnect, waitFor, mockText,
  apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const STREAM_TOKENS = 20;
const TOKEN_MS = 100;

// /readyz over a fresh connection: 'ready' | 'draining' | 'refused' | other.
async function readyState(port) {
  try {
    const r = await rawHttp(port, 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n', { timeoutMs: 1000 });
    if (r.status === 200) return 'ready';
    if (r.status === 503 && r.json?.status === 'draining') return 'draining';
    return `status ${r.status} ${r.text}`;
  } catch (err) {
    if (err.code === 'ECONNREFUSED') return 'refused';
    return `error ${err.code ?? err.message}`;
  }
}

test('SIGTERM: readyz drains, in-flight work completes, then new connections refused, exit 0', async () => {
  const [streamer, slow] = await Promise.all([
    startMocknode({ name: 'drain-stream', models: ['ds'], tokenMs: TOKEN_MS, tokens: STREAM_TOKENS, quiet: true }),
    startMocknode({ name: 'drain-slow', models: ['dn'], ttfbMs: 1500, tokens: 3, quiet: true }),
  ]);
  const gw = await startGateway({
    drain_timeout_ms: 20000,
    keys: [{ name: 'k', key: 'sk-drain' }],
    backends: [backendFor(streamer), backendFor(slow)],
  });
  assert.equal(await readyState(gw.port), 'ready');

  const started = [false, false, false];
  const streams = started.map((_, i) => streamPost(gw.v1 + '/chat/completions',
    { model: 'ds', messages: [{ role: 'user', content: `s${i}` }], stream: true },
    { key: 'sk-drain', timeoutMs: 30000, onEvent: () => { started[i] = true; } }));
  const plain = [0, 1, 2].map((i) => post(gw.v1 + '/chat/completions',
    { model: 'dn', messages: [{ role: 'user', content: `p${i}` }] },
    { key: 'sk-drain', timeoutMs: 30000, headers: { 'x-request-id': `drain-plain-${i}` } }));
  // Surface early failures without leaving unhandled rejections.
  const all = Promise.allSettled([...streams, ...plain]);

  let plainDone = 0;
  plain.forEach((p) => p.then(() => { plainDone++; }, () => { plainDone++; }));
  // Everything is in flight: each stream has produced an event and the slow node holds 3 requests.
  await waitFor(async () => started.every(Boolean), { timeoutMs: 5000, what: '3 streams started' });
  await waitFor(async () => apiCalls(await slow.stats()) === 3, { timeoutMs: 1000, what: '3 requests at the slow node' })
    .catch(() => {}); // the node may count a request only once answered; ttfb leaves the margin
  assert.equal(plainDone, 0, 'the slow requests are still in flight at SIGTERM');

  const t_term = performance.now();
  gw.proc.kill('SIGTERM');

  // Until the signal is handled /readyz may still say ready; then, while work is in flight,
  // the listener stays open and /readyz answers 503 {"status":"draining"}. A connection
  // queued on the listener of a worker that had nothing to finish can be reset when that one
  // closes; that is neither, so poll again.
  const state = await waitFor(async () => {
    const s = await readyState(gw.port);
    return s === 'ready' || s.startsWith('error ') ? null : s;
  }, { timeoutMs: 3000, intervalMs: 20, what: '/readyz to stop answering ready after SIGTERM' });
  assert.equal(state, 'draining', `/readyz after SIGTERM`);

  const results = await all;
  await waitFor(async () => (await tryConnect(gw.port, { timeoutMs: 500 })) === 'refused',
    { timeoutMs: 5000, intervalMs: 50, what: 'new connections refused once the work is done' });
  for (const r of results) assert.equal(r.status, 'fulfilled', r.reason?.stack);
  const streamResults = results.slice(0, 3).map((r) => r.value);
  const plainResults = results.slice(3).map((r) => r.value);

  for (const s of streamResults) {
    assert.equal(s.status, 200, s.raw);
    assert.equal(s.ended, 'end', 'stream body ended properly');
    const parsed = parseEvents(s.events);
    assert.equal(parsed.at(-1).data, '[DONE]', `stream finished with [DONE]; last: ${parsed.at(-1)?.data}`);
    const contentEvents = parsed.filter((p) => p.json?.choices?.[0]?.delta?.content);
    assert.equal(contentEvents.length, STREAM_TOKENS, 'all tokens delivered');
    const text = contentEvents.map((p) => p.json.choices[0].delta.content).join('');
    assert.ok(text.startsWith(mockText('drain-stream', 4)), text);
  }
  plainResults.forEach((r, i) => {
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].message.content, mockText('drain-slow', 3));
    assert.equal(r.headers.get('x-request-id'), `drain-plain-${i}`);
  });

  const exit = await gw.waitExit(20000);
  assert.deepEqual(exit, { code: 0, signal: null }, gw.logs.text());
  // It exited because the work was done (idle keep-alive connections do not count as
  // in-flight), not because drain_timeout_ms ran out.
  const drained_in = performance.now() - t_term;
  assert.ok(drained_in < 20000 * 0.75, `exit ${drained_in.toFixed(0)} ms after SIGTERM (drain_timeout_ms 20000)`);
});

test('drain_timeout_ms bounds the drain: a long stream is cut and the process still exits 0', async () => {
  const node = await startMocknode({ name: 'drain-long', models: ['dl'], tokenMs: TOKEN_MS, tokens: 100, quiet: true });
  const gw = await startGateway({ drain_timeout_ms: 500, backends: [backendFor(node)] });
  let started = false;
  const stream = streamPost(gw.v1 + '/chat/completions',
    { model: 'dl', messages: [{ role: 'user', content: 'x' }], stream: true },
    { timeoutMs: 20000, onEvent: () => { started = true; } }).then((v) => v, (e) => ({ error: e }));
  await waitFor(async () => started, { timeoutMs: 5000, what: 'stream started' });
  gw.proc.kill('SIGTERM');
  const exit = await gw.waitExit(10000);
  assert.deepEqual(exit, { code: 0, signal: null }, gw.logs.text());
  const s = await stream;
  // The node would need 100 x TOKEN_MS; the drain limit ended it well before that.
  const contentEvents = (s.events ?? []).filter((e) => /"content"/.test(e.data)).length;
  assert.ok(contentEvents < 100, `got all ${contentEvents} tokens despite the drain limit`);
  assert.ok(!(s.events ?? []).some((e) => e.data === '[DONE]'), 'a cut stream has no [DONE]');
});

test('drain timeout: a slow request and the identical ones waiting for it all get a clear 503', async () => {
  const node = await startMocknode({ name: 'drain-slow', models: ['ds'], ttfbMs: 5000, quiet: true });
  const gw = await startGateway({ workers: 1, drain_timeout_ms: 400, backends: [backendFor(node)] });
  const ask = () => post(gw.v1 + '/chat/completions',
    { model: 'ds', temperature: 0, messages: [{ role: 'user', content: 'slow and shared' }] },
    { timeoutMs: 10000 });
  const leader = ask();
  await waitFor(async () => apiCalls(await node.stats()) === 1, { what: 'the first request at the node' });
  const followers = Array.from({ length: 4 }, ask);
  await new Promise((resolve) => setTimeout(resolve, 100));
  assert.equal(apiCalls(await node.stats()), 1, 'the identical requests wait for the first');
  gw.proc.kill('SIGTERM');
  const answers = await Promise.all([leader, ...followers]);
  for (const a of answers) {
    assert.equal(a.status, 503, a.text);
    assert.equal(a.json?.error?.code, 'shutting_down', a.text);
  }
  assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  assert.equal(apiCalls(await node.stats()), 1, 'no new upstream call was started while stopping');
});

test('SIGINT on an idle gateway exits 0 promptly', async () => {
  const node = await startMocknode({ name: 'int-node', models: ['i1'], quiet: true });
  const gw = await startGateway({ backends: [backendFor(node)] });
  const res = await post(gw.v1 + '/chat/completions', { model: 'i1', messages: [{ role: 'user', content: 'x' }] });
  assert.equal(res.status, 200, res.text);
  const exit = await gw.stop('SIGINT', 10000);
  assert.deepEqual(exit, { code: 0, signal: null }, gw.logs.text());
});

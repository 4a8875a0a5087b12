// The mock inference node on its own, against its contract. The gateway suites rely on
// these behaviours, so a failure here explains failures there.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startMocknode, cleanup, post, get, streamPost, parseEvents, mockText, mockPromptTokens,
  errorShapeProblems, tryConnect,
} from '../lib/harness.mjs';

after(cleanup);

let node;

before(async () => {
  node = await startMocknode({ name: 'solo', models: ['x1', 'x2'], tokens: 6, quiet: true });
});

const messages = [{ role: 'user', content: 'abcdefghij' }, { role: 'user', content: 'kl' }];

// Raw POST that reports whether the body ended properly or the connection was cut.
function rawPost(url, body, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const req = http.request(url, { method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } });
    const timer = setTimeout(() => req.destroy(new Error(`no end within ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (err) => { clearTimeout(timer); reject(err); });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { text += c; });
      const done = () => { clearTimeout(timer); resolve({ status: res.statusCode, headers: res.headers, text, complete: res.complete }); };
      res.on('end', done);
      res.on('error', done);
      res.on('close', done);
    });
    req.end(payload);
  });
}

test('chat answer: exact text, usage and x-mocknode header', async () => {
  await node.reset();
  const res = await post(node.v1 + '/chat/completions', { model: 'x1', messages, max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-mocknode'), 'solo');
  assert.equal(res.json.model, 'x1');
  assert.equal(res.json.choices[0].message.content, mockText('solo', 4));
  assert.equal(res.json.choices[0].finish_reason, 'length');
  const P = mockPromptTokens(messages);
  assert.deepEqual(res.json.usage, { prompt_tokens: P, completion_tokens: 4, total_tokens: P + 4 });
  const stats = await node.stats();
  assert.equal(stats.name, 'solo');
  assert.equal(stats.requests, 1);
  assert.equal(stats.by_path['/v1/chat/completions'], 1);
  assert.deepEqual(stats.last.body, { model: 'x1', messages, max_tokens: 4 });
  assert.equal(stats.last.authorization, null);
  assert.equal(stats.last.x_request_id, null);
});

test('stats record authorization and x-request-id; reset clears them', async () => {
  await post(node.v1 + '/embeddings', { model: 'x2', input: 'x' }, { key: 'k1', headers: { 'x-request-id': 'rid-9' } });
  const s = await node.stats();
  assert.equal(s.last.authorization, 'Bearer k1');
  assert.equal(s.last.x_request_id, 'rid-9');
  await node.reset();
  const z = await node.stats();
  assert.equal(z.requests, 0);
  assert.ok(z.last === null || z.last.body === null || z.last.body === undefined, JSON.stringify(z.last));
});

test('POST /_mock/config answers the full config', async () => {
  const cfg = await node.setConfig({ tokens: 6 });
  for (const k of ['fault', 'fault_rate', 'ttfb_ms', 'token_ms', 'tokens', 'retry_after_s']) {
    assert.ok(k in cfg, `config lacks ${k}: ${JSON.stringify(cfg)}`);
  }
  assert.equal(cfg.fault, 'none');
  assert.equal(cfg.tokens, 6);
});

test('GET /v1/models and /healthz', async () => {
  const m = await get(node.v1 + '/models');
  assert.equal(m.status, 200);
  assert.deepEqual(m.json.data.map((d) => d.id).sort(), ['x1', 'x2']);
  const h = await get(node.url + '/healthz');
  assert.equal(h.status, 200);
});

test('fault 500 and 429 (with retry-after)', async () => {
  try {
    await node.setConfig({ fault: '500' });
    const a = await post(node.v1 + '/chat/completions', { model: 'x1', messages });
    assert.equal(a.status, 500);
    assert.deepEqual(errorShapeProblems(a.json), []);
    assert.equal(a.json.error.message, 'mocknode solo: injected failure');
    assert.equal(a.json.error.type, 'server_error');
    await node.setConfig({ fault: '429', retry_after_s: 7 });
    const b = await post(node.v1 + '/chat/completions', { model: 'x1', messages });
    assert.equal(b.status, 429);
    assert.deepEqual(errorShapeProblems(b.json), []);
    assert.equal(b.headers.get('retry-after'), '7');
  } finally {
    await node.setConfig({ fault: 'none' });
  }
});

test('fault close-mid-stream, non-stream: half the body then the connection is cut', async () => {
  try {
    await node.setConfig({ fault: 'close-mid-stream' });
    const r = await rawPost(node.v1 + '/chat/completions', { model: 'x1', messages }).catch((e) => ({ error: e }));
    assert.ok(r.error || r.complete === false, `expected a cut, got a complete answer: ${JSON.stringify(r)}`);
  } finally {
    await node.setConfig({ fault: 'none' });
  }
});

test('fault close-mid-stream, stream: about half the tokens then the connection is cut (no chunked terminator)', async () => {
  try {
    await node.setConfig({ fault: 'close-mid-stream', tokens: 10, token_ms: 10 });
    const r = await streamPost(node.v1 + '/chat/completions', { model: 'x1', messages, stream: true }, { timeoutMs: 5000 })
      .catch((e) => ({ timeout: e }));
    assert.ok(!r.timeout, `the node never cut the connection: ${r.timeout?.message}`);
    assert.equal(r.ended, 'aborted', 'the body must end without the chunked terminator');
    const parsed = parseEvents(r.events);
    assert.ok(!parsed.some((p) => p.done));
    const tokens = parsed.filter((p) => p.json?.choices?.[0]?.delta?.content).length;
    assert.ok(tokens >= 1 && tokens < 10, `${tokens} tokens before the cut`);
  } finally {
    await node.setConfig({ fault: 'none', tokens: 6, token_ms: 0 });
  }
});

test('fault invalid-json and inflate-usage', async () => {
  try {
    await node.setConfig({ fault: 'invalid-json' });
    const a = await post(node.v1 + '/chat/completions', { model: 'x1', messages });
    assert.equal(a.status, 200);
    assert.equal(a.json, undefined, `body parsed as JSON: ${a.text}`);
    await node.setConfig({ fault: 'inflate-usage' });
    const b = await post(node.v1 + '/chat/completions', { model: 'x1', messages, max_tokens: 2 });
    assert.equal(b.status, 200);
    assert.equal(b.json.choices[0].message.content, mockText('solo', 2));
    assert.equal(b.json.usage.completion_tokens, 200);
  } finally {
    await node.setConfig({ fault: 'none' });
  }
});

test('fault hang: no answer while the client waits; the node keeps serving others', async () => {
  try {
    await node.setConfig({ fault: 'hang' });
    const hung = rawPost(node.v1 + '/chat/completions', { model: 'x1', messages }, 600).then(
      (r) => ({ answered: r }), (e) => ({ error: e }));
    const r = await hung;
    assert.ok(r.error, `hang mode answered: ${JSON.stringify(r.answered)}`);
  } finally {
    await node.setConfig({ fault: 'none' });
  }
  const ok = await post(node.v1 + '/chat/completions', { model: 'x1', messages, max_tokens: 1 });
  assert.equal(ok.status, 200);
});

test('SIGTERM stops the node', async () => {
  const n = await startMocknode({ name: 'bye', models: ['b'], quiet: true });
  const exit = await n.kill('SIGTERM');
  assert.ok(exit.code === 0 || exit.signal === 'SIGTERM', JSON.stringify(exit));
  assert.equal(await tryConnect(n.port), 'refused');
});

// Load shape: many parallel requests and streams, and keep-alive reuse.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, mockText,
  apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-concurrency';
let nodeA;
let nodeB;
let gw;

before(async () => {
  [nodeA, nodeB] = await Promise.all([
    startMocknode({ name: 'par-a', models: ['pa'], tokens: 3, threads: 4, quiet: true }),
    startMocknode({ name: 'par-b', models: ['pb'], tokens: 4, tokenMs: 5, threads: 4, quiet: true }),
  ]);
  gw = await startGateway({
    log_level: 'warn',
    keys: [{ name: 'k', key: KEY }],
    backends: [backendFor(nodeA), backendFor(nodeB)],
  });
});

test('200 parallel requests across chat, completions and embeddings all succeed', async () => {
  await Promise.all([nodeA.reset(), nodeB.reset()]);
  const N = 200;
  const jobs = Array.from({ length: N }, (_, i) => {
    const rid = `par-${i}`;
    const kind = i % 4;
    if (kind === 0 || kind === 1) {
      return post(gw.v1 + '/chat/completions', { model: 'pa', messages: [{ role: 'user', content: `q${i}` }] },
        { key: KEY, headers: { 'x-request-id': rid }, timeoutMs: 30000 })
        .then((r) => ({ r, rid, check: () => assert.equal(r.json.choices[0].message.content, mockText('par-a', 3)) }));
    }
    if (kind === 2) {
      return post(gw.v1 + '/completions', { model: 'pb', prompt: `p${i}` },
        { key: KEY, headers: { 'x-request-id': rid }, timeoutMs: 30000 })
        .then((r) => ({ r, rid, check: () => assert.equal(r.json.choices[0].text, mockText('par-b', 4)) }));
    }
    return post(gw.v1 + '/embeddings', { model: 'pa', input: [`e${i}`, 'x'] },
      { key: KEY, headers: { 'x-request-id': rid }, timeoutMs: 30000 })
      .then((r) => ({ r, rid, check: () => assert.equal(r.json.data.length, 2) }));
  });
  const results = await Promise.all(jobs);
  const failures = results.filter(({ r }) => r.status !== 200);
  assert.deepEqual(failures.map(({ r, rid }) => `${rid}: ${r.status} ${r.text}`), []);
  for (const { r, rid, check } of results) {
    assert.equal(r.headers.get('x-request-id'), rid);
    check();
  }
  const [a, b] = await Promise.all([nodeA.stats(), nodeB.stats()]);
  assert.equal(apiCalls(a), 150);
  assert.equal(apiCalls(b), 50);
});

test('50 parallel streams all complete with every token and [DONE]', async () => {
  const N = 50;
  const results = await Promise.all(Array.from({ length: N }, (_, i) => streamPost(gw.v1 + '/chat/completions',
    { model: 'pb', messages: [{ role: 'user', content: `s${i}` }], stream: true, stream_options: { include_usage: true } },
    { key: KEY, timeoutMs: 30000 })));
  for (const s of results) {
    assert.equal(s.status, 200, s.raw);
    assert.equal(s.ended, 'end');
    const parsed = parseEvents(s.events);
    assert.equal(parsed.at(-1).data, '[DONE]');
    const text = parsed.map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');
    assert.equal(text, mockText('par-b', 4));
    assert.equal(parsed.at(-2).json.usage.completion_tokens, 4);
  }
});

test('one keep-alive connection carries many sequential requests', async () => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const sockets = new Set();
  try {
    for (let i = 0; i < 50; i++) {
      const body = JSON.stringify({ model: 'pa', messages: [{ role: 'user', content: `k${i}` }] });
      const res = await new Promise((resolve, reject) => {
        const req = http.request(gw.v1 + '/chat/completions', {
          method: 'POST', agent,
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: `Bearer ${KEY}` },
          signal: AbortSignal.timeout(10000),
        }, (r) => {
          let text = '';
          r.setEncoding('utf8');
          r.on('data', (c) => { text += c; });
          r.on('end', () => resolve({ status: r.statusCode, text, socket: r.socket }));
          r.on('error', reject);
        });
        req.on('socket', (s) => sockets.add(s));
        req.on('error', reject);
        req.end(body);
      });
      assert.equal(res.status, 200, res.text);
      assert.equal(JSON.parse(res.text).choices[0].message.content, mockText('par-a', 3));
    }
    // The gateway kept the connection open between requests.
    assert.ok(sockets.size <= 2, `${sockets.size} connections for 50 keep-alive requests`);
  } finally {
    agent.destroy();
  }
});

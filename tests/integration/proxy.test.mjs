// Proxying of the OpenAI surface through the gateway to real mocknodes:
// request rewriting (model rename, auth), headers (x-request-id, x-tollgate-backend),
// cost-based routing, and the gateway's own endpoints.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get,
  mockText, mockPromptTokens, errorShapeProblems,
  apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-proxy-test-caller-key';
const BACKEND_KEY = 'sk-backend-secret-for-node-b';

let nodeA; // serves "alpha" (no rename, no api_key) and "embed"
let nodeB; // serves "beta" renamed upstream to "beta-upstream-v2", with an api_key
let cheap;
let pricey;
let gw;

before(async () => {
  [nodeA, nodeB, cheap, pricey] = await Promise.all([
    startMocknode({ name: 'node-a', models: ['alpha', 'embed'], tokens: 4, quiet: true }),
    startMocknode({ name: 'node-b', models: ['beta-upstream-v2'], tokens: 3, quiet: true }),
    startMocknode({ name: 'cheap', models: ['shared'], tokens: 2, quiet: true }),
    startMocknode({ name: 'pricey', models: ['shared'], tokens: 2, quiet: true }),
  ]);
  gw = await startGateway({
    keys: [{ name: 'tester', key: KEY }],
    backends: [
      backendFor(nodeA, { models: ['alpha', 'embed'] }),
      backendFor(nodeB, {
        api_key: BACKEND_KEY,
        models: [{ name: 'beta', upstream: 'beta-upstream-v2', input_usd_per_mtok: 0.5, output_usd_per_mtok: 0.5 }],
      }),
      // The expensive one is listed first so "first listed" and "cheapest" disagree.
      backendFor(pricey, { prices: [3.0, 6.0] }),
      backendFor(cheap, { prices: [0.1, 0.2] }),
    ],
  });
});

const chatMessages = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Say something please' },
];

describe('chat completions', () => {
  test('non-stream chat is relayed with the node\'s exact answer', async () => {
    await nodeA.reset();
    const res = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: chatMessages }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.match(res.headers.get('content-type') ?? '', /application\/json/);
    const body = res.json;
    assert.equal(body.object, 'chat.completion');
    assert.match(body.id, /^chatcmpl-/);
    assert.equal(body.model, 'alpha');
    assert.equal(body.choices.length, 1);
    assert.equal(body.choices[0].index, 0);
    assert.deepEqual(body.choices[0].message, { role: 'assistant', content: mockText('node-a', 4) });
    assert.equal(body.choices[0].finish_reason, 'stop');
    const P = mockPromptTokens(chatMessages);
    assert.deepEqual(body.usage, { prompt_tokens: P, completion_tokens: 4, total_tokens: P + 4 });
    // What it cost, as a plain decimal string: P x 1 + 4 x 1 USD per million tokens.
    const cost = res.headers.get('x-tollgate-cost-usd');
    assert.match(cost ?? '', /^\d+\.\d+$/, `x-tollgate-cost-usd: ${cost}`);
    assert.ok(Math.abs(Number(cost) - (P + 4) / 1e6) < 1e-10, `x-tollgate-cost-usd ${cost}`);

    const stats = await nodeA.stats();
    assert.equal(apiCalls(stats), 1);
    assert.equal(stats.by_path['/v1/chat/completions'], 1);
    assert.equal(stats.last.method, 'POST');
    assert.equal(stats.last.path, '/v1/chat/completions');
    assert.deepEqual(stats.last.body, { model: 'alpha', messages: chatMessages });
  });

  test('max_tokens caps the answer and the node reports finish_reason length', async () => {
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'alpha', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('node-a', 2));
    assert.equal(res.json.choices[0].finish_reason, 'length');
    assert.equal(res.json.usage.completion_tokens, 2);
  });

  test('the model is renamed to the backend\'s upstream name on the way to the node', async () => {
    await nodeB.reset();
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'beta', messages: [{ role: 'user', content: 'rename me' }], temperature: 0.25 }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('node-b', 3));
    const stats = await nodeB.stats();
    assert.equal(apiCalls(stats), 1);
    assert.equal(stats.last.body.model, 'beta-upstream-v2');
    // Everything else in the body is forwarded untouched.
    assert.deepEqual(stats.last.body, {
      model: 'beta-upstream-v2', messages: [{ role: 'user', content: 'rename me' }], temperature: 0.25,
    });
  });

  test('the backend api_key reaches the node and the caller key never does', async () => {
    await nodeB.reset();
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'beta', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    const stats = await nodeB.stats();
    assert.equal(stats.last.authorization, `Bearer ${BACKEND_KEY}`);
    assert.ok(!JSON.stringify(stats).includes(KEY), 'caller key leaked to the node');
  });

  test('no Authorization header at all upstream when the backend has no api_key', async () => {
    await nodeA.reset();
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'alpha', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    const stats = await nodeA.stats();
    assert.equal(stats.last.authorization, null);
    assert.ok(!JSON.stringify(stats).includes(KEY), 'caller key leaked to the node');
  });
});

describe('completions and embeddings', () => {
  test('non-stream completion is relayed', async () => {
    await nodeA.reset();
    const res = await post(gw.v1 + '/completions', { model: 'alpha', prompt: 'Once upon a time' }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.object, 'text_completion');
    assert.equal(res.json.choices[0].text, mockText('node-a', 4));
    assert.equal(res.json.choices[0].finish_reason, 'stop');
    assert.equal(res.json.usage.completion_tokens, 4);
    assert.equal(res.json.usage.total_tokens, res.json.usage.prompt_tokens + 4);
    const stats = await nodeA.stats();
    assert.equal(stats.by_path['/v1/completions'], 1);
    assert.deepEqual(stats.last.body, { model: 'alpha', prompt: 'Once upon a time' });
  });

  test('completion with an array prompt and max_tokens', async () => {
    const res = await post(gw.v1 + '/completions',
      { model: 'alpha', prompt: ['one', 'two'], max_tokens: 1 }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].text, mockText('node-a', 1));
    assert.equal(res.json.choices[0].finish_reason, 'length');
  });

  test('embeddings for a string and for an array of strings', async () => {
    await nodeA.reset();
    const one = await post(gw.v1 + '/embeddings', { model: 'embed', input: 'hello world' }, { key: KEY });
    assert.equal(one.status, 200, one.text);
    assert.equal(one.json.object, 'list');
    assert.equal(one.json.model, 'embed');
    assert.equal(one.json.data.length, 1);
    assert.equal(one.json.data[0].object, 'embedding');
    assert.equal(one.json.data[0].index, 0);
    assert.equal(one.json.data[0].embedding.length, 16);
    assert.ok(one.json.data[0].embedding.every((x) => typeof x === 'number'));
    assert.equal(one.json.usage.total_tokens, one.json.usage.prompt_tokens);

    const many = await post(gw.v1 + '/embeddings', { model: 'embed', input: ['a', 'bb', 'ccc'] }, { key: KEY });
    assert.equal(many.status, 200, many.text);
    assert.deepEqual(many.json.data.map((d) => d.index), [0, 1, 2]);
    assert.ok(many.json.data.every((d) => d.embedding.length === 16));
    // Embeddings are billed for their input only.
    const ecost = many.headers.get('x-tollgate-cost-usd');
    assert.match(ecost ?? '', /^\d+\.\d+$/, `x-tollgate-cost-usd: ${ecost}`);
    assert.ok(Math.abs(Number(ecost) - many.json.usage.prompt_tokens / 1e6) < 1e-10, `x-tollgate-cost-usd ${ecost}`);
    const stats = await nodeA.stats();
    assert.equal(stats.by_path['/v1/embeddings'], 2);
    assert.deepEqual(stats.last.body, { model: 'embed', input: ['a', 'bb', 'ccc'] });
  });
});

describe('headers', () => {
  test('x-request-id sent by the caller is echoed and forwarded upstream', async () => {
    await nodeA.reset();
    const rid = 'caller-req-0042.abc_DEF';
    const res = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] },
      { key: KEY, headers: { 'x-request-id': rid } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers.get('x-request-id'), rid);
    assert.equal((await nodeA.stats()).last.x_request_id, rid);
  });

  test('x-request-id is generated (32 hex) when absent, and the same id goes upstream', async () => {
    await nodeA.reset();
    const res = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(res.status, 200, res.text);
    const rid = res.headers.get('x-request-id');
    assert.match(rid ?? '', /^[0-9a-f]{32}$/);
    assert.equal((await nodeA.stats()).last.x_request_id, rid);
    const res2 = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.notEqual(res2.headers.get('x-request-id'), rid, 'generated ids must differ between requests');
  });

  test('an x-request-id longer than 128 chars is replaced by a generated one', async () => {
    const res = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] },
      { key: KEY, headers: { 'x-request-id': 'r'.repeat(129) } });
    assert.equal(res.status, 200, res.text);
    assert.match(res.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);
  });

  test('a 128-char x-request-id is kept', async () => {
    const rid = 'k'.repeat(128);
    const res = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] },
      { key: KEY, headers: { 'x-request-id': rid } });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers.get('x-request-id'), rid);
  });

  test('x-request-id is present on gateway-generated errors and on /healthz', async () => {
    const e = await post(gw.v1 + '/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] },
      { key: KEY, headers: { 'x-request-id': 'err-id-1' } });
    assert.equal(e.status, 404, e.text);
    assert.equal(e.headers.get('x-request-id'), 'err-id-1');
    const unauth = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] });
    assert.equal(unauth.status, 401, unauth.text);
    assert.match(unauth.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);
    const h = await get(gw.url + '/healthz');
    assert.match(h.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);
  });

  test('x-tollgate-backend names the backend that answered and is absent when none did', async () => {
    const a = await post(gw.v1 + '/chat/completions', { model: 'alpha', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(a.headers.get('x-tollgate-backend'), 'node-a');
    const b = await post(gw.v1 + '/chat/completions', { model: 'beta', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(b.headers.get('x-tollgate-backend'), 'node-b');
    const e = await post(gw.v1 + '/embeddings', { model: 'embed', input: 'x' }, { key: KEY });
    assert.equal(e.headers.get('x-tollgate-backend'), 'node-a');
    const miss = await post(gw.v1 + '/chat/completions', { model: 'nope', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(miss.status, 404);
    assert.equal(miss.headers.get('x-tollgate-backend'), null);
  });
});

describe('routing', () => {
  test('the cheapest backend serving the model gets all the traffic', async () => {
    await Promise.all([cheap.reset(), pricey.reset()]);
    for (let i = 0; i < 6; i++) {
      const res = await post(gw.v1 + '/chat/completions', { model: 'shared', messages: [{ role: 'user', content: `q${i}` }] }, { key: KEY });
      assert.equal(res.status, 200, res.text);
      assert.equal(res.headers.get('x-tollgate-backend'), 'cheap');
      assert.equal(res.json.choices[0].message.content, mockText('cheap', 2));
    }
    const emb = await post(gw.v1 + '/completions', { model: 'shared', prompt: 'p' }, { key: KEY });
    assert.equal(emb.status, 200, emb.text);
    assert.equal(emb.headers.get('x-tollgate-backend'), 'cheap');
    const [c, p] = await Promise.all([cheap.stats(), pricey.stats()]);
    assert.equal(apiCalls(c), 7);
    assert.equal(apiCalls(p), 0);
    // Billed at the serving node's prices (0.1 in, 0.2 out).
    const one = await post(gw.v1 + '/chat/completions', { model: 'shared', messages: [{ role: 'user', content: 'q' }] }, { key: KEY });
    const { prompt_tokens: pt, completion_tokens: ct } = one.json.usage;
    assert.ok(Math.abs(Number(one.headers.get('x-tollgate-cost-usd')) - (pt * 0.1 + ct * 0.2) / 1e6) < 1e-10,
      `x-tollgate-cost-usd ${one.headers.get('x-tollgate-cost-usd')} for ${JSON.stringify(one.json.usage)}`);
  });
});

describe('models and gateway endpoints', () => {
  test('GET /v1/models lists the union of configured model names', async () => {
    const res = await get(gw.v1 + '/models', { key: KEY });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.object, 'list');
    const ids = res.json.data.map((m) => m.id).sort();
    assert.deepEqual(ids, ['alpha', 'beta', 'embed', 'shared']);
    for (const m of res.json.data) {
      assert.deepEqual(Object.keys(m).sort(), ['created', 'id', 'object', 'owned_by']);
      assert.equal(m.object, 'model');
      assert.equal(m.owned_by, 'tollgate');
      assert.ok(Number.isInteger(m.created), 'created is an integer');
    }
    // The gateway answers this itself: no node is asked.
    assert.equal(res.headers.get('x-tollgate-backend'), null);
  });

  test('GET /v1/models/{id} returns the model or 404 model_not_found', async () => {
    const ok = await get(gw.v1 + '/models/beta', { key: KEY });
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.id, 'beta');
    assert.equal(ok.json.object, 'model');
    assert.equal(ok.json.owned_by, 'tollgate');
    // The upstream alias is not a public model name.
    const upstream = await get(gw.v1 + '/models/beta-upstream-v2', { key: KEY });
    assert.equal(upstream.status, 404, upstream.text);
    const miss = await get(gw.v1 + '/models/does-not-exist', { key: KEY });
    assert.equal(miss.status, 404, miss.text);
    assert.deepEqual(errorShapeProblems(miss.json), []);
    assert.equal(miss.json.error.code, 'model_not_found');
    assert.equal(miss.json.error.type, 'invalid_request_error');
  });

  test('GET /v1/models requires the key', async () => {
    const res = await get(gw.v1 + '/models');
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.error.code, 'invalid_api_key');
  });

  test('/healthz, /readyz and /metrics answer without a key', async () => {
    const h = await get(gw.url + '/healthz');
    assert.equal(h.status, 200);
    assert.deepEqual(h.json, { status: 'ok' });
    const r = await get(gw.url + '/readyz');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { status: 'ready' });
    const m = await get(gw.url + '/metrics');
    assert.equal(m.status, 200);
    assert.match(m.headers.get('content-type') ?? '', /^text\/plain/);
    assert.ok(m.text.length > 0);
    // Prometheus text: every non-comment line is "name{labels} value".
    for (const line of m.text.split('\n').filter((l) => l && !l.startsWith('#'))) {
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eEinfNa]+( \d+)?$/, `bad metrics line: ${line}`);
    }
  });

  test('stdout carries one JSON object per line', async () => {
    const lines = gw.logs.stdout.filter((l) => l.trim() !== '');
    for (const line of lines) {
      let obj;
      assert.doesNotThrow(() => { obj = JSON.parse(line); }, `not JSON: ${line}`);
      assert.equal(typeof obj, 'object');
      assert.ok(obj !== null && !Array.isArray(obj), `not an object: ${line}`);
    }
  });
});

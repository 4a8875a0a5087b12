// Every client-side error in the contract, with the exact OpenAI error shape,
// and proof that none of these requests reaches a backend.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, rawHttp, errorShapeProblems, mockText,
  apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-errors-plain-key';
const HASHED_KEY = 'sk-errors-hashed-key';
const MAX_BODY = 4096;

let node;
let gw;

before(async () => {
  node = await startMocknode({ name: 'err-node', models: ['m1'], tokens: 2, quiet: true });
  gw = await startGateway({
    max_body_bytes: MAX_BODY,
    keys: [
      { name: 'plain', key: KEY },
      { name: 'hashed', sha256: createHash('sha256').update(HASHED_KEY).digest('hex') },
    ],
    backends: [backendFor(node)],
  });
});

function expectError(res, status, { code, param, type } = {}) {
  const ctx = `${res.status} ${res.text}`;
  assert.equal(res.status, status, ctx);
  const ct = res.headers.get ? res.headers.get('content-type') : res.headers['content-type'];
  assert.match(ct ?? '', /application\/json/, ctx);
  assert.deepEqual(errorShapeProblems(res.json), [], ctx);
  if (code !== undefined) assert.equal(res.json.error.code, code, ctx);
  if (param !== undefined) assert.equal(res.json.error.param, param, ctx);
  if (type !== undefined) assert.equal(res.json.error.type, type, ctx);
}

const chat = (body, opts = {}) => post(gw.v1 + '/chat/completions', body, { key: KEY, ...opts });

describe('400 invalid request', () => {
  test('malformed JSON -> 400 invalid_json', async () => {
    for (const body of ['{"model":', 'not json', '{"model":"m1",}', '{\'model\':\'m1\'}', '', '{"model":"m1"} trailing']) {
      const res = await chat(body);
      expectError(res, 400, { code: 'invalid_json', type: 'invalid_request_error' });
    }
  });

  test('a body that is JSON but not an object -> 400 invalid_json', async () => {
    for (const body of ['[]', '[{"model":"m1"}]', '"m1"', '42', 'null', 'true']) {
      const res = await chat(body);
      expectError(res, 400, { code: 'invalid_json', type: 'invalid_request_error' });
    }
  });

  test('invalid_json on completions and embeddings too', async () => {
    expectError(await post(gw.v1 + '/completions', '{', { key: KEY }), 400, { code: 'invalid_json' });
    expectError(await post(gw.v1 + '/embeddings', '[1,2]', { key: KEY }), 400, { code: 'invalid_json' });
  });

  test('missing model -> 400 param model, missing_required_parameter', async () => {
    expectError(await chat({ messages: [{ role: 'user', content: 'x' }] }), 400,
      { code: 'missing_required_parameter', param: 'model' });
    expectError(await post(gw.v1 + '/completions', { prompt: 'x' }, { key: KEY }), 400,
      { code: 'missing_required_parameter', param: 'model' });
    expectError(await post(gw.v1 + '/embeddings', { input: 'x' }, { key: KEY }), 400,
      { code: 'missing_required_parameter', param: 'model' });
    expectError(await chat({}), 400, { code: 'missing_required_parameter', param: 'model' });
  });

  test('model not a string -> 400 param model, invalid_type', async () => {
    for (const model of [42, ['m1'], { name: 'm1' }, true]) {
      expectError(await chat({ model, messages: [{ role: 'user', content: 'x' }] }), 400,
        { code: 'invalid_type', param: 'model' });
    }
    expectError(await post(gw.v1 + '/embeddings', { model: 7, input: 'x' }, { key: KEY }), 400,
      { code: 'invalid_type', param: 'model' });
  });

  test('chat without a messages array -> 400 param messages', async () => {
    expectError(await chat({ model: 'm1' }), 400, { param: 'messages' });
    for (const messages of ['hello', { role: 'user', content: 'x' }, 3]) {
      expectError(await chat({ model: 'm1', messages }), 400, { param: 'messages' });
    }
  });

  test('stream not boolean -> 400 param stream', async () => {
    for (const stream of ['true', 1, { on: true }]) {
      expectError(await chat({ model: 'm1', messages: [{ role: 'user', content: 'x' }], stream }), 400,
        { param: 'stream' });
    }
    expectError(await post(gw.v1 + '/completions', { model: 'm1', prompt: 'x', stream: 'yes' }, { key: KEY }), 400,
      { param: 'stream' });
  });

  test('completions without prompt -> 400 param prompt', async () => {
    expectError(await post(gw.v1 + '/completions', { model: 'm1' }, { key: KEY }), 400, { param: 'prompt' });
  });

  test('embeddings without input -> 400 param input', async () => {
    expectError(await post(gw.v1 + '/embeddings', { model: 'm1' }, { key: KEY }), 400, { param: 'input' });
  });
});

describe('404 and 405', () => {
  test('unknown model -> 404 model_not_found on every endpoint, streams included', async () => {
    const opts = { code: 'model_not_found', param: 'model', type: 'invalid_request_error' };
    const r1 = await chat({ model: 'gpt-nope', messages: [{ role: 'user', content: 'x' }] });
    expectError(r1, 404, opts);
    assert.match(r1.json.error.message, /gpt-nope/);
    expectError(await chat({ model: 'gpt-nope', messages: [{ role: 'user', content: 'x' }], stream: true }), 404, opts);
    expectError(await post(gw.v1 + '/completions', { model: 'gpt-nope', prompt: 'x' }, { key: KEY }), 404, opts);
    expectError(await post(gw.v1 + '/embeddings', { model: 'gpt-nope', input: 'x' }, { key: KEY }), 404, opts);
    expectError(await get(gw.v1 + '/models/gpt-nope', { key: KEY }), 404, { code: 'model_not_found' });
  });

  test('unknown path -> 404 unknown_url', async () => {
    expectError(await get(gw.v1 + '/nope', { key: KEY }), 404, { code: 'unknown_url' });
    expectError(await post(gw.v1 + '/chat', { model: 'm1' }, { key: KEY }), 404, { code: 'unknown_url' });
    expectError(await post(gw.v1 + '/chat/completions/extra', { model: 'm1' }, { key: KEY }), 404, { code: 'unknown_url' });
    expectError(await get(gw.url + '/nope'), 404, { code: 'unknown_url' });
    expectError(await get(gw.url + '/'), 404, { code: 'unknown_url' });
  });

  test('wrong method -> 405 method_not_allowed with an Allow header', async () => {
    const cases = [
      ['GET', '/v1/chat/completions', 'POST'],
      ['PUT', '/v1/completions', 'POST'],
      ['DELETE', '/v1/embeddings', 'POST'],
      ['POST', '/v1/models', 'GET'],
      ['DELETE', '/v1/models/m1', 'GET'],
      ['POST', '/healthz', 'GET'],
      ['POST', '/readyz', 'GET'],
    ];
    for (const [method, path, allowed] of cases) {
      const res = await get(gw.url + path, { key: KEY, method });
      expectError(res, 405, { code: 'method_not_allowed' });
      const allow = (res.headers.get('allow') ?? '').split(',').map((s) => s.trim().toUpperCase());
      assert.ok(allow.includes(allowed), `${method} ${path}: Allow "${res.headers.get('allow')}" lacks ${allowed}`);
      assert.ok(!allow.includes(method), `${method} ${path}: Allow "${res.headers.get('allow')}" lists ${method}`);
    }
  });
});

describe('413 request too large', () => {
  const head = (len) => [
    'POST /v1/chat/completions HTTP/1.1',
    'Host: 127.0.0.1',
    `Authorization: Bearer ${KEY}`,
    'Content-Type: application/json',
    `Content-Length: ${len}`,
    '', '',
  ].join('\r\n');

  test('answered from Content-Length before the body is read (huge length, few bytes sent)', async () => {
    // Only 9 bytes of a 1 GB body are ever sent: the answer can only come from the header.
    const res = await rawHttp(gw.port, head(1_000_000_000) + '{"model":', { timeoutMs: 5000 });
    expectError(res, 413, { code: 'request_too_large' });
  });

  test('Content-Length one byte over the limit, body not sent', async () => {
    const res = await rawHttp(gw.port, head(MAX_BODY + 1) + '{', { timeoutMs: 5000 });
    expectError(res, 413, { code: 'request_too_large' });
  });

  test('a complete body of max_body_bytes + 1 is rejected, one of exactly max_body_bytes accepted', async () => {
    const make = (size) => {
      const base = JSON.stringify({ model: 'm1', messages: [{ role: 'user', content: '' }] });
      const body = JSON.stringify({ model: 'm1', messages: [{ role: 'user', content: 'a'.repeat(size - base.length) }] });
      assert.equal(Buffer.byteLength(body), size);
      return body;
    };
    expectError(await chat(make(MAX_BODY + 1)), 413, { code: 'request_too_large' });
    const ok = await chat(make(MAX_BODY));
    assert.equal(ok.status, 200, ok.text);
    assert.equal(ok.json.choices[0].message.content, mockText('err-node', 2));
  });
});

describe('401 authentication', () => {
  const body = { model: 'm1', messages: [{ role: 'user', content: 'x' }] };

  test('missing Authorization -> 401 invalid_api_key', async () => {
    const res = await post(gw.v1 + '/chat/completions', body);
    expectError(res, 401, { code: 'invalid_api_key', type: 'invalid_request_error' });
  });

  test('wrong or malformed keys -> 401 invalid_api_key', async () => {
    const headers = [
      { authorization: 'Bearer sk-wrong' },
      { authorization: `Bearer ${KEY}x` },
      { authorization: `Bearer ${KEY.slice(0, -1)}` },
      { authorization: 'Bearer ' },
      { authorization: `Basic ${Buffer.from(`user:${KEY}`).toString('base64')}` },
      { authorization: KEY },
      // The stored digest is not itself a key.
      { authorization: `Bearer ${createHash('sha256').update(HASHED_KEY).digest('hex')}` },
    ];
    for (const h of headers) {
      const res = await post(gw.v1 + '/chat/completions', body, { headers: h });
      expectError(res, 401, { code: 'invalid_api_key', type: 'invalid_request_error' });
    }
    expectError(await post(gw.v1 + '/embeddings', { model: 'm1', input: 'x' }, { headers: { authorization: 'Bearer nope' } }),
      401, { code: 'invalid_api_key' });
    expectError(await get(gw.v1 + '/models/m1', { headers: { authorization: 'Bearer nope' } }), 401, { code: 'invalid_api_key' });
  });

  test('plain and sha256-configured keys are both accepted', async () => {
    const a = await post(gw.v1 + '/chat/completions', body, { key: KEY });
    assert.equal(a.status, 200, a.text);
    const b = await post(gw.v1 + '/chat/completions', body, { key: HASHED_KEY });
    assert.equal(b.status, 200, b.text);
    assert.equal(b.json.choices[0].message.content, mockText('err-node', 2));
  });
});

test('no rejected request reached the node', async () => {
  await node.reset();
  await chat('{');
  await chat({ messages: [] });
  await chat({ model: 'nope', messages: [{ role: 'user', content: 'x' }] });
  await chat({ model: 'm1' });
  await post(gw.v1 + '/chat/completions', { model: 'm1', messages: [{ role: 'user', content: 'x' }] }, { headers: { authorization: 'Bearer bad' } });
  await rawHttp(gw.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${KEY}\r\nContent-Length: 999999\r\n\r\n{`);
  const stats = await node.stats();
  assert.equal(apiCalls(stats), 0, JSON.stringify(stats));
});

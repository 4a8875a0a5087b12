// Model groups and fallback chains (issue 14 item 3):
// - `model_groups` maps a public name to an ordered list of models, each with its own backends
//   and prices; the next model serves when the earlier ones have no healthy node, are over the
//   caller's x-tollgate-max-price-usd, or fail with 429 / 5xx / a context-length error before
//   the first byte;
// - a request may bring its own chain: `"models": [...]` after `model` (OpenRouter's form),
//   which backends never see;
// - the answer names the model that served (x-tollgate-model; the body's `model` is the
//   node's), and so do the log line and the bill, at that model's prices.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, freePort, startRawBackend,
  errorShapeProblems, runTollgate, writeTempFile, chatCalls, waitFor,
} from '../lib/harness.mjs';
import { sendJson, chatAnswer } from '../lib/hostile.mjs';

after(cleanup);

const KEY = 'sk-model-groups-tests';
const keys = [{ name: 'groups', key: KEY }];
const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) =>
  post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 20000 });

// The log line of a request, by its x-request-id.
async function logLine(gw, id) {
  let line;
  await waitFor(() => (line = gw.logs.json().find((l) => l.event === 'request' && l.request_id === id)),
    { what: `the request log line of ${id}` });
  return line;
}

test('a group serves from its second model when every node of the first is down', async () => {
  const b = await startMocknode({ name: 'g1-b', models: ['model-b'], quiet: true });
  const dead = await freePort();
  const gw = await startGateway({
    keys,
    log_level: 'info',
    upstream: { connect_timeout_ms: 500 },
    backends: [
      { name: 'g1-a', url: `http://127.0.0.1:${dead}/v1`,
        models: [{ name: 'model-a', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] },
      backendFor(b, { prices: [3, 6] }),
    ],
    model_groups: { smart: ['model-a', 'model-b'] },
  });
  const res = await chat(gw, { model: 'smart', messages: user('hi'), max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-model'), 'model-b');
  assert.equal(res.headers.get('x-tollgate-backend'), 'g1-b');
  assert.equal(res.json.model, 'model-b', 'the body names the model the node served');
  // The node records a request once it is complete, which may be after the caller has its answer.
  let last = null;
  await waitFor(async () => (last = (await b.stats()).last) !== null, { what: 'the node\'s record of the request' });
  assert.equal(last.body.model, 'model-b', 'the node is asked for its own model');
  const line = await logLine(gw, res.headers.get('x-request-id'));
  assert.equal(line.model, 'model-b');
  // Billed at model-b's prices (3 and 6 USD per Mtok).
  const u = res.json.usage;
  const want = (u.prompt_tokens * 3 + u.completion_tokens * 6) / 1e6;
  assert.ok(Math.abs(Number(res.headers.get('x-tollgate-cost-usd')) - want) < 1e-9,
    `${res.headers.get('x-tollgate-cost-usd')} vs ${want}`);

  // The group is a model like any other for /v1/models.
  const models = await get(gw.v1 + '/models', { key: KEY });
  assert.ok(models.json.data.some((m) => m.id === 'smart'), models.text);
});

test('a group moves on from a model over the caller\'s price ceiling', async () => {
  const a = await startMocknode({ name: 'g2-a', models: ['pricey'], quiet: true });
  const b = await startMocknode({ name: 'g2-b', models: ['cheap'], quiet: true });
  const gw = await startGateway({
    keys,
    backends: [backendFor(a, { prices: [100000, 100000] }), backendFor(b, { prices: [1, 1] })],
    model_groups: { best: ['pricey', 'cheap'] },
  });
  const body = { model: 'best', messages: user('hello there'), max_tokens: 10 };
  const free = await chat(gw, body);
  assert.equal(free.status, 200, free.text);
  assert.equal(free.headers.get('x-tollgate-model'), 'pricey', 'without a ceiling the first model serves');
  const capped = await chat(gw, body, { 'x-tollgate-max-price-usd': '0.01' });
  assert.equal(capped.status, 200, capped.text);
  assert.equal(capped.headers.get('x-tollgate-model'), 'cheap');
  assert.equal(chatCalls(await a.stats()), 1, 'the pricey node saw only the uncapped request');
  // Nothing under the ceiling at all: the usual 400.
  const none = await chat(gw, body, { 'x-tollgate-max-price-usd': '0.0000000001' });
  assert.equal(none.status, 400, none.text);
  assert.equal(none.json.error.code, 'max_price_exceeded');
});

test('a group moves on from a model whose nodes answer 429, and from a 5xx', async () => {
  const a = await startMocknode({ name: 'g3-a', models: ['first'], fault: '429', quiet: true });
  const b = await startMocknode({ name: 'g3-b', models: ['second'], quiet: true });
  const c = await startMocknode({ name: 'g3-c', models: ['third'], quiet: true });
  const gw = await startGateway({
    keys,
    backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [5, 5] }),
      backendFor(c, { prices: [9, 9] })],
    model_groups: { chain: ['first', 'second', 'third'] },
  });
  const res = await chat(gw, { model: 'chain', messages: user('hi'), max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-model'), 'second');
  // Its 429 said retry-after: 1 (within the same-node wait's cap): asked once more, then the
  // next model (one retry kept for the move).
  assert.equal(chatCalls(await a.stats()), 2, 'the first model was tried, and its node once more');
  await b.setConfig({ fault: '500' });
  const res2 = await chat(gw, { model: 'chain', messages: user('hi again'), max_tokens: 4 });
  assert.equal(res2.status, 200, res2.text);
  assert.equal(res2.headers.get('x-tollgate-model'), 'third');
});

test('a context-length refusal before the first byte moves on to the next model', async () => {
  const short = await startRawBackend((sock) => sendJson(sock, 400, { error: {
    message: "This model's maximum context length is 8 tokens.", type: 'invalid_request_error',
    param: 'messages', code: 'context_length_exceeded' } }));
  const long = await startRawBackend((sock, req) => sendJson(sock, 200, chatAnswer(req)));
  const gw = await startGateway({
    keys,
    backends: [
      { name: 'short', url: short.v1, models: [{ name: 'small', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] },
      { name: 'long', url: long.v1, models: [{ name: 'large', input_usd_per_mtok: 2, output_usd_per_mtok: 2 }] },
    ],
    model_groups: { ctx: ['small', 'large'] },
  });
  const res = await chat(gw, { model: 'ctx', messages: user('a long prompt '.repeat(20)), max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-model'), 'large');
  assert.equal(short.requests.filter((q) => q.method === 'POST').length, 1);
  // A model alone keeps relaying the node's own refusal.
  const alone = await chat(gw, { model: 'small', messages: user('x'), max_tokens: 4 });
  assert.equal(alone.status, 400, alone.text);
  assert.equal(alone.json.error.code, 'context_length_exceeded');
});

test('a request brings its own chain with "models"; backends never see the list', async () => {
  const a = await startMocknode({ name: 'g5-a', models: ['alpha'], fault: '500', quiet: true });
  const b = await startMocknode({ name: 'g5-b', models: ['beta'], quiet: true });
  const gw = await startGateway({
    keys, backends: [backendFor(a, { prices: [1, 1] }), backendFor(b, { prices: [2, 2] })],
  });
  const res = await chat(gw, { model: 'alpha', models: ['beta'], messages: user('hi'), max_tokens: 4 });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers.get('x-tollgate-model'), 'beta');
  const sent = (await b.stats()).last.body;
  assert.equal(sent.model, 'beta');
  assert.equal(sent.models, undefined, 'the list is the gateway\'s, not the node\'s');
  assert.equal((await a.stats()).last.body.models, undefined);

  const unknown = await chat(gw, { model: 'alpha', models: ['nope'], messages: user('hi') });
  assert.equal(unknown.status, 404, unknown.text);
  assert.deepEqual(errorShapeProblems(unknown.json), []);
  assert.equal(unknown.json.error.code, 'model_not_found');
  assert.equal(unknown.json.error.param, 'models');
  const bad = await chat(gw, { model: 'alpha', models: 'beta', messages: user('hi') });
  assert.equal(bad.status, 400, bad.text);
  assert.equal(bad.json.error.param, 'models');
});

test('model_groups are checked when the config loads', async () => {
  const base = {
    listen: '127.0.0.1:1',
    backends: [{ name: 'n', url: 'http://127.0.0.1:1/v1',
      models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }],
  };
  const cases = [
    [{ g: ['m', 'missing'] }, /model_groups\.g: no backend serves the model "missing"/],
    [{ m: ['m'] }, /model_groups\.m: a backend serves a model of this name/],
    [{ g: [] }, /model_groups\.g: must list 1 to 16 model names/],
    [{ g: ['m', 'm'] }, /model_groups\.g\[1\]: "m" is listed twice/],
  ];
  for (const [groups, want] of cases) {
    const file = await writeTempFile('groups.json', JSON.stringify({ ...base, model_groups: groups }));
    const r = await runTollgate(['--check-config', '-c', file]);
    assert.notEqual(r.code, 0, JSON.stringify(groups));
    assert.match(r.stdout + r.stderr, want);
  }
});

// Capability-aware routing (issue 14 item 4):
// - per backend model, `capabilities` (tools, json_schema, vision, audio, logprobs: a list, or
//   a mapping to true/false) and `context_length` in the config, or from the node's /models
//   feed (OpenRouter's supported_parameters, architecture.input_modalities, context_length);
// - a request that uses a capability goes only where it is not declared unsupported (where
//   it is declared supported, with x-tollgate-require-parameters: true);
// - an estimated prompt over a node's context length skips that node;
// - when no node can take it: an OpenAI-shaped 400 that says why.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, chatCalls, errorShapeProblems,
  startJsonServer, waitFor, adminListener,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-capabilities-tests';
const keys = [{ name: 'caps', key: KEY }];
const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) =>
  post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 20000 });
const tools = [{ type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: {} } } }];
const model = (extra, price) => ({ name: 'm', input_usd_per_mtok: price, output_usd_per_mtok: price, ...extra });

test('a tools request never reaches a node without tools, however cheap', async () => {
  const plain = await startMocknode({ name: 'c1-plain', models: ['m'], quiet: true });
  const able = await startMocknode({ name: 'c1-able', models: ['m'], quiet: true });
  const gw = await startGateway({ keys, backends: [
    backendFor(plain, { models: [model({ capabilities: { tools: false, json_schema: false } }, 1)] }),
    backendFor(able, { models: [model({ capabilities: ['tools', 'json_schema'] }, 50)] }),
  ] });
  for (let i = 0; i < 5; i++) {
    const res = await chat(gw, { model: 'm', messages: user(`weather ${i}?`), tools, max_tokens: 4 });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.headers.get('x-tollgate-backend'), 'c1-able');
  }
  assert.equal(chatCalls(await plain.stats()), 0, 'the node without tools saw none of them');
  // Declared tools: false does not keep it from plain requests, where it is cheapest.
  const res = await chat(gw, { model: 'm', messages: user('hi'), max_tokens: 4 });
  assert.equal(res.headers.get('x-tollgate-backend'), 'c1-plain');
  // json_schema output: only the node declaring it. logprobs: c1-able's list leaves it out
  // (a list declares the rest unsupported); c1-plain's mapping does not say (supported).
  const schema = { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'object' } } };
  const js = await chat(gw, { model: 'm', messages: user('json'), response_format: schema, max_tokens: 4 });
  assert.equal(js.headers.get('x-tollgate-backend'), 'c1-able');
  const lp = await chat(gw, { model: 'm', messages: user('lp'), logprobs: true, max_tokens: 4 });
  assert.equal(lp.status, 200, 'the node that does not say (c1-plain) is assumed to support it');
  assert.equal(lp.headers.get('x-tollgate-backend'), 'c1-plain');
});

test('x-tollgate-require-parameters: true takes only nodes that declare what is used', async () => {
  const silent = await startMocknode({ name: 'c2-silent', models: ['m'], quiet: true });
  const declared = await startMocknode({ name: 'c2-declared', models: ['m'], quiet: true });
  const gw = await startGateway({ keys, backends: [
    backendFor(silent, { models: [model({}, 1)] }),
    backendFor(declared, { models: [model({ capabilities: { tools: true } }, 50)] }),
  ] });
  const body = { model: 'm', messages: user('weather?'), tools, max_tokens: 4 };
  const loose = await chat(gw, body);
  assert.equal(loose.headers.get('x-tollgate-backend'), 'c2-silent', 'undeclared counts as supported');
  const strict = await chat(gw, body, { 'x-tollgate-require-parameters': 'true' });
  assert.equal(strict.status, 200, strict.text);
  assert.equal(strict.headers.get('x-tollgate-backend'), 'c2-declared');
  const vision = await chat(gw, { model: 'm', max_tokens: 4, messages: [{ role: 'user', content: [
    { type: 'text', text: 'what is this?' },
    { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } }] }] },
  { 'x-tollgate-require-parameters': 'true' });
  assert.equal(vision.status, 400, vision.text);
  assert.deepEqual(errorShapeProblems(vision.json), []);
  assert.equal(vision.json.error.code, 'unsupported_parameter');
  assert.match(vision.json.error.message, /vision/);
  const bad = await chat(gw, body, { 'x-tollgate-require-parameters': 'yes' });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.error.param, 'x-tollgate-require-parameters');
});

test('a long prompt skips a node with a short context; none long enough is a clear 400', async () => {
  const short = await startMocknode({ name: 'c3-short', models: ['m'], quiet: true });
  const long = await startMocknode({ name: 'c3-long', models: ['m'], quiet: true });
  const gw = await startGateway({ keys, backends: [
    backendFor(short, { models: [model({ context_length: 200 }, 1)] }),
    backendFor(long, { models: [model({ context_length: 100000 }, 50)] }),
  ] });
  const small = await chat(gw, { model: 'm', messages: user('hi'), max_tokens: 4 });
  assert.equal(small.headers.get('x-tollgate-backend'), 'c3-short');
  const big = await chat(gw, { model: 'm', messages: user('lorem ipsum '.repeat(200)), max_tokens: 4 });
  assert.equal(big.status, 200, big.text);
  assert.equal(big.headers.get('x-tollgate-backend'), 'c3-long');
  assert.equal(chatCalls(await short.stats()), 1, 'the short node saw only the short prompt');
  const huge = await chat(gw, { model: 'm', messages: user('lorem ipsum '.repeat(40000)), max_tokens: 4 });
  assert.equal(huge.status, 400, huge.text);
  assert.deepEqual(errorShapeProblems(huge.json), []);
  assert.equal(huge.json.error.code, 'context_length_exceeded');
});

test('capabilities and context length from the /models feed', async () => {
  const thin = await startMocknode({ name: 'c4-thin', models: ['m'], quiet: true });
  const full = await startMocknode({ name: 'c4-full', models: ['m'], quiet: true });
  const doc = (params, ctx) => ({ data: [{ id: 'm', context_length: ctx, supported_parameters: params,
    pricing: { prompt: '0.000001', completion: '0.000001' } }] });
  const feedThin = await startJsonServer(doc(['temperature', 'max_tokens'], 100));
  const feedFull = await startJsonServer({ data: [{ id: 'm', context_length: 100000,
    supported_parameters: ['tools', 'tool_choice', 'temperature'],
    pricing: { prompt: '0.00005', completion: '0.00005' } }] });
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, backends: [
    { ...backendFor(thin, { prices: [1, 1] }), prices_url: feedThin.url + '/models', prices_refresh_s: 1 },
    { ...backendFor(full, { prices: [50, 50] }), prices_url: feedFull.url + '/models', prices_refresh_s: 1 },
  ] });
  await waitFor(async () => (await admin.backends()).every((b) => b.models[0].price_source === 'live'),
    { timeoutMs: 5000, what: 'both feeds read' });
  const t = await chat(gw, { model: 'm', messages: user('weather?'), tools, max_tokens: 4 });
  assert.equal(t.status, 200, t.text);
  assert.equal(t.headers.get('x-tollgate-backend'), 'c4-full', 'the feed says c4-thin has no tools');
  const long = await chat(gw, { model: 'm', messages: user('lorem ipsum '.repeat(100)), max_tokens: 4 });
  assert.equal(long.headers.get('x-tollgate-backend'), 'c4-full', 'the feed says c4-thin has 100 tokens');
  const plain = await chat(gw, { model: 'm', messages: user('hi'), max_tokens: 4 });
  assert.equal(plain.headers.get('x-tollgate-backend'), 'c4-thin');
  assert.equal(chatCalls(await thin.stats()), 1);
});

test('capabilities are checked when the config loads', async () => {
  const { runTollgate, writeTempFile } = await import('../lib/harness.mjs');
  const cfg = (extra) => ({ listen: '127.0.0.1:1', backends: [{ name: 'n', url: 'http://127.0.0.1:1/v1',
    models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1, ...extra }] }] });
  const cases = [
    [{ capabilities: ['tools', 'telepathy'] }, /capabilities\[1\]: must be one of tools/],
    [{ capabilities: { vision: 'yes' } }, /capabilities\.vision: must be true or false/],
    [{ context_length: 0 }, /context_length/],
    [{ cached_input_usd_per_mtok: -1 }, /cached_input_usd_per_mtok/],
  ];
  for (const [extra, want] of cases) {
    const file = await writeTempFile('caps.json', JSON.stringify(cfg(extra)));
    const r = await runTollgate(['--check-config', '-c', file]);
    assert.notEqual(r.code, 0, JSON.stringify(extra));
    assert.match(r.stdout + r.stderr, want);
  }
});

// The metered pass-through surface with the official openai SDK, unmodified: images.generate
// billed per image, audio.speech.create per character, moderations.create per input token, at
// the serving model's prices; a node that fails is failed over, one that sends more images
// than asked for is billed only those asked for, and every request is in the ledger once.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { startMocknode, startGateway, cleanup, waitFor } from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const KEY = 'sk-e2e-media';
const models = (image, mchar, input) => [
  { name: 'img', input_usd_per_mtok: 0, output_usd_per_mtok: 0, usd_per_image: image },
  { name: 'tts', input_usd_per_mtok: 0, output_usd_per_mtok: 0, usd_per_mchar: mchar },
  { name: 'mod', input_usd_per_mtok: input, output_usd_per_mtok: 0 },
];
let redis;
let cheap;
let dear;
let liar;
let client;
let liarClient;
const requestIds = new Set();

before(async () => {
  redis = await startRedis();
  const names = ['img', 'tts', 'mod'];
  [cheap, dear, liar] = await Promise.all([
    startMocknode({ name: 'cheap', models: names, quiet: true }),
    startMocknode({ name: 'dear', models: names, quiet: true }),
    startMocknode({ name: 'liar', models: ['img'], fault: 'inflate-usage', quiet: true }),
  ]);
  const gw = await startGateway({
    log_level: 'warn',
    redis: { url: redis.url },
    health: { interval_ms: 60000 },
    keys: [{ name: 'e2e-media', key: KEY }],
    backends: [
      { name: 'cheap', url: cheap.v1, models: models(0.04, 15, 1) },
      { name: 'dear', url: dear.v1, models: models(0.08, 30, 2) },
    ],
  });
  const gwLiar = await startGateway({
    log_level: 'warn',
    keys: [{ name: 'e2e-media', key: KEY }],
    backends: [{ name: 'liar', url: liar.v1, models: models(0.04, 15, 1).slice(0, 1) }],
  });
  const fetchTracked = async (url, init) => {
    const res = await fetch(url, init);
    if (res.headers.get('x-request-id')) requestIds.add(res.headers.get('x-request-id'));
    return res;
  };
  client = new OpenAI({ apiKey: KEY, baseURL: gw.v1, maxRetries: 0, fetch: fetchTracked });
  liarClient = new OpenAI({ apiKey: KEY, baseURL: gwLiar.v1, maxRetries: 0 });
});

after(async () => {
  await cleanup();
  await redis?.stop();
});

const costOf = (response) => Number(response.headers.get('x-tollgate-cost-usd'));
const near = (a, b) => Math.abs(a - b) < 1e-12;

test('images.generate: the images asked for, billed per image at the cheapest node', async () => {
  const { data, response } = await client.images.generate({ model: 'img', prompt: 'a lighthouse', n: 2 }).withResponse();
  assert.equal(data.data.length, 2);
  assert.ok(data.data[0].b64_json.length > 10);
  assert.equal(response.headers.get('x-tollgate-backend'), 'cheap');
  assert.ok(near(costOf(response), 2 * 0.04), `${costOf(response)}`);
  const urls = await client.images.generate({ model: 'img', prompt: 'a lighthouse', response_format: 'url' });
  assert.match(urls.data[0].url, /^https:\/\//);
});

test('audio.speech.create: the node audio bytes as they came, billed per character', async () => {
  const input = 'Hello from the gateway.';
  const { data, response } = await client.audio.speech.create({ model: 'tts', voice: 'alloy', input }).withResponse();
  const audio = Buffer.from(await data.arrayBuffer());
  assert.equal(response.headers.get('content-type'), 'audio/mpeg');
  assert.equal(audio.subarray(0, 3).toString(), 'ID3');
  assert.equal(audio.length, 3 + 8 * input.length);
  assert.ok(near(costOf(response), input.length * 15 / 1e6), `${costOf(response)}`);
});

test('moderations.create: billed as input tokens', async () => {
  const { data, response } = await client.moderations.create({ model: 'mod', input: ['hello there', 'again'] }).withResponse();
  assert.equal(data.results.length, 2);
  assert.equal(data.results[0].flagged, false);
  assert.ok(costOf(response) > 0 && costOf(response) < 1e-4, `${costOf(response)}`);
});

test('a failing node is failed over, at the price of the node that served', async () => {
  await cheap.setConfig({ fault: 500 });
  try {
    const { response } = await client.images.generate({ model: 'img', prompt: 'a fox' }).withResponse();
    assert.equal(response.headers.get('x-tollgate-backend'), 'dear');
    assert.ok(near(costOf(response), 0.08));
    const sp = await client.audio.speech.create({ model: 'tts', voice: 'alloy', input: 'abc' }).withResponse();
    assert.equal(sp.response.headers.get('x-tollgate-backend'), 'dear');
    assert.ok(near(costOf(sp.response), 3 * 30 / 1e6));
  } finally {
    await cheap.setConfig({ fault: 'none' });
  }
});

test('bad bodies are refused with OpenAI errors', async () => {
  await assert.rejects(client.images.generate({ model: 'img', prompt: 'x', n: 11 }),
    (e) => e.status === 400 && e.param === 'n');
  await assert.rejects(client.audio.speech.create({ model: 'tts', voice: 'alloy', input: 'x'.repeat(4097) }),
    (e) => e.status === 400 && e.param === 'input');
  await assert.rejects(client.moderations.create({ model: 'nope', input: 'x' }),
    (e) => e.status === 404 && e.code === 'model_not_found');
});

test('a node sending more images than asked for is billed only those asked for', async () => {
  const { data, response } = await liarClient.images.generate({ model: 'img', prompt: 'x', n: 2 }).withResponse();
  assert.equal(data.data.length, 6); // passed through as sent
  assert.ok(near(costOf(response), 2 * 0.04), `${costOf(response)}`);
});

test('every request is in the ledger exactly once', async () => {
  const byId = await waitFor(async () => {
    const rows = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
    const m = new Map();
    for (const [, f] of rows) {
      const o = {};
      for (let i = 0; i < f.length; i += 2) o[f[i]] = f[i + 1];
      m.set(o.id, (m.get(o.id) ?? 0) + 1);
    }
    return [...requestIds].every((id) => m.has(id)) ? m : null;
  }, { timeoutMs: 15000, what: 'the ledger to hold every request' });
  for (const id of requestIds) assert.equal(byId.get(id), 1, id);
});

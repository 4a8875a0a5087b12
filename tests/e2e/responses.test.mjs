// The Responses API end to end with the clients people use, unmodified: the Vercel AI SDK's
// default provider (createOpenAI(...)(model) calls POST /v1/responses) and the official openai
// SDK's responses.*, against two gateway replicas that share one Redis, mocknodes behind them.
// What the nodes report is what is billed, and every request is in the ledger exactly once.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText, jsonSchema, stepCountIs, tool } from 'ai';
import { startMocknode, startGateway, backendFor, cleanup, waitFor } from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const KEY = 'sk-e2e-responses';
const PRICES = { cheap: [2, 3], dear: [20, 30] }; // USD per million input / output tokens
const MODEL = 'gpt-test';

let redis;
let cheap;
let dear;
let gwA;
let gwB;
let sdkA;
let sdkB;
const requestIds = new Set(); // every request the tests sent, by x-request-id

before(async () => {
  redis = await startRedis();
  [cheap, dear] = await Promise.all([
    startMocknode({ name: 'cheap', models: [MODEL], tokens: 6, quiet: true }),
    startMocknode({ name: 'dear', models: [MODEL], tokens: 6, quiet: true }),
  ]);
  const config = {
    log_level: 'warn',
    workers: 2,
    redis: { url: redis.url },
    health: { interval_ms: 60000 },
    keys: [{ name: 'e2e-resp', key: KEY }],
    backends: [backendFor(cheap, { prices: PRICES.cheap }), backendFor(dear, { prices: PRICES.dear })],
  };
  [gwA, gwB] = await Promise.all([startGateway(config), startGateway(config)]);
  // Every request's id is collected from the answers, whichever client sent it.
  const tracked = async (url, init) => {
    const res = await fetch(url, init);
    const id = res.headers.get('x-request-id');
    if (id) requestIds.add(id);
    return res;
  };
  sdkA = new OpenAI({ apiKey: KEY, baseURL: gwA.v1, maxRetries: 0, fetch: tracked });
  sdkB = new OpenAI({ apiKey: KEY, baseURL: gwB.v1, maxRetries: 0, fetch: tracked });
  globalThis.__trackedFetch = tracked;
});

after(async () => {
  await cleanup();
  await redis?.stop();
});

const aiProvider = (gw) => createOpenAI({ apiKey: KEY, baseURL: gw.v1, fetch: globalThis.__trackedFetch });
const nodeText = (name, n) => `[${name}]` + [' lorem', ' ipsum', ' dolor', ' sit', ' amet', ' consectetur'].slice(0, n - 1).join('');
const cost = (u, [i, o]) => (u.input_tokens * i + u.output_tokens * o) / 1e6;

// A response made on the dearer node: the cheap one fails while it is asked.
async function onDear(fn) {
  await cheap.setConfig({ fault: 500 });
  try {
    return await fn();
  } finally {
    await cheap.setConfig({ fault: 'none' });
  }
}

describe('the Vercel AI SDK default provider', () => {
  test('generateText', async () => {
    const r = await generateText({ model: aiProvider(gwA)(MODEL), prompt: 'Say hello.' });
    assert.equal(r.text, nodeText('cheap', 6));
    assert.equal(r.usage.outputTokens, 6);
    assert.ok(r.usage.inputTokens > 0);
    assert.equal(r.finishReason, 'stop');
    assert.match(r.response.id, /^resp_/);
  });

  test('streamText', async () => {
    const r = streamText({ model: aiProvider(gwB)(MODEL), prompt: 'Say hello, slowly.' });
    let text = '';
    for await (const part of r.textStream) text += part;
    assert.equal(text, nodeText('cheap', 6));
    const usage = await r.usage;
    assert.equal(usage.outputTokens, 6);
    assert.equal(await r.finishReason, 'stop');
  });

  test('a tool call, then its result back to the model', async () => {
    const calls = [];
    const weather = tool({
      description: 'The weather in a city',
      inputSchema: jsonSchema({ type: 'object', properties: { city: { type: 'string' } }, required: ['city'] }),
      execute: async ({ city }) => { calls.push(city); return { city, forecast: 'sunny' }; },
    });
    const r = await generateText({
      model: aiProvider(gwA)(MODEL),
      prompt: 'What is the weather in Paris?',
      tools: { weather },
      stopWhen: stepCountIs(2),
    });
    assert.deepEqual(calls, ['test']); // mocknode fills a string argument with "test"
    assert.equal(r.steps.length, 2);
    assert.equal(r.steps[0].toolCalls[0].toolName, 'weather');
    assert.deepEqual(r.steps[0].toolCalls[0].input, { city: 'test' });
    assert.equal(r.text, nodeText('cheap', 6)); // the second step answers in text
  });
});

describe('the openai SDK', () => {
  test('responses.create, whole: billed what the node reported', async () => {
    const { data, response } = await sdkA.responses.create({ model: MODEL, input: 'Hello there', instructions: 'Be brief.' }).withResponse();
    assert.equal(data.output_text, nodeText('cheap', 6));
    assert.equal(response.headers.get('x-tollgate-backend'), 'cheap');
    const billed = Number(response.headers.get('x-tollgate-cost-usd'));
    assert.ok(Math.abs(billed - cost(data.usage, PRICES.cheap)) < 1e-12, `${billed} vs ${cost(data.usage, PRICES.cheap)}`);
  });

  test('responses.create, streamed: typed events to response.completed', async () => {
    const stream = await sdkB.responses.create({ model: MODEL, input: 'Stream it', stream: true });
    const types = [];
    let text = '';
    let done;
    for await (const ev of stream) {
      types.push(ev.type);
      if (ev.type === 'response.output_text.delta') text += ev.delta;
      if (ev.type === 'response.completed') done = ev.response;
    }
    assert.equal(types[0], 'response.created');
    assert.equal(types.at(-1), 'response.completed');
    assert.equal(text, nodeText('cheap', 6));
    assert.equal(done.usage.output_tokens, 6);
  });

  test('previous_response_id across replicas: the follow-up on the other replica reaches the node that holds it', async () => {
    const first = await onDear(() => sdkA.responses.create({ model: MODEL, input: 'Remember the number 7.' }));
    assert.equal(first.output_text, nodeText('dear', 6));
    // Replica B never saw this response: it learns its node from Redis.
    const { data, response } = await sdkB.responses.create({ model: MODEL, input: 'Which number?', previous_response_id: first.id }).withResponse();
    assert.equal(response.headers.get('x-tollgate-backend'), 'dear');
    assert.equal(data.previous_response_id, first.id);
    assert.equal(data.output_text, nodeText('dear', 6));
    // Streamed follow-ups too, and a chain of them.
    const s = await sdkA.responses.create({ model: MODEL, input: 'And again?', previous_response_id: data.id, stream: true });
    let last;
    for await (const ev of s) last = ev;
    assert.equal(last.type, 'response.completed');
    assert.equal(last.response.previous_response_id, data.id);
    assert.equal(last.response.output[0].content[0].text, nodeText('dear', 6));
  });

  test('retrieve, inputItems.list and delete by id, on the other replica', async () => {
    const made = await onDear(() => sdkA.responses.create({ model: MODEL, input: 'Keep this.' }));
    const got = await sdkB.responses.retrieve(made.id);
    assert.equal(got.id, made.id);
    assert.equal(got.output_text, made.output_text);
    const items = await sdkB.responses.inputItems.list(made.id);
    assert.equal(items.data[0].content, 'Keep this.');
    await sdkB.responses.delete(made.id);
    await assert.rejects(sdkA.responses.retrieve(made.id), (err) => err.status === 404);
  });

  test('a deterministic stream is answered from the cache the second time, the same events', async () => {
    const body = { model: MODEL, input: 'Cache this answer.', temperature: 0, stream: true };
    const run = async () => {
      const { data, response } = await sdkA.responses.create(body).withResponse();
      const events = [];
      for await (const ev of data) events.push(ev);
      return { events, cache: response.headers.get('x-tollgate-cache') };
    };
    const first = await run();
    const second = await run();
    assert.equal(first.cache, 'miss');
    assert.equal(second.cache, 'hit');
    const squash = (evs) => evs.map((e) => e.type).filter((t, i, all) => !(t.endsWith('.delta') && all[i - 1] === t));
    assert.deepEqual(squash(second.events), squash(first.events));
    assert.deepEqual(second.events.at(-1).response.output, first.events.at(-1).response.output);
  });
});

test('every request is in the ledger exactly once, at what the node reported', async () => {
  const entries = await waitFor(async () => {
    const rows = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
    const byId = new Map();
    for (const [, fields] of rows) {
      const o = {};
      for (let i = 0; i < fields.length; i += 2) o[fields[i]] = fields[i + 1];
      byId.set(o.id, [...(byId.get(o.id) ?? []), o]);
    }
    return [...requestIds].every((id) => byId.has(id)) ? byId : null;
  }, { timeoutMs: 15000, what: 'the ledger to hold every request' });
  for (const id of requestIds) assert.equal(entries.get(id).length, 1, `request ${id} recorded once`);
  // Each billed answer's cost is its tokens at its node's price.
  for (const [, [e]] of entries) {
    if (e.model !== MODEL || e.status !== '200' || e.cache === 'hit') continue;
    const [i, o] = PRICES[e.backend];
    const want = (Number(e.prompt_tokens) * i + Number(e.completion_tokens) * o) / 1e6;
    assert.ok(Math.abs(Number(e.cost_usd) - want) < 1e-9, `${e.id}: ${e.cost_usd} vs ${want}`);
  }
});

// End to end with the official OpenAI SDK pointed at the gateway, mocknodes behind it.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import {
  startMocknode, startGateway, backendFor, cleanup, freePort, mockText, mockPromptTokens,
  startRawBackend, chunk, apiCalls, waitFor,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-e2e-sdk-key';
let gw;
let node;
let client;
let fail500;
let limited;
let failover;

// A scripted backend: the stream starts, two events arrive, then the TCP connection is cut.
const rawCut = (sock) => {
  const ev = (delta) => `data: ${JSON.stringify({ id: 'chatcmpl-raw', object: 'chat.completion.chunk', created: 1,
    model: 'raw-cut-model', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
  sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n');
  sock.write(chunk(ev({ role: 'assistant', content: '[raw]' })));
  setTimeout(() => sock.write(chunk(ev({ content: ' one' }))), 20);
  setTimeout(() => sock.destroy(), 40);
};

before(async () => {
  let hang;
  let trunc;
  let cut;
  [node, hang, trunc, cut, fail500, limited, failover] = await Promise.all([
    startMocknode({ name: 'sdk-node', models: ['chat-up', 'text-model', 'embed-model'], tokens: 4, tokenMs: 10, quiet: true }),
    startMocknode({ name: 'sdk-hang', models: ['hang-model'], fault: 'hang', quiet: true }),
    startMocknode({ name: 'sdk-trunc', models: ['trunc-model'], fault: 'close-mid-stream', quiet: true }),
    startMocknode({ name: 'sdk-cut', models: ['cut-model'], fault: 'close-mid-stream', tokens: 10, tokenMs: 10, quiet: true }),
    startMocknode({ name: 'sdk-500', models: ['e500-model'], fault: '500', quiet: true }),
    startMocknode({ name: 'sdk-429', models: ['e429-model'], fault: '429', retryAfter: 1, quiet: true }),
    startMocknode({ name: 'sdk-failover', models: ['chat-up'], fault: '500', quiet: true }),
  ]);
  const raw = await startRawBackend(rawCut);
  const deadPort = await freePort();
  gw = await startGateway({
    upstream: { first_byte_timeout_ms: 300, idle_timeout_ms: 3000 },
    keys: [{ name: 'sdk', key: KEY }],
    backends: [
      backendFor(node, { models: [
        { name: 'chat-model', upstream: 'chat-up', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2 },
        'text-model', 'embed-model',
      ] }),
      backendFor(hang),
      backendFor(trunc),
      backendFor(cut),
      { name: 'sdk-ghost', url: `http://127.0.0.1:${deadPort}/v1`,
        models: [{ name: 'ghost-model', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] },
      backendFor(fail500),
      backendFor(limited),
      // Cheaper than sdk-node for chat-model, and failing: every try there fails over.
      backendFor(failover, { models: [
        { name: 'chat-model', upstream: 'chat-up', input_usd_per_mtok: 0.01, output_usd_per_mtok: 0.01 },
      ] }),
      { name: 'sdk-raw-cut', url: raw.v1,
        models: [{ name: 'raw-cut-model', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] },
    ],
  });
  client = new OpenAI({ baseURL: gw.url + '/v1', apiKey: KEY, maxRetries: 0, timeout: 15000 });
});

const messages = [{ role: 'user', content: 'Hello from the SDK' }];

describe('models', () => {
  test('models.list returns the configured public names', async () => {
    const ids = [];
    for await (const m of client.models.list()) {
      ids.push(m.id);
      assert.equal(m.object, 'model');
      assert.equal(m.owned_by, 'tollgate');
    }
    assert.deepEqual(ids.sort(), ['chat-model', 'cut-model', 'e429-model', 'e500-model', 'embed-model', 'ghost-model',
      'hang-model', 'raw-cut-model', 'text-model', 'trunc-model']);
  });

  test('models.retrieve', async () => {
    const m = await client.models.retrieve('chat-model');
    assert.equal(m.id, 'chat-model');
    assert.equal(m.object, 'model');
    assert.equal(m.owned_by, 'tollgate');
    assert.equal(typeof m.created, 'number');
  });
});

describe('chat', () => {
  test('chat.completions.create (non-stream)', async () => {
    const { data: res, response } = await client.chat.completions.create({ model: 'chat-model', messages }).withResponse();
    assert.equal(res.object, 'chat.completion');
    assert.equal(res.choices[0].message.role, 'assistant');
    assert.equal(res.choices[0].message.content, mockText('sdk-node', 4));
    assert.equal(res.choices[0].finish_reason, 'stop');
    const P = mockPromptTokens(messages);
    assert.deepEqual(res.usage, { prompt_tokens: P, completion_tokens: 4, total_tokens: P + 4 });
    assert.equal(response.headers.get('x-tollgate-backend'), 'sdk-node');
    assert.match(response.headers.get('x-request-id') ?? '', /^[0-9a-f]{32}$/);
    // What the answer cost: P x 0.1 + 4 x 0.2 USD per million tokens, as a plain decimal.
    const cost = response.headers.get('x-tollgate-cost-usd');
    assert.match(cost ?? '', /^\d+\.\d+$/, `x-tollgate-cost-usd: ${cost}`);
    assert.ok(Math.abs(Number(cost) - (P * 0.1 + 4 * 0.2) / 1e6) < 1e-10, `x-tollgate-cost-usd ${cost}`);
    // The SDK's own Authorization never reaches the node; the rename does.
    const stats = await node.stats();
    assert.equal(stats.last.authorization, null);
    assert.equal(stats.last.body.model, 'chat-up');
  });

  test('chat stream with include_usage: text and usage chunk', async () => {
    const stream = await client.chat.completions.create({
      model: 'chat-model', messages, stream: true, stream_options: { include_usage: true }, max_tokens: 3,
    });
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    assert.ok(chunks.length >= 4, `${chunks.length} chunks`);
    for (const c of chunks) assert.equal(c.object, 'chat.completion.chunk');
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    const text = chunks.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.equal(text, mockText('sdk-node', 3));
    const finish = chunks.find((c) => c.choices[0]?.finish_reason);
    assert.equal(finish.choices[0].finish_reason, 'length');
    const usage = chunks.at(-1);
    assert.deepEqual(usage.choices, []);
    const P = mockPromptTokens(messages);
    assert.equal(usage.usage.prompt_tokens, P);
    assert.equal(usage.usage.completion_tokens, 3);
    assert.equal(usage.usage.total_tokens, P + 3);
    // The gateway's settled numbers (the node's, which are plausible) plus the cost in USD.
    const { cost, ...tokens } = usage.usage;
    assert.deepEqual(tokens, { prompt_tokens: P, completion_tokens: 3, total_tokens: P + 3 });
    assert.equal(typeof cost, 'number');
    assert.ok(Math.abs(cost - (P * 0.1 + 3 * 0.2) / 1e6) < 1e-12, `cost ${cost}`);
  });

  test('the SDK stream helper accumulates the final message', async () => {
    const runner = client.chat.completions.stream({ model: 'chat-model', messages, max_tokens: 4 });
    const final = await runner.finalChatCompletion();
    assert.equal(final.choices[0].message.content, mockText('sdk-node', 4));
  });
});

describe('completions and embeddings', () => {
  test('completions.create', async () => {
    const res = await client.completions.create({ model: 'text-model', prompt: 'Once upon' });
    assert.equal(res.object, 'text_completion');
    assert.equal(res.choices[0].text, mockText('sdk-node', 4));
    assert.equal(res.usage.completion_tokens, 4);
  });

  test('completions.create streamed', async () => {
    const stream = await client.completions.create({ model: 'text-model', prompt: 'Once upon', stream: true, max_tokens: 2 });
    let text = '';
    let n = 0;
    for await (const chunk of stream) { text += chunk.choices[0]?.text ?? ''; n++; }
    assert.ok(n >= 2);
    assert.equal(text, mockText('sdk-node', 2));
  });

  test('embeddings.create', async () => {
    const res = await client.embeddings.create({ model: 'embed-model', input: ['first', 'second'], encoding_format: 'float' });
    assert.equal(res.object, 'list');
    assert.equal(res.data.length, 2);
    res.data.forEach((d, i) => {
      assert.equal(d.index, i);
      assert.equal(d.embedding.length, 16);
      assert.ok(d.embedding.every(Number.isFinite));
    });
    assert.equal(res.usage.total_tokens, res.usage.prompt_tokens);
  });
});

describe('SDK error classes', () => {
  test('wrong key -> AuthenticationError (401)', async () => {
    const bad = new OpenAI({ baseURL: gw.url + '/v1', apiKey: 'sk-wrong', maxRetries: 0, timeout: 10000 });
    await assert.rejects(bad.chat.completions.create({ model: 'chat-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.AuthenticationError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 401);
      assert.equal(err.code, 'invalid_api_key');
      assert.equal(err.type, 'invalid_request_error');
      return true;
    });
    await assert.rejects(bad.models.list(), OpenAI.AuthenticationError);
  });

  test('unknown model -> NotFoundError (404 model_not_found, param model)', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.NotFoundError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 404);
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, 'model');
      return true;
    });
    await assert.rejects(client.models.retrieve('no-such-model'), OpenAI.NotFoundError);
    await assert.rejects(client.chat.completions.create({ model: 'no-such-model', messages, stream: true }), OpenAI.NotFoundError);
  });

  test('invalid request -> BadRequestError (400)', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'chat-model', messages: 'not an array' }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 400);
      assert.equal(err.param, 'messages');
      return true;
    });
    await assert.rejects(client.chat.completions.create({ model: 42, messages }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.code, 'invalid_type');
      assert.equal(err.param, 'model');
      return true;
    });
    await assert.rejects(client.embeddings.create({ model: 'embed-model', encoding_format: 'float' }), (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError);
      assert.equal(err.param, 'input');
      return true;
    });
  });

  test('unreachable backend -> InternalServerError (502 backend_unreachable)', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'ghost-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 502);
      assert.equal(err.code, 'backend_unreachable');
      assert.equal(err.type, 'api_error');
      assert.match(err.message, /sdk-ghost/);
      return true;
    });
  });

  test('hanging backend -> InternalServerError (504 backend_timeout)', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'hang-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 504);
      assert.equal(err.code, 'backend_timeout');
      assert.match(err.message, /sdk-hang/);
      return true;
    });
  });

  test('truncated backend answer -> InternalServerError (502 bad_backend_response)', async () => {
    await assert.rejects(client.chat.completions.create({ model: 'trunc-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 502);
      assert.equal(err.code, 'bad_backend_response');
      return true;
    });
  });

  test('a stream cut mid-way makes the async iterator throw instead of ending silently', async () => {
    const stream = await client.chat.completions.create({ model: 'cut-model', messages, stream: true });
    const received = [];
    await assert.rejects((async () => {
      for await (const chunk of stream) received.push(chunk);
    })(), (err) => {
      assert.ok(err instanceof OpenAI.APIError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.code, 'backend_stream_error');
      assert.equal(err.type, 'api_error');
      return true;
    });
    const text = received.map((c) => c.choices[0]?.delta?.content ?? '').join('');
    assert.ok(text.startsWith('[sdk-cut]'), `tokens before the cut were delivered: ${text}`);
    assert.ok(received.length < 10, `${received.length} chunks: the stream was not cut`);
  });

  test('a TCP connection cut mid-stream (scripted backend) makes the iterator throw', async () => {
    const stream = await client.chat.completions.create({ model: 'raw-cut-model', messages, stream: true });
    const received = [];
    await assert.rejects((async () => {
      for await (const c of stream) received.push(c);
    })(), (err) => {
      assert.ok(err instanceof OpenAI.APIError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.code, 'backend_stream_error');
      return true;
    });
    assert.equal(received.map((c) => c.choices[0]?.delta?.content ?? '').join(''), '[raw] one');
  });
});

describe('routing seen from the SDK', () => {
  // An SDK left with its default retries: x-should-retry: false stops it from repeating
  // what the gateway already tried.
  const retrying = () => new OpenAI({ baseURL: gw.url + '/v1', apiKey: KEY, timeout: 15000 });

  test('backend 500 -> InternalServerError 502 bad_backend_response, and the SDK does not retry', async () => {
    await fail500.reset();
    await assert.rejects(retrying().chat.completions.create({ model: 'e500-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 502);
      assert.equal(err.code, 'bad_backend_response');
      assert.match(err.message, /sdk-500/);
      assert.equal(err.headers.get('x-should-retry'), 'false');
      return true;
    });
    // The gateway's own tries: its one node, asked again twice (routing.retries 2) after a
    // short backoff; the SDK adds none. (A node records a request once it is complete.)
    await waitFor(async () => apiCalls(await fail500.stats()) >= 3, { what: 'the gateway\'s three tries' });
    assert.equal(apiCalls(await fail500.stats()), 3, 'the SDK retried despite x-should-retry: false');
  });

  test('backend 429 -> 503 backend_rate_limited with retry-after, and the SDK does not retry', async () => {
    await limited.reset();
    await assert.rejects(retrying().chat.completions.create({ model: 'e429-model', messages }), (err) => {
      assert.ok(err instanceof OpenAI.InternalServerError, `${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.status, 503);
      assert.equal(err.code, 'backend_rate_limited');
      assert.equal(err.headers.get('retry-after'), '1');
      assert.equal(err.headers.get('x-should-retry'), 'false');
      return true;
    });
    // retry-after: 1 is within the same-node wait's cap: the gateway asked again twice, once
    // the node's pause was over; the SDK added none.
    await waitFor(async () => apiCalls(await limited.stats()) >= 3, { what: 'the gateway\'s three tries' });
    assert.equal(apiCalls(await limited.stats()), 3);
  });

  test('the cheapest node failing: the SDK gets a whole answer and a whole stream from the next one', async () => {
    // (Earlier chat-model tests went the same way; sdk-failover may be ejected by now.)
    const { data, response } = await client.chat.completions.create({ model: 'chat-model', messages, max_tokens: 2 })
      .withResponse();
    assert.equal(data.choices[0].message.content, mockText('sdk-node', 2));
    assert.equal(response.headers.get('x-tollgate-backend'), 'sdk-node');
    const stream = await client.chat.completions.create({ model: 'chat-model', messages, stream: true, max_tokens: 3 });
    let text = '';
    for await (const c of stream) text += c.choices[0]?.delta?.content ?? '';
    assert.equal(text, mockText('sdk-node', 3));
    assert.ok(apiCalls(await failover.stats()) >= 1, 'the cheaper node was tried');
  });
});

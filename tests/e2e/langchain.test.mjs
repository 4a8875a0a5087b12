// End to end with LangChain JS (@langchain/openai) pointed at the gateway, unmodified: chat
// whole and streamed with usage, failover behind it, embeddings, and an error surfacing as
// LangChain's own error with the gateway's status.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { ChatOpenAI, OpenAIEmbeddings } from '@langchain/openai';
import { HumanMessage } from '@langchain/core/messages';
import { startMocknode, startGateway, backendFor, cleanup, mockText, mockPromptTokens } from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-e2e-langchain-key';
const PROMPT = 'Hello from LangChain';
let gw;
let node;
let failing;

const chat = (opts = {}) => new ChatOpenAI({
  model: 'lc-chat', apiKey: KEY, maxRetries: 0, timeout: 15000,
  configuration: { baseURL: gw.url + '/v1' }, ...opts,
});

before(async () => {
  [node, failing] = await Promise.all([
    startMocknode({ name: 'lc-node', models: ['lc-up', 'lc-embed'], tokens: 4, tokenMs: 5, quiet: true }),
    startMocknode({ name: 'lc-fail', models: ['lc-up'], fault: '500', quiet: true }),
  ]);
  gw = await startGateway({
    keys: [{ name: 'langchain', key: KEY }],
    backends: [
      backendFor(node, { models: [
        { name: 'lc-chat', upstream: 'lc-up', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.2 },
        'lc-embed',
      ] }),
      // Cheaper and failing: a request that goes there first fails over to lc-node.
      backendFor(failing, { models: [
        { name: 'lc-chat', upstream: 'lc-up', input_usd_per_mtok: 0.01, output_usd_per_mtok: 0.01 },
      ] }),
    ],
  });
});

describe('LangChain ChatOpenAI', () => {
  test('invoke: the node\'s answer and its usage', async () => {
    const msg = await chat().invoke([new HumanMessage(PROMPT)]);
    assert.equal(msg.content, mockText('lc-node', 4));
    const P = mockPromptTokens([{ role: 'user', content: PROMPT }]);
    assert.equal(msg.usage_metadata.input_tokens, P);
    assert.equal(msg.usage_metadata.output_tokens, 4);
    assert.equal(msg.usage_metadata.total_tokens, P + 4);
  });

  test('stream: the chunks make the same text, with the usage at the end', async () => {
    const stream = await chat({ streamUsage: true }).stream([new HumanMessage(PROMPT)]);
    let text = '';
    let usage = null;
    let chunks = 0;
    for await (const c of stream) {
      chunks++;
      text += c.content;
      if (c.usage_metadata) usage = c.usage_metadata;
    }
    assert.ok(chunks >= 4, `a stream of pieces, got ${chunks}`);
    assert.equal(text, mockText('lc-node', 4));
    assert.ok(usage, 'a usage chunk arrived');
    assert.equal(usage.output_tokens, 4);
  });

  test('an unknown model is LangChain\'s error with the gateway\'s 404', async () => {
    await assert.rejects(chat({ model: 'no-such-model' }).invoke(PROMPT), (err) => {
      assert.equal(err.status, 404);
      assert.match(err.message, /no-such-model/);
      return true;
    });
  });

  test('a wrong key is a 401 LangChain reports as such', async () => {
    await assert.rejects(chat({ apiKey: 'sk-not-a-key' }).invoke(PROMPT), (err) => {
      assert.equal(err.status, 401);
      return true;
    });
  });
});

describe('LangChain OpenAIEmbeddings', () => {
  test('embedQuery and embedDocuments through the gateway', async () => {
    const emb = new OpenAIEmbeddings({
      model: 'lc-embed', apiKey: KEY, maxRetries: 0, configuration: { baseURL: gw.url + '/v1' },
    });
    const one = await emb.embedQuery('a query');
    assert.ok(Array.isArray(one) && one.length > 0 && one.every(Number.isFinite));
    const many = await emb.embedDocuments(['first', 'second', 'third']);
    assert.equal(many.length, 3);
    for (const v of many) assert.equal(v.length, one.length);
  });
});

// Issue 13 (the soak's finding): a caller that closes a stream before the usage chunk came was
// recorded as 499 with 0 tokens and 0 USD, a free answer past its budget and TPM. The gateway
// stops the node's transfer at once (the node stops generating, as real servers do when their
// client goes) and bills what was generated until then: the prompt estimate (as reserved) and
// the completion estimated from the text relayed, in one ledger record marked "estimated";
// the budget settles with the same cost. A stream read to its end is billed from the node's
// usage, not marked.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { cleanup, startMocknode, startGateway, backendFor, waitFor } from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const KEY = 'tg-abandon0abandon0abandon0abandon0';
const sha = (key) => createHash('sha256').update(key).digest('hex');
const messages = [{ role: 'user', content: 'Tell me a long story about a lighthouse keeper.' }];

let redis, node, gw;

before(async () => {
  redis = await startRedis();
  // 300 tokens 20 ms apart: 6 s of stream, so the caller leaves long before its end.
  node = await startMocknode({ name: 'n1', models: ['llama'], tokens: 300, tokenMs: 20, quiet: true });
  gw = await startGateway({
    workers: 1, log_level: 'info', redis: { url: redis.url },
    backends: [backendFor(node, { prices: [1000, 2000] })],
  });
  await redis.client.call('HSET', `tg:key:${sha(KEY)}`, 'name', 'leaver', 'created_at', '1',
    'budget_usd', '100', 'tpm', '1000000');
});

after(async () => {
  await redis?.stop();
  await cleanup();
});

// A streamed chat read for `events` data events (all of them when Infinity), then the socket
// is destroyed. Resolves with the number of content events read.
function stream(id, events) {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ model: 'llama', stream: true, stream_options: { include_usage: true }, messages });
    const req = http.request({
      host: '127.0.0.1', port: gw.port, path: '/v1/chat/completions', method: 'POST', agent: false,
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, 'x-request-id': id },
    }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
      let buf = '', n = 0, done = false;
      res.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (ev.startsWith('data: {') && ev.includes('"content"')) n++;
          if (!done && n >= events) {
            done = true;
            req.destroy();
            resolve(n);
          }
        }
      });
      res.on('end', () => { if (!done) resolve(n); });
      res.on('error', () => {});
    });
    req.on('error', (err) => { if (events === Infinity) reject(err); });
    req.end(body);
  });
}

async function records(id) {
  const entries = await redis.client.call('XRANGE', 'tg:usage', '-', '+');
  return entries.map(([, kv]) => Object.fromEntries(kv.reduce((a, v, i) => (i % 2 ? a.at(-1).push(v) : a.push([v]), a), [])))
    .filter((e) => e.id === id);
}

const spent = async () => Number(await redis.client.call('HGET', 'tg:budget:leaver', 'spent') ?? 0);

test('a caller that leaves a stream early is billed for what was generated, once, marked estimated', async () => {
  const id = 'abandon-1';
  const before_spent = await spent();
  const read = await stream(id, 5);
  assert.ok(read >= 5);
  await waitFor(async () => (await records(id)).length > 0, { timeoutMs: 8000, what: 'the record of the abandoned stream' });
  await new Promise((r) => setTimeout(r, 300));
  const recs = await records(id);
  assert.equal(recs.length, 1, 'exactly one record');
  const e = recs[0];
  assert.equal(e.status, '499');
  assert.equal(e.key, 'leaver');
  assert.equal(e.estimated, '1', JSON.stringify(e));
  const prompt = Number(e.prompt_tokens), completion = Number(e.completion_tokens), cost = Number(e.cost_usd);
  assert.ok(prompt > 0, `prompt_tokens ${prompt}`);
  // At least what the caller read, far less than the 300 the node would have generated.
  assert.ok(completion >= read && completion < 300, `completion_tokens ${completion}`);
  const want = (prompt * 1000 + completion * 2000) / 1e6;
  assert.ok(Math.abs(cost - want) < 1e-9, `cost ${cost}, want ${want}`);
  // The budget settled with the same cost.
  await waitFor(async () => (await spent()) > before_spent, { timeoutMs: 15000, what: 'the budget settled' });
  assert.ok(Math.abs((await spent()) - before_spent - cost) < 1e-6, `spent ${await spent()} - ${before_spent} vs ${cost}`);
  const line = gw.logs.json().find((l) => l.event === 'request' && l.request_id === id);
  assert.ok(line, 'a request log line');
  assert.equal(line.status, 499);
  assert.equal(line.completion_tokens, completion);
});

test('a stream read to its end is billed from the node\'s usage, not marked estimated', async () => {
  const id = 'abandon-2';
  await stream(id, Infinity);
  await waitFor(async () => (await records(id)).length > 0, { timeoutMs: 8000, what: 'the record of the whole stream' });
  const recs = await records(id);
  assert.equal(recs.length, 1);
  assert.equal(recs[0].status, '200');
  assert.equal(recs[0].completion_tokens, '300');
  assert.notEqual(recs[0].estimated, '1');
});

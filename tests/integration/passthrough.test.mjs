// What passes through to the node unchanged (issue 14 item 6, in part):
// - integers of any size in a request body: a body the gateway sends on as it came is the
//   caller's bytes, and one it rewrites (another model name, a chain) keeps their digits;
//   fields the gateway reads are still validated;
// - the caller's User-Agent (the gateway's own added as a suffix), OpenAI-Organization and
//   OpenAI-Project headers.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';
import fs from 'node:fs';
import { startGateway, cleanup, post, REPO_ROOT } from '../lib/harness.mjs';

const VERSION = fs.readFileSync(new URL('VERSION', `file://${REPO_ROOT}`), 'utf8').trim();
const KEY = 'sk-passthrough-tests';
const keys = [{ name: 'pass', key: KEY }];

// A node that keeps each request's raw body and headers and answers a small chat completion.
async function rawNode() {
  const seen = [];
  const srv = http.createServer((req, res) => {
    const parts = [];
    req.on('data', (d) => parts.push(d));
    req.on('end', () => {
      const text = Buffer.concat(parts).toString('utf8');
      if (req.method === 'POST') seen.push({ text, headers: req.headers, raw: req.rawHeaders });
      const body = JSON.stringify(req.method === 'POST'
        ? { id: 'x', object: 'chat.completion', created: 1, model: 'm',
          choices: [{ index: 0, message: { role: 'assistant', content: 'ok' }, finish_reason: 'stop' }],
          usage: { prompt_tokens: 3, completion_tokens: 1, total_tokens: 4 } }
        : { object: 'list', data: [] });
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  after(() => new Promise((r) => { srv.closeAllConnections(); srv.close(r); }));
  return { v1: `http://127.0.0.1:${srv.address().port}/v1`, seen };
}

after(cleanup);

const chat = (gw, body, headers = {}) =>
  post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 20000 });

test('integers of any size reach the node with their digits', async () => {
  const node = await rawNode();
  const gw = await startGateway({ keys, backends: [{ name: 'raw', url: node.v1, models: [
    { name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 },
    { name: 'alias', upstream: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }] });
  const text = '{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,' +
    '"seed":12345678901234567890,"vendor":{"ids":[-99999999999999999999,18446744073709551616],' +
    '"small":9223372036854775807}}';
  const same = await chat(gw, text);
  assert.equal(same.status, 200, same.text);
  assert.equal(node.seen.at(-1).text, text, 'sent on byte for byte');

  // Renamed for the backend: rewritten, the digits kept.
  const renamed = await chat(gw, text.replace('"model":"m"', '"model":"alias"'));
  assert.equal(renamed.status, 200, renamed.text);
  const sent = node.seen.at(-1).text;
  assert.match(sent, /"model":"m"/);
  for (const n of ['"seed":12345678901234567890', '-99999999999999999999', '18446744073709551616',
    '"small":9223372036854775807'])
    assert.ok(sent.includes(n), `${n} in ${sent}`);

  // A field the gateway reads still has to be one it can use.
  const huge = await chat(gw, '{"model":"m","messages":[{"role":"user","content":"hi"}],' +
    '"max_tokens":99999999999999999999}');
  assert.equal(huge.status, 400, huge.text);
  assert.notEqual(huge.json.error.code, 'invalid_json');
  assert.equal(huge.json.error.param, 'max_tokens');
  // The marker the gateway uses for them is not a string a caller may send with them.
  const forged = await chat(gw, '{"model":"m","messages":[{"role":"user","content":' +
    '"\\u0000tollgate-bignum:1"}],"seed":12345678901234567890}');
  assert.equal(forged.status, 400, forged.text);
  // A NUL in a string is refused with a big integer beside it as without one (the fuzzer's
  // find: a NUL string beside a big integer was taken, and could not be read back).
  const calls = node.seen.length;
  for (const seed of ['', ',"seed":123456789012345678901234']) {
    const nul = await chat(gw, `{"model":"m"${seed},"messages":[{"role":"user","content":"a\\u0000b"}],` +
      '"user":"?\\u0000tollgate-bignum:u"}');
    assert.equal(nul.status, 400, nul.text);
    assert.equal(nul.json.error.code, 'invalid_json', nul.text);
  }
  assert.equal(node.seen.length, calls, 'nothing reached the node');
});

test('User-Agent (with the gateway\'s as a suffix), OpenAI-Organization and OpenAI-Project reach the node', async () => {
  const node = await rawNode();
  const gw = await startGateway({ keys, backends: [{ name: 'raw', url: node.v1, api_key: 'node-secret',
    models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }] });
  const body = { model: 'm', messages: [{ role: 'user', content: 'hi' }], max_tokens: 4 };
  const res = await chat(gw, body, { 'user-agent': 'my-app/1.2 (linux)', 'openai-organization': 'org-abc',
    'openai-project': 'proj_123' });
  assert.equal(res.status, 200, res.text);
  const { headers, raw } = node.seen.at(-1);
  assert.equal(headers['user-agent'], `my-app/1.2 (linux) tollgate/${VERSION}`);
  assert.equal(raw.filter((h, i) => i % 2 === 0 && h.toLowerCase() === 'user-agent').length, 1,
    'one User-Agent header');
  assert.equal(headers['openai-organization'], 'org-abc');
  assert.equal(headers['openai-project'], 'proj_123');
  assert.equal(headers.authorization, 'Bearer node-secret', 'the backend\'s own key, never the caller\'s');
  assert.equal(headers['content-type'], 'application/json');

  const bare = await post(gw.v1 + '/chat/completions', body, { key: KEY, headers: { 'user-agent': '' } });
  assert.equal(bare.status, 200, bare.text);
  assert.equal(node.seen.at(-1).headers['user-agent'], `tollgate/${VERSION}`);
  assert.equal(node.seen.at(-1).headers['openai-organization'], undefined);
});

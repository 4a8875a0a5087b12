// Backends over https (libcurl's GnuTLS build): a node whose certificate is signed by a
// private CA is reached with `ca_file`, refused without it or with another CA's bundle, and a
// connection verified with one backend's CA is never used for a backend that lacks it.
// The CAs and the node's certificate are made with the openssl command for each run; the
// node is Node's https server.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import https from 'node:https';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  startGateway, cleanup, post, streamPost, parseEvents, runTollgate, writeTempFile, makeTempDir,
} from '../lib/harness.mjs';

let dir;
let node;
const seen = []; // {method, url, model, auth} per request the node received

function openssl(...args) {
  execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
}

// A CA (ca-NAME.crt) and, when it signs, a certificate for 127.0.0.1 (srv.crt, srv.key).
function makeCa(name) {
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', `/CN=Tollgate test CA ${name}`,
    '-keyout', `ca-${name}.key`, '-out', `ca-${name}.crt`);
}

function answer(res, status, body, type = 'application/json') {
  res.writeHead(status, { 'content-type': type });
  res.end(typeof body === 'string' ? body : JSON.stringify(body));
}

function nodeHandler(req, res) {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => {
    let body = {};
    try { body = chunks.length ? JSON.parse(Buffer.concat(chunks)) : {}; } catch { /* not JSON */ }
    seen.push({ method: req.method, url: req.url, model: body.model, auth: req.headers.authorization });
    if (req.method === 'GET' && req.url === '/v1/models') {
      return answer(res, 200, { object: 'list', data: [{ id: 'a', object: 'model' }, { id: 'b', object: 'model' }] });
    }
    if (req.method !== 'POST' || req.url !== '/v1/chat/completions') return answer(res, 404, { error: { message: 'no' } });
    const base = { id: 'chatcmpl-tls', created: 1700000000, model: body.model };
    if (!body.stream) {
      return answer(res, 200, {
        ...base, object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content: 'over tls' }, finish_reason: 'stop' }],
        usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 },
      });
    }
    const ev = (o) => `data: ${JSON.stringify({ ...base, object: 'chat.completion.chunk', ...o })}\n\n`;
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    res.write(ev({ choices: [{ index: 0, delta: { role: 'assistant', content: 'over ' }, finish_reason: null }] }));
    res.write(ev({ choices: [{ index: 0, delta: { content: 'tls' }, finish_reason: 'stop' }] }));
    res.write(ev({ choices: [], usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 } }));
    res.end('data: [DONE]\n\n');
  });
}

before(async () => {
  dir = await makeTempDir('tollgate-tls-');
  makeCa('one');
  makeCa('other');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', 'srv.key', '-out', 'srv.csr');
  await fsp.writeFile(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'srv.csr', '-CA', 'ca-one.crt', '-CAkey', 'ca-one.key', '-CAcreateserial',
    '-days', '2', '-extfile', 'ext.cnf', '-out', 'srv.crt');
  node = https.createServer({
    key: await fsp.readFile(path.join(dir, 'srv.key')),
    cert: await fsp.readFile(path.join(dir, 'srv.crt')),
  }, nodeHandler);
  await new Promise((resolve) => node.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  node?.closeAllConnections();
  await new Promise((resolve) => (node ? node.close(resolve) : resolve()));
  await cleanup();
});

const url = () => `https://127.0.0.1:${node.address().port}/v1`;
const models = (name) => [{ name, input_usd_per_mtok: 1, output_usd_per_mtok: 1 }];
const chat = (gw, model, extra = {}) => post(gw.v1 + '/chat/completions',
  { model, messages: [{ role: 'user', content: 'hi' }], ...extra });
// Probes rarely, so a backend refused by its probe is not ejected before its request is made.
const quietHealth = { interval_ms: 3600000 };

describe('https backends', () => {
  test('a node signed by the backend\'s ca_file answers, with the backend\'s api_key sent over TLS', async () => {
    const gw = await startGateway({
      health: quietHealth,
      backends: [{ name: 'tls', url: url(), api_key: 'node-secret', ca_file: path.join(dir, 'ca-one.crt'), models: models('a') }],
    });
    const from = seen.length;
    const r = await chat(gw, 'a');
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.choices[0].message.content, 'over tls');
    assert.equal(r.headers.get('x-tollgate-backend'), 'tls');
    const calls = seen.slice(from).filter((s) => s.method === 'POST');
    assert.equal(calls.length, 1);
    assert.equal(calls[0].auth, 'Bearer node-secret');
  });

  test('streams are relayed over TLS event by event, ending in [DONE]', async () => {
    const gw = await startGateway({
      health: quietHealth,
      backends: [{ name: 'tls', url: url(), ca_file: path.join(dir, 'ca-one.crt'), models: models('a') }],
    });
    const r = await streamPost(gw.v1 + '/chat/completions', { model: 'a', stream: true, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(r.status, 200, r.raw);
    const events = parseEvents(r.events);
    assert.equal(events.at(-1).data, '[DONE]', r.raw);
    assert.equal(events.map((e) => e.json?.choices?.[0]?.delta?.content ?? '').join(''), 'over tls');
  });

  for (const [what, ca] of [['without a ca_file (the system store does not know the CA)', undefined],
    ['with another CA\'s bundle', 'ca-other.crt']]) {
    test(`${what}: the certificate is refused, 502 backend_unreachable, and nothing is sent`, async () => {
      const backend = { name: 'tls', url: url(), models: models('a') };
      if (ca) backend.ca_file = path.join(dir, ca);
      const gw = await startGateway({ health: quietHealth, backends: [backend] });
      const from = seen.length;
      const r = await chat(gw, 'a');
      assert.equal(r.status, 502, r.text);
      assert.equal(r.json.error.code, 'backend_unreachable');
      assert.match(r.json.error.message, /certificate/i);
      assert.equal(seen.slice(from).filter((s) => s.method === 'POST').length, 0, 'no request reached the node');
    });
  }

  test('one worker, two backends on the same node, only one with the CA: neither the CA nor its verified connection carries over', async () => {
    const gw = await startGateway({
      workers: 1,
      health: quietHealth,
      backends: [
        { name: 'with-ca', url: url(), ca_file: path.join(dir, 'ca-one.crt'), models: models('a') },
        { name: 'without', url: url(), models: models('b') },
      ],
    });
    const from = seen.length;
    for (let i = 0; i < 3; i++) {
      const ok = await chat(gw, 'a');
      assert.equal(ok.status, 200, ok.text);
      assert.equal(ok.headers.get('x-tollgate-backend'), 'with-ca');
      const refused = await chat(gw, 'b');
      assert.equal(refused.status, 502, refused.text);
      assert.match(refused.json.error.message, /certificate/i);
    }
    const posts = seen.slice(from).filter((s) => s.method === 'POST');
    assert.deepEqual(posts.map((s) => s.model), ['a', 'a', 'a'], 'only model a ever reached the node');
  });
});

describe('ca_file in the config', () => {
  async function check(backend) {
    const file = await writeTempFile('tollgate.json', JSON.stringify({ listen: '127.0.0.1:1', backends: [backend] }));
    return runTollgate(['-c', file, '--check-config']);
  }

  test('a readable PEM bundle for an https backend passes', async () => {
    const r = await check({ name: 'n', url: url(), ca_file: path.join(dir, 'ca-one.crt'), models: models('a') });
    assert.equal(r.code, 0, r.stderr);
  });

  test('a missing file, a file with no certificate and an http backend are reported with their path', async () => {
    let r = await check({ name: 'n', url: url(), ca_file: path.join(dir, 'nope.crt'), models: models('a') });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /backends\[0\]\.ca_file: cannot read .*nope\.crt/);
    r = await check({ name: 'n', url: url(), ca_file: path.join(dir, 'ext.cnf'), models: models('a') });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /backends\[0\]\.ca_file: .*ext\.cnf holds no PEM certificate/);
    r = await check({ name: 'n', url: 'http://127.0.0.1:9/v1', ca_file: path.join(dir, 'ca-one.crt'), models: models('a') });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /backends\[0\]\.ca_file: applies only to a backend with an https:\/\/ url/);
  });
});

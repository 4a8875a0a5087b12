// The HTTP edges (issue 13, items 4 and 14): an oversized body answered so that Node's fetch
// (what the official SDK uses) sees the 413, and the protocol cases libmicrohttpd lets
// through or answers on its own, answered in OpenAI's error shape where the library lets us.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import net from 'node:net';
import OpenAI from 'openai';
import {
  startMocknode, startGateway, backendFor, cleanup, rawHttp, errorShapeProblems, apiCalls,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-http-edges-key';
const MAX_BODY = 1 << 20;
const HOST = '127.0.0.1';

let gw;
let node;

before(async () => {
  node = await startMocknode({ name: 'edge-node', models: ['m1', 'org/model'], tokens: 2, quiet: true });
  gw = await startGateway({
    max_body_bytes: MAX_BODY,
    keys: [{ name: 'k', key: KEY }],
    backends: [backendFor(node)],
  });
});

function expectError(res, status, code) {
  const ctx = `${res.status} ${res.text}`;
  assert.equal(res.status, status, ctx);
  assert.match(res.headers['content-type'] ?? res.headers.get?.('content-type') ?? '', /application\/json/, ctx);
  assert.deepEqual(errorShapeProblems(res.json), [], ctx);
  if (code) assert.equal(res.json.error.code, code, ctx);
}

// Sends raw bytes; resolves with everything the gateway sent until it closed the connection.
function rawExchange(data, { timeoutMs = 5000 } = {}) {
  return new Promise((resolve, reject) => {
    const s = net.connect(gw.port, HOST);
    let buf = '';
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no close within ${timeoutMs} ms; got ${JSON.stringify(buf.slice(0, 300))}`)); }, timeoutMs);
    s.on('connect', () => s.write(data));
    s.on('data', (d) => { buf += d.toString('latin1'); });
    s.on('error', () => {});
    s.on('close', () => { clearTimeout(timer); resolve(buf); });
  });
}

describe('an oversized body (lingering close)', () => {
  test("Node's fetch gets the 413, not a connection reset, every time", async () => {
    const body = Buffer.alloc(16 * MAX_BODY, 'a');
    for (let i = 0; i < 3; i++) {
      const res = await fetch(gw.v1 + '/chat/completions', {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        body,
        signal: AbortSignal.timeout(10000),
      });
      const text = await res.text();
      expectError({ status: res.status, headers: res.headers, text, json: JSON.parse(text) }, 413, 'request_too_large');
    }
  });

  test('the official SDK reports the 413 (no "Connection error", no retried upload)', async () => {
    const client = new OpenAI({ baseURL: gw.v1, apiKey: KEY, maxRetries: 2 });
    const before_calls = apiCalls(await node.stats());
    await assert.rejects(
      client.chat.completions.create({ model: 'm1', messages: [{ role: 'user', content: 'a'.repeat(4 * MAX_BODY) }] }),
      (err) => {
        assert.equal(err.status, 413, `${err.constructor.name}: ${err.message}`);
        assert.equal(err.code, 'request_too_large');
        return true;
      });
    assert.equal(apiCalls(await node.stats()), before_calls);
  });

  test('a chunked body (no Content-Length) over the limit is read to its end and answered 413', async () => {
    const res = await new Promise((resolve, reject) => {
      const req = http.request(gw.v1 + '/chat/completions', {
        method: 'POST', agent: false,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      }, (r) => {
        let text = '';
        r.setEncoding('utf8');
        r.on('data', (d) => { text += d; });
        r.on('end', () => resolve({ status: r.statusCode, headers: r.headers, text, json: JSON.parse(text) }));
      });
      req.on('error', reject);
      const piece = Buffer.alloc(64 * 1024, 'a');
      for (let i = 0; i < 40; i++) req.write(piece); // 2.5 MiB in chunks
      req.end();
    });
    expectError(res, 413, 'request_too_large');
  });
});

describe('HTTP edges answered in OpenAI shape', () => {
  const post = (headers, body = '') => `POST /v1/chat/completions HTTP/1.1\r\nAuthorization: Bearer ${KEY}\r\n${headers}\r\n${body}`;

  test('HTTP/1.1 without Host, or with two, is 400', async () => {
    expectError(await rawHttp(gw.port, 'GET /v1/models HTTP/1.1\r\nAuthorization: Bearer ' + KEY + '\r\n\r\n'), 400, 'invalid_http_request');
    expectError(await rawHttp(gw.port, `GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: b\r\nAuthorization: Bearer ${KEY}\r\n\r\n`), 400, 'invalid_http_request');
    // HTTP/1.0 needs none.
    assert.equal((await rawHttp(gw.port, 'GET /healthz HTTP/1.0\r\n\r\n')).status, 200);
  });

  test('two Content-Length headers are refused, whichever comes first, and the connection closes', async () => {
    const body = JSON.stringify({ model: 'm1', messages: [{ role: 'user', content: 'hi' }] });
    for (const [a, b] of [[body.length, 5], [5, body.length], [body.length, body.length]]) {
      const out = await rawExchange(post(`Host: ${HOST}\r\nContent-Type: application/json\r\nContent-Length: ${a}\r\nContent-Length: ${b}\r\n`, body));
      assert.match(out, /^HTTP\/1\.1 400 /, out);
      assert.equal(out.match(/HTTP\/1\.1 /g).length, 1, 'one answer');
      assert.match(out, /"code":"invalid_http_request"/);
    }
  });

  test('Transfer-Encoding with Content-Length is 400; a transfer coding other than chunked is 501 at once', async () => {
    expectError(await rawHttp(gw.port, post(`Host: ${HOST}\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n`, '0\r\n\r\n')), 400, 'invalid_http_request');
    for (const te of ['gzip', 'gzip, chunked', 'identity']) {
      const t0 = Date.now();
      const res = await rawHttp(gw.port, post(`Host: ${HOST}\r\nTransfer-Encoding: ${te}\r\n`), { timeoutMs: 3000 });
      expectError(res, 501, 'unsupported_transfer_encoding');
      assert.ok(Date.now() - t0 < 3000);
    }
  });

  test('a header name with whitespace in it is 400 (not a header the gateway would ignore)', async () => {
    expectError(await rawHttp(gw.port, post(`Host: ${HOST}\r\nContent-Length : 5\r\n`, '{"a":')), 400, 'invalid_http_request');
  });

  test('a method that is not a token is 400, and the log line stays JSON', async () => {
    expectError(await rawHttp(gw.port, `GE"T /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`), 400, 'invalid_http_request');
    const bad = gw.logs.stdout.filter((l) => l.includes('"event":"request"') && !(() => { try { JSON.parse(l); return true; } catch { return false; } })());
    assert.deepEqual(bad, []);
  });

  test('%2F and %00 are not decoded before the route is matched', async () => {
    const get = (path) => rawHttp(gw.port, `GET ${path} HTTP/1.1\r\nHost: ${HOST}\r\nAuthorization: Bearer ${KEY}\r\nConnection: close\r\n\r\n`);
    // "/v1/models%2Fm1" is no route (it used to be /v1/models/{id} with id "m1").
    expectError(await get('/v1/models%2Fm1'), 404, 'unknown_url');
    expectError(await get('/v1%2Fmodels'), 404, 'unknown_url');
    expectError(await get('/v1/model%73/m1'), 404, 'unknown_url');
    // An encoded NUL is refused rather than cutting the id short.
    expectError(await get('/v1/models/m1%00junk'), 400, 'invalid_url');
    // A model id is decoded after the route matched: the SDK sends "org%2Fmodel".
    const res = await get('/v1/models/org%2Fmodel');
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.id, 'org/model');
    const client = new OpenAI({ baseURL: gw.v1, apiKey: KEY, maxRetries: 0 });
    assert.equal((await client.models.retrieve('org/model')).id, 'org/model');
  });

  test('what libmicrohttpd still answers itself keeps its status and closes the connection', async () => {
    // README "HTTP edges": these never reach the gateway's handler.
    const bad_cl = await rawExchange(post(`Host: ${HOST}\r\nContent-Length: abc\r\n`));
    assert.match(bad_cl, /^HTTP\/1\.1 400 /);
    const v2 = await rawExchange(`GET /healthz HTTP/2.0\r\nHost: ${HOST}\r\n\r\n`);
    assert.match(v2, /^HTTP\/1\.1 505 /);
    const no_colon = await rawExchange(`GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nNoColonHere\r\n\r\n`);
    assert.match(no_colon, /^HTTP\/1\.1 400 /);
    const huge = await rawExchange(`GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\nX-Big: ${'a'.repeat(40000)}\r\n\r\n`);
    assert.match(huge, /^HTTP\/1\.1 431 /);
  });
});

// Self-checks of the soak's pure parts (node --test tools/soak/): the classification of
// answers, the ledger comparison, the fd census's stable part, the report's verdicts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { once } from 'node:events';

import { classify, makeRequest, sseEvents, bodyProblem, rng, kindPicker, KINDS, sendRequest } from './load.mjs';
import { compareLedger } from './ledger.mjs';
import { stableKinds, fdCensus, memStatus } from './procstat.mjs';
import { verdicts } from './report.mjs';

const ctx = { keys: { static: 'sk-s', redis: 'tg-r', rpm: 'tg-rpm', budget: 'tg-b' }, model: 'llama', embed_model: 'embed', seq: 1 };
const never = () => null;
const out = (o) => ({ status: 200, headers: {}, text: '', error: null, timed_out: false, aborted_by_us: false, t0: 0, t1: 1, ...o });
const chatBody = JSON.stringify({ choices: [{ message: { content: 'hi' } }], usage: { prompt_tokens: 3 } });
const stream = (events) => events.map((e) => `data: ${e}\n\n`).join('');

function req(kind, fix = {}) {
    return { ...makeRequest(kind, rng(3), ctx), ...fix };
}

test('a whole chat with content and usage is ok, one without is unexpected', () => {
    const r = req('chat');
    assert.deepEqual(classify(r, out({ text: chatBody }), never), { cls: 'ok', reason: null, auth: 'yes' });
    const v = classify(r, out({ text: '{"choices":[]}' }), never);
    assert.equal(v.cls, 'unexpected');
    assert.match(v.reason, /choices\[0\]\.message\.content/);
});

test('a stream needs chunks and [DONE]; an error event is unexpected unless its node was faulted', () => {
    const r = req('chat_stream');
    const ct = { 'content-type': 'text/event-stream', 'x-tollgate-backend': 'node-b' };
    const good = stream(['{"choices":[{"delta":{"content":"a"}}]}', '[DONE]']);
    assert.equal(classify(r, out({ headers: ct, text: good }), never).cls, 'ok');
    const broken = stream(['{"choices":[{"delta":{"content":"a"}}]}', '{"error":{"code":"backend_stream_error","message":"x"}}']);
    assert.equal(classify(r, out({ headers: ct, text: broken }), never).cls, 'unexpected');
    const faulted = (t0, t1, backend) => (backend === 'node-b' ? 'node-b killed' : null);
    const v = classify(r, out({ headers: ct, text: broken }), faulted);
    assert.equal(v.cls, 'expected');
    assert.match(v.reason, /node-b killed/);
    // A fault on another node does not excuse it.
    const other = (t0, t1, backend) => (backend === 'node-a' ? 'node-a killed' : null);
    assert.equal(classify(r, out({ headers: ct, text: broken }), other).cls, 'unexpected');
    assert.equal(bodyProblem(r, stream(['{"choices":[]}']), 'text/event-stream'), 'stream without [DONE]');
    assert.deepEqual(sseEvents('data: a\n\n: comment\n\ndata: b\ndata: c\n\n'), ['a', 'b\nc']);
});

test('5xx only while a node is faulted; 401 for a valid key is unexpected and not authenticated', () => {
    const r = req('chat');
    const e502 = out({ status: 502, text: '{"error":{"code":"backend_unreachable"}}' });
    assert.equal(classify(r, e502, never).cls, 'unexpected');
    assert.equal(classify(r, e502, () => 'node-a 500').cls, 'expected');
    const v = classify(r, out({ status: 401, text: '{"error":{"code":"invalid_api_key"}}' }), () => 'node-a 500');
    assert.equal(v.cls, 'unexpected');
    assert.equal(v.auth, 'no');
    assert.match(v.reason, /for a valid key/);
});

test('503 key_store_unavailable: not authenticated; expected for an unknown key only while Redis is away', () => {
    const ksu = out({ status: 503, headers: { 'retry-after': '1' }, text: '{"error":{"code":"key_store_unavailable"}}' });
    const away = () => true;
    const v = classify(req('bad_key'), ksu, never, away);
    assert.deepEqual([v.cls, v.auth], ['expected', 'no']);
    assert.equal(classify(req('bad_key'), ksu, never, () => false).cls, 'unexpected');
    const valid = classify(req('chat'), ksu, never, away);
    assert.deepEqual([valid.cls, valid.auth], ['unexpected', 'no'], 'a cached valid key must keep working');
    const bare = out({ status: 503, text: '{"error":{"code":"key_store_unavailable"}}' });
    assert.match(classify(req('bad_key'), bare, never, away).reason, /without retry-after/);
});

test('asked-for errors are expected with the right status and code; 429 is ok only for the limited keys', () => {
    assert.equal(classify(req('bad_json'), out({ status: 400, text: '{"error":{"code":"invalid_json"}}' }), never).cls, 'expected');
    assert.equal(classify(req('bad_json'), out({ status: 200, text: chatBody }), never).cls, 'unexpected');
    const bad_key = classify(req('bad_key'), out({ status: 401, text: '{"error":{"code":"invalid_api_key"}}' }), never);
    assert.deepEqual([bad_key.cls, bad_key.auth], ['expected', 'no']);
    const bad_model = classify(req('bad_model'), out({ status: 404, text: '{"error":{"code":"model_not_found"}}' }), never);
    assert.deepEqual([bad_model.cls, bad_model.auth], ['expected', 'yes']);
    const lim = out({ status: 429, text: '{"error":{"code":"rate_limit_exceeded"}}' });
    assert.equal(classify(req('rpm_key'), lim, never).cls, 'ok');
    assert.equal(classify(req('chat'), lim, never).cls, 'unexpected');
    assert.equal(classify(req('budget_key'), lim, never).cls, 'unexpected', 'a budget key wants insufficient_quota');
});

test('timeouts and connection errors of a valid key leave its ledger fate unknown', () => {
    assert.deepEqual(classify(req('chat'), out({ status: 0, timed_out: true, error: 'timeout' }), never).auth, 'unknown');
    const v = classify(req('chat'), out({ status: 0, error: 'ECONNRESET' }), never);
    assert.deepEqual([v.cls, v.auth], ['unexpected', 'unknown']);
    assert.equal(classify(req('no_key'), out({ status: 0, error: 'ECONNRESET' }), never).auth, 'no');
});

test('the ledger comparison: exact, missing, duplicated, unexplained, and records of abandoned requests', () => {
    const census = (pairs) => ({ auth: new Map(pairs) });
    const a = new Set(['x-1', 'x-2']);
    assert.equal(compareLedger(a, new Set(), census([['x-1', 1], ['x-2', 1]])).exact, true);
    const c1 = compareLedger(a, new Set(), census([['x-1', 1]]));
    assert.deepEqual([c1.exact, c1.missing, c1.missing_ids], [false, 1, ['x-2']]);
    const c2 = compareLedger(a, new Set(), census([['x-1', 2], ['x-2', 1]]));
    assert.deepEqual([c2.exact, c2.dup, c2.records], [false, 1, 3]);
    const c3 = compareLedger(a, new Set(), census([['x-1', 1], ['x-2', 1], ['x-9', 1]]));
    assert.deepEqual([c3.exact, c3.extra], [false, 1]);
    const c4 = compareLedger(a, new Set(['x-3', 'x-4']), census([['x-1', 1], ['x-2', 1], ['x-3', 1]]));
    assert.deepEqual([c4.exact, c4.of_unknown, c4.records], [true, 1, 3]);
});

test('the stable fd census leaves out client and pooled upstream connections only', () => {
    const kinds = { file: 5, 'tcp:client:ESTABLISHED': 9, 'tcp:node-a:ESTABLISHED': 4, 'tcp:node-a:CLOSE_WAIT': 1, 'tcp:redis:ESTABLISHED': 4 };
    assert.deepEqual(stableKinds(kinds, ['node-a']), { file: 5, 'tcp:node-a:CLOSE_WAIT': 1, 'tcp:redis:ESTABLISHED': 4 });
});

test('the census of this process names a listener and a client connection', async () => {
    const srv = http.createServer((q, s) => s.end('x'));
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    const port = srv.address().port;
    const agent = new http.Agent({ keepAlive: true });
    const o = await sendRequest({ kind: 'models', method: 'GET', path: '/' }, { host: '127.0.0.1', port, agent, timeoutMs: 2000, id: 't-1' });
    assert.equal(o.status, 200);
    const c = fdCensus(process.pid, { listen_ports: [port], peers: { me: port } });
    assert.ok(c.kinds['tcp:listen'] >= 1, JSON.stringify(c.kinds));
    assert.ok(c.kinds['tcp:client:ESTABLISHED'] >= 1, JSON.stringify(c.kinds));
    assert.ok(c.kinds['tcp:me:ESTABLISHED'] >= 1, JSON.stringify(c.kinds));
    assert.ok(memStatus(process.pid).rss_kb > 1000);
    agent.destroy();
    srv.close();
});

test('the mix draws every kind and the verdicts say why', () => {
    const pick = kindPicker(rng(1));
    const seen = new Set(Array.from({ length: 5000 }, pick));
    assert.deepEqual([...seen].sort(), Object.keys(KINDS).sort());
    const v = verdicts({
        rss: { end_kb: 1120, warm_kb: 1000 },
        fds: { stable_equal: true, start: { total: 50 }, end: { total: 52 }, start_stable: 30, end_stable: 30 },
        ledger: { cmp: { exact: true, records: 10, answered: 10, of_unknown: 0, missing: 0, dup: 0, extra: 0 }, dropped: 0, total: 12 },
        classes: { unexpected: 0, timeout: 0 },
        exit: { code: 0, records_after: 12 },
    });
    assert.deepEqual(v.map((x) => [x.name, x.pass]), [['RSS flat', false], ['fds equal', true], ['ledger exact', true],
        ['no unexpected answer', true], ['no timeout', true], ['graceful stop', true]]);
});

// Failover and backend health (the "routing" issue):
// - a try that fails before the caller got a byte (connect error, timeout, 5xx, garbage,
//   truncation, 429) moves on to the next cheapest healthy backend, within
//   routing.retries and routing.deadline_ms; a stream that already started is never
//   failed over: it ends with a backend_stream_error event;
// - health.eject_after_failures consecutive failures eject a node for health.cooldown_ms
//   (doubling on repeats, capped by max_cooldown_ms); meanwhile requests only it could
//   serve get 503 no_healthy_backend with retry-after;
// - probes (GET {url}/models every health.interval_ms) readmit at once a node ejected for
//   being unreachable; a node ejected for 5xx comes back when its cooldown ends;
// - a 429 takes the node out for its retry-after;
// - client-caused 4xx answers never count against a node.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, errorShapeProblems,
  mockText, chatCalls, apiCalls, adminListener, waitFor, freePort, startRawBackend, chunk,
} from '../lib/harness.mjs';
import { setTimeout as sleep } from 'node:timers/promises';

after(cleanup);

const KEY = 'sk-failover-tests';
const keys = [{ name: 'failover', key: KEY }];

const user = (content) => [{ role: 'user', content }];
const chat = (gw, body, headers = {}) => post(gw.v1 + '/chat/completions', body, { key: KEY, headers, timeoutMs: 20000 });
const chatStream = (gw, body, opts = {}) => streamPost(gw.v1 + '/chat/completions', { ...body, stream: true },
  { key: KEY, timeoutMs: 20000, ...opts });

function expectError(res, status, { code, param, type } = {}) {
  const ctx = `${res.status} ${res.text}`;
  assert.equal(res.status, status, ctx);
  assert.deepEqual(errorShapeProblems(res.json), [], ctx);
  if (code !== undefined) assert.equal(res.json.error.code, code, ctx);
  if (param !== undefined) assert.equal(res.json.error.param, param, ctx);
  if (type !== undefined) assert.equal(res.json.error.type, type, ctx);
}

function assertCompleteStream(r, backend, text) {
  assert.equal(r.status, 200, r.raw);
  assert.equal(r.headers['x-tollgate-backend'], backend);
  assert.equal(r.ended, 'end', 'the chunked body ended properly');
  const parsed = parseEvents(r.events);
  assert.deepEqual(parsed.filter((p) => p.bad).map((p) => p.data), [], 'every event is JSON or [DONE]');
  assert.equal(parsed.at(-1).data, '[DONE]', `the stream ends with [DONE]: ${r.raw}`);
  assert.ok(!parsed.some((p) => p.json?.error), `no error event: ${r.raw}`);
  const got = parsed.map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');
  assert.equal(got, text);
}

// A stream that broke after it started: 200, relayed events, one backend_stream_error event,
// a proper end of the chunked body, no [DONE].
function assertBrokenStream(r, backend) {
  assert.equal(r.status, 200, r.raw);
  assert.equal(r.headers['x-tollgate-backend'], backend);
  assert.equal(r.ended, 'end', `the gateway must finish the chunked body properly; raw: ${JSON.stringify(r.raw)}`);
  const parsed = parseEvents(r.events);
  assert.ok(!parsed.some((p) => p.done), `no [DONE] after a broken stream: ${r.raw}`);
  const last = parsed.at(-1);
  assert.ok(last?.json?.error, `the last event is an error: ${last?.data}`);
  assert.deepEqual(errorShapeProblems(last.json), [], last.data);
  assert.equal(last.json.error.code, 'backend_stream_error');
  assert.equal(last.json.error.type, 'api_error');
  assert.match(r.raw, /(^|\n)data: \{"error":/, 'the error is a data: {"error":...} event');
  return parsed;
}

test('each way a cheapest node can fail before the first byte fails over to the next cheapest', async () => {
  const faults = { f500: '500', fjson: 'invalid-json', fhang: 'hang', ftrunc: 'close-mid-stream' };
  const bad = {};
  await Promise.all(Object.entries(faults).map(async ([model, fault]) => {
    bad[model] = await startMocknode({ name: `bad-${model}`, models: [model], fault, tokens: 6, quiet: true });
  }));
  const good = await startMocknode({ name: 'fo-good', models: [...Object.keys(faults), 'fdead'], tokens: 3, quiet: true });
  const deadPort = await freePort(); // nothing listens there
  const gw = await startGateway({
    keys,
    upstream: { connect_timeout_ms: 1000, first_byte_timeout_ms: 400 },
    backends: [
      ...Object.entries(bad).map(([model, n]) => backendFor(n, { models: [model], prices: [0.1, 0.1] })),
      { name: 'fo-dead', url: `http://127.0.0.1:${deadPort}/v1`,
        models: [{ name: 'fdead', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.1 }] },
      backendFor(good, { prices: [1, 1] }),
    ],
  });
  for (const model of [...Object.keys(faults), 'fdead']) {
    const r = await chat(gw, { model, messages: user('x') });
    assert.equal(r.status, 200, `${model}: ${r.status} ${r.text}`);
    assert.equal(r.headers.get('x-tollgate-backend'), 'fo-good', model);
    assert.equal(r.json.choices[0].message.content, mockText('fo-good', 3), model);
    if (bad[model]) assert.equal(apiCalls(await bad[model].stats()), 1, `${model}: the cheaper node was tried first`);
  }
  // Streams fail over too, as long as nothing reached the caller yet: a 5xx, a hang past
  // first_byte_timeout_ms, a first event that is not JSON, a refused connection.
  for (const model of ['f500', 'fhang', 'fjson', 'fdead']) {
    const r = await chatStream(gw, { model, messages: user('x') });
    assertCompleteStream(r, 'fo-good', mockText('fo-good', 3));
    if (bad[model]) assert.equal(apiCalls(await bad[model].stats()), 2, `${model}: the cheaper node was tried first`);
  }
  assert.equal(apiCalls(await good.stats()), 9);
});

test('routing.deadline_ms: no new try starts after the deadline', async () => {
  const [hang, good] = await Promise.all([
    startMocknode({ name: 'dl-hang', models: ['m'], fault: 'hang', quiet: true }),
    startMocknode({ name: 'dl-good', models: ['m'], tokens: 1, quiet: true }),
  ]);
  const backends = [backendFor(hang, { prices: [0.1, 0.1] }), backendFor(good, { prices: [1, 1] })];
  const upstream = { first_byte_timeout_ms: 400 };
  const late = await startGateway({ keys, upstream, routing: { deadline_ms: 200 }, backends });
  const r = await chat(late, { model: 'm', messages: user('x') });
  expectError(r, 504, { code: 'backend_timeout', type: 'api_error' });
  assert.match(r.json.error.message, /dl-hang/);
  assert.equal(chatCalls(await good.stats()), 0, 'the deadline had passed: no second try');

  const roomy = await startGateway({ keys, upstream, routing: { deadline_ms: 5000 }, backends });
  const ok = await chat(roomy, { model: 'm', messages: user('x') });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.headers.get('x-tollgate-backend'), 'dl-good');
});

test('a node answering 500 is ejected after 3 failures, and readmitted after its cooldown', async () => {
  const [sick, well] = await Promise.all([
    startMocknode({ name: 'ej-sick', models: ['m', 'only-sick'], fault: '500', tokens: 2, quiet: true }),
    startMocknode({ name: 'ej-well', models: ['m'], tokens: 2, quiet: true }),
  ]);
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { interval_ms: 200, cooldown_ms: 1000, max_cooldown_ms: 10000 },
    backends: [backendFor(sick, { prices: [0.5, 0.5] }), backendFor(well, { prices: [1, 1] })],
  });
  const sickCalls = async () => chatCalls(await sick.stats());
  const serve = async (tag) => {
    const r = await chat(gw, { model: 'm', messages: user(tag) });
    assert.equal(r.status, 200, `${tag}: ${r.status} ${r.text}`);
    return r.headers.get('x-tollgate-backend');
  };

  // Three failures in a row (each request still succeeds on the other node).
  for (let i = 0; i < 3; i++) assert.equal(await serve(`f${i}`), 'ej-well');
  assert.equal(await sickCalls(), 3);
  const ejected = await admin.backend('ej-sick');
  assert.equal(ejected.health, 'ejected', JSON.stringify(ejected));
  assert.equal(ejected.ejections, 1);
  assert.equal(ejected.failures, 3);
  assert.ok(ejected.ejected_for_ms > 0 && ejected.ejected_for_ms <= 1000, `ejected_for_ms ${ejected.ejected_for_ms}`);
  assert.equal((await admin.backend('ej-well')).health, 'up');

  // Ejected: not asked at all, although its probes (GET /models, every 200 ms) answer fine:
  // a node ejected for 5xx waits out its cooldown.
  await sleep(500);
  assert.equal((await admin.backend('ej-sick')).health, 'ejected', 'a good probe does not readmit a 5xx ejection');
  for (let i = 0; i < 3; i++) assert.equal(await serve(`e${i}`), 'ej-well');
  assert.equal(await sickCalls(), 3);
  // A model only the ejected node serves: 503 no_healthy_backend with retry-after.
  const only = await chat(gw, { model: 'only-sick', messages: user('x') });
  expectError(only, 503, { code: 'no_healthy_backend', type: 'api_error' });
  const ra = Number(only.headers.get('retry-after'));
  assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 2, `retry-after ${only.headers.get('retry-after')}`);
  assert.equal(await sickCalls(), 3);

  // Cooldown over, still failing: one more failure re-ejects it at once, for twice as long.
  await waitFor(async () => (await admin.backend('ej-sick')).health === 'up',
    { timeoutMs: 5000, intervalMs: 50, what: 'the 1000 ms cooldown to end' });
  assert.equal(await serve('trial'), 'ej-well');
  assert.equal(await sickCalls(), 4, 'back on trial, the node was tried');
  const again = await admin.backend('ej-sick');
  assert.equal(again.health, 'ejected', JSON.stringify(again));
  assert.equal(again.ejections, 2);
  assert.ok(again.ejected_for_ms > 1000 && again.ejected_for_ms <= 2000,
    `the second cooldown doubles to 2000 ms; ejected_for_ms ${again.ejected_for_ms}`);

  // Recovered: it serves again once the cooldown ends.
  await sick.setConfig({ fault: 'none' });
  await waitFor(async () => (await serve('back')) === 'ej-sick',
    { timeoutMs: 8000, intervalMs: 100, what: 'the recovered node to serve again' });
  const back = await admin.backend('ej-sick');
  assert.equal(back.health, 'up');
  assert.equal(back.consecutive_failures, 0);
  const r = await chat(gw, { model: 'only-sick', messages: user('x') });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.choices[0].message.content, mockText('ej-sick', 2));
});

test('health.max_cooldown_ms caps the growing cooldown; eject_after_failures is configurable', async () => {
  const sick = await startMocknode({ name: 'cap-sick', models: ['m'], fault: '500', quiet: true });
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { eject_after_failures: 1, cooldown_ms: 1000, max_cooldown_ms: 1500 },
    backends: [backendFor(sick)],
  });
  const r = await chat(gw, { model: 'm', messages: user('x') });
  expectError(r, 502, { code: 'bad_backend_response' });
  const first = await admin.backend('cap-sick');
  assert.equal(first.health, 'ejected', 'one failure is enough with eject_after_failures 1');
  assert.ok(first.ejected_for_ms > 0 && first.ejected_for_ms <= 1000, `ejected_for_ms ${first.ejected_for_ms}`);
  await waitFor(async () => (await admin.backend('cap-sick')).health === 'up',
    { timeoutMs: 5000, intervalMs: 25, what: 'the first cooldown to end' });
  expectError(await chat(gw, { model: 'm', messages: user('x') }), 502, { code: 'bad_backend_response' });
  const second = await admin.backend('cap-sick');
  assert.equal(second.ejections, 2);
  assert.ok(second.ejected_for_ms > 1000 && second.ejected_for_ms <= 1500,
    `doubled to 2000 ms, capped at 1500; ejected_for_ms ${second.ejected_for_ms}`);
});

test('a node ejected for connect errors is readmitted by its first good probe, before its cooldown', async () => {
  const port = await freePort(); // nothing listens there yet
  const well = await startMocknode({ name: 'late-well', models: ['m'], tokens: 1, quiet: true });
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { interval_ms: 200, cooldown_ms: 30000 },
    backends: [
      { name: 'late', url: `http://127.0.0.1:${port}/v1`, models: [{ name: 'm', input_usd_per_mtok: 0.5, output_usd_per_mtok: 0.5 }] },
      backendFor(well, { prices: [1, 1] }),
    ],
  });
  for (let i = 0; i < 3; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`x${i}`) });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-tollgate-backend'), 'late-well');
  }
  const out = await admin.backend('late');
  assert.ok(['ejected', 'down'].includes(out.health), JSON.stringify(out));
  assert.ok(out.ejections >= 1 || out.probe_ok === false, JSON.stringify(out));

  const late = await startMocknode({ name: 'late', models: ['m'], tokens: 1, quiet: true, port });
  await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('poll') });
    return r.headers.get('x-tollgate-backend') === 'late';
  }, { timeoutMs: 5000, intervalMs: 50, what: 'the node to be readmitted by a good probe (its cooldown is 30 s)' });
  assert.ok(chatCalls(await late.stats()) >= 1);
  assert.ok((await late.stats()).by_path['/v1/models'] >= 1, 'the gateway probes GET {url}/models');
  const back = await admin.backend('late');
  assert.equal(back.health, 'up');
  assert.equal(back.probe_ok, true);
});

test('a node that accepts connections but never answers is not readmitted by its good probes', async () => {
  // Timeouts after connecting are not connect errors: the node's GET /models answering says
  // nothing about its inference, so it waits out its cooldown like a 5xx node.
  const [hang, well] = await Promise.all([
    startMocknode({ name: 'to-hang', models: ['m'], fault: 'hang', quiet: true }),
    startMocknode({ name: 'to-well', models: ['m'], tokens: 1, quiet: true }),
  ]);
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    upstream: { first_byte_timeout_ms: 300 },
    health: { interval_ms: 100, cooldown_ms: 5000 },
    backends: [backendFor(hang, { prices: [0.5, 0.5] }), backendFor(well, { prices: [1, 1] })],
  });
  for (let i = 0; i < 3; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`t${i}`) });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-tollgate-backend'), 'to-well');
  }
  assert.equal(chatCalls(await hang.stats()), 3);
  assert.equal((await admin.backend('to-hang')).health, 'ejected');
  await sleep(500); // several good probes of the hanging node
  const view = await admin.backend('to-hang');
  assert.equal(view.probe_ok, true, 'its probes do answer');
  const slow = [];
  for (let i = 0; i < 3; i++) {
    const t0 = performance.now();
    const r = await chat(gw, { model: 'm', messages: user(`a${i}`) });
    assert.equal(r.status, 200, r.text);
    slow.push(Math.round(performance.now() - t0));
  }
  assert.equal(chatCalls(await hang.stats()), 3,
    `the hanging node was tried again within its 5 s cooldown (admin after probes: health ${view.health}, ` +
    `ejected_for_ms ${view.ejected_for_ms}); request times ${slow.join(', ')} ms`);
});

test('a 429 takes the node out for its retry-after; requests go elsewhere meanwhile', async () => {
  const [limited, other] = await Promise.all([
    startMocknode({ name: 'rl-node', models: ['m', 'only-rl'], fault: '429', retryAfter: 2, tokens: 2, quiet: true }),
    startMocknode({ name: 'rl-other', models: ['m'], tokens: 2, quiet: true }),
  ]);
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    backends: [backendFor(limited, { prices: [0.5, 0.5] }), backendFor(other, { prices: [1, 1] })],
  });
  const t0 = performance.now();
  const first = await chat(gw, { model: 'm', messages: user('x') });
  assert.equal(first.status, 200, first.text);
  assert.equal(first.headers.get('x-tollgate-backend'), 'rl-other');
  assert.equal(chatCalls(await limited.stats()), 1);
  const view = await admin.backend('rl-node');
  assert.equal(view.health, 'rate_limited', JSON.stringify(view));
  assert.ok(view.ejected_for_ms > 0 && view.ejected_for_ms <= 2000, `ejected_for_ms ${view.ejected_for_ms}`);

  // A model only the paused node serves: 503 with a retry-after within the node's 2 s.
  const only = await chat(gw, { model: 'only-rl', messages: user('x') });
  expectError(only, 503, { type: 'api_error' });
  assert.ok(['no_healthy_backend', 'backend_rate_limited'].includes(only.json.error.code), only.text);
  const ra = Number(only.headers.get('retry-after'));
  assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 2, `retry-after ${only.headers.get('retry-after')}`);

  // The node is fine again, but its retry-after is honoured: traffic returns only after it.
  await limited.setConfig({ fault: 'none' });
  let servedAt = null;
  await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('poll') });
    assert.equal(r.status, 200, r.text);
    if (r.headers.get('x-tollgate-backend') !== 'rl-node') return false;
    servedAt = performance.now() - t0;
    return true;
  }, { timeoutMs: 10000, intervalMs: 100, what: 'the rate-limited node to get traffic again' });
  assert.ok(servedAt >= 1500, `the node got traffic ${servedAt.toFixed(0)} ms after its 429 with retry-after: 2`);
  assert.equal(chatCalls(await limited.stats()), 2, 'not asked while paused');
  assert.equal((await admin.backend('rl-node')).health, 'up');
});

test('an answer served after another node\'s 429 is a normal answer: no retry-after, no x-should-retry', async () => {
  const [limited, other] = await Promise.all([
    startMocknode({ name: 'rl2-node', models: ['m'], fault: '429', retryAfter: 2, quiet: true }),
    startMocknode({ name: 'rl2-other', models: ['m'], tokens: 1, quiet: true }),
  ]);
  const gw = await startGateway({ keys, backends: [backendFor(limited, { prices: [0.5, 0.5] }), backendFor(other, { prices: [1, 1] })] });
  const r = await chat(gw, { model: 'm', messages: user('x') });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get('x-tollgate-backend'), 'rl2-other');
  assert.equal(chatCalls(await limited.stats()), 1, 'the 429 happened');
  assert.equal(r.headers.get('retry-after'), null, 'the 200 answer carries the retry-after of the node that answered 429');
  assert.equal(r.headers.get('x-should-retry'), null);
  const s = await chatStream(gw, { model: 'm', messages: user('x') });
  assertCompleteStream(s, 'rl2-other', mockText('rl2-other', 1));
});

test('a stream cut after it started is not failed over: backend_stream_error event, no [DONE]', async () => {
  // A mocknode in close-mid-stream mode and a scripted TCP backend, each cheaper than a
  // healthy node that must not be asked.
  const [cutter, spare] = await Promise.all([
    startMocknode({ name: 'cut-node', models: ['m'], fault: 'close-mid-stream', tokens: 10, tokenMs: 20, quiet: true }),
    startMocknode({ name: 'cut-spare', models: ['m', 'raw'], tokens: 2, quiet: true }),
  ]);
  const ev = (delta) => `data: ${JSON.stringify({ id: 'chatcmpl-raw', object: 'chat.completion.chunk', created: 1,
    model: 'raw', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
  const raw = await startRawBackend((sock) => {
    sock.write('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n');
    sock.write(chunk(ev({ role: 'assistant', content: '[raw]' })));
    setTimeout(() => sock.write(chunk(ev({ content: ' one' }))), 20);
    setTimeout(() => sock.destroy(), 40);
  });
  const gw = await startGateway({ keys, upstream: { idle_timeout_ms: 5000 }, backends: [
    backendFor(cutter, { prices: [0.1, 0.1] }),
    { name: 'cut-raw', url: raw.v1, models: [{ name: 'raw', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.1 }] },
    backendFor(spare, { models: ['m', 'raw'], prices: [1, 1] }),
  ] });

  const r = await chatStream(gw, { model: 'raw', messages: user('x') });
  const parsed = assertBrokenStream(r, 'cut-raw');
  const text = parsed.map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');
  assert.equal(text, '[raw] one', 'what came before the cut was relayed');

  // The mocknode variant (close-mid-stream: about half the tokens, then the cut).
  const m = await chatStream(gw, { model: 'm', messages: user('x') });
  const mp = assertBrokenStream(m, 'cut-node');
  const mtext = mp.map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');
  assert.ok(mtext.startsWith(mockText('cut-node', 2)), `tokens before the cut: ${mtext}`);

  assert.equal(chatCalls(await spare.stats()), 0, 'a started stream is never sent to another node');
});

test('client-caused 4xx answers never count against a node', async () => {
  const node = await startMocknode({ name: 'c4-node', models: ['m'], tokens: 1, quiet: true });
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { eject_after_failures: 2 },
    backends: [backendFor(node, { models: ['m', { name: 'renamed', upstream: 'not-on-this-node',
      input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] })],
  });
  for (let i = 0; i < 4; i++) {
    // The node does not know the upstream name: its 404 is the caller's answer.
    const r = await chat(gw, { model: 'renamed', messages: user('x') });
    expectError(r, 404, { code: 'model_not_found' });
    // A completions prompt the gateway accepts but the node refuses: its 400.
    const c = await post(gw.v1 + '/completions', { model: 'm', prompt: [{ unexpected: true }] }, { key: KEY });
    expectError(c, 400);
  }
  assert.equal(apiCalls(await node.stats()), 8, 'each request reached the node once (no failover on 4xx)');
  const view = await admin.backend('c4-node');
  assert.equal(view.failures, 0, JSON.stringify(view));
  assert.equal(view.consecutive_failures, 0);
  assert.equal(view.ejections, 0);
  assert.equal(view.health, 'up');
  const ok = await chat(gw, { model: 'm', messages: user('x') });
  assert.equal(ok.status, 200, ok.text);
  assert.equal(ok.headers.get('x-tollgate-backend'), 'c4-node');
});

test('all nodes down -> 503 no_healthy_backend with retry-after', async () => {
  const nodes = await Promise.all([1, 2].map((i) => startMocknode({ name: `down-${i}`, models: ['m'], tokens: 1, quiet: true })));
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config,
    health: { interval_ms: 100, timeout_ms: 200 },
    backends: nodes.map((n, i) => backendFor(n, { prices: [i + 1, i + 1] })),
  });
  const ok = await chat(gw, { model: 'm', messages: user('x') });
  assert.equal(ok.status, 200, ok.text);
  await Promise.all(nodes.map((n) => n.kill('SIGKILL')));

  // Until the gateway knows, a request may still try them (502 backend_unreachable);
  // then it answers 503 no_healthy_backend without trying.
  const seen = [];
  const r = await waitFor(async () => {
    const res = await chat(gw, { model: 'm', messages: user('x') });
    seen.push(`${res.status} ${res.json?.error?.code}`);
    if (res.status === 503) return res;
    assert.equal(res.status, 502, res.text);
    assert.equal(res.json?.error?.code, 'backend_unreachable', res.text);
    return null;
  }, { timeoutMs: 8000, intervalMs: 100, what: '503 once every node is down' });
  expectError(r, 503, { code: 'no_healthy_backend', type: 'api_error' });
  const ra = Number(r.headers.get('retry-after'));
  assert.ok(Number.isInteger(ra) && ra >= 1, `retry-after ${r.headers.get('retry-after')}`);
  const views = await admin.backends();
  for (const v of views) assert.ok(['down', 'ejected'].includes(v.health), JSON.stringify(v));
  // A stream request gets the same plain JSON error.
  const s = await post(gw.v1 + '/chat/completions', { model: 'm', messages: user('x'), stream: true }, { key: KEY });
  expectError(s, 503, { code: 'no_healthy_backend' });
  assert.ok(Number(s.headers.get('retry-after')) >= 1);
});

test('a node SIGKILLed under load: no failed request; restarted on its port, it gets traffic again', async (t) => {
  const nodes = await Promise.all([1, 2, 3].map((i) => startMocknode({
    name: `kill-${i}`, models: ['m'], tokens: 2, ttfbMs: 5, threads: 4, quiet: true,
  })));
  const [victim] = nodes;
  const interval = 300;
  const admin = await adminListener();
  const gw = await startGateway({
    keys, ...admin.config, log_level: 'warn',
    upstream: { connect_timeout_ms: 500 },
    health: { interval_ms: interval, timeout_ms: 250, cooldown_ms: 10000 },
    // Close prices: the victim is cheapest, and all three share the load when it is saturated.
    backends: nodes.map((n, i) => ({ ...backendFor(n, { prices: [1 + i / 10, 1 + i / 10] }), max_inflight: 4 })),
  });

  const failures = [];
  const served = {};
  let sent = 0;
  let stop = false;
  const loop = async (id) => {
    while (!stop) {
      sent++;
      try {
        const r = await chat(gw, { model: 'm', messages: user(`load-${id}`) });
        if (r.status !== 200) failures.push(`${r.status} ${r.text}`);
        else served[r.headers.get('x-tollgate-backend')] = (served[r.headers.get('x-tollgate-backend')] ?? 0) + 1;
      } catch (err) {
        failures.push(`request error: ${err.message}`);
      }
    }
  };
  const loops = Array.from({ length: 8 }, (_, i) => loop(i));
  try {
    await waitFor(async () => (served['kill-1'] ?? 0) >= 20, { timeoutMs: 5000, what: 'the victim to serve under load' });
    await victim.kill('SIGKILL');
    const killedAt = performance.now();
    await sleep(1500); // load goes on without it
    const dead = await admin.backend('kill-1');
    t.diagnostic(`dead node in /admin/backends: ${JSON.stringify(dead)}`);
    assert.notEqual(dead.health, 'up', 'the gateway noticed the dead node');

    const reborn = await startMocknode({ name: 'kill-1', models: ['m'], tokens: 2, ttfbMs: 5, threads: 4, quiet: true,
      port: victim.port });
    const restartedAt = performance.now();
    // Readmitted by a good probe (it was out for being unreachable), not by the 10 s cooldown.
    await waitFor(async () => chatCalls(await reborn.stats()) > 0,
      { timeoutMs: 5000, intervalMs: 50, what: 'the restarted node to get traffic again (probe readmission)' })
      .catch(async (err) => {
        const why = gw.logs.json().filter((l) => /kill-1/.test(JSON.stringify(l)) && l.event !== 'request')
          .slice(0, 12).map((l) => JSON.stringify(l)).join('\n');
        throw new Error(`${err.message}\nadmin: ${JSON.stringify(await admin.backend('kill-1'))}\n` +
          `gateway log about kill-1:\n${why}`);
      });
    t.diagnostic(`restarted node served again ${(performance.now() - restartedAt).toFixed(0)} ms after restart ` +
      `(probe interval ${interval} ms); it was down ${(restartedAt - killedAt).toFixed(0)} ms`);
    await sleep(300);
  } finally {
    stop = true;
    await Promise.all(loops);
  }
  t.diagnostic(`${sent} requests; served: ${JSON.stringify(served)}`);
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} of ${sent} requests failed`);
  assert.equal((await admin.backend('kill-1')).health, 'up');
});

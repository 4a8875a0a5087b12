// Hostile nodes (issue 13: hardening). A node can answer anything: huge or endless bodies,
// one byte a second, garbage SSE, one giant line, redirects, gzip bombs, enormous headers, a
// cut right after the headers, absurd or negative usage, another model's name, no first byte
// for a long time, a ping and then death, no choice at all. For each the caller gets a clear
// error or a clean failover to a healthy node in bounded time, nothing goes to an address
// that is not in the config, and the gateway's memory stays bounded (its RSS before and
// after, and its peak). Behaviour is asserted, not speed: the waits are bounded, generously.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, errorShapeProblems,
  mockText, chatCalls,
} from '../lib/harness.mjs';
import {
  startHostile, startTrap, behaviours as B, closeHostiles, rssBytes, cpuSeconds, head, chunk, sse,
  sseHead, chatChunk, LAST_CHUNK,
} from '../lib/hostile.mjs';
import { readFile } from 'node:fs/promises';

after(async () => {
  await closeHostiles();
  await cleanup();
});

const KEY = 'sk-hostile-tests';
const keys = [{ name: 'hostile', key: KEY }];
const MiB = 1 << 20;
const user = (content) => [{ role: 'user', content }];

// One trap for the whole file: every redirect points at it, and nothing may ever reach it.
const trap = await startTrap();

// A cheap hostile node (tried first) and, unless alone, a dearer healthy mocknode behind it;
// one worker, so the gateway's memory is one worker's.
async function setup({ alone = false, upstream = {}, routing = {}, behaviour, models = ['m'] } = {}) {
  const node = await startHostile({ name: 'evil', models, behaviour });
  const good = alone ? null : await startMocknode({ name: 'good', models, tokens: 3, quiet: true });
  const backends = [{ name: 'evil', url: node.v1,
    models: models.map((name) => ({ name, input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.1 })) }];
  if (good) backends.push(backendFor(good, { prices: [1, 1] }));
  const gw = await startGateway({
    keys, workers: 1, upstream: { first_byte_timeout_ms: 2000, idle_timeout_ms: 2000, ...upstream },
    routing, health: { eject_after_failures: 1000 }, backends,
  });
  return { node, good, gw, pid: gw.proc.pid };
}

const chat = (gw, body, timeoutMs = 30000) =>
  post(gw.v1 + '/chat/completions', { model: 'm', messages: user('hi'), ...body }, { key: KEY, timeoutMs });
const chatStream = (gw, body = {}, opts = {}) =>
  streamPost(gw.v1 + '/chat/completions', { model: 'm', messages: user('hi'), ...body, stream: true },
    { key: KEY, timeoutMs: 30000, ...opts });

// Under AddressSanitizer or ThreadSanitizer (make asan, make tsan) memory and CPU are the
// sanitizer's (shadow memory, quarantine, instrumentation): only behaviour is checked there.
const sanitized = async (pid) => /lib(asan|tsan)/.test(await readFile(`/proc/${pid}/maps`, 'utf8'));

async function memory(pid) {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), peak: kb('VmHWM') };
}

// Runs fn and asserts the gateway's resident memory afterwards, and at its peak, stayed
// within `grow` (and `peak`) bytes of what it was before.
async function bounded(pid, { grow = 64 * MiB, peak = 192 * MiB } = {}, fn) {
  if (await sanitized(pid)) return fn();
  const before = await memory(pid);
  const out = await fn();
  const afterwards = await memory(pid);
  const mb = (n) => `${(n / MiB).toFixed(0)} MiB`;
  assert.ok(afterwards.rss - before.rss < grow,
    `RSS ${mb(before.rss)} -> ${mb(afterwards.rss)}: more than ${mb(grow)} stayed`);
  assert.ok(afterwards.peak - before.rss < peak,
    `peak RSS ${mb(afterwards.peak)} from ${mb(before.rss)}: more than ${mb(peak)} at once`);
  return out;
}

// A complete answer from the healthy node, after the hostile one was tried first.
function assertFailedOver(r, node, what) {
  assert.equal(r.status, 200, `${what}: ${r.status} ${r.text}`);
  assert.equal(r.headers.get('x-tollgate-backend'), 'good', what);
  assert.equal(r.json.choices[0].message.content, mockText('good', 3), what);
  assert.ok(node.calls.length >= 1, `${what}: the cheaper hostile node was tried first`);
}

function assertStreamFailedOver(r, node, what) {
  assert.equal(r.status, 200, `${what}: ${r.raw}`);
  assert.equal(r.headers['x-tollgate-backend'], 'good', `${what}: ${r.raw}`);
  assert.equal(r.ended, 'end', what);
  const parsed = parseEvents(r.events);
  assert.ok(!parsed.some((p) => p.bad || p.json?.error), `${what}: ${r.raw}`);
  assert.equal(parsed.at(-1).data, '[DONE]', what);
  const text = parsed.map((p) => p.json?.choices?.[0]?.delta?.content ?? '').join('');
  assert.equal(text, mockText('good', 3), what);
  assert.ok(node.calls.length >= 1, `${what}: the cheaper hostile node was tried first`);
}

function assertError(r, status, code, what) {
  assert.equal(r.status, status, `${what}: ${r.status} ${r.text}`);
  assert.deepEqual(errorShapeProblems(r.json), [], `${what}: ${r.text}`);
  if (code) assert.equal(r.json.error.code, code, `${what}: ${r.text}`);
  assert.match(r.json.error.message, /evil/, `${what}: the message names the node`);
}

// A stream that started and then broke: relayed events, then one error event and a proper end.
function assertStreamError(r, what) {
  assert.equal(r.status, 200, `${what}: ${r.raw?.slice(0, 300)}`);
  assert.equal(r.ended, 'end', `${what}: the chunked body ends properly`);
  const parsed = parseEvents(r.events);
  assert.ok(!parsed.some((p) => p.done), `${what}: no [DONE]`);
  const last = parsed.at(-1);
  assert.equal(last?.json?.error?.code, 'backend_stream_error', `${what}: last event ${last?.data?.slice(0, 300)}`);
  return last.json.error;
}

// Runs fn (one inference request) and returns [its result, the gateway's log line for it
// (found by its x-request-id): what it was billed].
async function logged(gw, fn) {
  const out = await fn();
  const id = out.headers?.get?.('x-request-id') ?? out.headers?.['x-request-id'];
  assert.ok(id, 'the answer has an x-request-id');
  const find = () => gw.logs.json().find((l) => l.event === 'request' && l.request_id === id);
  for (let i = 0; i < 200 && !find(); i++) await new Promise((r) => setTimeout(r, 20));
  assert.ok(find(), `a log line for request ${id}`);
  return [out, find()];
}

// ---- item 11: huge answers --------------------------------------------------------------------

test('a 24 MiB answer of one string: answered, in bounded CPU and memory', async () => {
  const { node, gw, pid } = await setup({ alone: true, upstream: { max_response_bytes: 32 * MiB } });
  node.behave(B.hugeAnswer({ bytes: 24 * MiB }));
  const cpu0 = await cpuSeconds(pid);
  const r = await bounded(pid, { peak: 256 * MiB }, () => chat(gw, {}, 60000));
  const cpu = (await cpuSeconds(pid)) - cpu0;
  assert.equal(r.status, 200, r.text.slice(0, 300));
  assert.equal(r.text.length, 24 * MiB, 'relayed byte for byte');
  assert.ok(r.json.choices[0].message.content.length > 24 * MiB - 1000);
  // Scanning is linear: a few tenths of a second here; quadratic, it was ~6 s.
  if (!await sanitized(pid)) assert.ok(cpu < 3, `the gateway spent ${cpu.toFixed(2)} s of CPU on one 24 MiB answer`);
});

test('a 24 MiB answer of small numbers claiming absurd usage: clamped in the bytes, memory bounded', async () => {
  const { node, gw, pid } = await setup({ alone: true, upstream: { max_response_bytes: 32 * MiB } });
  node.behave(B.hugeAnswer({ bytes: 24 * MiB, numbers: true,
    usage: { prompt_tokens: 5, completion_tokens: 1e15, total_tokens: 1e15, completion_tokens_details: { reasoning_tokens: 0 } } }));
  const cpu0 = await cpuSeconds(pid);
  // Parsed into a tree to rewrite the usage, this answer took ~500 MiB, which stayed.
  const r = await bounded(pid, { grow: 64 * MiB, peak: 256 * MiB }, () => chat(gw, {}, 60000));
  const cpu = (await cpuSeconds(pid)) - cpu0;
  assert.equal(r.status, 200, r.text.slice(0, 300));
  assert.equal(r.json.usage.completion_tokens, 'hi'.length + 1, 'clamped to the text delivered + 1');
  assert.equal(r.json.usage.prompt_tokens, 5);
  assert.equal(r.json.usage.total_tokens, 5 + 3);
  assert.deepEqual(r.json.usage.completion_tokens_details, { reasoning_tokens: 0 }, 'the node\'s other usage fields stay');
  assert.ok(r.json.logprobs_junk.length > 11 * MiB, 'the rest of the answer is intact');
  assert.ok(Number(r.headers.get('x-tollgate-cost-usd')) < 1e-5, r.headers.get('x-tollgate-cost-usd'));
  if (!await sanitized(pid)) assert.ok(cpu < 4, `the gateway spent ${cpu.toFixed(2)} s of CPU on one 24 MiB answer`);
});

test('answers over max_response_bytes, or endless, fail over (or 502) with memory bounded', async () => {
  const { node, good, gw, pid } = await setup({ upstream: { max_response_bytes: 4 * MiB } });
  await bounded(pid, {}, async () => {
    node.behave(B.hugeAnswer({ bytes: 6 * MiB }));
    assertFailedOver(await chat(gw), node, 'over max_response_bytes');
    node.behave(B.endless());
    assertFailedOver(await chat(gw), node, 'endless whole body');
  });
  assert.equal(chatCalls(await good.stats()), 2);
});

// ---- item 12: total_timeout_ms while a slow reader holds the stream paused --------------------

// Reads a stream slowly the whole time: a piece, then nothing for `everyMs`, and again.
function slowReader(gw, { everyMs = 100, timeoutMs }) {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify({ model: 'm', messages: user('hi'), stream: true });
    const req = http.request(gw.v1 + '/chat/completions', { method: 'POST', agent: false, headers: {
      'content-type': 'application/json', authorization: `Bearer ${KEY}`, 'content-length': Buffer.byteLength(payload) } });
    const t0 = performance.now();
    const timer = setTimeout(() => req.destroy(new Error(`the stream was still running after ${timeoutMs} ms`)), timeoutMs);
    req.on('error', (e) => { clearTimeout(timer); reject(e); });
    req.on('response', (res) => {
      let tail = '';
      res.on('data', (d) => {
        tail = (tail + d.toString('latin1')).slice(-4096);
        res.pause();
        setTimeout(() => res.resume(), everyMs);
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode, complete: res.complete, tail, ms: performance.now() - t0 });
      });
      res.on('error', (e) => { clearTimeout(timer); reject(e); });
    });
    req.end(payload);
  });
}

test('item 12: total_timeout_ms ends an endless stream for a slow reader too, with an error event', async () => {
  const { node, gw } = await setup({ alone: true, upstream: { total_timeout_ms: 1500 } });
  node.behave(B.endless());
  // Before, the node was cut at 1.5 s but the caller read its MiBs of backlog (the relay's
  // buffer and an autotuned socket buffer) for half a minute before the error came.
  const r = await slowReader(gw, { everyMs: 100, timeoutMs: 12000 });
  assert.equal(r.status, 200);
  assert.ok(r.complete, 'the chunked body ended properly');
  const last = r.tail.trimEnd().split('\n\n').at(-1);
  assert.match(last, /^data: \{"error":/, `the stream ends with an error event of its own: ${last.slice(-300)}`);
  const err = JSON.parse(last.slice(6)).error;
  assert.equal(err.code, 'backend_stream_error');
  assert.match(err.message, /evil timed out/, err.message);
  const call = node.calls[0];
  assert.ok(call.tClosed && call.tClosed - call.t < 4000, 'the node was cut at its time limit');
});

// ---- slow nodes --------------------------------------------------------------------------------

test('one byte a second: past total_timeout_ms the node is failed over, whole or streamed', async () => {
  const { node, gw, pid } = await setup({ upstream: { total_timeout_ms: 1500 } });
  await bounded(pid, {}, async () => {
    node.behave(B.drip({ ms: 1000 }));
    assertFailedOver(await chat(gw), node, 'drip, whole');
    assertStreamFailedOver(await chatStream(gw), node, 'drip, stream');
  });
});

test('no first byte within first_byte_timeout_ms: failed over; alone, 504', async () => {
  const { node, gw } = await setup({ upstream: { first_byte_timeout_ms: 500 } });
  node.behave(B.slowFirstByte({ ms: 5000 }));
  assertFailedOver(await chat(gw), node, 'slow first byte, whole');
  assertStreamFailedOver(await chatStream(gw), node, 'slow first byte, stream');
  const solo = await setup({ alone: true, upstream: { first_byte_timeout_ms: 500 } });
  solo.node.behave(B.slowFirstByte({ ms: 5000 }));
  assertError(await chat(solo.gw), 504, 'backend_timeout', 'slow first byte, alone');
});

test('pings and no event past first_byte_timeout_ms: failed over before the caller gets a byte', async () => {
  const { node, gw } = await setup({ upstream: { first_byte_timeout_ms: 800, idle_timeout_ms: 5000 } });
  node.behave((sock) => {
    sock.write(sseHead());
    const t = setInterval(() => sock.write(chunk(': ping\n\n')), 200);
    sock.on('close', () => clearInterval(t));
  });
  assertStreamFailedOver(await chatStream(gw), node, 'pings forever');
});

// ---- broken streams -----------------------------------------------------------------------------

test('garbage SSE, one giant line, a cut after the headers: failed over before the first byte', async () => {
  const { node, gw, pid } = await setup();
  await bounded(pid, {}, async () => {
    node.behave(B.garbageSse());
    assertStreamFailedOver(await chatStream(gw), node, 'garbage event');
    node.behave(B.garbageSse({ text: 'this is not SSE at all\r\n\r\n\u0000\u0001' }));
    assertStreamFailedOver(await chatStream(gw), node, 'not SSE');
    node.behave(B.giantLine({ bytes: 8 * MiB }));
    assertStreamFailedOver(await chatStream(gw), node, 'giant line');
    node.behave(B.giantLine());
    assertStreamFailedOver(await chatStream(gw), node, 'endless line');
    node.behave(B.closeAfterHeaders({ stream: true }));
    assertStreamFailedOver(await chatStream(gw), node, 'cut after headers, stream');
    node.behave(B.closeAfterHeaders());
    assertFailedOver(await chat(gw), node, 'cut after headers, whole');
    node.behave(B.closeAfterHeaders({ length: 0 }));
    assertFailedOver(await chat(gw), node, 'empty 200');
  });
});

test('item 13: an SSE comment and then death is not a first event: the healthy node is tried', async () => {
  const { node, good, gw } = await setup();
  node.behave(B.commentThenDie());
  assertStreamFailedOver(await chatStream(gw), node, 'comment then death');
  node.behave(B.commentThenDie({ comment: ': ping\n\n: keep-alive\n\nevent: ping\n\n' }));
  assertStreamFailedOver(await chatStream(gw), node, 'comments then death');
  assert.equal(chatCalls(await good.stats()), 2);
});

test('item 13: no choice at all ("choices": [] or a bare [DONE]) is a broken answer, failed over, not billed', async () => {
  const { node, gw } = await setup();
  node.behave(B.noChoices());
  assertFailedOver(await chat(gw), node, 'choices []');
  assertStreamFailedOver(await chatStream(gw), node, 'only [DONE]');
  assertStreamFailedOver(await chatStream(gw, { stream_options: { include_usage: true } }), node, 'only [DONE], usage asked');
  // A usage chunk and [DONE], nothing generated.
  node.behave((sock) => {
    sock.write(sseHead());
    sock.write(chunk(sse({ id: 'c', object: 'chat.completion.chunk', choices: [], usage: { prompt_tokens: 3, completion_tokens: 9 } })));
    sock.end(Buffer.concat([chunk(sse('[DONE]')), LAST_CHUNK]));
  });
  assertStreamFailedOver(await chatStream(gw, { stream_options: { include_usage: true } }), node, 'usage and [DONE]');

  // Alone: an error, and nothing billed.
  const solo = await setup({ alone: true });
  solo.node.behave(B.noChoices());
  let [r, log] = await logged(solo.gw, () => chat(solo.gw));
  assertError(r, 502, 'bad_backend_response', 'choices [] alone');
  assert.equal(r.headers.get('x-tollgate-cost-usd'), null);
  assert.equal(log.cost_usd, 0, JSON.stringify(log));
  const s = await chatStream(solo.gw);
  assert.equal(s.status, 502, s.raw);
  // After a first event (a chunk with no choices yet), a bare [DONE] is an error event.
  solo.node.behave((sock, req) => {
    sock.write(sseHead());
    sock.write(chunk(sse({ id: 'c', object: 'chat.completion.chunk', model: req.body.model, choices: [] })));
    sock.end(Buffer.concat([chunk(sse('[DONE]')), LAST_CHUNK]));
  });
  let e;
  [e, log] = await logged(solo.gw, () => chatStream(solo.gw, { stream_options: { include_usage: true } }));
  assertStreamError(e, 'empty chunk then [DONE]');
  assert.ok(!parseEvents(e.events).some((p) => p.json?.usage), `no usage chunk is invented: ${e.raw}`);
  assert.equal(log.completion_tokens, 0, JSON.stringify(log));
  assert.equal(log.cost_usd, 0, JSON.stringify(log));
});

// ---- redirects, compression, headers --------------------------------------------------------------

test('redirects are never followed: nothing reaches an address not in the config', async () => {
  const { node, gw } = await setup();
  for (const status of [301, 302, 303, 307, 308]) {
    for (const location of [`${trap.url}/v1/chat/completions`, `//127.0.0.1:${trap.port}/v1/chat/completions`]) {
      node.behave(B.redirect({ status, location }));
      assertFailedOver(await chat(gw), node, `${status} to ${location}`);
      assertStreamFailedOver(await chatStream(gw), node, `${status} to ${location}, stream`);
    }
  }
  const solo = await setup({ alone: true });
  solo.node.behave(B.redirect({ status: 307, location: trap.url + '/v1/chat/completions' }));
  assertError(await chat(solo.gw), 502, 'bad_backend_response', 'a redirect, alone');
  assert.equal(trap.connections, 0, 'the redirect target was never contacted');
});

test('gzip bombs are not decompressed: failed over, memory bounded', async () => {
  const { node, gw, pid } = await setup();
  node.behave(B.gzipBomb({ inflated: 256 * MiB }));
  await bounded(pid, { peak: 96 * MiB }, async () => {
    assertFailedOver(await chat(gw, { stream: false }), node, 'gzip bomb, whole');
    assertStreamFailedOver(await chatStream(gw), node, 'gzip bomb, stream');
    // Even when the caller says it takes gzip.
    const r = await post(gw.v1 + '/chat/completions', { model: 'm', messages: user('hi') },
      { key: KEY, headers: { 'accept-encoding': 'gzip' } });
    assert.equal(r.headers.get('x-tollgate-backend'), 'good');
  });
  assert.ok(node.calls.every((c) => !/gzip|deflate|br/.test(c.headers['accept-encoding'] ?? '')),
    'the gateway never asks a node for compression');
});

test('enormous headers: a clear failure and a failover, memory bounded', async () => {
  const { node, gw, pid } = await setup();
  await bounded(pid, {}, async () => {
    node.behave(B.hugeHeaders({ count: 1, size: 4 * MiB }));
    assertFailedOver(await chat(gw), node, 'one 4 MiB header');
    node.behave(B.hugeHeaders({ count: 20000, size: 100 }));
    const r = await chat(gw);
    // curl takes many small headers (its limit is per header line); either way, bounded.
    assert.equal(r.status, 200, r.text.slice(0, 300));
  });
});

// ---- what a node says about itself ---------------------------------------------------------------

test('absurd, negative or non-numeric usage is clamped: never negative, never more than delivered', async () => {
  const { node, gw } = await setup({ alone: true });
  const cases = [
    [{ prompt_tokens: 1e12, completion_tokens: 1e12, total_tokens: 2e12 }, 'absurd'],
    [{ prompt_tokens: -5, completion_tokens: -7, total_tokens: -12 }, 'negative'],
    ['{"prompt_tokens":99999999999999999999999,"completion_tokens":-99999999999999999999999}', 'past int64'],
    [{ prompt_tokens: 'many', completion_tokens: [1] }, 'not numbers'],
    [{ prompt_tokens: 3.5e300, completion_tokens: 1e308 }, 'huge doubles'],
  ];
  for (const [usage, what] of cases) {
    node.behave(B.usage({ usage: typeof usage === 'string' ? JSON.parse(usage) : usage, content: 'hello' }));
    if (typeof usage === 'string') {
      // Numbers JavaScript cannot write: the node's answer spelled out by hand.
      node.behave((sock, req) => {
        const doc = JSON.stringify({ id: 'x', object: 'chat.completion', model: req.body.model,
          choices: [{ index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' }],
          usage: '@@' }).replace('"@@"', usage);
        if (!req.body.stream) {
          sock.end(Buffer.concat([head(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(doc), connection: 'close' }), Buffer.from(doc)]));
          return;
        }
        sock.write(sseHead());
        sock.write(chunk(sse(chatChunk(req, { content: 'hello' }, { finish: 'stop' }))));
        sock.write(chunk(`data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":${usage}}\n\n`));
        sock.end(Buffer.concat([chunk(sse('[DONE]')), LAST_CHUNK]));
      });
    }
    const [r, log] = await logged(gw, () => chat(gw));
    assert.equal(r.status, 200, `${what}: ${r.text}`);
    const u = r.json.usage;
    const cost = Number(r.headers.get('x-tollgate-cost-usd'));
    assert.ok(Number.isFinite(cost) && cost >= 0 && cost < 1e-4, `${what}: cost ${r.headers.get('x-tollgate-cost-usd')}`);
    assert.ok(log.completion_tokens >= 0 && log.completion_tokens <= 'hello'.length + 1, `${what}: ${JSON.stringify(log)}`);
    assert.ok(log.prompt_tokens >= 0 && log.prompt_tokens <= 200, `${what}: ${JSON.stringify(log)}`);
    assert.equal(u.completion_tokens, log.completion_tokens, `${what}: the answer says what was billed`);
    assert.equal(u.prompt_tokens, log.prompt_tokens, what);
    assert.equal(u.total_tokens, log.prompt_tokens + log.completion_tokens, what);
    const s = await chatStream(gw, { stream_options: { include_usage: true } });
    assert.equal(s.status, 200, s.raw);
    const su = parseEvents(s.events).find((p) => p.json?.usage)?.json.usage;
    assert.ok(su && su.completion_tokens >= 0 && su.completion_tokens <= 'hello'.length + 1, `${what}, stream: ${s.raw}`);
    assert.ok(su.cost >= 0 && su.cost < 1e-4, `${what}, stream: ${s.raw}`);
  }
});

test('an answer naming another model is relayed, and billed at the configured model\'s price', async () => {
  const { node, gw } = await setup({ alone: true });
  node.behave(B.otherModel({ model: 'gpt-4-very-expensive' }));
  const [r, log] = await logged(gw, () => chat(gw));
  assert.equal(r.status, 200, r.text);
  assert.equal(r.headers.get('x-tollgate-backend'), 'evil');
  assert.equal(log.model, 'm');
  const expected = (log.prompt_tokens * 0.1 + log.completion_tokens * 0.1) / 1e6;
  assert.ok(Math.abs(Number(r.headers.get('x-tollgate-cost-usd')) - expected) < 1e-12, r.headers.get('x-tollgate-cost-usd'));
  const s = await chatStream(gw);
  assert.equal(s.status, 200);
  assert.equal(parseEvents(s.events).at(-1).data, '[DONE]');
});

test('after all of the above: nothing reached the trap, and the gateway still serves', async () => {
  const { gw, pid } = await setup();
  const r = await bounded(pid, {}, () => chat(gw));
  assert.equal(r.status, 200);
  assert.equal(trap.connections, 0);
});

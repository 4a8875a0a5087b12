// POST /v1/responses through the gateway (the Responses API), against mocknode's own
// implementation: whole and streamed answers billed from the node's usage (clamped like chat),
// failover before the first byte, an honest error event after it, follow-ups pinned to the
// node that holds the response (previous_response_id, GET and DELETE by id), and the cache
// replaying a stream as typed events. Two replicas sharing Redis are tests/e2e/responses.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import {
  get, startMocknode, startGateway, backendFor, cleanup, post, streamPost, errorShapeProblems,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-responses-tests';
const keys = [{ name: 'resp', key: KEY }];
const usd = (p, c, i, o) => (p * i + c * o) / 1e6;

const responses = (gw, body, headers = {}) => post(gw.v1 + '/responses', body, { key: KEY, headers });
const stream = (gw, body) => streamPost(gw.v1 + '/responses', { ...body, stream: true }, { key: KEY });
// The typed events of a stream: [{event, json}].
const typed = (r) => r.events.map((e) => ({
  event: e.block.split('\n').find((l) => l.startsWith('event:'))?.slice(6).trim(),
  json: (() => { try { return JSON.parse(e.data); } catch { return undefined; } })(),
}));
const calls = async (node) => (await node.stats()).by_path?.['/v1/responses'] ?? 0;

describe('whole and streamed answers', () => {
  let cheap;
  let dear;
  let gw;
  before(async () => {
    cheap = await startMocknode({ name: 'cheap', models: ['m'], tokens: 5, quiet: true });
    dear = await startMocknode({ name: 'dear', models: ['m'], tokens: 5, quiet: true });
    gw = await startGateway({
      keys,
      cache: { mode: 'off' },
      health: { interval_ms: 60000 },
      backends: [backendFor(cheap, { prices: [2, 3] }), backendFor(dear, { prices: [20, 30] })],
    });
  });

  test('a whole answer comes from the cheapest node and is billed what the node reported', async () => {
    const r = await responses(gw, { model: 'm', input: 'hello there', instructions: 'Be brief.' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.object, 'response');
    assert.match(r.json.id, /^resp_/);
    assert.equal(r.headers.get('x-tollgate-backend'), 'cheap');
    assert.equal(r.json.output[0].content[0].text, '[cheap] lorem ipsum dolor sit');
    const u = r.json.usage;
    assert.equal(u.output_tokens, 5);
    assert.equal(u.total_tokens, u.input_tokens + u.output_tokens);
    assert.equal(u.input_tokens_details.cached_tokens, 0);
    assert.ok(Math.abs(Number(r.headers.get('x-tollgate-cost-usd')) - usd(u.input_tokens, 5, 2, 3)) < 1e-12);
  });

  test('a stream relays the typed events as sent, ending with response.completed (no [DONE])', async () => {
    const r = await stream(gw, { model: 'm', input: 'hello' });
    assert.equal(r.status, 200, r.raw);
    assert.equal(r.ended, 'end');
    const ev = typed(r);
    assert.deepEqual(ev.map((e) => e.event), [
      'response.created', 'response.in_progress', 'response.output_item.added',
      'response.content_part.added', ...Array(5).fill('response.output_text.delta'),
      'response.output_text.done', 'response.content_part.done', 'response.output_item.done',
      'response.completed']);
    for (const e of ev) assert.equal(e.json.type, e.event);
    assert.deepEqual(ev.map((e) => e.json.sequence_number), ev.map((_, i) => i));
    assert.equal(ev.filter((e) => e.event.endsWith('.delta')).map((e) => e.json.delta).join(''),
      '[cheap] lorem ipsum dolor sit');
    assert.equal(ev.at(-1).json.response.usage.output_tokens, 5);
    assert.ok(!r.raw.includes('[DONE]'));
  });

  test('max_output_tokens ends the answer incomplete, billed the tokens sent', async () => {
    const r = await responses(gw, { model: 'm', input: 'hi', max_output_tokens: 2 });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.status, 'incomplete');
    assert.equal(r.json.usage.output_tokens, 2);
    const s = await stream(gw, { model: 'm', input: 'hi', max_output_tokens: 2 });
    assert.equal(typed(s).at(-1).event, 'response.incomplete');
  });

  test('bad bodies are refused with OpenAI errors, before any node is asked', async () => {
    const before = await calls(cheap);
    for (const [body, param] of [
      [{ input: 'x' }, 'model'],
      [{ model: 'm' }, 'input'],
      [{ model: 'm', input: 5 }, 'input'],
      [{ model: 'm', input: 'x', max_output_tokens: -1 }, 'max_output_tokens'],
      [{ model: 'm', input: 'x', instructions: 3 }, 'instructions'],
      [{ model: 'm', input: 'x', previous_response_id: '../etc' }, 'previous_response_id'],
    ]) {
      const r = await responses(gw, body);
      assert.equal(r.status, 400, r.text);
      assert.deepEqual(errorShapeProblems(r.json), []);
      assert.equal(r.json.error.param, param);
    }
    const r = await responses(gw, { model: 'nope', input: 'x' });
    assert.equal(r.status, 404);
    assert.equal(r.json.error.code, 'model_not_found');
    assert.equal(await calls(cheap), before);
  });

  test('a node that fails before the first byte is failed over, whole and streamed', async () => {
    await cheap.setConfig({ fault: 500 });
    try {
      const r = await responses(gw, { model: 'm', input: 'hi' });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('x-tollgate-backend'), 'dear');
      const s = await stream(gw, { model: 'm', input: 'hi' });
      assert.equal(s.status, 200);
      assert.equal(typed(s).at(-1).event, 'response.completed');
      assert.match(typed(s).at(-1).json.response.output[0].content[0].text, /^\[dear\]/);
    } finally {
      await cheap.setConfig({ fault: 'none' });
    }
  });

  test('a stream cut after its first byte ends with an error event, never a fake completion', async () => {
    await cheap.setConfig({ fault: 'close-mid-stream' });
    try {
      const s = await stream(gw, { model: 'm', input: 'hi' });
      assert.equal(s.status, 200);
      const ev = typed(s);
      assert.equal(ev.at(-1).event, 'error', s.raw);
      assert.equal(ev.at(-1).json.type, 'error');
      assert.equal(typeof ev.at(-1).json.message, 'string');
      assert.ok(!ev.some((e) => e.event === 'response.completed'));
    } finally {
      await cheap.setConfig({ fault: 'none' });
    }
  });
});

describe('a node that lies about usage', () => {
  let gw;
  before(async () => {
    const liar = await startMocknode({ name: 'liar', models: ['m'], tokens: 4, fault: 'inflate-usage', quiet: true });
    gw = await startGateway({ keys, cache: { mode: 'off' }, routing: { honesty_tolerance: 1000 },
      backends: [backendFor(liar, { prices: [2, 3] })] });
  });

  test('usage x100 is clamped to what was sent and delivered, in the answer and the bill', async () => {
    const r = await responses(gw, { model: 'm', input: 'hello there', max_output_tokens: 3 });
    assert.equal(r.status, 200, r.text);
    const u = r.json.usage;
    assert.equal(u.output_tokens, 3); // max_output_tokens
    assert.ok(u.input_tokens <= 11 + 8 + 64, `input clamped: ${u.input_tokens}`);
    assert.equal(u.total_tokens, u.input_tokens + u.output_tokens);
    assert.ok(Math.abs(Number(r.headers.get('x-tollgate-cost-usd')) - usd(u.input_tokens, 3, 2, 3)) < 1e-12);
    const s = await stream(gw, { model: 'm', input: 'hello there', max_output_tokens: 3 });
    const done = typed(s).at(-1);
    assert.equal(done.event, 'response.incomplete');
    assert.equal(done.json.response.usage.output_tokens, 3);
    assert.ok(done.json.response.usage.input_tokens <= 83);
    assert.equal(typeof done.json.sequence_number, 'number');
  });
});

describe('follow-ups reach the node that holds the response', () => {
  let cheap;
  let dear;
  let gw;
  before(async () => {
    cheap = await startMocknode({ name: 'cheap', models: ['m'], tokens: 3, quiet: true });
    dear = await startMocknode({ name: 'dear', models: ['m'], tokens: 3, quiet: true });
    gw = await startGateway({
      keys,
      cache: { mode: 'off' },
      health: { interval_ms: 60000 },
      backends: [backendFor(cheap, { prices: [1, 1] }), backendFor(dear, { prices: [5, 5] })],
    });
  });

  // A response made on the dearer node (the cheap one failing at the time).
  async function onDear(body) {
    await cheap.setConfig({ fault: 500 });
    try {
      const r = body.stream ? null : await responses(gw, body);
      if (r) {
        assert.equal(r.status, 200, r.text);
        assert.equal(r.headers.get('x-tollgate-backend'), 'dear');
        return r.json.id;
      }
      const s = await stream(gw, body);
      return typed(s)[0].json.response.id;
    } finally {
      await cheap.setConfig({ fault: 'none' });
    }
  }

  test('previous_response_id goes to its node although another one is cheaper', async () => {
    for (const streamed of [false, true]) {
      const id = await onDear({ model: 'm', input: 'first', stream: streamed });
      const r = await responses(gw, { model: 'm', input: 'second', previous_response_id: id });
      assert.equal(r.status, 200, r.text);
      assert.equal(r.headers.get('x-tollgate-backend'), 'dear');
      assert.equal(r.json.previous_response_id, id);
      // Anything else still goes to the cheapest.
      const other = await responses(gw, { model: 'm', input: 'unrelated' });
      assert.equal(other.headers.get('x-tollgate-backend'), 'cheap');
    }
  });

  test('GET, input_items and DELETE by id go to its node, unbilled', async () => {
    const id = await onDear({ model: 'm', input: 'keep me' });
    let r = await get(`${gw.v1}/responses/${id}`, { key: KEY });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.id, id);
    assert.equal(r.headers.get('x-tollgate-backend'), 'dear');
    assert.equal(Number(r.headers.get('x-tollgate-cost-usd') ?? 0), 0);
    r = await get(`${gw.v1}/responses/${id}/input_items`, { key: KEY });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.data[0].content, 'keep me');
    r = await get(`${gw.v1}/responses/${id}/input_items?limit=5&order=asc`, { key: KEY });
    assert.equal(r.status, 200, r.text);
    r = await get(`${gw.v1}/responses/${id}/input_items?order=a%20b`, { key: KEY });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.error.param, 'order');
    r = await get(`${gw.v1}/responses/${id}`, { key: KEY, method: 'DELETE' });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { id, object: 'response', deleted: true });
    r = await get(`${gw.v1}/responses/${id}`, { key: KEY });
    assert.equal(r.status, 404, r.text);
    assert.deepEqual(errorShapeProblems(r.json), []);
  });

  test('an id no node answered is a 404 (by id) or a 400 (previous_response_id)', async () => {
    let r = await get(`${gw.v1}/responses/resp_unknown`, { key: KEY });
    assert.equal(r.status, 404);
    assert.deepEqual(errorShapeProblems(r.json), []);
    r = await responses(gw, { model: 'm', input: 'x', previous_response_id: 'resp_unknown' });
    assert.equal(r.status, 400);
    assert.equal(r.json.error.param, 'previous_response_id');
    assert.equal(r.json.error.code, 'previous_response_not_found');
    r = await get(`${gw.v1}/responses/resp_1/other`, { key: KEY });
    assert.equal(r.status, 404);
    r = await post(`${gw.v1}/responses/resp_1`, {}, { key: KEY });
    assert.equal(r.status, 405);
    r = await get(`${gw.v1}/responses/resp_1`);
    assert.equal(r.status, 401);
  });

  test('when its node is gone, a follow-up fails clearly instead of going to another node', async () => {
    const id = await onDear({ model: 'm', input: 'x' });
    const before = await calls(cheap);
    await dear.kill();
    const r = await responses(gw, { model: 'm', input: 'y', previous_response_id: id });
    assert.ok(r.status >= 500, `${r.status} ${r.text}`);
    assert.deepEqual(errorShapeProblems(r.json), []);
    assert.match(r.json.error.message, /dear/);
    assert.equal(await calls(cheap), before, 'the cheap node was not asked');
  });
});

describe('the cache', () => {
  let node;
  let gw;
  before(async () => {
    node = await startMocknode({ name: 'c', models: ['m'], tokens: 4, quiet: true });
    gw = await startGateway({ keys, workers: 1, health: { interval_ms: 60000 }, backends: [backendFor(node)] });
  });

  test('a deterministic streamed miss is replayed to the next caller as the same event sequence', async () => {
    const body = { model: 'm', input: 'cache me', temperature: 0 };
    const first = await stream(gw, body);
    assert.equal(first.headers['x-tollgate-cache'], 'miss');
    const second = await stream(gw, body);
    assert.equal(second.headers['x-tollgate-cache'], 'hit', second.raw);
    const a = typed(first);
    const b = typed(second);
    const squash = (ev) => ev.map((e) => e.event).filter((t, i, all) => !(t.endsWith('.delta') && all[i - 1] === t));
    assert.deepEqual(squash(b), squash(a));
    const text = (ev) => ev.filter((e) => e.event === 'response.output_text.delta').map((e) => e.json.delta).join('');
    assert.equal(text(b), text(a));
    assert.equal(b.at(-1).json.response.id, a.at(-1).json.response.id);
    assert.deepEqual(b.map((e) => e.json.sequence_number), b.map((_, i) => i));
    const whole = await responses(gw, body);
    assert.equal(whole.headers.get('x-tollgate-cache'), 'hit');
    assert.equal(whole.json.output[0].content[0].text, text(a));
    assert.equal(await calls(node), 1);
  });
});

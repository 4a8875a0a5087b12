// Coalescing across workers: identical concurrent cacheable misses arriving on different
// connections (spread over the workers by SO_REUSEPORT) make one backend call in all.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanup, startMocknode, backendFor, startGateway, post, chatCalls } from '../lib/harness.mjs';

let node, gw;
const KEY = 'sk-coalesce-workers';

before(async () => {
  node = await startMocknode({ name: 'cw', models: ['llama'], tokens: 6, ttfb_ms: 400 });
  gw = await startGateway({
    log_level: 'warn',
    workers: 2,
    health: { interval_ms: 60000 },
    keys: [{ name: 'cw', key: KEY }],
    backends: [backendFor(node)],
  });
});

after(cleanup);

// Concurrent fetches open a connection each, which the kernel spreads over the workers.
const ask = (content) => post(gw.v1 + '/chat/completions',
  { model: 'llama', temperature: 0, max_tokens: 5, messages: [{ role: 'user', content }] },
  { key: KEY });

test('50 identical concurrent misses on two workers: one backend call, one answer', async () => {
  const before_calls = chatCalls(await node.stats());
  const answers = await Promise.all(Array.from({ length: 50 }, () => ask('coalesce across workers')));
  for (const a of answers) assert.equal(a.status, 200, a.text);
  assert.equal(chatCalls(await node.stats()) - before_calls, 1, 'one backend call for all of them');
  const bodies = new Set(answers.map((a) => a.text));
  assert.equal(bodies.size, 1, 'every caller got the same answer');
  const results = answers.map((a) => a.headers.get('x-tollgate-cache'));
  assert.equal(results.filter((r) => r === 'miss').length, 1);
  assert.equal(results.filter((r) => r === 'hit').length, 49);
});

test('different questions are not coalesced', async () => {
  const before_calls = chatCalls(await node.stats());
  const answers = await Promise.all(Array.from({ length: 6 }, (_, i) => ask(`question ${i}`)));
  for (const a of answers) assert.equal(a.status, 200);
  assert.equal(chatCalls(await node.stats()) - before_calls, 6);
});

// A streamed leader's followers may want whole answers, and the other way round: one stored
// answer serves both.
test('a streamed leader answers non-stream followers and a whole leader answers streamed ones', async () => {
  const body = (content, stream) => JSON.stringify({ model: 'llama', temperature: 0, max_tokens: 5,
    stream, messages: [{ role: 'user', content }] });
  const send = (content, stream) => fetch(gw.v1 + '/chat/completions', {
    method: 'POST', body: body(content, stream),
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
  }).then(async (r) => ({ status: r.status, cache: r.headers.get('x-tollgate-cache'), text: await r.text() }));
  const deltas = (text) => text.split('\n\n').filter((e) => e.startsWith('data: {'))
    .map((e) => JSON.parse(e.slice(6))).flatMap((c) => c.choices ?? [])
    .map((c) => c.delta?.content ?? '').join('');

  for (const [leaderStreams, question] of [[true, 'mixed one'], [false, 'mixed two']]) {
    const before_calls = chatCalls(await node.stats());
    const leader = send(question, leaderStreams);
    // Followers come once the leader is at the node (its ttfb keeps it there for 400 ms).
    await new Promise((resolve) => setTimeout(resolve, 100));
    const followers = await Promise.all(Array.from({ length: 6 }, (_, i) => send(question, i % 2 === 0)));
    const first = await leader;
    assert.equal(first.status, 200);
    assert.equal(chatCalls(await node.stats()) - before_calls, 1, `one call (leader streams: ${leaderStreams})`);
    const want = leaderStreams ? deltas(first.text) : JSON.parse(first.text).choices[0].message.content;
    assert.ok(want.length > 0);
    followers.forEach((f, i) => {
      assert.equal(f.status, 200);
      assert.equal(f.cache, 'hit');
      const got = i % 2 === 0 ? deltas(f.text) : JSON.parse(f.text).choices[0].message.content;
      assert.equal(got, want, `follower ${i} (${i % 2 === 0 ? 'stream' : 'whole'})`);
    });
  }
});

test('a herd of 500 identical requests: one backend call, every caller answered', async () => {
  const before_calls = chatCalls(await node.stats());
  const answers = await Promise.all(Array.from({ length: 500 }, () => ask('the herd')));
  const statuses = new Map();
  for (const a of answers) statuses.set(a.status, (statuses.get(a.status) ?? 0) + 1);
  assert.deepEqual([...statuses], [[200, 500]]);
  assert.equal(chatCalls(await node.stats()) - before_calls, 1);
  assert.equal(new Set(answers.map((a) => a.text)).size, 1);
});

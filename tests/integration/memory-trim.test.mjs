// Issue 13, memory over time: a worker that goes quiet after traffic gives the heap's free
// pages back once (gateway/server.c, "idle" trim), and not again while it stays quiet; new
// traffic followed by quiet trims again. (The soak, tools/soak/, measures the RSS itself.)
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { cleanup, startMocknode, startGateway, backendFor, post, waitFor } from '../lib/harness.mjs';

after(cleanup);

const idleTrims = (gw) => gw.logs.json().filter((l) => l.event === 'memory_trimmed' && l.why === 'idle');
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

test('a worker gone quiet after traffic trims once, and again only after more traffic', async () => {
  const node = await startMocknode({ name: 'trim', models: ['tm'], quiet: true });
  const gw = await startGateway({ workers: 1, log_level: 'debug', backends: [backendFor(node)] });
  const burst = async (tag) => {
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => post(gw.v1 + '/chat/completions',
      { model: 'tm', temperature: 0.7, messages: [{ role: 'user', content: `${tag} ${i} ${'x'.repeat(20000)}` }] })));
    for (const a of answers) assert.equal(a.status, 200, a.text);
  };
  // Whatever trims the start-up brought (the first periodic one) are over before counting.
  await sleep(1500);
  const before = idleTrims(gw).length;
  await burst('first');
  await waitFor(() => idleTrims(gw).length > before, { timeoutMs: 15000, what: 'an idle trim after the traffic' });
  const afterFirst = idleTrims(gw).length;
  assert.equal(afterFirst, before + 1, JSON.stringify(idleTrims(gw)));
  // Quiet on: no further idle trim without traffic.
  await sleep(3500);
  assert.equal(idleTrims(gw).length, afterFirst, JSON.stringify(idleTrims(gw)));
  // Traffic again, then quiet: one more, once the 10 s since the last trim are over.
  await sleep(7000);
  await burst('second');
  await waitFor(() => idleTrims(gw).length > afterFirst, { timeoutMs: 15000, what: 'a second idle trim' });
  assert.equal(idleTrims(gw).length, afterFirst + 1);
  await gw.stop();
});

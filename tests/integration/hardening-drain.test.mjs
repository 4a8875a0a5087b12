// Issue 13, what the hardening left open around the drain and the connection limits:
// - every 503 shutting_down carries retry-after, also those of a forced drain (the requests
//   cut when drain_timeout_ms ran out, and the identical ones waiting for them);
// - the drain_timeout log line says what the drain still waited for: requests in flight, or
//   only the ledger's records to Redis;
// - the connection-shedding counters are in /metrics;
// - the admin listener has the client listener's header and body deadlines, and a connection
//   cap at which idle connections are shed for new ones.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import {
  cleanup, startMocknode, startGateway, backendFor, post, get, waitFor, apiCalls, adminListener,
} from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

after(cleanup);

test('a forced drain answers 503 shutting_down with retry-after, to the cut request and to those waiting for it', async () => {
  const node = await startMocknode({ name: 'slow', models: ['ds'], ttfbMs: 5000, quiet: true });
  const gw = await startGateway({ workers: 1, drain_timeout_ms: 400, log_level: 'info', backends: [backendFor(node)] });
  const ask = () => post(gw.v1 + '/chat/completions',
    { model: 'ds', temperature: 0, messages: [{ role: 'user', content: 'slow and shared' }] },
    { timeoutMs: 10000 });
  const leader = ask();
  await waitFor(async () => apiCalls(await node.stats()) === 1, { what: 'the first request at the node' });
  const followers = Array.from({ length: 3 }, ask);
  await new Promise((resolve) => setTimeout(resolve, 100));
  gw.proc.kill('SIGTERM');
  const answers = await Promise.all([leader, ...followers]);
  for (const a of answers) {
    assert.equal(a.status, 503, a.text);
    assert.equal(a.json?.error?.code, 'shutting_down', a.text);
    assert.ok(Number(a.headers.get('retry-after')) > 0, `retry-after: ${a.headers.get('retry-after')}`);
  }
  assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  const line = gw.logs.json().find((l) => l.event === 'drain_timeout');
  assert.ok(line, gw.logs.text());
  assert.equal(line.waited_for, 'requests');
  assert.equal(line.aborted, 4, JSON.stringify(line)); // in flight: the leader and its followers
});

test('drain_timeout with no request left says it waited for the ledger', async () => {
  const redis = await startRedis();
  const node = await startMocknode({ name: 'n', models: ['m'], quiet: true });
  const KEY = 'sk-drain-ledger-key-0123';
  const gw = await startGateway({
    workers: 1, drain_timeout_ms: 300, log_level: 'info', redis: { url: redis.url },
    keys: [{ name: 'k', key: KEY }], backends: [backendFor(node)],
  });
  const chat = () => post(gw.v1 + '/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
  assert.equal((await chat()).status, 200);
  // Redis stops answering: the next request's record is not acknowledged, and the flush
  // tries again on the ledger's next tick (1 s), after the 300 ms drain limit.
  redis.proc.kill('SIGSTOP');
  try {
    assert.equal((await chat()).status, 200);
    gw.proc.kill('SIGTERM');
    assert.deepEqual(await gw.waitExit(10000), { code: 0, signal: null }, gw.logs.text());
  } finally {
    redis.proc.kill('SIGCONT');
  }
  const line = gw.logs.json().find((l) => l.event === 'drain_timeout');
  assert.ok(line, gw.logs.text());
  assert.equal(line.waited_for, 'ledger_flush', JSON.stringify(line));
  assert.equal(line.aborted, 0);
  await redis.stop();
});

function metric(text, name) {
  const l = text.split('\n').find((x) => x.startsWith(name + ' '));
  return l === undefined ? undefined : Number(l.split(' ').pop());
}

test('/metrics counts the connections shed, by reason', async () => {
  const node = await startMocknode({ name: 'n2', models: ['m'], quiet: true });
  const gw = await startGateway({ workers: 1, client_header_timeout_ms: 300, backends: [backendFor(node)] });
  const scrape = async () => (await get(gw.url + '/metrics')).text;
  const first = await scrape();
  for (const r of ['at_cap', 'fd_limit', 'header_timeout', 'body_timeout'])
    assert.equal(metric(first, `tollgate_connections_shed_total{reason="${r}"}`), 0, `${r}\n${first}`);
  assert.equal(metric(first, 'tollgate_connections_lingered_total'), 0);
  assert.match(first, /^# TYPE tollgate_connections_shed_total counter$/m);

  // A header that never ends: shut after client_header_timeout_ms.
  const drip = net.connect(gw.port, '127.0.0.1');
  drip.on('error', () => {});
  drip.write('GET /healthz HTTP/1.1\r\nHost: x\r\n');
  await new Promise((resolve) => drip.once('close', resolve));
  await waitFor(async () => metric(await scrape(), 'tollgate_connections_shed_total{reason="header_timeout"}') >= 1,
    { timeoutMs: 5000, what: 'header_timeout counted' });

  // At the cap, an idle connection is shut to make room for a new one.
  const gw2 = await startGateway({ workers: 1, max_connections: 3, backends: [backendFor(node)] });
  const idle = [];
  for (let i = 0; i < 3; i++) {
    const s = net.connect(gw2.port, '127.0.0.1');
    s.on('error', () => {});
    idle.push(s);
    await new Promise((resolve) => s.once('connect', resolve));
  }
  await new Promise((resolve) => setTimeout(resolve, 1200)); // old enough to be shed
  const scrape2 = async () => (await get(gw2.url + '/metrics', { timeoutMs: 5000 })).text;
  const text = await scrape2(); // a fourth connection: one idle one goes
  assert.equal(metric(text, 'tollgate_connections_shed_total{reason="header_timeout"}'), 0);
  await waitFor(async () => metric(await scrape2(), 'tollgate_connections_shed_total{reason="at_cap"}') >= 1,
    { timeoutMs: 5000, what: 'at_cap counted' });
  await waitFor(async () => metric(await scrape2(), 'tollgate_client_connections') >= 1,
    { timeoutMs: 5000, what: 'open connections published' });
  for (const s of idle) s.destroy();
});

// ---- the admin listener: the client listener's deadlines and a cap with shedding ----------

test('the admin listener closes a dripping header at client_header_timeout_ms', async () => {
  const node = await startMocknode({ name: 'n3', models: ['m'], quiet: true });
  const admin = await adminListener();
  const gw = await startGateway({ ...admin.config, workers: 1, client_header_timeout_ms: 500, backends: [backendFor(node)] });
  const sock = net.connect(Number(admin.url.split(':').pop()), '127.0.0.1');
  sock.on('error', () => {});
  const closed = new Promise((resolve) => sock.once('close', resolve));
  await new Promise((resolve) => sock.once('connect', resolve));
  // One byte every 100 ms: MHD's idle timeout (30 s) never fires on it.
  const header = 'GET /admin/backends HTTP/1.1\r\nHost: x\r\nX-Pad: ' + 'a'.repeat(200);
  let sent = 0;
  const timer = setInterval(() => { if (sent < header.length && !sock.destroyed) sock.write(header[sent++]); }, 100);
  await closed;
  clearInterval(timer);
  assert.ok(sent < header.length, `the connection stayed open for all ${sent} bytes`);
  const r = await admin.get('/admin/backends');
  assert.equal(r.status, 200, r.text);
  await gw.stop();
});

test('the admin listener at its cap sheds an idle connection for a new one', async () => {
  const node = await startMocknode({ name: 'n4', models: ['m'], quiet: true });
  const admin = await adminListener();
  const gw = await startGateway({ ...admin.config, workers: 1, client_header_timeout_ms: 60000, backends: [backendFor(node)] });
  const port = Number(admin.url.split(':').pop());
  const idle = [];
  // More than the cap (256) and MHD's own limit (the cap and room for 16 being closed).
  for (let i = 0; i < 280; i++) {
    const s = net.connect(port, '127.0.0.1');
    s.on('error', () => {});
    s.on('close', () => { s.gone = true; });
    s.resume();
    idle.push(s);
    await new Promise((resolve) => { s.once('connect', resolve); s.once('close', resolve); });
  }
  await new Promise((resolve) => setTimeout(resolve, 1200)); // old enough to be shed
  const r = await admin.get('/metrics', { timeoutMs: 5000 });
  assert.equal(r.status, 200, r.text);
  await waitFor(() => idle.some((s) => s.gone), { timeoutMs: 3000, what: 'an idle connection shed' });
  for (const s of idle) s.destroy();
  await gw.stop();
});

// The admin listener (admin_listen, admin_key): GET /admin/backends and GET /metrics,
// behind "Authorization: Bearer <admin_key>", on its own port; and SIGHUP reloads that
// change the backend list.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import {
  startMocknode, startGateway, backendFor, cleanup, post, get, errorShapeProblems, mockText,
  chatCalls, adminListener, waitFor,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-admin-tests';
const keys = [{ name: 'admin-tests', key: KEY }];
const user = (content) => [{ role: 'user', content }];
const chat = (gw, body) => post(gw.v1 + '/chat/completions', body, { key: KEY });

describe('GET /admin/backends and /metrics', () => {
  let gw;
  let admin;
  let node;
  let sick;
  before(async () => {
    [node, sick] = await Promise.all([
      startMocknode({ name: 'adm-node', models: ['m-up', 'e'], tokens: 2, quiet: true }),
      startMocknode({ name: 'adm-sick', models: ['m-up'], fault: '500', quiet: true }),
    ]);
    admin = await adminListener();
    gw = await startGateway({ keys, ...admin.config, health: { interval_ms: 200 }, backends: [
      { ...backendFor(node, { models: [
        { name: 'm', upstream: 'm-up', input_usd_per_mtok: 0.25, output_usd_per_mtok: 0.5 },
        { name: 'e', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0 },
      ] }), max_inflight: 16 },
      backendFor(sick, { models: [{ name: 'm', upstream: 'm-up', input_usd_per_mtok: 0.1, output_usd_per_mtok: 0.1 }] }),
    ] });
  });

  test('the key is required: none, a wrong one, or a caller key -> 401 in OpenAI shape', async () => {
    for (const headers of [{}, { authorization: 'Bearer wrong-admin-key-0123456789' },
      { authorization: `Bearer ${KEY}` }, { authorization: `Bearer ${admin.key}x` }, { authorization: admin.key }]) {
      for (const p of ['/admin/backends', '/metrics']) {
        const r = await get(admin.url + p, { headers });
        assert.equal(r.status, 401, `${p} with ${JSON.stringify(headers)}: ${r.status} ${r.text}`);
        assert.deepEqual(errorShapeProblems(r.json), [], r.text);
        assert.equal(r.json.error.code, 'invalid_api_key');
        assert.ok(!r.text.includes('adm-node'), 'nothing about the backends leaks');
      }
    }
    // The admin key is not an API key, and the admin endpoints are not on the main listener.
    const api = await get(gw.v1 + '/models', { key: admin.key });
    assert.equal(api.status, 401, api.text);
    const main = await get(gw.url + '/admin/backends', { key: admin.key });
    assert.equal(main.status, 404, main.text);
    assert.equal(main.json?.error?.code, 'unknown_url');
  });

  test('/admin/backends describes every backend, its state, counters and prices', async () => {
    // One failover (adm-sick is cheaper and answers 500) so the counters move.
    const r = await chat(gw, { model: 'm', messages: user('x') });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.headers.get('x-tollgate-backend'), 'adm-node');
    // Wait for a probe round so last_probe_ago_ms is set.
    const list = await waitFor(async () => {
      const bs = await admin.backends();
      return bs.every((b) => b.last_probe_ago_ms !== null) ? bs : null;
    }, { timeoutMs: 3000, what: 'a probe of each backend' });
    assert.deepEqual(list.map((b) => b.name), ['adm-node', 'adm-sick'], 'in config order');
    const fields = ['name', 'url', 'health', 'inflight', 'max_inflight', 'requests', 'failures', 'ejections',
      'consecutive_failures', 'ejected_for_ms', 'ttfb_ms', 'duration_ms', 'probe_ok', 'last_probe_ago_ms', 'models'];
    for (const b of list) {
      for (const f of fields) assert.ok(f in b, `${b.name} lacks ${f}: ${JSON.stringify(b)}`);
      assert.ok(['up', 'ejected', 'rate_limited', 'down', 'suspected'].includes(b.health), b.health);
      // What routing learned of it (README "Routing, health and failover").
      assert.ok(Number.isInteger(b.effective_limit) && b.effective_limit >= 1, JSON.stringify(b));
      assert.ok(typeof b.limit === 'number' && b.limit >= 1, JSON.stringify(b));
      assert.ok(['probing', 'steady'].includes(b.limit_phase), b.limit_phase);
      assert.equal(typeof b.suspected, 'boolean');
      for (const m of b.models) {
        assert.equal(typeof m.overreporting, 'boolean');
        assert.ok(typeof m.usage_inflation === 'number' && Number.isInteger(m.usage_samples), JSON.stringify(m));
      }
      for (const f of ['inflight', 'max_inflight', 'requests', 'failures', 'ejections', 'consecutive_failures',
        'ejected_for_ms', 'last_probe_ago_ms']) {
        assert.ok(Number.isInteger(b[f]) && b[f] >= 0, `${b.name}.${f} = ${b[f]}`);
      }
      for (const f of ['ttfb_ms', 'duration_ms']) assert.ok(typeof b[f] === 'number' && b[f] >= 0, `${b.name}.${f}`);
      assert.equal(typeof b.probe_ok, 'boolean');
      assert.ok(!JSON.stringify(b).includes(KEY));
    }
    const [n, s] = list;
    assert.equal(n.url, node.v1);
    assert.equal(n.health, 'up');
    assert.equal(n.max_inflight, 16);
    assert.equal(n.requests, 1);
    assert.equal(n.failures, 0);
    assert.equal(n.probe_ok, true);
    assert.ok(n.ttfb_ms > 0, 'a time to first byte was measured');
    const priced = ({ name, upstream, input_usd_per_mtok, output_usd_per_mtok, price_source }) =>
      ({ name, upstream, input_usd_per_mtok, output_usd_per_mtok, price_source });
    assert.deepEqual(n.models.map(priced), [
      { name: 'm', upstream: 'm-up', input_usd_per_mtok: 0.25, output_usd_per_mtok: 0.5, price_source: 'config' },
      { name: 'e', upstream: null, input_usd_per_mtok: 0.1, output_usd_per_mtok: 0, price_source: 'config' },
    ]);
    assert.equal(n.models[0].price_age_ms, null, 'a config price has no age');
    assert.equal(s.max_inflight, 0, '0 = unlimited');
    assert.equal(s.requests, 1);
    assert.equal(s.failures, 1);
    assert.equal(s.consecutive_failures, 1);
    assert.equal(s.health, 'up', 'one failure is not enough to eject');
    assert.equal(s.probe_ok, true, 'its /models answers');
  });

  test('/metrics on the admin listener is Prometheus text', async () => {
    const r = await admin.get('/metrics');
    assert.equal(r.status, 200, r.text);
    assert.match(r.headers.get('content-type') ?? '', /^text\/plain/);
    const lines = r.text.split('\n').filter((l) => l && !l.startsWith('#'));
    assert.ok(lines.length > 0);
    for (const line of lines) {
      assert.match(line, /^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? [-+0-9.eEinfNa]+( \d+)?$/, `bad metrics line: ${line}`);
    }
    assert.match(r.text, /^tollgate_requests_total\{/m);
    const errors = /^tollgate_upstream_errors_total (\d+)/m.exec(r.text);
    assert.ok(errors && Number(errors[1]) >= 1, 'the failed try is counted');
  });

  test('with an admin listener, the public listener does not serve /metrics', async () => {
    const r = await get(gw.url + '/metrics');
    assert.equal(r.status, 404);
    assert.deepEqual(errorShapeProblems(r.json), []);
    assert.match(r.json.error.message, /admin listener/);
  });
});

test('SIGHUP reload changes the backend list', async () => {
  const [oldNode, newNode] = await Promise.all([
    startMocknode({ name: 'hup-old', models: ['m'], tokens: 1, quiet: true }),
    startMocknode({ name: 'hup-new', models: ['m', 'extra'], tokens: 1, quiet: true }),
  ]);
  const admin = await adminListener();
  const gw = await startGateway({ keys, ...admin.config, health: { interval_ms: 200 }, backends: [backendFor(oldNode)] });
  const r1 = await chat(gw, { model: 'm', messages: user('before') });
  assert.equal(r1.headers.get('x-tollgate-backend'), 'hup-old');

  const cfg = JSON.parse(await fsp.readFile(gw.configPath, 'utf8'));
  cfg.backends = [backendFor(newNode, { models: ['m', 'extra'] })];
  await fsp.writeFile(gw.configPath, JSON.stringify(cfg));
  gw.proc.kill('SIGHUP');
  const served = await waitFor(async () => {
    const r = await chat(gw, { model: 'm', messages: user('after') });
    return r.headers.get('x-tollgate-backend') === 'hup-new' ? r : null;
  }, { timeoutMs: 5000, intervalMs: 50, what: 'the new backend to serve after SIGHUP' });
  assert.equal(served.json.choices[0].message.content, mockText('hup-new', 1));
  await oldNode.reset();
  for (let i = 0; i < 5; i++) {
    const r = await chat(gw, { model: 'm', messages: user(`n${i}`) });
    assert.equal(r.headers.get('x-tollgate-backend'), 'hup-new');
  }
  assert.equal(chatCalls(await oldNode.stats()), 0, 'the removed backend gets nothing');
  const extra = await chat(gw, { model: 'extra', messages: user('x') });
  assert.equal(extra.status, 200, extra.text);
  // The admin view and the probes follow the new list.
  const list = await waitFor(async () => {
    const bs = await admin.backends();
    return bs.length === 1 && bs[0].name === 'hup-new' && bs[0].last_probe_ago_ms !== null ? bs : null;
  }, { timeoutMs: 3000, what: 'the admin view of the new backend list' });
  assert.equal(list[0].url, newNode.v1);
  assert.equal(list[0].probe_ok, true);
  assert.equal(gw.proc.exitCode, null);
});

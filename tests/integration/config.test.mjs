// Configuration: --check-config diagnostics, YAML with ${VAR}, TOLLGATE_CONFIG /
// TOLLGATE_LISTEN, SIGHUP reload, and the open (keyless) mode.
import { test, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import {
  startMocknode, startGateway, backendFor, cleanup, runTollgate, writeTempFile, freePort,
  post, get, tryConnect, waitFor, mockText,
} from '../lib/harness.mjs';

after(cleanup);

const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
// A problem line is "path: message"; allow a prefix (e.g. the file name) before the path.
const problemLine = (p) => new RegExp(`(^|[\\s:])${escapeRe(p)}: \\S`, 'm');

const goodConfig = (extra = {}) => ({
  listen: '127.0.0.1:18080',
  keys: [{ name: 'k', key: 'sk-check' }],
  backends: [{ name: 'n1', url: 'http://127.0.0.1:9/v1',
    models: [{ name: 'm1', input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.08 }] }],
  ...extra,
});

describe('--check-config', () => {
  test('a good JSON config: exit 0 and "config ok"', async () => {
    const file = await writeTempFile('good.json', JSON.stringify(goodConfig()));
    const r = await runTollgate(['--check-config', '-c', file]);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout + r.stderr, /config ok/);
  });

  test('a full config with every documented key passes', async () => {
    const cfg = {
      listen: '127.0.0.1:18081', workers: 0, max_connections: 16384, connection_memory_bytes: 32768,
      max_body_bytes: 8388608, drain_timeout_ms: 10000, log_level: 'info',
      upstream: { connect_timeout_ms: 2000, first_byte_timeout_ms: 60000, idle_timeout_ms: 60000,
        total_timeout_ms: 600000, max_response_bytes: 33554432 },
      keys: [{ name: 'demo', key: 'sk-demo' }, { name: 'x', sha256: 'a'.repeat(64) }],
      backends: [{ name: 'node-a', url: 'http://127.0.0.1:9101/v1', api_key: 'secret',
        models: [{ name: 'llama-3.1-8b', upstream: 'meta-llama/Llama-3.1-8B', input_usd_per_mtok: 0.05, output_usd_per_mtok: 0.08 }] }],
      redis: { url: 'redis://127.0.0.1:6379/0' },
    };
    const file = await writeTempFile('full.json', JSON.stringify(cfg));
    const r = await runTollgate(['--check-config', '-c', file]);
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.match(r.stdout + r.stderr, /config ok/);
  });

  test('negative price and unknown keys: exit 1 with the path of every problem', async () => {
    const cfg = goodConfig({ frobnicate: true });
    cfg.backends[0].models[0].input_usd_per_mtok = -1;
    cfg.backends[0].colour = 'blue';
    const file = await writeTempFile('bad.json', JSON.stringify(cfg));
    const r = await runTollgate(['--check-config', '-c', file]);
    const out = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.code, 1, out);
    assert.match(out, problemLine('backends[0].models[0].input_usd_per_mtok'), out);
    assert.match(out, problemLine('backends[0].colour'), out);
    assert.match(out, problemLine('frobnicate'), out);
    assert.doesNotMatch(out, /config ok/);
  });

  test('problems in several places are all reported', async () => {
    const cfg = goodConfig({ upstream: { first_byte_timeout_ms: 1000, bogus_timeout: 5 } });
    cfg.backends.push({ name: 'n2', url: 42, models: [{ name: 'm2', input_usd_per_mtok: 1, output_usd_per_mtok: -0.5 }] });
    cfg.keys[0].extra = 'x';
    const file = await writeTempFile('bad2.json', JSON.stringify(cfg));
    const r = await runTollgate(['--check-config', '-c', file]);
    const out = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.code, 1, out);
    for (const p of ['upstream.bogus_timeout', 'backends[1].url', 'backends[1].models[0].output_usd_per_mtok', 'keys[0].extra']) {
      assert.match(out, problemLine(p), `missing ${p} in:\n${out}`);
    }
  });

  test('the routing keys: a config using all of them passes', async () => {
    const cfg = goodConfig({
      routing: { strategy: 'price-weighted', default_output_tokens: 128, retries: 1, deadline_ms: 5000, tie_tolerance: 0.05 },
      health: { interval_ms: 1000, timeout_ms: 500, eject_after_failures: 2, cooldown_ms: 2000, max_cooldown_ms: 60000 },
      admin_listen: '127.0.0.1:18089',
      admin_key: 'admin-key-0123456789',
    });
    Object.assign(cfg.backends[0], { max_inflight: 8, prices_url: 'http://127.0.0.1:9/api/v1/models', prices_refresh_s: 60 });
    for (const strategy of ['cheapest', 'price-weighted', 'latency']) {
      cfg.routing.strategy = strategy;
      const file = await writeTempFile('routing.json', JSON.stringify(cfg));
      const r = await runTollgate(['--check-config', '-c', file]);
      assert.equal(r.code, 0, `${strategy}: ${r.stdout}\n${r.stderr}`);
      assert.match(r.stdout + r.stderr, /config ok/);
    }
  });

  test('bad routing keys are reported with their paths', async () => {
    const cfg = goodConfig({
      routing: { strategy: 'fastest', colour: 'red' },
      health: { bogus: 1 },
      admin_listen: '127.0.0.1:18090',
      admin_key: 'short',
    });
    Object.assign(cfg.backends[0], { prices_refresh_s: 0 });
    const file = await writeTempFile('bad-routing.json', JSON.stringify(cfg));
    const r = await runTollgate(['--check-config', '-c', file]);
    const out = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.code, 1, out);
    for (const p of ['routing.strategy', 'routing.colour', 'health.bogus', 'admin_key', 'backends[0].prices_refresh_s']) {
      assert.match(out, problemLine(p), `missing ${p} in:\n${out}`);
    }
  });

  test('YAML config problems carry the same paths', async () => {
    const yaml = [
      'listen: "127.0.0.1:18082"',
      'backends:',
      '  - name: n1',
      '    url: "http://127.0.0.1:9/v1"',
      '    models:',
      '      - name: m1',
      '        input_usd_per_mtok: -3',
      '        output_usd_per_mtok: 1',
      '        flavour: vanilla',
      '',
    ].join('\n');
    const file = await writeTempFile('bad.yaml', yaml);
    const r = await runTollgate(['--check-config', '-c', file]);
    const out = `${r.stdout}\n${r.stderr}`;
    assert.equal(r.code, 1, out);
    assert.match(out, problemLine('backends[0].models[0].input_usd_per_mtok'), out);
    assert.match(out, problemLine('backends[0].models[0].flavour'), out);
  });

  test('unparsable JSON and a missing file fail', async () => {
    const file = await writeTempFile('broken.json', '{"listen": "127.0.0.1:1", ');
    const r = await runTollgate(['--check-config', '-c', file]);
    assert.notEqual(r.code, 0, `${r.stdout}\n${r.stderr}`);
    assert.ok((r.stdout + r.stderr).trim().length > 0, 'explains the failure');
    const missing = await runTollgate(['--check-config', '-c', file + '.does-not-exist']);
    assert.notEqual(missing.code, 0);
  });

  test('--version and --help exit 0', async () => {
    const v = await runTollgate(['--version']);
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout + v.stderr, /\d+\.\d+\.\d+/);
    const h = await runTollgate(['--help']);
    assert.equal(h.code, 0, h.stderr);
    assert.match(h.stdout + h.stderr, /--check-config/);
  });
});

describe('running configurations', () => {
  test('YAML config with ${VAR} substitution', async () => {
    const node = await startMocknode({ name: 'yaml-node', models: ['y-up'], tokens: 3, quiet: true });
    const port = await freePort();
    const yaml = [
      '# comments are fine',
      'listen: "${TG_TEST_LISTEN}"',
      'log_level: info',
      'keys:',
      '  - name: from-env',
      '    key: "${TG_TEST_KEY}"',
      'backends:',
      '  - name: "${TG_TEST_BACKEND_NAME}"',
      '    url: "${TG_TEST_NODE_URL}"',
      '    api_key: "${TG_TEST_NODE_KEY}"',
      '    models:',
      '      - name: yaml-model',
      '        upstream: y-up',
      '        input_usd_per_mtok: 0.5',
      '        output_usd_per_mtok: 1.5',
      '',
    ].join('\n');
    const env = {
      TG_TEST_LISTEN: `127.0.0.1:${port}`,
      TG_TEST_KEY: 'sk-from-environment',
      TG_TEST_BACKEND_NAME: 'env-named-backend',
      TG_TEST_NODE_URL: node.v1,
      TG_TEST_NODE_KEY: 'node-key-from-env',
    };
    const gw = await startGateway(null, { raw: yaml, ext: '.yaml', port, env });
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'yaml-model', messages: [{ role: 'user', content: 'x' }] }, { key: 'sk-from-environment' });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('yaml-node', 3));
    assert.equal(res.headers.get('x-tollgate-backend'), 'env-named-backend');
    const stats = await node.stats();
    assert.equal(stats.last.authorization, 'Bearer node-key-from-env');
    assert.equal(stats.last.body.model, 'y-up');
    // The literal placeholder is not a key.
    const lit = await post(gw.v1 + '/chat/completions',
      { model: 'yaml-model', messages: [{ role: 'user', content: 'x' }] }, { key: '${TG_TEST_KEY}' });
    assert.equal(lit.status, 401, lit.text);

    // --check-config on the same YAML with the environment: ok.
    const check = await runTollgate(['--check-config', '-c', gw.configPath], { env });
    assert.equal(check.code, 0, `${check.stdout}\n${check.stderr}`);
    assert.match(check.stdout + check.stderr, /config ok/);
    const stopped = await gw.stop('SIGTERM');
    assert.equal(stopped.code, 0);
  });

  test('TOLLGATE_CONFIG is used without -c, TOLLGATE_LISTEN overrides listen', async () => {
    const node = await startMocknode({ name: 'env-node', models: ['e1'], tokens: 1, quiet: true });
    const [configPort, envPort] = [await freePort(), await freePort()];
    const gw = await startGateway(
      { listen: `127.0.0.1:${configPort}`, backends: [backendFor(node)] },
      { useEnvConfig: true, port: envPort, env: { TOLLGATE_LISTEN: `127.0.0.1:${envPort}` } },
    );
    const res = await post(gw.v1 + '/chat/completions', { model: 'e1', messages: [{ role: 'user', content: 'x' }] });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('env-node', 1));
    assert.equal(await tryConnect(configPort), 'refused', 'the config listen address must not be used');
    assert.equal((await gw.stop()).code, 0);
  });

  test('without keys /v1/* is open and a warning is logged', async () => {
    const node = await startMocknode({ name: 'open-node', models: ['o1'], tokens: 2, quiet: true });
    const gw = await startGateway({ backends: [backendFor(node)] });
    const res = await post(gw.v1 + '/chat/completions', { model: 'o1', messages: [{ role: 'user', content: 'x' }] });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('open-node', 2));
    // Any bearer is irrelevant in open mode and is still not forwarded.
    const res2 = await post(gw.v1 + '/chat/completions', { model: 'o1', messages: [{ role: 'user', content: 'x' }] },
      { key: 'sk-whatever' });
    assert.equal(res2.status, 200, res2.text);
    assert.equal((await node.stats()).last.authorization, null);
    const models = await get(gw.v1 + '/models');
    assert.equal(models.status, 200);
    assert.ok(gw.logs.text().toLowerCase().includes('warn'), `no warning in logs:\n${gw.logs.text()}`);
    assert.equal((await gw.stop()).code, 0);
  });

  test('SIGHUP reloads the config', async () => {
    const node = await startMocknode({ name: 'hup-node', models: ['h1', 'h2'], tokens: 1, quiet: true });
    const cfg = { keys: [{ name: 'k', key: 'sk-hup' }], backends: [backendFor(node, { models: ['h1'] })] };
    const gw = await startGateway(cfg);
    const ids = async () => (await get(gw.v1 + '/models', { key: 'sk-hup' })).json.data.map((m) => m.id).sort();
    assert.deepEqual(await ids(), ['h1']);
    const missing = await post(gw.v1 + '/chat/completions', { model: 'h2', messages: [{ role: 'user', content: 'x' }] }, { key: 'sk-hup' });
    assert.equal(missing.status, 404);

    const written = JSON.parse(await fsp.readFile(gw.configPath, 'utf8'));
    written.backends = [backendFor(node, { models: ['h1', 'h2'] })];
    written.keys = [{ name: 'k2', key: 'sk-hup-2' }];
    await fsp.writeFile(gw.configPath, JSON.stringify(written));
    gw.proc.kill('SIGHUP');
    await waitFor(async () => {
      const r = await get(gw.v1 + '/models', { key: 'sk-hup-2' });
      return r.status === 200 && r.json.data.some((m) => m.id === 'h2');
    }, { timeoutMs: 5000, what: 'model h2 after SIGHUP' });
    const res = await post(gw.v1 + '/chat/completions',
      { model: 'h2', messages: [{ role: 'user', content: 'x' }] }, { key: 'sk-hup-2' });
    assert.equal(res.status, 200, res.text);
    assert.equal(res.json.choices[0].message.content, mockText('hup-node', 1));
    const old = await get(gw.v1 + '/models', { key: 'sk-hup' });
    assert.equal(old.status, 401, 'the removed key no longer works');
    assert.equal(gw.proc.exitCode, null, 'still running');
    assert.equal((await gw.stop()).code, 0);
  });

  test('SIGHUP with a broken config keeps the old one running', async () => {
    const node = await startMocknode({ name: 'hup2-node', models: ['g1'], tokens: 1, quiet: true });
    const gw = await startGateway({ backends: [backendFor(node)] });
    await fsp.writeFile(gw.configPath, '{"listen": ');
    const logged = gw.logs.stdout.length + gw.logs.stderr.length;
    gw.proc.kill('SIGHUP');
    // The failed reload is logged; wait for that (bounded), then prove the old config still serves.
    await waitFor(async () => gw.logs.stdout.length + gw.logs.stderr.length > logged,
      { timeoutMs: 3000, what: 'a log line about the reload' }).catch(() => {});
    const res = await post(gw.v1 + '/chat/completions', { model: 'g1', messages: [{ role: 'user', content: 'x' }] });
    assert.equal(res.status, 200, res.text);
    assert.equal(gw.proc.exitCode, null);
    assert.equal((await gw.stop()).code, 0);
  });
});

// What operators read, printed exactly:
// - amounts in USD are plain decimals with at most 10 decimals and no float noise, the same in
//   the x-tollgate-cost-usd header, the stream's usage chunk, the request's log line and the
//   admin JSON (prices), never jansson's %.17g (6.0000000000000002e-06, 0.029999999999999999);
// - a reload that fails logs one JSON line (reload_failed) with every problem of the new
//   config, and the old config keeps serving.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import fsp from 'node:fs/promises';
import {
  startMocknode, startGateway, backendFor, cleanup, post, streamPost, parseEvents, adminListener,
  waitFor, runTollgate, writeTempFile,
} from '../lib/harness.mjs';

after(cleanup);

const KEY = 'sk-operator-output';
const keys = [{ name: 'ops', key: KEY }];
// Prices whose products carry float noise: 0.03 itself prints as 0.029999999999999999.
const IN = 0.03;
const OUT = 0.1;

// The gateway's formatting: 10 decimals, trailing zeros dropped, one kept after the point.
const usdText = (x) => x.toFixed(10).replace(/0+$/, '').replace(/\.$/, '.0');
const cost = (u) => (u.prompt_tokens * IN + u.completion_tokens * OUT) / 1e6;
const PLAIN = /^-?\d+\.\d{1,10}$/;

describe('USD amounts', () => {
  let node;
  let gw;
  let admin;
  before(async () => {
    node = await startMocknode({ name: 'ops-node', models: ['m'], tokens: 6, quiet: true });
    admin = await adminListener();
    gw = await startGateway({ keys, ...admin.config, backends: [backendFor(node, { prices: [IN, OUT] })] });
  });

  test('the header and the log line print the same plain decimal', async () => {
    const r = await post(gw.v1 + '/chat/completions',
      { model: 'm', messages: [{ role: 'user', content: 'hello there' }] }, { key: KEY });
    assert.equal(r.status, 200, r.text);
    const header = r.headers.get('x-tollgate-cost-usd');
    assert.match(header, PLAIN);
    assert.equal(header, usdText(cost(r.json.usage)));
    const id = r.headers.get('x-request-id');
    let line;
    await waitFor(() => (line = gw.logs.stdout.find((l) => l.includes(`"request_id":"${id}"`))),
      { what: 'the request log line' });
    const m = /"cost_usd":([^,}]*)/.exec(line);
    assert.ok(m, line);
    assert.equal(m[1], header, `the log line's cost is written as the header's: ${line}`);
    assert.equal(JSON.parse(line).cost_usd, Number(header), 'still a JSON number');
  });

  test('the stream usage chunk prints the cost as the header would', async () => {
    const r = await streamPost(gw.v1 + '/chat/completions',
      { model: 'm', messages: [{ role: 'user', content: 'hello' }], stream: true, stream_options: { include_usage: true } },
      { key: KEY });
    assert.equal(r.status, 200, r.raw);
    const chunk = parseEvents(r.events).find((p) => p.json?.usage);
    assert.ok(chunk, r.raw);
    const m = /"cost":([^,}]*)/.exec(chunk.data);
    assert.ok(m, chunk.data);
    assert.match(m[1], PLAIN, `no exponent, no float noise: ${chunk.data}`);
    assert.equal(m[1], usdText(cost(chunk.json.usage)), chunk.data);
    assert.equal(typeof chunk.json.usage.cost, 'number');
  });

  test('admin JSON prints prices as configured (0.03, not 0.029999999999999999)', async () => {
    const r = await admin.get('/admin/backends');
    assert.equal(r.status, 200, r.text);
    assert.ok(r.text.includes('"input_usd_per_mtok":0.03,'), r.text);
    assert.ok(r.text.includes('"output_usd_per_mtok":0.1,'), r.text);
    for (const m of r.text.matchAll(/"(\w*usd\w*|cost)":(-?[\d.eE+-]+)/g)) {
      assert.match(m[2], PLAIN, `${m[1]} is printed as an amount: ${m[0]}`);
    }
    assert.equal(r.json.backends[0].models[0].input_usd_per_mtok, IN);
  });
});

describe('reload_failed', () => {
  test('one JSON line with every problem; the old config keeps serving', async () => {
    const node = await startMocknode({ name: 'reload-node', models: ['m'], quiet: true });
    const gw = await startGateway({ keys, backends: [backendFor(node)] });
    const bad = {
      keys,
      workers: 'many',
      backends: [{ name: 'b', url: 'not a url', models: [{ name: 'm', input_usd_per_mtok: -1 }] }],
    };
    await fsp.writeFile(gw.configPath, JSON.stringify(bad));
    const stderrBefore = gw.logs.stderr.length;
    gw.proc.kill('SIGHUP');
    let line;
    await waitFor(() => (line = gw.logs.json().find((l) => l.event === 'reload_failed')),
      { what: 'the reload_failed line' });
    assert.equal(line.level, 'error');
    assert.ok(Array.isArray(line.problems), JSON.stringify(line));
    assert.ok(line.problems.length >= 3, `every problem: ${JSON.stringify(line.problems)}`);
    for (const what of ['workers', 'url', 'input_usd_per_mtok']) {
      assert.ok(line.problems.some((p) => p.includes(what)), `a problem names ${what}: ${JSON.stringify(line.problems)}`);
    }
    assert.equal(line.problems_omitted, 0);
    assert.equal(gw.logs.stderr.length, stderrBefore, `nothing on stderr: ${gw.logs.stderr.slice(stderrBefore).join('\n')}`);
    const r = await post(gw.v1 + '/chat/completions', { model: 'm', messages: [{ role: 'user', content: 'x' }] }, { key: KEY });
    assert.equal(r.status, 200, r.text);
  });
});

describe('backends[].provider (gen_ai_provider_name)', () => {
  test('a short name in the registry alphabet, else the config is refused', async () => {
    const cfg = (provider) => JSON.stringify({ backends: [{ name: 'b', url: 'http://127.0.0.1:9/v1', provider,
      models: [{ name: 'm', input_usd_per_mtok: 1, output_usd_per_mtok: 1 }] }] });
    for (const ok of ['openai', 'aws.bedrock', 'together_ai', 'x-1']) {
      const r = await runTollgate(['--check-config', '-c', await writeTempFile('ok.json', cfg(ok))]);
      assert.equal(r.code, 0, `${ok}: ${r.stderr}`);
    }
    for (const bad of ['', 'OpenAI', 'a b', 'x'.repeat(65), 'v"llm']) {
      const r = await runTollgate(['--check-config', '-c', await writeTempFile('bad.json', cfg(bad))]);
      assert.notEqual(r.code, 0, `${JSON.stringify(bad)} is refused`);
      assert.match(r.stderr + r.stdout, /backends\[0\]\.provider/);
    }
  });
});

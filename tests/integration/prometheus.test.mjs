// /metrics as Prometheus and Grafana see it: a real gateway (four priced backends, one of them
// broken, Redis, two caller keys) takes known traffic while a real `prometheus` scrapes its
// admin listener every second with the admin key. Then:
// - `promtool check metrics` finds nothing wrong with the exposition, and every series of the
//   metrics spec is there with its type and exactly its labels;
// - PromQL over the scraped data gives back what was sent: requests by route/model/status,
//   billed tokens, USD per backend/model and per key, routing and cache savings, backend
//   attempts, health, ejections and prices;
// - every query of the Grafana dashboard (deploy/grafana/dashboards/tollgate.json) parses and
//   returns data, its variables have values, and deploy/grafana/README.md explains each panel.
// Needs `prometheus` and `promtool` on PATH (Debian package `prometheus`, installed by make deps).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  REPO_ROOT, startMocknode, startGateway, backendFor, cleanup, post, get, streamPost, parseEvents,
  adminListener, freePort, makeTempDir, waitFor, runTollgate,
} from '../lib/harness.mjs';
import { startRedis } from '../lib/redis.mjs';

const DASHBOARD = path.join(REPO_ROOT, 'deploy/grafana/dashboards/tollgate.json');
const GRAFANA_README = path.join(REPO_ROOT, 'deploy/grafana/README.md');

const X = 'pm-x'; // served by three healthy backends at different prices
const Y = 'pm-y'; // served only by a backend that answers 500
// Prices in USD per million tokens: [input, output]. Whole numbers keep every cost an exact
// multiple of 1e-6, so the header's 10 decimals carry it without rounding.
const PRICES = { 'pm-cheap': [1, 2], 'pm-mid': [2, 3], 'pm-dear': [4, 6], 'pm-broken': [1, 1] };
const KEYS = { 'team-a': 'sk-prom-team-a-0001', 'team-b': 'sk-prom-team-b-0002' };
const N_CHAT = 5; // whole chat answers
const M_STREAM = 3; // streamed chat answers with include_usage

// The GenAI attributes of a request a backend answered (metrics/genai.c).
const GENAI_PAIR = ['gen_ai_operation_name', 'gen_ai_provider_name', 'gen_ai_request_model',
  'gen_ai_response_model', 'server_address', 'server_port', 'tollgate_backend'];
// The metrics spec: type and label names of each series (histograms: without `le`); a family
// whose series carry different label sets lists each set.
const SPEC = {
  tollgate_requests_total: ['counter', ['route', 'model', 'status']],
  tollgate_request_duration_seconds: ['histogram', ['route']],
  tollgate_time_to_first_token_seconds: ['histogram', ['model']],
  tollgate_overhead_seconds: ['histogram', []],
  tollgate_backend_requests_total: ['counter', ['backend', 'model', 'outcome']],
  tollgate_backend_duration_seconds: ['histogram', ['backend']],
  tollgate_tokens_total: ['counter', ['backend', 'model', 'type']],
  tollgate_cost_usd_total: ['counter', ['backend', 'model']],
  tollgate_key_cost_usd_total: ['counter', ['key']],
  tollgate_routing_savings_usd_total: ['counter', []],
  tollgate_cache_requests_total: ['counter', ['result']],
  tollgate_cache_savings_usd_total: ['counter', []],
  tollgate_backend_up: ['gauge', ['backend']],
  tollgate_backend_ejections_total: ['counter', ['backend']],
  tollgate_backend_price_usd_per_mtok: ['gauge', ['backend', 'model', 'type']],
  tollgate_backend_inflight: ['gauge', ['backend']],
  tollgate_inflight_requests: ['gauge', []],
  tollgate_retries_total: ['counter', []],
  tollgate_streams_total: ['counter', []],
  tollgate_redis_errors_total: ['counter', []],
  tollgate_build_info: ['gauge', ['version']],
  // Served by a backend: by its pair; answered otherwise (the cache) or failed: by the model
  // asked, and error_type when it failed.
  gen_ai_client_operation_duration_seconds: ['histogram', [GENAI_PAIR,
    ['gen_ai_operation_name', 'gen_ai_request_model'],
    ['gen_ai_operation_name', 'gen_ai_request_model', 'error_type']]],
  gen_ai_client_token_usage: ['histogram', [...GENAI_PAIR, 'gen_ai_token_type']],
  gen_ai_server_time_to_first_token_seconds: ['histogram', GENAI_PAIR],
  gen_ai_client_operation_time_to_first_chunk_seconds: ['histogram', GENAI_PAIR],
  tollgate_upstream_errors_total: ['counter', []],
  tollgate_ledger_records_total: ['counter', ['outcome']],
  tollgate_ledger_spool_bytes: ['gauge', []],
  tollgate_redis_timeouts_total: ['counter', []],
  tollgate_redis_reconnects_total: ['counter', []],
  tollgate_redis_up: ['gauge', []],
};

// ---------------------------------------------------------------------------
// Prometheus
// ---------------------------------------------------------------------------

function onPath(cmd) {
  return (process.env.PATH ?? '').split(path.delimiter).some((dir) => {
    try { fs.accessSync(path.join(dir, cmd), fs.constants.X_OK); return true; } catch { return false; }
  });
}

let prom = null; // { proc, url, logs }

// Not in the harness's registry (it only tracks what it spawns): stopped in after(), and
// killed on exit like the harness's own processes.
process.on('exit', () => {
  if (prom && prom.proc.exitCode === null && prom.proc.signalCode === null) prom.proc.kill('SIGKILL');
});

async function startPrometheus(scrapeConfigs) {
  const dir = await makeTempDir('tollgate-prom-');
  const configPath = path.join(dir, 'prometheus.yml');
  // JSON is YAML.
  await fsp.writeFile(configPath, JSON.stringify({
    global: { scrape_interval: '1s', scrape_timeout: '1s', evaluation_interval: '1s' },
    scrape_configs: scrapeConfigs,
  }, null, 2));
  let last_err;
  for (let attempt = 0; attempt < 3; attempt++) {
    const port = await freePort();
    const proc = spawn('prometheus', [
      `--config.file=${configPath}`, `--storage.tsdb.path=${path.join(dir, `data${attempt}`)}`,
      `--web.listen-address=127.0.0.1:${port}`, '--storage.tsdb.retention.time=1h', '--log.level=warn',
    ], { stdio: ['ignore', 'pipe', 'pipe'] });
    const logs = [];
    proc.stdout.setEncoding('utf8').on('data', (d) => logs.push(d));
    proc.stderr.setEncoding('utf8').on('data', (d) => logs.push(d));
    const p = { proc, url: `http://127.0.0.1:${port}`, logs };
    prom = p;
    const died = new Promise((_, reject) => {
      proc.once('error', reject);
      proc.once('exit', (code, sig) => reject(new Error(`prometheus exited (code ${code}, signal ${sig}): ${logs.join('')}`)));
    });
    died.catch(() => {});
    try {
      await Promise.race([died, waitFor(async () => {
        const r = await fetch(p.url + '/-/ready', { signal: AbortSignal.timeout(1000) });
        await r.arrayBuffer();
        return r.status === 200;
      }, { timeoutMs: 15000, intervalMs: 100, what: 'prometheus /-/ready' })]);
      return p;
    } catch (err) {
      last_err = err;
      await stopPrometheus();
      if (!/address already in use/i.test(logs.join(''))) break;
    }
  }
  throw last_err;
}

async function stopPrometheus() {
  const p = prom;
  prom = null;
  if (!p || p.proc.exitCode !== null || p.proc.signalCode !== null) return;
  const gone = once(p.proc, 'exit');
  p.proc.kill('SIGKILL');
  await Promise.race([gone, sleep(3000)]);
}

// The raw answer of GET /api/v1/query: {status, data: {resultType, result}, errorType, error}.
async function promQuery(expr) {
  const u = new URL('/api/v1/query', prom.url);
  u.searchParams.set('query', expr);
  const res = await fetch(u, { signal: AbortSignal.timeout(5000) });
  return res.json();
}

// An instant vector as {"label1/label2": value} over the given label names.
async function vector(expr, labels = []) {
  const r = await promQuery(expr);
  assert.equal(r.status, 'success', `${expr}: ${r.errorType} ${r.error}`);
  assert.equal(r.data.resultType, 'vector', expr);
  const out = {};
  for (const s of r.data.result) out[labels.map((l) => s.metric[l] ?? '').join('/')] = Number(s.value[1]);
  return out;
}

// One number (the only element of a vector), or null when the vector is empty.
async function scalar(expr) {
  const v = Object.values(await vector(expr));
  assert.ok(v.length <= 1, `${expr} gave ${v.length} series`);
  return v.length ? v[0] : null;
}

const close = (got, want) => got !== null && Math.abs(got - want) <= 1e-9 * Math.max(Math.abs(want), 1e-12);

// ---------------------------------------------------------------------------
// The stack and the traffic
// ---------------------------------------------------------------------------

let gw;
let nodePorts; // mocknode name -> port
let admin;
let redis;
let version;
let metricsText; // /metrics right after the traffic
const answers = []; // one entry per request sent: what the test expects the metrics to count

const user = (content) => [{ role: 'user', content }];

async function send(route, model, key, body, { stream = false } = {}) {
  const url = gw.v1 + (route === 'completions' ? '/completions' : '/chat/completions');
  const a = { route, model, key, stream };
  if (stream) {
    const r = await streamPost(url, body, { key: KEYS[key] ?? key });
    a.status = r.status;
    a.backend = r.headers['x-tollgate-backend'] ?? null;
    a.cache = r.headers['x-tollgate-cache'] ?? null;
    const usage = parseEvents(r.events).find((e) => e.json?.usage)?.json.usage;
    assert.ok(usage, `a usage chunk in ${r.raw}`);
    a.usage = { prompt_tokens: usage.prompt_tokens, completion_tokens: usage.completion_tokens };
    a.cost = usage.cost;
  } else {
    const r = await post(url, body, { key: KEYS[key] ?? key });
    a.status = r.status;
    a.backend = r.headers.get('x-tollgate-backend');
    a.cache = r.headers.get('x-tollgate-cache');
    a.body = r.text;
    if (r.status === 200) a.usage = r.json.usage;
    const h = r.headers.get('x-tollgate-cost-usd');
    a.cost = h === null ? null : Number(h);
  }
  answers.push(a);
  return a;
}

// Two rounds of every kind of request: the first before the baseline scrape (so that each
// series exists and rate() over the second round is not 0/0), the second after it.
async function sendTraffic(round) {
  for (let i = 0; i < N_CHAT; i++) {
    const a = await send('chat_completions', X, i % 2 ? 'team-b' : 'team-a',
      { model: X, messages: user(`whole answer ${round}.${i}${'!'.repeat(i)}`) });
    assert.equal(a.status, 200, JSON.stringify(a));
    assert.equal(a.backend, 'pm-cheap', 'the cheapest backend serves');
    assert.equal(typeof a.cost, 'number', 'x-tollgate-cost-usd is set');
  }
  for (let i = 0; i < M_STREAM; i++) {
    const a = await send('chat_completions', X, 'team-b', { model: X, stream: true,
      stream_options: { include_usage: true }, messages: user(`stream ${round}.${i}`) }, { stream: true });
    assert.equal(a.status, 200, JSON.stringify(a));
    assert.equal(typeof a.cost, 'number', 'the usage chunk carries the cost');
  }
  // A deterministic question: a miss in the first round, asked until the cache answers in the second.
  const cached = { model: X, temperature: 0, max_tokens: 3, messages: user('cache this answer') };
  if (round === 0) {
    assert.equal((await send('chat_completions', X, 'team-a', cached)).cache, 'miss');
  } else {
    await waitFor(async () => (await send('chat_completions', X, 'team-a', cached)).cache === 'hit',
      { timeoutMs: 3000, intervalMs: 50, what: 'a cache hit for the repeated question' });
  }
  const c = await send('completions', X, 'team-a', { model: X, prompt: `once upon a time ${round}`, max_tokens: 2 });
  assert.equal(c.status, 200, JSON.stringify(c));
  const models = await get(gw.v1 + '/models', { key: KEYS['team-a'] });
  assert.equal(models.status, 200, models.text);
  answers.push({ route: 'models', model: null, status: 200 });
  // Errors: an unknown model (404), a bad key (401, its model label is not pinned down), and
  // the broken backend: 502 for its first request (its one node tried twice, a same-node
  // retry), which ejects it (eject_after_failures 2), then 503.
  assert.equal((await send('chat_completions', 'other', 'team-a', { model: 'pm-nope', messages: user('?') })).status, 404);
  const bad = await send('chat_completions', X, 'sk-prom-not-a-key-0000', { model: X, messages: user('?') });
  assert.equal(bad.status, 401);
  bad.model = null;
  for (let i = 0; i < 1 + round; i++) await send('chat_completions', Y, 'team-b', { model: Y, messages: user('y') });
}

// The answers billed by a backend (cache hits are not).
const billed = () => answers.filter((a) => a.status === 200 && a.usage && a.cache !== 'hit');

before(async () => {
  const missing = ['prometheus', 'promtool'].filter((c) => !onPath(c));
  if (missing.length) {
    throw new Error(`${missing.join(' and ')} not found on PATH: this suite needs a real Prometheus ` +
      '(Debian package "prometheus"; `make deps` installs it, or apt-get install prometheus)');
  }
  version = (await runTollgate(['--version'])).stdout.trim().split(/\s+/).pop();

  const nodes = await Promise.all([
    startMocknode({ name: 'pm-cheap', models: [X], tokens: 3, quiet: true }),
    startMocknode({ name: 'pm-mid', models: [X], tokens: 3, quiet: true }),
    startMocknode({ name: 'pm-dear', models: [X], tokens: 3, quiet: true }),
    startMocknode({ name: 'pm-broken', models: [Y], fault: '500', quiet: true }),
  ]);
  nodePorts = Object.fromEntries(nodes.map((n) => [n.name, String(n.port)]));
  redis = await startRedis();
  admin = await adminListener();
  gw = await startGateway({
    ...admin.config,
    log_level: 'warn',
    workers: 1,
    keys: Object.entries(KEYS).map(([name, key]) => ({ name, key })),
    redis: { url: redis.url },
    health: { interval_ms: 60000, eject_after_failures: 2, cooldown_ms: 60000, max_cooldown_ms: 60000 },
    backends: nodes.map((n) => backendFor(n, { prices: PRICES[n.name] })),
  });

  const target = { targets: [admin.url.replace('http://', '')] };
  await startPrometheus([
    { job_name: 'tollgate', metrics_path: '/metrics', static_configs: [target],
      authorization: { type: 'Bearer', credentials: admin.key } },
    // Proves the admin key is what lets the scrape in.
    { job_name: 'tollgate-no-key', metrics_path: '/metrics', static_configs: [target] },
  ]);
  const lastScrape = () => scalar('timestamp(up{job="tollgate"})');
  const scrapeAfter = (t, what) => waitFor(async () => { const ts = await lastScrape(); return ts > t ? ts : null; },
    { timeoutMs: 10000, intervalMs: 100, what });
  const settled = async () => { await sleep(50); return Date.now() / 1000; }; // the last answers' bookkeeping

  await sendTraffic(0);
  await scrapeAfter(await settled(), 'a scrape after the first round of traffic');
  assert.equal(await scalar('up{job="tollgate"}'), 1, 'prometheus scrapes the admin listener');
  await sendTraffic(1);
  const tEnd = await settled();
  metricsText = (await admin.get('/metrics')).text;
  // Two scrapes that started after the traffic: the final values, and two samples of each
  // series the second round created.
  const t1 = await scrapeAfter(tEnd, 'a scrape after the traffic');
  await scrapeAfter(t1 + 0.5, 'a second scrape after the traffic');
});

after(async () => {
  await stopPrometheus();
  await redis?.stop();
  await cleanup();
});

// ---------------------------------------------------------------------------
// The exposition
// ---------------------------------------------------------------------------

test('promtool check metrics finds nothing wrong with /metrics', () => {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: metricsText, encoding: 'utf8', timeout: 10000 });
  assert.equal(r.error, undefined, String(r.error));
  assert.equal(`${r.stdout}${r.stderr}`.trim(), '', 'promtool has no complaint');
  assert.equal(r.status, 0);
});

test('every series of the metrics spec is exposed with its type and exactly its labels', () => {
  const types = {};
  const labels = {}; // family -> Set of label-name lists seen
  for (const line of metricsText.split('\n')) {
    let m = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (m) { types[m[1]] = m[2]; continue; }
    if (!line || line.startsWith('#')) continue;
    m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    assert.ok(m, `bad line: ${line}`);
    let family = m[1];
    let names = [...(m[2] ?? '').matchAll(/([a-zA-Z_]\w*)="(?:[^"\\]|\\.)*"/g)].map((x) => x[1]);
    const h = /^(.*)_(bucket|sum|count)$/.exec(family);
    if (h && types[h[1]] === 'histogram') {
      family = h[1];
      names = names.filter((n) => !(h[2] === 'bucket' && n === 'le'));
    }
    (labels[family] ??= new Set()).add(names.slice().sort().join(','));
  }
  const problems = [];
  for (const [name, [type, want]] of Object.entries(SPEC)) {
    if (types[name] !== type) problems.push(`${name}: TYPE ${types[name] ?? 'missing'}, spec says ${type}`);
    const seen = labels[name];
    if (!seen) { problems.push(`${name}: no samples`); continue; }
    const sets = (Array.isArray(want[0]) ? want : [want]).map((w) => w.slice().sort().join(','));
    for (const got of seen) {
      if (!sets.includes(got)) problems.push(`${name}: labels {${got}}, spec says {${sets.join('} or {')}}`);
    }
    for (const w of sets) if (!seen.has(w)) problems.push(`${name}: no series with labels {${w}}`);
  }
  assert.deepEqual(problems, []);
});

// ---------------------------------------------------------------------------
// PromQL over what Prometheus scraped
// ---------------------------------------------------------------------------

test('Prometheus scrapes the admin listener with the admin key, and not without it', async () => {
  assert.equal(await scalar('up{job="tollgate"}'), 1);
  assert.equal(await scalar('up{job="tollgate-no-key"}'), 0, 'the admin listener refuses a scrape without the key');
  assert.equal(await scalar(`tollgate_build_info{version="${version}"}`), 1, `build_info for ${version}`);
});

test('requests by route, model and status are what was sent', async () => {
  const byRouteStatus = {};
  const byRouteModelStatus = {};
  for (const a of answers) {
    const rs = `${a.route}/${a.status}`;
    byRouteStatus[rs] = (byRouteStatus[rs] ?? 0) + 1;
    if (a.model !== null) {
      const rms = `${a.route}/${a.model}/${a.status}`;
      byRouteModelStatus[rms] = (byRouteModelStatus[rms] ?? 0) + 1;
    }
  }
  // Every answered request on the main listener (route "other" also holds the harness's /healthz).
  assert.deepEqual(await vector('sum by (route, status) (tollgate_requests_total{route!="other"}) > 0',
    ['route', 'status']), byRouteStatus);
  const got = await vector('sum by (route, model, status) (tollgate_requests_total{route!="other"})',
    ['route', 'model', 'status']);
  const want = Object.fromEntries(Object.keys(byRouteModelStatus).map((k) => [k, got[k]]));
  assert.deepEqual(want, byRouteModelStatus, `all series: ${JSON.stringify(got)}`);
  const streams = answers.filter((a) => a.stream).length;
  assert.equal(await scalar('sum(tollgate_streams_total)'), streams);
  assert.equal(await scalar('sum(tollgate_retries_total)'), 1,
    'nothing was moved to another backend; the broken node was asked again once');
  const served = billed().filter((a) => a.model === X).length;
  assert.equal(await scalar(`sum(tollgate_time_to_first_token_seconds_count{model="${X}"})`), served,
    'one time to first token per answer a backend served');
  assert.equal(await scalar(`sum(gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name="chat",gen_ai_request_model="${X}"})`),
    streams, 'gen_ai time to first token: streams only');
  assert.ok((await scalar('sum(tollgate_overhead_seconds_count)')) >= served, 'the gateway overhead is measured');
});

test('gen_ai series: served by the pair that answered, failed by the model asked and error_type', async () => {
  const b = billed();
  const count = (f) => answers.filter(f).length;
  // Every answer a backend served, by operation, with the backend's GenAI attributes.
  const pair = `gen_ai_provider_name="openai",gen_ai_request_model="${X}",gen_ai_response_model="${X}",` +
    `server_address="127.0.0.1",server_port="${nodePorts['pm-cheap']}",tollgate_backend="pm-cheap"`;
  assert.deepEqual(await vector(`sum by (gen_ai_operation_name) (gen_ai_client_operation_duration_seconds_count{${pair}})`,
    ['gen_ai_operation_name']), {
    chat: b.filter((a) => a.route === 'chat_completions').length,
    text_completion: b.filter((a) => a.route === 'completions').length,
  });
  assert.equal(await scalar(`sum(gen_ai_client_token_usage_count{${pair},gen_ai_token_type="input"})`), b.length);
  assert.equal(await scalar(`sum(gen_ai_client_token_usage_sum{${pair},gen_ai_token_type="output"})`),
    b.reduce((n, a) => n + a.usage.completion_tokens, 0), 'output tokens by pair');
  // Nothing served is left without its backend's attributes.
  assert.equal(await scalar('sum(gen_ai_client_operation_duration_seconds_count{gen_ai_provider_name!="",' +
    'tollgate_backend!="pm-cheap"})'), null, 'only pm-cheap served');
  // Answered without a backend: the cache hits, under the model asked, with no error_type.
  const hits = count((a) => a.cache === 'hit');
  assert.ok(hits >= 1);
  assert.equal(await scalar(`sum(gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",` +
    `gen_ai_request_model="${X}",gen_ai_provider_name="",error_type=""})`), hits);
  // Failed: the model asked when it is a configured one (never the name a caller sent), and
  // the gateway's error code.
  const failed = await vector('sum by (gen_ai_request_model, error_type) ' +
    '(gen_ai_client_operation_duration_seconds_count{error_type!=""})', ['gen_ai_request_model', 'error_type']);
  const ys = count((a) => a.model === Y);
  const yFailed = Object.entries(failed).filter(([k]) => k.startsWith(`${Y}/`));
  assert.equal(yFailed.reduce((n, [, v]) => n + v, 0), ys, JSON.stringify(failed));
  for (const [k] of yFailed) assert.match(k, /\/(bad_backend_response|no_healthy_backend)$/, k);
  assert.equal(failed['other/model_not_found'], count((a) => a.status === 404), JSON.stringify(failed));
  assert.equal(failed['other/invalid_api_key'], count((a) => a.status === 401), 'refused before its body was read');
  assert.equal(Object.keys(failed).some((k) => k.includes('pm-nope')), false, 'no label from a caller');
  // The time to the first chunk relayed to the caller: streams only, by pair.
  const streams = count((a) => a.stream);
  assert.equal(await scalar(`sum(gen_ai_client_operation_time_to_first_chunk_seconds_count{${pair}})`), streams);
  assert.equal(await scalar(`sum(gen_ai_server_time_to_first_token_seconds_count{${pair}})`), streams);
  // Each stream's first chunk reached the caller no sooner than the node's first event.
  assert.ok(await scalar(`sum(gen_ai_client_operation_time_to_first_chunk_seconds_sum{${pair}})`) >=
    await scalar(`sum(gen_ai_server_time_to_first_token_seconds_sum{${pair}})`));
});

test('billed tokens and USD equal the usage and the costs the answers reported', async () => {
  const b = billed();
  const sum = (list, f) => list.reduce((n, a) => n + f(a), 0);
  const problems = [];
  const check = (what, got, want) => {
    if (!close(got, want)) problems.push(`${what}: Prometheus says ${got}, the answers say ${want}`);
  };
  // Tokens: exact, per backend, model and type; cache hits are not billed.
  assert.deepEqual(await vector('sum by (backend, model, type) (tollgate_tokens_total) > 0', ['backend', 'model', 'type']), {
    [`pm-cheap/${X}/input`]: sum(b, (a) => a.usage.prompt_tokens),
    [`pm-cheap/${X}/output`]: sum(b, (a) => a.usage.completion_tokens),
  });
  // USD: the sum of x-tollgate-cost-usd (whole answers) and usage.cost (streams).
  const priced = answers.filter((a) => typeof a.cost === 'number');
  assert.ok(priced.length >= 2 * (N_CHAT + M_STREAM + 2), 'costs were reported');
  const cost = await vector('sum by (backend, model) (tollgate_cost_usd_total) > 0', ['backend', 'model']);
  assert.deepEqual(Object.keys(cost), [`pm-cheap/${X}`], JSON.stringify(cost));
  check('cost_usd_total', cost[`pm-cheap/${X}`], sum(priced, (a) => a.cost));
  const keyCost = await vector('sum by (key) (tollgate_key_cost_usd_total) > 0', ['key']);
  assert.deepEqual(Object.keys(keyCost).sort(), Object.keys(KEYS), JSON.stringify(keyCost));
  for (const k of Object.keys(KEYS)) {
    check(`key_cost_usd_total{key="${k}"}`, keyCost[k], sum(priced.filter((a) => a.key === k), (a) => a.cost));
  }
  // Routing savings: each billed answer at the priciest healthy candidate (pm-dear) minus what it cost.
  const [ci, co] = PRICES['pm-cheap'];
  const [di, dout] = PRICES['pm-dear'];
  check('routing_savings_usd_total', await scalar('sum(tollgate_routing_savings_usd_total)'),
    sum(b, (a) => (a.usage.prompt_tokens * (di - ci) + a.usage.completion_tokens * (dout - co)) / 1e6));
  // Cache: each hit would have cost what its miss cost (same answer, same backend and price).
  const hits = answers.filter((a) => a.cache === 'hit');
  const misses = answers.filter((a) => a.cache === 'miss');
  const cache = await vector('sum by (result) (tollgate_cache_requests_total)', ['result']);
  assert.equal(cache.hit, hits.length, JSON.stringify(cache));
  assert.equal(cache.miss, misses.length, JSON.stringify(cache));
  check('cache_savings_usd_total', await scalar('sum(tollgate_cache_savings_usd_total)'),
    sum(hits, (h) => misses.find((m) => m.body === h.body).cost));
  assert.deepEqual(problems, []);
});

test('backend attempts, health, ejections, prices and in-flight gauges', async () => {
  assert.deepEqual(answers.filter((a) => a.model === Y).map((a) => a.status), [502, 503, 503],
    'the broken backend is ejected after 2 failures (its first request tried it twice)');
  const brokenTries = 2;
  assert.deepEqual(await vector('sum by (backend, model, outcome) (tollgate_backend_requests_total) > 0',
    ['backend', 'model', 'outcome']), {
    [`pm-cheap/${X}/success`]: billed().length,
    [`pm-broken/${Y}/server_error`]: brokenTries,
  });
  assert.deepEqual(await vector('max by (backend) (tollgate_backend_up)', ['backend']),
    { 'pm-cheap': 1, 'pm-mid': 1, 'pm-dear': 1, 'pm-broken': 0 });
  assert.deepEqual(await vector('sum by (backend) (tollgate_backend_ejections_total)', ['backend']),
    { 'pm-cheap': 0, 'pm-mid': 0, 'pm-dear': 0, 'pm-broken': 1 });
  const prices = {};
  for (const [name, [i, o]] of Object.entries(PRICES)) {
    const model = name === 'pm-broken' ? Y : X;
    prices[`${name}/${model}/input`] = i;
    prices[`${name}/${model}/output`] = o;
  }
  assert.deepEqual(await vector('tollgate_backend_price_usd_per_mtok', ['backend', 'model', 'type']), prices);
  assert.deepEqual(await vector('sum by (backend) (tollgate_backend_inflight)', ['backend']),
    { 'pm-cheap': 0, 'pm-mid': 0, 'pm-dear': 0, 'pm-broken': 0 });
  assert.equal(await scalar('sum(tollgate_redis_errors_total)'), 0);
});

test('every series the alerting rules and the dashboard query is one the gateway exposes', async () => {
  const families = new Set([...metricsText.matchAll(/^# TYPE (\S+) (\S+)$/gm)]
    .flatMap(([, name, type]) => (type === 'histogram' ? [`${name}_bucket`, `${name}_sum`, `${name}_count`] : [name])));
  const labelNames = new Set([...metricsText.matchAll(/[{,]([a-zA-Z_]\w*)="/g)].map((m) => m[1]));
  const rules = await fsp.readFile(path.join(REPO_ROOT, 'deploy/prometheus/alerts.yml'), 'utf8');
  const dash = await fsp.readFile(DASHBOARD, 'utf8');
  const missing = [];
  for (const [what, text] of [['deploy/prometheus/alerts.yml', rules], ['the dashboard', dash]]) {
    const names = new Set(text.match(/\b(?:tollgate|gen_ai)_[a-z_]+\b/g));
    assert.ok(names.size > 3, `${what} names the gateway's series`);
    for (const n of names) if (!families.has(n) && !labelNames.has(n)) missing.push(`${what}: ${n}`);
  }
  assert.deepEqual(missing, [], 'queried but not exposed');
});

// ---------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------

function dashboardPanels(dash) {
  const out = [];
  for (const p of dash.panels ?? []) {
    out.push(p);
    for (const inner of p.panels ?? []) out.push(inner); // a collapsed row holds its panels
  }
  return out.filter((p) => p.type !== 'row');
}

// Grafana's variables as an instant query at the end of the traffic would see them.
const SUBST = {
  backend: '.*', model: '.*', key: '.*', // "All"
  __rate_interval: '1m', __interval: '5s', __interval_ms: '5000', __range: '5m', __range_s: '300', __range_ms: '300000',
};

function substitute(expr) {
  return expr.replace(/\$\{(\w+)(?::[\w]+)?\}|\$(\w+)/g, (m, braced, bare) => {
    const v = SUBST[braced ?? bare];
    if (v === undefined) throw new Error(`unknown variable ${m}`);
    return v;
  });
}

test('the dashboard is well formed and every panel is explained in the README', async () => {
  const dash = JSON.parse(await fsp.readFile(DASHBOARD, 'utf8'));
  const readme = await fsp.readFile(GRAFANA_README, 'utf8');
  assert.equal(dash.uid, 'tollgate');
  assert.ok(dash.schemaVersion >= 36, `schemaVersion ${dash.schemaVersion}`);
  const vars = Object.fromEntries(dash.templating.list.map((v) => [v.name, v]));
  assert.equal(vars.datasource?.type, 'datasource');
  assert.equal(vars.datasource.query, 'prometheus');
  for (const name of ['backend', 'model', 'key']) {
    assert.equal(vars[name]?.type, 'query', `variable ${name}`);
    assert.match(vars[name].definition, new RegExp(`^label_values\\(\\w+, ?${name}\\)$`));
    assert.equal(vars[name].allValue, '.*');
  }
  const panels = dashboardPanels(dash);
  const problems = [];
  const ids = new Set();
  for (const p of panels) {
    const what = `panel ${p.id} "${p.title}"`;
    if (ids.has(p.id)) problems.push(`${what}: duplicate id`);
    ids.add(p.id);
    if (p.datasource?.uid !== '${datasource}') problems.push(`${what}: datasource is not \${datasource}`);
    if (!p.targets?.length) problems.push(`${what}: no query`);
    for (const t of p.targets ?? []) {
      if (!t.expr) problems.push(`${what} ${t.refId}: no expr`);
      if (t.datasource && t.datasource.uid !== '${datasource}') problems.push(`${what} ${t.refId}: datasource`);
      if (/\brate\(|\bincrease\(/.test(t.expr ?? '') && !/\$__rate_interval|\$__range/.test(t.expr)) {
        problems.push(`${what} ${t.refId}: a rate window that is neither $__rate_interval nor $__range`);
      }
    }
    const g = p.gridPos;
    if (!g || g.x + g.w > 24) problems.push(`${what}: gridPos ${JSON.stringify(g)}`);
    if (!readme.includes(`**${p.title}**`)) problems.push(`${what}: no paragraph in deploy/grafana/README.md`);
  }
  assert.deepEqual(problems, []);
});

test('every dashboard query parses and returns data; every variable has values', async (t) => {
  const dash = JSON.parse(await fsp.readFile(DASHBOARD, 'utf8'));
  const problems = [];
  let queries = 0;
  for (const p of dashboardPanels(dash)) {
    for (const tgt of p.targets ?? []) {
      const what = `"${p.title}" ${tgt.refId}`;
      let expr;
      try { expr = substitute(tgt.expr); } catch (err) { problems.push(`${what}: ${err.message}`); continue; }
      queries++;
      const r = await promQuery(expr);
      if (r.status !== 'success') problems.push(`${what}: ${r.errorType}: ${r.error}\n    ${expr}`);
      else if ((r.data.resultType === 'vector' || r.data.resultType === 'matrix') && r.data.result.length === 0) {
        problems.push(`${what}: no data\n    ${expr}`);
      } else if (r.data.resultType === 'vector' && r.data.result.every((s) => s.value[1] === 'NaN')) {
        // Every series moved between the scrapes, so 0/0 or an unusable histogram is a bug.
        problems.push(`${what}: NaN only\n    ${expr}`);
      }
    }
  }
  for (const v of dash.templating.list.filter((x) => x.type === 'query')) {
    const m = /^label_values\((\w+), ?(\w+)\)$/.exec(v.definition);
    if (!m) { problems.push(`variable ${v.name}: ${v.definition} is not label_values(metric, label)`); continue; }
    const u = new URL(`/api/v1/label/${m[2]}/values`, prom.url);
    u.searchParams.set('match[]', m[1]);
    const r = await (await fetch(u, { signal: AbortSignal.timeout(5000) })).json();
    if (r.status !== 'success' || r.data.length === 0) problems.push(`variable ${v.name}: ${v.definition} has no values`);
  }
  t.diagnostic(`${queries} panel queries run`);
  assert.ok(queries >= 25, `only ${queries} queries`);
  assert.deepEqual(problems, [], `${problems.length} dashboard problems:\n${problems.join('\n')}`);
});

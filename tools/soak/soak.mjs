// The soak run (issue 13): SOAK_SECONDS (default 1800) of open-loop mixed traffic against one
// gateway with Redis and three mocknodes, with faults on a schedule (nodes faulted, killed and
// restarted, Redis restarted, SIGHUP with an edited and with an invalid config), sampling the
// gateway's RSS and open fds; at the end, the usage ledger against the answered requests.
// See tools/soak/README.md. `make soak` runs it; the figures go to bench/SOAK.md.

import { spawn, execFileSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { randomBytes } from 'node:crypto';

import {
    REPO_ROOT, BUILD_DIR, TOLLGATE_BIN, MOCKNODE_BIN, cleanup, freePort, makeTempDir, waitFor,
    startMocknode, startGateway, adminListener, post, get, runTollgate,
} from '../../tests/lib/harness.mjs';
import { redisClient } from '../../tests/lib/redis.mjs';
import { memStatus, fdCensus, stableKinds, censusText } from './procstat.mjs';
import { Load, KINDS } from './load.mjs';
import { ledgerCensus, compareLedger } from './ledger.mjs';
import { markdown, verdicts } from './report.mjs';

// ---- settings -----------------------------------------------------------------------------

const env = process.env;
const SECONDS = Number(env.SOAK_SECONDS ?? 1800);
const RATE = Number(env.SOAK_RATE ?? 150);
const SEED = Number(env.SOAK_SEED ?? 1);
const WORKERS = Number(env.SOAK_WORKERS ?? 2);
const WARMUP = Number(env.SOAK_WARMUP ?? Math.min(120, Math.round(SECONDS / 5)));
const CALM = Math.min(60, Math.round(SECONDS / 10)); // no fault in the last CALM seconds
const CYCLE_TARGET = Number(env.SOAK_CYCLE ?? 240); // seconds: the fault schedule repeats about this often
// Which faults a cycle holds (a comma-separated subset, to find which one a growth follows).
const FAULT_NAMES = ['budget', 'node500', 'kill-b', 'hang', 'redis', 'midstream', 'sighup', 'badconfig', 'badjson', 'kill-a'];
const FAULTS = new Set((env.SOAK_FAULTS ?? FAULT_NAMES.join(',')).split(',').map((x) => x.trim()).filter(Boolean));
for (const f of FAULTS) {
    if (!FAULT_NAMES.includes(f)) {
        console.error(`soak: SOAK_FAULTS: unknown fault ${f} (known: ${FAULT_NAMES.join(' ')})`);
        process.exit(2);
    }
}
const SAMPLE_S = 5;
const REDIS_COUNTER_LAG_MS = 1500; // the gateway's Redis counters reach /metrics once a second
const TIMEOUT_MS = 20000; // client timeout, whole answers
const STREAM_TIMEOUT_MS = 30000; // client timeout, streams
const FAULT_GRACE_MS = 5000; // a failure this long after a fault ended is still the fault's
const MAX_INFLIGHT = 4000;
const OUT_DIR = env.SOAK_OUT ?? path.join(os.tmpdir(), `tollgate-soak-${new Date().toISOString().replace(/[:.]/g, '-')}`);
const APPEND = env.SOAK_NO_APPEND !== '1';
const SOAK_MD = path.join(REPO_ROOT, 'bench', 'SOAK.md');
const HOST = '127.0.0.1';
const ID_PREFIX = `soak${randomBytes(3).toString('hex')}`;

if (!(SECONDS > 0) || !(RATE > 0) || WARMUP >= SECONDS) {
    console.error(`soak: bad settings (SOAK_SECONDS ${SECONDS}, SOAK_RATE ${RATE}, warm-up ${WARMUP})`);
    process.exit(2);
}
for (const bin of [TOLLGATE_BIN, MOCKNODE_BIN]) {
    if (!fs.existsSync(bin)) {
        console.error(`soak: ${bin} is missing: build it (make BUILD=${path.relative(REPO_ROOT, BUILD_DIR)} all)`);
        process.exit(2);
    }
}
fs.mkdirSync(OUT_DIR, { recursive: true });

const t_boot = Date.now();
let t_load0 = 0; // Date.now() when the load started
const el = () => (t_load0 ? (Date.now() - t_load0) / 1000 : 0);
function say(msg) {
    const line = `[soak ${el().toFixed(1).padStart(7)} s] ${msg}`;
    console.log(line);
    fs.appendFileSync(path.join(OUT_DIR, 'soak.log'), line + '\n');
}

// A watchdog: whatever hangs, the run ends (the harness's exit hook kills what it started).
const watchdog = setTimeout(() => {
    console.error('soak: watchdog: the run took far longer than planned; stopping everything');
    process.exit(3);
}, (SECONDS + 900) * 1000);
watchdog.unref();

// ---- Redis: persistent (AOF, fsync every second; SIGTERM writes it out), restarted on the same
// port with the same directory, as an orchestrator restarts it -----------------------------------

const redis = {
    port: 0, dir: '', proc: null, log: path.join(OUT_DIR, 'redis.log'),
    async start() {
        const fd = fs.openSync(this.log, 'a');
        this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', HOST, '--dir', this.dir,
            '--save', '', '--appendonly', 'yes', '--appendfsync', 'everysec', '--databases', '1',
            // Commands slower than 10 ms are kept (SLOWLOG), read and reset with every sample.
            '--slowlog-log-slower-than', '10000', '--slowlog-max-len', '4096'],
        { stdio: ['ignore', fd, fd] });
        fs.closeSync(fd);
        const proc = this.proc;
        await waitFor(async () => {
            if (proc.exitCode !== null) throw new Error(`redis-server exited (${proc.exitCode}); see ${this.log}`);
            const c = await redisClient(this.port);
            try {
                return (await c.call('PING')) === 'PONG';
            } finally {
                c.close();
            }
        }, { timeoutMs: 15000, intervalMs: 100, what: 'redis-server to answer PING' });
    },
    // SIGTERM: Redis writes its AOF and exits, as an orchestrator's stop does.
    async stop(signal = 'SIGTERM') {
        const p = this.proc;
        if (!p || p.exitCode !== null || p.signalCode !== null) return { code: p?.exitCode };
        const gone = once(p, 'exit');
        p.kill(signal);
        const r = await Promise.race([gone, sleep(10000).then(() => null)]);
        if (!r) {
            p.kill('SIGKILL');
            await Promise.race([once(p, 'exit'), sleep(3000)]);
            return { code: null, killed: true };
        }
        return { code: r[0], signal: r[1] };
    },
    client() {
        return redisClient(this.port);
    },
};
// Redis's own view of slow commands, over the run (its SLOWLOG lives in memory: read every
// sample, so a restart loses at most one interval).
const slow = {
    client: null, count: 0, by_cmd: {}, max_us: 0,
    async poll() {
        try {
            if (!this.client) this.client = await redisClient(redis.port);
            const rows = await this.client.call('SLOWLOG', 'GET', '4096');
            await this.client.call('SLOWLOG', 'RESET');
            for (const [, , us, argv] of rows) {
                this.count++;
                const cmd = String(argv?.[0] ?? '?').toUpperCase();
                const e = this.by_cmd[cmd] ?? { n: 0, max_us: 0 };
                e.n++;
                e.max_us = Math.max(e.max_us, Number(us));
                this.by_cmd[cmd] = e;
                this.max_us = Math.max(this.max_us, Number(us));
            }
        } catch {
            this.client?.close();
            this.client = null; // Redis restarting: next time
        }
    },
    text() {
        return Object.entries(this.by_cmd).sort((a, b) => b[1].n - a[1].n)
            .map(([c, e]) => `${c} ${e.n} (max ${(e.max_us / 1000).toFixed(0)} ms)`).join(', ') || 'none';
    },
};

process.on('exit', () => {
    try {
        if (redis.proc && redis.proc.exitCode === null) redis.proc.kill('SIGKILL');
    } catch { /* gone */ }
});

// ---- nodes and gateway config ----------------------------------------------------------------

const MODEL = 'llama';
const EMBED = 'embed';
const NODE_FLAGS = { ttfbMs: 10, tokenMs: 15, tokens: 12, quiet: true };
const nodes = {}; // name -> harness mocknode
const node_ports = {};

async function startNode(name, port = 0) {
    let last;
    for (let i = 0; i < 20; i++) {
        try {
            const n = await startMocknode({ name, models: [MODEL, EMBED], port, ...NODE_FLAGS });
            nodes[name] = n;
            node_ports[name] = n.port;
            return n;
        } catch (err) {
            last = err; // the port may still be held for a moment after a SIGKILL
            await sleep(250);
        }
    }
    throw last;
}

// The response cache's cap, all workers together. Small enough that the cache_fill requests
// (about 12 new entries a second at 150 req/s, ~550 B each with its node) fill it well within
// the warm-up: a cache still filling after the warm-up is growth the RSS check would blame on
// the gateway (with 1 MiB it took about 3 minutes: valgrind's massif showed cache_put holding
// 1.05 MB of a 2.2 MB heap, the rest flat).
const CACHE_BYTES = Number(env.SOAK_CACHE_BYTES ?? 262144);

const STATIC_KEY = `sk-soak-static-${randomBytes(8).toString('hex')}`;

// Variant A at start; the valid SIGHUP edits alternate B, A, B...; B makes node-c the cheapest
// and adds a model served by node-b only.
function gatewayConfig(variant, admin, redis_url) {
    const price = (name) => {
        if (variant === 'A') return name === 'node-c' ? [2, 4] : [1, 2];
        return name === 'node-a' ? [2, 4] : [1, 2];
    };
    const backends = ['node-a', 'node-b', 'node-c'].map((name) => {
        const [i, o] = price(name);
        const models = [
            { name: MODEL, input_usd_per_mtok: i, output_usd_per_mtok: o },
            { name: EMBED, input_usd_per_mtok: 0.1, output_usd_per_mtok: 0 },
        ];
        if (variant === 'B' && name === 'node-b') models.push({ name: 'llama-b', upstream: MODEL, input_usd_per_mtok: 1, output_usd_per_mtok: 2 });
        return { name, url: nodes[name].v1, models };
    });
    return {
        ...admin.config,
        workers: WORKERS,
        log_level: 'info',
        drain_timeout_ms: 10000,
        keys: [{ name: 'soak-static', key: STATIC_KEY }],
        redis: { url: redis_url },
        upstream: { connect_timeout_ms: 1000, first_byte_timeout_ms: 3000, idle_timeout_ms: 3000, total_timeout_ms: 20000 },
        routing: { retries: 2, deadline_ms: 10000 },
        health: { interval_ms: 1000, timeout_ms: 1000, eject_after_failures: 3, cooldown_ms: 2000, max_cooldown_ms: 10000 },
        cache: { mode: 'deterministic', ttl_s: 60, max_bytes: CACHE_BYTES, scope: 'key' },
        backends,
    };
}

// ---- state of the run ---------------------------------------------------------------------------

const windows = []; // {what, node|null, excuses, start, end}
function openWindow(what, node, excuses) {
    const w = { what, node, excuses, start: Date.now(), end: Infinity };
    windows.push(w);
    return w;
}
// The fault (a node's) that can explain a failure of a request alive in [t0, t1], answered by
// backend (null: any node).
function faulted(t0, t1, backend) {
    for (const w of windows) {
        if (!w.excuses || t1 < w.start || t0 > w.end + FAULT_GRACE_MS) continue;
        if (backend && w.node && w.node !== backend) continue;
        return w.what;
    }
    return null;
}
function redisDown(t0, t1) {
    return windows.some((w) => w.redis && t1 >= w.start && t0 <= w.end + FAULT_GRACE_MS);
}
function context(t0, t1) {
    return windows.filter((w) => !w.excuses && t1 >= w.start && t0 <= w.end + FAULT_GRACE_MS).map((w) => w.what);
}

const stats = {
    sent: 0,
    classes: { ok: 0, expected: 0, unexpected: 0, timeout: 0 },
    by_kind: Object.fromEntries(Object.keys(KINDS).map((k) => [k, { sent: 0, ok: 0, expected: 0, unexpected: 0, timeout: 0 }])),
    by_status: {},
    by_cache: {},
    reasons: new Map(), // unexpected + timeout: reason -> {count, ids}
    expected_reasons: new Map(),
    answered: new Set(), // ids answered after authentication
    unknown: new Set(), // ids with a valid key, fate unknown to the client
    answered_401: 0,
};
const events = [];

// Unknown keys answered 503 key_store_unavailable when no Redis restart explains it: decided at
// the end, against the gateway's own log of Redis trouble (a command past its deadline opens
// the breaker for a second on a loaded machine; meanwhile no key can be checked).
const deferred = [];
// Any key held in Redis that a worker has not seen yet (an unknown key, or a budget key made a
// moment ago) gets 503 key_store_unavailable while the gateway's breaker is open: the README's
// Redis outage policy.
const KEY_UNCHECKED = /^\w+: 503 key_store_unavailable/;
function onResult(id, req, out, verdict) {
    if (verdict.cls === 'unexpected' && KEY_UNCHECKED.test(verdict.reason) && deferred.length < 100000) {
        deferred.push([id, req, out, verdict]);
        return;
    }
    count(id, req, out, verdict);
}
function settleDeferred() {
    for (const [id, req, out, verdict] of deferred.splice(0)) {
        const near = glog.redis_trouble.some((t) => t >= out.t0 - 2000 && t <= out.t1 + 2000);
        const counted = glog.redis_trouble_spans.some(([a, b]) => out.t1 >= a && out.t0 <= b);
        const v = near ? { ...verdict, cls: 'expected', reason: `${req.kind}: 503 key_store_unavailable while the gateway's Redis breaker was open` }
            : counted ? { ...verdict, cls: 'expected', reason: `${req.kind}: 503 key_store_unavailable while a Redis command of the gateway timed out or failed` }
                : verdict;
        count(id, req, out, v);
    }
}
function count(id, req, out, verdict) {
    stats.sent++;
    stats.classes[verdict.cls]++;
    stats.by_kind[req.kind][verdict.cls]++;
    stats.by_kind[req.kind].sent++;
    const st = out.status ? String(out.status) : (out.timed_out ? 'timeout' : 'error');
    stats.by_status[st] = (stats.by_status[st] ?? 0) + 1;
    const cache = out.headers?.['x-tollgate-cache'];
    if (cache && out.status === 200) stats.by_cache[cache] = (stats.by_cache[cache] ?? 0) + 1;
    if (out.status === 401 || out.status === 503 && verdict.auth === 'no') stats.answered_401++;
    if (verdict.auth === 'yes') stats.answered.add(id);
    else if (verdict.auth === 'unknown') stats.unknown.add(id);
    if (verdict.cls === 'unexpected' || verdict.cls === 'timeout') {
        const ctx = context(out.t0, out.t1 || Date.now());
        const reason = verdict.reason + (ctx.length ? ` [during ${[...new Set(ctx)].join(', ')}]` : '');
        const r = stats.reasons.get(reason) ?? { count: 0, ids: [] };
        r.count++;
        if (r.ids.length < 5) r.ids.push(id);
        stats.reasons.set(reason, r);
        if (r.count <= 3) say(`${verdict.cls}: ${reason} (${id}, ${out.t1 - out.t0} ms)`);
    } else if (verdict.cls === 'expected' && / while .* was (faulted|away|open)$/.test(verdict.reason)) {
        const key = verdict.reason.replace(/ while .* was faulted$/, '');
        stats.expected_reasons.set(key, (stats.expected_reasons.get(key) ?? 0) + 1);
    }
}

// The gateway's log: counted as it comes, the unusual kept (OUT_DIR/gateway.log holds every
// line that is not a 2xx request line or an expected 4xx).
const glog = {
    auth: 0, // request lines of inference paths with a key name
    by_event: new Map(), // warn/error events
    redis_trouble: [], // wall ms of the gateway's redis_disconnected and redis_breaker_open
    redis_trouble_spans: [], // [from, to] wall ms: sample intervals in which its Redis error or timeout counters grew
    lines_by_id: new Map(), // id -> line, for requests that went wrong (bounded)
    file: null,
};
const INFERENCE_PATHS = new Set(['/v1/chat/completions', '/v1/completions', '/v1/embeddings']);
function consumeLogs(gw) {
    const lines = gw.logs.stdout.splice(0);
    const err_lines = gw.logs.stderr.splice(0);
    const keep = [];
    for (const line of lines) {
        let j;
        try {
            j = JSON.parse(line);
        } catch {
            keep.push(line);
            continue;
        }
        if (j.event === 'request') {
            if (INFERENCE_PATHS.has(j.path) && j.key) glog.auth++;
            if (j.status >= 500 || j.status === 499 || j.status === 401) {
                keep.push(line);
                glog.lines_by_id.set(j.request_id, line);
                if (glog.lines_by_id.size > 20000) glog.lines_by_id.delete(glog.lines_by_id.keys().next().value);
            }
            continue;
        }
        keep.push(line);
        if ((j.event === 'redis_disconnected' || j.event === 'redis_breaker_open') && glog.redis_trouble.length < 100000)
            glog.redis_trouble.push(Date.parse(j.ts));
        if (j.level === 'warn' || j.level === 'error') {
            const e = glog.by_event.get(j.event) ?? { count: 0, first: line };
            e.count++;
            glog.by_event.set(j.event, e);
        }
    }
    for (const l of err_lines) keep.push('stderr: ' + l);
    if (keep.length) fs.appendFileSync(glog.file, keep.join('\n') + '\n');
}

// The gateway's ledger counters and gauges from /metrics (admin listener).
async function scrape(admin) {
    const r = await admin.get('/metrics', { timeoutMs: 3000 });
    if (r.status !== 200) throw new Error(`/metrics ${r.status}`);
    const val = (re) => {
        const m = re.exec(r.text);
        return m ? Number(m[1]) : null;
    };
    return {
        written: val(/^tollgate_ledger_records_total\{outcome="written"\} (\S+)/m),
        spooled: val(/^tollgate_ledger_records_total\{outcome="spooled"\} (\S+)/m),
        replayed: val(/^tollgate_ledger_records_total\{outcome="replayed"\} (\S+)/m),
        dropped: val(/^tollgate_ledger_records_total\{outcome="dropped"\} (\S+)/m),
        spool_bytes: val(/^tollgate_ledger_spool_bytes (\S+)/m),
        inflight: val(/^tollgate_inflight_requests (\S+)/m),
        redis_errors: val(/^tollgate_redis_errors_total (\S+)/m),
        redis_timeouts: val(/^tollgate_redis_timeouts_total (\S+)/m),
    };
}

// ---- the run --------------------------------------------------------------------------------

function git(...args) {
    try {
        return execFileSync('git', ['-C', REPO_ROOT, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
        return '';
    }
}

function machine() {
    let cpu = '?';
    try {
        cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))[1].trim();
    } catch { /* not Linux? */ }
    return `${cpu}, ${os.cpus().length} CPUs, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB, Linux ${os.release()}, Node ${process.version}`;
}

async function main() {
    // SOAK_GATEWAY_COMMIT: what the binaries were built from, when not this working tree (e.g. a
    // clean export of a commit built elsewhere: TOLLGATE_BUILD may be an absolute path).
    const commit = env.SOAK_GATEWAY_COMMIT || git('rev-parse', '--short', 'HEAD');
    let dirty = [];
    try {
        dirty = execFileSync('git', ['-C', REPO_ROOT, 'status', '--porcelain', '--untracked-files=no'], { encoding: 'utf8' })
            .split('\n').filter(Boolean).map((l) => l.slice(3)).filter((f) => !f.startsWith('bench/') && !f.startsWith('tools/soak/'));
    } catch { /* not a git checkout */ }
    if (env.SOAK_GATEWAY_COMMIT) dirty = [];
    const built = new Date(fs.statSync(TOLLGATE_BIN).mtimeMs).toISOString().slice(0, 16).replace('T', ' ');
    const load_start = os.loadavg()[0];
    say(`soak: ${SECONDS} s at ${RATE} req/s, warm-up ${WARMUP} s, binaries ${BUILD_DIR}, out ${OUT_DIR}`);

    // Redis, nodes, gateway.
    redis.port = await freePort();
    redis.dir = await makeTempDir('tollgate-soak-redis-');
    await redis.start();
    const redis_url = `redis://${HOST}:${redis.port}/0`;
    for (const name of ['node-a', 'node-b', 'node-c']) await startNode(name);
    const admin = await adminListener();
    const cfgA = gatewayConfig('A', admin, redis_url);
    const gw = await startGateway(cfgA, { startTimeoutMs: 20000 });
    glog.file = path.join(OUT_DIR, 'gateway.log');
    fs.writeFileSync(path.join(OUT_DIR, 'config.json'), JSON.stringify(cfgA, null, 2));
    const pid = gw.proc.pid;
    const roles = () => ({
        listen_ports: [gw.port, Number(admin.url.split(':').pop())],
        peers: { ...node_ports, redis: redis.port },
    });
    say(`gateway pid ${pid} on ${gw.url}, admin ${admin.url}, redis ${redis.port}, nodes ${JSON.stringify(node_ports)}`);

    // Keys made through the admin API.
    const makeKey = async (body) => {
        const r = await post(admin.url + '/admin/keys', body, { key: admin.key, timeoutMs: 5000 });
        if (r.status !== 201) throw new Error(`POST /admin/keys ${JSON.stringify(body)} -> ${r.status}: ${r.text}`);
        return r.json.key;
    };
    const revokeKey = async (name) => {
        const r = await fetch(`${admin.url}/admin/keys/${name}`, { method: 'DELETE', headers: { authorization: `Bearer ${admin.key}` }, signal: AbortSignal.timeout(5000) });
        await r.arrayBuffer();
        if (r.status !== 200) throw new Error(`DELETE /admin/keys/${name} -> ${r.status}`);
    };
    const cycles = Math.max(1, Math.round((SECONDS - WARMUP - CALM) / CYCLE_TARGET));
    const cycle_s = (SECONDS - WARMUP - CALM) / cycles;
    // A budget that lasts about half a cycle: requests cost about 5e-5 USD each here.
    const budget_usd = Number((0.5 * cycle_s * RATE * (KINDS.budget_key.weight / 100) * 5e-5).toFixed(6));
    let budget_n = 0;
    const keys = {
        static: STATIC_KEY,
        redis: await makeKey({ name: 'soak-redis', models: [MODEL, EMBED, 'llama-b'] }),
        rpm: await makeKey({ name: 'soak-rpm', rpm: 120 }),
        budget: await makeKey({ name: `soak-budget-${budget_n}`, budget_usd }),
    };

    const load = new Load({
        host: HOST, port: gw.port, rate: RATE, seed: SEED, timeoutMs: TIMEOUT_MS, streamTimeoutMs: STREAM_TIMEOUT_MS,
        maxInflight: MAX_INFLIGHT, keys, model: MODEL, embed_model: EMBED, idPrefix: ID_PREFIX, faulted, redisDown, onResult,
    });

    // Prime: every kind a few times (key caches, cache entries, connection pools), then the
    // client's connections closed, then the start sample.
    await Promise.all(Object.keys(KINDS).flatMap((k) => [0, 1, 2].map(() => load.one(k))));
    load.close();
    load.reopen();
    consumeLogs(gw);
    const idle = async (what) => {
        // No client connection left in the gateway (bounded), then a moment of calm.
        await waitFor(() => !Object.keys(fdCensus(pid, roles()).kinds).some((k) => k.startsWith('tcp:client:')),
            { timeoutMs: 10000, intervalMs: 100, what: `${what}: client connections closed` }).catch((e) => say(e.message));
        await sleep(1500);
        return { mem: memStatus(pid), fds: fdCensus(pid, roles()) };
    };
    const start = await idle('start');
    say(`start: RSS ${(start.mem.rss_kb / 1024).toFixed(1)} MiB, fds ${start.fds.total} (${censusText(start.fds.kinds)}), primed with ${stats.sent} requests`);

    // The schedule of faults: warm-up, then `cycles` rounds of every fault, then calm.
    const fault_s = Math.min(25, Math.max(5, 0.08 * cycle_s));
    const down_s = Math.min(5, Math.max(2, 0.02 * cycle_s));
    let variant = 'A';
    const schedule = [];
    const at = (s, what, fn, name) => {
        if (FAULTS.has(name)) schedule.push({ s, what, fn });
    };
    const nodeFault = (name, fault, rate) => async () => {
        await nodes[name].setConfig({ fault, fault_rate: rate });
        const w = openWindow(`${name} ${fault} (rate ${rate})`, name, true);
        await sleep(fault_s * 1000);
        await nodes[name].setConfig({ fault: 'none', fault_rate: 1 }).catch(async () => nodes[name].setConfig({ fault: '', fault_rate: 1 }));
        w.end = Date.now();
    };
    const nodeKill = (name) => async () => {
        const w = openWindow(`${name} killed`, name, true);
        await nodes[name].kill('SIGKILL');
        await sleep(down_s * 1000);
        await startNode(name, node_ports[name]);
        w.end = Date.now();
    };
    const redisRestart = async () => {
        const w = openWindow('Redis restart', null, false);
        w.redis = true;
        const r = await redis.stop('SIGTERM');
        await sleep(down_s * 1000);
        await redis.start();
        w.end = Date.now();
        return `(redis-server exit ${r.code ?? r.signal ?? 'killed'}, down ${((w.end - w.start) / 1000).toFixed(1)} s)`;
    };
    const models = async () => (await get(gw.v1 + '/models', { key: STATIC_KEY, timeoutMs: 5000 })).json?.data?.map((m) => m.id) ?? [];
    const sighupValid = async () => {
        variant = variant === 'A' ? 'B' : 'A';
        const w = openWindow(`SIGHUP (config ${variant})`, null, false);
        // listen and spool_dir as the harness wrote them: only prices and models change.
        const cur = JSON.parse(fs.readFileSync(gw.configPath, 'utf8'));
        const next = { ...gatewayConfig(variant, admin, redis_url), listen: cur.listen, spool_dir: cur.spool_dir };
        fs.writeFileSync(gw.configPath, JSON.stringify(next, null, 2));
        gw.proc.kill('SIGHUP');
        const want = variant === 'B';
        await waitFor(async () => (await models()).includes('llama-b') === want, { timeoutMs: 5000, intervalMs: 100, what: `config ${variant} in effect` });
        w.end = Date.now();
        return `(config ${variant} in effect after ${w.end - w.start} ms)`;
    };
    const sighupInvalid = async () => {
        const w = openWindow('SIGHUP (invalid config)', null, false);
        const before = await models();
        const good = fs.readFileSync(gw.configPath, 'utf8');
        fs.writeFileSync(gw.configPath, JSON.stringify({ ...JSON.parse(good), workers: 'two', no_such_key: 1 }));
        gw.proc.kill('SIGHUP');
        await sleep(1000);
        fs.writeFileSync(gw.configPath, good);
        const after = await models();
        w.end = Date.now();
        if (gw.proc.exitCode !== null) throw new Error('the gateway exited');
        if (before.join() !== after.join()) throw new Error(`models changed: ${before} -> ${after}`);
        return '(old config kept)';
    };
    const newBudgetKey = async () => {
        const old = `soak-budget-${budget_n}`;
        budget_n++;
        keys.budget = await makeKey({ name: `soak-budget-${budget_n}`, budget_usd });
        await sleep(2000); // requests already sent with the old key end first
        await revokeKey(old);
        return `(soak-budget-${budget_n}, ${budget_usd} USD; ${old} revoked)`;
    };
    for (let c = 0; c < cycles; c++) {
        const base = WARMUP + c * cycle_s;
        const f = (x) => base + x * cycle_s;
        if (c > 0) at(f(0.02), 'a new budget key, the old one revoked', newBudgetKey, 'budget');
        at(f(0.05), `node-a fault 500 for ${fault_s.toFixed(0)} s`, nodeFault('node-a', '500', 0.5), 'node500');
        at(f(0.17), `node-b SIGKILL, restarted after ${down_s.toFixed(0)} s`, nodeKill('node-b'), 'kill-b');
        at(f(0.27), `node-a fault hang for ${fault_s.toFixed(0)} s`, nodeFault('node-a', 'hang', 0.3), 'hang');
        at(f(0.39), 'Redis SIGTERM, restarted', redisRestart, 'redis');
        at(f(0.50), `node-b fault close-mid-stream for ${fault_s.toFixed(0)} s`, nodeFault('node-b', 'close-mid-stream', 0.5), 'midstream');
        at(f(0.62), 'SIGHUP with an edited config', sighupValid, 'sighup');
        at(f(0.66), 'SIGHUP with an invalid config', sighupInvalid, 'badconfig');
        at(f(0.72), `node-${c % 2 ? 'c' : 'a'} fault invalid-json for ${fault_s.toFixed(0)} s`, nodeFault(c % 2 ? 'node-c' : 'node-a', 'invalid-json', 0.5), 'badjson');
        at(f(0.86), `node-a SIGKILL, restarted after ${down_s.toFixed(0)} s`, nodeKill('node-a'), 'kill-a');
    }

    // Go.
    t_load0 = Date.now();
    load.start();
    say(`load started: ${cycles} fault cycle(s) of ${cycle_s.toFixed(0)} s after the warm-up`);
    const samples = [];
    let warm = null;
    let stop = false;
    const sampler = (async () => {
        let last_print = 0;
        while (!stop) {
            try {
                consumeLogs(gw);
                const mem = memStatus(pid);
                const fds = fdCensus(pid, roles());
                let m = {};
                try {
                    m = await scrape(admin);
                } catch { /* counted next time */ }
                await slow.poll();
                const s = { t: el(), wall: Date.now(), rss_kb: mem.rss_kb, hwm_kb: mem.hwm_kb, threads: mem.threads, fds: fds.total, kinds: fds.kinds, inflight: m.inflight, spool_bytes: m.spool_bytes, client_inflight: load.inflight, redis_timeouts: m.redis_timeouts, redis_errors: m.redis_errors, slow: slow.count };
                if (m.redis_timeouts != null) {
                    // A Redis command of the gateway failed or timed out since the last sample. The
                    // workers publish these counters once a second (gateway/server.c), so the
                    // command may be up to a second older than the interval that shows it.
                    const prev = samples[samples.length - 1];
                    if (prev && (m.redis_timeouts > (prev.redis_timeouts ?? 0) || m.redis_errors > (prev.redis_errors ?? 0)))
                        glog.redis_trouble_spans.push([prev.wall - REDIS_COUNTER_LAG_MS, s.wall]);
                }
                samples.push(s);
                if (!warm && s.t >= WARMUP) {
                    warm = s;
                    say(`after warm-up: RSS ${(s.rss_kb / 1024).toFixed(1)} MiB, fds ${s.fds}`);
                }
                if (s.t - last_print >= 30) {
                    last_print = s.t;
                    const c = stats.classes;
                    say(`${stats.sent} done (ok ${c.ok}, expected ${c.expected}, unexpected ${c.unexpected}, timeout ${c.timeout}), ` +
                        `${load.inflight} in flight, RSS ${(s.rss_kb / 1024).toFixed(1)} MiB, fds ${s.fds}, threads ${s.threads}, ` +
                        `spool ${m.spool_bytes ?? '?'} B`);
                }
            } catch (err) {
                if (gw.proc.exitCode !== null || gw.proc.signalCode !== null) {
                    say(`the gateway is gone (exit ${gw.proc.exitCode}, signal ${gw.proc.signalCode})`);
                    throw err;
                }
                say(`sample failed: ${err.message}`);
            }
            await sleep(SAMPLE_S * 1000);
        }
    })();
    const faults = (async () => {
        for (const e of schedule) {
            while (!stop && el() < e.s) await sleep(Math.min(250, (e.s - el()) * 1000));
            if (stop) break;
            const t = el();
            say(`fault: ${e.what}`);
            try {
                const note = await e.fn();
                events.push({ t, what: `${e.what}${note ? ' ' + note : ''}` });
            } catch (err) {
                events.push({ t, what: e.what, error: err.message });
                say(`fault step failed: ${e.what}: ${err.message}`);
            }
        }
    })();
    // The load runs SECONDS, unless the gateway dies.
    const gw_died = once(gw.proc, 'exit').then(([code, sig]) => ({ code, sig }));
    const ended = await Promise.race([sleep(SECONDS * 1000).then(() => null), gw_died]);
    if (ended) say(`the gateway exited during the load (code ${ended.code}, signal ${ended.sig})`);
    const t_stop = Date.now();
    say('stopping the load; waiting for the requests in flight');
    await Promise.race([load.stop(), sleep(STREAM_TIMEOUT_MS + 10000)]);
    const load_seconds = (t_stop - t_load0) / 1000;
    stop = true;
    await faults;
    for (const w of windows) if (w.end === Infinity) w.end = Date.now();
    await sampler.catch(() => {});
    if (ended) throw new Error(`the gateway exited during the load (code ${ended.code}, signal ${ended.sig}); see ${glog.file}`);
    load.close();

    // The ledger drained: nothing in the spool and the stream's length still for 3 s.
    const rc = await redis.client();
    let last_len = -1;
    let still_since = Date.now();
    let metrics_end = {};
    await waitFor(async () => {
        metrics_end = await scrape(admin);
        const len = await rc.call('XLEN', 'tg:usage');
        if (len !== last_len) {
            last_len = len;
            still_since = Date.now();
        }
        return metrics_end.spool_bytes === 0 && Date.now() - still_since >= 3000;
    }, { timeoutMs: 120000, intervalMs: 500, what: 'the ledger to drain (spool empty, stream length still)' })
        .catch((e) => say(e.message));
    const drain_s = (Date.now() - t_stop) / 1000;
    consumeLogs(gw);
    const end = await idle('end');
    consumeLogs(gw);
    say(`end: RSS ${(end.mem.rss_kb / 1024).toFixed(1)} MiB, fds ${end.fds.total} (${censusText(end.fds.kinds)})`);

    // The ledger against the answers.
    const census = await ledgerCensus(rc, ID_PREFIX);
    const cmp = compareLedger(stats.answered, stats.unknown, census);
    let cli_requests = null;
    try {
        const u = await runTollgate(['-c', gw.configPath, 'usage', '--json'], { timeoutMs: 20000 });
        if (u.code === 0) cli_requests = JSON.parse(u.stdout).data.filter((row) => row.key).reduce((s, row) => s + Number(row.requests), 0);
        else say(`tollgate usage: exit ${u.code}: ${u.stderr}`);
    } catch (err) {
        say(`tollgate usage failed: ${err.message}`);
    }
    say(`ledger: ${census.total} entries, ${cmp.records} with a key for ${cmp.answered} answered; missing ${cmp.missing} ` +
        `${cmp.missing_ids.join(' ')}, duplicated ${cmp.dup} ${cmp.dup_ids.join(' ')}, unexplained ${cmp.extra} ${cmp.extra_ids.join(' ')}`);

    // A graceful stop at the end: it must leave the ledger as it is.
    const exit = await gw.stop('SIGTERM', 30000).catch((e) => ({ code: null, signal: e.message }));
    exit.records_after = await rc.call('XLEN', 'tg:usage');
    rc.close();
    consumeLogs(gw);
    settleDeferred();

    // The report.
    const rss_vals = samples.map((s) => s.rss_kb);
    const every = Math.max(1, Math.ceil(samples.length / 12));
    const samples_table = samples.filter((_, i) => i % every === 0 || i === samples.length - 1);
    const pooled = Object.keys(node_ports);
    const start_stable = stableKinds(start.fds.kinds, pooled);
    const end_stable = stableKinds(end.fds.kinds, pooled);
    const sum = (k) => Object.values(k).reduce((a, b) => a + b, 0);
    const withLog = (ids) => ids.map((id) => glog.lines_by_id.get(id)).find(Boolean);
    const report = {
        date: new Date().toISOString().replace('T', ' ').slice(0, 16) + ' UTC',
        seconds: SECONDS, rate: RATE, cache_bytes: CACHE_BYTES, seed: SEED, workers: WORKERS, warmup: WARMUP,
        commit, dirty: dirty.join(', '), built, build: path.relative(REPO_ROOT, BUILD_DIR).startsWith('..') ? BUILD_DIR : path.relative(REPO_ROOT, BUILD_DIR) || '.', machine: machine(),
        timeouts: `${TIMEOUT_MS / 1000} s (streams ${STREAM_TIMEOUT_MS / 1000} s)`,
        sent: stats.sent, load_seconds, shed: load.shed, lag: load.lag, max_inflight: load.max_inflight_seen,
        classes: stats.classes, by_kind: stats.by_kind, by_status: stats.by_status, by_cache: stats.by_cache,
        reasons: [...stats.reasons].sort((a, b) => b[1].count - a[1].count).map(([reason, r]) => ({ reason, ...r, log: withLog(r.ids) })),
        expected_reasons: [...stats.expected_reasons].sort((a, b) => b[1] - a[1]).map(([reason, count]) => ({ reason, count })),
        events,
        rss: {
            start_kb: start.mem.rss_kb, warm_kb: (warm ?? samples[0]).rss_kb, max_kb: Math.max(...rss_vals, end.mem.rss_kb),
            end_kb: end.mem.rss_kb, hwm_kb: end.mem.hwm_kb,
        },
        threads: { start: start.mem.threads, end: end.mem.threads },
        fds: {
            start: start.fds, end: end.fds, max: Math.max(...samples.map((s) => s.fds)),
            start_stable: sum(start_stable), end_stable: sum(end_stable),
            stable_equal: censusText(start_stable) === censusText(end_stable),
        },
        ledger: {
            cmp, total: census.total, auth_records: cmp.records, unauth: census.unauth, dropped: metrics_end.dropped ?? 0,
            metrics: metrics_end, cli_requests, log_auth: glog.auth, drain_s,
        },
        answered_401: stats.answered_401,
        redis: {
            slow: slow.count, slow_text: slow.text(),
            timeouts: metrics_end.redis_timeouts, errors: metrics_end.redis_errors,
            breaker_opens: glog.by_event.get('redis_breaker_open')?.count ?? 0,
        },
        inflight_max: {
            warm: Math.max(0, ...samples.filter((x) => x.t < WARMUP).map((x) => x.inflight ?? 0)),
            after: Math.max(0, ...samples.filter((x) => x.t >= WARMUP).map((x) => x.inflight ?? 0)),
        },
        loadavg: `${load_start.toFixed(1)} at start, ${os.loadavg()[0].toFixed(1)} at end`,
        exit,
        gateway_events: [...glog.by_event].sort((a, b) => b[1].count - a[1].count).map(([event, e]) => ({ event, count: e.count })),
        samples_table,
    };
    const { text, pass } = markdown(report);
    fs.writeFileSync(path.join(OUT_DIR, 'report.md'), text + '\n');
    fs.writeFileSync(path.join(OUT_DIR, 'samples.csv'), 't_s,rss_kb,hwm_kb,threads,fds,gw_inflight,client_inflight,spool_bytes,redis_timeouts,redis_errors,redis_slow,fd_kinds\n' +
        samples.map((s) => [s.t.toFixed(1), s.rss_kb, s.hwm_kb, s.threads, s.fds, s.inflight ?? '', s.client_inflight, s.spool_bytes ?? '',
            s.redis_timeouts ?? '', s.redis_errors ?? '', s.slow, censusText(s.kinds)].join(',')).join('\n') + '\n');
    const ev_text = [...glog.by_event].map(([ev, e]) => `${e.count} × ${ev}: ${e.first}`).join('\n');
    if (ev_text) fs.writeFileSync(path.join(OUT_DIR, 'gateway-events.txt'), ev_text + '\n');
    console.log('\n' + text);
    if (APPEND) {
        if (!fs.existsSync(SOAK_MD))
            fs.writeFileSync(SOAK_MD, '# Soak runs\n\n`make soak` (tools/soak/README.md): mixed traffic with faults for SOAK_SECONDS; ' +
                'the gateway\'s RSS and fds, and the usage ledger against the answered requests. Newest last.\n\n');
        fs.appendFileSync(SOAK_MD, text + '\n');
        say(`appended to ${path.relative(REPO_ROOT, SOAK_MD)}`);
    }
    say(`run files in ${OUT_DIR}; ${verdicts(report).filter((v) => !v.pass).map((v) => v.name).join(', ') || 'every check passed'}`);
    return pass;
}

let code = 1;
try {
    code = (await main()) ? 0 : 1;
} catch (err) {
    console.error(`soak: ${err.stack ?? err}`);
    code = 2;
} finally {
    slow.client?.close();
    await redis.stop('SIGKILL').catch(() => {});
    await cleanup();
}
console.log(`soak: finished in ${((Date.now() - t_boot) / 1000).toFixed(0)} s`);
process.exit(code);

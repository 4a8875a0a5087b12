#!/usr/bin/env node
// The market simulator: runs scenarios (tools/market/scenarios/*.json) against the gateway and
// reports what routing cost against an oracle. See README.md.
//
//   node tools/market/market.mjs [scenario|path.json ...] [--seconds N] [--seed N] [--no-append]
//
// Env: MARKET_SCENARIOS (when no scenario is named; default "calm churn liars"),
//      MARKET_SECONDS (each run's length; default the scenario's duration_s),
//      MARKET_SEED (instead of each scenario's seed), MARKET_GATEWAY (the binary; default
//      build/tollgate), MARKET_GATEWAY_CONFIG (a JSON file merged over the gateway config),
//      MARKET_OUT (where configs, logs and records go; default <gateway dir>/market),
//      MARKET_NO_APPEND=1 (do not append to bench/MARKET.md), MARKET_GATEWAY_COMMIT (what
//      bench/MARKET.md says the binary was built from, when not this working tree).

import { Worker } from 'node:worker_threads';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import os from 'node:os';
import { loadScenario, resolveWorld } from './scenario.mjs';
import { SimNode } from './node.mjs';
import { Gateway, AdminSampler, gatewayConfig, freePort, parseGatewayLog, extraFromEnv } from './gateway.mjs';
import { makeClock, absNow } from './clock.mjs';
import { analyse, printTable, appendMarketMd } from './report.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
// The event-loop delay histograms record whole ticks of this length: what is beyond it is delay.
const LOOP_RESOLUTION_MS = 10;
const ROOT = resolve(HERE, '..', '..');

function parseArgs(argv, env) {
    const o = { scenarios: [], seconds: env.MARKET_SECONDS ? Number(env.MARKET_SECONDS) : null,
        seed: env.MARKET_SEED ? Number(env.MARKET_SEED) : null, append: env.MARKET_NO_APPEND !== '1' };
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        if (a === '--seconds') o.seconds = Number(argv[++i]);
        else if (a === '--seed') o.seed = Number(argv[++i]);
        else if (a === '--no-append') o.append = false;
        else if (a === '-h' || a === '--help') o.help = true;
        else if (a.startsWith('-')) throw new Error(`unknown option ${a}`);
        else o.scenarios.push(a);
    }
    if (!o.scenarios.length) o.scenarios = (env.MARKET_SCENARIOS || 'calm churn liars').split(/[\s,]+/).filter(Boolean);
    if (o.seconds !== null && !(o.seconds > 0)) throw new Error('MARKET_SECONDS / --seconds: a positive number');
    if (o.seed !== null && !Number.isInteger(o.seed)) throw new Error('MARKET_SEED / --seed: an integer');
    return o;
}

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

// Everything started for one run, so that any exit stops it.
const live = { gateway: null, nodes: [], worker: null };
function killAll() {
    if (live.gateway) live.gateway.killNow();
    if (live.worker) live.worker.terminate();
    for (const n of live.nodes) n.stop();
}

// Waits (at most timeoutMs) until the gateway sees every node up with its live price.
async function settle(gateway, n, timeoutMs = 5000) {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
        const r = await gateway.adminBackends(1000);
        if (r.status === 200) {
            try {
                const b = JSON.parse(r.body).backends;
                if (b.length === n && b.every((x) => x.health === 'up' && x.models.every((m) => m.price_source === 'live')))
                    return true;
            } catch { /* try again */ }
        }
        await sleep(100);
    }
    return false;
}

export async function runScenario(name, opts) {
    const started = absNow();
    const scenario = loadScenario(name);
    const world = resolveWorld(scenario, { durationS: opts.seconds ?? undefined, seed: opts.seed ?? undefined });
    const dir = join(opts.outDir, `${world.name}-${world.seed}`);
    mkdirSync(dir, { recursive: true });
    const clock = makeClock();
    const nodes = world.nodes.map((n) => new SimNode(world, n, clock));
    live.nodes = nodes;
    await Promise.all(nodes.map((n) => n.start()));
    const port = await freePort(), adminPort = await freePort();
    const { config, key } = gatewayConfig(world, nodes, { port, adminPort, extra: opts.extra });
    const gateway = new Gateway(opts.gateway, join(dir, 'gateway.json'), join(dir, 'gateway.log'), join(dir, 'gateway.err'));
    live.gateway = gateway;
    gateway.start(config);
    await gateway.ready(10000);
    const settled = await settle(gateway, nodes.length);
    if (!settled) process.stderr.write(`market: ${world.name}: not every node up with a live price after 5 s; going on\n`);

    // The load starts in 300 ms: long enough for the load thread to start.
    clock.t0 = absNow() + 300;
    for (const n of nodes) n.arm();
    const sampler = new AdminSampler(gateway, clock, 250);
    sampler.start();
    // The machine's 1-minute load average while the load runs: the simulator, the gateway and
    // whatever else shares the machine.
    const loadavg = [os.loadavg()[0]];
    const loadTimer = setInterval(() => loadavg.push(os.loadavg()[0]), 5000);
    const nodeDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    nodeDelay.enable();
    const worker = new Worker(join(HERE, 'loadgen.mjs'), {
        workerData: { kind: 'market-load', world: { model: world.model, load: world.load }, trace: world.trace,
            port, key, t0: clock.t0 },
    });
    live.worker = worker;
    const watchdogMs = world.durationMs + world.load.client_timeout_ms + 30000;
    const load = await new Promise((ok, ko) => {
        const t = setTimeout(() => ko(new Error(`load did not finish within ${watchdogMs} ms`)), watchdogMs + 300);
        worker.once('message', (m) => {
            clearTimeout(t);
            ok(m);
        });
        worker.once('error', (e) => {
            clearTimeout(t);
            ko(e);
        });
    });
    nodeDelay.disable();
    clearInterval(loadTimer);
    loadavg.push(os.loadavg()[0]);
    sampler.stop();
    const attempts = await gateway.attempts();
    await worker.terminate();
    live.worker = null;
    const exit = await gateway.stop(5000);
    live.gateway = null;
    await Promise.all(nodes.map((n) => n.stop()));
    live.nodes = [];
    const log = parseGatewayLog(gateway.logPath);
    const meta = {
        wallSeconds: (absNow() - started) / 1000,
        gatewayExit: exit,
        settled,
        samplerFailures: sampler.failures,
        nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
        loadavg: { mean: loadavg.reduce((a, b) => a + b, 0) / loadavg.length, max: Math.max(...loadavg) },
        attempts,
        gatewayOverrides: { ...world.gateway, ...(opts.extra ? { MARKET_GATEWAY_CONFIG: opts.extra } : {}) },
        loopDelay: {
            nodes: { p99_ms: nodeDelay.percentile(99) / 1e6 - LOOP_RESOLUTION_MS, max_ms: nodeDelay.max / 1e6 - LOOP_RESOLUTION_MS },
            load: { p99_ms: load.loopDelay.p99_ms - LOOP_RESOLUTION_MS, max_ms: load.loopDelay.max_ms - LOOP_RESOLUTION_MS },
        },
    };
    const run = {
        world,
        nodes: nodes.map((n) => ({ name: n.node.name, records: n.records, feeds: n.feeds, probes: n.probes,
            maxInService: n.maxInService })),
        client: load.records,
        log,
        samples: sampler.samples,
        meta,
    };
    const analysis = analyse(run);
    // Everything needed to check the figures again (or compute others) without running again.
    writeFileSync(join(dir, 'run.json'), JSON.stringify({
        world, meta, config, nodes: run.nodes, client: run.client, samples: run.samples,
        figures: analysis.figures, evidence: analysis.evidence, perNode: analysis.perNode,
    }));
    return { world, analysis, meta, dir };
}

function sh(cmd, args) {
    try {
        return execFileSync(cmd, args, { cwd: ROOT, encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    } catch {
        return '';
    }
}

function machineMeta(gatewayBin) {
    let cpu = 'unknown';
    try {
        const m = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
        if (m) cpu = m[1].trim();
    } catch { /* not Linux */ }
    const head = sh('git', ['rev-parse', '--short', 'HEAD']) || 'unknown';
    const dirty = sh('git', ['status', '--porcelain', '--untracked-files=no']).split('\n').filter(Boolean)
        .map((l) => l.slice(3)).filter((p) => !p.startsWith('bench/MARKET.md'));
    // The working tree's state, unless the binary was built from elsewhere and says so.
    const commit = process.env.MARKET_GATEWAY_COMMIT ||
        (dirty.length ? `${head} + uncommitted changes to ${dirty.length} file(s) (${dirty.slice(0, 6).join(', ')}` +
        `${dirty.length > 6 ? ', …' : ''})` : head);
    const d = new Date();
    return {
        date: `${d.toISOString().slice(0, 16).replace('T', ' ')} UTC`,
        nproc: os.availableParallelism ? os.availableParallelism() : os.cpus().length,
        cpu,
        memGiB: Math.round(os.totalmem() / 2 ** 30),
        commit,
        gateway: gatewayBin.startsWith(ROOT + '/') ? gatewayBin.slice(ROOT.length + 1) : gatewayBin,
        version: sh(gatewayBin, ['--version']) || 'unknown version',
    };
}

async function main() {
    const opts = parseArgs(process.argv.slice(2), process.env);
    if (opts.help) {
        process.stdout.write(readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').slice(1, 14)
            .map((l) => l.replace(/^\/\/ ?/, '')).join('\n') + '\n');
        return 0;
    }
    opts.gateway = resolve(process.env.MARKET_GATEWAY || join(ROOT, 'build', 'tollgate'));
    if (!existsSync(opts.gateway)) throw new Error(`${opts.gateway} missing: run make first (or set MARKET_GATEWAY)`);
    opts.outDir = resolve(process.env.MARKET_OUT || join(dirname(opts.gateway), 'market'));
    opts.extra = extraFromEnv();
    for (const s of opts.scenarios) loadScenario(s); // every file checked before anything runs
    const results = [];
    for (const s of opts.scenarios) {
        process.stderr.write(`market: ${s}: running${opts.seconds ? ` (${opts.seconds} s)` : ''}…\n`);
        const r = await runScenario(s, opts);
        process.stderr.write(`market: ${s}: done in ${r.meta.wallSeconds.toFixed(1)} s; records in ${r.dir}\n`);
        results.push(r);
    }
    printTable(results);
    if (opts.append) {
        const meta = { ...machineMeta(opts.gateway), extra: opts.extra };
        appendMarketMd(join(ROOT, 'bench', 'MARKET.md'), results, meta);
        process.stderr.write('market: appended to bench/MARKET.md\n');
    }
    return 0;
}

for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => {
        killAll();
        process.exit(130);
    });
}

main().then((code) => process.exit(code), (e) => {
    process.stderr.write(`market: error: ${e.stack || e.message}\n`);
    killAll();
    process.exit(1);
});

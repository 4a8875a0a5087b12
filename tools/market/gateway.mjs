// The gateway under test: its config (every node a backend with a price feed read every
// second, one static key, no Redis), the process, readiness, and stopping it. Also a sampler
// of GET /admin/backends, the gateway's own view of each node over time (health, in flight,
// prices), kept for the report's evidence.

import { spawn } from 'node:child_process';
import { openSync, closeSync, writeFileSync, readFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { randomBytes } from 'node:crypto';

// What the driver sets beyond the gateway's defaults, as an operator of a market of remote
// nodes would: a node that has not answered in 5 s is not going to (the default is 60 s),
// probes every second, no response cache (every request is a new question anyway), a short
// drain. A scenario's "gateway" object and MARKET_GATEWAY_CONFIG (a JSON file) are merged
// over this; their "each_backend" object is merged into every backend, where
// "max_inflight": "capacity" stands for each node's true capacity.
export const DRIVER_DEFAULTS = {
    log_level: 'info',
    drain_timeout_ms: 2000,
    upstream: { connect_timeout_ms: 1000, first_byte_timeout_ms: 5000 },
    health: { interval_ms: 1000, timeout_ms: 1000 },
    cache: { mode: 'off' },
};

function isObject(v) {
    return v && typeof v === 'object' && !Array.isArray(v);
}

export function deepMerge(base, over) {
    if (!isObject(base) || !isObject(over)) return over;
    const out = { ...base };
    for (const [k, v] of Object.entries(over)) out[k] = isObject(v) && isObject(base[k]) ? deepMerge(base[k], v) : v;
    return out;
}

export async function freePort() {
    return new Promise((ok, ko) => {
        const s = net.createServer();
        s.once('error', ko);
        s.listen(0, '127.0.0.1', () => {
            const { port } = s.address();
            s.close(() => ok(port));
        });
    });
}

// nodes: SimNode instances (started). Returns {config, key, adminKey}.
export function gatewayConfig(world, nodes, { port, adminPort, extra }) {
    const key = `sk-market-${randomBytes(12).toString('hex')}`;
    const adminKey = `market-admin-${randomBytes(12).toString('hex')}`;
    let overrides = deepMerge(world.gateway || {}, extra || {});
    const eachBackend = overrides.each_backend || {};
    overrides = { ...overrides };
    delete overrides.each_backend;
    const backends = nodes.map((sim) => {
        const n = sim.node;
        const model = {
            name: world.model,
            input_usd_per_mtok: n.prices.input[0],
            output_usd_per_mtok: n.prices.output[0],
        };
        if (n.upstream !== world.model) model.upstream = n.upstream;
        const b = deepMerge({ name: n.name, url: sim.url, prices_url: sim.feedUrl, prices_refresh_s: 1, models: [model] },
            eachBackend);
        // An experiment: "what if the gateway were told each node's true capacity".
        if (b.max_inflight === 'capacity') b.max_inflight = n.capacity;
        return b;
    });
    const config = deepMerge({
        listen: `127.0.0.1:${port}`,
        admin_listen: `127.0.0.1:${adminPort}`,
        admin_key: adminKey,
        ...DRIVER_DEFAULTS,
        keys: [{ name: 'market', key }],
        backends,
    }, overrides);
    return { config, key, adminKey };
}

// Reads MARKET_GATEWAY_CONFIG (a JSON file merged over every scenario's config), if set.
export function extraFromEnv(env = process.env) {
    const p = env.MARKET_GATEWAY_CONFIG;
    if (!p) return null;
    if (!existsSync(p)) throw new Error(`MARKET_GATEWAY_CONFIG: no such file ${p}`);
    return JSON.parse(readFileSync(p, 'utf8'));
}

function get(port, path, headers = {}, timeoutMs = 1000) {
    return new Promise((resolve) => {
        const req = http.get({ host: '127.0.0.1', port, path, headers, agent: false, timeout: timeoutMs }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c) => (body += c));
            res.on('end', () => resolve({ status: res.statusCode, body }));
            res.on('error', () => resolve({ status: 0, body: '' }));
        });
        req.on('timeout', () => req.destroy());
        req.on('error', () => resolve({ status: 0, body: '' }));
    });
}

export class Gateway {
    constructor(bin, cfgPath, logPath, errPath) {
        this.bin = bin;
        this.cfgPath = cfgPath;
        this.logPath = logPath;
        this.errPath = errPath;
        this.exit = null;
    }

    start(config) {
        writeFileSync(this.cfgPath, JSON.stringify(config, null, 2));
        this.port = Number(config.listen.split(':').pop());
        this.adminPort = Number(config.admin_listen.split(':').pop());
        this.adminKey = config.admin_key;
        const out = openSync(this.logPath, 'w'), err = openSync(this.errPath, 'w');
        this.proc = spawn(this.bin, ['-c', this.cfgPath], { stdio: ['ignore', out, err], env: { ...process.env } });
        closeSync(out);
        closeSync(err);
        this.exited = new Promise((ok) => this.proc.on('exit', (code, signal) => {
            this.exit = { code, signal };
            ok(this.exit);
        }));
        this.proc.on('error', (e) => {
            this.exit = { code: -1, signal: null, error: e.message };
        });
    }

    // Resolves when /readyz answers 200; rejects after timeoutMs or when the process exits.
    async ready(timeoutMs = 10000) {
        const until = Date.now() + timeoutMs;
        while (Date.now() < until) {
            if (this.exit) throw new Error(`gateway exited at start (${JSON.stringify(this.exit)}); see ${this.errPath}`);
            const r = await get(this.port, '/readyz', {}, 500);
            if (r.status === 200) return;
            await new Promise((ok) => setTimeout(ok, 50));
        }
        throw new Error(`gateway not ready within ${timeoutMs} ms; see ${this.errPath}`);
    }

    // The gateway's upstream attempts by outcome (tollgate_backend_requests_total), summed over
    // backends, and per backend: {total: {outcome: n}, byBackend: {name: {outcome: n}}}.
    async attempts(timeoutMs = 2000) {
        const r = await get(this.adminPort, '/metrics', { authorization: `Bearer ${this.adminKey}` }, timeoutMs);
        const total = {}, byBackend = {};
        if (r.status !== 200) return null;
        const re = /^tollgate_backend_requests_total\{backend="([^"]*)",model="[^"]*",outcome="([^"]*)"\} (\d+)$/;
        for (const line of r.body.split('\n')) {
            const m = re.exec(line);
            if (!m) continue;
            const n = Number(m[3]);
            total[m[2]] = (total[m[2]] || 0) + n;
            (byBackend[m[1]] ||= {})[m[2]] = ((byBackend[m[1]] || {})[m[2]] || 0) + n;
        }
        return { total, byBackend };
    }

    adminBackends(timeoutMs = 1000) {
        return get(this.adminPort, '/admin/backends', { authorization: `Bearer ${this.adminKey}` }, timeoutMs);
    }

    // SIGTERM, then SIGKILL after graceMs. Resolves with how it exited.
    async stop(graceMs = 5000) {
        if (!this.proc || this.exit) return this.exit;
        this.proc.kill('SIGTERM');
        const t = setTimeout(() => {
            if (!this.exit) this.proc.kill('SIGKILL');
        }, graceMs);
        const r = await this.exited;
        clearTimeout(t);
        return r;
    }

    killNow() {
        if (this.proc && !this.exit) this.proc.kill('SIGKILL');
    }
}

// Polls /admin/backends every periodMs while running. samples: [{t, b: {name: {...}}}].
export class AdminSampler {
    constructor(gateway, clock, periodMs = 250) {
        this.gateway = gateway;
        this.clock = clock;
        this.periodMs = periodMs;
        this.samples = [];
        this.failures = 0;
    }

    start() {
        this.running = true;
        const loop = async () => {
            if (!this.running) return;
            const t = this.clock.now();
            const r = await this.gateway.adminBackends(this.periodMs * 4);
            if (r.status === 200) {
                try {
                    const b = {};
                    for (const x of JSON.parse(r.body).backends) {
                        const m = x.models && x.models[0];
                        b[x.name] = { health: x.health, inflight: x.inflight, input: m ? m.input_usd_per_mtok : null,
                            output: m ? m.output_usd_per_mtok : null, source: m ? m.price_source : null,
                            ejected_for_ms: x.ejected_for_ms };
                    }
                    this.samples.push({ t, b });
                } catch {
                    this.failures++;
                }
            } else {
                this.failures++;
            }
            if (this.running) this.timer = setTimeout(loop, Math.max(0, this.periodMs - (this.clock.now() - t)));
        };
        loop();
    }

    stop() {
        this.running = false;
        clearTimeout(this.timer);
    }
}

// The gateway's one line per request (log_level info): request_id → {status, backend, cost,
// attempts, tokens}. Other lines (warnings) are counted by event.
export function parseGatewayLog(path) {
    const byId = new Map(), events = {};
    if (!existsSync(path)) return { byId, events };
    for (const line of readFileSync(path, 'utf8').split('\n')) {
        if (!line) continue;
        let o;
        try {
            o = JSON.parse(line);
        } catch {
            continue;
        }
        if (o.event === 'request' && o.request_id) {
            byId.set(o.request_id, {
                status: o.status, backend: o.backend || null, cost: o.cost_usd, attempts: o.attempts,
                prompt_tokens: o.prompt_tokens, completion_tokens: o.completion_tokens, duration_ms: o.duration_ms,
            });
        } else if (o.event) {
            events[o.event] = (events[o.event] || 0) + 1;
        }
    }
    return { byId, events };
}

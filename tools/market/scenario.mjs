// Scenario files: JSON with // and /* */ comments. loadScenario() reads and checks one;
// resolveWorld() draws everything it describes from its seed into a world (world.mjs): the
// nodes with their prices over time, outage windows and liars, and the arrival trace.
// The format is documented in README.md.

import { readFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hashString, makeRng, drawSpec } from './rng.mjs';
import { makeTrace } from './trace.mjs';
import { rankAt, outputTokens } from './world.mjs';

export const SCENARIO_DIR = join(dirname(fileURLToPath(import.meta.url)), 'scenarios');

// Removes // and /* */ comments outside strings, and trailing commas before } or ].
export function stripComments(text) {
    let out = '', i = 0;
    while (i < text.length) {
        const c = text[i];
        if (c === '"') {
            let j = i + 1;
            while (j < text.length && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
            out += text.slice(i, j + 1);
            i = j + 1;
        } else if (c === '/' && text[i + 1] === '/') {
            while (i < text.length && text[i] !== '\n') i++;
        } else if (c === '/' && text[i + 1] === '*') {
            const end = text.indexOf('*/', i + 2);
            i = end < 0 ? text.length : end + 2;
        } else {
            out += c;
            i++;
        }
    }
    return out.replace(/,(\s*[}\]])/g, '$1');
}

// A name ("churn") is looked up in scenarios/; anything with a slash or .json is a path.
export function scenarioPath(nameOrPath) {
    if (nameOrPath.includes('/') || nameOrPath.endsWith('.json')) return resolve(nameOrPath);
    return join(SCENARIO_DIR, `${nameOrPath}.json`);
}

class ScenarioError extends Error {}

function fail(path, msg) {
    throw new ScenarioError(`scenario ${path}: ${msg}`);
}

const OUTAGE_KINDS = ['crash', 'reset', '500', '429', 'hang', 'stall', 'slow'];

// A number spec (drawn by rng.mjs's drawSpec): a number, [lo, hi] (uniform), {"uniform":[lo,hi]}, {"loguniform":[lo,hi]},
// {"choice":[a,b,…]}.
function checkSpec(path, where, v, { min = -Infinity } = {}) {
    const ok = (x) => typeof x === 'number' && Number.isFinite(x) && x >= min;
    if (ok(v)) return;
    const pair = (a) => Array.isArray(a) && a.length === 2 && ok(a[0]) && ok(a[1]) && a[0] <= a[1];
    if (pair(v)) return;
    if (v && typeof v === 'object') {
        if (pair(v.uniform)) return;
        if (pair(v.loguniform) && v.loguniform[0] > 0) return;
        if (Array.isArray(v.choice) && v.choice.length && v.choice.every(ok)) return;
    }
    fail(path, `${where}: expected a number >= ${min}, [lo, hi], {"loguniform":[lo,hi]} or {"choice":[...]}`);
}

function specMean(v) {
    if (typeof v === 'number') return v;
    if (Array.isArray(v)) return (v[0] + v[1]) / 2;
    if (v.uniform) return (v.uniform[0] + v.uniform[1]) / 2;
    if (v.loguniform) {
        const [a, b] = v.loguniform;
        return a === b ? a : (b - a) / Math.log(b / a);
    }
    return v.choice.reduce((s, x) => s + x, 0) / v.choice.length;
}

function specRange(v) {
    if (typeof v === 'number') return [v, v];
    if (Array.isArray(v)) return v;
    if (v.uniform) return v.uniform;
    if (v.loguniform) return v.loguniform;
    return [Math.min(...v.choice), Math.max(...v.choice)];
}

function checkKeys(path, where, obj, allowed) {
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) fail(path, `${where}: expected an object`);
    for (const k of Object.keys(obj))
        if (!allowed.includes(k)) fail(path, `${where}: unknown key "${k}" (allowed: ${allowed.join(', ')})`);
}

function checkFraction(path, where, v) {
    if (!(Array.isArray(v) && v.length === 2 && v[0] > 0 && v[0] <= v[1] && v[1] <= 1))
        fail(path, `${where}: expected [lo, hi] with 0 < lo <= hi <= 1`);
}

// Reads and checks a scenario file. Returns the parsed object with defaults filled in.
export function loadScenario(nameOrPath) {
    const path = scenarioPath(nameOrPath);
    if (!existsSync(path)) throw new ScenarioError(`scenario ${nameOrPath}: no such file ${path}`);
    let s;
    try {
        s = JSON.parse(stripComments(readFileSync(path, 'utf8')));
    } catch (e) {
        fail(path, `not JSON: ${e.message}`);
    }
    checkKeys(path, 'top level', s, ['name', 'description', 'seed', 'duration_s', 'model', 'nodes',
        'outages', 'rotating_outages', 'liars', 'load', 'gateway', 'price_feeds']);
    s.price_feeds ??= 'node';
    if (!['node', 'separate'].includes(s.price_feeds)) fail(path, 'price_feeds: node or separate');
    s.path = path;
    s.name = s.name || nameOrPath.replace(/^.*\//, '').replace(/\.json$/, '');
    if (!Number.isInteger(s.seed)) fail(path, 'seed: expected an integer');
    if (!(s.duration_s > 0)) fail(path, 'duration_s: expected a positive number');
    s.model = s.model || 'llama-3.1-8b';
    if (!Array.isArray(s.nodes) || !s.nodes.length) fail(path, 'nodes: expected a non-empty array of groups');
    s.nodes.forEach((g, i) => {
        const w = `nodes[${i}]`;
        checkKeys(path, w, g, ['count', 'name', 'capacity', 'retry_after_s', 'ttfb_ms', 'token_ms', 'jitter',
            'input_usd_per_mtok', 'output_usd_per_mtok', 'prices', 'output_fraction', 'upstream']);
        if (!Number.isInteger(g.count ?? 1) || (g.count ?? 1) < 1) fail(path, `${w}.count: a positive integer`);
        checkSpec(path, `${w}.capacity`, g.capacity, { min: 1 });
        checkSpec(path, `${w}.ttfb_ms`, g.ttfb_ms, { min: 0 });
        checkSpec(path, `${w}.token_ms`, g.token_ms, { min: 0 });
        checkSpec(path, `${w}.input_usd_per_mtok`, g.input_usd_per_mtok, { min: 0 });
        checkSpec(path, `${w}.output_usd_per_mtok`, g.output_usd_per_mtok, { min: 0 });
        if (g.retry_after_s !== undefined && !(g.retry_after_s >= 0)) fail(path, `${w}.retry_after_s: >= 0`);
        if (g.jitter !== undefined && !(g.jitter >= 0 && g.jitter < 2)) fail(path, `${w}.jitter: 0 <= sigma < 2`);
        if (g.output_fraction !== undefined) checkFraction(path, `${w}.output_fraction`, g.output_fraction);
        const p = g.prices || { kind: 'static' };
        checkKeys(path, `${w}.prices`, p, ['kind', 'every_s', 'sigma', 'phase']);
        if (!['static', 'drift', 'redraw'].includes(p.kind)) fail(path, `${w}.prices.kind: static, drift or redraw`);
        if (p.kind !== 'static' && !(p.every_s > 0)) fail(path, `${w}.prices.every_s: a positive number`);
        if (p.kind === 'drift' && !(p.sigma >= 0)) fail(path, `${w}.prices.sigma: >= 0`);
        if (p.phase !== undefined && !['aligned', 'random'].includes(p.phase))
            fail(path, `${w}.prices.phase: aligned or random`);
    });
    s.outages = s.outages || [];
    if (!Array.isArray(s.outages)) fail(path, 'outages: expected an array');
    s.outages.forEach((o, i) => {
        const w = `outages[${i}]`;
        checkKeys(path, w, o, ['node', 'kind', 'start_s', 'duration_s', 'factor']);
        if (!OUTAGE_KINDS.includes(o.kind)) fail(path, `${w}.kind: one of ${OUTAGE_KINDS.join(', ')}`);
        if (!(o.start_s >= 0) || !(o.duration_s > 0)) fail(path, `${w}: start_s >= 0 and duration_s > 0`);
        if (o.kind === 'slow' && !(o.factor >= 1)) fail(path, `${w}.factor: >= 1 for a slow outage`);
    });
    if (s.rotating_outages) {
        const r = s.rotating_outages, w = 'rotating_outages';
        checkKeys(path, w, r, ['out', 'of_cheapest', 'kinds', 'duration_s', 'start_s', 'slow_factor']);
        if (!Number.isInteger(r.out) || r.out < 1) fail(path, `${w}.out: a positive integer`);
        if (!Number.isInteger(r.of_cheapest) || r.of_cheapest < r.out) fail(path, `${w}.of_cheapest: an integer >= out`);
        if (!Array.isArray(r.kinds) || !r.kinds.length || !r.kinds.every((k) => OUTAGE_KINDS.includes(k)))
            fail(path, `${w}.kinds: a list of ${OUTAGE_KINDS.join(', ')}`);
        checkSpec(path, `${w}.duration_s`, r.duration_s, { min: 0.1 });
    }
    s.liars = s.liars || [];
    if (!Array.isArray(s.liars)) fail(path, 'liars: expected an array');
    s.liars.forEach((l, i) => {
        checkKeys(path, `liars[${i}]`, l, ['node', 'rank', 'factor']);
        if (!(l.factor > 0)) fail(path, `liars[${i}].factor: a positive number`);
        if ((l.node === undefined) === (l.rank === undefined)) fail(path, `liars[${i}]: exactly one of node, rank`);
    });
    const L = s.load;
    checkKeys(path, 'load', L, ['rate', 'stream_fraction', 'include_usage_fraction', 'prompt_tokens',
        'max_tokens', 'output_fraction', 'client_timeout_s']);
    if (!Array.isArray(L.rate) || !L.rate.length ||
        !L.rate.every((x, i) => Array.isArray(x) && x.length === 2 && x[0] >= 0 && x[0] < 1 && x[1] >= 0 &&
                                (i === 0 ? x[0] === 0 : x[0] > L.rate[i - 1][0])))
        fail(path, 'load.rate: [[0, req/s], [fraction of the run, req/s], …], fractions rising from 0');
    L.stream_fraction ??= 0.5;
    L.include_usage_fraction ??= 0.5;
    L.client_timeout_s ??= 30;
    L.output_fraction ??= [0.3, 1];
    checkFraction(path, 'load.output_fraction', L.output_fraction);
    checkSpec(path, 'load.prompt_tokens', L.prompt_tokens, { min: 8 });
    checkSpec(path, 'load.max_tokens', L.max_tokens, { min: 1 });
    if (s.gateway !== undefined && (typeof s.gateway !== 'object' || Array.isArray(s.gateway)))
        fail(path, 'gateway: an object merged into the gateway config');
    return s;
}

function round6(x) {
    return Number(x.toPrecision(6));
}

function reflect(x, lo, hi) {
    if (hi <= lo) return lo;
    for (let i = 0; i < 8 && (x < lo || x > hi); i++) x = x < lo ? 2 * lo - x : 2 * hi - x;
    return Math.min(hi, Math.max(lo, x));
}

// A node's price path over [0, durationMs): times (ms; the first is -Infinity) and prices.
function pricePath(group, rng, durationMs) {
    const inR = specRange(group.input_usd_per_mtok), outR = specRange(group.output_usd_per_mtok);
    const p = group.prices || { kind: 'static' };
    const t = [-Infinity], input = [round6(drawSpec(group.input_usd_per_mtok, rng))];
    const output = [round6(drawSpec(group.output_usd_per_mtok, rng))];
    if (p.kind === 'static') return { t, input, output };
    const every = p.every_s * 1000;
    let at = p.kind === 'redraw' && p.phase !== 'aligned' ? rng.uniform(0, every) : every;
    // A redraw with a random phase also gets its first change inside the first period.
    for (; at < durationMs; at += every) {
        let i, o;
        if (p.kind === 'redraw') {
            i = drawSpec(group.input_usd_per_mtok, rng);
            o = drawSpec(group.output_usd_per_mtok, rng);
        } else {
            i = reflect(input[input.length - 1] * Math.exp(p.sigma * rng.normal()), inR[0], inR[1]);
            o = reflect(output[output.length - 1] * Math.exp(p.sigma * rng.normal()), outR[0], outR[1]);
        }
        t.push(Math.round(at));
        input.push(round6(i));
        output.push(round6(o));
    }
    return { t, input, output };
}

// k of the cheapest m nodes out at any time: when an outage ends, another node among the m
// cheapest at that moment (not out, not the one just back) goes out, so k are always out.
function rotatingOutages(world, r, rng, durationMs) {
    const start = (r.start_s ?? 0) * 1000;
    const active = []; // {node, end}
    const pickAt = (t, exclude) => {
        const free = (n) => !active.some((a) => a.node === n) && n !== exclude;
        const ranked = rankAt(world, t);
        const cheapest = ranked.slice(0, r.of_cheapest).filter(free);
        return cheapest.length ? rng.pick(cheapest) : ranked.find(free);
    };
    const begin = (t, exclude) => {
        const node = pickAt(t, exclude);
        if (!node) return; // fewer nodes than outages: fewer are out
        const kind = rng.pick(r.kinds);
        const end = t + drawSpec(r.duration_s, rng) * 1000;
        const o = { kind, start: Math.round(t), end: Math.round(end), rotating: true };
        if (kind === 'slow') o.factor = r.slow_factor ?? 10;
        node.outages.push(o);
        active.push({ node, end: o.end });
    };
    for (let i = 0; i < r.out; i++) begin(start, null);
    for (let guard = 0; guard < 100000; guard++) {
        active.sort((a, b) => a.end - b.end);
        const first = active[0];
        if (!first || first.end >= durationMs) break;
        active.shift();
        begin(first.end, first.node);
    }
}

// Everything the scenario describes, drawn from its seed. opts: {durationS, seed} override the
// file's. The world is plain data (it goes to the load generator's thread as it is).
export function resolveWorld(scenario, opts = {}) {
    const seed = opts.seed ?? scenario.seed;
    const durationS = opts.durationS ?? scenario.duration_s;
    const durationMs = durationS * 1000;
    // The seed alone names the draws: two scenarios with the same seed and the same node groups
    // get the same nodes and trace (liars is calm plus a liar).
    const tag = `seed/${seed}`;
    const world = {
        name: scenario.name,
        description: scenario.description || '',
        path: scenario.path,
        seed,
        seedHash: hashString(tag),
        durationMs,
        model: scenario.model,
        price_feeds: scenario.price_feeds,
        load: {
            ...scenario.load,
            client_timeout_ms: scenario.load.client_timeout_s * 1000,
        },
        gateway: scenario.gateway || {},
        nodes: [],
    };
    const nodeRng = makeRng(`${tag}/nodes`);
    for (const g of scenario.nodes) {
        for (let k = 0; k < (g.count ?? 1); k++) {
            const idx = world.nodes.length;
            const name = g.name && (g.count ?? 1) === 1 ? g.name : `node-${String(idx + 1).padStart(2, '0')}`;
            world.nodes.push({
                idx,
                name,
                upstream: g.upstream || scenario.model,
                capacity: Math.max(1, Math.round(drawSpec(g.capacity, nodeRng))),
                retry_after_s: g.retry_after_s ?? 1,
                ttfb_ms: drawSpec(g.ttfb_ms, nodeRng),
                token_ms: drawSpec(g.token_ms, nodeRng),
                jitter: g.jitter ?? 0.2,
                output_fraction: g.output_fraction || null,
                liar: 1,
                outages: [],
                // Each node's prices come from its own stream: a longer run extends them.
                prices: pricePath(g, makeRng(`${tag}/prices/${idx}`), durationMs),
            });
        }
    }
    world.trace = makeTrace(world.load, makeRng(`${tag}/trace`), durationMs);
    // The typical request that ranks nodes ("the cheapest m", a liar's rank).
    const n = world.trace.length || 1;
    world.ref = {
        prompt: world.trace.reduce((s, r) => s + r.prompt, 0) / n ||
                specMean(scenario.load.prompt_tokens),
        output: world.trace.reduce((s, r) => s + outputTokens(world, { idx: -1 }, r), 0) / n ||
                specMean(scenario.load.max_tokens) * (world.load.output_fraction[0] + world.load.output_fraction[1]) / 2,
    };
    for (const l of scenario.liars) {
        const node = l.rank !== undefined ? rankAt(world, 0)[l.rank - 1]
                                          : world.nodes.find((x) => x.name === l.node);
        if (!node) throw new ScenarioError(`scenario ${scenario.path}: liar ${JSON.stringify(l)} names no node`);
        node.liar = l.factor;
    }
    for (const o of scenario.outages) {
        const node = typeof o.node === 'number' ? world.nodes[o.node - 1] : world.nodes.find((x) => x.name === o.node);
        if (!node) throw new ScenarioError(`scenario ${scenario.path}: outage names no node: ${JSON.stringify(o.node)}`);
        const w = { kind: o.kind, start: o.start_s * 1000, end: (o.start_s + o.duration_s) * 1000 };
        if (o.kind === 'slow') w.factor = o.factor;
        node.outages.push(w);
    }
    if (scenario.rotating_outages)
        rotatingOutages(world, scenario.rotating_outages, makeRng(`${tag}/outages`), durationMs);
    for (const node of world.nodes) node.outages.sort((a, b) => a.start - b.start);
    return world;
}

export { ScenarioError };

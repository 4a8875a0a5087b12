// Self-checks of the simulator's logic: `node --test tools/market/`. Not part of make test.
// The replays on hand-made worlds whose right answers can be worked out on paper, the trace's
// determinism and rates, token accounting, price paths, rotating outages, and one simulated
// node over real HTTP.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { makeRng, unitAt } from './rng.mjs';
import { makeTrace, buildMessages, buildBody, rateSegments } from './trace.mjs';
import { countPromptTokens, requestIndex, priceAt, outageAt, serviceTime, upAt } from './world.mjs';
import { oracle, lateOracle, lowestCost, inverseSquare, maxTokensOracle, ratioOver } from './oracle.mjs';
import { loadScenario, resolveWorld, stripComments } from './scenario.mjs';
import { SimNode, perTokenDecimal } from './node.mjs';
import { makeClock, absNow } from './clock.mjs';
import { attemptTrue, attemptClaimed, quantile } from './report.mjs';
import { gatewayConfig, deepMerge } from './gateway.mjs';

// A node for hand-made worlds: static prices unless `changes` ([[t, in, out], …]) are given,
// no jitter, and every request gets exactly max_tokens (output_fraction [1, 1]).
function node(idx, input, output, capacity, { ttfb = 0, tokenMs = 1, changes = [], outages = [], liar = 1 } = {}) {
    return {
        idx, name: `n${idx}`, upstream: 'm', capacity, retry_after_s: 1, ttfb_ms: ttfb, token_ms: tokenMs,
        jitter: 0, output_fraction: null, liar, outages,
        prices: { t: [-Infinity, ...changes.map((c) => c[0])], input: [input, ...changes.map((c) => c[1])],
            output: [output, ...changes.map((c) => c[2])] },
    };
}

function world(nodes, trace) {
    return { name: 't', seed: 1, seedHash: 1, durationMs: 10000, model: 'm', nodes,
        load: { output_fraction: [1, 1], client_timeout_ms: 30000 }, trace,
        ref: { prompt: 100, output: 100 } };
}

// Requests of 1,000,000 prompt tokens and max_tokens 100: prompt cost = input price in USD.
const req = (idx, t, extra = {}) => ({ idx, t, stream: false, usage: false, prompt: 1e6, max_tokens: 100, ...extra });

test('oracle: cheapest up node with a free slot, slots held for the true service time', () => {
    // cheap: 1 slot, 100 tokens × 1 ms = 100 ms per request; dear: plenty of slots.
    const w = world([node(0, 1, 0, 1), node(1, 3, 0, 10)], [req(0, 0), req(1, 50), req(2, 99), req(3, 100), req(4, 150)]);
    const o = oracle(w);
    assert.deepEqual(o.map((x) => x.node), [0, 1, 1, 0, 1]);
    assert.deepEqual(o.map((x) => x.cost), [1, 3, 3, 1, 3]);
});

test('oracle: a node that is out is skipped (crash, 500, hang, 429), a slow one is not', () => {
    for (const kind of ['crash', 'reset', '500', 'hang', 'stall', '429']) {
        const w = world([node(0, 1, 0, 5, { outages: [{ kind, start: 0, end: 50 }] }), node(1, 2, 0, 5)],
            [req(0, 10), req(1, 60)]);
        assert.deepEqual(oracle(w).map((x) => x.node), [1, 0], kind);
    }
    const slow = node(0, 1, 0, 1, { outages: [{ kind: 'slow', start: 0, end: 50, factor: 10 }] });
    const w = world([slow, node(1, 2, 0, 5)], [req(0, 10), req(1, 200), req(2, 1010)]);
    // The slow request holds the only slot for 10 × 100 ms: the next one goes to the dear node.
    assert.deepEqual(oracle(w).map((x) => x.node), [0, 1, 0]);
    assert.equal(serviceTime(w, slow, req(0, 10), 10).total, 1000);
});

test('oracle: nothing up or free means not served', () => {
    const w = world([node(0, 1, 0, 1)], [req(0, 0), req(1, 10)]);
    const o = oracle(w);
    assert.equal(o[0].node, 0);
    assert.equal(o[1], null);
});

test('oracle ranks by true tokens; the max_tokens oracle by what a router knows', () => {
    // A: cheap input, dear output; B the opposite. Request: 1M prompt tokens, max_tokens 100 but
    // only 10 tokens really come out (output_fraction 0.1).
    const a = node(0, 1, 20000, 5), b = node(1, 1.5, 0, 5);
    const w = world([a, b], [req(0, 0)]);
    w.load.output_fraction = [0.1, 0.1];
    // True: A = 1 + 10 × 20000 / 1e6 = 1.2, B = 1.5. By max_tokens: A = 1 + 2 = 3, B = 1.5.
    assert.equal(oracle(w)[0].node, 0);
    assert.equal(maxTokensOracle(w)[0].node, 1);
});

test('late oracle chooses with prices 1 s old and pays the price in force', () => {
    // At t = 1000 node 0 goes from 1 to 5; node 1 stays at 2.
    const w = world([node(0, 1, 0, 5, { changes: [[1000, 5, 0]] }), node(1, 2, 0, 5)],
        [req(0, 500), req(1, 1500), req(2, 2500)]);
    const o = oracle(w), l = lateOracle(w, 1000);
    assert.deepEqual(o.map((x) => x.node), [0, 1, 1]);
    assert.deepEqual(l.map((x) => x.node), [0, 0, 1]);
    assert.deepEqual(l.map((x) => x.cost), [1, 5, 2]);
    const r = ratioOver(l, o);
    assert.equal(r.ratio, (1 + 5 + 2) / (1 + 2 + 2));
});

test("LiteLLM's lowest-cost uses the static t = 0 in+out sum; OpenRouter's draw is ∝ 1/price²", () => {
    const w = world([node(0, 1, 0, 5, { changes: [[100, 9, 0]] }), node(1, 2, 0, 5)], [req(0, 0), req(1, 200)]);
    assert.deepEqual(lowestCost(w).map((x) => x.node), [0, 0]);
    assert.deepEqual(lowestCost(w).map((x) => x.cost), [1, 9]);
    // 1/1² : 1/2² = 4 : 1, so 80% to node 0, with room for everything.
    const trace = Array.from({ length: 20000 }, (_, i) => req(i, i * 1000));
    const w2 = world([node(0, 1, 0, 5), node(1, 2, 0, 5)], trace);
    const share = inverseSquare(w2).filter((x) => x.node === 0).length / trace.length;
    assert.ok(Math.abs(share - 0.8) < 0.015, `share ${share}`);
    // Same seed, same draws.
    assert.deepEqual(inverseSquare(w2).map((x) => x.node), inverseSquare(w2).map((x) => x.node));
});

test('liars: claimed cost is the factor × true cost, in every replay', () => {
    const w = world([node(0, 1, 0, 5, { liar: 100 }), node(1, 2, 0, 5)], [req(0, 0)]);
    assert.equal(oracle(w)[0].claimed, 100);
    assert.equal(attemptClaimed({ outcome: 'served', price_in: 1, price_out: 1, claimed_prompt: 300, claimed_completion: 100 }), 400 / 1e6);
    assert.equal(attemptTrue({ outcome: 'cancelled', first_byte: null, price_in: 1, price_out: 1, prompt: 3, delivered: 1 }), 0);
    assert.equal(attemptTrue({ outcome: 'cut', first_byte: 5, price_in: 1, price_out: 1, prompt: 3, delivered: 1 }), 4 / 1e6);
});

test('Poisson trace: the same seed gives the same trace, rates are kept per segment', () => {
    const load = { rate: [[0, 100], [1 / 3, 180], [2 / 3, 100]], stream_fraction: 0.5, include_usage_fraction: 0.5,
        prompt_tokens: { loguniform: [50, 2000] }, max_tokens: { choice: [64, 128, 256] } };
    const a = makeTrace(load, makeRng('seed/7/trace'), 60000);
    const b = makeTrace(load, makeRng('seed/7/trace'), 60000);
    const c = makeTrace(load, makeRng('seed/8/trace'), 60000);
    assert.deepEqual(a, b);
    assert.notDeepEqual(a, c);
    for (const seg of rateSegments(load.rate, 60000)) {
        const n = a.filter((r) => r.t >= seg.start && r.t < seg.end).length;
        const mean = (seg.rate * (seg.end - seg.start)) / 1000, sd = Math.sqrt(mean);
        assert.ok(Math.abs(n - mean) < 4 * sd, `segment ${seg.start}: ${n} vs ${mean}`);
    }
    for (let i = 1; i < a.length; i++) assert.ok(a[i].t > a[i - 1].t && a[i].idx === i);
    // Exponential gaps: their coefficient of variation is 1.
    const gaps = a.filter((r) => r.t < 20000).map((r, i, x) => (i ? r.t - x[i - 1].t : null)).slice(1);
    const m = gaps.reduce((s, g) => s + g, 0) / gaps.length;
    const cv = Math.sqrt(gaps.reduce((s, g) => s + (g - m) ** 2, 0) / gaps.length) / m;
    assert.ok(Math.abs(cv - 1) < 0.1, `cv ${cv}`);
    const streams = a.filter((r) => r.stream).length / a.length;
    assert.ok(Math.abs(streams - 0.5) < 0.03);
    assert.ok(a.every((r) => r.prompt >= 50 && r.prompt <= 2000 && [64, 128, 256].includes(r.max_tokens)));
});

test('prompts: the nodes count exactly the tokens the trace says, and find the request', () => {
    for (const prompt of [8, 9, 50, 777, 2000, 9000]) {
        const r = { idx: 4242, prompt, max_tokens: 10, stream: true, usage: true };
        const msgs = buildMessages(r);
        assert.equal(countPromptTokens(msgs), prompt);
        assert.equal(requestIndex(msgs), 4242);
        // About four bytes a token, as the gateway assumes.
        if (prompt >= 500) assert.ok(Math.abs(msgs[0].content.length / prompt - 4) < 0.6);
        const body = JSON.parse(buildBody({ model: 'm' }, r));
        assert.deepEqual(body.stream_options, { include_usage: true });
    }
});

test('keyed draws and world functions are pure', () => {
    assert.equal(unitAt(1, 2, 3), unitAt(1, 2, 3));
    assert.notEqual(unitAt(1, 2, 3), unitAt(1, 2, 4));
    const s = loadScenario('churn');
    const w1 = resolveWorld(s, { durationS: 20 }), w2 = resolveWorld(s, { durationS: 20 });
    assert.deepEqual(w1, w2);
    const r = w1.trace[10], n = w1.nodes[3];
    assert.deepEqual(serviceTime(w1, n, r, r.t), serviceTime(w2, w2.nodes[3], r, r.t));
});

test('scenarios: price paths stay in range; redraws are every every_s', () => {
    const calm = resolveWorld(loadScenario('calm'), { durationS: 30 });
    for (const n of calm.nodes) {
        assert.ok(n.prices.input.every((x) => x >= 0.03 && x <= 0.2));
        assert.ok(n.prices.output.every((x) => x >= 0.05 && x <= 0.4));
        assert.deepEqual(n.prices.t.slice(1, 4), [1000, 2000, 3000]);
    }
    const churn = resolveWorld(loadScenario('churn'), { durationS: 30 });
    for (const n of churn.nodes) assert.deepEqual(n.prices.t.slice(1), [5000, 10000, 15000, 20000, 25000]);
    assert.equal(churn.nodes.length, 20);
    assert.ok(churn.nodes.every((n) => n.capacity >= 4 && n.capacity <= 16));
    const liars = resolveWorld(loadScenario('liars'), { durationS: 30 });
    const liar = liars.nodes.filter((n) => n.liar !== 1);
    assert.equal(liar.length, 1);
    assert.equal(liar[0].liar, 100);
    // liars is calm plus the liar: same seed, same nodes and trace.
    assert.deepEqual(liars.trace, calm.trace);
    assert.deepEqual(liars.nodes.map((n) => n.prices), calm.nodes.map((n) => n.prices));
    const ref = (x) => x.prices.input[0] * liars.ref.prompt + x.prices.output[0] * liars.ref.output;
    assert.ok(liars.nodes.every((n) => ref(liar[0]) <= ref(n)));
});

test('rotating outages: exactly k of the cheapest m out at any time', () => {
    const s = loadScenario('churn');
    const w = resolveWorld(s, { durationS: 60 });
    for (let t = 0; t < 60000; t += 137) {
        const out = w.nodes.filter((n) => outageAt(n, t));
        assert.equal(out.length, 2, `t=${t}`);
    }
    for (const n of w.nodes) {
        for (const o of n.outages) {
            assert.ok(['crash', '500', 'hang'].includes(o.kind));
            assert.ok(o.end - o.start >= 3000 && o.end - o.start <= 10000);
            // Among the 6 cheapest at its start (by the reference request).
            const cost = (x) => { const p = priceAt(x, o.start); return p.input * w.ref.prompt + p.output * w.ref.output; };
            const rank = w.nodes.filter((x) => cost(x) < cost(n)).length;
            assert.ok(rank < 6, `rank ${rank}`);
            assert.ok(!upAt(n, o.start) && upAt(n, o.end));
        }
    }
});

test('scenario files: comments, unknown keys refused', () => {
    assert.deepEqual(JSON.parse(stripComments('{"a": "x // y", /* c */ "b": [1,2,], // d\n}')), { a: 'x // y', b: [1, 2] });
    assert.throws(() => loadScenario('/nonexistent/x.json'), /no such file/);
});

test('gateway config: every node a backend with a feed read every second; overrides merge', () => {
    const w = resolveWorld(loadScenario('calm'), { durationS: 5 });
    const fake = w.nodes.map((n) => ({ node: n, url: `http://127.0.0.1:1/v1`, feedUrl: 'http://127.0.0.1:1/api/v1/models' }));
    const { config, key } = gatewayConfig({ ...w, gateway: { routing: { retries: 3 }, each_backend: { max_inflight: 7 } } },
        fake, { port: 1, adminPort: 2, extra: { health: { interval_ms: 500 } } });
    assert.equal(config.backends.length, 8);
    assert.ok(config.backends.every((b) => b.prices_refresh_s === 1 && b.max_inflight === 7 && b.prices_url));
    assert.equal(config.backends[0].models[0].input_usd_per_mtok, w.nodes[0].prices.input[0]);
    assert.equal(config.routing.retries, 3);
    assert.deepEqual(config.health, { interval_ms: 500, timeout_ms: 1000 });
    assert.equal(config.keys[0].key, key);
    assert.equal(config.redis, undefined);
    assert.deepEqual(deepMerge({ a: { b: 1, c: 2 } }, { a: { c: 3 } }), { a: { b: 1, c: 3 } });
    const told = gatewayConfig({ ...w, gateway: { each_backend: { max_inflight: 'capacity' } } }, fake, { port: 1, adminPort: 2 });
    assert.deepEqual(told.config.backends.map((b) => b.max_inflight), w.nodes.map((n) => n.capacity));
});

test('price feed decimals', () => {
    assert.equal(perTokenDecimal(0.0537), '0.0000000537');
    assert.equal(perTokenDecimal(2), '0.000002');
    assert.equal(perTokenDecimal(0), '0');
    for (const x of [0.03, 0.123456, 0.6, 12.5]) assert.ok(Math.abs(Number(perTokenDecimal(x)) * 1e6 - x) < 1e-12);
    assert.equal(quantile([1, 2, 3, 4], 0.5), 2);
});

function request(port, method, path, body, headers = {}) {
    return new Promise((resolve, reject) => {
        const r = http.request({ host: '127.0.0.1', port, method, path, agent: false,
            headers: { 'content-type': 'application/json', ...headers } }, (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c) => (text += c));
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, text }));
        });
        r.on('error', reject);
        r.end(body);
    });
}

test('a simulated node over HTTP: answers, streams, usage, capacity, feed, records', async () => {
    const liar = node(0, 0.1, 0.2, 1, { ttfb: 5, tokenMs: 1, liar: 3 });
    const w = world([liar], [req(0, 0, { prompt: 20, max_tokens: 8 }), req(1, 0, { prompt: 20, max_tokens: 8, stream: true, usage: true })]);
    const clock = makeClock(absNow() - 50); // the load started 50 ms ago
    const sim = new SimNode(w, liar, clock);
    await sim.start();
    try {
        const r0 = await request(sim.port, 'POST', '/v1/chat/completions', buildBody(w, w.trace[0]), { 'x-request-id': 'm-0' });
        assert.equal(r0.status, 200);
        const a0 = JSON.parse(r0.text);
        assert.equal(a0.choices[0].message.content, ' tok'.repeat(8));
        assert.deepEqual(a0.usage, { prompt_tokens: 60, completion_tokens: 24, total_tokens: 84 });
        const r1 = await request(sim.port, 'POST', '/v1/chat/completions', buildBody(w, w.trace[1]));
        assert.equal(r1.status, 200);
        assert.match(r1.headers['content-type'], /text\/event-stream/);
        const events = r1.text.split('\n\n').filter(Boolean);
        assert.equal(events[events.length - 1], 'data: [DONE]');
        const usage = JSON.parse(events[events.length - 2].slice(6));
        assert.deepEqual(usage.usage, { prompt_tokens: 60, completion_tokens: 24, total_tokens: 84 });
        const text = events.map((e) => JSON.parse(e.slice(6) === '[DONE]' ? '{}' : e.slice(6)))
            .map((o) => (o.choices && o.choices[0] && o.choices[0].delta && o.choices[0].delta.content) || '').join('');
        assert.equal(text, ' tok'.repeat(8));
        // Capacity 1: a second request while one is in service gets 429 with retry-after.
        const slow = { ...w.trace[0], max_tokens: 200 };
        const first = request(sim.port, 'POST', '/v1/chat/completions', buildBody(w, slow));
        await new Promise((ok) => setTimeout(ok, 20));
        const full = await request(sim.port, 'POST', '/v1/chat/completions', buildBody(w, w.trace[0]));
        assert.equal(full.status, 429);
        assert.equal(full.headers['retry-after'], '1');
        assert.equal((await first).status, 200);
        // The feed, with its ETag.
        const f = await request(sim.port, 'GET', '/api/v1/models');
        assert.equal(f.status, 200);
        assert.deepEqual(JSON.parse(f.text).data[0].pricing, { prompt: '0.0000001', completion: '0.0000002' });
        const again = await request(sim.port, 'GET', '/api/v1/models', undefined, { 'if-none-match': f.headers.etag });
        assert.equal(again.status, 304);
        assert.equal((await request(sim.port, 'GET', '/v1/models')).status, 200);
        const recs = sim.records;
        assert.deepEqual(recs.map((r) => r.outcome), ['served', 'served', 'served', '429']);
        assert.equal(recs[0].rid, 'm-0');
        assert.equal(recs[0].prompt, 20);
        assert.equal(recs[0].completion, 8);
        assert.equal(recs[0].claimed_completion, 24);
        assert.equal(recs[0].price_in, 0.1);
        // Served on time: ttfb + 8 tokens × 1 ms, give or take the timers.
        assert.ok(recs[0].end - recs[0].t >= 12 && recs[0].end - recs[0].t < 60, `${recs[0].end - recs[0].t}`);
    } finally {
        await sim.stop();
    }
});

test('a simulated node in outages: 500, hang, stall, crash', async () => {
    const n = node(0, 1, 1, 5, { outages: [{ kind: '500', start: 0, end: 1e9 }] });
    const w = world([n], [req(0, 0, { prompt: 20, max_tokens: 4 })]);
    const clock = makeClock(absNow() - 10);
    const sim = new SimNode(w, n, clock);
    await sim.start();
    try {
        assert.equal((await request(sim.port, 'POST', '/v1/chat/completions', buildBody(w, w.trace[0]))).status, 500);
        assert.equal((await request(sim.port, 'GET', '/v1/models')).status, 500);
        n.outages[0].kind = 'hang';
        const hung = await new Promise((resolve) => {
            const r = http.request({ host: '127.0.0.1', port: sim.port, method: 'POST', path: '/v1/chat/completions', agent: false },
                () => resolve('answered'));
            r.on('error', () => resolve('closed'));
            r.setTimeout(150, () => r.destroy());
            r.end(buildBody(w, w.trace[0]));
        });
        assert.equal(hung, 'closed');
        await new Promise((ok) => setTimeout(ok, 20));
        // A stall: probes answer, the request holds its slot and gets nothing.
        n.outages[0].kind = 'stall';
        assert.equal((await request(sim.port, 'GET', '/v1/models')).status, 200);
        const stalled = await new Promise((resolve) => {
            const r = http.request({ host: '127.0.0.1', port: sim.port, method: 'POST', path: '/v1/chat/completions', agent: false },
                () => resolve('answered'));
            r.on('error', () => resolve('closed'));
            r.setTimeout(150, () => {
                assert.equal(sim.inService, 1);
                r.destroy();
            });
            r.end(buildBody(w, w.trace[0]));
        });
        assert.equal(stalled, 'closed');
        await new Promise((ok) => setTimeout(ok, 20));
        assert.equal(sim.inService, 0);
        n.outages[0].kind = 'crash';
        sim.crash();
        await assert.rejects(request(sim.port, 'GET', '/v1/models'), /ECONNREFUSED/);
        n.outages[0].end = -1;
        sim.restore();
        await new Promise((ok) => setTimeout(ok, 50));
        assert.equal((await request(sim.port, 'GET', '/v1/models')).status, 200);
        assert.deepEqual(sim.records.map((r) => r.outcome), ['500', 'hung', 'stalled']);
    } finally {
        await sim.stop();
    }
});

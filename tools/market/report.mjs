// The figures of one run, computed from the nodes' own records (what each node received, did
// and would bill), the client's records, the gateway's request log (what it billed) and its
// /admin/backends samples (its view of the nodes), against the replays of oracle.mjs. Then the
// table printed after a run and the section appended to bench/MARKET.md.

import { appendFileSync, existsSync, writeFileSync } from 'node:fs';
import { costUsd, priceAt, upAt, outageAt } from './world.mjs';
import { oracle, lateOracle, maxTokensOracle, lowestCost, inverseSquare, ratioOver } from './oracle.mjs';

export function quantile(sorted, q) {
    if (!sorted.length) return NaN;
    const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
    return sorted[i];
}

const asc = (a, b) => a - b;

// What a node truly charges for one attempt: the prompt and the tokens it delivered, once it
// started answering (a refused, failed, hung or full answer costs nothing).
export function attemptTrue(rec) {
    if (rec.outcome === 'served') return costUsd({ input: rec.price_in, output: rec.price_out }, rec.prompt, rec.completion);
    if ((rec.outcome === 'cancelled' || rec.outcome === 'cut') && rec.first_byte !== null)
        return costUsd({ input: rec.price_in, output: rec.price_out }, rec.prompt, rec.delivered);
    return 0;
}

// What the node would bill for it: its claimed usage (for a cut answer, its factor × delivered).
export function attemptClaimed(rec) {
    if (rec.outcome === 'served')
        return costUsd({ input: rec.price_in, output: rec.price_out }, rec.claimed_prompt, rec.claimed_completion);
    if ((rec.outcome === 'cancelled' || rec.outcome === 'cut') && rec.first_byte !== null) {
        const f = rec.prompt ? rec.claimed_prompt / rec.prompt : 1;
        return costUsd({ input: rec.price_in, output: rec.price_out }, rec.claimed_prompt, rec.delivered * f);
    }
    return 0;
}

function occupancyIndex(records) {
    // Per node: sorted slot intervals [start, end) of every request that held a slot.
    const by = new Map();
    for (const r of records) {
        if (!r.slot) continue;
        if (!by.has(r.node)) by.set(r.node, []);
        by.get(r.node).push([r.t, r.end]);
    }
    for (const v of by.values()) v.sort((a, b) => a[0] - b[0]);
    return (node, t) => {
        const v = by.get(node) || [];
        let n = 0;
        for (const [s, e] of v) {
            if (s > t) break;
            if (e > t) n++;
        }
        return n;
    };
}

// Time from each true price change to the first admin sample showing it (null when the next
// change came first, or no sample after it).
function priceLags(world, samples) {
    const lags = [];
    let missed = 0;
    for (const node of world.nodes) {
        const p = node.prices;
        for (let i = 1; i < p.t.length; i++) {
            const tc = p.t[i], next = i + 1 < p.t.length ? p.t[i + 1] : Infinity;
            if (tc < 0 || tc > world.durationMs) continue;
            const same = (a, b) => Math.abs(a - b) <= 1e-6 * Math.max(1e-9, Math.abs(b));
            const s = samples.find((x) => x.t >= tc && x.t < next && x.b[node.name] &&
                same(x.b[node.name].input, p.input[i]) && same(x.b[node.name].output, p.output[i]));
            if (s) lags.push(s.t - tc);
            else if (samples.some((x) => x.t >= next)) missed++;
        }
    }
    return { lags: lags.sort(asc), missed };
}

function summary(sorted) {
    return sorted.length ? { n: sorted.length, p50: quantile(sorted, 0.5), p90: quantile(sorted, 0.9),
        max: sorted[sorted.length - 1] } : { n: 0 };
}

// run: {world, nodes: [{name, records, feeds, probes, maxInService}], client, log, samples, meta}
export function analyse(run) {
    const { world, client, log, samples } = run;
    const trace = world.trace;
    const nodeRecords = run.nodes.flatMap((n) => n.records);
    const recsByIdx = new Map();
    for (const r of nodeRecords) {
        if (r.idx < 0) continue;
        if (!recsByIdx.has(r.idx)) recsByIdx.set(r.idx, []);
        recsByIdx.get(r.idx).push(r);
    }
    const nameOf = (i) => world.nodes[i].name;
    const idxOfName = new Map(world.nodes.map((n) => [n.name, n.idx]));

    // Per request: the attempt that served it, what it truly cost, what nodes would bill, waste.
    const per = trace.map((req) => {
        const c = client[req.idx] || { ok: false, error: 'not_sent', end: null, sched: req.t };
        const recs = recsByIdx.get(req.idx) || [];
        const served = recs.filter((r) => r.outcome === 'served');
        let serving = null;
        if (c.ok) serving = served.find((r) => nameOf(r.node) === c.backend) || served[served.length - 1] || null;
        let waste = 0, wasteClaimed = 0;
        for (const r of recs) {
            if (r === serving) continue;
            waste += attemptTrue(r);
            wasteClaimed += attemptClaimed(r);
        }
        const g = log.byId.get(`m-${req.idx}`);
        const billed = g ? g.cost : (c.cost ?? c.usage_cost ?? 0);
        return {
            req, c, recs, serving, waste, wasteClaimed, billed, g,
            serveTrue: serving ? attemptTrue(serving) : 0,
            serveClaimed: serving ? attemptClaimed(serving) : 0,
        };
    });
    const ok = per.filter((p) => p.c.ok);
    const okServed = ok.filter((p) => p.serving);

    const O = oracle(world), L = lateOracle(world, 1000), M = maxTokensOracle(world);
    const B1 = lowestCost(world), B2 = inverseSquare(world);
    // The gateway as a "replay": its served requests and what they cost (waste included).
    const G = per.map((p) => (p.c.ok && p.serving ? { cost: p.serveTrue + p.waste, claimed: p.serveClaimed + p.wasteClaimed } : null));
    const Gc = G.map((g) => (g ? { cost: g.claimed } : null));
    const served = (R) => R.filter(Boolean).length;
    const claimedOf = (R) => R.map((x) => (x ? { cost: x.claimed } : null));

    const lat = per.map((p) => (p.c.end ?? world.load.client_timeout_ms + p.req.t) - p.req.t).sort(asc);
    const latOk = ok.map((p) => p.c.end - p.req.t).sort(asc);
    const ttfbOk = ok.filter((p) => p.c.first !== null).map((p) => p.c.first - p.req.t).sort(asc);

    const sumOf = (list, f) => list.reduce((s, x) => s + f(x), 0);
    const trueServe = sumOf(okServed, (p) => p.serveTrue);
    const claimedServe = sumOf(okServed, (p) => p.serveClaimed);
    const billedOk = sumOf(okServed, (p) => p.billed);
    // Billed at which price: the gateway's own tokens × the price in force on arrival at the node.
    let billedAtInForce = 0, staleBilled = 0, billedTokP = 0, billedTokC = 0, trueTokP = 0, trueTokC = 0;
    for (const p of okServed) {
        if (!p.g) continue;
        const s = p.serving;
        const atForce = costUsd({ input: s.price_in, output: s.price_out }, p.g.prompt_tokens, p.g.completion_tokens);
        billedAtInForce += atForce;
        if (Math.abs(p.g.cost - atForce) > 0.005 * atForce + 1e-12) staleBilled++;
        billedTokP += p.g.prompt_tokens;
        billedTokC += p.g.completion_tokens;
        trueTokP += s.prompt;
        trueTokC += s.completion;
    }

    const figures = {
        requests: trace.length,
        success: ok.length / (trace.length || 1),
        p50_ms: quantile(lat, 0.5),
        p99_ms: quantile(lat, 0.99),
        p99_ok_ms: quantile(latOk, 0.99),
        ttfb_p50_ms: quantile(ttfbOk, 0.5),
        ttfb_p99_ms: quantile(ttfbOk, 0.99),
        spend_usd: sumOf(okServed, (p) => p.serveTrue + p.waste),
        waste_usd: sumOf(per, (p) => p.waste),
        oracle_usd: sumOf(O.filter(Boolean), (x) => x.cost),
        spend_over_oracle: ratioOver(G, O).ratio,
        late_over_oracle: ratioOver(L, O).ratio,
        spend_over_late: ratioOver(G, L).ratio,
        max_tokens_oracle_over_oracle: ratioOver(M, O).ratio,
        billed_over_true: billedOk / trueServe,
        billed_over_charged: billedOk / claimedServe,
        charged_over_oracle: ratioOver(Gc, O).ratio,
        billed_over_oracle: ratioOver(per.map((p) => (p.c.ok && p.serving ? { cost: p.billed } : null)), O).ratio,
        billed_price_over_in_force: billedAtInForce > 0 ? sumOf(okServed, (p) => (p.g ? p.g.cost : 0)) / billedAtInForce : NaN,
        billed_at_stale_price: okServed.length ? staleBilled / okServed.length : NaN,
        billed_prompt_over_true: trueTokP ? billedTokP / trueTokP : NaN,
        billed_completion_over_true: trueTokC ? billedTokC / trueTokC : NaN,
        litellm_over_oracle: ratioOver(B1, O).ratio,
        litellm_charged_over_oracle: ratioOver(claimedOf(B1), O).ratio,
        openrouter_over_oracle: ratioOver(B2, O).ratio,
        openrouter_charged_over_oracle: ratioOver(claimedOf(B2), O).ratio,
        oracle_success: served(O) / (trace.length || 1),
        late_success: served(L) / (trace.length || 1),
        litellm_success: served(B1) / (trace.length || 1),
        openrouter_success: served(B2) / (trace.length || 1),
    };

    // Where the answers went wrong, as the client saw them.
    const failures = {};
    for (const p of per) {
        if (p.c.ok) continue;
        const k = p.c.error ? `client:${p.c.error}` : `${p.c.status} ${p.c.code || (p.c.stream_error ? 'stream_error' : p.c.done === false && p.c.stream ? 'no_done' : '')}`.trim();
        failures[k] = (failures[k] || 0) + 1;
    }

    // What the nodes saw.
    const outcomes = {};
    for (const r of nodeRecords) outcomes[r.outcome || 'open'] = (outcomes[r.outcome || 'open'] || 0) + 1;
    const perNode = world.nodes.map((n) => {
        const recs = run.nodes[n.idx].records;
        const count = (o) => recs.filter((r) => r.outcome === o).length;
        const servedHere = okServed.filter((p) => p.serving.node === n.idx).length;
        const oracleHere = O.filter((x) => x && x.node === n.idx).length;
        return {
            name: n.name, capacity: n.capacity, liar: n.liar, received: recs.length, served: count('served'),
            r429: count('429'), r500: count('500'), hung: count('hung'), cancelled: count('cancelled'),
            cut: count('cut'), refused: count('refused'), max_in_service: run.nodes[n.idx].maxInService,
            share: okServed.length ? servedHere / okServed.length : 0,
            oracle_share: served(O) ? oracleHere / served(O) : 0,
            outages: n.outages.length,
        };
    });

    // Evidence on the gateway's behaviour.
    const evidence = {};
    const occupancy = occupancyIndex(nodeRecords);
    const freeNodesAt = (t) => world.nodes.filter((n) => upAt(n, t) && occupancy(n.idx, t) < n.capacity).length;
    const byCode = (code) => per.filter((p) => !p.c.ok && p.c.code === code);
    const nhb = byCode('no_healthy_backend');
    evidence.no_healthy_backend = {
        n: nhb.length,
        attempts: summary(nhb.map((p) => (p.g ? p.g.attempts : NaN)).filter((x) => !Number.isNaN(x)).sort(asc)),
        free_nodes_at_arrival: summary(nhb.map((p) => freeNodesAt(p.req.t)).sort(asc)),
        up_nodes_at_arrival: summary(nhb.map((p) => world.nodes.filter((n) => upAt(n, p.req.t)).length).sort(asc)),
    };
    const brl = byCode('backend_rate_limited');
    evidence.backend_rate_limited = { n: brl.length, free_nodes_at_arrival: summary(brl.map((p) => freeNodesAt(p.req.t)).sort(asc)) };
    const capacity429 = nodeRecords.filter((r) => r.outcome === '429' && !outageAt(world.nodes[r.node], r.t));
    evidence.capacity_429s = {
        n: capacity429.length,
        nodes_answering: new Set(capacity429.map((r) => r.node)).size,
    };
    if (samples.length) {
        const rl = samples.map((s) => Object.values(s.b).filter((b) => b.health === 'rate_limited').length).sort(asc);
        const notUp = samples.map((s) => Object.values(s.b).filter((b) => b.health !== 'up').length).sort(asc);
        const trulyUp = samples.map((s) => world.nodes.filter((n) => upAt(n, s.t)).length);
        evidence.gateway_view = {
            samples: samples.length,
            rate_limited_nodes: { p50: quantile(rl, 0.5), max: rl[rl.length - 1] },
            not_up_nodes: { p50: quantile(notUp, 0.5), max: notUp[notUp.length - 1] },
            truly_out_nodes: { p50: quantile(trulyUp.map((u) => world.nodes.length - u).sort(asc), 0.5) },
        };
        const pl = priceLags(world, samples);
        evidence.price_lag_ms = { ...summary(pl.lags), missed: pl.missed };
    }
    // Feeds: how often each node's feed was read.
    const gaps = [];
    for (const n of run.nodes) {
        const ts = n.feeds.filter((f) => f[0] >= 0).map((f) => f[0]);
        for (let i = 1; i < ts.length; i++) gaps.push(ts[i] - ts[i - 1]);
    }
    evidence.feed_read_gap_ms = summary(gaps.sort(asc));
    evidence.feed_304s = run.nodes.reduce((s, n) => s + n.feeds.filter((f) => f[1] === 304).length, 0);
    // Outage windows: what reached a node while it was out, and for how long after the start.
    const windows = {};
    for (const n of world.nodes) {
        for (const o of n.outages) {
            if (o.kind === 'slow' || o.start > world.durationMs) continue;
            const inside = run.nodes[n.idx].records.filter((r) => r.t >= o.start && r.t < o.end);
            const w = (windows[o.kind] ||= { windows: 0, requests: [], last_arrival_ms: [], back_after_ms: [], seconds: 0 });
            w.windows++;
            w.seconds += (Math.min(o.end, world.durationMs) - o.start) / 1000;
            w.requests.push(inside.length);
            if (inside.length) w.last_arrival_ms.push(inside[inside.length - 1].t - o.start);
            // Once it was back: how long until the gateway sent it a request again.
            const after = run.nodes[n.idx].records.find((r) => r.t >= o.end);
            if (o.end < world.durationMs && after) w.back_after_ms.push(after.t - o.end);
        }
    }
    for (const w of Object.values(windows)) {
        w.requests = summary(w.requests.sort(asc));
        w.last_arrival_ms = summary(w.last_arrival_ms.sort(asc));
        w.back_after_ms = summary(w.back_after_ms.sort(asc));
    }
    evidence.outage_windows = windows;
    // After a node answered 429 because it was full: when its next request came, against when
    // one of its slots was free again (from its own records).
    const slotEnds = new Map();
    for (const r of nodeRecords) if (r.slot) (slotEnds.get(r.node) || slotEnds.set(r.node, []).get(r.node)).push(r.end);
    for (const v of slotEnds.values()) v.sort(asc);
    const nextReq = [], nextFree = [];
    for (const n of run.nodes) {
        const recs = n.records; // in arrival order
        for (let i = 0; i < recs.length; i++) {
            const r = recs[i];
            if (r.outcome !== '429' || outageAt(world.nodes[r.node], r.t)) continue;
            if (i + 1 < recs.length) nextReq.push(recs[i + 1].t - r.t);
            const ends = slotEnds.get(r.node) || [];
            const e = ends.find((x) => x > r.t);
            if (e !== undefined) nextFree.push(e - r.t);
        }
    }
    evidence.after_429 = { next_request_ms: summary(nextReq.sort(asc)), slot_free_ms: summary(nextFree.sort(asc)) };
    evidence.gateway_attempts = run.meta.attempts ? run.meta.attempts.total : null;
    // Requests that failed while an oracle would have had a free, up node.
    evidence.failed_with_free_node = per.filter((p) => !p.c.ok && O[p.req.idx]).length;
    // Attempts per answered request (from the gateway's log).
    const att = per.filter((p) => p.g).map((p) => p.g.attempts).sort(asc);
    evidence.attempts = { ...summary(att), mean: att.length ? att.reduce((s, x) => s + x, 0) / att.length : NaN };
    // Liars: their share of the traffic and how they were billed.
    evidence.liars = world.nodes.filter((n) => n.liar !== 1).map((n) => {
        const mine = okServed.filter((p) => p.serving.node === n.idx);
        const t = sumOf(mine, (p) => p.serveTrue), b = sumOf(mine, (p) => p.billed), c = sumOf(mine, (p) => p.serveClaimed);
        return { name: n.name, factor: n.liar, share: okServed.length ? mine.length / okServed.length : 0,
            oracle_share: served(O) ? O.filter((x) => x && x.node === n.idx).length / served(O) : 0,
            billed_over_true: t ? b / t : NaN, billed_over_charged: c ? b / c : NaN };
    });
    // The simulator itself: did the nodes keep their latency model, did arrivals go out on time.
    const servedRecs = nodeRecords.filter((r) => r.outcome === 'served');
    const over = servedRecs.map((r) => (r.end - r.t) - (r.ttfb_ms + r.completion * r.token_ms)).sort(asc);
    const sendLag = per.filter((p) => p.c.sent !== undefined && p.c.sent !== null).map((p) => p.c.sent - p.req.t).sort(asc);
    evidence.simulator = {
        service_overrun_ms: { p50: quantile(over, 0.5), p99: quantile(over, 0.99) },
        send_lag_ms: { p50: quantile(sendLag, 0.5), p99: quantile(sendLag, 0.99), max: sendLag[sendLag.length - 1] },
        ...run.meta.loopDelay,
        sampler_failures: run.meta.samplerFailures,
    };
    return { figures, failures, outcomes, perNode, evidence, gatewayEvents: log.events };
}

// ---- presentation -------------------------------------------------------------------------

const f3 = (x) => (Number.isFinite(x) ? x.toFixed(3) : 'n/a');
const f2 = (x) => (Number.isFinite(x) ? x.toFixed(2) : 'n/a');
const pct = (x, d = 2) => (Number.isFinite(x) ? `${(100 * x).toFixed(d)}%` : 'n/a');
const ms = (x) => (Number.isFinite(x) ? `${Math.round(x).toLocaleString('en-US')} ms` : 'n/a');

export const COLUMNS = [
    ['success', (f) => pct(f.success)],
    ['p50', (f) => ms(f.p50_ms)],
    ['p99', (f) => ms(f.p99_ms)],
    ['spend ÷ oracle', (f) => f3(f.spend_over_oracle)],
    ['1 s-late oracle ÷ oracle', (f) => f3(f.late_over_oracle)],
    ['billed ÷ true', (f) => f3(f.billed_over_true)],
    ['billed ÷ charged', (f) => f3(f.billed_over_charged)],
    ['charged ÷ oracle', (f) => f3(f.charged_over_oracle)],
    ['LiteLLM ÷ oracle', (f) => f2(f.litellm_over_oracle)],
    ['OpenRouter ÷ oracle', (f) => f2(f.openrouter_over_oracle)],
];

export function tableMarkdown(results) {
    const head = `| scenario | requests | ${COLUMNS.map((c) => c[0]).join(' | ')} |`;
    const sep = `|---|--:|${COLUMNS.map(() => '--:').join('|')}|`;
    const rows = results.map((r) =>
        `| ${r.world.name} | ${r.analysis.figures.requests.toLocaleString('en-US')} | ${COLUMNS.map((c) => c[1](r.analysis.figures)).join(' | ')} |`);
    return [head, sep, ...rows].join('\n');
}

const j = (o) => JSON.stringify(o, (k, v) => (typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(4)) : v));

// The details of one scenario's run, as Markdown lines.
export function detailsMarkdown(r) {
    const { world, analysis: a, meta } = r;
    const f = a.figures, e = a.evidence;
    const lines = [];
    lines.push(`**${world.name}** (seed ${world.seed}, ${world.durationMs / 1000} s, ${world.nodes.length} nodes, ` +
        `${f.requests.toLocaleString('en-US')} requests; run took ${meta.wallSeconds.toFixed(1)} s): ${world.description}`);
    lines.push('');
    const over = meta.gatewayOverrides && Object.keys(meta.gatewayOverrides).length ? j(meta.gatewayOverrides) : 'none';
    lines.push(`- gateway config: the driver's (tools/market/README.md), overrides ${over}`);
    lines.push(`- spend $${f.spend_usd.toFixed(4)} (waste on failed or abandoned attempts $${f.waste_usd.toFixed(4)}), ` +
        `oracle $${f.oracle_usd.toFixed(4)}; spend ÷ 1 s-late oracle ${f3(f.spend_over_late)}; ` +
        `billed ÷ oracle ${f3(f.billed_over_oracle)}; an oracle ranking by max_tokens instead of the true ` +
        `output ÷ oracle ${f3(f.max_tokens_oracle_over_oracle)}; p99 of successes ${ms(f.p99_ok_ms)}, ` +
        `time to first byte p50/p99 ${ms(f.ttfb_p50_ms)} / ${ms(f.ttfb_p99_ms)}`);
    lines.push(`- replays served: oracle ${pct(f.oracle_success)}, 1 s-late ${pct(f.late_success)}, ` +
        `LiteLLM ${pct(f.litellm_success)}, OpenRouter ${pct(f.openrouter_success)}; at the usage nodes claim, ` +
        `LiteLLM ÷ oracle ${f2(f.litellm_charged_over_oracle)}, OpenRouter ÷ oracle ${f2(f.openrouter_charged_over_oracle)}`);
    lines.push(`- billing: price billed ÷ price in force ${f3(f.billed_price_over_in_force)} ` +
        `(${pct(f.billed_at_stale_price, 1)} of answers billed at another price), billed tokens ÷ true: ` +
        `prompt ${f3(f.billed_prompt_over_true)}, completion ${f3(f.billed_completion_over_true)}`);
    if (Object.keys(a.failures).length)
        lines.push(`- failed answers: ${Object.entries(a.failures).sort((x, y) => y[1] - x[1]).map(([k, v]) => `${k} ×${v}`).join(', ')}` +
            ` (${e.failed_with_free_node} of them while the oracle had an up node with a free slot)`);
    lines.push(`- node outcomes: ${Object.entries(a.outcomes).map(([k, v]) => `${k} ${v}`).join(', ')}; ` +
        `429s from full nodes: ${e.capacity_429s.n} (from ${e.capacity_429s.nodes_answering} nodes)`);
    if (e.no_healthy_backend.n)
        lines.push(`- no_healthy_backend ×${e.no_healthy_backend.n}: gateway attempts ${j(e.no_healthy_backend.attempts)}, ` +
            `nodes truly up with a free slot at arrival ${j(e.no_healthy_backend.free_nodes_at_arrival)}`);
    if (e.capacity_429s.n)
        lines.push(`- after a full node's 429 its next request came after ${j(e.after_429.next_request_ms)} ms; ` +
            `one of its slots was free again after ${j(e.after_429.slot_free_ms)} ms`);
    if (e.gateway_attempts)
        lines.push(`- gateway's upstream attempts by outcome (/metrics): ${Object.entries(e.gateway_attempts).map(([k, v]) => `${k} ${v}`).join(', ')}`);
    if (e.backend_rate_limited.n)
        lines.push(`- backend_rate_limited ×${e.backend_rate_limited.n}: nodes up with a free slot at arrival ${j(e.backend_rate_limited.free_nodes_at_arrival)}`);
    if (e.gateway_view)
        lines.push(`- gateway's view (/admin/backends every 250 ms): nodes marked rate_limited p50 ${e.gateway_view.rate_limited_nodes.p50}, ` +
            `max ${e.gateway_view.rate_limited_nodes.max}; not "up" p50 ${e.gateway_view.not_up_nodes.p50}, max ${e.gateway_view.not_up_nodes.max} ` +
            `(truly out p50 ${e.gateway_view.truly_out_nodes.p50})`);
    if (e.price_lag_ms)
        lines.push(`- prices: a change showed in /admin/backends after ${j(e.price_lag_ms)} ms; feeds read every ${j(e.feed_read_gap_ms)} ms` +
            `${e.feed_304s ? `, ${e.feed_304s} answered 304` : ''}`);
    for (const [kind, w] of Object.entries(e.outage_windows))
        lines.push(`- ${kind} windows ×${w.windows} (${w.seconds.toFixed(0)} s): requests reaching the node per window ${j(w.requests)}, ` +
            `last one this long after the start ${j(w.last_arrival_ms)} ms; once back, its next request after ${j(w.back_after_ms)} ms`);
    for (const l of e.liars)
        lines.push(`- liar ${l.name} (usage ×${l.factor}): ${pct(l.share, 1)} of answers (oracle: ${pct(l.oracle_share, 1)}), ` +
            `billed ÷ true ${f2(l.billed_over_true)}, billed ÷ charged ${f3(l.billed_over_charged)}`);
    lines.push(`- attempts per request ${j(e.attempts)}; gateway log events ${j(a.gatewayEvents)}`);
    const top = [...a.perNode].sort((x, y) => y.share - x.share).slice(0, 6)
        .map((n) => `${n.name} ${pct(n.share, 1)}/${pct(n.oracle_share, 1)}`).join(', ');
    lines.push(`- share of answers, gateway/oracle: ${top}`);
    lines.push(`- simulator: service overrun ${j(e.simulator.service_overrun_ms)} ms, arrivals late ${j(e.simulator.send_lag_ms)} ms, ` +
        `event-loop delay beyond 10 ms ticks: nodes ${j(e.simulator.nodes)}, load ${j(e.simulator.load)} ms; ` +
        `machine load average (1 min) during the run ${j(meta.loadavg)} on ${meta.nproc ?? '?'} CPUs`);
    return lines.join('\n');
}

export function printTable(results, out = process.stdout) {
    out.write('\n' + tableMarkdown(results) + '\n\n');
    for (const r of results) out.write(detailsMarkdown(r) + '\n\n');
}

const HEADER = `# Market figures

Written by \`make market\` (tools/market/, see its README): simulated markets of nodes driven
through the gateway, every figure computed from the nodes' own records against an oracle that
always knew the cheapest node that was up with a free slot. Newest last. Columns:

- **success**: answers complete and correct (streams ended by \`[DONE]\`, no error event), of all
  requests sent; **p50 / p99**: client latency of every request from its scheduled arrival.
- **spend ÷ oracle**: what the nodes truly charged (true tokens × the serving node's price in
  force when the request arrived, plus the attempts abandoned on the way) ÷ the oracle's spend
  on the same requests. **1 s-late oracle ÷ oracle**: the same oracle choosing with 1 s old
  prices.
- **billed ÷ true**: the gateway's billed cost (its request log, = \`x-tollgate-cost-usd\`) ÷ the
  true cost of the serving attempts; **billed ÷ charged**: ÷ what the nodes would bill (their
  claimed usage × their price); **charged ÷ oracle**: what the nodes would bill ÷ the oracle.
- **LiteLLM / OpenRouter ÷ oracle**: the lowest static in+out price and the 1/price² rules
  replayed on the same arrivals with the same slots, at true usage.

The oracle decides each request at its arrival (greedy), as a router must; with full nodes
that is not always the cheapest plan for the whole trace, so another rule can come out a
little under it (see "an oracle ranking by max_tokens" in the details).

Unless a section says otherwise, the gateway runs with the simulator's config: every node a
backend with its price feed read every second, one static key, no Redis, no cache,
\`upstream.first_byte_timeout_ms: 5000\`, \`connect_timeout_ms: 1000\`, probes every 1000 ms with
a 1000 ms timeout, everything else at its default (no \`max_inflight\`).
`;

export function appendMarketMd(path, results, meta) {
    if (!existsSync(path)) writeFileSync(path, HEADER);
    const lines = [];
    lines.push('');
    lines.push(`## ${meta.date} — ${results.map((r) => r.world.name).join(', ')}`);
    lines.push('');
    lines.push(`Machine: ${meta.nproc} × ${meta.cpu}, ${meta.memGiB} GiB; commit ${meta.commit}; ` +
        `gateway ${meta.version}; Node ${process.version}; ` +
        `${results.length} scenario(s), ${results.map((r) => `${r.world.name} seed ${r.world.seed}`).join(', ')}.`);
    if (meta.extra) lines.push(`Config merged over every scenario (MARKET_GATEWAY_CONFIG): \`${JSON.stringify(meta.extra)}\``);
    lines.push('');
    lines.push(tableMarkdown(results));
    lines.push('');
    for (const r of results) {
        lines.push(detailsMarkdown(r));
        lines.push('');
    }
    appendFileSync(path, lines.join('\n'));
}

// Replays of the arrival trace against the market's ground truth (world.mjs), to say what a
// request should have cost. Every replay sees the same thing: at a request's arrival, the
// nodes that are up (not crashed, hung, failing or refusing everyone; a slow node is up) and
// have a free slot, where slots are simulated with each node's true capacity and the service
// time the node really takes for that request (serviceTime(): the same function the simulated
// node runs). Only the rule that picks among those candidates differs:
//   oracle     the cheapest at true tokens and the price in force at arrival
//   late       the same with the prices of lagMs earlier (what a perfect router with a 1 s old
//              price feed could do); it pays the price in force
//   maxTokensOracle  the same ranking by max_tokens instead of the true output tokens
//   lowestCost LiteLLM's lowest-cost rule: the lowest static (configured, t = 0) input+output
//              price sum
//   inverseSquare  OpenRouter's rule: random with probability ∝ 1 / price², price the current
//              input+output sum, among the available
// Each served request pays true tokens × the chosen node's price in force at arrival; `claimed`
// is what the node would bill (its usage × its liar factor).

import { makeRng } from './rng.mjs';
import { upAt, serviceTime, outputTokens, priceAt, costUsd } from './world.mjs';

// Runs `choose(req, candidates)` over the trace. Returns one entry per request:
// {node, cost, claimed} or null when no node was up with a free slot.
export function replay(world, choose) {
    const busy = world.nodes.map(() => []); // each slot's end time
    const out = new Array(world.trace.length);
    for (const req of world.trace) {
        const candidates = [];
        for (const node of world.nodes) {
            if (!upAt(node, req.t)) continue;
            const b = busy[node.idx];
            let w = 0;
            for (let k = 0; k < b.length; k++) if (b[k] > req.t) b[w++] = b[k];
            b.length = w;
            if (w < node.capacity) candidates.push(node);
        }
        if (!candidates.length) {
            out[req.idx] = null;
            continue;
        }
        const node = choose(req, candidates);
        const plan = serviceTime(world, node, req, req.t);
        busy[node.idx].push(req.t + plan.total);
        const cost = costUsd(priceAt(node, req.t), req.prompt, plan.tokens);
        out[req.idx] = { node: node.idx, cost, claimed: cost * node.liar };
    }
    return out;
}

function argmin(candidates, score) {
    let best = null, bestScore = Infinity;
    for (const n of candidates) {
        const s = score(n);
        if (s < bestScore) {
            best = n;
            bestScore = s;
        }
    }
    return best;
}

export function oracle(world) {
    return replay(world, (req, cands) =>
        argmin(cands, (n) => costUsd(priceAt(n, req.t), req.prompt, outputTokens(world, n, req))));
}

export function lateOracle(world, lagMs = 1000) {
    return replay(world, (req, cands) =>
        argmin(cands, (n) => costUsd(priceAt(n, req.t - lagMs), req.prompt, outputTokens(world, n, req))));
}

// The oracle's rule with what a router can know of a request before it is answered: its prompt
// and its max_tokens (not the tokens it will really get). How far this is from the oracle is the
// part of the gap that no router could close.
export function maxTokensOracle(world) {
    return replay(world, (req, cands) =>
        argmin(cands, (n) => costUsd(priceAt(n, req.t), req.prompt, req.max_tokens)));
}

export function lowestCost(world) {
    return replay(world, (req, cands) => argmin(cands, (n) => n.prices.input[0] + n.prices.output[0]));
}

export function inverseSquare(world, seedText = `${world.name}/${world.seed}/inverse-square`) {
    const rng = makeRng(seedText);
    return replay(world, (req, cands) => {
        const w = cands.map((n) => {
            const p = priceAt(n, req.t);
            const sum = Math.max(p.input + p.output, 1e-9);
            return 1 / (sum * sum);
        });
        let x = rng.next() * w.reduce((s, v) => s + v, 0);
        for (let i = 0; i < cands.length; i++) {
            if (x < w[i]) return cands[i];
            x -= w[i];
        }
        return cands[cands.length - 1];
    });
}

// Σ a / Σ b over the requests both replays served (and `also`, if given, says yes to).
export function ratioOver(a, b, also = () => true) {
    let sa = 0, sb = 0, n = 0;
    for (let i = 0; i < a.length; i++) {
        if (!a[i] || !b[i] || !also(i)) continue;
        sa += a[i].cost;
        sb += b[i].cost;
        n++;
    }
    return { ratio: sb > 0 ? sa / sb : NaN, n, a: sa, b: sb };
}

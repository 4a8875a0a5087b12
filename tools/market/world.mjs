// The market's ground truth as pure functions of a resolved world (scenario.mjs builds it):
// the price in force on a node at a time, whether a node is out, how many tokens a request
// really costs and how long a node takes to serve it. The simulated nodes, the oracle and the
// baselines all call these, so they agree on every number by construction.

import { unitAt, jitterAt } from './rng.mjs';

// Salts for keyed draws: one per quantity, so they are independent.
const SALT_OUTPUT = 11, SALT_TTFB = 12, SALT_TOKEN = 13;

// Chat token accounting, OpenAI's shape: 3 tokens of priming, 4 per message, and one token per
// whitespace-separated word of content. The load generator writes prompts of words of about
// four bytes, so the gateway's "about four bytes a token" estimate is right on average.
export const PRIMING_TOKENS = 3;
export const PER_MESSAGE_TOKENS = 4;

function countWords(s) {
    let n = 0, inWord = false;
    for (let i = 0; i < s.length; i++) {
        const c = s.charCodeAt(i);
        const space = c === 32 || c === 10 || c === 9 || c === 13;
        if (!space && !inWord) n++;
        inWord = !space;
    }
    return n;
}

function contentText(content) {
    if (typeof content === 'string') return content;
    if (Array.isArray(content))
        return content.map((p) => (p && typeof p.text === 'string' ? p.text : '')).join(' ');
    return '';
}

// The true prompt tokens of a chat request's messages.
export function countPromptTokens(messages) {
    let n = PRIMING_TOKENS;
    for (const m of Array.isArray(messages) ? messages : [])
        n += PER_MESSAGE_TOKENS + countWords(contentText(m && m.content));
    return n;
}

// The request index the load generator put in the first words of the prompt ("[r:123]"),
// or -1 when there is none (a request the simulator did not send).
export function requestIndex(messages) {
    const first = Array.isArray(messages) && messages.length ? contentText(messages[messages.length - 1].content) : '';
    const m = /^\[r:(\d+)\]/.exec(first);
    return m ? Number(m[1]) : -1;
}

function findStep(times, t) {
    // Index of the last entry with times[i] <= t (times[0] is -Infinity).
    let lo = 0, hi = times.length - 1;
    while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (times[mid] <= t) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// The price in force on a node at t (ms from the start of the load): USD per million tokens,
// and the price's version (its index on the node's timeline: the feed's ETag).
export function priceAt(node, t) {
    const p = node.prices;
    const i = findStep(p.t, t);
    return { input: p.input[i], output: p.output[i], version: i };
}

// The outage a node is in at t, or null. Windows are [start, end).
export function outageAt(node, t) {
    for (const o of node.outages) if (t >= o.start && t < o.end) return o;
    return null;
}

// Whether the node takes requests at t: not crashed, hung, stalled, failing or saying 429 to
// everyone. A slow node is up.
export function upAt(node, t) {
    const o = outageAt(node, t);
    return !o || o.kind === 'slow';
}

// The completion tokens request `req` really gets from `node`: a fraction of its max_tokens
// drawn per request (the same on every node), or per (node, request) when the node has its
// own output_fraction. Never 0, never above max_tokens.
export function outputTokens(world, node, req) {
    const f = node.output_fraction || world.load.output_fraction;
    const u = node.output_fraction ? unitAt(world.seedHash, req.idx, node.idx + 1, SALT_OUTPUT)
                                   : unitAt(world.seedHash, req.idx, 0, SALT_OUTPUT);
    const frac = f[0] + (f[1] - f[0]) * u;
    return Math.min(req.max_tokens, Math.max(1, Math.round(frac * req.max_tokens)));
}

// How node serves req arriving at t: time to first byte, time per token, the tokens, and
// the total service time (ttfb + tokens × per-token time). The same on every call.
export function serviceTime(world, node, req, t) {
    const o = outageAt(node, t);
    const slow = o && o.kind === 'slow' ? o.factor : 1;
    const ttfb = node.ttfb_ms * slow * jitterAt(node.jitter, world.seedHash, req.idx, node.idx + 1, SALT_TTFB);
    const tokenMs = node.token_ms * slow * jitterAt(node.jitter, world.seedHash, req.idx, node.idx + 1, SALT_TOKEN);
    const tokens = outputTokens(world, node, req);
    return { ttfb, tokenMs, tokens, total: ttfb + tokens * tokenMs };
}

// USD for the given tokens at a price (USD per million tokens).
export function costUsd(price, promptTokens, completionTokens) {
    return (promptTokens * price.input + completionTokens * price.output) / 1e6;
}

// What request req truly costs on node at t (true tokens, the price in force at t).
export function trueCostAt(world, node, req, t) {
    return costUsd(priceAt(node, t), req.prompt, outputTokens(world, node, req));
}

// A typical request's cost on node at t: how "the cheapest m nodes" and liars' ranks are
// decided (mean prompt and output tokens of the trace).
export function refCost(world, node, t) {
    return costUsd(priceAt(node, t), world.ref.prompt, world.ref.output);
}

// Nodes sorted by refCost at t, cheapest first (ties by index).
export function rankAt(world, t) {
    return world.nodes
        .map((n) => ({ n, c: refCost(world, n, t) }))
        .sort((a, b) => a.c - b.c || a.n.idx - b.n.idx)
        .map((x) => x.n);
}

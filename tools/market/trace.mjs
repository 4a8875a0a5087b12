// The arrival trace: open-loop Poisson arrivals under a piecewise-constant rate schedule,
// and each request's shape (stream or not, include_usage, true prompt tokens, max_tokens).
// Also the prompt text itself, built so the nodes count exactly the tokens the trace says.

import { makeRng, drawSpec } from './rng.mjs';
import { PRIMING_TOKENS, PER_MESSAGE_TOKENS } from './world.mjs';

// Rate schedule steps [[fraction of the run, req/s], …] → [{start, end, rate}] in ms.
export function rateSegments(rate, durationMs) {
    return rate.map(([f, r], i) => ({
        start: f * durationMs,
        end: i + 1 < rate.length ? rate[i + 1][0] * durationMs : durationMs,
        rate: r,
    }));
}

// Requests with arrival times t (ms from the start of the load), in order; idx is the position.
// In each segment the gaps are exponential with the segment's rate (a Poisson process; the
// memorylessness makes restarting at a segment boundary exact).
export function makeTrace(load, rng, durationMs) {
    const out = [];
    const minPrompt = PRIMING_TOKENS + PER_MESSAGE_TOKENS + 1; // priming, one message, the marker
    for (const seg of rateSegments(load.rate, durationMs)) {
        if (seg.rate <= 0) continue;
        for (let t = seg.start + rng.exp(seg.rate / 1000); t < seg.end; t += rng.exp(seg.rate / 1000)) {
            const stream = rng.chance(load.stream_fraction);
            const usage = stream && rng.chance(load.include_usage_fraction);
            const prompt = Math.max(minPrompt, Math.round(drawSpec(load.prompt_tokens, rng)));
            const maxTokens = Math.max(1, Math.round(drawSpec(load.max_tokens, rng)));
            out.push({ idx: out.length, t, stream, usage, prompt, max_tokens: maxTokens });
        }
    }
    return out;
}

// Filler words of 1 to 5 letters (4 bytes a word with its space, on average), drawn once.
const VOCAB = ['a', 'an', 'the', 'of', 'to', 'in', 'is', 'it', 'and', 'for', 'node', 'cost', 'price',
    'token', 'model', 'fast', 'slow', 'cheap', 'load', 'peer', 'sum', 'run', 'up', 'by', 'we', 'go'];
let FILLER = null, OFFSETS = null;
function filler(words) {
    if (!FILLER || OFFSETS.length - 1 < words) {
        const n = Math.max(words, 8192), rng = makeRng('filler');
        const parts = [];
        OFFSETS = [0];
        let len = 0;
        for (let i = 0; i < n; i++) {
            const w = rng.pick(VOCAB);
            parts.push(w);
            len += w.length + 1;
            OFFSETS.push(len);
        }
        FILLER = parts.join(' ') + ' ';
    }
    return FILLER.slice(0, Math.max(0, OFFSETS[words] - 1));
}

// The messages of request req: one user message whose first word is the marker "[r:idx]",
// then filler, so countPromptTokens() of it is exactly req.prompt.
export function buildMessages(req) {
    const words = req.prompt - PRIMING_TOKENS - PER_MESSAGE_TOKENS - 1;
    const rest = filler(words);
    return [{ role: 'user', content: rest ? `[r:${req.idx}] ${rest}` : `[r:${req.idx}]` }];
}

// The chat request body the load generator sends for req.
export function buildBody(world, req) {
    const body = { model: world.model, messages: buildMessages(req), max_tokens: req.max_tokens };
    if (req.stream) {
        body.stream = true;
        if (req.usage) body.stream_options = { include_usage: true };
    }
    return JSON.stringify(body);
}

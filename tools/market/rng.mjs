// Seeded randomness. Everything the market draws comes from here, so a scenario and its
// seed fix the whole world: nodes, prices, outages, the arrival trace and every per-request
// jitter. Two kinds of draw:
//   - streams (makeRng): a sequence, for things drawn in order (a node's price path);
//   - keyed draws (unitAt): one number from a tuple of integers, for things that must be the
//     same wherever they are computed (request r's service time on node n is the same in the
//     simulated node and in the oracle's replay).

// A 32-bit string hash (cyrb53's mixing, low word), to turn names and seeds into integers.
export function hashString(s) {
    let h1 = 0xdeadbeef ^ 0, h2 = 0x41c6ce57 ^ 0;
    for (let i = 0; i < s.length; i++) {
        const ch = s.charCodeAt(i);
        h1 = Math.imul(h1 ^ ch, 2654435761);
        h2 = Math.imul(h2 ^ ch, 1597334677);
    }
    h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507) ^ Math.imul(h2 ^ (h2 >>> 13), 3266489909);
    h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507) ^ Math.imul(h1 ^ (h1 >>> 13), 3266489909);
    return (h1 ^ h2) >>> 0;
}

function fmix32(h) {
    h ^= h >>> 16;
    h = Math.imul(h, 0x85ebca6b);
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35);
    h ^= h >>> 16;
    return h >>> 0;
}

// A uniform number in [0, 1) that depends only on the integers given.
export function unitAt(...keys) {
    let h = 0x9e3779b9;
    for (const k of keys) h = fmix32((h ^ (k >>> 0)) + 0x7f4a7c15 + (h << 6) + (h >>> 2));
    // Two rounds give 53 bits; the low word alone would do for most uses.
    const hi = fmix32(h ^ 0x68e31da4) >>> 5, lo = fmix32(h ^ 0xb5297a4d) >>> 6;
    return (hi * 67108864 + lo) / 9007199254740992;
}

// A standard normal from two keyed uniforms (Box-Muller).
export function normalAt(...keys) {
    const u1 = unitAt(...keys, 1) || 1e-12, u2 = unitAt(...keys, 2);
    return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
}

// A multiplicative jitter with mean 1: lognormal with the given sigma (0 = none).
export function jitterAt(sigma, ...keys) {
    if (!sigma) return 1;
    return Math.exp(sigma * normalAt(...keys) - (sigma * sigma) / 2);
}

// sfc32: a small fast generator with a 128-bit state, seeded from a string.
export function makeRng(seedText) {
    let a = hashString(seedText + '/a'), b = hashString(seedText + '/b');
    let c = hashString(seedText + '/c'), d = hashString(seedText + '/d') | 1;
    function next32() {
        a >>>= 0; b >>>= 0; c >>>= 0; d >>>= 0;
        const t = (a + b) | 0;
        a = b ^ (b >>> 9);
        b = (c + (c << 3)) | 0;
        c = (c << 21) | (c >>> 11);
        d = (d + 1) | 0;
        const r = (t + d) | 0;
        c = (c + r) | 0;
        return r >>> 0;
    }
    for (let i = 0; i < 16; i++) next32();
    const rng = {
        // Uniform in [0, 1).
        next() { return ((next32() >>> 5) * 67108864 + (next32() >>> 6)) / 9007199254740992; },
        uniform(lo, hi) { return lo + (hi - lo) * rng.next(); },
        int(lo, hi) { return lo + Math.floor(rng.next() * (hi - lo + 1)); }, // inclusive
        exp(rate) { return -Math.log(1 - rng.next()) / rate; },
        normal() {
            const u1 = 1 - rng.next(), u2 = rng.next();
            return Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
        },
        pick(list) { return list[Math.floor(rng.next() * list.length)]; },
        chance(p) { return rng.next() < p; },
    };
    return rng;
}

// Draws from a scenario's number spec: a number, [lo, hi] (uniform), {"uniform":[lo,hi]},
// {"loguniform":[lo,hi]}, {"choice":[a,b,…]}.
export function drawSpec(v, rng) {
    if (typeof v === 'number') return v;
    if (Array.isArray(v)) return rng.uniform(v[0], v[1]);
    if (v.uniform) return rng.uniform(v.uniform[0], v.uniform[1]);
    if (v.loguniform) return Math.exp(rng.uniform(Math.log(v.loguniform[0]), Math.log(v.loguniform[1])));
    return rng.pick(v.choice);
}

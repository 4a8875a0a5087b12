// One clock for every thread of the simulator: milliseconds since the start of the load
// (negative before it). performance.timeOrigin + performance.now() is the same instant in
// every worker thread, so the nodes, the load generator and the sampler agree on times.

import { performance } from 'node:perf_hooks';

export function absNow() {
    return performance.timeOrigin + performance.now();
}

// t0Abs: the load's start in absNow() terms; until it is known, a far future.
export function makeClock(t0Abs = absNow() + 1e9) {
    const clock = {
        t0: t0Abs,
        now: () => absNow() - clock.t0,
        untilMs: (t) => t - (absNow() - clock.t0),
    };
    return clock;
}

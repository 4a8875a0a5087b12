/* A backend's learned concurrency limit: how many requests it takes at once, learned from its
 * answers instead of configured (a node run by someone else never says its capacity).
 *
 * AIMD, as Netflix's concurrency-limits AIMDLimit, with TCP's slow start in front:
 * - the limit starts at routing.limit_initial, in LIMITER_PROBING: each success of a request
 *   sent while the limit was in use (in flight at send >= limit) adds one, so a busy node's
 *   limit doubles every round trip until the node first says no. While probing, a node that
 *   has answered at all may take twice its limit: the limit is only a lower bound of what a
 *   node that never refused can take, and traffic above it is how it is learned;
 * - probation: until it has answered once, a node gets one request at a time (what a new
 *   node is worth, and whether it bills honestly, is not known yet; a request that finds every
 *   node busy waits for a slot, routing.queue_ms);
 * - a 429 means "full right now": the limit becomes limit × routing.limit_backoff (once per
 *   congestion episode: 429s to attempts sent before that decrease, or within one round of
 *   it, do not multiply it again), and never more than the requests the gateway still has in
 *   flight there (what the node held when it said no), and the phase becomes LIMITER_STEADY,
 *   where a success at the limit adds 1 / limit (one per round trip);
 * - latency: while the node's recent first byte is routing.limit_latency_factor times its
 *   baseline (routing/latency.h) or more, the limit does not grow; at twice that with the
 *   limit in use, the node is queueing instead of refusing, and the limit is cut by the same
 *   backoff, at most once a second (a first byte also slows with the machine's load: the cut
 *   needs strong evidence, and a 429 stays the main signal);
 * - a success of a request sent while the limit was not in use says nothing, so a node's
 *   limit only grows as far as the traffic pushes it.
 * The limit stays within [1, routing.limit_max]; max_inflight, when set, is a hard cap on top.
 *
 * Slow start on return: a node back in service (an ejection over, a good probe, a suspicion
 * lifted) is held to a share of its limit growing from 10% to 100% over
 * health.slow_start_ms, at least one request.
 *
 * Lock-free: the limit is a fixed-point atomic updated by compare-and-swap, so racing workers
 * never lose an update. */
#ifndef TOLLGATE_LIMITER_H
#define TOLLGATE_LIMITER_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum limiter_phase {
    LIMITER_PROBING = 0, /* no 429 yet: +1 per success at the limit */
    LIMITER_STEADY,      /* after a 429 or a latency cut: +1/limit per success at the limit */
};

struct limiter {
    _Atomic uint32_t milli;       /* the limit × 1000; 0 = not learned yet (limit_initial) */
    atomic_int phase;             /* enum limiter_phase */
    _Atomic int64_t ramp_from_ms; /* back in service then: slow start; 0 = none */
    _Atomic int64_t cut_ms;       /* the last latency cut */
    _Atomic uint64_t cuts;        /* times the limit was lowered (429s and latency) */
    _Atomic uint64_t successes;   /* answers: a node that answered may be probed above */
    _Atomic int64_t backoff_us;   /* the last multiplicative decrease (clock_mono µs) */
};

/* The learned limit (fractional). */
double limiter_limit(const struct limiter *l, const struct config_routing *rc);
/* What the router holds the node to now: the learned limit, during a slow start its growing
 * share, at least 1, at most hard_cap when that is not 0 (max_inflight). */
unsigned limiter_effective(const struct limiter *l, const struct config_routing *rc,
                           long slow_start_ms, unsigned hard_cap, int64_t now_ms);
/* Whether the node has not answered yet (one request at a time). */
bool limiter_on_probation(const struct limiter *l);
/* The slow start's share of the limit now, 1 when not ramping. */
double limiter_ramp_share(const struct limiter *l, long slow_start_ms, int64_t now_ms);

/* A request answered. inflight_at_send counts it with the others in flight when it was sent;
 * slowdown is latency_slowdown() of the node (0 = unknown). */
void limiter_on_success(struct limiter *l, const struct config_routing *rc, int inflight_at_send,
                        double slowdown, int64_t now_ms);
/* A 429 for an attempt sent at started_us, while `others` other requests were in flight
 * there. One congestion episode backs off once: the limit is multiplied down only by a 429
 * to an attempt sent after the last decrease, and at most once per round_us (about one of the
 * node's answers); any 429 still brings the limit down to `others`. Times in µs. */
void limiter_on_rate_limited(struct limiter *l, const struct config_routing *rc, int others,
                             int64_t started_us, int64_t now_us, int64_t round_us);
/* The node is back in service from `from_ms` on (a slow start begins then). */
void limiter_ramp(struct limiter *l, int64_t from_ms);

#endif

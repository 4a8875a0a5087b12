/* Backend selection: which (backend, model) pair serves a request.
 *
 * Every candidate's cost for *this* request is estimated (prompt tokens x input price +
 * expected output tokens x output price, with live prices when a feed sets them). Only
 * healthy, unsaturated candidates under the caller's price ceiling are eligible. Strategies:
 * - cheapest (default): lowest estimate; estimates within `tie_tolerance` of it are a tie,
 *   broken by fewer requests in flight, then lower recent time to first byte;
 * - price-weighted: random, weight proportional to 1/estimate^2, spreading load over cheap
 *   nodes (the rule OpenRouter documents);
 * - latency: lowest recent time to first byte.
 * Thread-safe: reads the immutable config and atomic backend state. */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include "config/config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct router_request {
    size_t prompt_tokens; /* estimate */
    size_t output_tokens; /* max_tokens, or the default */
    enum config_strategy strategy;
    double max_price_usd; /* the caller's ceiling on the estimate; < 0 for none */
    double tie_tolerance;
    int64_t now_ms;  /* clock_mono_ms() */
    uint64_t random; /* for price-weighted */
};

/* Why nothing could be picked (for a clear error). */
struct router_outcome {
    unsigned unavailable; /* ejected, rate limited or down */
    unsigned saturated;   /* at max_inflight */
    unsigned over_price;  /* estimate above the ceiling */
    int64_t back_ms;      /* soonest an unavailable candidate returns; 0 if unknown */
    double cheapest_usd;  /* lowest estimate among those over the ceiling */
};

/* Estimated USD cost of a request on a target. */
double router_estimate(const struct config_target *t, const struct router_request *req);

/* The target to use, skipping those marked in `skip` (one flag per route target; may be
 * NULL); NULL when none is eligible, with the reasons in *why (may be NULL). */
const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip,
                                        struct router_outcome *why);

#endif

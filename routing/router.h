/* Backend selection: which (backend, model) pair serves a request.
 *
 * Every candidate's cost for *this* request is estimated (prompt tokens x input price +
 * expected output tokens x output price, with live prices when a feed sets them), at its
 * effective price: a node flagged for over-reporting usage (routing/honesty.h) is ranked at
 * its listed price x its inflation, so it wins only where it is cheapest at the usage it
 * claims. Only available candidates (not ejected, paused, down or suspected stuck) under
 * their hard cap (max_inflight) and the caller's price ceiling are eligible; among them, those
 * under their learned concurrency limit (routing/limiter.h) are preferred. For `cheapest`, a
 * node at its limit still gets the request when every free one would cost more than
 * ROUTER_OVERFLOW_FACTOR times as much (a learned limit is a guess, and a 429 costs one round
 * trip: the node either takes it and the limit grows, or the request moves on), one such
 * request above its limit at a time, and when every
 * node is at its limit the request goes to the one least over it (unless free_only). A node on
 * probation (it never answered: one request at a time) gets no second one while the request
 * may still wait (free_only) for it or for another node: a request waits rather than take a
 * free node dearer than ROUTER_OVERFLOW_FACTOR times it, and briefly (wait_probation) rather
 * than one dearer than ROUTER_PROBATION_WAIT_FACTOR times it (a gateway's first second).
 * Strategies:
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

/* A node at its learned limit is tried before free ones dearer than this many times it. */
#define ROUTER_OVERFLOW_FACTOR 4.0
/* A request that may wait (wait_probation) waits for a node on probation (busy with its
 * first request) rather than take a free one dearer than this many times it. */
#define ROUTER_PROBATION_WAIT_FACTOR 1.25
/* How long a request waits so (seconds): a first answer is usually quicker; a node that takes
 * longer (or hangs) is not worth more. */
#define ROUTER_PROBATION_WAIT_S 0.3

struct router_request {
    size_t prompt_tokens; /* estimate */
    size_t output_tokens; /* max_tokens, or the default */
    enum config_strategy strategy;
    double max_price_usd; /* the caller's ceiling on the estimate; < 0 for none */
    double tie_tolerance;
    int64_t now_ms;  /* clock_mono_ms() */
    uint64_t random; /* for price-weighted */
    /* Learned limits and slow starts (routing and health settings); NULL: only max_inflight. */
    const struct config *cfg;
    /* Only a node under its learned limit will do: NULL (with why->full counted) rather than
     * one at its limit, so the caller may wait for a slot. */
    bool free_only;
    /* May wait for a cheaper node busy with its first request (see below). */
    bool wait_probation;
    /* The share of output_tokens answers use (routing/demand.h): ranking weighs output by it;
     * 0 = all of it. */
    double output_fill;
    /* Capabilities the request uses (config/caps.h): only models not declared without them
     * (routing/capability.h); caps_declared: only models declared with them. */
    unsigned caps_needed;
    bool caps_declared;
    /* Metered endpoints: images asked for, characters to speak (at the models' unit prices). */
    size_t images, characters;
    double audio_seconds; /* the most seconds of audio an upload can hold (openai/media.h) */
};

/* Why nothing could be picked (for a clear error). */
struct router_outcome {
    unsigned unavailable; /* ejected, rate limited, down or suspected stuck */
    unsigned saturated;   /* at max_inflight */
    unsigned full;        /* at their learned limit (still eligible, as a last resort) */
    unsigned over_price;  /* estimate above the ceiling */
    int64_t back_ms;      /* soonest an unavailable candidate returns; 0 if unknown */
    double cheapest_usd;  /* lowest estimate among those over the ceiling */
    unsigned incapable;   /* lacking a capability the request needs (`lacking` has them) */
    unsigned lacking;
    unsigned too_long;         /* the estimated prompt is over their context length */
    unsigned long max_context; /* the longest of those contexts */
};

/* Estimated USD cost of a request on a target, at its listed price. */
double router_estimate(const struct config_target *t, const struct router_request *req);
/* What the request should really cost there, for ranking: its effective price (listed x
 * usage inflation when flagged), the output at the share answers use (output_fill). */
double router_effective_estimate(const struct config_target *t, const struct router_request *req);

/* The target to use, skipping those marked in `skip` (one flag per route target; may be
 * NULL); NULL when none is eligible, with the reasons in *why (may be NULL). A model group's
 * route (config/groups.h) is tried tier by tier: the first tier with an eligible target
 * decides (or makes the request wait for one of its full nodes), the next only when none of
 * its targets is eligible. */
const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip,
                                        struct router_outcome *why);

#endif

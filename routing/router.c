#include "routing/router.h"

#include "routing/backend.h"

#include <math.h>

#define ROUTER_MAX_CANDIDATES 256

double router_estimate(const struct config_target *t, const struct router_request *req)
{
    return ((double)req->prompt_tokens * backend_input_price(t->model) +
            (double)req->output_tokens * backend_output_price(t->model)) /
           1e6;
}

struct candidate {
    const struct config_target *t;
    double cost;
    int inflight;
    uint64_t ttfb_us;
};

static const struct config_target *pick_cheapest(const struct candidate *c, size_t n,
                                                 double tolerance)
{
    double min = c[0].cost;
    for (size_t i = 1; i < n; i++)
        if (c[i].cost < min)
            min = c[i].cost;
    double limit = min + fabs(min) * tolerance + 1e-15;
    const struct candidate *best = NULL;
    for (size_t i = 0; i < n; i++) {
        if (c[i].cost > limit)
            continue;
        if (!best || c[i].inflight < best->inflight ||
            (c[i].inflight == best->inflight && c[i].ttfb_us < best->ttfb_us) ||
            (c[i].inflight == best->inflight && c[i].ttfb_us == best->ttfb_us &&
             c[i].cost < best->cost))
            best = &c[i];
    }
    return best->t;
}

static const struct config_target *pick_weighted(const struct candidate *c, size_t n,
                                                 uint64_t random)
{
    double weights[ROUTER_MAX_CANDIDATES], total = 0;
    double floor_cost = 1e-12; /* a free node gets a large but finite weight */
    for (size_t i = 0; i < n; i++) {
        double cost = c[i].cost > floor_cost ? c[i].cost : floor_cost;
        weights[i] = 1.0 / (cost * cost);
        total += weights[i];
    }
    double x = (double)(random >> 11) / (double)(1ull << 53) * total;
    for (size_t i = 0; i < n; i++) {
        if (x < weights[i])
            return c[i].t;
        x -= weights[i];
    }
    return c[n - 1].t;
}

static const struct config_target *pick_latency(const struct candidate *c, size_t n)
{
    const struct candidate *best = &c[0];
    for (size_t i = 1; i < n; i++)
        if (c[i].ttfb_us < best->ttfb_us ||
            (c[i].ttfb_us == best->ttfb_us && c[i].cost < best->cost))
            best = &c[i];
    return best->t;
}

const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip,
                                        struct router_outcome *why)
{
    struct candidate c[ROUTER_MAX_CANDIDATES];
    struct router_outcome out = {.cheapest_usd = -1};
    size_t n = 0;
    for (size_t i = 0; i < route->n_targets && n < ROUTER_MAX_CANDIDATES; i++) {
        if (skip && skip[i])
            continue;
        const struct config_target *t = &route->targets[i];
        struct backend_state *s = t->backend->state;
        int64_t back = 0;
        if (!backend_available(s, req->now_ms, &back)) {
            out.unavailable++;
            if (back > 0 && (out.back_ms == 0 || back < out.back_ms))
                out.back_ms = back;
            continue;
        }
        int inflight = atomic_load_explicit(&s->inflight, memory_order_relaxed);
        if (t->backend->max_inflight && inflight >= (int)t->backend->max_inflight) {
            out.saturated++;
            continue;
        }
        double cost = router_estimate(t, req);
        if (req->max_price_usd >= 0 && cost > req->max_price_usd) {
            out.over_price++;
            if (out.cheapest_usd < 0 || cost < out.cheapest_usd)
                out.cheapest_usd = cost;
            continue;
        }
        c[n++] = (struct candidate){
            .t = t,
            .cost = cost,
            .inflight = inflight,
            .ttfb_us = atomic_load_explicit(&s->ttfb_ewma_us, memory_order_relaxed),
        };
    }
    if (why)
        *why = out;
    if (n == 0)
        return NULL;
    switch (req->strategy) {
    case CONFIG_STRATEGY_PRICE_WEIGHTED:
        return pick_weighted(c, n, req->random);
    case CONFIG_STRATEGY_LATENCY:
        return pick_latency(c, n);
    default:
        return pick_cheapest(c, n, req->tie_tolerance);
    }
}

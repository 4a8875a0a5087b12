#include "routing/router.h"

#include "routing/backend.h"
#include "routing/capability.h"

#include <limits.h>
#include <math.h>

#define ROUTER_MAX_CANDIDATES 256

/* What the units a metered request asks for cost on t. */
static double router_units(const struct config_target *t, const struct router_request *req)
{
    return (double)req->images * t->model->usd_per_image +
           (double)req->characters * t->model->usd_per_mchar / 1e6 +
           req->audio_seconds * t->model->usd_per_audio_second;
}

double router_estimate(const struct config_target *t, const struct router_request *req)
{
    return ((double)req->prompt_tokens * backend_input_price(t->model) +
            (double)req->output_tokens * backend_output_price(t->model)) /
               1e6 +
           router_units(t, req);
}

double router_effective_estimate(const struct config_target *t, const struct router_request *req)
{
    const struct honesty *h = t->model->price ? &t->model->price->honesty : NULL;
    double fin = h ? honesty_price_factor(h, false) : 1;
    double fout = h ? honesty_price_factor(h, true) : 1;
    double out = (double)req->output_tokens * (req->output_fill > 0 ? req->output_fill : 1);
    return ((double)req->prompt_tokens * backend_input_price(t->model) * fin +
            out * backend_output_price(t->model) * fout) /
               1e6 +
           router_units(t, req);
}

/* Whether the target lacks what the request needs (counted in *out). */
static bool router_capable(const struct config_target *t, const struct router_request *req,
                           struct router_outcome *out)
{
    unsigned lacking = 0;
    unsigned long context = 0;
    switch (capability_check(t->model, req->caps_needed, req->caps_declared, req->prompt_tokens,
                             &lacking, &context)) {
    case CAPABILITY_LACKS:
        out->incapable++;
        out->lacking |= lacking;
        return true;
    case CAPABILITY_TOO_LONG:
        out->too_long++;
        if (context > out->max_context)
            out->max_context = context;
        return true;
    default:
        return false;
    }
}

/* Sums the reasons of two tiers. */
static void router_outcome_add(struct router_outcome *a, const struct router_outcome *b)
{
    a->unavailable += b->unavailable;
    a->saturated += b->saturated;
    a->full += b->full;
    a->over_price += b->over_price;
    if (b->back_ms > 0 && (a->back_ms == 0 || b->back_ms < a->back_ms))
        a->back_ms = b->back_ms;
    if (b->cheapest_usd >= 0 && (a->cheapest_usd < 0 || b->cheapest_usd < a->cheapest_usd))
        a->cheapest_usd = b->cheapest_usd;
    a->incapable += b->incapable;
    a->lacking |= b->lacking;
    a->too_long += b->too_long;
    if (b->max_context > a->max_context)
        a->max_context = b->max_context;
}

struct candidate {
    const struct config_target *t;
    double cost; /* at the effective price */
    int inflight;
    int limit;      /* learned, slow start included */
    bool probation; /* never answered: more than its one request only as a last resort */
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

/* Every candidate is at its learned limit: the one least over it (relative to its limit),
 * the cheaper of equals. */
static const struct config_target *pick_overflow(const struct candidate *c, size_t n)
{
    const struct candidate *best = &c[0];
    for (size_t i = 1; i < n; i++) {
        double a = (double)(c[i].inflight + 1) / c[i].limit;
        double b = (double)(best->inflight + 1) / best->limit;
        if ((best->probation && !c[i].probation) ||
            (best->probation == c[i].probation && (a < b || (a == b && c[i].cost < best->cost))))
            best = &c[i];
    }
    return best->t;
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

/* One tier of a route (every target when !tiered); *waits: it has candidates, but the
 * request is to wait for one. */
static const struct config_target *pick_tier(const struct config_route *route,
                                             const struct router_request *req, const bool *skip,
                                             struct router_outcome *why, bool tiered, unsigned tier,
                                             bool *waits)
{
    struct candidate c[ROUTER_MAX_CANDIDATES];
    struct router_outcome out = {.cheapest_usd = -1};
    size_t n = 0, n_free = 0;
    *waits = false;
    for (size_t i = 0; i < route->n_targets && n < ROUTER_MAX_CANDIDATES; i++) {
        if ((skip && skip[i]) || (tiered && route->targets[i].tier != tier))
            continue;
        const struct config_target *t = &route->targets[i];
        if (router_capable(t, req, &out))
            continue;
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
        int limit = req->cfg ? (int)backend_limit(req->cfg, t->backend, req->now_ms) : INT_MAX;
        struct candidate cand = {
            .t = t,
            .cost = router_effective_estimate(t, req),
            .inflight = inflight,
            .limit = limit,
            .probation = req->cfg && limiter_on_probation(&s->limit),
            .ttfb_us = atomic_load_explicit(&s->ttfb_ewma_us, memory_order_relaxed),
        };
        if (inflight >= limit) {
            out.full++;
            c[n++] = cand; /* kept after the free ones, as the last resort */
            continue;
        }
        /* Free ones first, in target order: the first full one (if any) moves to the end. */
        if (n != n_free)
            c[n] = c[n_free];
        n++;
        c[n_free++] = cand;
    }
    if (why)
        *why = out;
    if (n == 0)
        return NULL;
    *waits = true; /* unless one is picked below */
    if (n_free == 0)
        return req->free_only ? NULL : pick_overflow(c, n);
    /* The cheapest full ones, when every free one is far dearer: worth a try (or a wait, for
     * one on probation, until the request may wait no longer). */
    const struct candidate *full = NULL, *probation = NULL;
    double free_min = c[0].cost;
    for (size_t i = 1; i < n_free; i++)
        if (c[i].cost < free_min)
            free_min = c[i].cost;
    for (size_t i = n_free; i < n; i++) {
        if (!c[i].probation && c[i].inflight > c[i].limit)
            continue; /* already tried above its limit: one such request at a time */
        const struct candidate **slot = c[i].probation ? &probation : &full;
        if (!*slot || c[i].cost < (*slot)->cost)
            *slot = &c[i];
    }
    if (req->strategy == CONFIG_STRATEGY_CHEAPEST) {
        if (full && free_min > ROUTER_OVERFLOW_FACTOR * full->cost)
            return full->t;
        if (probation && free_min > ROUTER_OVERFLOW_FACTOR * probation->cost)
            return req->free_only ? NULL : probation->t;
        /* A cheaper node busy with its first request answers soon: worth a short wait. */
        if (probation && req->wait_probation &&
            free_min > ROUTER_PROBATION_WAIT_FACTOR * probation->cost)
            return NULL;
    }
    n = n_free;
    switch (req->strategy) {
    case CONFIG_STRATEGY_PRICE_WEIGHTED:
        return pick_weighted(c, n, req->random);
    case CONFIG_STRATEGY_LATENCY:
        return pick_latency(c, n);
    default:
        return pick_cheapest(c, n, req->tie_tolerance);
    }
}

const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip,
                                        struct router_outcome *why)
{
    bool waits;
    if (route->n_tiers <= 1)
        return pick_tier(route, req, skip, why, false, 0, &waits);
    struct router_outcome all = {.cheapest_usd = -1}, one;
    const struct config_target *t = NULL;
    for (unsigned tier = 0; tier < route->n_tiers && !t; tier++) {
        t = pick_tier(route, req, skip, &one, true, tier, &waits);
        router_outcome_add(&all, &one);
        if (waits)
            break;
    }
    if (why)
        *why = all;
    return t;
}

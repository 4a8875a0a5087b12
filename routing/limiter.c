#include "routing/limiter.h"

#include <math.h>

#define RELAXED memory_order_relaxed
/* The slow start's first share of the limit. */
#define LIMITER_RAMP_FLOOR 0.1
/* Latency cuts are at least this far apart (ms): a node queueing shows in many answers. */
#define LIMITER_CUT_GAP_MS 1000

static double milli_to_limit(uint32_t milli, const struct config_routing *rc)
{
    return milli ? (double)milli / 1000.0 : (double)rc->limit_initial;
}

static uint32_t limit_to_milli(double limit, const struct config_routing *rc)
{
    if (limit < 1)
        limit = 1;
    if (limit > (double)rc->limit_max)
        limit = (double)rc->limit_max;
    return (uint32_t)llround(limit * 1000.0);
}

double limiter_limit(const struct limiter *l, const struct config_routing *rc)
{
    return milli_to_limit(atomic_load_explicit(&l->milli, RELAXED), rc);
}

bool limiter_on_probation(const struct limiter *l)
{
    return !atomic_load_explicit(&l->successes, RELAXED);
}

double limiter_ramp_share(const struct limiter *l, long slow_start_ms, int64_t now_ms)
{
    int64_t from = atomic_load_explicit(&l->ramp_from_ms, RELAXED);
    if (!from || slow_start_ms <= 0 || now_ms < from)
        return 1; /* not ramping, or still out (the router does not ask then) */
    double f = (double)(now_ms - from) / (double)slow_start_ms;
    if (f >= 1)
        return 1;
    return LIMITER_RAMP_FLOOR + (1 - LIMITER_RAMP_FLOOR) * f;
}

unsigned limiter_effective(const struct limiter *l, const struct config_routing *rc,
                           long slow_start_ms, unsigned hard_cap, int64_t now_ms)
{
    if (!atomic_load_explicit(&l->successes, RELAXED))
        return 1; /* probation: one at a time until it answered */
    double v = limiter_limit(l, rc);
    if (atomic_load_explicit(&l->phase, RELAXED) == LIMITER_PROBING) {
        v *= 2; /* never refused: room to learn more */
        if (v > (double)rc->limit_max)
            v = (double)rc->limit_max;
    }
    v *= limiter_ramp_share(l, slow_start_ms, now_ms);
    unsigned n = v < 1 ? 1 : (unsigned)v;
    if (hard_cap && n > hard_cap)
        n = hard_cap;
    return n;
}

/* Applies f to the limit until no other worker raced in between. */
static void update(struct limiter *l, const struct config_routing *rc,
                   double (*f)(double limit, const void *arg), const void *arg)
{
    uint32_t old = atomic_load_explicit(&l->milli, RELAXED);
    for (;;) {
        uint32_t next = limit_to_milli(f(milli_to_limit(old, rc), arg), rc);
        if (next == old && old)
            return;
        if (atomic_compare_exchange_weak_explicit(&l->milli, &old, next, RELAXED, RELAXED))
            return;
    }
}

static double grow_one(double limit, const void *arg)
{
    (void)arg;
    return limit + 1;
}

static double grow_slowly(double limit, const void *arg)
{
    (void)arg;
    return limit + 1 / limit;
}

static double backoff(double limit, const void *arg)
{
    const double *ratio = arg;
    double next = limit * *ratio;
    /* Always at least one request less, so a small limit moves too. */
    return next > limit - 1 ? limit - 1 : next;
}

struct cut {
    double ratio;
    int others;
};

static double cut_to_others(double limit, const void *arg)
{
    const struct cut *c = arg;
    double next = backoff(limit, &c->ratio);
    if ((double)c->others < next)
        next = (double)c->others;
    return next;
}

void limiter_on_success(struct limiter *l, const struct config_routing *rc, int inflight_at_send,
                        double slowdown, int64_t now_ms)
{
    atomic_fetch_add_explicit(&l->successes, 1, RELAXED);
    double limit = limiter_limit(l, rc);
    if (rc->limit_latency_factor > 0 && slowdown >= rc->limit_latency_factor) {
        /* Slower than usual: no growth. Twice that while the limit is in use: the node is
         * queueing what it cannot serve, so the limit comes down (once a second at most). */
        int64_t last = atomic_load_explicit(&l->cut_ms, RELAXED);
        if (slowdown >= 2 * rc->limit_latency_factor && (double)inflight_at_send * 2 >= limit &&
            now_ms - last >= LIMITER_CUT_GAP_MS &&
            atomic_compare_exchange_strong_explicit(&l->cut_ms, &last, now_ms, RELAXED, RELAXED)) {
            update(l, rc, backoff, &rc->limit_backoff);
            atomic_store_explicit(&l->phase, LIMITER_STEADY, RELAXED);
            atomic_fetch_add_explicit(&l->cuts, 1, RELAXED);
        }
        return;
    }
    if ((double)inflight_at_send < floor(limit))
        return; /* the limit was not in use: nothing learned */
    if (atomic_load_explicit(&l->phase, RELAXED) == LIMITER_PROBING)
        update(l, rc, grow_one, NULL);
    else
        update(l, rc, grow_slowly, NULL);
}

static double cap_to_others(double limit, const void *arg)
{
    const struct cut *c = arg;
    return (double)c->others < limit ? (double)c->others : limit;
}

void limiter_on_rate_limited(struct limiter *l, const struct config_routing *rc, int others,
                             int64_t started_us, int64_t now_us, int64_t round_us)
{
    struct cut c = {.ratio = rc->limit_backoff, .others = others < 1 ? 1 : others};
    int64_t last = atomic_load_explicit(&l->backoff_us, RELAXED);
    bool fresh =
        started_us >= last && now_us - last >= round_us &&
        atomic_compare_exchange_strong_explicit(&l->backoff_us, &last, now_us, RELAXED, RELAXED);
    update(l, rc, fresh ? cut_to_others : cap_to_others, &c);
    atomic_store_explicit(&l->phase, LIMITER_STEADY, RELAXED);
    if (fresh)
        atomic_fetch_add_explicit(&l->cuts, 1, RELAXED);
}

void limiter_ramp(struct limiter *l, int64_t from_ms)
{
    atomic_store_explicit(&l->ramp_from_ms, from_ms ? from_ms : 1, RELAXED);
}

#include "routing/stuck.h"

#include "routing/backend.h"

#include <stdlib.h>

#define RELAXED memory_order_relaxed

/* The latest start of an attempt any node answered. */
static _Atomic int64_t stuck_world_us;

int64_t stuck_world_answered_us(void)
{
    return atomic_load_explicit(&stuck_world_us, RELAXED);
}

static void raise_to(_Atomic int64_t *v, int64_t x)
{
    int64_t prev = atomic_load_explicit(v, RELAXED);
    while (prev < x && !atomic_compare_exchange_weak_explicit(v, &prev, x, RELAXED, RELAXED))
        ;
}

void stuck_world_probe_ok(int64_t started_us)
{
    raise_to(&stuck_world_us, started_us);
}

double stuck_after_s(const struct latency *lat, const struct config_health *h, bool stream,
                     long out_tokens)
{
    if (h->stuck_factor <= 0)
        return 0;
    double expect = latency_expect_s(lat, stream, out_tokens);
    if (expect <= 0)
        return 0;
    double after = h->stuck_factor * expect;
    double floor = (double)h->stuck_min_ms / 1000.0;
    return after > floor ? after : floor;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double stuck_after_target(const struct config_route *route, const struct config_target *t,
                          const struct config_health *h, bool stream, long out_tokens)
{
    double own = stuck_after_s(&t->backend->state->lat, h, stream, out_tokens);
    if (own > 0 || h->stuck_factor <= 0)
        return own;
    double v[256];
    size_t n = 0;
    for (size_t i = 0; i < route->n_targets && n < 256; i++) {
        const struct config_target *o = &route->targets[i];
        if (o == t || !o->backend->state)
            continue;
        double x = stuck_after_s(&o->backend->state->lat, h, stream, out_tokens);
        if (x > 0)
            v[n++] = x;
    }
    if (!n)
        return 0;
    qsort(v, n, sizeof v[0], cmp_double);
    return v[n / 2];
}

void stuck_attempt_begin(struct stuck *s)
{
    atomic_fetch_add_explicit(&s->waiting, 1, RELAXED);
}

void stuck_attempt_end(struct stuck *s)
{
    atomic_fetch_sub_explicit(&s->waiting, 1, RELAXED);
}

bool stuck_answered(struct stuck *s, int64_t started_us)
{
    atomic_fetch_sub_explicit(&s->waiting, 1, RELAXED);
    raise_to(&s->answered_us, started_us);
    raise_to(&stuck_world_us, started_us);
    /* Sent after the last suspicion began, so after the node came back: it answers again. */
    if (started_us / 1000 >= atomic_load_explicit(&s->since_ms, RELAXED) &&
        atomic_load_explicit(&s->streak, RELAXED))
        atomic_store_explicit(&s->streak, 0, RELAXED);
    if (started_us < atomic_load_explicit(&s->trigger_us, RELAXED))
        return false; /* taken before the node stopped answering: no news */
    int expected = STUCK_SUSPECTED;
    return atomic_compare_exchange_strong_explicit(&s->state, &expected, STUCK_NONE, RELAXED,
                                                   RELAXED);
}

enum stuck_verdict stuck_check(struct stuck *s, int64_t started_us, double waited_s, double after_s,
                               double least_s, int64_t world_us, int64_t now_ms,
                               bool *suspected_now)
{
    *suspected_now = false;
    bool ignored = started_us > atomic_load_explicit(&s->answered_us, RELAXED);
    if (!ignored)
        return STUCK_WAIT; /* the node answered something sent as late: this one is just slow */
    if (atomic_load_explicit(&s->state, RELAXED) == STUCK_SUSPECTED)
        return waited_s >= least_s ? STUCK_GIVE_UP : STUCK_WAIT;
    if (after_s <= 0 || waited_s < after_s)
        return STUCK_WAIT;
    if (atomic_load_explicit(&s->waiting, RELAXED) < 2 && waited_s < 2 * after_s)
        return STUCK_WAIT;
    if (world_us <= started_us)
        return STUCK_WAIT; /* nobody answers anything sent since: the stall is not this node's */
    int expected = STUCK_NONE;
    if (atomic_compare_exchange_strong_explicit(&s->state, &expected, STUCK_SUSPECTED, RELAXED,
                                                RELAXED)) {
        atomic_store_explicit(&s->since_ms, now_ms, RELAXED);
        atomic_store_explicit(&s->trigger_us, started_us, RELAXED);
        atomic_fetch_add_explicit(&s->streak, 1, RELAXED);
        atomic_fetch_add_explicit(&s->total, 1, RELAXED);
        *suspected_now = true;
    }
    return STUCK_GIVE_UP;
}

bool stuck_probe_ok(struct stuck *s, const struct config_health *h, int64_t probe_started_ms,
                    int64_t now_ms)
{
    if (atomic_load_explicit(&s->state, RELAXED) != STUCK_SUSPECTED)
        return false;
    int64_t since = atomic_load_explicit(&s->since_ms, RELAXED);
    if (probe_started_ms < since)
        return false; /* it may have answered before the node stopped */
    unsigned streak = atomic_load_explicit(&s->streak, RELAXED);
    int64_t hold = 0;
    if (streak > 1) {
        hold = h->cooldown_ms;
        for (unsigned i = 2; i < streak && hold < h->max_cooldown_ms; i++)
            hold *= 2;
        if (hold > h->max_cooldown_ms)
            hold = h->max_cooldown_ms;
    }
    if (now_ms < since + hold)
        return false;
    int expected = STUCK_SUSPECTED;
    return atomic_compare_exchange_strong_explicit(&s->state, &expected, STUCK_NONE, RELAXED,
                                                   RELAXED);
}

bool stuck_suspected(const struct stuck *s)
{
    return atomic_load_explicit(&s->state, RELAXED) == STUCK_SUSPECTED;
}

/* Unit tests for routing/limiter: the learned concurrency limit's arithmetic (slow start until
 * the first 429, additive growth after it, multiplicative decrease to what the node held,
 * the latency cut), and the slow start of a node back in service. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "routing/limiter.h"

#include <string.h>

#define T0 1000000 /* a fixed "now" (ms) */

static const struct config_routing rc = {
    .limit_initial = 8,
    .limit_max = 100,
    .limit_backoff = 0.9,
    .limit_latency_factor = 3,
    .rate_limit_pause_ms = 5000,
};

static double limit_of(const struct limiter *l)
{
    return limiter_limit(l, &rc);
}

/* A 429 to an attempt sent just now, each in an episode of its own. */
static void rate_limited(struct limiter *l, int others)
{
    static int64_t now_us = 1000000;
    now_us += 1000000;
    limiter_on_rate_limited(l, &rc, others, now_us, now_us, 100000);
}

/* Before anything is learned: limit_initial; every success at the limit adds one. */
static void test_probing_grows_by_one(void **state)
{
    (void)state;
    struct limiter l = {0};
    assert_float_equal(limit_of(&l), 8, 0);
    /* On probation until it answers: one request at a time. */
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0), 1);
    /* Sent while the limit was not in use: nothing learned. */
    limiter_on_success(&l, &rc, 3, 0, T0);
    assert_float_equal(limit_of(&l), 8, 0);
    /* Having answered, a node that never refused may take twice its limit. */
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0), 16);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 12, T0), 12);
    /* At the limit: +1 each, so a busy node doubles in a round trip. */
    for (int i = 0; i < 8; i++)
        limiter_on_success(&l, &rc, (int)limit_of(&l), 0, T0);
    assert_float_equal(limit_of(&l), 16, 1e-9);
    assert_int_equal(atomic_load(&l.phase), LIMITER_PROBING);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0), 32);
    /* Never past limit_max. */
    for (int i = 0; i < 200; i++)
        limiter_on_success(&l, &rc, 1000, 0, T0);
    assert_float_equal(limit_of(&l), 100, 1e-9);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0), 100);
    /* Once it refused, the limit is what it is. */
    rate_limited(&l, 95);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0), 90);
}

/* A 429: limit × backoff, never above what the gateway still had in flight there, at least
 * one less, never under 1; then growth is one per round trip (1/limit per success). */
static void test_rate_limited_backs_off(void **state)
{
    (void)state;
    struct limiter l = {0};
    for (int i = 0; i < 12; i++)
        limiter_on_success(&l, &rc, 100, 0, T0); /* 20 */
    assert_float_equal(limit_of(&l), 20, 1e-9);
    rate_limited(&l, 19); /* 20 × 0.9 = 18 < 19 others */
    assert_float_equal(limit_of(&l), 18, 1e-9);
    assert_int_equal(atomic_load(&l.phase), LIMITER_STEADY);
    assert_int_equal(atomic_load(&l.cuts), 1);
    /* The node held fewer than that: down to what it held. */
    rate_limited(&l, 6);
    assert_float_equal(limit_of(&l), 6, 1e-9);
    /* Small limits still move by one. */
    rate_limited(&l, 100);
    assert_float_equal(limit_of(&l), 5, 1e-9);
    /* Nothing else in flight: the floor is one. */
    rate_limited(&l, 0);
    assert_float_equal(limit_of(&l), 1, 1e-9);
    rate_limited(&l, 0);
    assert_float_equal(limit_of(&l), 1, 1e-9);
    /* Steady: +1/limit per success at the limit. */
    limiter_on_success(&l, &rc, 1, 0, T0);
    assert_float_equal(limit_of(&l), 2, 1e-3);
    limiter_on_success(&l, &rc, 2, 0, T0);
    assert_float_equal(limit_of(&l), 2.5, 1e-3);
    limiter_on_success(&l, &rc, 1, 0, T0); /* 1 < 2: not in use */
    assert_float_equal(limit_of(&l), 2.5, 1e-3);
    /* About one per round trip: from 7, seven successes at the limit make nearly 8. */
    struct limiter m = {0};
    rate_limited(&m, 10); /* 8 × 0.9 = 7.2, but at least one less */
    assert_float_equal(limit_of(&m), 7, 1e-3);
    for (int i = 0; i < 7; i++)
        limiter_on_success(&m, &rc, 7, 0, T0);
    assert_true(limit_of(&m) > 7.9 && limit_of(&m) < 8);
}

/* One congestion episode backs off once: 429s to attempts sent before the decrease, or within
 * a round of it, only bring the limit down to what was in flight. */
static void test_backoff_once_per_episode(void **state)
{
    (void)state;
    struct limiter l = {0};
    for (int i = 0; i < 12; i++)
        limiter_on_success(&l, &rc, 100, 0, T0); /* 20 */
    int64_t t = 5000000;
    limiter_on_rate_limited(&l, &rc, 19, t - 1000, t, 100000);
    assert_float_equal(limit_of(&l), 18, 1e-9);
    /* Sent before that decrease: the same episode. */
    limiter_on_rate_limited(&l, &rc, 19, t - 500, t + 2000, 100000);
    assert_float_equal(limit_of(&l), 18, 1e-9);
    /* ... but it says what the node held: never more than that. */
    limiter_on_rate_limited(&l, &rc, 15, t - 400, t + 3000, 100000);
    assert_float_equal(limit_of(&l), 15, 1e-9);
    /* Sent after, but within a round: still the same episode. */
    limiter_on_rate_limited(&l, &rc, 19, t + 10000, t + 50000, 100000);
    assert_float_equal(limit_of(&l), 15, 1e-9);
    assert_int_equal(atomic_load(&l.cuts), 1);
    /* A round later, sent after: a new episode. */
    limiter_on_rate_limited(&l, &rc, 19, t + 60000, t + 100000, 100000);
    assert_float_equal(limit_of(&l), 13.5, 1e-9);
    assert_int_equal(atomic_load(&l.cuts), 2);
}

/* The first byte slower than limit_latency_factor × the baseline: no growth; twice that while
 * the limit is in use: cut by the backoff, once a second. */
static void test_latency_cut(void **state)
{
    (void)state;
    struct limiter l = {0};
    for (int i = 0; i < 12; i++)
        limiter_on_success(&l, &rc, 100, 0, T0); /* 20 */
    limiter_on_success(&l, &rc, 20, 2.9, T0);    /* under the factor: grows */
    assert_float_equal(limit_of(&l), 21, 1e-9);
    limiter_on_success(&l, &rc, 21, 3.5, T0); /* slow: holds */
    assert_float_equal(limit_of(&l), 21, 1e-9);
    limiter_on_success(&l, &rc, 21, 6.5, T0); /* queueing: cut */
    assert_float_equal(limit_of(&l), 21 * 0.9, 1e-3);
    assert_int_equal(atomic_load(&l.phase), LIMITER_STEADY);
    limiter_on_success(&l, &rc, 21, 6.5, T0 + 500); /* too soon for another cut */
    assert_float_equal(limit_of(&l), 21 * 0.9, 1e-3);
    limiter_on_success(&l, &rc, 21, 6.5, T0 + 1000);
    assert_float_equal(limit_of(&l), 21 * 0.81, 1e-3);
    /* A node barely used is not cut for being slow: the limit is not why. */
    double before = limit_of(&l);
    limiter_on_success(&l, &rc, 2, 10, T0 + 3000);
    assert_float_equal(limit_of(&l), before, 1e-9);
    /* Off with factor 0. */
    struct config_routing off = rc;
    off.limit_latency_factor = 0;
    limiter_on_success(&l, &off, 100, 10, T0 + 4000);
    assert_true(limit_of(&l) > before);
}

/* Back in service: 10% of the limit, growing linearly to all of it over slow_start_ms; at
 * least one request; max_inflight on top. */
static void test_slow_start_ramp(void **state)
{
    (void)state;
    struct limiter l = {0};
    for (int i = 0; i < 92; i++)
        limiter_on_success(&l, &rc, 1000, 0, T0); /* 100 */
    assert_float_equal(limit_of(&l), 100, 1e-9);
    limiter_ramp(&l, T0 + 5000); /* out until then */
    assert_float_equal(limiter_ramp_share(&l, 3000, T0), 1, 0);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0 + 5000), 10);
    assert_float_equal(limiter_ramp_share(&l, 3000, T0 + 6500), 0.55, 1e-9);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0 + 6500), 55);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 0, T0 + 8000), 100);
    assert_int_equal(limiter_effective(&l, &rc, 3000, 40, T0 + 8000), 40);
    /* Slow start off. */
    assert_int_equal(limiter_effective(&l, &rc, 0, 0, T0 + 5000), 100);
    /* A small limit starts at one request. */
    struct limiter s = {0};
    limiter_on_success(&s, &rc, 1, 0, T0);
    rate_limited(&s, 3);
    limiter_ramp(&s, T0);
    assert_int_equal(limiter_effective(&s, &rc, 3000, 0, T0), 1);
    /* During a ramp the limit is not in use when the ramp holds the node back: no growth. */
    double before = limit_of(&s);
    limiter_on_success(&s, &rc, 1, 0, T0);
    assert_float_equal(limit_of(&s), before, 1e-9);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probing_grows_by_one),
        cmocka_unit_test(test_rate_limited_backs_off),
        cmocka_unit_test(test_backoff_once_per_episode),
        cmocka_unit_test(test_latency_cut),
        cmocka_unit_test(test_slow_start_ramp),
    };
    return cmocka_run_group_tests_name("limiter", tests, NULL, NULL);
}

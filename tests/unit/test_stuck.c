/* Unit tests for routing/latency and routing/stuck: the first-byte estimators, when an attempt
 * is overdue, when an overdue attempt suspects its node (and when it does not: the node
 * answered something sent later, or one lone request is slow), who gives up on a suspected
 * node, and what ends a suspicion (an answer, a probe, later and later for a repeat offender).
 * Also the backend's view: no traffic while suspected, a slow start after. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "routing/backend.h"
#include "routing/latency.h"
#include "routing/stuck.h"

#include <stdlib.h>
#include <string.h>

#define T0 1000000 /* ms */
#define US(ms) ((int64_t)(ms)*1000)
/* Other nodes answer what is sent now: the world is not stalled. */
#define WORLD US(T0 + 100000)

static const struct config_health health = {
    .interval_ms = 1000,
    .timeout_ms = 500,
    .eject_after_failures = 3,
    .cooldown_ms = 1000,
    .max_cooldown_ms = 8000,
    .stuck_factor = 2,
    .stuck_min_ms = 250,
    .slow_start_ms = 3000,
};

/* TCP's estimators: the first sample as it is (deviation half of it), then gains 1/8 and 1/4;
 * p95 = mean + 2 deviations; the baseline follows lower samples at once. */
static void test_latency_estimators(void **state)
{
    (void)state;
    struct latency l = {0};
    assert_float_equal(latency_p95_s(&l), 0, 0);
    assert_float_equal(latency_expect_s(&l, true, 100), 0, 0);
    assert_float_equal(latency_slowdown(&l), 0, 0);
    latency_first_byte(&l, 0.2);
    assert_int_equal(atomic_load(&l.ttfb_us), 200000);
    assert_int_equal(atomic_load(&l.ttfb_dev_us), 100000);
    assert_float_equal(latency_p95_s(&l), 0.4, 1e-9);
    latency_first_byte(&l, 0.1);
    assert_int_equal(atomic_load(&l.ttfb_us), (200000 * 7 + 100000) / 8);
    assert_int_equal(atomic_load(&l.ttfb_dev_us), (100000 * 3 + 100000) / 4);
    assert_int_equal(atomic_load(&l.floor_us), 100000);
    assert_float_equal(latency_slowdown(&l), 1.875, 1e-9);
    /* Nonsense is ignored. */
    latency_first_byte(&l, -1);
    latency_first_byte(&l, 0);
    assert_int_equal(atomic_load(&l.ttfb_us), 187500);
    /* A stream's p95 is its first byte's; a whole answer's adds its tokens at 1.5 x the time
     * per token, and is unknown until some answer measured that. */
    assert_float_equal(latency_expect_s(&l, false, 100), 0, 0);
    latency_answer(&l, 0.1875, 0.1875 + 0.4, 100); /* 4 ms a token */
    assert_int_equal(atomic_load(&l.token_ns), 4000000);
    double p95 = latency_p95_s(&l);
    assert_float_equal(latency_expect_s(&l, true, 100), p95, 1e-12);
    assert_float_equal(latency_expect_s(&l, false, 100), p95 + 100 * 1.5 * 0.004, 1e-9);
    /* A whole answer (no first byte of its own) takes the stream's as its start. */
    latency_answer(&l, 0, 0.1875 + 0.8, 100); /* 8 ms a token */
    assert_int_equal(atomic_load(&l.token_ns), (4000000 * 7 + 8000000) / 8);
    /* Under 4 tokens, or quicker than the usual first byte: says nothing. */
    latency_answer(&l, 0, 5, 3);
    latency_answer(&l, 0, 0.1, 100);
    assert_int_equal(atomic_load(&l.token_ns), (4000000 * 7 + 8000000) / 8);
}

static struct latency known_latency(double ttfb_s)
{
    struct latency l = {0};
    for (int i = 0; i < 50; i++)
        latency_first_byte(&l, ttfb_s);
    return l;
}

/* Overdue after stuck_factor x the p95, at least stuck_min_ms; nothing without a latency or
 * with the factor 0. */
static void test_stuck_after(void **state)
{
    (void)state;
    struct latency none = {0};
    assert_float_equal(stuck_after_s(&none, &health, true, 0), 0, 0);
    struct latency l = known_latency(0.3);
    double p95 = latency_p95_s(&l);
    assert_true(p95 >= 0.3 && p95 < 0.31);
    assert_float_equal(stuck_after_s(&l, &health, true, 0), 2 * p95, 1e-9);
    struct latency fast = known_latency(0.05);
    assert_float_equal(stuck_after_s(&fast, &health, true, 0), 0.25, 1e-9);
    struct config_health off = health;
    off.stuck_factor = 0;
    assert_float_equal(stuck_after_s(&l, &off, true, 0), 0, 0);
}

/* An overdue attempt suspects the node when nothing sent since it began was answered and
 * another attempt waits too (or it is twice overdue); then the ignored attempts give up. */
static void test_suspect_and_give_up(void **state)
{
    (void)state;
    struct stuck s = {0};
    bool now;
    /* Attempt A (T0) answered, B (T0+100) and C (T0+300) waiting. */
    stuck_attempt_begin(&s);
    stuck_attempt_begin(&s);
    stuck_attempt_begin(&s);
    assert_false(stuck_answered(&s, US(T0)));
    assert_int_equal(atomic_load(&s.waiting), 2);
    /* B is not overdue yet. */
    assert_int_equal(stuck_check(&s, US(T0 + 100), 0.5, 0.6, 0.6, WORLD, T0 + 600, &now),
                     STUCK_WAIT);
    assert_false(now);
    /* B is overdue, C waits too: suspected, B gives up. */
    assert_int_equal(stuck_check(&s, US(T0 + 100), 0.7, 0.6, 0.6, WORLD, T0 + 800, &now),
                     STUCK_GIVE_UP);
    assert_true(now);
    assert_true(stuck_suspected(&s));
    assert_int_equal(atomic_load(&s.total), 1);
    assert_int_equal(atomic_load(&s.streak), 1);
    stuck_attempt_end(&s);
    /* C, sent only 0.5 s ago, waits the least wait first; then gives up. */
    assert_int_equal(stuck_check(&s, US(T0 + 300), 0.5, 3, 0.6, WORLD, T0 + 800, &now), STUCK_WAIT);
    assert_false(now);
    assert_int_equal(stuck_check(&s, US(T0 + 300), 0.6, 3, 0.6, WORLD, T0 + 900, &now),
                     STUCK_GIVE_UP);
    assert_false(now); /* already suspected */
    stuck_attempt_end(&s);
    /* An attempt older than the last answered one is only slow: it never gives up here. */
    assert_int_equal(stuck_check(&s, US(T0 - 50), 5, 0.6, 0.6, WORLD, T0 + 900, &now), STUCK_WAIT);
    assert_int_equal(atomic_load(&s.waiting), 0);
}

/* No suspicion when the node answered something sent later; one lone waiting attempt needs to
 * be twice overdue. */
static void test_no_suspicion(void **state)
{
    (void)state;
    struct stuck s = {0};
    bool now;
    stuck_attempt_begin(&s); /* A at T0: slow */
    stuck_attempt_begin(&s); /* B at T0+100: answered */
    assert_false(stuck_answered(&s, US(T0 + 100)));
    assert_int_equal(stuck_check(&s, US(T0), 10, 0.6, 0.6, WORLD, T0 + 10000, &now), STUCK_WAIT);
    assert_false(stuck_suspected(&s));
    /* A lone attempt C, sent later, overdue once: wait; twice: suspected. */
    stuck_attempt_end(&s); /* A gives up by itself (its timeout) */
    stuck_attempt_begin(&s);
    assert_int_equal(atomic_load(&s.waiting), 1);
    assert_int_equal(stuck_check(&s, US(T0 + 200), 0.9, 0.6, 0.6, WORLD, T0 + 1100, &now),
                     STUCK_WAIT);
    assert_int_equal(stuck_check(&s, US(T0 + 200), 1.2, 0.6, 0.6, WORLD, T0 + 1400, &now),
                     STUCK_GIVE_UP);
    assert_true(now);
    /* Nobody anywhere answered what was sent since (the gateway, the network or the host of
     * every node stalled): nobody is suspected. */
    struct stuck w = {0};
    stuck_attempt_begin(&w);
    stuck_attempt_begin(&w);
    assert_int_equal(stuck_check(&w, US(T0), 5, 0.6, 0.6, US(T0), T0 + 5000, &now), STUCK_WAIT);
    assert_false(stuck_suspected(&w));
    assert_int_equal(stuck_check(&w, US(T0), 5, 0.6, 0.6, US(T0) + 1, T0 + 5000, &now),
                     STUCK_GIVE_UP);
    /* Unknown latency (after 0): never suspects by itself. */
    struct stuck u = {0};
    stuck_attempt_begin(&u);
    stuck_attempt_begin(&u);
    assert_int_equal(stuck_check(&u, US(T0), 100, 0, 0, WORLD, T0 + 100000, &now), STUCK_WAIT);
    assert_false(stuck_suspected(&u));
}

static void suspect(struct stuck *s, int64_t started_ms, int64_t now_ms)
{
    bool now;
    stuck_attempt_begin(s);
    stuck_attempt_begin(s);
    assert_int_equal(stuck_check(s, US(started_ms), 1, 0.5, 0.5, WORLD, now_ms, &now),
                     STUCK_GIVE_UP);
    assert_true(now);
    stuck_attempt_end(s);
    stuck_attempt_end(s);
}

/* What ends a suspicion: an answer to an attempt it was ignoring, or a probe sent after it
 * began; a repeat offender (suspected again with no request answered in between) waits
 * cooldown_ms, doubling, before a probe may end it. */
static void test_suspicion_ends(void **state)
{
    (void)state;
    struct stuck s = {0};
    suspect(&s, T0, T0 + 1000);
    /* An attempt the node took before the one that raised the suspicion, answered late: no
     * news (a node that stops answering finishes what it was doing). */
    stuck_attempt_begin(&s);
    assert_false(stuck_answered(&s, US(T0 - 500)));
    assert_true(stuck_suspected(&s));
    /* One it was ignoring answered: over. */
    stuck_attempt_begin(&s);
    assert_true(stuck_answered(&s, US(T0 + 10)));
    assert_false(stuck_suspected(&s));

    /* The first time, a probe sent after the suspicion began ends it; one sent before says
     * nothing. */
    struct stuck p = {0};
    suspect(&p, T0, T0 + 1000);
    assert_false(stuck_probe_ok(&p, &health, T0 + 900, T0 + 1100));
    assert_true(stuck_probe_ok(&p, &health, T0 + 1000, T0 + 1100));
    assert_false(stuck_suspected(&p));
    /* Suspected again with no request sent since answered (streak 2): a probe may end it only
     * cooldown_ms after it began... */
    suspect(&p, T0 + 2000, T0 + 3000);
    assert_int_equal(atomic_load(&p.streak), 2);
    assert_false(stuck_probe_ok(&p, &health, T0 + 3000, T0 + 3500));
    assert_true(stuck_probe_ok(&p, &health, T0 + 3500, T0 + 4000));
    /* ... the third time twice that. */
    suspect(&p, T0 + 5000, T0 + 6000);
    assert_int_equal(atomic_load(&p.streak), 3);
    assert_false(stuck_probe_ok(&p, &health, T0 + 7000, T0 + 7999));
    assert_true(stuck_probe_ok(&p, &health, T0 + 7000, T0 + 8000));
    /* An answer to a request sent after the last suspicion began resets the streak. */
    stuck_attempt_begin(&p);
    assert_false(stuck_answered(&p, US(T0 + 8100)));
    assert_int_equal(atomic_load(&p.streak), 0);
    suspect(&p, T0 + 9000, T0 + 10000);
    assert_true(stuck_probe_ok(&p, &health, T0 + 10000, T0 + 10001));
    /* Nothing to end. */
    assert_false(stuck_probe_ok(&p, &health, T0 + 10100, T0 + 10200));
}

/* The backend: a suspected node takes no traffic ("suspected", no known return); a probe or
 * an answer ends it with a slow start. */
static void test_backend_suspected(void **state)
{
    (void)state;
    struct backend_state *b = calloc(1, sizeof *b);
    assert_non_null(b);
    int64_t back = -1;
    suspect(&b->stuck, T0, T0 + 1000);
    assert_false(backend_available(b, T0 + 1000, &back));
    assert_int_equal(back, 0);
    assert_string_equal(backend_health_name(b, T0 + 1000), "suspected");
    assert_int_equal(backend_health(b, T0 + 1000), BACKEND_SUSPECTED);
    backend_record_probe(b, &health, true, T0 + 1500, T0 + 1600);
    assert_true(backend_available(b, T0 + 1600, NULL));
    assert_string_equal(backend_health_name(b, T0 + 1600), "up");
    assert_int_equal(atomic_load(&b->limit.ramp_from_ms), T0 + 1600);
    /* Again, ended by an answer this time. */
    suspect(&b->stuck, T0 + 2000, T0 + 3000);
    assert_false(backend_available(b, T0 + 3000, NULL));
    assert_int_equal(backend_attempt_begin(b), 1);
    backend_first_byte(b, US(T0 + 2500), 0.2, true, T0 + 3100);
    assert_true(backend_available(b, T0 + 3100, NULL));
    assert_int_equal(atomic_load(&b->limit.ramp_from_ms), T0 + 3100);
    assert_int_equal(atomic_load(&b->lat.ttfb_us), 200000);
    free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latency_estimators),  cmocka_unit_test(test_stuck_after),
        cmocka_unit_test(test_suspect_and_give_up), cmocka_unit_test(test_no_suspicion),
        cmocka_unit_test(test_suspicion_ends),      cmocka_unit_test(test_backend_suspected),
    };
    return cmocka_run_group_tests_name("stuck", tests, NULL, NULL);
}

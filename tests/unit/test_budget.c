/* Unit tests for tenancy/budget: per-key spending budgets. Without Redis, the local allowance
 * (1% of a budget per worker); with a real redis-server (tests/unit/harness.h), reservations
 * held in tg:budget:<key> that never pass the budget however many replicas race, settlement
 * replacing a reservation by the real cost, and a Redis too slow to answer falling back to
 * the local allowance (what its late scripts reserved released again). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "redis/keyspace.h"
#include "redis/redis.h"
#include "tenancy/budget.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- without Redis: the local allowance --------------------------------------------------- */

static void test_local_allowance(void **state)
{
    (void)state;
    struct budget *b = budget_new(NULL);
    assert_non_null(b);
    struct budget_wait *wait = NULL;
    /* A 100 USD budget allows 1 USD per worker while Redis is out of reach. */
    assert_int_equal(budget_reserve(b, "la-key", 100, 0.5, NULL, NULL, &wait), BUDGET_OK);
    assert_int_equal(budget_reserve(b, "la-key", 100, 0.75, NULL, NULL, &wait), BUDGET_EXHAUSTED);
    assert_int_equal(budget_reserve(b, "la-key", 100, 0.5, NULL, NULL, &wait), BUDGET_OK);
    assert_int_equal(budget_reserve(b, "la-key", 100, 0.001, NULL, NULL, &wait), BUDGET_EXHAUSTED);
    assert_null(wait); /* nothing was ever pending */
    /* Settling cannot give any of it back without Redis: the key can spend less, never more. */
    budget_settle(b, "la-key", 0.5, 0);
    assert_int_equal(budget_reserve(b, "la-key", 100, 0.001, NULL, NULL, &wait), BUDGET_EXHAUSTED);
    /* Each key has its own allowance, from its own budget. */
    assert_int_equal(budget_reserve(b, "la-other", 10, 0.1, NULL, NULL, &wait), BUDGET_OK);
    assert_int_equal(budget_reserve(b, "la-other", 10, 0.01, NULL, NULL, &wait), BUDGET_EXHAUSTED);
    /* A zero budget allows only what costs nothing. */
    assert_int_equal(budget_reserve(b, "la-zero", 0, 0, NULL, NULL, &wait), BUDGET_OK);
    assert_int_equal(budget_reserve(b, "la-zero", 0, 1e-9, NULL, NULL, &wait), BUDGET_EXHAUSTED);
    budget_free(b);
    budget_free(NULL);
}

/* ---- with Redis ------------------------------------------------------------------------------ */

/* A loop, a throwaway redis-server and a client (tests/unit/harness.h). */
static int setup(void **state)
{
    /* A breaker that a few timeouts in a row do not open. */
    return harness_env_setup(state, "budget", &(struct redis_options){.breaker_failures = 20});
}

/* One field of tg:budget:<key> as a number; -1 when absent. */
static double field(struct harness_env *w, const char *key, const char *name)
{
    char k[128];
    snprintf(k, sizeof k, REDIS_KEY_BUDGET_PREFIX "%s", key);
    redisReply *r = harness_redis_command(&w->srv, HARNESS_ARGV("HGET", k, name));
    assert_non_null(r);
    double v = r->type == REDIS_REPLY_STRING ? strtod(r->str, NULL) : -1;
    freeReplyObject(r);
    return v;
}

struct answer {
    int calls;
    enum budget_result result;
    bool in_redis;
};

static void on_answer(void *ctx, enum budget_result result, bool in_redis)
{
    struct answer *a = ctx;
    a->calls++;
    a->result = result;
    a->in_redis = in_redis;
}

static bool answered(void *arg)
{
    return ((struct answer *)arg)->calls > 0;
}

/* A reservation through Redis: must be PENDING, then answered once. */
static struct answer reserve(struct harness_env *w, struct budget *b, const char *key,
                             double budget, double est)
{
    struct answer a = {0};
    struct budget_wait *wait = NULL;
    assert_int_equal(budget_reserve(b, key, budget, est, on_answer, &a, &wait), BUDGET_PENDING);
    assert_non_null(wait);
    assert_int_equal(a.calls, 0); /* never from inside the call */
    assert_true(harness_run_until(&w->h, answered, &a, 5));
    harness_run_for(&w->h, 0.01);
    assert_int_equal(a.calls, 1);
    return a;
}

static void test_reserve_in_redis(void **state)
{
    struct harness_env *w = *state;
    struct budget *b = budget_new(w->c);
    assert_non_null(b);
    /* Amounts exact in binary, so the boundary is exact too. */
    struct answer a = reserve(w, b, "rr-key", 1, 0.25);
    assert_int_equal(a.result, BUDGET_OK);
    assert_true(a.in_redis);
    assert_float_equal(field(w, "rr-key", "reserved"), 0.25, 1e-9);
    assert_int_equal(reserve(w, b, "rr-key", 1, 0.5).result, BUDGET_OK);
    /* 0.75 held: 0.5 more would pass the budget, 0.25 reaches it exactly. */
    a = reserve(w, b, "rr-key", 1, 0.5);
    assert_int_equal(a.result, BUDGET_EXHAUSTED);
    assert_true(a.in_redis);
    assert_float_equal(field(w, "rr-key", "reserved"), 0.75, 1e-9);
    assert_int_equal(reserve(w, b, "rr-key", 1, 0.25).result, BUDGET_OK);
    assert_int_equal(reserve(w, b, "rr-key", 1, 0.0001).result, BUDGET_EXHAUSTED);
    assert_float_equal(field(w, "rr-key", "reserved"), 1, 1e-9);
    assert_float_equal(field(w, "rr-key", "spent"), -1, 0); /* nothing settled yet */
    /* The budget is the caller's: a larger one admits more against the same spend. */
    assert_int_equal(reserve(w, b, "rr-key", 2, 0.5).result, BUDGET_OK);
    budget_free(b);
}

struct fields {
    struct harness_env *w;
    const char *key;
    double spent, reserved;
};

static bool fields_are(void *arg)
{
    struct fields *f = arg;
    double s = field(f->w, f->key, "spent"), r = field(f->w, f->key, "reserved");
    return s > f->spent - 1e-9 && s < f->spent + 1e-9 && r > f->reserved - 1e-9 &&
           r < f->reserved + 1e-9;
}

/* Settling replaces the reservation by the real cost; what was not spent is free again. */
static void test_settle(void **state)
{
    struct harness_env *w = *state;
    struct budget *b = budget_new(w->c);
    assert_int_equal(reserve(w, b, "st-key", 1, 0.5).result, BUDGET_OK);
    assert_int_equal(reserve(w, b, "st-key", 1, 0.5).result, BUDGET_OK);
    assert_int_equal(reserve(w, b, "st-key", 1, 0.125).result, BUDGET_EXHAUSTED);
    budget_settle(b, "st-key", 0.5, 0.125);
    struct fields f = {w, "st-key", 0.125, 0.5};
    assert_true(harness_run_until(&w->h, fields_are, &f, 5));
    /* 0.125 spent + 0.5 reserved: 0.375 is free now. */
    assert_int_equal(reserve(w, b, "st-key", 1, 0.375).result, BUDGET_OK);
    assert_int_equal(reserve(w, b, "st-key", 1, 0.125).result, BUDGET_EXHAUSTED);
    /* A request that cost more than its estimate is recorded in full. */
    budget_settle(b, "st-key", 0.5, 0.75);
    f = (struct fields){w, "st-key", 0.875, 0.375};
    assert_true(harness_run_until(&w->h, fields_are, &f, 5));
    /* Nothing served: the reservation goes, nothing is spent. */
    budget_settle(b, "st-key", 0.375, 0);
    f = (struct fields){w, "st-key", 0.875, 0};
    assert_true(harness_run_until(&w->h, fields_are, &f, 5));
    /* Releasing more than is held leaves 0 reserved, never less. */
    budget_settle(b, "st-key", 5, 0);
    f = (struct fields){w, "st-key", 0.875, 0};
    harness_run_for(&w->h, 0.05);
    assert_true(fields_are(&f));
    budget_free(b);
}

/* Two replicas racing on one key: together they never pass the budget. */
static void test_replicas_race(void **state)
{
    struct harness_env *w = *state;
    struct budget *b1 = budget_new(w->c);
    struct redis_client *c2 = harness_client_new(w, &(struct redis_options){0});
    struct budget *b2 = budget_new(c2);
    struct answer a[20] = {{0}};
    struct budget_wait *wait;
    for (int i = 0; i < 20; i++)
        assert_int_equal(
            budget_reserve(i % 2 ? b2 : b1, "race-key", 1, 0.125, on_answer, &a[i], &wait),
            BUDGET_PENDING);
    harness_run_for(&w->h, 0.2);
    int ok = 0;
    for (int i = 0; i < 20; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_true(a[i].in_redis);
        ok += a[i].result == BUDGET_OK;
    }
    assert_int_equal(ok, 8);
    assert_float_equal(field(w, "race-key", "reserved"), 1, 1e-9);
    budget_free(b1);
    budget_free(b2);
    redis_client_free(c2);
}

static void on_never(void *ctx, enum budget_result result, bool in_redis)
{
    (void)result;
    (void)in_redis;
    (*(int *)ctx)++;
}

/* A cancelled reservation is still made (settle releases it) but nobody is called. */
static void test_cancel(void **state)
{
    struct harness_env *w = *state;
    struct budget *b = budget_new(w->c);
    int calls = 0;
    struct budget_wait *wait = NULL;
    assert_int_equal(budget_reserve(b, "cx-key", 1, 0.5, on_never, &calls, &wait), BUDGET_PENDING);
    budget_cancel(wait);
    budget_cancel(NULL);
    harness_run_for(&w->h, 0.1);
    assert_int_equal(calls, 0);
    assert_float_equal(field(w, "cx-key", "reserved"), 0.5, 1e-9);
    budget_free(b);
}

static void on_debug(void *ctx, int result, const redisReply *reply)
{
    (void)reply;
    *(int *)ctx = result == 0 ? 1 : result;
}

/* Redis too slow (DEBUG SLEEP holds it past the 50 ms command deadline): the reservation
 * comes from the local allowance, and says it is not held in Redis. */
static void test_slow_redis_local_allowance(void **state)
{
    struct harness_env *w = *state;
    struct budget *b = budget_new(w->c);
    /* Redis knows the script already (as on any busy gateway): EVALSHA runs it at once. */
    assert_int_equal(reserve(w, b, "slow-warm", 100, 1).result, BUDGET_OK);
    int slept = 0;
    const char *argv[] = {"DEBUG", "SLEEP", "1"};
    assert_int_equal(redis_command(w->c, 3, argv, NULL, on_debug, &slept), 0);
    /* 100 USD: 1 USD locally. One at a time, so the order of their deadlines is known. */
    static const struct {
        double est;
        enum budget_result want;
    } steps[] = {{0.75, BUDGET_OK}, {0.5, BUDGET_EXHAUSTED}, {0.25, BUDGET_OK}};
    for (size_t i = 0; i < 3; i++) {
        struct answer a = {0};
        struct budget_wait *wait;
        assert_int_equal(budget_reserve(b, "slow-key", 100, steps[i].est, on_answer, &a, &wait),
                         BUDGET_PENDING);
        assert_true(harness_run_until(&w->h, answered, &a, 5));
        assert_int_equal(a.result, steps[i].want);
        assert_false(a.in_redis);
    }
    assert_int_equal(slept, REDIS_ETIMEOUT);
    /* Redis still runs the late scripts once it wakes. The requests went on without those
     * reservations, so the late replies release what they reserved there: nothing stays held
     * (it once did, and the key's budget shrank by it for good), nothing is counted spent. */
    struct fields f = {w, "slow-key", 0, 0};
    assert_true(harness_run_until(&w->h, fields_are, &f, 5));
    /* Answering in time again, Redis holds new reservations. */
    assert_true(harness_run_until(&w->h, harness_client_available, w->c, 5));
    struct answer a = reserve(w, b, "slow-key", 100, 50);
    assert_int_equal(a.result, BUDGET_OK);
    assert_true(a.in_redis);
    assert_float_equal(field(w, "slow-key", "reserved"), 50, 1e-9);
    budget_free(b);
}

/* Redis gone: the local allowance at once, nothing pending; settling does nothing. */
static void test_redis_down(void **state)
{
    struct harness_env *w = *state;
    struct budget *b = budget_new(w->c);
    harness_redis_kill(&w->srv);
    harness_run_for(&w->h, 0.1);
    assert_false(redis_client_available(w->c));
    struct budget_wait *wait = NULL;
    struct answer a = {0};
    assert_int_equal(budget_reserve(b, "down-key", 10, 0.1, on_answer, &a, &wait), BUDGET_OK);
    assert_int_equal(budget_reserve(b, "down-key", 10, 0.01, on_answer, &a, &wait),
                     BUDGET_EXHAUSTED);
    budget_settle(b, "down-key", 0.1, 0);
    harness_run_for(&w->h, 0.05);
    assert_int_equal(a.calls, 0);
    assert_null(wait);
    budget_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_local_allowance),
        cmocka_unit_test_setup_teardown(test_reserve_in_redis, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_settle, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_replicas_race, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_slow_redis_local_allowance, setup,
                                        harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, harness_env_teardown),
    };
    return cmocka_run_group_tests_name("budget", tests, NULL, NULL);
}

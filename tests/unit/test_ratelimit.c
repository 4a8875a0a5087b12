/* Unit tests for tenancy/ratelimit: per-key rpm and tpm. Without Redis, each worker's share
 * of the limits; with a real redis-server (tests/unit/harness.h), leases of about 1/20 of a
 * limit from tg:rl:<key>:<minute>, exact small limits across replicas, queued requests served
 * from one grant, token settlement, cancellation, and Redis slow or gone. The views checked
 * are what the x-ratelimit-* headers say.
 *
 * Windows are wall-clock minutes: every test first waits, if needed, until at least 5 s of
 * the current minute are left, so that no window turns over in the middle of it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "redis/keyspace.h"
#include "redis/redis.h"
#include "tenancy/ratelimit.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WINDOW_MS 60000

static void fresh_window(void)
{
    int64_t left = WINDOW_MS - clock_wall_ms() % WINDOW_MS;
    if (left < 5000)
        nanosleep(&(struct timespec){(left + 100) / 1000, ((left + 100) % 1000) * 1000000}, NULL);
}

/* An answer given at once: ADMIT or DENY with the view filled. */
static enum ratelimit_result admit_now(struct ratelimit *rl, const char *key, long rpm, long tpm,
                                       long tokens, struct ratelimit_view *v)
{
    struct ratelimit_wait *wait = NULL;
    memset(v, 0xff, sizeof *v);
    enum ratelimit_result res = ratelimit_admit(rl, key, rpm, tpm, tokens, NULL, NULL, &wait, v);
    assert_true(res == RATELIMIT_ADMIT || res == RATELIMIT_DENY);
    assert_null(wait);
    assert_true(v->reset_ms > 0 && v->reset_ms <= WINDOW_MS);
    return res;
}

/* ---- without Redis: each worker's share ------------------------------------------------------ */

static void test_alone_requests(void **state)
{
    (void)state;
    fresh_window();
    struct ratelimit *rl = ratelimit_new(NULL, 1);
    assert_non_null(rl);
    struct ratelimit_view v;
    for (long i = 1; i <= 3; i++) {
        assert_int_equal(admit_now(rl, "ar-key", 3, 0, 10, &v), RATELIMIT_ADMIT);
        assert_int_equal(v.limit_requests, 3);
        assert_int_equal(v.remaining_requests, 3 - i);
        assert_int_equal(v.limit_tokens, 0);
        assert_int_equal(v.remaining_tokens, 0);
    }
    assert_int_equal(admit_now(rl, "ar-key", 3, 0, 10, &v), RATELIMIT_DENY);
    assert_int_equal(v.remaining_requests, 0);
    /* Another key has its own count. */
    assert_int_equal(admit_now(rl, "ar-other", 3, 0, 10, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.remaining_requests, 2);
    /* The limit is the caller's: lowered below what was used, nothing is left (not less);
     * raised, the same key has room again. */
    assert_int_equal(admit_now(rl, "ar-key", 2, 0, 10, &v), RATELIMIT_DENY);
    assert_int_equal(v.limit_requests, 2);
    assert_int_equal(v.remaining_requests, 0);
    assert_int_equal(admit_now(rl, "ar-key", 4, 0, 10, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.remaining_requests, 0);
    ratelimit_free(rl);
    ratelimit_free(NULL);
}

/* Alone, a replica splits the limits over its workers, rounding up. */
static void test_alone_split_over_workers(void **state)
{
    (void)state;
    fresh_window();
    struct ratelimit *rl = ratelimit_new(NULL, 4);
    struct ratelimit_view v;
    for (int i = 0; i < 3; i++) /* ceil(10 / 4) */
        assert_int_equal(admit_now(rl, "sw-key", 10, 0, 1, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "sw-key", 10, 0, 1, &v), RATELIMIT_DENY);
    /* The view counts this worker's admissions only: 7 of 10 look left. */
    assert_int_equal(v.limit_requests, 10);
    assert_int_equal(v.remaining_requests, 7);
    /* Tokens too: ceil(1000 / 4) = 250. */
    assert_int_equal(admit_now(rl, "sw-tok", 0, 1000, 200, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "sw-tok", 0, 1000, 51, &v), RATELIMIT_DENY);
    assert_int_equal(admit_now(rl, "sw-tok", 0, 1000, 50, &v), RATELIMIT_ADMIT);
    ratelimit_free(rl);
    /* No worker count means one. */
    rl = ratelimit_new(NULL, 0);
    for (int i = 0; i < 10; i++)
        assert_int_equal(admit_now(rl, "sw-zero", 10, 0, 1, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "sw-zero", 10, 0, 1, &v), RATELIMIT_DENY);
    ratelimit_free(rl);
}

static void test_alone_tokens(void **state)
{
    (void)state;
    fresh_window();
    struct ratelimit *rl = ratelimit_new(NULL, 1);
    struct ratelimit_view v;
    assert_int_equal(admit_now(rl, "at-key", 0, 100, 60, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.limit_tokens, 100);
    assert_int_equal(v.remaining_tokens, 40);
    assert_int_equal(v.limit_requests, 0);
    assert_int_equal(admit_now(rl, "at-key", 0, 100, 50, &v), RATELIMIT_DENY);
    assert_int_equal(v.remaining_tokens, 40);
    assert_int_equal(admit_now(rl, "at-key", 0, 100, 40, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.remaining_tokens, 0);
    /* A request of no tokens still fits. */
    assert_int_equal(admit_now(rl, "at-key", 0, 100, 0, &v), RATELIMIT_ADMIT);
    /* Both limits: either one denies. */
    assert_int_equal(admit_now(rl, "at-both", 2, 100, 90, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "at-both", 2, 100, 20, &v), RATELIMIT_DENY);
    assert_int_equal(admit_now(rl, "at-both", 2, 100, 10, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "at-both", 2, 100, 0, &v), RATELIMIT_DENY);
    assert_int_equal(v.remaining_requests, 0);
    ratelimit_free(rl);
}

/* Settling gives an unused estimate back (to this worker); an unknown key or one without a
 * token limit is left alone. */
static void test_alone_settle(void **state)
{
    (void)state;
    fresh_window();
    struct ratelimit *rl = ratelimit_new(NULL, 1);
    struct ratelimit_view v;
    assert_int_equal(admit_now(rl, "as-key", 0, 100, 100, &v), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "as-key", 0, 100, 30, &v), RATELIMIT_DENY);
    ratelimit_settle(rl, "as-key", 100, 20);
    assert_int_equal(admit_now(rl, "as-key", 0, 100, 30, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.remaining_tokens, 50);
    assert_int_equal(admit_now(rl, "as-key", 0, 100, 50, &v), RATELIMIT_ADMIT);
    assert_int_equal(v.remaining_tokens, 0);
    assert_int_equal(admit_now(rl, "as-key", 0, 100, 1, &v), RATELIMIT_DENY);
    ratelimit_settle(rl, "as-never-seen", 100, 0);
    assert_int_equal(admit_now(rl, "as-rpm", 1, 0, 100, &v), RATELIMIT_ADMIT);
    ratelimit_settle(rl, "as-rpm", 100, 0);
    assert_int_equal(admit_now(rl, "as-rpm", 1, 0, 100, &v), RATELIMIT_DENY);
    ratelimit_free(rl);
}

/* ---- with Redis -------------------------------------------------------------------------------
 */

/* A breaker that a few timeouts in a row do not open. */
static const struct redis_options patient = {.breaker_failures = 20};

/* A loop, a throwaway redis-server and a client (tests/unit/harness.h). */
static int setup(void **state)
{
    fresh_window();
    return harness_env_setup(state, "ratelimit", &patient);
}

/* tg:rl:<key>:<this minute>, field r or t; 0 when absent. */
static long leased(struct harness_env *w, const char *key, const char *field)
{
    char k[160];
    snprintf(k, sizeof k, REDIS_KEY_RATELIMIT_PREFIX "%s:%lld", key,
             (long long)(clock_wall_ms() / WINDOW_MS));
    redisReply *r = harness_redis_command(&w->srv, HARNESS_ARGV("HGET", k, field));
    assert_non_null(r);
    long v = r->type == REDIS_REPLY_STRING ? strtol(r->str, NULL, 10) : 0;
    freeReplyObject(r);
    return v;
}

static int answer_seq;

struct verdict {
    int calls, seq;
    enum ratelimit_result result;
    struct ratelimit_view view;
};

static void on_verdict(void *ctx, enum ratelimit_result result, const struct ratelimit_view *view)
{
    struct verdict *v = ctx;
    v->calls++;
    v->seq = ++answer_seq;
    v->result = result;
    v->view = *view;
}

static bool answered(void *arg)
{
    return ((struct verdict *)arg)->calls > 0;
}

/* A request that must wait for Redis; returns its verdict once answered. */
static struct verdict admit_later(struct harness_env *w, struct ratelimit *rl, const char *key,
                                  long rpm, long tpm, long tokens)
{
    struct verdict v = {0};
    struct ratelimit_wait *wait = NULL;
    struct ratelimit_view view;
    assert_int_equal(ratelimit_admit(rl, key, rpm, tpm, tokens, on_verdict, &v, &wait, &view),
                     RATELIMIT_PENDING);
    assert_non_null(wait);
    assert_int_equal(v.calls, 0);
    assert_true(harness_run_until(&w->h, answered, &v, 5));
    assert_int_equal(v.calls, 1);
    return v;
}

/* A limit of 100 leases 5 requests at a time: one round trip per 5 requests. */
static void test_lease_slices(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    struct verdict v = admit_later(w, rl, "ls-key", 100, 0, 1);
    assert_int_equal(v.result, RATELIMIT_ADMIT);
    assert_int_equal(v.view.limit_requests, 100);
    assert_int_equal(v.view.remaining_requests, 99);
    assert_true(v.view.reset_ms > 0 && v.view.reset_ms <= WINDOW_MS);
    assert_int_equal(leased(w, "ls-key", "r"), 5);
    assert_int_equal(leased(w, "ls-key", "t"), 0);
    struct ratelimit_view view;
    for (long i = 2; i <= 5; i++) {
        assert_int_equal(admit_now(rl, "ls-key", 100, 0, 1, &view), RATELIMIT_ADMIT);
        assert_int_equal(view.remaining_requests, 100 - i);
    }
    assert_int_equal(leased(w, "ls-key", "r"), 5);
    v = admit_later(w, rl, "ls-key", 100, 0, 1);
    assert_int_equal(v.result, RATELIMIT_ADMIT);
    assert_int_equal(v.view.remaining_requests, 94);
    assert_int_equal(leased(w, "ls-key", "r"), 10);
    /* The counts expire with the next minute's end. */
    char k[160];
    snprintf(k, sizeof k, REDIS_KEY_RATELIMIT_PREFIX "ls-key:%lld",
             (long long)(clock_wall_ms() / WINDOW_MS));
    redisReply *r = harness_redis_command(&w->srv, HARNESS_ARGV("PTTL", k));
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_true(r->integer > 110000 && r->integer <= 2 * WINDOW_MS);
    freeReplyObject(r);
    ratelimit_free(rl);
}

/* A small limit leases one request at a time, so replicas together admit exactly the limit. */
static void test_small_limit_exact_across_replicas(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c2 = harness_client_new(w, &patient);
    assert_non_null(c2);
    struct ratelimit *rl[2] = {ratelimit_new(w->c, 1), ratelimit_new(c2, 1)};
    static const enum ratelimit_result want[] = {RATELIMIT_ADMIT, RATELIMIT_ADMIT, RATELIMIT_ADMIT,
                                                 RATELIMIT_DENY, RATELIMIT_DENY};
    for (int i = 0; i < 5; i++) {
        struct verdict v = admit_later(w, rl[i % 2], "ex-key", 3, 0, 1);
        assert_int_equal(v.result, want[i]);
        assert_int_equal(v.view.remaining_requests, i < 3 ? 2 - i : 0);
        assert_int_equal(leased(w, "ex-key", "r"), i < 3 ? i + 1 : 3);
    }
    ratelimit_free(rl[0]);
    ratelimit_free(rl[1]);
    redis_client_free(c2);
}

static void test_tokens_in_redis(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    /* A lease covers at least the request's own estimate. */
    struct verdict v = admit_later(w, rl, "tk-key", 0, 1000, 400);
    assert_int_equal(v.result, RATELIMIT_ADMIT);
    assert_int_equal(v.view.remaining_tokens, 600);
    assert_int_equal(leased(w, "tk-key", "t"), 400);
    assert_int_equal(admit_later(w, rl, "tk-key", 0, 1000, 400).result, RATELIMIT_ADMIT);
    v = admit_later(w, rl, "tk-key", 0, 1000, 400);
    assert_int_equal(v.result, RATELIMIT_DENY);
    assert_int_equal(v.view.remaining_tokens, 200);
    assert_int_equal(leased(w, "tk-key", "t"), 800);
    assert_int_equal(admit_later(w, rl, "tk-key", 0, 1000, 200).result, RATELIMIT_ADMIT);
    assert_int_equal(leased(w, "tk-key", "t"), 1000);
    /* 300 of an estimate of 400 unused: this worker may admit them without asking. */
    ratelimit_settle(rl, "tk-key", 400, 100);
    struct ratelimit_view view;
    assert_int_equal(admit_now(rl, "tk-key", 0, 1000, 300, &view), RATELIMIT_ADMIT);
    assert_int_equal(leased(w, "tk-key", "t"), 1000);
    ratelimit_free(rl);
}

/* Both limits: a minute out of requests is denied at once, and leases no more tokens. */
static void test_both_limits_in_redis(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    struct verdict v = admit_later(w, rl, "bl-key", 1, 1000, 10);
    assert_int_equal(v.result, RATELIMIT_ADMIT);
    assert_int_equal(v.view.remaining_requests, 0);
    /* 50 tokens leased, 10 of them used: this worker's unused 40 still count as left. */
    assert_int_equal(v.view.remaining_tokens, 990);
    assert_int_equal(leased(w, "bl-key", "r"), 1);
    assert_int_equal(leased(w, "bl-key", "t"), 50);
    v = admit_later(w, rl, "bl-key", 1, 1000, 10);
    assert_int_equal(v.result, RATELIMIT_DENY);
    assert_int_equal(leased(w, "bl-key", "r"), 1);
    assert_int_equal(leased(w, "bl-key", "t"), 50);
    ratelimit_free(rl);
}

/* A request does not overtake those waiting before it, even when this worker's lease could
 * serve it at once. */
static void test_waiters_keep_their_turn(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    assert_int_equal(admit_later(w, rl, "turn-key", 0, 1000, 100).result, RATELIMIT_ADMIT);
    ratelimit_settle(rl, "turn-key", 100, 0); /* 100 tokens back in the lease */
    struct verdict big = {0}, small = {0};
    struct ratelimit_wait *wait;
    struct ratelimit_view view;
    assert_int_equal(ratelimit_admit(rl, "turn-key", 0, 1000, 300, on_verdict, &big, &wait, &view),
                     RATELIMIT_PENDING);
    assert_int_equal(ratelimit_admit(rl, "turn-key", 0, 1000, 50, on_verdict, &small, &wait, &view),
                     RATELIMIT_PENDING);
    assert_true(harness_run_until(&w->h, answered, &small, 5));
    assert_int_equal(big.result, RATELIMIT_ADMIT);
    assert_int_equal(small.result, RATELIMIT_ADMIT);
    assert_true(big.seq < small.seq);
    assert_int_equal(leased(w, "turn-key", "t"), 400);
    ratelimit_free(rl);
}

/* Requests that arrive while a grant is being asked for wait for it, in order, and one grant
 * serves them all. */
static void test_queue_one_grant(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    struct verdict v[3] = {{0}};
    struct ratelimit_wait *wait;
    struct ratelimit_view view;
    for (int i = 0; i < 3; i++)
        assert_int_equal(ratelimit_admit(rl, "q-key", 100, 0, 1, on_verdict, &v[i], &wait, &view),
                         RATELIMIT_PENDING);
    assert_true(harness_run_until(&w->h, answered, &v[2], 5));
    for (int i = 0; i < 3; i++) {
        assert_int_equal(v[i].calls, 1);
        assert_int_equal(v[i].result, RATELIMIT_ADMIT);
        assert_int_equal(v[i].view.remaining_requests, 99 - i);
    }
    assert_true(v[0].seq < v[1].seq && v[1].seq < v[2].seq);
    assert_int_equal(leased(w, "q-key", "r"), 5);
    ratelimit_free(rl);
}

static void on_never(void *ctx, enum ratelimit_result result, const struct ratelimit_view *view)
{
    (void)result;
    (void)view;
    (*(int *)ctx)++;
}

/* A cancelled request is never answered and takes nothing from the lease. */
static void test_cancel(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 1);
    int calls = 0;
    struct ratelimit_wait *wait = NULL;
    struct ratelimit_view view;
    assert_int_equal(ratelimit_admit(rl, "cx-key", 100, 0, 1, on_never, &calls, &wait, &view),
                     RATELIMIT_PENDING);
    ratelimit_cancel(wait);
    ratelimit_cancel(NULL);
    struct verdict v = admit_later(w, rl, "cx-key", 100, 0, 1);
    assert_int_equal(v.result, RATELIMIT_ADMIT);
    assert_int_equal(calls, 0);
    /* 5 leased, 1 used: 4 more without asking. */
    for (int i = 0; i < 4; i++)
        assert_int_equal(admit_now(rl, "cx-key", 100, 0, 1, &view), RATELIMIT_ADMIT);
    assert_int_equal(leased(w, "cx-key", "r"), 5);
    v = admit_later(w, rl, "cx-key", 100, 0, 1);
    assert_int_equal(leased(w, "cx-key", "r"), 10);
    ratelimit_free(rl);
}

static void on_debug(void *ctx, int result, const redisReply *reply)
{
    (void)reply;
    *(int *)ctx = result == 0 ? 1 : result;
}

/* Redis too slow to answer: the waiting requests get this worker's share instead. */
static void test_slow_redis(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 2);
    int slept = 0;
    const char *argv[] = {"DEBUG", "SLEEP", "0.3"};
    assert_int_equal(redis_command(w->c, 3, argv, NULL, on_debug, &slept), 0);
    struct verdict v[3] = {{0}};
    struct ratelimit_wait *wait;
    struct ratelimit_view view;
    for (int i = 0; i < 3; i++)
        assert_int_equal(ratelimit_admit(rl, "slow-key", 4, 0, 1, on_verdict, &v[i], &wait, &view),
                         RATELIMIT_PENDING);
    assert_true(harness_run_until(&w->h, answered, &v[2], 5));
    assert_int_equal(slept, REDIS_ETIMEOUT);
    /* ceil(4 / 2) = 2 alone. */
    assert_int_equal(v[0].result, RATELIMIT_ADMIT);
    assert_int_equal(v[1].result, RATELIMIT_ADMIT);
    assert_int_equal(v[2].result, RATELIMIT_DENY);
    ratelimit_free(rl);
}

/* Redis gone: answers at once, from this worker's share. */
static void test_redis_down(void **state)
{
    struct harness_env *w = *state;
    struct ratelimit *rl = ratelimit_new(w->c, 2);
    harness_redis_kill(&w->srv);
    harness_run_for(&w->h, 0.1);
    assert_false(redis_client_available(w->c));
    struct ratelimit_view view;
    assert_int_equal(admit_now(rl, "down-key", 4, 0, 1, &view), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "down-key", 4, 0, 1, &view), RATELIMIT_ADMIT);
    assert_int_equal(admit_now(rl, "down-key", 4, 0, 1, &view), RATELIMIT_DENY);
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_alone_requests),
        cmocka_unit_test(test_alone_split_over_workers),
        cmocka_unit_test(test_alone_tokens),
        cmocka_unit_test(test_alone_settle),
        cmocka_unit_test_setup_teardown(test_lease_slices, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_small_limit_exact_across_replicas, setup,
                                        harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_tokens_in_redis, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_both_limits_in_redis, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_waiters_keep_their_turn, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_queue_one_grant, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_slow_redis, setup, harness_env_teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, harness_env_teardown),
    };
    return cmocka_run_group_tests_name("ratelimit", tests, NULL, NULL);
}

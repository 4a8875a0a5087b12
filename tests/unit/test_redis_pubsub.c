/* Unit tests for redis/script and redis/pubsub: EVALSHA with its EVAL fallback, subscriptions
 * that survive a restart, and freeing the client with commands, scripts and subscriptions in
 * flight or from inside its own callbacks; against a real redis-server per test
 * (tests/unit/harness.h). The event loop is always run in bounded steps under a deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/log.h"
#include "redis/redis.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup_with(void **state, const char *pass, bool with_unix)
{
    struct harness_env *e;
    int rc = harness_env_new(&e, "redis", pass, with_unix);
    *state = e;
    return rc;
}

static int setup(void **state)
{
    return setup_with(state, NULL, false);
}

static int teardown(void **state)
{
    harness_env_free(*state);
    return 0;
}

/* ---- scripts ------------------------------------------------------------------------------ */

struct array_rec {
    int calls;
    int result;
    size_t n;
    char key[16];
    char arg[8];
    size_t arg_len;
    long long incr;
};

static void on_array(void *ctx, int result, const redisReply *reply)
{
    struct array_rec *a = ctx;
    a->calls++;
    a->result = result;
    if (result != 0 || reply->type != REDIS_REPLY_ARRAY || reply->elements != 3)
        return;
    a->n = reply->elements;
    snprintf(a->key, sizeof a->key, "%s", reply->element[0]->str);
    a->arg_len = reply->element[1]->len < sizeof a->arg ? reply->element[1]->len : 0;
    memcpy(a->arg, reply->element[1]->str, a->arg_len);
    a->incr = reply->element[2]->integer;
}

static bool count_reached_arr(void *arg)
{
    return ((struct array_rec *)arg)->calls > 0;
}

static void test_evalsha_noscript_fallback(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.command_timeout_ms = 2000});
    static const char body[] = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}";
    const struct redis_script *s = redis_script_load(c, body, sizeof body - 1);
    assert_non_null(s);
    assert_ptr_equal(redis_script_load(c, body, sizeof body - 1), s);

    /* The local SHA1 is Redis's. */
    const char *load[3] = {"SCRIPT", "LOAD", body};
    redisReply *side = harness_redis_command(&w->srv, 3, load);
    assert_non_null(side);
    assert_string_equal(redis_script_sha(s), side->str);
    freeReplyObject(side);

    static const char arg[] = {'x', '\0', 'y'};
    const char *argv[2] = {"ctr", arg};
    size_t lens[2] = {3, sizeof arg};
    for (int round = 0; round < 3; round++) {
        /* Round 0: known (side SCRIPT LOAD); 1: flushed; 2: known again via the EVAL. */
        if (round == 1) {
            struct harness_reply f = HARNESS_CMD(w, c, "SCRIPT", "FLUSH");
            assert_int_equal(f.result, 0);
        }
        struct redis_stats before, after;
        redis_client_stats(c, &before);
        struct harness_reply r = {0};
        assert_int_equal(redis_evalsha(c, s, 1, 2, argv, lens, harness_on_reply, &r), 0);
        assert_true(harness_run_until(&w->h, harness_reply_done, &r, 5));
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.result, 0);
        assert_int_equal(r.type, REDIS_REPLY_ARRAY);
        redis_client_stats(c, &after);
        /* One command, or two when it fell back to EVAL. */
        assert_int_equal(after.commands - before.commands, round == 1 ? 2 : 1);
    }
    struct harness_reply r = HARNESS_CMD(w, c, "GET", "ctr");
    assert_string_equal(r.str, "3");

    /* The reply itself: keys and args come back byte for byte. */
    struct array_rec a = {0};
    assert_int_equal(redis_evalsha(c, s, 1, 2, argv, lens, on_array, &a), 0);
    assert_true(harness_run_until(&w->h, count_reached_arr, &a, 5));
    assert_int_equal(a.result, 0);
    assert_int_equal(a.n, 3);
    assert_string_equal(a.key, "ctr");
    assert_int_equal(a.arg_len, sizeof arg);
    assert_memory_equal(a.arg, arg, sizeof arg);
    assert_int_equal(a.incr, 4);

    /* A script error is an error reply, not a fallback loop. */
    static const char broken[] = "return redis.call('NOSUCHCOMMAND')";
    const struct redis_script *b = redis_script_load(c, broken, sizeof broken - 1);
    struct harness_reply e = {0};
    assert_int_equal(redis_evalsha(c, b, 0, 0, NULL, NULL, harness_on_reply, &e), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &e, 5));
    assert_int_equal(e.result, REDIS_EREPLY);
    harness_run_for(&w->h, 0.05);
    assert_int_equal(e.calls, 1);

    assert_int_equal(redis_evalsha(c, s, 3, 2, argv, lens, harness_on_reply, &e), REDIS_EINVAL);
    redis_client_free(c);
}

/* ---- pub/sub ------------------------------------------------------------------------------ */

struct subrec {
    int ready;
    int messages;
    char last[64];
    size_t last_len;
    char channel[32];
};

static void on_message(void *ctx, enum redis_sub_event ev, const char *channel, size_t clen,
                       const char *msg, size_t mlen)
{
    struct subrec *s = ctx;
    snprintf(s->channel, sizeof s->channel, "%.*s", (int)clen, channel);
    if (ev == REDIS_SUB_READY) {
        s->ready++;
        return;
    }
    s->messages++;
    s->last_len = mlen < sizeof s->last ? mlen : sizeof s->last;
    memcpy(s->last, msg, s->last_len);
}

struct wait_count {
    const int *v;
    int target;
};

static bool count_reached(void *arg)
{
    struct wait_count *wc = arg;
    return *wc->v >= wc->target;
}

static void publish(struct harness_env *w, struct redis_client *c, const char *ch, const char *msg,
                    size_t len, long long receivers)
{
    const char *argv[3] = {"PUBLISH", ch, msg};
    size_t lens[3] = {7, strlen(ch), len};
    struct harness_reply r = harness_command(w, c, 3, argv, lens);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.integer, receivers);
}

static void test_pubsub_and_resubscribe(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c = harness_client_new(w, &(struct redis_options){
                                                       .command_timeout_ms = 1000,
                                                       .reconnect_min_ms = 20,
                                                       .reconnect_max_ms = 200,
                                                       .breaker_cooloff_ms = 200,
                                                   });
    struct subrec a = {0}, b = {0};
    assert_int_equal(redis_subscribe(c, "news", on_message, &a), 0);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&a.ready, 1}, 5));
    static const char m1[] = {'h', 'i', '\0', 'x'};
    publish(w, c, "news", m1, sizeof m1, 1);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&a.messages, 1}, 5));
    assert_string_equal(a.channel, "news");
    assert_int_equal(a.last_len, sizeof m1);
    assert_memory_equal(a.last, m1, sizeof m1);

    /* A second subscriber of the same channel: one Redis subscription, both get it. */
    assert_int_equal(redis_subscribe(c, "news", on_message, &b), 0);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&b.ready, 1}, 5));
    publish(w, c, "news", "two", 3, 1);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&b.messages, 1}, 5));
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&a.messages, 2}, 5));

    /* Redis restarts: the subscriber comes back by itself and says so (READY again). */
    int ready_before = a.ready;
    harness_redis_kill(&w->srv);
    harness_run_for(&w->h, 0.1);
    assert_int_equal(harness_redis_start(&w->srv), 0);
    ev_now_update(w->h.loop);
    if (!harness_run_until(&w->h, count_reached, &(struct wait_count){&a.ready, ready_before + 1},
                           10))
        fail_msg("not resubscribed: %s", redis_client_errstr(c));
    if (!harness_run_until(&w->h, harness_client_available, c, 10))
        fail_msg("commands did not reconnect: %s", redis_client_errstr(c));
    publish(w, c, "news", "three", 5, 1);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&a.messages, 3}, 5));
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&b.messages, 2}, 5));
    assert_memory_equal(a.last, "three", 5);
    redis_client_free(c);
}

/* ---- freeing ------------------------------------------------------------------------------ */

#define N_INFLIGHT 120

static void test_free_with_commands_in_flight(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.command_timeout_ms = 5000});
    struct subrec sub = {0};
    assert_int_equal(redis_subscribe(c, "ch", on_message, &sub), 0);
    const struct redis_script *s = redis_script_load(c, "return 1", 8);
    struct harness_reply r[N_INFLIGHT] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.3"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, harness_on_reply, &r[0]), 0);
    for (int i = 1; i < 100; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[i]), 0);
    assert_int_equal(redis_evalsha(c, s, 0, 0, NULL, NULL, harness_on_reply, &r[100]), 0);
    harness_run_for(&w->h, 0.05); /* sent, Redis asleep */
    /* and some still in hiredis's output buffer */
    for (int i = 101; i < N_INFLIGHT; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[i]), 0);
    redis_client_free(c);
    for (int i = 0; i < N_INFLIGHT; i++) {
        if (r[i].calls != 1)
            fail_msg("command %d: %d calls", i, r[i].calls);
        assert_int_equal(r[i].result, REDIS_ENOTCONN);
    }
    harness_run_for(&w->h, 0.4);
    for (int i = 0; i < N_INFLIGHT; i++)
        assert_int_equal(r[i].calls, 1);
    redis_client_free(NULL);
}

struct free_in_cb {
    struct redis_client *c;
    struct harness_reply r[20];
    int first_result;
    int during_free_calls;
    int refused_in_cb;
};

static void on_reply_then_free(void *ctx, int result, const redisReply *reply)
{
    struct free_in_cb *f = ctx;
    harness_on_reply(&f->r[0], result, reply);
    f->first_result = result;
    redis_client_free(f->c);
    for (int i = 1; i < 20; i++)
        f->during_free_calls += f->r[i].calls;
    /* Freed (while we are still inside its callback): safe to call again, does nothing. */
}

static void on_reply_reissue(void *ctx, int result, const redisReply *reply)
{
    struct free_in_cb *f = ctx;
    (void)result;
    (void)reply;
    const char *ping[1] = {"PING"};
    struct harness_reply unused = {0};
    /* A command issued from a callback that redis_client_free() runs is refused. */
    if (redis_command(f->c, 1, ping, NULL, harness_on_reply, &unused) == REDIS_ENOTCONN)
        f->refused_in_cb++;
    redis_client_free(f->c); /* a second free from inside the first: nothing */
}

static void test_free_from_callbacks(void **state)
{
    struct harness_env *w = *state;
    /* From a reply callback, with others still in flight. */
    struct free_in_cb *f = calloc(1, sizeof *f);
    f->c = harness_client_new(w, &(struct redis_options){.command_timeout_ms = 5000});
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, harness_on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &f->r[0], 5));
    assert_int_equal(f->first_result, 0);
    assert_int_equal(f->during_free_calls, 19);
    harness_run_for(&w->h, 0.1);
    assert_int_equal(f->r[0].calls, 1);
    for (int i = 1; i < 20; i++) {
        assert_int_equal(f->r[i].calls, 1);
        assert_int_equal(f->r[i].result, REDIS_ENOTCONN);
    }

    /* From a timeout callback, with more commands behind it. */
    memset(f, 0, sizeof *f);
    f->c = harness_client_new(w, &(struct redis_options){.command_timeout_ms = 50});
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    assert_int_equal(redis_command(f->c, 3, slp, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, harness_on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &f->r[0], 5));
    assert_int_equal(f->first_result, REDIS_ETIMEOUT);
    harness_run_for(&w->h, 0.3); /* the late replies come to nobody */
    for (int i = 1; i < 20; i++) {
        assert_int_equal(f->r[i].calls, 1);
        assert_true(f->r[i].result == REDIS_ETIMEOUT || f->r[i].result == REDIS_ENOTCONN);
    }

    /* Callbacks run by free may try again (refused) and free again (nothing). */
    memset(f, 0, sizeof *f);
    f->c = harness_client_new(w, &(struct redis_options){.command_timeout_ms = 5000});
    assert_int_equal(redis_command(f->c, 3, slp, NULL, harness_on_reply, &f->r[0]), 0);
    for (int i = 0; i < 5; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply_reissue, f), 0);
    harness_run_for(&w->h, 0.02);
    redis_client_free(f->c);
    assert_int_equal(f->refused_in_cb, 5);
    assert_int_equal(f->r[0].calls, 1);
    harness_run_for(&w->h, 0.3);

    /* From a callback that a breaker-opening drop of the connection runs: the client goes
     * away in the middle of hiredis failing the rest. */
    memset(f, 0, sizeof *f);
    f->c = harness_client_new(
        w, &(struct redis_options){.command_timeout_ms = 50, .breaker_failures = 1});
    const char *slp2[3] = {"DEBUG", "SLEEP", "0.2"};
    assert_int_equal(redis_command(f->c, 3, slp2, NULL, harness_on_reply, &f->r[1]), 0);
    for (int i = 2; i < 10; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, harness_on_reply, &f->r[i]), 0);
    assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply_then_free, f), 0);
    for (int i = 10; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, harness_on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &f->r[0], 5));
    harness_run_for(&w->h, 0.3);
    assert_int_equal(f->r[0].calls, 1);
    assert_int_equal(f->r[1].result, REDIS_ETIMEOUT);
    assert_int_equal(f->first_result, REDIS_ENOTCONN); /* failed by the drop, not the clock */
    assert_int_equal(f->during_free_calls, 19);
    for (int i = 1; i < 20; i++)
        assert_int_equal(f->r[i].calls, 1);
    assert_int_equal(f->r[19].result, REDIS_ENOTCONN);

    /* From a callback that Redis dying runs (hiredis is freeing its context right then). */
    memset(f, 0, sizeof *f);
    f->c = harness_client_new(w, &(struct redis_options){.command_timeout_ms = 5000});
    const char *slp3[3] = {"DEBUG", "SLEEP", "3"};
    assert_int_equal(redis_command(f->c, 3, slp3, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, harness_on_reply, &f->r[i]), 0);
    harness_run_for(&w->h, 0.05);
    harness_redis_kill(&w->srv);
    assert_true(harness_run_until(&w->h, harness_reply_done, &f->r[0], 5));
    assert_int_equal(f->first_result, REDIS_ENOTCONN);
    assert_int_equal(f->during_free_calls, 19);
    harness_run_for(&w->h, 0.1);
    for (int i = 0; i < 20; i++)
        assert_int_equal(f->r[i].calls, 1);
    free(f);
}

static void test_max_pending(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c = harness_client_new(
        w, &(struct redis_options){
               .command_timeout_ms = 50, .max_pending = 4, .breaker_failures = 100});
    struct harness_reply r[5] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, harness_on_reply, &r[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[i]), 0);
    assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[4]), REDIS_EBUSY);
    /* Timed out but unanswered, they still hold their places (hiredis owes the replies)... */
    assert_true(harness_run_until(&w->h, harness_reply_done, &r[3], 2));
    assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[4]), REDIS_EBUSY);
    /* ... until the late replies come. */
    harness_run_for(&w->h, 0.3);
    struct harness_reply ok = HARNESS_CMD(w, c, "PING");
    assert_int_equal(ok.result, 0);
    assert_int_equal(r[4].calls, 0);
    redis_client_free(c);
}

struct free_in_sub {
    struct redis_client *c;
    int messages;
};

static void on_message_then_free(void *ctx, enum redis_sub_event ev, const char *channel,
                                 size_t clen, const char *msg, size_t mlen)
{
    (void)channel;
    (void)clen;
    (void)msg;
    (void)mlen;
    struct free_in_sub *f = ctx;
    if (ev == REDIS_SUB_MESSAGE) {
        f->messages++;
        redis_client_free(f->c);
    }
}

static void test_free_from_message_callback(void **state)
{
    struct harness_env *w = *state;
    struct free_in_sub f = {0};
    struct subrec ready = {0};
    f.c = harness_client_new(w, &(struct redis_options){.command_timeout_ms = 1000});
    assert_int_equal(redis_subscribe(f.c, "x", on_message_then_free, &f), 0);
    assert_int_equal(redis_subscribe(f.c, "x", on_message, &ready), 0);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&ready.ready, 1}, 5));
    const char *pub[3] = {"PUBLISH", "x", "m"};
    redisReply *side = harness_redis_command(&w->srv, 3, pub);
    assert_non_null(side);
    freeReplyObject(side);
    side = harness_redis_command(&w->srv, 3, pub);
    assert_non_null(side);
    freeReplyObject(side);
    assert_true(harness_run_until(&w->h, count_reached, &(struct wait_count){&f.messages, 1}, 5));
    harness_run_for(&w->h, 0.1);
    assert_int_equal(f.messages, 1);
    assert_int_equal(ready.messages, 0); /* the fan-out stops once the client is gone */
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* TEST_REDIS_LOG=1 shows the client's connection events. */
    log_set_level(getenv("TEST_REDIS_LOG") ? LOG_DEBUG : LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_evalsha_noscript_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pubsub_and_resubscribe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_commands_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_message_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for redis/redis and redis/conn, the asynchronous client: commands, deadlines and
 * the circuit breaker, a Redis that dies or is not there, AUTH, SELECT, unix sockets and host
 * names; against a real redis-server that each test starts on a free loopback port in a
 * temporary directory (and kills afterwards; tests/unit/harness.h). redis-server missing is a
 * failure, not a skip. The event loop is always run in bounded steps under an overall
 * deadline, so no test can hang. Scripts, pub/sub and freeing: test_redis_pubsub.c; URLs:
 * test_redis_url.c. */
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

#define TEST_PASSWORD "p@ss:w/rd"

static int setup_auth(void **state)
{
    return setup_with(state, TEST_PASSWORD, false);
}

static int setup_unix(void **state)
{
    return setup_with(state, NULL, true);
}

static int teardown(void **state)
{
    harness_env_free(*state);
    return 0;
}

/* ---- commands ----------------------------------------------------------------------------- */

static void test_set_get_binary(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.command_timeout_ms = 2000});

    static const char key[] = "a key with spaces";
    static const char val[] = {'a', '\0', 'b', '\0', '\r', '\n', (char)0xff, 'z'};
    const char *set[3] = {"SET", key, val};
    size_t set_len[3] = {3, sizeof key - 1, sizeof val};
    struct harness_reply r = harness_command(w, c, 3, set, set_len);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.type, REDIS_REPLY_STATUS);
    assert_string_equal(r.str, "OK");

    const char *get[2] = {"GET", key};
    r = harness_command(w, c, 2, get, NULL);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.type, REDIS_REPLY_STRING);
    assert_int_equal(r.len, sizeof val);
    assert_memory_equal(r.str, val, sizeof val);

    /* An error reply is REDIS_EREPLY with the reply. */
    r = HARNESS_CMD(w, c, "INCR", key);
    assert_int_equal(r.result, REDIS_EREPLY);
    assert_int_equal(r.type, REDIS_REPLY_ERROR);

    /* Commands that would change the connection under the client are refused. */
    struct harness_reply unused = {0};
    static const char *const refused[] = {"SUBSCRIBE", "psubscribe", "MONITOR", "select",
                                          "AUTH",      "HELLO",      "QUIT",    NULL};
    for (size_t i = 0; refused[i]; i++) {
        const char *argv[2] = {refused[i], "x"};
        assert_int_equal(redis_command(c, 2, argv, NULL, harness_on_reply, &unused), REDIS_EINVAL);
    }
    assert_int_equal(redis_command(c, 0, get, NULL, harness_on_reply, &unused), REDIS_EINVAL);
    assert_int_equal(unused.calls, 0);

    struct redis_stats st;
    redis_client_stats(c, &st);
    assert_int_equal(st.commands, 3);
    assert_int_equal(st.errors, 1);
    assert_true(st.connected);
    assert_int_equal(st.breaker, REDIS_BREAKER_CLOSED);
    redis_client_free(c);
}

#define N_PIPELINED 10000

struct pipeline {
    int calls[N_PIPELINED];
    long long last;
    int in_order;
    int done;
};

struct pipe_slot {
    struct pipeline *p;
    int i;
};

static void on_incr(void *ctx, int result, const redisReply *reply)
{
    struct pipe_slot *s = ctx;
    s->p->calls[s->i]++;
    s->p->done++;
    if (result == 0 && reply->type == REDIS_REPLY_INTEGER) {
        if (reply->integer == s->i + 1)
            s->p->in_order++;
        s->p->last = reply->integer;
    }
}

static bool pipeline_done(void *arg)
{
    return ((struct pipeline *)arg)->done >= N_PIPELINED;
}

static void test_pipeline(void **state)
{
    struct harness_env *w = *state;
    /* A long deadline: this is about pipelining, and valgrind is slow. */
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.command_timeout_ms = 20000});
    struct pipeline *p = calloc(1, sizeof *p);
    struct pipe_slot *slots = calloc(N_PIPELINED, sizeof *slots);
    assert_non_null(p);
    assert_non_null(slots);
    const char *argv[2] = {"INCR", "counter"};
    for (int i = 0; i < N_PIPELINED; i++) {
        slots[i] = (struct pipe_slot){p, i};
        assert_int_equal(redis_command(c, 2, argv, NULL, on_incr, &slots[i]), 0);
    }
    assert_int_equal(p->done, 0); /* never called from inside redis_command */
    assert_true(harness_run_until(&w->h, pipeline_done, p, 30));
    harness_run_for(&w->h, 0.05);
    for (int i = 0; i < N_PIPELINED; i++)
        if (p->calls[i] != 1)
            fail_msg("callback %d called %d times", i, p->calls[i]);
    assert_int_equal(p->in_order, N_PIPELINED);
    assert_int_equal(p->last, N_PIPELINED);
    struct harness_reply r = HARNESS_CMD(w, c, "GET", "counter");
    assert_string_equal(r.str, "10000");
    redis_client_free(c);
    free(slots);
    free(p);
}

/* ---- deadlines ---------------------------------------------------------------------------- */

static void test_timeout_late_reply_ignored(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.command_timeout_ms = 50});
    struct harness_reply slow = {0};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    double t0 = harness_now_s();
    assert_int_equal(redis_command(c, 3, slp, NULL, harness_on_reply, &slow), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &slow, 2));
    assert_int_equal(slow.result, REDIS_ETIMEOUT);
    double took = slow.at - t0;
    if (took < 0.045 || took > 0.25)
        fail_msg("timed out after %.3f s, not about 0.05 s", took);

    /* The late reply (and the loop going on) must not call anyone again. */
    harness_run_for(&w->h, 0.3);
    assert_int_equal(slow.calls, 1);

    /* The connection is still good: the next command works. */
    struct harness_reply r = HARNESS_CMD(w, c, "PING");
    assert_int_equal(r.result, 0);
    assert_string_equal(r.str, "PONG");

    struct redis_stats st;
    redis_client_stats(c, &st);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.breaker, REDIS_BREAKER_CLOSED);
    assert_true(redis_client_available(c));
    redis_client_free(c);
}

static bool breaker_is_closed_and_up(void *arg)
{
    return redis_client_available(arg);
}

static void test_breaker_opens_on_timeouts_and_recovers(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c = harness_client_new(w, &(struct redis_options){
                                                       .command_timeout_ms = 50,
                                                       .breaker_failures = 3,
                                                       .breaker_cooloff_ms = 100,
                                                   });
    struct harness_reply r[4] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.6"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, harness_on_reply, &r[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &r[i]), 0);
    assert_true(harness_run_until(&w->h, harness_reply_done, &r[3], 2));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(r[i].calls, 1);
        assert_true(r[i].result == REDIS_ETIMEOUT || r[i].result == REDIS_ENOTCONN);
    }
    struct redis_stats st;
    redis_client_stats(c, &st);
    assert_true(st.breaker_opens >= 1);
    assert_int_not_equal(st.breaker, REDIS_BREAKER_CLOSED);
    assert_false(redis_client_available(c));

    /* Open: refused at once, no callback. */
    struct harness_reply refused = {0};
    double t0 = harness_now_s();
    assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &refused), REDIS_EOPEN);
    assert_true(harness_now_s() - t0 < 0.02);

    /* Redis wakes after 0.6 s; a probe then closes the breaker. */
    if (!harness_run_until(&w->h, breaker_is_closed_and_up, c, 8))
        fail_msg("breaker did not close: %s", redis_client_errstr(c));
    struct harness_reply ok = HARNESS_CMD(w, c, "PING");
    assert_int_equal(ok.result, 0);
    harness_run_for(&w->h, 0.05);
    for (int i = 0; i < 4; i++)
        assert_int_equal(r[i].calls, 1);
    assert_int_equal(refused.calls, 0);
    redis_client_stats(c, &st);
    assert_int_equal(st.breaker, REDIS_BREAKER_CLOSED);
    assert_true(st.rejected >= 1);
    redis_client_free(c);
}

/* ---- a dying Redis ------------------------------------------------------------------------ */

static bool breaker_open(void *arg)
{
    struct redis_stats st;
    redis_client_stats(arg, &st);
    return st.breaker == REDIS_BREAKER_OPEN;
}

static void test_killed_fails_fast_and_opens_breaker(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c = harness_client_new(w, &(struct redis_options){
                                                       .command_timeout_ms = 5000,
                                                       .reconnect_min_ms = 20,
                                                       .reconnect_max_ms = 100,
                                                       .breaker_failures = 3,
                                                       .breaker_cooloff_ms = 10000,
                                                   });
    /* In flight when Redis dies: answered by the lost connection, not the 5 s deadline. */
    struct harness_reply inflight = {0};
    const char *slp[3] = {"DEBUG", "SLEEP", "3"};
    assert_int_equal(redis_command(c, 3, slp, NULL, harness_on_reply, &inflight), 0);
    harness_run_for(&w->h, 0.05);
    double t0 = harness_now_s();
    harness_redis_kill(&w->srv);
    assert_true(harness_run_until(&w->h, harness_reply_done, &inflight, 2));
    assert_int_equal(inflight.result, REDIS_ENOTCONN);
    assert_true(inflight.at - t0 < 0.5);

    /* From now on every command is refused at once. */
    struct harness_reply unused = {0};
    const char *get[2] = {"GET", "k"};
    for (int i = 0; i < 100; i++) {
        double t1 = harness_now_s();
        int rc = redis_command(c, 2, get, NULL, harness_on_reply, &unused);
        assert_true(rc == REDIS_ENOTCONN || rc == REDIS_EOPEN);
        assert_true(harness_now_s() - t1 < 0.02);
        ev_run(w->h.loop, EVRUN_NOWAIT);
    }
    assert_false(redis_client_available(c));

    /* Failed reconnects count: the breaker opens. */
    if (!harness_run_until(&w->h, breaker_open, c, 5))
        fail_msg("breaker did not open");
    assert_int_equal(redis_command(c, 2, get, NULL, harness_on_reply, &unused), REDIS_EOPEN);
    harness_run_for(&w->h, 0.05);
    assert_int_equal(unused.calls, 0);
    assert_int_equal(inflight.calls, 1);
    assert_true(strlen(redis_client_errstr(c)) > 0);
    struct redis_stats st;
    redis_client_stats(c, &st);
    assert_false(st.connected);
    assert_true(st.reconnects >= 2);
    assert_true(st.rejected >= 100);
    redis_client_free(c);
}

static void test_reconnects_after_restart(void **state)
{
    struct harness_env *w = *state;
    struct redis_client *c = harness_client_new(w, &(struct redis_options){
                                                       .command_timeout_ms = 1000,
                                                       .reconnect_min_ms = 20,
                                                       .reconnect_max_ms = 200,
                                                       .breaker_cooloff_ms = 200,
                                                   });
    struct harness_reply r = HARNESS_CMD(w, c, "SET", "k", "before");
    assert_int_equal(r.result, 0);
    harness_redis_kill(&w->srv);
    harness_run_for(&w->h, 0.6); /* long enough for the breaker to open too */
    assert_false(redis_client_available(c));
    assert_int_equal(harness_redis_start(&w->srv), 0);
    ev_now_update(w->h.loop);
    if (!harness_run_until(&w->h, harness_client_available, c, 10))
        fail_msg("did not reconnect: %s", redis_client_errstr(c));
    r = HARNESS_CMD(w, c, "SET", "k", "after");
    assert_int_equal(r.result, 0);
    r = HARNESS_CMD(w, c, "GET", "k");
    assert_string_equal(r.str, "after");
    struct redis_stats st;
    redis_client_stats(c, &st);
    assert_true(st.reconnects >= 1);
    assert_true(st.connected);
    assert_string_equal(redis_client_errstr(c), "");
    redis_client_free(c);
}

static void test_not_running_at_start(void **state)
{
    struct harness_env *w = *state;
    harness_redis_kill(&w->srv);
    struct redis_options o = {.url = w->url, .reconnect_min_ms = 10, .reconnect_max_ms = 50};
    struct redis_client *c = redis_client_new(w->h.loop, &o);
    assert_non_null(c);
    harness_run_for(&w->h, 0.3);
    assert_false(redis_client_available(c));
    struct harness_reply unused = {0};
    const char *ping[1] = {"PING"};
    int rc = redis_command(c, 1, ping, NULL, harness_on_reply, &unused);
    assert_true(rc == REDIS_ENOTCONN || rc == REDIS_EOPEN);
    /* It comes up later: the client finds it by itself. */
    assert_int_equal(harness_redis_start(&w->srv), 0);
    ev_now_update(w->h.loop);
    if (!harness_run_until(&w->h, harness_client_available, c, 10))
        fail_msg("did not connect: %s", redis_client_errstr(c));
    assert_int_equal(unused.calls, 0);
    redis_client_free(c);
}

/* ---- AUTH, SELECT, unix sockets, host names ----------------------------------------------- */

static void test_auth(void **state)
{
    struct harness_env *w = *state;
    char url[300];
    /* Percent-encoded password ("p@ss:w/rd"). */
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d/0", w->srv.port);
    struct redis_client *c = harness_client_new(w, &(struct redis_options){.url = url});
    struct harness_reply r = HARNESS_CMD(w, c, "SET", "k", "v");
    assert_int_equal(r.result, 0);
    redis_client_free(c);

    /* ACL form with the default user and a raw (unencoded) password. */
    snprintf(url, sizeof url, "redis://default:%s@127.0.0.1:%d", TEST_PASSWORD, w->srv.port);
    c = harness_client_new(w, &(struct redis_options){.url = url});
    r = HARNESS_CMD(w, c, "GET", "k");
    assert_string_equal(r.str, "v");
    redis_client_free(c);

    /* A wrong password never becomes available, and says why. */
    snprintf(url, sizeof url, "redis://:wrong@127.0.0.1:%d", w->srv.port);
    c = redis_client_new(w->h.loop, &(struct redis_options){.url = url, .reconnect_min_ms = 20});
    assert_non_null(c);
    harness_run_for(&w->h, 0.3);
    assert_false(redis_client_available(c));
    const char *why = redis_client_errstr(c);
    if (!strstr(why, "WRONGPASS") && !strstr(why, "invalid"))
        fail_msg("unexpected error: %s", why);
    assert_null(strstr(why, "wrong"));
    redis_client_free(c);

    /* No password at all: the handshake's PING is refused, so the client never readies. */
    c = redis_client_new(w->h.loop, &(struct redis_options){.url = w->url});
    harness_run_for(&w->h, 0.1);
    assert_false(redis_client_available(c));
    assert_non_null(strstr(redis_client_errstr(c), "NOAUTH"));
    redis_client_free(c);
}

static void test_select_db(void **state)
{
    struct harness_env *w = *state;
    char url[300];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/3", w->srv.port);
    struct redis_client *c = harness_client_new(w, &(struct redis_options){.url = url});
    struct harness_reply r = HARNESS_CMD(w, c, "SET", "where", "db3");
    assert_int_equal(r.result, 0);
    r = HARNESS_CMD(w, c, "CLIENT", "INFO");
    assert_non_null(strstr(r.str, " db=3 "));
    redis_client_free(c);

    /* Seen from db 0 (another client) the key is not there; from db 3 it is. */
    struct redis_client *c0 = harness_client_new(w, &(struct redis_options){0});
    r = HARNESS_CMD(w, c0, "GET", "where");
    assert_int_equal(r.type, REDIS_REPLY_NIL);
    redis_client_free(c0);
    const char *sel[4] = {"EVAL", "redis.call('SELECT', 3) return redis.call('GET', 'where')", "0",
                          NULL};
    redisReply *side = harness_redis_command(&w->srv, 3, sel);
    assert_non_null(side);
    assert_string_equal(side->str, "db3");
    freeReplyObject(side);
}

static void test_unix_socket(void **state)
{
    struct harness_env *w = *state;
    char url[300];
    snprintf(url, sizeof url, "unix:%s?db=2", w->srv.sock);
    struct redis_client *c = harness_client_new(w, &(struct redis_options){.url = url});
    struct harness_reply r = HARNESS_CMD(w, c, "SET", "u", "1");
    assert_int_equal(r.result, 0);
    r = HARNESS_CMD(w, c, "CLIENT", "INFO");
    assert_non_null(strstr(r.str, " db=2 "));
    assert_non_null(strstr(r.str, "laddr=" /* any */));
    redis_client_free(c);

    /* A socket that is not there: retried, never available, no hang. */
    snprintf(url, sizeof url, "unix:%s/nope.sock", w->srv.dir);
    c = redis_client_new(w->h.loop, &(struct redis_options){.url = url, .reconnect_min_ms = 10});
    assert_non_null(c);
    harness_run_for(&w->h, 0.1);
    assert_false(redis_client_available(c));
    assert_true(strlen(redis_client_errstr(c)) > 0);
    redis_client_free(c);
}

static void test_host_name_lookup(void **state)
{
#ifdef __SANITIZE_THREAD__
    /* glibc starts getaddrinfo_a()'s helper thread from inside libc, where ThreadSanitizer's
     * pthread_create interceptor does not see it: the thread has no TSan state and its first
     * malloc (in getaddrinfo) crashes. The other builds run this case. */
    skip();
#endif
    struct harness_env *w = *state;
    char url[300];
    /* "localhost" goes through getaddrinfo_a(); it may give ::1 first, where nothing
     * listens, so this also checks that the next address is tried. */
    snprintf(url, sizeof url, "redis://localhost:%d", w->srv.port);
    struct redis_client *c =
        harness_client_new(w, &(struct redis_options){.url = url, .reconnect_min_ms = 10});
    struct harness_reply r = HARNESS_CMD(w, c, "PING");
    assert_string_equal(r.str, "PONG");
    redis_client_free(c);

    /* A name that does not resolve: retried, never available, freed cleanly. */
    c = redis_client_new(w->h.loop, &(struct redis_options){.url = "redis://no-such-host.invalid",
                                                            .reconnect_min_ms = 10});
    assert_non_null(c);
    harness_run_for(&w->h, 0.2);
    assert_false(redis_client_available(c));
    redis_client_free(c);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* TEST_REDIS_LOG=1 shows the client's connection events. */
    log_set_level(getenv("TEST_REDIS_LOG") ? LOG_DEBUG : LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_set_get_binary, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pipeline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_timeout_late_reply_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_breaker_opens_on_timeouts_and_recovers, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_killed_fails_fast_and_opens_breaker, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reconnects_after_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_not_running_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth, setup_auth, teardown),
        cmocka_unit_test_setup_teardown(test_select_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unix_socket, setup_unix, teardown),
        cmocka_unit_test_setup_teardown(test_host_name_lookup, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for redis/redis: URL parsing, and the client against a real redis-server that
 * each test starts on a free loopback port in a temporary directory (and kills afterwards).
 * redis-server missing is a failure, not a skip. The event loop is always run in bounded
 * steps under an overall deadline, so no test can hang. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/log.h"
#include "redis/redis.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The test's world: one loop, one server (tests/unit/harness.h); tests fill in what they need. */
struct world {
    struct harness_world h;
    struct harness_redis srv;
    char url[256];
};

static int setup_common(void **state, const char *pass, bool with_unix)
{
    struct world *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    *state = w;
    w->srv.pass = pass;
    w->srv.with_unix = with_unix;
    if (harness_redis_init(&w->srv, "redis") == -1 || harness_world_init(&w->h) == -1)
        return -1;
    harness_redis_url(&w->srv, w->url, sizeof w->url);
    return harness_redis_start(&w->srv);
}

static int setup(void **state)
{
    return setup_common(state, NULL, false);
}

#define TEST_PASSWORD "p@ss:w/rd"

static int setup_auth(void **state)
{
    return setup_common(state, TEST_PASSWORD, false);
}

static int setup_unix(void **state)
{
    return setup_common(state, NULL, true);
}

static int teardown(void **state)
{
    struct world *w = *state;
    if (!w)
        return 0;
    harness_redis_cleanup(&w->srv);
    harness_world_fini(&w->h);
    free(w);
    return 0;
}

/* ---- waiting on the client ---------------------------------------------------------------- */

static bool is_available(void *arg)
{
    return redis_client_available(arg);
}

/* ---- reply recording ---------------------------------------------------------------------- */

struct rec {
    int calls;
    int result;
    int type;
    long long integer;
    char str[512];
    size_t len;
    double at;
};

static void on_reply(void *ctx, int result, const redisReply *reply)
{
    struct rec *r = ctx;
    r->calls++;
    r->result = result;
    r->at = harness_now_s();
    r->type = reply ? reply->type : -1;
    r->len = 0;
    if (reply) {
        r->integer = reply->integer;
        if (reply->str) {
            r->len = reply->len < sizeof r->str ? reply->len : sizeof r->str - 1;
            memcpy(r->str, reply->str, r->len);
            r->str[r->len] = '\0';
        }
    }
}

static bool rec_done(void *arg)
{
    return ((struct rec *)arg)->calls > 0;
}

static struct redis_client *client_for(struct world *w, const struct redis_options *o)
{
    struct redis_options opt = *o;
    if (!opt.url)
        opt.url = w->url;
    struct redis_client *c = redis_client_new(w->h.loop, &opt);
    assert_non_null(c);
    if (!harness_run_until(&w->h, is_available, c, 5))
        fail_msg("client did not connect: %s", redis_client_errstr(c));
    return c;
}

/* Sends a command and waits for its answer. */
static struct rec cmd(struct world *w, struct redis_client *c, int argc, const char **argv,
                      const size_t *lens)
{
    struct rec r = {0};
    int rc = redis_command(c, argc, argv, lens, on_reply, &r);
    if (rc != 0)
        fail_msg("redis_command(%s) refused: %s", argv[0], redis_strerror(rc));
    if (!harness_run_until(&w->h, rec_done, &r, 5))
        fail_msg("no answer to %s", argv[0]);
    assert_int_equal(r.calls, 1);
    return r;
}

#define CMD(w, c, ...)                                                                             \
    cmd((w), (c), (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)),             \
        (const char *[]){__VA_ARGS__}, NULL)

/* ---- URL parsing -------------------------------------------------------------------------- */

static void test_url_good(void **state)
{
    (void)state;
    struct redis_url u;
    char err[160];

    assert_int_equal(redis_parse_url("redis://127.0.0.1:6380/2", &u, err, sizeof err), 0);
    assert_false(u.unix_socket);
    assert_string_equal(u.host, "127.0.0.1");
    assert_int_equal(u.port, 6380);
    assert_int_equal(u.db, 2);
    assert_string_equal(u.password, "");
    assert_string_equal(u.user, "");

    assert_int_equal(redis_parse_url("redis://cache.internal", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "cache.internal");
    assert_int_equal(u.port, 6379);
    assert_int_equal(u.db, 0);

    assert_int_equal(redis_parse_url("redis://host/", &u, err, sizeof err), 0);
    assert_int_equal(u.db, 0);

    assert_int_equal(redis_parse_url("REDIS://:secret@h:1/15", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "secret");
    assert_string_equal(u.user, "");
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 1);
    assert_int_equal(u.db, 15);

    assert_int_equal(redis_parse_url("redis://alice:pw%40x%3A1@h", &u, err, sizeof err), 0);
    assert_string_equal(u.user, "alice");
    assert_string_equal(u.password, "pw@x:1");

    /* An unencoded '@', ':' or '/' in the password: the last '@' ends the credentials. */
    assert_int_equal(redis_parse_url("redis://:a@b:c/d@h:7/3", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "a@b:c/d");
    assert_string_equal(u.host, "h");
    assert_int_equal(u.port, 7);
    assert_int_equal(u.db, 3);

    assert_int_equal(redis_parse_url("redis://[::1]:7000/1", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "::1");
    assert_int_equal(u.port, 7000);
    assert_int_equal(u.db, 1);

    assert_int_equal(redis_parse_url("redis://[fe80::1%25eth0]", &u, err, sizeof err), 0);
    assert_string_equal(u.host, "fe80::1%25eth0");
    assert_int_equal(u.port, 6379);

    assert_int_equal(redis_parse_url("redis://h:6379?db=4", &u, err, sizeof err), 0);
    assert_int_equal(u.db, 4);

    assert_int_equal(redis_parse_url("unix:/run/redis/redis.sock", &u, err, sizeof err), 0);
    assert_true(u.unix_socket);
    assert_string_equal(u.path, "/run/redis/redis.sock");
    assert_int_equal(u.db, 0);

    assert_int_equal(redis_parse_url("unix:/tmp/r.sock?db=9", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/tmp/r.sock");
    assert_int_equal(u.db, 9);

    assert_int_equal(redis_parse_url("unix:///tmp/a@b.sock", &u, err, sizeof err), 0);
    assert_string_equal(u.path, "/tmp/a@b.sock");
    assert_string_equal(u.password, "");

    assert_int_equal(redis_parse_url("unix://:pw@/tmp/r.sock?db=1", &u, err, sizeof err), 0);
    assert_string_equal(u.password, "pw");
    assert_string_equal(u.path, "/tmp/r.sock");
    assert_int_equal(u.db, 1);
}

static void test_url_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "http://h:6379",
        "rediss://h:6379",
        "redis://",
        "redis://:6379",
        "redis://h:0",
        "redis://h:65536",
        "redis://h:12ab",
        "redis://h:",
        "redis://h/abc",
        "redis://h/1/2",
        "redis://h/-1",
        "redis://h/1?db=2",
        "redis://h?timeout=5",
        "redis://h?db=",
        "redis://::1:6379",
        "redis://[::1",
        "redis://[::1]x",
        "redis://secret@h",
        "redis://:bad%zzescape@h",
        "redis://:nul%00@h",
        "redis://h st",
        "redis://h\x01",
        "unix:",
        "unix:relative.sock",
        "unix://host/path",
        "unix:/tmp/x.sock?db=x",
        "unix:/tmp/x.sock?foo=1",
        NULL,
    };
    for (size_t i = 0; bad[i]; i++) {
        struct redis_url u;
        char err[160] = "";
        int rc = redis_parse_url(bad[i], &u, err, sizeof err);
        if (rc != REDIS_EINVAL)
            fail_msg("accepted a bad URL: \"%s\"", bad[i]);
        if (!err[0])
            fail_msg("no reason given for \"%s\"", bad[i]);
        /* A rejected URL leaves nothing behind, not even a password prefix. */
        assert_string_equal(u.password, "");
    }
    char longpath[300] = "unix:/";
    memset(longpath + 6, 'a', 200);
    longpath[206] = '\0';
    struct redis_url u;
    char err[160];
    assert_int_equal(redis_parse_url(longpath, &u, err, sizeof err), REDIS_EINVAL);
    assert_int_equal(redis_parse_url(NULL, &u, err, sizeof err), REDIS_EINVAL);
    /* The reason never echoes the password. */
    assert_int_equal(redis_parse_url("redis://:hunter2%zz@h", &u, err, sizeof err), REDIS_EINVAL);
    assert_null(strstr(err, "hunter2"));

    struct redis_options o = {.url = "redis://h:99999"};
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_null(redis_client_new(loop, &o));
    ev_loop_destroy(loop);
}

/* ---- commands ----------------------------------------------------------------------------- */

static void test_set_get_binary(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){.command_timeout_ms = 2000});

    static const char key[] = "a key with spaces";
    static const char val[] = {'a', '\0', 'b', '\0', '\r', '\n', (char)0xff, 'z'};
    const char *set[3] = {"SET", key, val};
    size_t set_len[3] = {3, sizeof key - 1, sizeof val};
    struct rec r = cmd(w, c, 3, set, set_len);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.type, REDIS_REPLY_STATUS);
    assert_string_equal(r.str, "OK");

    const char *get[2] = {"GET", key};
    r = cmd(w, c, 2, get, NULL);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.type, REDIS_REPLY_STRING);
    assert_int_equal(r.len, sizeof val);
    assert_memory_equal(r.str, val, sizeof val);

    /* An error reply is REDIS_EREPLY with the reply. */
    r = CMD(w, c, "INCR", key);
    assert_int_equal(r.result, REDIS_EREPLY);
    assert_int_equal(r.type, REDIS_REPLY_ERROR);

    /* Commands that would change the connection under the client are refused. */
    struct rec unused = {0};
    static const char *const refused[] = {"SUBSCRIBE", "psubscribe", "MONITOR", "select",
                                          "AUTH",      "HELLO",      "QUIT",    NULL};
    for (size_t i = 0; refused[i]; i++) {
        const char *argv[2] = {refused[i], "x"};
        assert_int_equal(redis_command(c, 2, argv, NULL, on_reply, &unused), REDIS_EINVAL);
    }
    assert_int_equal(redis_command(c, 0, get, NULL, on_reply, &unused), REDIS_EINVAL);
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
    struct world *w = *state;
    /* A long deadline: this is about pipelining, and valgrind is slow. */
    struct redis_client *c = client_for(w, &(struct redis_options){.command_timeout_ms = 20000});
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
    struct rec r = CMD(w, c, "GET", "counter");
    assert_string_equal(r.str, "10000");
    redis_client_free(c);
    free(slots);
    free(p);
}

/* ---- deadlines ---------------------------------------------------------------------------- */

static void test_timeout_late_reply_ignored(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){.command_timeout_ms = 50});
    struct rec slow = {0};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    double t0 = harness_now_s();
    assert_int_equal(redis_command(c, 3, slp, NULL, on_reply, &slow), 0);
    assert_true(harness_run_until(&w->h, rec_done, &slow, 2));
    assert_int_equal(slow.result, REDIS_ETIMEOUT);
    double took = slow.at - t0;
    if (took < 0.045 || took > 0.25)
        fail_msg("timed out after %.3f s, not about 0.05 s", took);

    /* The late reply (and the loop going on) must not call anyone again. */
    harness_run_for(&w->h, 0.3);
    assert_int_equal(slow.calls, 1);

    /* The connection is still good: the next command works. */
    struct rec r = CMD(w, c, "PING");
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
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){
                                               .command_timeout_ms = 50,
                                               .breaker_failures = 3,
                                               .breaker_cooloff_ms = 100,
                                           });
    struct rec r[4] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.6"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, on_reply, &r[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[i]), 0);
    assert_true(harness_run_until(&w->h, rec_done, &r[3], 2));
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
    struct rec refused = {0};
    double t0 = harness_now_s();
    assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &refused), REDIS_EOPEN);
    assert_true(harness_now_s() - t0 < 0.02);

    /* Redis wakes after 0.6 s; a probe then closes the breaker. */
    if (!harness_run_until(&w->h, breaker_is_closed_and_up, c, 8))
        fail_msg("breaker did not close: %s", redis_client_errstr(c));
    struct rec ok = CMD(w, c, "PING");
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
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){
                                               .command_timeout_ms = 5000,
                                               .reconnect_min_ms = 20,
                                               .reconnect_max_ms = 100,
                                               .breaker_failures = 3,
                                               .breaker_cooloff_ms = 10000,
                                           });
    /* In flight when Redis dies: answered by the lost connection, not the 5 s deadline. */
    struct rec inflight = {0};
    const char *slp[3] = {"DEBUG", "SLEEP", "3"};
    assert_int_equal(redis_command(c, 3, slp, NULL, on_reply, &inflight), 0);
    harness_run_for(&w->h, 0.05);
    double t0 = harness_now_s();
    harness_redis_kill(&w->srv);
    assert_true(harness_run_until(&w->h, rec_done, &inflight, 2));
    assert_int_equal(inflight.result, REDIS_ENOTCONN);
    assert_true(inflight.at - t0 < 0.5);

    /* From now on every command is refused at once. */
    struct rec unused = {0};
    const char *get[2] = {"GET", "k"};
    for (int i = 0; i < 100; i++) {
        double t1 = harness_now_s();
        int rc = redis_command(c, 2, get, NULL, on_reply, &unused);
        assert_true(rc == REDIS_ENOTCONN || rc == REDIS_EOPEN);
        assert_true(harness_now_s() - t1 < 0.02);
        ev_run(w->h.loop, EVRUN_NOWAIT);
    }
    assert_false(redis_client_available(c));

    /* Failed reconnects count: the breaker opens. */
    if (!harness_run_until(&w->h, breaker_open, c, 5))
        fail_msg("breaker did not open");
    assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &unused), REDIS_EOPEN);
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
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){
                                               .command_timeout_ms = 1000,
                                               .reconnect_min_ms = 20,
                                               .reconnect_max_ms = 200,
                                               .breaker_cooloff_ms = 200,
                                           });
    struct rec r = CMD(w, c, "SET", "k", "before");
    assert_int_equal(r.result, 0);
    harness_redis_kill(&w->srv);
    harness_run_for(&w->h, 0.6); /* long enough for the breaker to open too */
    assert_false(redis_client_available(c));
    assert_int_equal(harness_redis_start(&w->srv), 0);
    ev_now_update(w->h.loop);
    if (!harness_run_until(&w->h, is_available, c, 10))
        fail_msg("did not reconnect: %s", redis_client_errstr(c));
    r = CMD(w, c, "SET", "k", "after");
    assert_int_equal(r.result, 0);
    r = CMD(w, c, "GET", "k");
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
    struct world *w = *state;
    harness_redis_kill(&w->srv);
    struct redis_options o = {.url = w->url, .reconnect_min_ms = 10, .reconnect_max_ms = 50};
    struct redis_client *c = redis_client_new(w->h.loop, &o);
    assert_non_null(c);
    harness_run_for(&w->h, 0.3);
    assert_false(redis_client_available(c));
    struct rec unused = {0};
    const char *ping[1] = {"PING"};
    int rc = redis_command(c, 1, ping, NULL, on_reply, &unused);
    assert_true(rc == REDIS_ENOTCONN || rc == REDIS_EOPEN);
    /* It comes up later: the client finds it by itself. */
    assert_int_equal(harness_redis_start(&w->srv), 0);
    ev_now_update(w->h.loop);
    if (!harness_run_until(&w->h, is_available, c, 10))
        fail_msg("did not connect: %s", redis_client_errstr(c));
    assert_int_equal(unused.calls, 0);
    redis_client_free(c);
}

/* ---- AUTH, SELECT, unix sockets, host names ----------------------------------------------- */

static void test_auth(void **state)
{
    struct world *w = *state;
    char url[300];
    /* Percent-encoded password ("p@ss:w/rd"). */
    snprintf(url, sizeof url, "redis://:p%%40ss%%3Aw%%2Frd@127.0.0.1:%d/0", w->srv.port);
    struct redis_client *c = client_for(w, &(struct redis_options){.url = url});
    struct rec r = CMD(w, c, "SET", "k", "v");
    assert_int_equal(r.result, 0);
    redis_client_free(c);

    /* ACL form with the default user and a raw (unencoded) password. */
    snprintf(url, sizeof url, "redis://default:%s@127.0.0.1:%d", TEST_PASSWORD, w->srv.port);
    c = client_for(w, &(struct redis_options){.url = url});
    r = CMD(w, c, "GET", "k");
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
    struct world *w = *state;
    char url[300];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d/3", w->srv.port);
    struct redis_client *c = client_for(w, &(struct redis_options){.url = url});
    struct rec r = CMD(w, c, "SET", "where", "db3");
    assert_int_equal(r.result, 0);
    r = CMD(w, c, "CLIENT", "INFO");
    assert_non_null(strstr(r.str, " db=3 "));
    redis_client_free(c);

    /* Seen from db 0 (another client) the key is not there; from db 3 it is. */
    struct redis_client *c0 = client_for(w, &(struct redis_options){0});
    r = CMD(w, c0, "GET", "where");
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
    struct world *w = *state;
    char url[300];
    snprintf(url, sizeof url, "unix:%s?db=2", w->srv.sock);
    struct redis_client *c = client_for(w, &(struct redis_options){.url = url});
    struct rec r = CMD(w, c, "SET", "u", "1");
    assert_int_equal(r.result, 0);
    r = CMD(w, c, "CLIENT", "INFO");
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
    struct world *w = *state;
    char url[300];
    /* "localhost" goes through getaddrinfo_a(); it may give ::1 first, where nothing
     * listens, so this also checks that the next address is tried. */
    snprintf(url, sizeof url, "redis://localhost:%d", w->srv.port);
    struct redis_client *c =
        client_for(w, &(struct redis_options){.url = url, .reconnect_min_ms = 10});
    struct rec r = CMD(w, c, "PING");
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
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){.command_timeout_ms = 2000});
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
            struct rec f = CMD(w, c, "SCRIPT", "FLUSH");
            assert_int_equal(f.result, 0);
        }
        struct redis_stats before, after;
        redis_client_stats(c, &before);
        struct rec r = {0};
        assert_int_equal(redis_evalsha(c, s, 1, 2, argv, lens, on_reply, &r), 0);
        assert_true(harness_run_until(&w->h, rec_done, &r, 5));
        assert_int_equal(r.calls, 1);
        assert_int_equal(r.result, 0);
        assert_int_equal(r.type, REDIS_REPLY_ARRAY);
        redis_client_stats(c, &after);
        /* One command, or two when it fell back to EVAL. */
        assert_int_equal(after.commands - before.commands, round == 1 ? 2 : 1);
    }
    struct rec r = CMD(w, c, "GET", "ctr");
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
    struct rec e = {0};
    assert_int_equal(redis_evalsha(c, b, 0, 0, NULL, NULL, on_reply, &e), 0);
    assert_true(harness_run_until(&w->h, rec_done, &e, 5));
    assert_int_equal(e.result, REDIS_EREPLY);
    harness_run_for(&w->h, 0.05);
    assert_int_equal(e.calls, 1);

    assert_int_equal(redis_evalsha(c, s, 3, 2, argv, lens, on_reply, &e), REDIS_EINVAL);
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

static void publish(struct world *w, struct redis_client *c, const char *ch, const char *msg,
                    size_t len, long long receivers)
{
    const char *argv[3] = {"PUBLISH", ch, msg};
    size_t lens[3] = {7, strlen(ch), len};
    struct rec r = cmd(w, c, 3, argv, lens);
    assert_int_equal(r.result, 0);
    assert_int_equal(r.integer, receivers);
}

static void test_pubsub_and_resubscribe(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){
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
    if (!harness_run_until(&w->h, is_available, c, 10))
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
    struct world *w = *state;
    struct redis_client *c = client_for(w, &(struct redis_options){.command_timeout_ms = 5000});
    struct subrec sub = {0};
    assert_int_equal(redis_subscribe(c, "ch", on_message, &sub), 0);
    const struct redis_script *s = redis_script_load(c, "return 1", 8);
    struct rec r[N_INFLIGHT] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.3"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, on_reply, &r[0]), 0);
    for (int i = 1; i < 100; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[i]), 0);
    assert_int_equal(redis_evalsha(c, s, 0, 0, NULL, NULL, on_reply, &r[100]), 0);
    harness_run_for(&w->h, 0.05); /* sent, Redis asleep */
    /* and some still in hiredis's output buffer */
    for (int i = 101; i < N_INFLIGHT; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[i]), 0);
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
    struct rec r[20];
    int first_result;
    int during_free_calls;
    int refused_in_cb;
};

static void on_reply_then_free(void *ctx, int result, const redisReply *reply)
{
    struct free_in_cb *f = ctx;
    on_reply(&f->r[0], result, reply);
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
    struct rec unused = {0};
    /* A command issued from a callback that redis_client_free() runs is refused. */
    if (redis_command(f->c, 1, ping, NULL, on_reply, &unused) == REDIS_ENOTCONN)
        f->refused_in_cb++;
    redis_client_free(f->c); /* a second free from inside the first: nothing */
}

static void test_free_from_callbacks(void **state)
{
    struct world *w = *state;
    /* From a reply callback, with others still in flight. */
    struct free_in_cb *f = calloc(1, sizeof *f);
    f->c = client_for(w, &(struct redis_options){.command_timeout_ms = 5000});
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, rec_done, &f->r[0], 5));
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
    f->c = client_for(w, &(struct redis_options){.command_timeout_ms = 50});
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    assert_int_equal(redis_command(f->c, 3, slp, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, rec_done, &f->r[0], 5));
    assert_int_equal(f->first_result, REDIS_ETIMEOUT);
    harness_run_for(&w->h, 0.3); /* the late replies come to nobody */
    for (int i = 1; i < 20; i++) {
        assert_int_equal(f->r[i].calls, 1);
        assert_true(f->r[i].result == REDIS_ETIMEOUT || f->r[i].result == REDIS_ENOTCONN);
    }

    /* Callbacks run by free may try again (refused) and free again (nothing). */
    memset(f, 0, sizeof *f);
    f->c = client_for(w, &(struct redis_options){.command_timeout_ms = 5000});
    assert_int_equal(redis_command(f->c, 3, slp, NULL, on_reply, &f->r[0]), 0);
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
    f->c = client_for(w, &(struct redis_options){.command_timeout_ms = 50, .breaker_failures = 1});
    const char *slp2[3] = {"DEBUG", "SLEEP", "0.2"};
    assert_int_equal(redis_command(f->c, 3, slp2, NULL, on_reply, &f->r[1]), 0);
    for (int i = 2; i < 10; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply, &f->r[i]), 0);
    assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply_then_free, f), 0);
    for (int i = 10; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply, &f->r[i]), 0);
    assert_true(harness_run_until(&w->h, rec_done, &f->r[0], 5));
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
    f->c = client_for(w, &(struct redis_options){.command_timeout_ms = 5000});
    const char *slp3[3] = {"DEBUG", "SLEEP", "3"};
    assert_int_equal(redis_command(f->c, 3, slp3, NULL, on_reply_then_free, f), 0);
    for (int i = 1; i < 20; i++)
        assert_int_equal(redis_command(f->c, 2, get, NULL, on_reply, &f->r[i]), 0);
    harness_run_for(&w->h, 0.05);
    harness_redis_kill(&w->srv);
    assert_true(harness_run_until(&w->h, rec_done, &f->r[0], 5));
    assert_int_equal(f->first_result, REDIS_ENOTCONN);
    assert_int_equal(f->during_free_calls, 19);
    harness_run_for(&w->h, 0.1);
    for (int i = 0; i < 20; i++)
        assert_int_equal(f->r[i].calls, 1);
    free(f);
}

static void test_max_pending(void **state)
{
    struct world *w = *state;
    struct redis_client *c =
        client_for(w, &(struct redis_options){
                          .command_timeout_ms = 50, .max_pending = 4, .breaker_failures = 100});
    struct rec r[5] = {{0}};
    const char *slp[3] = {"DEBUG", "SLEEP", "0.2"};
    const char *get[2] = {"GET", "k"};
    assert_int_equal(redis_command(c, 3, slp, NULL, on_reply, &r[0]), 0);
    for (int i = 1; i < 4; i++)
        assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[i]), 0);
    assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[4]), REDIS_EBUSY);
    /* Timed out but unanswered, they still hold their places (hiredis owes the replies)... */
    assert_true(harness_run_until(&w->h, rec_done, &r[3], 2));
    assert_int_equal(redis_command(c, 2, get, NULL, on_reply, &r[4]), REDIS_EBUSY);
    /* ... until the late replies come. */
    harness_run_for(&w->h, 0.3);
    struct rec ok = CMD(w, c, "PING");
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
    struct world *w = *state;
    struct free_in_sub f = {0};
    struct subrec ready = {0};
    f.c = client_for(w, &(struct redis_options){.command_timeout_ms = 1000});
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
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
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
        cmocka_unit_test_setup_teardown(test_evalsha_noscript_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pubsub_and_resubscribe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_with_commands_in_flight, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_free_from_message_callback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

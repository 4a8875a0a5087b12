/* Unit tests for redis/sync, the blocking client of the admin API and the CLI, against a real
 * redis-server (tests/unit/harness.h) with a password: each error has its code and its message
 * (which the admin API and the CLI show as they are), and a password is never in one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "redis/sync.h"
#include "tests/unit/harness.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PASSWORD "s3cr:t@pw"
#define WHAT "test store"

static int setup(void **state)
{
    struct harness_redis *s = calloc(1, sizeof *s);
    if (!s)
        return -1;
    *state = s;
    s->pass = PASSWORD;
    if (harness_redis_init(s, "redis-sync") == -1)
        return -1;
    return harness_redis_start(s);
}

static int teardown(void **state)
{
    struct harness_redis *s = *state;
    if (s)
        harness_redis_cleanup(s);
    free(s);
    return 0;
}

static void url_of(const struct harness_redis *s, const char *userinfo, int db, char *out, size_t n)
{
    snprintf(out, n, "redis://%s127.0.0.1:%d/%d", userinfo, s->port, db);
}

static void test_connect_auth_select(void **state)
{
    struct harness_redis *s = *state;
    char url[256];
    struct redis_sync_error err = {0};
    url_of(s, ":s3cr%3At%40pw@", 3, url, sizeof url);
    redisContext *c = redis_sync_connect(url, WHAT, &err);
    assert_non_null(c);
    const char *set[] = {"SET", "k", "v"};
    redisReply *r = redis_sync_command(c, 3, set, NULL, WHAT, &err);
    assert_non_null(r);
    freeReplyObject(r);
    redisFree(c);
    /* It went to db 3. */
    redisContext *side = harness_redis_connect(s);
    assert_non_null(side);
    r = redisCommand(side, "SELECT 3");
    freeReplyObject(r);
    r = redisCommand(side, "GET k");
    assert_int_equal(r->type, REDIS_REPLY_STRING);
    assert_string_equal(r->str, "v");
    freeReplyObject(r);
    redisFree(side);

    /* With a user name too (ACL's "default"). */
    url_of(s, "default:s3cr%3At%40pw@", 0, url, sizeof url);
    c = redis_sync_connect(url, WHAT, &err);
    assert_non_null(c);
    redisFree(c);
}

static void test_errors(void **state)
{
    struct harness_redis *s = *state;
    char url[256];
    struct redis_sync_error err;

    assert_null(redis_sync_connect(NULL, WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_ENOURL);
    assert_string_equal(err.message, "No test store: redis.url is not configured.");

    assert_null(redis_sync_connect("rediss://h", WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_EURL);
    assert_true(!strncmp(err.message, "redis.url: ", 11));

    url_of(s, ":wrong-" PASSWORD "@", 0, url, sizeof url);
    assert_null(redis_sync_connect(url, WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_EAUTH);
    assert_string_equal(err.message, "The test store (Redis) refused the credentials.");

    /* No password: the first command is refused (NOAUTH), an error reply. */
    url_of(s, "", 0, url, sizeof url);
    redisContext *c = redis_sync_connect(url, WHAT, &err);
    assert_non_null(c);
    const char *get[] = {"GET", "k"};
    assert_null(redis_sync_command(c, 2, get, NULL, WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_EREPLY);
    assert_true(!strncmp(err.message, "The test store (Redis) failed: NOAUTH", 37));
    redisFree(c);

    /* A server too slow to answer within the command timeout. */
    url_of(s, ":s3cr%3At%40pw@", 0, url, sizeof url);
    c = redis_sync_connect(url, WHAT, &err);
    assert_non_null(c);
    const char *slow[] = {"DEBUG", "SLEEP", "1.5"};
    double t0 = harness_now_s();
    assert_null(redis_sync_command(c, 3, slow, NULL, WHAT, &err));
    assert_true(harness_now_s() - t0 < 1.4);
    assert_int_equal(err.code, REDIS_SYNC_ETIMEOUT);
    assert_string_equal(err.message, "The test store (Redis) did not answer within 1 s.");
    redisFree(c);

    /* Nobody listening. */
    int port = harness_free_port();
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
    assert_null(redis_sync_connect(url, WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_EUNREACHABLE);
    assert_string_equal(err.message, "The test store (Redis) is unreachable: Connection refused.");
}

/* The server goes away between commands: no reply, and the message says why. */
static void test_connection_lost(void **state)
{
    struct harness_redis *s = *state;
    char url[256];
    struct redis_sync_error err;
    url_of(s, ":s3cr%3At%40pw@", 0, url, sizeof url);
    redisContext *c = redis_sync_connect(url, WHAT, &err);
    assert_non_null(c);
    harness_redis_kill(s);
    const char *ping[] = {"PING"};
    assert_null(redis_sync_command(c, 1, ping, NULL, WHAT, &err));
    assert_int_equal(err.code, REDIS_SYNC_EIO);
    assert_true(!strncmp(err.message, "The test store (Redis) did not answer: ", 39));
    assert_null(strstr(err.message, PASSWORD));
    redisFree(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect_auth_select, setup, teardown),
        cmocka_unit_test_setup_teardown(test_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connection_lost, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

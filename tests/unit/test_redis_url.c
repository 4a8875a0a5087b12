/* Unit tests for redis/url: redis_parse_url(), the forms it accepts and the ones it refuses
 * (with a reason that never names the password). Pure: no server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "redis/redis.h"

#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_good),
        cmocka_unit_test(test_url_bad),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for tenancy/ledger's spool (tenancy/ledger_spool.c), on a real redis-server
 * started on a free loopback port in a temporary directory (killed afterwards,
 * tests/unit/ledger_world.h): records spooled while Redis is down and replayed once on
 * recovery, a spool replayed twice or after a lost answer counting once, orphaned spools
 * adopted, the in-flight cap, corrupt lines, a ledger without a spool, and a full disk or a
 * spool at its cap holding records in memory. The loop always runs in bounded steps under a
 * deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/log.h"
#include "redis/redis.h"
#include "tenancy/ledger.h"
#include "tests/unit/harness.h"
#include "tests/unit/ledger_world.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- outages, replay, adoption --------------------------------------------------------------- */

static void test_down_spooled_then_replayed_once(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry e = ledger_world_entry("before", "alice", "m1", 1, 1, 0.5);
    ledger_record(l, &e);
    struct ledger_world_want x = {.l = l, .written = 1};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));

    harness_redis_kill(&w->srv);
    /* Records while Redis is down: sent ones fail and are spooled, later ones are spooled at
     * once (not available); none waits. */
    double t0 = harness_now_s();
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "down-%d", i);
        e = ledger_world_entry(id, "alice", "m1", 2, 3, 0.25);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    assert_true(harness_now_s() - t0 < 2);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.spooled, 20);
    assert_int_equal(ledger_world_lines(w->spool), 20);
    assert_true(st.spool_bytes > 0);

    assert_int_equal(harness_redis_start(&w->srv), 0);
    x = (struct ledger_world_want){.l = l, .written = 1, .replayed = 20, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    st = ledger_world_stats(l);
    assert_int_equal(st.replayed, 20);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.spool_bytes, 0);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), 0);
    assert_int_equal(sb.st_size, 0); /* truncated once acknowledged */
    /* The restarted server lost "before" (no persistence here); the 20 are there once. */
    assert_int_equal(ledger_world_xlen(w), 20);
    assert_int_equal(ledger_world_sum(w, "alice", "m1:requests"), 20);
    assert_int_equal(ledger_world_sum(w, "alice", "m1:completion_tokens"), 60);
    /* Nothing more comes with time. */
    harness_run_until(&w->h, harness_never, NULL, 1.3);
    assert_int_equal(ledger_world_xlen(w), 20);
    ledger_free(l);
    redis_client_free(c);
}

/* Spools left by runs that are gone (another port, more workers) are adopted: their whole
 * lines are replayed by the new ledger and the files removed; a spool a live ledger holds is
 * left alone; a line cut by a crash is not copied. */
static void test_orphaned_spools_adopted(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    char held[700], orphan[700], lock[720];
    snprintf(held, sizeof held, "%s/" LEDGER_SPOOL_PREFIX "7-0" LEDGER_SPOOL_SUFFIX, w->srv.dir);
    snprintf(orphan, sizeof orphan, "%s/" LEDGER_SPOOL_PREFIX "9-3" LEDGER_SPOOL_SUFFIX,
             w->srv.dir);
    struct ledger *live = ledger_new(w->h.loop, c, held); /* holds its spool's lock */
    assert_non_null(live);
    ledger_world_spool_records(orphan, "aa", 3, true);

    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct stat sb;
    assert_int_equal(stat(orphan, &sb), -1); /* adopted and removed */
    snprintf(lock, sizeof lock, "%s.lock", orphan);
    assert_int_equal(stat(lock, &sb), -1);
    assert_int_equal(stat(held, &sb), 0);              /* a live ledger's: untouched */
    assert_int_equal(ledger_world_lines(w->spool), 3); /* the cut line was left behind */
    struct ledger_world_want x = {.l = l, .replayed = 3, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    assert_int_equal(ledger_world_xlen(w), 3);
    assert_int_equal(ledger_world_sum(w, "orphan-key", "m1:requests"), 3);

    /* Adopting the same records again (an interrupted adoption) counts nothing twice. */
    ledger_world_spool_records(orphan, "aa", 3, false);
    ledger_free(l);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    x = (struct ledger_world_want){.l = l, .duplicates = 3, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    assert_int_equal(ledger_world_xlen(w), 3);

    /* A ledger that ends with nothing waiting leaves no file behind. */
    ledger_free(l);
    assert_int_equal(stat(w->spool, &sb), -1);
    ledger_free(live);
    assert_int_equal(stat(held, &sb), -1);
    redis_client_free(c);
}

static void test_same_spool_twice_counts_once(void **state)
{
    struct ledger_world *w = *state;
    /* Spool while the client cannot connect (nothing listens on that port). */
    int dead = harness_free_port();
    char url[128];
    snprintf(url, sizeof url, "redis://127.0.0.1:%d", dead);
    struct redis_options opt = {.url = url};
    struct redis_client *down = redis_client_new(w->h.loop, &opt);
    assert_non_null(down);
    struct ledger *l = ledger_new(w->h.loop, down, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 5; i++) {
        char id[32];
        snprintf(id, sizeof id, "r-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "carol", "m2", 100, 10, 0.001);
        ledger_record(l, &e);
    }
    assert_int_equal(ledger_world_stats(l).spooled, 5);
    ledger_free(l);
    redis_client_free(down);
    size_t len;
    char *copy = ledger_world_read(w->spool, &len);
    assert_int_equal(ledger_world_lines(w->spool), 5);

    /* A new ledger (a restart) replays what it finds. */
    struct redis_client *c = ledger_world_client(w, true);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_world_want x = {.l = l, .replayed = 5, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));
    ledger_free(l);

    /* The same lines again (say the truncation was lost): all duplicates. */
    ledger_world_write(w->spool, copy, len);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    x = (struct ledger_world_want){.l = l, .duplicates = 5, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));
    assert_int_equal(ledger_world_stats(l).replayed, 0);
    assert_int_equal(ledger_world_xlen(w), 5);
    assert_int_equal(ledger_world_sum(w, "carol", "m2:requests"), 5);
    assert_int_equal(ledger_world_sum(w, "carol", "m2:prompt_tokens"), 500);
    ledger_free(l);
    redis_client_free(c);
    free(copy);
}

/* Sent, then the ledger ends before the answer: the records are spooled as well as (probably)
 * written; the replay counts each once. */
static void test_ack_lost_then_replayed(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "q-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "dave", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    assert_int_equal(ledger_world_stats(l).inflight, 10);
    ledger_free(l); /* before the answers: its memory waits for them */
    assert_int_equal(ledger_world_lines(w->spool), 10);
    harness_run_until(&w->h, harness_never, NULL, 0.3); /* the answers come and free it */

    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_world_want x = {.l = l, .check_spool = true};
    x.duplicates = 10;
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(st.duplicates + st.replayed, 10);
    assert_int_equal(ledger_world_xlen(w), 10);
    assert_int_equal(ledger_world_sum(w, "dave", "m1:requests"), 10);
    ledger_free(l);
    redis_client_free(c);
}

/* The client freed first (the worker's order may be either): the answers come as
 * ENOTCONN inside redis_client_free() and the records are spooled then. */
static void test_client_freed_first(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry e = ledger_world_entry("z", "erin", "m1", 1, 1, 0.5);
    ledger_record(l, &e);
    ledger_record(l, &e);
    redis_client_free(c);
    assert_int_equal(ledger_world_stats(l).spooled, 2);
    ledger_free(l);
    assert_int_equal(ledger_world_lines(w->spool), 2);
}

static void test_inflight_cap_and_corrupt_lines(void **state)
{
    struct ledger_world *w = *state;
    /* A spool left by a crash: a good line, a corrupt one, and a line cut short. */
    struct ledger_record r;
    struct ledger_entry e = ledger_world_entry("old", "frank", "m1", 1, 1, 1);
    ledger_record_from_entry(&r, &e, "abcdefabcdefabcdefabcdefabcdef01");
    char line[LEDGER_LINE_MAX + 1];
    int n = ledger_format_line(&r, line, sizeof line);
    char content[3 * LEDGER_LINE_MAX];
    int len = snprintf(content, sizeof content, "%s{\"garbage\":1}\n%.*s", line, n / 2, line);
    ledger_world_write(w->spool, content, (size_t)len);

    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    unsigned total = LEDGER_INFLIGHT_MAX + 50;
    for (unsigned i = 0; i < total; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-%u", i);
        e = ledger_world_entry(id, "frank", "m1", 1, 0, 0);
        ledger_record(l, &e);
    }
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(st.inflight, LEDGER_INFLIGHT_MAX);
    assert_int_equal(st.spooled, 50); /* past the cap: straight to the spool */
    struct ledger_world_want x = {
        .l = l, .written = LEDGER_INFLIGHT_MAX, .replayed = 51, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    st = ledger_world_stats(l);
    assert_int_equal(st.dropped, 2); /* the corrupt line and the cut one */
    assert_int_equal(ledger_world_xlen(w), total + 1);
    assert_int_equal(ledger_world_sum(w, "frank", "m1:requests"), total + 1);
    ledger_free(l);
    redis_client_free(c);
}

/* A spool that cannot be used (no such directory; the lock another ledger holds) leaves a
 * ledger all the same: records go to Redis, and while it is down they are held in memory. */
static void test_without_a_spool(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *nodir = ledger_new(w->h.loop, c, "/nonexistent-dir/ledger.spool");
    assert_non_null(nodir);
    struct ledger *first = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(first);
    struct ledger *second = ledger_new(w->h.loop, c, w->spool); /* its lock is taken */
    assert_non_null(second);
    struct ledger_entry e = ledger_world_entry("nospool", "liam", "m1", 1, 1, 0.5);
    ledger_record(nodir, &e);
    ledger_record(second, &e);
    struct ledger_world_want x = {.l = second, .written = 1};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));
    x.l = nodir;
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));

    harness_redis_kill(&w->srv);
    ledger_record(second, &e);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = ledger_world_stats(second);
    assert_int_equal(st.held, 1);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(ledger_world_lines(w->spool), 0); /* the first ledger's file: untouched */
    assert_int_equal(harness_redis_start(&w->srv), 0);
    x = (struct ledger_world_want){.l = second, .written = 1, .replayed = 1};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    assert_int_equal(ledger_world_stats(second).held, 0);
    assert_int_equal(ledger_world_xlen(w), 1); /* the restarted server has the held one */
    ledger_free(second);
    ledger_free(nodir);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), 0); /* still the first one's */
    ledger_free(first);
    redis_client_free(c);
}

/* ---- a spool that cannot take records: held in memory ---------------------------------- */

/* The spool's disk is full (a file size limit makes write(2) fail with EFBIG, as ENOSPC
 * would), Redis is down: records are held in memory, none dropped; once the disk has room
 * they go to the spool, and from there to Redis. */
static void test_disk_full_held_then_spooled(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    harness_redis_kill(&w->srv);
    struct rlimit saved, full;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &saved), 0);
    full = saved;
    full.rlim_cur = 0; /* no regular file may grow */
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &full), 0);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "full-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "ivy", "m1", 1, 2, 0.25);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 1.2); /* a replay tick: still full */
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    assert_int_equal(st.held, 10);
    assert_true(st.held_bytes > 10 * 200);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(ledger_world_lines(w->spool), 0);

    /* Room on the disk again: the next tick writes them to the spool. */
    harness_run_until(&w->h, harness_never, NULL, 1.2);
    st = ledger_world_stats(l);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.held_bytes, 0);
    assert_int_equal(st.spooled, 10);
    assert_int_equal(ledger_world_lines(w->spool), 10);

    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct ledger_world_want x = {.l = l, .replayed = 10, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    assert_int_equal(ledger_world_xlen(w), 10);
    assert_int_equal(ledger_world_sum(w, "ivy", "m1:completion_tokens"), 20);
    ledger_free(l);
    redis_client_free(c);
}

/* The spool's own cap (spool_max_bytes: an emptyDir's sizeLimit is below the disk's size):
 * past it records wait in memory, and Redis takes both kinds once it is back. */
static void test_spool_cap_then_held(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    ledger_set_limits(l, 1000, 1 << 20); /* two or three lines */
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "capped-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "kate", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = ledger_world_stats(l);
    assert_true(st.spooled > 0);
    assert_true(st.spool_bytes <= 1000);
    assert_int_equal(st.spooled + st.held, 10);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct ledger_world_want x = {.l = l, .replayed = 10, .check_spool = true};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    assert_int_equal(ledger_world_stats(l).held, 0);
    assert_int_equal(ledger_world_xlen(w), 10);
    ledger_free(l);
    redis_client_free(c);
}

/* A spool that never takes anything (/dev/full: ENOSPC), Redis down: records are held up to
 * the cap, the rest dropped and counted; when Redis is back it takes the held ones. */
static void test_disk_full_cap_then_redis(void **state)
{
    struct ledger_world *w = *state;
    assert_int_equal(symlink("/dev/full", w->spool), 0);
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    ledger_set_limits(l, LEDGER_SPOOL_MAX, 3000); /* a handful of records */
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "jack", "m1", 1, 1, 0.125);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(st.inflight, 0);
    assert_true(st.held > 0);
    assert_true(st.held_bytes <= 3000);
    assert_int_equal(st.held + st.dropped, 20);
    assert_int_equal(st.spooled, 0);
    uint64_t held = st.held;

    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct ledger_world_want x = {.l = l, .replayed = held};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 10));
    st = ledger_world_stats(l);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.held_bytes, 0);
    assert_int_equal(st.dropped, 20 - held);
    assert_int_equal(ledger_world_xlen(w), (long long)held);

    /* Held at the stop, with the disk still full: lost, and the ledger frees them. */
    harness_redis_kill(&w->srv);
    struct ledger_entry e = ledger_world_entry("at-stop", "jack", "m1", 1, 1, 0.125);
    ledger_record(l, &e);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    assert_int_equal(ledger_world_stats(l).held, 1);
    ledger_free(l);
    redis_client_free(c);
}

int main(void)
{
    log_set_level(getenv("TEST_LEDGER_LOG") ? LOG_DEBUG : LOG_OFF);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit stands for a full disk: EFBIG, not a kill */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_down_spooled_then_replayed_once, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_orphaned_spools_adopted, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_same_spool_twice_counts_once, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_ack_lost_then_replayed, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_client_freed_first, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_inflight_cap_and_corrupt_lines, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_without_a_spool, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_held_then_spooled, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_spool_cap_then_held, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_cap_then_redis, ledger_world_setup,
                                        ledger_world_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

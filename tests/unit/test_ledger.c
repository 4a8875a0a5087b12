/* Unit tests for tenancy/ledger: the spool line format, the de-duplicating Lua script, and
 * the ledger on a real redis-server started on a free loopback port in a temporary directory
 * (killed afterwards, tests/unit/ledger_world.h): live writes, the usage query, a graceful
 * stop. The spool's own tests are in test_ledger_spool.c. redis-server missing is a failure,
 * not a skip. The loop always runs in bounded steps under a deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/log.h"
#include "redis/keyspace.h"
#include "redis/redis.h"
#include "tenancy/ledger.h"
#include "tests/unit/harness.h"
#include "tests/unit/ledger_world.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ---- the line format ---------------------------------------------------------------------- */

static void test_line_round_trip(void **state)
{
    (void)state;
    struct ledger_entry e =
        ledger_world_entry("req-1", "team \"a\"\\b", "llama3:8b\tx\n", 17, 4, 0.000123);
    e.backend = "n\xc3\xa9ud";    /* é */
    e.cache = "bad\xff\xfe utf8"; /* invalid bytes become '?' */
    struct ledger_record r, back;
    /* The whole struct is compared with what parsing gives (which starts from zeroes): the
     * bytes past each field's NUL must be zeroes here too, not what the stack held. */
    memset(&r, 0, sizeof r);
    ledger_record_from_entry(&r, &e, "0123456789abcdef0123456789abcdef");
    assert_string_equal(r.cache, "bad?? utf8");
    assert_string_equal(r.cost_usd, "0.000123");
    assert_string_equal(r.latency_ms, "12.500");
    assert_string_equal(r.ts_ms, "1700000000000");
    char line[LEDGER_LINE_MAX + 1];
    int n = ledger_format_line(&r, line, sizeof line);
    assert_true(n > 0);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', (size_t)n - 1)); /* one line */
    json_t *doc = json_loadb(line, (size_t)n, 0, NULL);
    assert_non_null(doc); /* valid JSON */
    json_decref(doc);
    assert_int_equal(ledger_parse_line(line, (size_t)n, &back), 0);
    assert_memory_equal(&r, &back, sizeof r);
    assert_int_equal(ledger_parse_line(line, (size_t)n - 1, &back), 0); /* without '\n' */
    /* Every shorter prefix is refused. */
    for (int cut = 0; cut < n - 1; cut++)
        assert_int_equal(ledger_parse_line(line, (size_t)cut, &back), -1);
    /* Too small a buffer is refused, not truncated. */
    assert_int_equal(ledger_format_line(&r, line, 20), -1);
}

static void test_line_limits_and_bad_lines(void **state)
{
    (void)state;
    char model[700];
    for (int i = 0; i < 300; i++)
        memcpy(model + 2 * i, "\xc3\xa9", 2); /* 600 bytes of é */
    model[600] = '\0';
    struct ledger_entry e = ledger_world_entry(NULL, NULL, model, -5, 3, -1);
    e.cost_usd = 0.1 + 0.2;
    e.latency_ms = 1.0 / 0.0;
    struct ledger_record r;
    ledger_record_from_entry(&r, &e, "ffffffffffffffff0000000000000001");
    assert_int_equal(strlen(r.model), 256); /* cut at a character boundary */
    assert_string_equal(r.id, "");
    assert_string_equal(r.key, "");
    assert_string_equal(r.prompt_tokens, "0");
    assert_string_equal(r.latency_ms, "0.000");
    assert_string_equal(r.cost_usd, "0.3"); /* shortest decimal within 12 places */
    e.cost_usd = 12.5;
    ledger_record_from_entry(&r, &e, "ffffffffffffffff0000000000000001");
    assert_string_equal(r.cost_usd, "12.5");

    char line[LEDGER_LINE_MAX + 1];
    int n = ledger_format_line(&r, line, sizeof line);
    assert_true(n > 0);
    struct ledger_record back;
    assert_int_equal(ledger_parse_line(line, (size_t)n, &back), 0);

    static const char *const bad[] = {
        "",
        "\n",
        "[]",
        "not json",
        "{\"uid\":\"0123\"}",
        /* numbers where strings are expected */
        "{\"uid\":\"0123456789abcdef0123456789abcdef\",\"id\":\"\",\"key\":\"\",\"model\":\"\","
        "\"backend\":\"\",\"cache\":\"\",\"status\":200,\"prompt_tokens\":\"1\","
        "\"completion_tokens\":\"1\",\"cost_usd\":\"0\",\"latency_ms\":\"0\",\"ts_ms\":\"1\"}",
        /* a negative count: would be HINCRBY'd */
        "{\"uid\":\"0123456789abcdef0123456789abcdef\",\"id\":\"\",\"key\":\"\",\"model\":\"\","
        "\"backend\":\"\",\"cache\":\"\",\"status\":\"200\",\"prompt_tokens\":\"-1\","
        "\"completion_tokens\":\"1\",\"cost_usd\":\"0\",\"latency_ms\":\"0\",\"ts_ms\":\"1\"}",
        /* a cost in exponent form */
        "{\"uid\":\"0123456789abcdef0123456789abcdef\",\"id\":\"\",\"key\":\"\",\"model\":\"\","
        "\"backend\":\"\",\"cache\":\"\",\"status\":\"200\",\"prompt_tokens\":\"1\","
        "\"completion_tokens\":\"1\",\"cost_usd\":\"1e-5\",\"latency_ms\":\"0\",\"ts_ms\":\"1\"}",
        /* an uppercase uid */
        "{\"uid\":\"0123456789ABCDEF0123456789abcdef\",\"id\":\"\",\"key\":\"\",\"model\":\"\","
        "\"backend\":\"\",\"cache\":\"\",\"status\":\"200\",\"prompt_tokens\":\"1\","
        "\"completion_tokens\":\"1\",\"cost_usd\":\"0\",\"latency_ms\":\"0\",\"ts_ms\":\"1\"}",
        /* a NUL inside a name */
        "{\"uid\":\"0123456789abcdef0123456789abcdef\",\"id\":\"\",\"key\":\"a\\u0000b\","
        "\"model\":\"\",\"backend\":\"\",\"cache\":\"\",\"status\":\"200\",\"prompt_tokens\":\"1\","
        "\"completion_tokens\":\"1\",\"cost_usd\":\"0\",\"latency_ms\":\"0\",\"ts_ms\":\"1\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (ledger_parse_line(bad[i], strlen(bad[i]), &back) != -1)
            fail_msg("accepted bad line %zu: %s", i, bad[i]);
}

/* ---- the script --------------------------------------------------------------------------- */

static long long eval_record(const struct ledger_world *w, const struct ledger_record *r)
{
    struct ledger_args a;
    ledger_script_args(r, &a);
    const char *argv[3 + LEDGER_ARGC] = {"EVAL", ledger_lua, "4"};
    memcpy(argv + 3, a.argv, sizeof a.argv);
    redisReply *reply = ledger_world_cmd(w, 3 + LEDGER_ARGC, argv);
    assert_non_null(reply);
    if (reply->type != REDIS_REPLY_INTEGER)
        fail_msg("script answered type %d: %s", reply->type, reply->str ? reply->str : "");
    long long v = reply->integer;
    freeReplyObject(reply);
    return v;
}

static void test_script_dedup_and_sums(void **state)
{
    struct ledger_world *w = *state;
    struct ledger_record a, b;
    struct ledger_entry e = ledger_world_entry("req-a", "alice", "llama3:8b", 10, 5, 0.1);
    ledger_record_from_entry(&a, &e, "00000000000000000000000000000001");
    e = ledger_world_entry("req-b", "alice", "llama3:8b", 1, 2, 0.2);
    ledger_record_from_entry(&b, &e, "00000000000000000000000000000002");
    assert_int_equal(eval_record(w, &a), 1);
    assert_int_equal(eval_record(w, &a), 0); /* the same record again: not counted */
    assert_int_equal(eval_record(w, &b), 1);
    assert_int_equal(eval_record(w, &b), 0);
    assert_int_equal(ledger_world_xlen(w), 2);
    assert_int_equal(ledger_world_sum(w, "alice", "llama3:8b:requests"), 2);
    assert_int_equal(ledger_world_sum(w, "alice", "llama3:8b:prompt_tokens"), 11);
    assert_int_equal(ledger_world_sum(w, "alice", "llama3:8b:completion_tokens"), 7);
    /* The names spelled out: what Redis holds is part of the contract (redis/keyspace.h). */
    redisReply *r = ledger_world_cmd(
        w, 3, (const char *[]){"HGET", "tg:usage:sum:alice", "llama3:8b:cost_usd"});
    assert_non_null(r);
    assert_string_equal(r->str, "0.3");
    freeReplyObject(r);
    assert_int_equal(LEDGER_WORLD_INT(w, "SISMEMBER", "tg:usage:keys", "alice"), 1);
    long long ttl = LEDGER_WORLD_INT(w, "TTL", "tg:usage:seen:00000000000000000000000000000001");
    assert_true(ttl > LEDGER_SEEN_TTL_S - 10 && ttl <= LEDGER_SEEN_TTL_S);
    /* The stream entry holds every field. */
    r = ledger_world_cmd(w, 4, (const char *[]){"XRANGE", REDIS_KEY_USAGE, "-", "+"});
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    const redisReply *fields = r->element[0]->element[1];
    assert_int_equal(fields->elements, 30);
    assert_string_equal(fields->element[0]->str, "uid");
    assert_string_equal(fields->element[2]->str, "id");
    assert_string_equal(fields->element[3]->str, "req-a");
    assert_string_equal(fields->element[18]->str, "cost_usd");
    assert_string_equal(fields->element[19]->str, "0.1");
    assert_string_equal(fields->element[24]->str, "saved_usd");
    assert_string_equal(fields->element[25]->str, "0");
    assert_string_equal(fields->element[26]->str, "cached_tokens");
    assert_string_equal(fields->element[27]->str, "0");
    assert_string_equal(fields->element[28]->str, "estimated");
    assert_string_equal(fields->element[29]->str, "0");
    freeReplyObject(r);
}

/* ---- the ledger on a loop ----------------------------------------------------------------- */

static void test_live_writes(void **state)
{
    struct ledger_world *w = *state;
    /* A patient client: on a loaded machine (or under sanitizers) the default 50 ms deadline
     * can pass, and a late record is spooled, which this test is not about. */
    struct redis_options opt = {.url = w->url, .command_timeout_ms = 2000};
    struct redis_client *c = redis_client_new(w->h.loop, &opt);
    assert_non_null(c);
    if (!harness_run_until(&w->h, harness_client_available, c, 5))
        fail_msg("the client did not connect: %s", redis_client_errstr(c));
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "req-%d", i);
        struct ledger_entry e = ledger_world_entry(id, i % 2 ? "bob" : "alice", "m1", 10, 1, 0.01);
        ledger_record(l, &e);
    }
    struct ledger_world_want x = {.l = l, .written = 50};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));
    struct ledger_stats st = ledger_world_stats(l);
    assert_int_equal(st.written, 50);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(ledger_world_xlen(w), 50);
    assert_int_equal(ledger_world_sum(w, "alice", "m1:requests"), 25);
    assert_int_equal(ledger_world_sum(w, "bob", "m1:prompt_tokens"), 250);
    assert_int_equal(ledger_world_lines(w->spool), 0);
    ledger_free(l);
    redis_client_free(c);
}

static void test_usage_query(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry list[] = {
        ledger_world_entry("1", "alice", "m1", 10, 1, 0.1),
        ledger_world_entry("2", "alice", "m1", 20, 2, 0.2),
        ledger_world_entry("3", "alice", "llama3:8b", 5, 5, 1.5),
        ledger_world_entry("4", "bob", "m1", 1, 1, 0.000001),
    };
    for (size_t i = 0; i < 4; i++)
        ledger_record(l, &list[i]);
    struct ledger_world_want x = {.l = l, .written = 4};
    assert_true(harness_run_until(&w->h, ledger_world_reached, &x, 5));

    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.redis_url = w->url;
    struct ledger_usage_row *rows;
    size_t n;
    struct keys_error err;
    assert_int_equal(ledger_usage(&cfg, NULL, &rows, &n, &err), 0);
    assert_int_equal(n, 3);
    assert_string_equal(rows[0].key, "alice");
    assert_string_equal(rows[0].model, "llama3:8b");
    assert_int_equal(rows[0].requests, 1);
    assert_string_equal(rows[0].cost_usd, "1.5");
    assert_string_equal(rows[1].model, "m1");
    assert_int_equal(rows[1].requests, 2);
    assert_int_equal(rows[1].prompt_tokens, 30);
    assert_int_equal(rows[1].completion_tokens, 3);
    assert_string_equal(rows[1].cost_usd, "0.3");
    assert_string_equal(rows[2].key, "bob");
    size_t jl;
    char *text = ledger_usage_json(rows, n, &jl);
    assert_non_null(text);
    assert_non_null(strstr(text, "{\"object\":\"list\",\"data\":[{"));
    assert_non_null(strstr(text, "\"cost_usd\":0.3}"));
    if (!strstr(text, "\"cost_usd\":0.000001}")) /* base/usd.h: never an exponent */
        fail_msg("%s", text);
    free(text);
    free(rows);

    assert_int_equal(ledger_usage(&cfg, "bob", &rows, &n, &err), 0);
    assert_int_equal(n, 1);
    assert_string_equal(rows[0].key, "bob");
    free(rows);
    assert_int_equal(ledger_usage(&cfg, "nobody", &rows, &n, &err), 0);
    assert_int_equal(n, 0);
    assert_null(rows);

    cfg.redis_url = NULL;
    assert_int_equal(ledger_usage(&cfg, NULL, &rows, &n, &err), KEYS_EUNAVAIL);
    assert_int_equal(keys_error_status(&err), 503);
    ledger_free(l);
    redis_client_free(c);
}

static void test_new_bad_arguments(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, false);
    assert_null(ledger_new(w->h.loop, NULL, w->spool));
    assert_null(ledger_new(w->h.loop, c, ""));
    redis_client_free(c);
}

/* ---- a graceful stop: ledger_flush() ------------------------------------------------------ */

struct flushed {
    int calls;
    struct ledger_stats at; /* the counters when done was called */
    struct ledger *l;
};

static void on_flushed(void *ctx)
{
    struct flushed *f = ctx;
    f->calls++;
    ledger_stats(f->l, &f->at);
}

static bool flush_called(void *arg)
{
    return ((struct flushed *)arg)->calls > 0;
}

/* A stop right after the last requests: their records are still on their way to Redis. The
 * flush waits for the answers, so nothing is left to the spool and no file stays behind. */
static void test_flush_waits_for_answers(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "last-%d", i);
        struct ledger_entry e = ledger_world_entry(id, "gina", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    assert_int_equal(ledger_world_stats(l).inflight, 50);
    struct flushed f = {.l = l};
    ledger_flush(l, on_flushed, &f);
    assert_int_equal(f.calls, 0); /* the answers are not in yet */
    assert_true(harness_run_until(&w->h, flush_called, &f, 5));
    assert_int_equal(f.calls, 1);
    assert_int_equal(f.at.written, 50);
    assert_int_equal(f.at.inflight, 0);
    assert_int_equal(f.at.spooled, 0);
    ledger_free(l);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), -1); /* nothing waits: no spool left */
    assert_int_equal(ledger_world_xlen(w), 50);
    harness_run_until(&w->h, harness_never, NULL, 0.1);
    assert_int_equal(f.calls, 1); /* once */
    redis_client_free(c);
}

/* A spool of several replay batches (the records of an outage, or an adopted spool): the
 * flush waits until Redis has all of it, and the stop leaves no spool behind. */
static void test_flush_replays_the_spool(void **state)
{
    struct ledger_world *w = *state;
    ledger_world_spool_records(w->spool, "bb", 3 * LEDGER_REPLAY_BATCH + 7, false);
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct flushed f = {.l = l};
    ledger_flush(l, on_flushed, &f);
    assert_true(harness_run_until(&w->h, flush_called, &f, 10));
    assert_int_equal(f.at.replayed, 3 * LEDGER_REPLAY_BATCH + 7);
    assert_int_equal(f.at.spool_bytes, 0);
    assert_int_equal(ledger_world_xlen(w), 3 * LEDGER_REPLAY_BATCH + 7);
    ledger_free(l);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), -1);
    redis_client_free(c);
}

/* Redis gone: the flush does not wait for it. What Redis could not take is in the spool. */
static void test_flush_with_redis_down(void **state)
{
    struct ledger_world *w = *state;
    struct redis_client *c = ledger_world_client(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 5; i++) {
        struct ledger_entry e = ledger_world_entry("gone", "hank", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    struct flushed f = {.l = l};
    ledger_flush(l, on_flushed, &f);
    assert_true(harness_run_until(&w->h, flush_called, &f, 5));
    assert_int_equal(f.at.inflight, 0);
    assert_int_equal(f.at.spooled, 5);
    assert_int_equal(ledger_world_lines(w->spool), 5);
    /* Asked again with nothing in flight and Redis still away: at once. */
    f.calls = 0;
    ledger_flush(l, on_flushed, &f);
    assert_int_equal(f.calls, 1);
    ledger_free(l);
    assert_int_equal(ledger_world_lines(w->spool), 5); /* kept for the next start */
    redis_client_free(c);
}

int main(void)
{
    log_set_level(getenv("TEST_LEDGER_LOG") ? LOG_DEBUG : LOG_OFF);
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_round_trip),
        cmocka_unit_test(test_line_limits_and_bad_lines),
        cmocka_unit_test_setup_teardown(test_script_dedup_and_sums, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_live_writes, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_usage_query, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_new_bad_arguments, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_flush_waits_for_answers, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_flush_replays_the_spool, ledger_world_setup,
                                        ledger_world_teardown),
        cmocka_unit_test_setup_teardown(test_flush_with_redis_down, ledger_world_setup,
                                        ledger_world_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

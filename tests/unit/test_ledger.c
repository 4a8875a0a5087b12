/* Unit tests for tenancy/ledger: the spool line format, the de-duplicating Lua script, and
 * the ledger on a real redis-server started on a free loopback port in a temporary directory
 * (killed afterwards): live writes, spooling while Redis is down, replay on recovery exactly
 * once, the in-flight cap, and the usage query. redis-server missing is a failure, not a skip.
 * The loop always runs in bounded steps under a deadline. */
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

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

/* The test's world: one loop, one server (tests/unit/harness.h), the ledger's spool. */
struct world {
    struct harness_world h;
    struct harness_redis srv;
    char url[128];
    char spool[128];
};

static redisReply *side_cmd(const struct world *w, int argc, const char **argv)
{
    return harness_redis_command(&w->srv, argc, argv);
}

static long long side_int(const struct world *w, int argc, const char **argv)
{
    redisReply *r = side_cmd(w, argc, argv);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

#define SIDE_INT(w, ...) side_int((w), HARNESS_ARGV(__VA_ARGS__))

static int setup(void **state)
{
    struct world *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    *state = w;
    if (harness_redis_init(&w->srv, "ledger") == -1 || harness_world_init(&w->h) == -1)
        return -1;
    snprintf(w->spool, sizeof w->spool, "%s/ledger-0.spool", w->srv.dir);
    harness_redis_url(&w->srv, w->url, sizeof w->url);
    return harness_redis_start(&w->srv);
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

static bool is_available(void *arg)
{
    return redis_client_available(arg);
}

/* A client that reconnects and closes its breaker quickly, so recovery tests are short. */
static struct redis_client *client_new(struct world *w, bool wait_up)
{
    /* A generous command deadline: on a loaded machine, 1024 scripts in flight answered past
     * the default 50 ms would time out, open the breaker and come back as replays, and the
     * counts the tests expect (written, replayed) would depend on the machine's speed. */
    struct redis_options opt = {.url = w->url,
                                .command_timeout_ms = 2000,
                                .reconnect_min_ms = 20,
                                .reconnect_max_ms = 100,
                                .breaker_cooloff_ms = 100,
                                .breaker_cooloff_max_ms = 200};
    struct redis_client *c = redis_client_new(w->h.loop, &opt);
    assert_non_null(c);
    if (wait_up && !harness_run_until(&w->h, is_available, c, 5))
        fail_msg("the client did not connect: %s", redis_client_errstr(c));
    return c;
}

/* ---- waiting on counters ------------------------------------------------------------------ */

struct want {
    struct ledger *l;
    uint64_t written, replayed, duplicates, spool_bytes_max;
    bool check_spool;
};

static bool reached(void *arg)
{
    struct want *x = arg;
    struct ledger_stats st;
    ledger_stats(x->l, &st);
    return st.written >= x->written && st.replayed >= x->replayed &&
           st.duplicates >= x->duplicates && st.inflight == 0 &&
           (!x->check_spool || st.spool_bytes <= x->spool_bytes_max);
}

static struct ledger_stats stats_of(struct ledger *l)
{
    struct ledger_stats st;
    ledger_stats(l, &st);
    return st;
}

static struct ledger_entry entry(const char *id, const char *key, const char *model, long p, long c,
                                 double cost)
{
    return (struct ledger_entry){.request_id = id,
                                 .key = key,
                                 .model = model,
                                 .backend = "node-a",
                                 .cache = "miss",
                                 .status = 200,
                                 .prompt_tokens = p,
                                 .completion_tokens = c,
                                 .cost_usd = cost,
                                 .latency_ms = 12.5,
                                 .ts_ms = 1700000000000};
}

static long long file_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long long n = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF)
        n += ch == '\n';
    fclose(f);
    return n;
}

static char *file_read(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    char *buf = malloc(1 << 20);
    assert_non_null(buf);
    *len = fread(buf, 1, (1 << 20) - 1, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static void file_write(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

static long long stream_len(const struct world *w)
{
    return SIDE_INT(w, "XLEN", REDIS_KEY_USAGE);
}

static long long sum_field(const struct world *w, const char *key, const char *field)
{
    char hash[300];
    snprintf(hash, sizeof hash, REDIS_KEY_USAGE_SUM_PREFIX "%s", key);
    return SIDE_INT(w, "HGET", hash, field);
}

/* ---- the line format ---------------------------------------------------------------------- */

static void test_line_round_trip(void **state)
{
    (void)state;
    struct ledger_entry e = entry("req-1", "team \"a\"\\b", "llama3:8b\tx\n", 17, 4, 0.000123);
    e.backend = "n\xc3\xa9ud";    /* é */
    e.cache = "bad\xff\xfe utf8"; /* invalid bytes become '?' */
    struct ledger_record r, back;
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
    struct ledger_entry e = entry(NULL, NULL, model, -5, 3, -1);
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

static long long eval_record(const struct world *w, const struct ledger_record *r)
{
    struct ledger_args a;
    ledger_script_args(r, &a);
    const char *argv[3 + LEDGER_ARGC] = {"EVAL", ledger_lua, "4"};
    memcpy(argv + 3, a.argv, sizeof a.argv);
    redisReply *reply = side_cmd(w, 3 + LEDGER_ARGC, argv);
    assert_non_null(reply);
    if (reply->type != REDIS_REPLY_INTEGER)
        fail_msg("script answered type %d: %s", reply->type, reply->str ? reply->str : "");
    long long v = reply->integer;
    freeReplyObject(reply);
    return v;
}

static void test_script_dedup_and_sums(void **state)
{
    struct world *w = *state;
    struct ledger_record a, b;
    struct ledger_entry e = entry("req-a", "alice", "llama3:8b", 10, 5, 0.1);
    ledger_record_from_entry(&a, &e, "00000000000000000000000000000001");
    e = entry("req-b", "alice", "llama3:8b", 1, 2, 0.2);
    ledger_record_from_entry(&b, &e, "00000000000000000000000000000002");
    assert_int_equal(eval_record(w, &a), 1);
    assert_int_equal(eval_record(w, &a), 0); /* the same record again: not counted */
    assert_int_equal(eval_record(w, &b), 1);
    assert_int_equal(eval_record(w, &b), 0);
    assert_int_equal(stream_len(w), 2);
    assert_int_equal(sum_field(w, "alice", "llama3:8b:requests"), 2);
    assert_int_equal(sum_field(w, "alice", "llama3:8b:prompt_tokens"), 11);
    assert_int_equal(sum_field(w, "alice", "llama3:8b:completion_tokens"), 7);
    /* The names spelled out: what Redis holds is part of the contract (redis/keyspace.h). */
    redisReply *r =
        side_cmd(w, 3, (const char *[]){"HGET", "tg:usage:sum:alice", "llama3:8b:cost_usd"});
    assert_non_null(r);
    assert_string_equal(r->str, "0.3");
    freeReplyObject(r);
    assert_int_equal(SIDE_INT(w, "SISMEMBER", "tg:usage:keys", "alice"), 1);
    long long ttl = SIDE_INT(w, "TTL", "tg:usage:seen:00000000000000000000000000000001");
    assert_true(ttl > LEDGER_SEEN_TTL_S - 10 && ttl <= LEDGER_SEEN_TTL_S);
    /* The stream entry holds every field. */
    r = side_cmd(w, 4, (const char *[]){"XRANGE", REDIS_KEY_USAGE, "-", "+"});
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    assert_int_equal(r->elements, 2);
    const redisReply *fields = r->element[0]->element[1];
    assert_int_equal(fields->elements, 26);
    assert_string_equal(fields->element[0]->str, "uid");
    assert_string_equal(fields->element[2]->str, "id");
    assert_string_equal(fields->element[3]->str, "req-a");
    assert_string_equal(fields->element[18]->str, "cost_usd");
    assert_string_equal(fields->element[19]->str, "0.1");
    assert_string_equal(fields->element[24]->str, "saved_usd");
    assert_string_equal(fields->element[25]->str, "0");
    freeReplyObject(r);
}

/* ---- the ledger on a loop ----------------------------------------------------------------- */

static void test_live_writes(void **state)
{
    struct world *w = *state;
    /* A patient client: on a loaded machine (or under sanitizers) the default 50 ms deadline
     * can pass, and a late record is spooled, which this test is not about. */
    struct redis_options opt = {.url = w->url, .command_timeout_ms = 2000};
    struct redis_client *c = redis_client_new(w->h.loop, &opt);
    assert_non_null(c);
    if (!harness_run_until(&w->h, is_available, c, 5))
        fail_msg("the client did not connect: %s", redis_client_errstr(c));
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "req-%d", i);
        struct ledger_entry e = entry(id, i % 2 ? "bob" : "alice", "m1", 10, 1, 0.01);
        ledger_record(l, &e);
    }
    struct want x = {.l = l, .written = 50};
    assert_true(harness_run_until(&w->h, reached, &x, 5));
    struct ledger_stats st = stats_of(l);
    assert_int_equal(st.written, 50);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(stream_len(w), 50);
    assert_int_equal(sum_field(w, "alice", "m1:requests"), 25);
    assert_int_equal(sum_field(w, "bob", "m1:prompt_tokens"), 250);
    assert_int_equal(file_lines(w->spool), 0);
    ledger_free(l);
    redis_client_free(c);
}

static void test_down_spooled_then_replayed_once(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry e = entry("before", "alice", "m1", 1, 1, 0.5);
    ledger_record(l, &e);
    struct want x = {.l = l, .written = 1};
    assert_true(harness_run_until(&w->h, reached, &x, 5));

    harness_redis_kill(&w->srv);
    /* Records while Redis is down: sent ones fail and are spooled, later ones are spooled at
     * once (not available); none waits. */
    double t0 = harness_now_s();
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "down-%d", i);
        e = entry(id, "alice", "m1", 2, 3, 0.25);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    assert_true(harness_now_s() - t0 < 2);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = stats_of(l);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.spooled, 20);
    assert_int_equal(file_lines(w->spool), 20);
    assert_true(st.spool_bytes > 0);

    assert_int_equal(harness_redis_start(&w->srv), 0);
    x = (struct want){.l = l, .written = 1, .replayed = 20, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    st = stats_of(l);
    assert_int_equal(st.replayed, 20);
    assert_int_equal(st.duplicates, 0);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.spool_bytes, 0);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), 0);
    assert_int_equal(sb.st_size, 0); /* truncated once acknowledged */
    /* The restarted server lost "before" (no persistence here); the 20 are there once. */
    assert_int_equal(stream_len(w), 20);
    assert_int_equal(sum_field(w, "alice", "m1:requests"), 20);
    assert_int_equal(sum_field(w, "alice", "m1:completion_tokens"), 60);
    /* Nothing more comes with time. */
    harness_run_until(&w->h, harness_never, NULL, 1.3);
    assert_int_equal(stream_len(w), 20);
    ledger_free(l);
    redis_client_free(c);
}

/* Spools left by runs that are gone (another port, more workers) are adopted: their whole
 * lines are replayed by the new ledger and the files removed; a spool a live ledger holds is
 * left alone; a line cut by a crash is not copied. */
static void write_records(const char *path, const char *prefix, int n, bool cut_tail)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        char id[32], uid[33], line[LEDGER_LINE_MAX + 1];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(uid, sizeof uid, "%s%030d", prefix, i);
        struct ledger_entry e = entry(id, "orphan-key", "m1", 1, 2, 0.5);
        struct ledger_record r;
        ledger_record_from_entry(&r, &e, uid);
        assert_true(ledger_format_line(&r, line, sizeof line) > 0);
        fputs(line, f);
    }
    if (cut_tail)
        fputs("{\"uid\":\"ffff", f);
    fclose(f);
}

static void test_orphaned_spools_adopted(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    char held[700], orphan[700], lock[720];
    snprintf(held, sizeof held, "%s/" LEDGER_SPOOL_PREFIX "7-0" LEDGER_SPOOL_SUFFIX, w->srv.dir);
    snprintf(orphan, sizeof orphan, "%s/" LEDGER_SPOOL_PREFIX "9-3" LEDGER_SPOOL_SUFFIX,
             w->srv.dir);
    struct ledger *live = ledger_new(w->h.loop, c, held); /* holds its spool's lock */
    assert_non_null(live);
    write_records(orphan, "aa", 3, true);

    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct stat sb;
    assert_int_equal(stat(orphan, &sb), -1); /* adopted and removed */
    snprintf(lock, sizeof lock, "%s.lock", orphan);
    assert_int_equal(stat(lock, &sb), -1);
    assert_int_equal(stat(held, &sb), 0);      /* a live ledger's: untouched */
    assert_int_equal(file_lines(w->spool), 3); /* the cut line was left behind */
    struct want x = {.l = l, .replayed = 3, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    assert_int_equal(stream_len(w), 3);
    assert_int_equal(sum_field(w, "orphan-key", "m1:requests"), 3);

    /* Adopting the same records again (an interrupted adoption) counts nothing twice. */
    write_records(orphan, "aa", 3, false);
    ledger_free(l);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    x = (struct want){.l = l, .duplicates = 3, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    assert_int_equal(stream_len(w), 3);

    /* A ledger that ends with nothing waiting leaves no file behind. */
    ledger_free(l);
    assert_int_equal(stat(w->spool, &sb), -1);
    ledger_free(live);
    assert_int_equal(stat(held, &sb), -1);
    redis_client_free(c);
}

static void test_same_spool_twice_counts_once(void **state)
{
    struct world *w = *state;
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
        struct ledger_entry e = entry(id, "carol", "m2", 100, 10, 0.001);
        ledger_record(l, &e);
    }
    assert_int_equal(stats_of(l).spooled, 5);
    ledger_free(l);
    redis_client_free(down);
    size_t len;
    char *copy = file_read(w->spool, &len);
    assert_int_equal(file_lines(w->spool), 5);

    /* A new ledger (a restart) replays what it finds. */
    struct redis_client *c = client_new(w, true);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct want x = {.l = l, .replayed = 5, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 5));
    ledger_free(l);

    /* The same lines again (say the truncation was lost): all duplicates. */
    file_write(w->spool, copy, len);
    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    x = (struct want){.l = l, .duplicates = 5, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 5));
    assert_int_equal(stats_of(l).replayed, 0);
    assert_int_equal(stream_len(w), 5);
    assert_int_equal(sum_field(w, "carol", "m2:requests"), 5);
    assert_int_equal(sum_field(w, "carol", "m2:prompt_tokens"), 500);
    ledger_free(l);
    redis_client_free(c);
    free(copy);
}

/* Sent, then the ledger ends before the answer: the records are spooled as well as (probably)
 * written; the replay counts each once. */
static void test_ack_lost_then_replayed(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "q-%d", i);
        struct ledger_entry e = entry(id, "dave", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    assert_int_equal(stats_of(l).inflight, 10);
    ledger_free(l); /* before the answers: its memory waits for them */
    assert_int_equal(file_lines(w->spool), 10);
    harness_run_until(&w->h, harness_never, NULL, 0.3); /* the answers come and free it */

    l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct want x = {.l = l, .check_spool = true};
    x.duplicates = 10;
    assert_true(harness_run_until(&w->h, reached, &x, 5));
    struct ledger_stats st = stats_of(l);
    assert_int_equal(st.duplicates + st.replayed, 10);
    assert_int_equal(stream_len(w), 10);
    assert_int_equal(sum_field(w, "dave", "m1:requests"), 10);
    ledger_free(l);
    redis_client_free(c);
}

/* The client freed first (the worker's order may be either): the answers come as
 * ENOTCONN inside redis_client_free() and the records are spooled then. */
static void test_client_freed_first(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry e = entry("z", "erin", "m1", 1, 1, 0.5);
    ledger_record(l, &e);
    ledger_record(l, &e);
    redis_client_free(c);
    assert_int_equal(stats_of(l).spooled, 2);
    ledger_free(l);
    assert_int_equal(file_lines(w->spool), 2);
}

static void test_inflight_cap_and_corrupt_lines(void **state)
{
    struct world *w = *state;
    /* A spool left by a crash: a good line, a corrupt one, and a line cut short. */
    struct ledger_record r;
    struct ledger_entry e = entry("old", "frank", "m1", 1, 1, 1);
    ledger_record_from_entry(&r, &e, "abcdefabcdefabcdefabcdefabcdef01");
    char line[LEDGER_LINE_MAX + 1];
    int n = ledger_format_line(&r, line, sizeof line);
    char content[3 * LEDGER_LINE_MAX];
    int len = snprintf(content, sizeof content, "%s{\"garbage\":1}\n%.*s", line, n / 2, line);
    file_write(w->spool, content, (size_t)len);

    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    unsigned total = LEDGER_INFLIGHT_MAX + 50;
    for (unsigned i = 0; i < total; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-%u", i);
        e = entry(id, "frank", "m1", 1, 0, 0);
        ledger_record(l, &e);
    }
    struct ledger_stats st = stats_of(l);
    assert_int_equal(st.inflight, LEDGER_INFLIGHT_MAX);
    assert_int_equal(st.spooled, 50); /* past the cap: straight to the spool */
    struct want x = {.l = l, .written = LEDGER_INFLIGHT_MAX, .replayed = 51, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    st = stats_of(l);
    assert_int_equal(st.dropped, 2); /* the corrupt line and the cut one */
    assert_int_equal(stream_len(w), total + 1);
    assert_int_equal(sum_field(w, "frank", "m1:requests"), total + 1);
    ledger_free(l);
    redis_client_free(c);
}

static void test_usage_query(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct ledger_entry list[] = {
        entry("1", "alice", "m1", 10, 1, 0.1),
        entry("2", "alice", "m1", 20, 2, 0.2),
        entry("3", "alice", "llama3:8b", 5, 5, 1.5),
        entry("4", "bob", "m1", 1, 1, 0.000001),
    };
    for (size_t i = 0; i < 4; i++)
        ledger_record(l, &list[i]);
    struct want x = {.l = l, .written = 4};
    assert_true(harness_run_until(&w->h, reached, &x, 5));

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
    if (!strstr(text, "\"cost_usd\":1e-6}"))
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
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof id, "last-%d", i);
        struct ledger_entry e = entry(id, "gina", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    assert_int_equal(stats_of(l).inflight, 50);
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
    assert_int_equal(stream_len(w), 50);
    harness_run_until(&w->h, harness_never, NULL, 0.1);
    assert_int_equal(f.calls, 1); /* once */
    redis_client_free(c);
}

/* A spool of several replay batches (the records of an outage, or an adopted spool): the
 * flush waits until Redis has all of it, and the stop leaves no spool behind. */
static void test_flush_replays_the_spool(void **state)
{
    struct world *w = *state;
    write_records(w->spool, "bb", 3 * LEDGER_REPLAY_BATCH + 7, false);
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    struct flushed f = {.l = l};
    ledger_flush(l, on_flushed, &f);
    assert_true(harness_run_until(&w->h, flush_called, &f, 10));
    assert_int_equal(f.at.replayed, 3 * LEDGER_REPLAY_BATCH + 7);
    assert_int_equal(f.at.spool_bytes, 0);
    assert_int_equal(stream_len(w), 3 * LEDGER_REPLAY_BATCH + 7);
    ledger_free(l);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), -1);
    redis_client_free(c);
}

/* Redis gone: the flush does not wait for it. What Redis could not take is in the spool. */
static void test_flush_with_redis_down(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 5; i++) {
        struct ledger_entry e = entry("gone", "hank", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
    }
    struct flushed f = {.l = l};
    ledger_flush(l, on_flushed, &f);
    assert_true(harness_run_until(&w->h, flush_called, &f, 5));
    assert_int_equal(f.at.inflight, 0);
    assert_int_equal(f.at.spooled, 5);
    assert_int_equal(file_lines(w->spool), 5);
    /* Asked again with nothing in flight and Redis still away: at once. */
    f.calls = 0;
    ledger_flush(l, on_flushed, &f);
    assert_int_equal(f.calls, 1);
    ledger_free(l);
    assert_int_equal(file_lines(w->spool), 5); /* kept for the next start */
    redis_client_free(c);
}

/* ---- a spool that cannot take records: held in memory ---------------------------------- */

/* The spool's disk is full (a file size limit makes write(2) fail with EFBIG, as ENOSPC
 * would), Redis is down: records are held in memory, none dropped; once the disk has room
 * they go to the spool, and from there to Redis. */
static void test_disk_full_held_then_spooled(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
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
        struct ledger_entry e = entry(id, "ivy", "m1", 1, 2, 0.25);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 1.2); /* a replay tick: still full */
    struct ledger_stats st = stats_of(l);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &saved), 0);
    assert_int_equal(st.held, 10);
    assert_true(st.held_bytes > 10 * 200);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(file_lines(w->spool), 0);

    /* Room on the disk again: the next tick writes them to the spool. */
    harness_run_until(&w->h, harness_never, NULL, 1.2);
    st = stats_of(l);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.held_bytes, 0);
    assert_int_equal(st.spooled, 10);
    assert_int_equal(file_lines(w->spool), 10);

    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct want x = {.l = l, .replayed = 10, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    assert_int_equal(stream_len(w), 10);
    assert_int_equal(sum_field(w, "ivy", "m1:completion_tokens"), 20);
    ledger_free(l);
    redis_client_free(c);
}

/* The spool's own cap (spool_max_bytes: an emptyDir's sizeLimit is below the disk's size):
 * past it records wait in memory, and Redis takes both kinds once it is back. */
static void test_spool_cap_then_held(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    ledger_set_limits(l, 1000, 1 << 20); /* two or three lines */
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 10; i++) {
        char id[32];
        snprintf(id, sizeof id, "capped-%d", i);
        struct ledger_entry e = entry(id, "kate", "m1", 1, 1, 0.5);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = stats_of(l);
    assert_true(st.spooled > 0);
    assert_true(st.spool_bytes <= 1000);
    assert_int_equal(st.spooled + st.held, 10);
    assert_int_equal(st.dropped, 0);
    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct want x = {.l = l, .replayed = 10, .check_spool = true};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    assert_int_equal(stats_of(l).held, 0);
    assert_int_equal(stream_len(w), 10);
    ledger_free(l);
    redis_client_free(c);
}

/* A spool that never takes anything (/dev/full: ENOSPC), Redis down: records are held up to
 * the cap, the rest dropped and counted; when Redis is back it takes the held ones. */
static void test_disk_full_cap_then_redis(void **state)
{
    struct world *w = *state;
    assert_int_equal(symlink("/dev/full", w->spool), 0);
    struct redis_client *c = client_new(w, true);
    struct ledger *l = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(l);
    ledger_set_limits(l, LEDGER_SPOOL_MAX, 3000); /* a handful of records */
    harness_redis_kill(&w->srv);
    for (int i = 0; i < 20; i++) {
        char id[32];
        snprintf(id, sizeof id, "cap-%d", i);
        struct ledger_entry e = entry(id, "jack", "m1", 1, 1, 0.125);
        ledger_record(l, &e);
        harness_run_until(&w->h, harness_never, NULL, 0.01);
    }
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = stats_of(l);
    assert_int_equal(st.inflight, 0);
    assert_true(st.held > 0);
    assert_true(st.held_bytes <= 3000);
    assert_int_equal(st.held + st.dropped, 20);
    assert_int_equal(st.spooled, 0);
    uint64_t held = st.held;

    assert_int_equal(harness_redis_start(&w->srv), 0);
    struct want x = {.l = l, .replayed = held};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    st = stats_of(l);
    assert_int_equal(st.held, 0);
    assert_int_equal(st.held_bytes, 0);
    assert_int_equal(st.dropped, 20 - held);
    assert_int_equal(stream_len(w), (long long)held);

    /* Held at the stop, with the disk still full: lost, and the ledger frees them. */
    harness_redis_kill(&w->srv);
    struct ledger_entry e = entry("at-stop", "jack", "m1", 1, 1, 0.125);
    ledger_record(l, &e);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    assert_int_equal(stats_of(l).held, 1);
    ledger_free(l);
    redis_client_free(c);
}

static void test_new_bad_arguments(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, false);
    assert_null(ledger_new(w->h.loop, NULL, w->spool));
    assert_null(ledger_new(w->h.loop, c, ""));
    redis_client_free(c);
}

/* A spool that cannot be used (no such directory; the lock another ledger holds) leaves a
 * ledger all the same: records go to Redis, and while it is down they are held in memory. */
static void test_without_a_spool(void **state)
{
    struct world *w = *state;
    struct redis_client *c = client_new(w, true);
    struct ledger *nodir = ledger_new(w->h.loop, c, "/nonexistent-dir/ledger.spool");
    assert_non_null(nodir);
    struct ledger *first = ledger_new(w->h.loop, c, w->spool);
    assert_non_null(first);
    struct ledger *second = ledger_new(w->h.loop, c, w->spool); /* its lock is taken */
    assert_non_null(second);
    struct ledger_entry e = entry("nospool", "liam", "m1", 1, 1, 0.5);
    ledger_record(nodir, &e);
    ledger_record(second, &e);
    struct want x = {.l = second, .written = 1};
    assert_true(harness_run_until(&w->h, reached, &x, 5));
    x.l = nodir;
    assert_true(harness_run_until(&w->h, reached, &x, 5));

    harness_redis_kill(&w->srv);
    ledger_record(second, &e);
    harness_run_until(&w->h, harness_never, NULL, 0.2);
    struct ledger_stats st = stats_of(second);
    assert_int_equal(st.held, 1);
    assert_int_equal(st.spooled, 0);
    assert_int_equal(file_lines(w->spool), 0); /* the first ledger's file: untouched */
    assert_int_equal(harness_redis_start(&w->srv), 0);
    x = (struct want){.l = second, .written = 1, .replayed = 1};
    assert_true(harness_run_until(&w->h, reached, &x, 10));
    assert_int_equal(stats_of(second).held, 0);
    assert_int_equal(stream_len(w), 1); /* the restarted server has the held one */
    ledger_free(second);
    ledger_free(nodir);
    struct stat sb;
    assert_int_equal(stat(w->spool, &sb), 0); /* still the first one's */
    ledger_free(first);
    redis_client_free(c);
}

int main(void)
{
    log_set_level(getenv("TEST_LEDGER_LOG") ? LOG_DEBUG : LOG_OFF);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN); /* a file size limit stands for a full disk: EFBIG, not a kill */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_line_round_trip),
        cmocka_unit_test(test_line_limits_and_bad_lines),
        cmocka_unit_test_setup_teardown(test_script_dedup_and_sums, setup, teardown),
        cmocka_unit_test_setup_teardown(test_live_writes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_down_spooled_then_replayed_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_same_spool_twice_counts_once, setup, teardown),
        cmocka_unit_test_setup_teardown(test_orphaned_spools_adopted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ack_lost_then_replayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_freed_first, setup, teardown),
        cmocka_unit_test_setup_teardown(test_inflight_cap_and_corrupt_lines, setup, teardown),
        cmocka_unit_test_setup_teardown(test_usage_query, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_bad_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(test_without_a_spool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_waits_for_answers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_replays_the_spool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush_with_redis_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_held_then_spooled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_cap_then_held, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_cap_then_redis, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

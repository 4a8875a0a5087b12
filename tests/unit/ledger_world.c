/* The ledger tests' world (tests/unit/ledger_world.h). */
#include "tests/unit/ledger_world.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "redis/keyspace.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

redisReply *ledger_world_cmd(const struct ledger_world *w, int argc, const char **argv)
{
    return harness_redis_command(&w->srv, argc, argv);
}

long long ledger_world_int(const struct ledger_world *w, int argc, const char **argv)
{
    redisReply *r = ledger_world_cmd(w, argc, argv);
    assert_non_null(r);
    long long v = r->type == REDIS_REPLY_INTEGER  ? r->integer
                  : r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10)
                                                  : -1;
    freeReplyObject(r);
    return v;
}

int ledger_world_setup(void **state)
{
    struct ledger_world *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    *state = w;
    if (harness_redis_init(&w->srv, "ledger") == -1 || harness_world_init(&w->h) == -1)
        return -1;
    snprintf(w->spool, sizeof w->spool, "%s/ledger-0.spool", w->srv.dir);
    harness_redis_url(&w->srv, w->url, sizeof w->url);
    return harness_redis_start(&w->srv);
}

int ledger_world_teardown(void **state)
{
    struct ledger_world *w = *state;
    if (!w)
        return 0;
    harness_redis_cleanup(&w->srv);
    harness_world_fini(&w->h);
    free(w);
    return 0;
}

/* A client that reconnects and closes its breaker quickly, so recovery tests are short. */
struct redis_client *ledger_world_client(struct ledger_world *w, bool wait_up)
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
    if (wait_up && !harness_run_until(&w->h, harness_client_available, c, 5))
        fail_msg("the client did not connect: %s", redis_client_errstr(c));
    return c;
}

bool ledger_world_reached(void *arg)
{
    struct ledger_world_want *x = arg;
    struct ledger_stats st;
    ledger_stats(x->l, &st);
    return st.written >= x->written && st.replayed >= x->replayed &&
           st.duplicates >= x->duplicates && st.inflight == 0 &&
           (!x->check_spool || st.spool_bytes <= x->spool_bytes_max);
}

struct ledger_stats ledger_world_stats(struct ledger *l)
{
    struct ledger_stats st;
    ledger_stats(l, &st);
    return st;
}

struct ledger_entry ledger_world_entry(const char *id, const char *key, const char *model, long p,
                                       long c, double cost)
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

long long ledger_world_lines(const char *path)
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

char *ledger_world_read(const char *path, size_t *len)
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

void ledger_world_write(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

long long ledger_world_xlen(const struct ledger_world *w)
{
    return LEDGER_WORLD_INT(w, "XLEN", REDIS_KEY_USAGE);
}

long long ledger_world_sum(const struct ledger_world *w, const char *key, const char *field)
{
    char hash[300];
    snprintf(hash, sizeof hash, REDIS_KEY_USAGE_SUM_PREFIX "%s", key);
    return LEDGER_WORLD_INT(w, "HGET", hash, field);
}

void ledger_world_spool_records(const char *path, const char *prefix, int n, bool cut_tail)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < n; i++) {
        char id[32], uid[33], line[LEDGER_LINE_MAX + 1];
        snprintf(id, sizeof id, "%s-%d", prefix, i);
        snprintf(uid, sizeof uid, "%s%030d", prefix, i);
        struct ledger_entry e = ledger_world_entry(id, "orphan-key", "m1", 1, 2, 0.5);
        struct ledger_record r;
        ledger_record_from_entry(&r, &e, uid);
        assert_true(ledger_format_line(&r, line, sizeof line) > 0);
        fputs(line, f);
    }
    if (cut_tail)
        fputs("{\"uid\":\"ffff", f);
    fclose(f);
}

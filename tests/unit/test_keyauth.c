/* Unit tests for tenancy/keyauth: resolving a presented key's digest. From the worker's key
 * cache (fresh, stale, negative, expired entries; revocations), and from a real redis-server
 * (tests/unit/harness.h) holding tg:key:<sha256 hex> records: every field read, records that
 * are not keys, the answer cached either way, stale entries fetched again while Redis is
 * reachable and kept while it is not or when the fetch fails, and a cancelled lookup. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/buf.h"
#include "base/clock.h"
#include "redis/keyspace.h"
#include "redis/redis.h"
#include "tenancy/keyauth.h"
#include "tenancy/keycache.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TTL_MS 60000
#define NEGATIVE_TTL_MS 5000

static void digest_of(unsigned char d[32], unsigned char tag)
{
    for (int i = 0; i < 32; i++)
        d[i] = (unsigned char)(tag + 7 * i);
}

static void hex_of(const unsigned char d[32], char hex[65])
{
    buf_hex(d, 32, hex);
}

/* Puts an entry `age_ms` old into the cache. */
static void put(struct keycache *c, unsigned char tag, bool known, const char *name,
                int64_t expires_at, int64_t age_ms)
{
    struct keycache_entry e = {0};
    digest_of(e.digest, tag);
    e.known = known;
    snprintf(e.name, sizeof e.name, "%s", name);
    e.expires_at = expires_at;
    e.rpm = 7;
    e.fetched_ms = clock_mono_ms() - age_ms;
    assert_int_equal(keycache_put(c, &e), 0);
}

struct answer {
    int calls;
    enum keyauth_result result;
    struct keycache_entry e; /* copied during the call (models not kept) */
    char models[64];         /* the NUL-separated list, "\1" for NULL */
};

static void on_answer(void *ctx, enum keyauth_result result, const struct keycache_entry *e)
{
    struct answer *a = ctx;
    a->calls++;
    a->result = result;
    if (e) {
        a->e = *e;
        a->e.models = NULL;
        if (!e->models) {
            strcpy(a->models, "\1");
        } else {
            size_t n = 0;
            while (e->models[n] && n < sizeof a->models - 2)
                n += strlen(e->models + n) + 1;
            memcpy(a->models, e->models, n + 1);
        }
    }
}

/* Resolved from the cache alone, with no Redis: must not be PENDING. */
static enum keyauth_result resolve_now(struct keycache *c, struct redis_client *r,
                                       unsigned char tag, const struct keycache_entry **out)
{
    unsigned char d[32];
    digest_of(d, tag);
    struct keyauth_lookup *pending = NULL;
    struct answer a = {0};
    *out = NULL;
    enum keyauth_result res = keyauth_resolve(c, r, d, on_answer, &a, &pending, out);
    assert_int_not_equal(res, KEYAUTH_PENDING);
    assert_null(pending);
    assert_int_equal(a.calls, 0);
    return res;
}

/* ---- from the cache ---------------------------------------------------------------------- */

static void test_cached_entries(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(16, TTL_MS, NEGATIVE_TTL_MS);
    const struct keycache_entry *e;
    int64_t now_s = (int64_t)time(NULL);
    put(c, 1, true, "alice", 0, 0);
    put(c, 2, false, "", 0, 0);
    put(c, 3, true, "bob", now_s - 1, 0);
    put(c, 4, true, "carol", now_s + 3600, 0);

    assert_int_equal(resolve_now(c, NULL, 1, &e), KEYAUTH_OK);
    assert_non_null(e);
    assert_string_equal(e->name, "alice");
    assert_int_equal(e->rpm, 7);
    assert_int_equal(resolve_now(c, NULL, 2, &e), KEYAUTH_UNKNOWN);
    assert_null(e);
    assert_int_equal(resolve_now(c, NULL, 3, &e), KEYAUTH_EXPIRED);
    assert_null(e);
    assert_int_equal(resolve_now(c, NULL, 4, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "carol");
    /* Not cached and no Redis: nobody can say. */
    assert_int_equal(resolve_now(c, NULL, 5, &e), KEYAUTH_UNAVAILABLE);
    assert_null(e);
    keycache_free(c);
}

/* Redis out of reach: keys seen before keep working past their cache time (expired ones stay
 * refused); a refusal past its (short) cache time is no longer an answer: the key may have
 * been created since, so it cannot be checked, which is not a 401. */
static void test_stale_entries_without_redis(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(16, TTL_MS, NEGATIVE_TTL_MS);
    const struct keycache_entry *e;
    put(c, 1, true, "old-alice", 0, TTL_MS + 1);
    put(c, 2, false, "", 0, NEGATIVE_TTL_MS + 1);
    put(c, 3, true, "old-bob", (int64_t)time(NULL) - 1, TTL_MS + 1);
    put(c, 4, false, "", 0, 0);
    assert_int_equal(resolve_now(c, NULL, 1, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "old-alice");
    assert_int_equal(resolve_now(c, NULL, 2, &e), KEYAUTH_UNAVAILABLE);
    assert_null(e);
    assert_int_equal(resolve_now(c, NULL, 3, &e), KEYAUTH_EXPIRED);
    assert_int_equal(resolve_now(c, NULL, 4, &e), KEYAUTH_UNKNOWN); /* a fresh refusal holds */
    keycache_free(c);
}

/* After a reconnect the cache is made stale, not emptied: every key is fetched again while
 * Redis answers, and still works if Redis goes away again before it was. */
static void test_cleared_cache_is_the_outage_fallback(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(16, TTL_MS, NEGATIVE_TTL_MS);
    const struct keycache_entry *e;
    put(c, 1, true, "alice", 0, 0);
    put(c, 2, false, "", 0, 0);
    keycache_clear(c);
    unsigned char d[32];
    digest_of(d, 1);
    assert_null(keycache_get(c, d, clock_mono_ms(), false)); /* fetched again first */
    assert_int_equal(resolve_now(c, NULL, 1, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "alice");
    assert_int_equal(resolve_now(c, NULL, 2, &e), KEYAUTH_UNAVAILABLE);
    put(c, 1, true, "alice-again", 0, 0); /* a fresh answer is fresh again */
    assert_non_null(keycache_get(c, d, clock_mono_ms(), false));
    keycache_free(c);
}

/* A revocation message (hex digest, either case) evicts at once; anything else is ignored. */
static void test_revoked(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(16, TTL_MS, NEGATIVE_TTL_MS);
    const struct keycache_entry *e;
    unsigned char d[32];
    char hex[65];
    put(c, 1, true, "alice", 0, 0);
    put(c, 2, true, "bob", 0, 0);
    digest_of(d, 1);
    hex_of(d, hex);
    keyauth_revoked(c, hex, 63);
    char longer[66];
    snprintf(longer, sizeof longer, "%s0", hex);
    keyauth_revoked(c, longer, 65);
    char bad[65];
    memcpy(bad, hex, sizeof bad);
    bad[10] = 'g';
    keyauth_revoked(c, bad, 64);
    assert_int_equal(keycache_size(c), 2);
    assert_int_equal(resolve_now(c, NULL, 1, &e), KEYAUTH_OK);
    keyauth_revoked(c, hex, 64);
    assert_int_equal(keycache_size(c), 1);
    assert_int_equal(resolve_now(c, NULL, 1, &e), KEYAUTH_UNAVAILABLE);
    assert_int_equal(resolve_now(c, NULL, 2, &e), KEYAUTH_OK);
    digest_of(d, 2);
    hex_of(d, hex);
    for (char *p = hex; *p; p++)
        if (*p >= 'a' && *p <= 'f')
            *p = (char)(*p - 'a' + 'A');
    keyauth_revoked(c, hex, 64);
    assert_int_equal(keycache_size(c), 0);
    keycache_free(c);
}

/* ---- from Redis -------------------------------------------------------------------------- */

struct world {
    struct harness_env *env; /* a loop and a throwaway redis-server */
    struct redis_client *c;
    struct keycache *cache;
};

static int setup(void **state)
{
    struct world *w = calloc(1, sizeof *w);
    if (!w)
        return -1;
    *state = w;
    if (harness_env_new(&w->env, "keyauth", NULL, false) == -1)
        return -1;
    w->c = harness_client_new(w->env, &(struct redis_options){0});
    w->cache = keycache_new(16, TTL_MS, NEGATIVE_TTL_MS);
    return w->cache ? 0 : -1;
}

static int teardown(void **state)
{
    struct world *w = *state;
    if (!w)
        return 0;
    redis_client_free(w->c);
    keycache_free(w->cache);
    harness_env_free(w->env);
    free(w);
    return 0;
}

/* HSET tg:key:<hex of tag> field value ... (NULL-terminated pairs). */
static void store(struct world *w, unsigned char tag, ...)
{
    unsigned char d[32];
    char key[sizeof REDIS_KEY_KEY_PREFIX + 64];
    digest_of(d, tag);
    memcpy(key, REDIS_KEY_KEY_PREFIX, sizeof REDIS_KEY_KEY_PREFIX - 1);
    hex_of(d, key + sizeof REDIS_KEY_KEY_PREFIX - 1);
    const char *argv[32] = {"DEL", key};
    redisReply *r = harness_redis_command(&w->env->srv, 2, argv);
    assert_non_null(r);
    freeReplyObject(r);
    argv[0] = "HSET";
    int argc = 2;
    va_list ap;
    va_start(ap, tag);
    for (const char *s; (s = va_arg(ap, const char *)) && argc < 32;)
        argv[argc++] = s;
    va_end(ap);
    if (argc == 2)
        return; /* DEL only */
    r = harness_redis_command(&w->env->srv, argc, argv);
    assert_non_null(r);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    freeReplyObject(r);
}

static bool answered(void *arg)
{
    return ((struct answer *)arg)->calls > 0;
}

/* A lookup that must go to Redis; returns the answer. */
static struct answer resolve_later(struct world *w, unsigned char tag)
{
    unsigned char d[32];
    digest_of(d, tag);
    struct keyauth_lookup *pending = NULL;
    const struct keycache_entry *e = NULL;
    struct answer a = {0};
    assert_int_equal(keyauth_resolve(w->cache, w->c, d, on_answer, &a, &pending, &e),
                     KEYAUTH_PENDING);
    assert_non_null(pending);
    assert_null(e);
    assert_int_equal(a.calls, 0);
    assert_true(harness_run_until(&w->env->h, answered, &a, 5));
    harness_run_for(&w->env->h, 0.01);
    assert_int_equal(a.calls, 1);
    return a;
}

static void test_redis_record(void **state)
{
    struct world *w = *state;
    long long expires_at = (long long)time(NULL) + 3600;
    char expires[32];
    snprintf(expires, sizeof expires, "%lld", expires_at);
    store(w, 1, "name", "dana", "models", "[\"m1\",\"m-2\"]", "rpm", "60", "tpm", "5000",
          "budget_usd", "2.5", "expires_at", expires, "created_at", "1700000000", NULL);
    struct answer a = resolve_later(w, 1);
    assert_int_equal(a.result, KEYAUTH_OK);
    assert_true(a.e.known);
    assert_string_equal(a.e.name, "dana");
    assert_memory_equal(a.models, "m1\0m-2\0", 8);
    assert_int_equal(a.e.rpm, 60);
    assert_int_equal(a.e.tpm, 5000);
    assert_float_equal(a.e.budget_usd, 2.5, 0);
    assert_int_equal(a.e.expires_at, expires_at);
    assert_true(a.e.metric_key > 0);
    /* Cached now: answered at once, even with the record gone from Redis. */
    store(w, 1, NULL);
    const struct keycache_entry *e;
    assert_int_equal(resolve_now(w->cache, w->c, 1, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "dana");
    assert_true(keycache_allows(e->models, "m-2"));
    assert_false(keycache_allows(e->models, "m3"));
}

/* What is not a usable key: no record, a record without a name, an expired key. Each answer
 * is cached, so asking again does not reach Redis. */
static void test_redis_refusals(void **state)
{
    struct world *w = *state;
    const struct keycache_entry *e;
    struct answer a = resolve_later(w, 2);
    assert_int_equal(a.result, KEYAUTH_UNKNOWN);
    store(w, 2, "name", "late", NULL); /* created after the refusal was cached */
    assert_int_equal(resolve_now(w->cache, w->c, 2, &e), KEYAUTH_UNKNOWN);

    store(w, 3, "rpm", "5", "models", "[]", NULL);
    assert_int_equal(resolve_later(w, 3).result, KEYAUTH_UNKNOWN);
    assert_int_equal(resolve_now(w->cache, w->c, 3, &e), KEYAUTH_UNKNOWN);

    char past[32];
    snprintf(past, sizeof past, "%lld", (long long)time(NULL) - 10);
    store(w, 4, "name", "gone", "expires_at", past, NULL);
    a = resolve_later(w, 4);
    assert_int_equal(a.result, KEYAUTH_EXPIRED);
    assert_int_equal(a.calls, 1);
    assert_int_equal(resolve_now(w->cache, w->c, 4, &e), KEYAUTH_EXPIRED);
}

/* A models field: [] means every model; one that cannot be read allows none, never all. */
static void test_redis_models_field(void **state)
{
    struct world *w = *state;
    store(w, 5, "name", "all", "models", "[]", NULL);
    struct answer a = resolve_later(w, 5);
    assert_int_equal(a.result, KEYAUTH_OK);
    assert_string_equal(a.models, "\1");
    store(w, 6, "name", "broken", "models", "m1,m2", NULL);
    a = resolve_later(w, 6);
    assert_int_equal(a.result, KEYAUTH_OK);
    assert_int_equal(a.models[0], '\0');
    const struct keycache_entry *e;
    assert_int_equal(resolve_now(w->cache, w->c, 6, &e), KEYAUTH_OK);
    assert_false(keycache_allows(e->models, "m1"));
    store(w, 7, "name", "none-given", NULL);
    a = resolve_later(w, 7);
    assert_string_equal(a.models, "\1");
    store(w, 8, "name", "mixed", "models", "[\"m1\", 5, \"m2\"]", NULL);
    a = resolve_later(w, 8);
    assert_memory_equal(a.models, "m1\0m2\0", 7);
}

/* Past its cache time, an entry is fetched again while Redis is reachable: a change or a
 * deletion shows. */
static void test_stale_entry_refetched(void **state)
{
    struct world *w = *state;
    put(w->cache, 9, true, "before", 0, TTL_MS + 1);
    store(w, 9, "name", "after", NULL);
    struct answer a = resolve_later(w, 9);
    assert_int_equal(a.result, KEYAUTH_OK);
    assert_string_equal(a.e.name, "after");
    put(w->cache, 10, true, "deleted", 0, TTL_MS + 1);
    store(w, 10, NULL);
    assert_int_equal(resolve_later(w, 10).result, KEYAUTH_UNKNOWN);
    /* A fresh one is not. */
    put(w->cache, 11, true, "fresh", 0, 0);
    store(w, 11, "name", "changed", NULL);
    const struct keycache_entry *e;
    assert_int_equal(resolve_now(w->cache, w->c, 11, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "fresh");
}

static void on_never(void *ctx, enum keyauth_result result, const struct keycache_entry *e)
{
    (void)result;
    (void)e;
    (*(int *)ctx)++;
}

/* The caller gone: no call, but the answer still fills the cache. */
static void test_cancel(void **state)
{
    struct world *w = *state;
    store(w, 12, "name", "eve", NULL);
    unsigned char d[32];
    digest_of(d, 12);
    int calls = 0;
    struct keyauth_lookup *pending = NULL;
    const struct keycache_entry *e = NULL;
    assert_int_equal(keyauth_resolve(w->cache, w->c, d, on_never, &calls, &pending, &e),
                     KEYAUTH_PENDING);
    keyauth_cancel(pending);
    keyauth_cancel(NULL);
    harness_run_for(&w->env->h, 0.1);
    assert_int_equal(calls, 0);
    assert_int_equal(resolve_now(w->cache, w->c, 12, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "eve");
}

/* The lookup that would refresh a stale entry fails (Redis died, and the client has not
 * noticed yet, so its breaker is closed and the command is sent): the stale entry answers,
 * as when the breaker is open. A key with no entry cannot be checked; an expired one is
 * still refused. */
static void test_stale_entry_when_the_lookup_fails(void **state)
{
    struct world *w = *state;
    put(w->cache, 15, true, "stale-but-good", 0, TTL_MS + 1);
    put(w->cache, 16, true, "stale-expired", (int64_t)time(NULL) - 1, TTL_MS + 1);
    put(w->cache, 17, false, "", 0, NEGATIVE_TTL_MS + 1);
    harness_redis_kill(&w->env->srv);
    assert_true(redis_client_available(w->c)); /* the loop has not run since */
    struct answer a = resolve_later(w, 15);
    assert_int_equal(a.result, KEYAUTH_OK);
    assert_string_equal(a.e.name, "stale-but-good");
    assert_int_equal(a.e.rpm, 7);
    const struct keycache_entry *e;
    assert_int_equal(resolve_now(w->cache, w->c, 15, &e), KEYAUTH_OK);
    assert_int_equal(resolve_now(w->cache, w->c, 16, &e), KEYAUTH_EXPIRED);
    assert_int_equal(resolve_now(w->cache, w->c, 17, &e), KEYAUTH_UNAVAILABLE);
    assert_int_equal(resolve_now(w->cache, w->c, 18, &e), KEYAUTH_UNAVAILABLE);
}

/* Redis gone: stale keys keep working, unknown ones cannot be checked. */
static void test_redis_down(void **state)
{
    struct world *w = *state;
    put(w->cache, 13, true, "stale", 0, TTL_MS + 1);
    harness_redis_kill(&w->env->srv);
    harness_run_for(&w->env->h, 0.1);
    assert_false(redis_client_available(w->c));
    const struct keycache_entry *e;
    assert_int_equal(resolve_now(w->cache, w->c, 13, &e), KEYAUTH_OK);
    assert_string_equal(e->name, "stale");
    assert_int_equal(resolve_now(w->cache, w->c, 14, &e), KEYAUTH_UNAVAILABLE);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cached_entries),
        cmocka_unit_test(test_stale_entries_without_redis),
        cmocka_unit_test(test_cleared_cache_is_the_outage_fallback),
        cmocka_unit_test(test_revoked),
        cmocka_unit_test_setup_teardown(test_redis_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_refusals, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_models_field, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_entry_refetched, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stale_entry_when_the_lookup_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_redis_down, setup, teardown),
    };
    return cmocka_run_group_tests_name("keyauth", tests, NULL, NULL);
}

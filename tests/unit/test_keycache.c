/* The per-worker cache of Redis-held keys: bounds, lifetimes, eviction, model lists. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "tenancy/keycache.h"

static struct keycache_entry entry(unsigned char tag, bool known, const char *name)
{
    struct keycache_entry e = {0};
    memset(e.digest, tag, sizeof e.digest);
    e.known = known;
    strcpy(e.name, name);
    e.fetched_ms = 1000;
    return e;
}

static void digest(unsigned char d[32], unsigned char tag)
{
    memset(d, tag, 32);
}

static void test_put_get(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(8, 60000, 5000);
    struct keycache_entry e = entry(1, true, "alice");
    assert_int_equal(keycache_put(c, &e), 0);
    unsigned char d[32];
    digest(d, 1);
    const struct keycache_entry *got = keycache_get(c, d, 2000, false);
    assert_non_null(got);
    assert_string_equal(got->name, "alice");
    assert_true(got->known);
    digest(d, 2);
    assert_null(keycache_get(c, d, 2000, false));
    keycache_free(c);
}

static void test_lifetimes(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(8, 60000, 5000);
    struct keycache_entry found = entry(1, true, "alice"), missing = entry(2, false, "");
    keycache_put(c, &found);
    keycache_put(c, &missing);
    unsigned char d1[32], d2[32];
    digest(d1, 1);
    digest(d2, 2);
    /* A known key lives 60 s, an unknown one 5 s. */
    assert_non_null(keycache_get(c, d1, 1000 + 59999, false));
    assert_null(keycache_get(c, d1, 1000 + 60001, false));
    assert_non_null(keycache_get(c, d2, 1000 + 4999, false));
    assert_null(keycache_get(c, d2, 1000 + 5001, false));
    /* Past their time, entries still answer when stale ones are allowed (Redis down). */
    assert_non_null(keycache_get(c, d1, 1000 + 3600000, true));
    keycache_free(c);
}

static void test_bounded_lru(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(3, 60000, 5000);
    for (unsigned char t = 1; t <= 3; t++) {
        struct keycache_entry e = entry(t, true, "k");
        keycache_put(c, &e);
    }
    unsigned char d[32];
    digest(d, 1);
    assert_non_null(keycache_get(c, d, 1000, false)); /* 1 is now the most recent */
    struct keycache_entry e4 = entry(4, true, "k4");
    keycache_put(c, &e4);
    assert_int_equal(keycache_size(c), 3);
    digest(d, 2);
    assert_null(keycache_get(c, d, 1000, false)); /* the least recent went */
    digest(d, 1);
    assert_non_null(keycache_get(c, d, 1000, false));
    /* A flood of different keys never grows it past its bound. */
    for (unsigned i = 0; i < 1000; i++) {
        struct keycache_entry e = entry(0, false, "");
        memcpy(e.digest, &i, sizeof i);
        e.digest[31] = 0xee;
        keycache_put(c, &e);
    }
    assert_int_equal(keycache_size(c), 3);
    keycache_free(c);
}

static void test_unknown_keys_bounded(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(8, 60000, 5000);
    struct keycache_entry alice = entry(1, true, "alice"), bob = entry(2, true, "bob");
    keycache_put(c, &alice);
    keycache_put(c, &bob);
    /* A flood of random keys keeps at most a quarter of the cache and pushes no known key out. */
    for (unsigned i = 0; i < 100; i++) {
        struct keycache_entry e = entry(0, false, "");
        memcpy(e.digest, &i, sizeof i);
        e.digest[31] = 0xee;
        keycache_put(c, &e);
    }
    assert_int_equal(keycache_size(c), 2 + 8 / 4);
    unsigned char d[32];
    digest(d, 1);
    assert_non_null(keycache_get(c, d, 1000, false));
    digest(d, 2);
    assert_non_null(keycache_get(c, d, 1000, false));
    /* The newest unknown ones are the ones kept. */
    unsigned last = 99;
    memset(d, 0, sizeof d);
    memcpy(d, &last, sizeof last);
    d[31] = 0xee;
    assert_non_null(keycache_get(c, d, 1000, false));
    /* Past their 5 s they go at the next store, even though the cache has room. */
    struct keycache_entry carol = entry(3, true, "carol");
    carol.fetched_ms = 1000 + 5001;
    keycache_put(c, &carol);
    assert_int_equal(keycache_size(c), 3);
    assert_null(keycache_get(c, d, 1000 + 5001, true));
    keycache_free(c);
}

static void test_replace_evict_clear(void **state)
{
    (void)state;
    struct keycache *c = keycache_new(8, 60000, 5000);
    struct keycache_entry e = entry(1, true, "alice");
    keycache_put(c, &e);
    struct keycache_entry again = entry(1, true, "alice2");
    keycache_put(c, &again);
    assert_int_equal(keycache_size(c), 1);
    unsigned char d[32];
    digest(d, 1);
    assert_string_equal(keycache_get(c, d, 1000, false)->name, "alice2");
    keycache_evict(c, d);
    assert_null(keycache_get(c, d, 1000, true));
    keycache_evict(c, d); /* evicting what is gone is harmless */
    struct keycache_entry b = entry(2, true, "bob");
    keycache_put(c, &b);
    keycache_put(c, &e);
    /* Cleared: nothing is fresh any more, everything is still there as the stale fallback. */
    keycache_clear(c);
    assert_int_equal(keycache_size(c), 2);
    assert_null(keycache_get(c, d, 1000, false));
    assert_string_equal(keycache_get(c, d, 1000, true)->name, "alice");
    keycache_put(c, &e);
    assert_non_null(keycache_get(c, d, 1000, false));
    keycache_free(c);
}

static void test_models(void **state)
{
    (void)state;
    static const char list[] = "llama\0qwen\0"; /* ends with an empty name */
    assert_true(keycache_allows(NULL, "anything"));
    assert_true(keycache_allows(list, "llama"));
    assert_true(keycache_allows(list, "qwen"));
    assert_false(keycache_allows(list, "llam"));
    assert_false(keycache_allows(list, "gpt"));
    assert_false(keycache_allows("", "llama")); /* an empty list allows nothing */

    struct keycache *c = keycache_new(8, 60000, 5000);
    struct keycache_entry e = entry(1, true, "alice");
    char *models = malloc(sizeof list);
    memcpy(models, list, sizeof list);
    e.models = models;
    keycache_put(c, &e);
    free(models); /* the cache keeps its own copy */
    unsigned char d[32];
    digest(d, 1);
    const struct keycache_entry *got = keycache_get(c, d, 1000, false);
    assert_true(keycache_allows(got->models, "qwen"));
    assert_false(keycache_allows(got->models, "gpt"));
    keycache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get),
        cmocka_unit_test(test_lifetimes),
        cmocka_unit_test(test_bounded_lru),
        cmocka_unit_test(test_unknown_keys_bounded),
        cmocka_unit_test(test_replace_evict_clear),
        cmocka_unit_test(test_models),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

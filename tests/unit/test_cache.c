/* The response cache: the canonical key and the byte-capped LRU store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "gateway/cache.h"

static void key_of(const char *json, const char *scope, unsigned char out[32])
{
    json_t *doc = json_loads(json, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(cache_key("/v1/chat/completions", "llama", scope, doc, out), 0);
    json_decref(doc);
}

static void test_key_canonical(void **state)
{
    (void)state;
    unsigned char a[32], b[32];
    key_of("{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
           "k", a);
    /* Keys in another order, 0.0 for 0, delivery details added: the same question. */
    key_of("{\"messages\":[{\"content\":\"x\",\"role\":\"user\"}],\"temperature\":0.0,"
           "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u1\","
           "\"model\":\"llama\"}",
           "k", b);
    assert_memory_equal(a, b, 32);
    /* Anything that shapes the answer changes it, and so does the tenant. */
    const char *variants[] = {
        "{\"model\":\"llama\",\"temperature\":0.5,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"model\":\"llama\",\"temperature\":0,\"seed\":1,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
        "{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"y\"}]}",
        "{\"model\":\"llama\",\"temperature\":0,\"n\":2,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        key_of(variants[i], "k", b);
        assert_memory_not_equal(a, b, 32);
    }
    key_of("{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
           "other-tenant", b);
    assert_memory_not_equal(a, b, 32);
}

static void test_deterministic(void **state)
{
    (void)state;
    json_t *t0 = json_loads("{\"temperature\":0}", 0, NULL);
    json_t *t00 = json_loads("{\"temperature\":0.0}", 0, NULL);
    json_t *seed = json_loads("{\"temperature\":0.9,\"seed\":3}", 0, NULL);
    json_t *warm = json_loads("{\"temperature\":0.9}", 0, NULL);
    json_t *none = json_loads("{}", 0, NULL);
    assert_true(cache_deterministic(t0));
    assert_true(cache_deterministic(t00));
    assert_true(cache_deterministic(seed));
    assert_false(cache_deterministic(warm));
    assert_false(cache_deterministic(none)); /* the API's default temperature is 1 */
    json_decref(t0);
    json_decref(t00);
    json_decref(seed);
    json_decref(warm);
    json_decref(none);
}

static void test_store(void **state)
{
    (void)state;
    struct cache *c = cache_new(3 * 1024);
    unsigned char k[4][32];
    char body[700];
    memset(body, 'x', sizeof body);
    for (int i = 0; i < 4; i++) {
        memset(k[i], i + 1, 32);
        assert_int_equal(cache_put(c, k[i], body, sizeof body, "b", 0.01, 1000, 60000), 0);
        assert_true(cache_bytes(c) <= 3 * 1024);
    }
    /* The byte cap pushed the oldest out. */
    assert_null(cache_get(c, k[0], 1000, -1));
    const struct cache_entry *e = cache_get(c, k[3], 1000, -1);
    assert_non_null(e);
    assert_int_equal(e->len, sizeof body);
    assert_string_equal(e->backend, "b");
    /* max-age and expiry */
    assert_non_null(cache_get(c, k[3], 5000, 4000));
    assert_null(cache_get(c, k[3], 5001, 4000));
    assert_null(cache_get(c, k[3], 61000, -1));
    /* An entry bigger than the whole cache is refused, nothing else is lost. */
    static char big[4096];
    unsigned char kb[32];
    memset(kb, 9, 32);
    assert_int_equal(cache_put(c, kb, big, sizeof big, "b", 0, 1000, 60000), -1);
    assert_non_null(cache_get(c, k[2], 1000, -1));
    cache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_canonical),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

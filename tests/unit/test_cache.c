/* The response cache: the canonical key, the byte-capped LRU store, and streamed answers
 * assembled into whole ones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "cache/cache.h"

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
    key_of("{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":"
           "\"x\"}]}",
           "k", a);
    /* Keys in another order, 0.0 for 0, delivery details added: the same question. */
    key_of("{\"messages\":[{\"content\":\"x\",\"role\":\"user\"}],\"temperature\":0.0,"
           "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"user\":\"u1\","
           "\"model\":\"llama\"}",
           "k", b);
    assert_memory_equal(a, b, 32);
    /* Anything that shapes the answer changes it, and so does the tenant. */
    const char *variants[] = {
        "{\"model\":\"llama\",\"temperature\":0.5,\"messages\":[{\"role\":\"user\",\"content\":"
        "\"x\"}]}",
        "{\"model\":\"llama\",\"temperature\":0,\"seed\":1,\"messages\":[{\"role\":\"user\","
        "\"content\":\"x\"}]}",
        "{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":\"y\"}"
        "]}",
        "{\"model\":\"llama\",\"temperature\":0,\"n\":2,\"messages\":[{\"role\":\"user\","
        "\"content\":\"x\"}]}",
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        key_of(variants[i], "k", b);
        assert_memory_not_equal(a, b, 32);
    }
    key_of("{\"model\":\"llama\",\"temperature\":0,\"messages\":[{\"role\":\"user\",\"content\":"
           "\"x\"}]}",
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

/* Feeds SSE data payloads (one JSON chunk each) and returns the whole answer, or NULL. */
static json_t *assemble(bool chat, size_t max_bytes, const char *const *events, json_t *usage)
{
    struct cache_capture c;
    cache_capture_init(&c, chat, max_bytes);
    for (const char *const *e = events; *e; e++)
        cache_capture_event(&c, *e, strlen(*e));
    size_t len = 0;
    char *text = cache_capture_finish(&c, usage, &len);
    cache_capture_free(&c);
    if (!text)
        return NULL;
    assert_int_equal(strlen(text), len);
    json_t *doc = json_loads(text, 0, NULL);
    free(text);
    assert_non_null(doc);
    return doc;
}

static const char *str_at(json_t *doc, const char *path)
{
    /* "choices.N.message.content"-style paths */
    char buf[200];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *cur = doc;
    for (char *save = NULL, *part = strtok_r(buf, ".", &save); part && cur;
         part = strtok_r(NULL, ".", &save)) {
        if (json_is_array(cur))
            cur = json_array_get(cur, (size_t)atoi(part));
        else
            cur = json_object_get(cur, part);
    }
    return json_string_value(cur);
}

static void test_capture_chat(void **state)
{
    (void)state;
    static const char *const events[] = {
        "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":7,\"model\":\"m\","
        "\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
        "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}},"
        "{\"index\":1,\"delta\":{\"content\":\"Other\"}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"}}]}",
        "{\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"},"
        "{\"index\":1,\"delta\":{},\"finish_reason\":\"length\"}]}",
        "{\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":99}}",
        "{\"id\":\"c1\",\"choices\":null,\"usage\":{\"prompt_tokens\":99}}", /* some nodes */
        NULL};
    json_t *doc = assemble(true, 1 << 20, events,
                           json_pack("{s:i, s:i, s:i}", "prompt_tokens", 3, "completion_tokens", 4,
                                     "total_tokens", 7));
    assert_non_null(doc);
    assert_string_equal(str_at(doc, "object"), "chat.completion");
    assert_string_equal(str_at(doc, "id"), "c1");
    assert_string_equal(str_at(doc, "model"), "m");
    assert_string_equal(str_at(doc, "system_fingerprint"), "fp");
    assert_int_equal(json_integer_value(json_object_get(doc, "created")), 7);
    assert_string_equal(str_at(doc, "choices.0.message.role"), "assistant");
    assert_string_equal(str_at(doc, "choices.0.message.content"), "Hello \xc3\xa9");
    assert_string_equal(str_at(doc, "choices.0.finish_reason"), "stop");
    assert_string_equal(str_at(doc, "choices.1.message.content"), "Other");
    assert_string_equal(str_at(doc, "choices.1.finish_reason"), "length");
    /* The settled usage given at the end wins over the node's. */
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(doc, "usage"), "prompt_tokens")), 3);
    json_decref(doc);
}

static void test_capture_tool_calls(void **state)
{
    (void)state;
    static const char *const events[] = {
        "{\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
        "\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":"
        "\"function\",\"function\":{\"name\":\"get_\",\"arguments\":\"\"}}]}}]}",
        "{\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
        "\"function\":{\"name\":\"weather\",\"arguments\":\"{\\\"city\\\":\"}}]}}]}",
        "{\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,"
        "\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"time\","
        "\"arguments\":\"{}\"}},{\"index\":0,\"function\":{\"arguments\":\"\\\"Oslo\\\"}\"}}]}}]}",
        "{\"id\":\"t\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
        "\"tool_calls\"}]}",
        NULL};
    json_t *doc = assemble(true, 1 << 20, events, NULL);
    assert_non_null(doc);
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.0.id"), "call_a");
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.0.type"), "function");
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.0.function.name"), "get_weather");
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.0.function.arguments"),
                        "{\"city\":\"Oslo\"}");
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.1.function.name"), "time");
    assert_string_equal(str_at(doc, "choices.0.finish_reason"), "tool_calls");
    assert_true(json_is_null(json_object_get(
        json_object_get(json_array_get(json_object_get(doc, "choices"), 0), "message"),
        "content")));
    json_decref(doc);
}

static void test_capture_completions(void **state)
{
    (void)state;
    static const char *const events[] = {
        "{\"id\":\"x\",\"object\":\"text_completion\",\"choices\":[{\"index\":0,"
        "\"text\":\"one \"}]}",
        "{\"id\":\"x\",\"choices\":[{\"index\":0,\"text\":\"two\",\"finish_reason\":"
        "\"stop\"}]}",
        NULL};
    json_t *doc = assemble(false, 1 << 20, events, NULL);
    assert_non_null(doc);
    assert_string_equal(str_at(doc, "object"), "text_completion");
    assert_string_equal(str_at(doc, "choices.0.text"), "one two");
    json_decref(doc);
}

/* Only the capture's own piece lists are joined: a node's values kept as they came (here an
 * id object with a key like a piece list's, a non-string in it) stay as sent. The non-string
 * was a NULL passed to memcpy (UBSan, tests/fuzz/regressions/sse/). */
static void test_capture_keeps_node_values(void **state)
{
    (void)state;
    static const char *const events[] = {
        "{\"id\":{\"\\u0001x\":[\"a\",1]},\"choices\":[{\"index\":0,\"delta\":"
        "{\"tool_calls\":[{\"index\":0,\"id\":{\"\\u0001y\":[\"b\"]},\"function\":"
        "{\"name\":\"f\"}}]},\"finish_reason\":\"stop\"}]}",
        NULL};
    json_t *doc = assemble(true, 1 << 20, events, NULL);
    assert_non_null(doc);
    json_t *want = json_loads("{\"\\u0001x\":[\"a\",1]}", 0, NULL);
    assert_true(json_equal(json_object_get(doc, "id"), want));
    json_decref(want);
    json_t *call = json_array_get(
        json_object_get(
            json_object_get(json_array_get(json_object_get(doc, "choices"), 0), "message"),
            "tool_calls"),
        0);
    want = json_loads("{\"\\u0001y\":[\"b\"]}", 0, NULL);
    assert_true(json_equal(json_object_get(call, "id"), want));
    json_decref(want);
    assert_string_equal(str_at(doc, "choices.0.message.tool_calls.0.function.name"), "f");
    json_decref(doc);
}

/* What is not kept: an unfinished choice, logprobs, garbage, an unknown delta shape, a
 * capture past its size, no choices at all. */
static void test_capture_refuses(void **state)
{
    (void)state;
    static const char *const unfinished[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":\"stop\"},"
        "{\"index\":1,\"delta\":{\"content\":\"b\"}}]}",
        NULL};
    assert_null(assemble(true, 1 << 20, unfinished, NULL));
    static const char *const logprobs[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"logprobs\":{\"content\":[]},"
        "\"finish_reason\":\"stop\"}]}",
        NULL};
    assert_null(assemble(true, 1 << 20, logprobs, NULL));
    static const char *const garbage[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}", "not json",
        "{\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}", NULL};
    assert_null(assemble(true, 1 << 20, garbage, NULL));
    static const char *const odd_delta[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"audio\":{\"id\":\"x\"}},"
        "\"finish_reason\":\"stop\"}]}",
        NULL};
    assert_null(assemble(true, 1 << 20, odd_delta, NULL));
    static const char *const big[] = {
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789\"}}]}",
        "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"0123456789\"},"
        "\"finish_reason\":\"stop\"}]}",
        NULL};
    assert_null(assemble(true, 15, big, NULL));
    json_t *fits = assemble(true, 20, big, NULL);
    assert_non_null(fits);
    json_decref(fits);
    static const char *const nothing[] = {"{\"choices\":[]}", NULL};
    assert_null(assemble(true, 1 << 20, nothing, json_object()));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_canonical),
        cmocka_unit_test(test_deterministic),
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_capture_chat),
        cmocka_unit_test(test_capture_tool_calls),
        cmocka_unit_test(test_capture_completions),
        cmocka_unit_test(test_capture_keeps_node_values),
        cmocka_unit_test(test_capture_refuses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

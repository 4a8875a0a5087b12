/* The answer scanner: well-formedness and the billing facts, fed whole, split at every byte,
 * and one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "openai/answer.h"

static const char chat[] =
    "{\"id\":\"c1\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":"
    "{\"role\":\"assistant\",\"content\":\"Hello there\",\"reasoning_content\":\"hmm\","
    "\"tool_calls\":[{\"id\":\"t\",\"type\":\"function\",\"function\":{\"name\":\"get\","
    "\"arguments\":\"{\\\"q\\\":1}\"}}]},\"finish_reason\":\"stop\"},{\"index\":1,\"message\":"
    "{\"role\":\"assistant\",\"content\":\"\\u00e9t\\u00e9\"},\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}}";

/* Scans `doc` split into pieces of `step` bytes (0 = whole). Returns finish()'s result. */
static int scan(const char *doc, size_t step, struct answer_scan *out)
{
    assert_int_equal(answer_scan_init(out, NULL), 0);
    size_t n = strlen(doc);
    int bad = 0;
    if (!step)
        step = n ? n : 1;
    for (size_t i = 0; i < n && !bad; i += step)
        bad = answer_scan_feed(out, doc + i, i + step > n ? n - i : step);
    int rc = bad ? -1 : answer_scan_finish(out);
    answer_scan_free(out);
    return rc;
}

static void check_chat(const struct answer_scan *s)
{
    assert_true(s->object);
    assert_false(s->has_error);
    assert_true(s->has_usage);
    assert_int_equal(s->prompt_tokens, 12);
    assert_int_equal(s->completion_tokens, 7);
    /* "Hello there" 11 + "hmm" 3 + "get" 3 + "{\"q\":1}" 7 + "été" 5 bytes of UTF-8 */
    assert_int_equal(s->delivered, 29);
    assert_int_equal(s->n_choices, 2);
    assert_true(s->has_choices);
    assert_int_equal(s->choices_len, 2);
    assert_int_equal(s->finished, 2);
}

static void test_chat_whole_and_split(void **state)
{
    (void)state;
    struct answer_scan s;
    assert_int_equal(scan(chat, 0, &s), 0);
    check_chat(&s);
    assert_int_equal(scan(chat, 1, &s), 0);
    check_chat(&s);
    for (size_t step = 2; step < sizeof chat; step += 7) {
        assert_int_equal(scan(chat, step, &s), 0);
        check_chat(&s);
    }
}

static void test_text_only_where_it_counts(void **state)
{
    (void)state;
    struct answer_scan s;
    /* "content" at the top level or under another key is not generated text. */
    assert_int_equal(scan("{\"content\":\"xxxxxxxx\",\"choices\":[{\"index\":0,\"text\":\"abc\","
                          "\"logprobs\":{\"content\":\"yyyy\"}}],\"meta\":{\"message\":"
                          "{\"content\":\"zzzz\"}}}",
                          0, &s),
                     0);
    assert_int_equal(s.delivered, 3);
    assert_false(s.has_usage);
}

static void test_stream_chunks(void **state)
{
    (void)state;
    struct answer_scan s;
    assert_int_equal(scan("{\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
                          "\"delta\":{\"content\":\" lorem\"},\"finish_reason\":null}]}",
                          3, &s),
                     0);
    assert_int_equal(s.delivered, 6);
    assert_int_equal(s.choices_len, 1);
    assert_int_equal(s.finished, 0); /* finish_reason null: not finished */
    assert_false(s.has_usage);
    assert_int_equal(
        scan("{\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3}}", 1, &s), 0);
    assert_true(s.has_choices);
    assert_int_equal(s.choices_len, 0);
    assert_true(s.has_usage);
    assert_int_equal(s.completion_tokens, 3);
}

static void test_errors_and_garbage(void **state)
{
    (void)state;
    struct answer_scan s;
    assert_int_equal(scan("{\"error\":{\"message\":\"boom\"}}", 1, &s), 0);
    assert_true(s.has_error);
    assert_int_equal(scan("{\"object\": this is not json", 0, &s), -1);
    assert_int_equal(scan("data: {garbage", 1, &s), -1);
    /* Cut anywhere, a document is not complete. */
    for (size_t cut = 1; cut < sizeof chat - 1; cut++) {
        char part[sizeof chat];
        memcpy(part, chat, cut);
        part[cut] = '\0';
        assert_int_equal(scan(part, 0, &s), -1);
    }
    assert_int_equal(scan("[1,2,3]", 0, &s), 0);
    assert_false(s.object);                                  /* well-formed, but not an answer */
    assert_int_equal(scan("{\"a\":\"\xff\"}", 0, &s), -1);   /* invalid UTF-8 */
    assert_int_equal(scan("{\"a\":1}{\"b\":2}", 0, &s), -1); /* trailing garbage */
}

static void test_usage_values(void **state)
{
    (void)state;
    struct answer_scan s;
    /* Numbers that are not integers do not count as reported usage. */
    assert_int_equal(scan("{\"usage\":{\"prompt_tokens\":1.5e9,\"completion_tokens\":2}}", 0, &s),
                     0);
    assert_false(s.has_usage);
    /* Usage deeper in the document is not the answer's usage. */
    assert_int_equal(scan("{\"x\":{\"usage\":{\"prompt_tokens\":5}}}", 0, &s), 0);
    assert_false(s.has_usage);
    /* Deep nesting is parsed (and ignored) without trouble. */
    char deep[256] = "";
    for (int i = 0; i < 40; i++)
        strcat(deep, "[");
    for (int i = 0; i < 40; i++)
        strcat(deep, "]");
    assert_int_equal(scan(deep, 1, &s), 0);
}

/* `pre` + n copies of `fill` + `post`, malloc'd. */
static char *build(const char *pre, char fill, size_t n, const char *post, size_t *len)
{
    size_t a = strlen(pre), b = strlen(post);
    char *doc = malloc(a + n + b + 1);
    assert_non_null(doc);
    memcpy(doc, pre, a);
    memset(doc + a, fill, n);
    memcpy(doc + a + n, post, b + 1);
    *len = a + n + b;
    return doc;
}

/* Feeds doc in pieces of `step` bytes; returns the CPU seconds it took (finish included). */
static double feed_timed(struct answer_scan *s, const char *doc, size_t len, size_t step)
{
    clock_t t0 = clock();
    assert_int_equal(answer_scan_init(s, NULL), 0);
    for (size_t i = 0; i < len; i += step)
        assert_int_equal(answer_scan_feed(s, doc + i, i + step > len ? len - i : step), 0);
    assert_int_equal(answer_scan_finish(s), 0);
    answer_scan_free(s);
    return (double)(clock() - t0) / CLOCKS_PER_SEC;
}

/* One huge token fed in small pieces costs time linear in its bytes: yajl alone rereads a
 * token cut across pieces from its start on every piece (a 16 MiB string in 4 KiB pieces
 * was about 32 GiB of rereading, seconds of CPU; linear, it is milliseconds). */
static void test_huge_tokens_in_small_pieces(void **state)
{
    (void)state;
    const size_t big = 16u << 20;
    struct answer_scan s;
    size_t len;
    char *doc = build("{\"choices\":[{\"index\":0,\"message\":{\"content\":\"", 'a', big,
                      "\"},\"finish_reason\":\"stop\"}]}", &len);
    double cpu = feed_timed(&s, doc, len, 4096);
    assert_int_equal(s.delivered, big);
    assert_int_equal(s.finished, 1);
    assert_true(cpu < 3.0);
    free(doc);
    /* A key, a number and an escaped string as long. */
    doc = build("{\"", 'k', big, "\":1}", &len);
    assert_true(feed_timed(&s, doc, len, 4096) < 3.0);
    free(doc);
    doc = build("{\"n\":0.", '7', big, "}", &len);
    assert_true(feed_timed(&s, doc, len, 4096) < 3.0);
    free(doc);
    doc = build("{\"choices\":[{\"message\":{\"content\":\"\\n", 'b', big, "\\u00e9\"}}]}", &len);
    assert_true(feed_timed(&s, doc, len, 4093) < 3.0);
    assert_int_equal(s.delivered, 1 + big + 2);
    free(doc);
}

/* Malformed bytes inside a long token are still found as they arrive, not at the end. */
static void test_errors_found_early(void **state)
{
    (void)state;
    struct answer_scan s;
    char piece[4096];
    memset(piece, 'a', sizeof piece);
    /* A control byte at a string's start, then more of the string. */
    assert_int_equal(answer_scan_init(&s, NULL), 0);
    assert_int_equal(answer_scan_feed(&s, "{\"a\":\"\x01", 7), -1);
    answer_scan_free(&s);
    /* A bad byte in a string already 64 KiB long: found before the string doubles again. */
    assert_int_equal(answer_scan_init(&s, NULL), 0);
    assert_int_equal(answer_scan_feed(&s, "{\"a\":\"", 6), 0);
    for (int i = 0; i < 16; i++)
        assert_int_equal(answer_scan_feed(&s, piece, sizeof piece), 0);
    int bad = answer_scan_feed(&s, "\x02", 1); /* may be held: shorter than yajl's part */
    for (int i = 0; i < 17 && !bad; i++)
        bad = answer_scan_feed(&s, piece, sizeof piece);
    assert_int_equal(bad, -1);
    answer_scan_free(&s);
    /* Garbage after a complete token goes to yajl at once. */
    assert_int_equal(answer_scan_init(&s, NULL), 0);
    assert_int_equal(answer_scan_feed(&s, "{\"a\":1, x", 9), -1);
    answer_scan_free(&s);
}

/* Where the top-level usage object lies, split anywhere; the last "usage" key is the one. */
static void test_usage_span(void **state)
{
    (void)state;
    struct answer_scan s;
    const char *want = "{\"prompt_tokens\":12,\"completion_tokens\":7,\"total_tokens\":19}";
    const char *at = strstr(chat, want);
    assert_non_null(at);
    for (size_t step = 0; step < sizeof chat; step += step < 16 ? 1 : 13) {
        assert_int_equal(scan(chat, step, &s), 0);
        assert_int_equal(s.usage_start, (size_t)(at - chat));
        assert_int_equal(s.usage_end, (size_t)(at - chat) + strlen(want));
    }
    const char *twice = "{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2},"
                        "\"x\":{\"usage\":{}},\"usage\" : { \"prompt_tokens\":3 } }";
    const char *last = "{ \"prompt_tokens\":3 }";
    for (size_t step = 0; step < 8; step++) {
        assert_int_equal(scan(twice, step, &s), 0);
        assert_true(s.has_usage);
        assert_int_equal(s.prompt_tokens, 3);
        assert_int_equal(s.completion_tokens, 0);
        assert_int_equal(s.usage_end - s.usage_start, strlen(last));
        assert_memory_equal(twice + s.usage_start, last, strlen(last));
    }
    /* A later "usage" that is not an object: what a JSON parser reads has no usage. */
    assert_int_equal(scan("{\"usage\":{\"prompt_tokens\":1},\"usage\":5}", 1, &s), 0);
    assert_false(s.has_usage);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_whole_and_split),
        cmocka_unit_test(test_text_only_where_it_counts),
        cmocka_unit_test(test_stream_chunks),
        cmocka_unit_test(test_errors_and_garbage),
        cmocka_unit_test(test_usage_values),
        cmocka_unit_test(test_huge_tokens_in_small_pieces),
        cmocka_unit_test(test_errors_found_early),
        cmocka_unit_test(test_usage_span),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* The answer scanner: well-formedness and the billing facts, fed whole, split at every byte,
 * and one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <string.h>

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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_whole_and_split),
        cmocka_unit_test(test_text_only_where_it_counts),
        cmocka_unit_test(test_stream_chunks),
        cmocka_unit_test(test_errors_and_garbage),
        cmocka_unit_test(test_usage_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

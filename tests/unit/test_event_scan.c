/* The single-pass event scanner (openai/event_scan.c): it decides the plain case with the same
 * facts as the yajl scan, and falls back on everything else, never deciding a case yajl would
 * see differently. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "openai/answer.h"
#include "openai/answer_event.h"
#include "openai/event_scan.h"
#include "openai/responses.h"

/* The yajl scan of the same bytes, as the relay runs it: 0 when it accepts an object. */
static int slow_scan(enum answer_kind kind, const char *data, size_t n, struct answer_scan *out)
{
    assert_int_equal(answer_scan_init_kind(out, NULL, kind), 0);
    int rc = answer_scan_event(out, data, n) == 0 && out->object ? 0 : -1;
    answer_scan_free(out);
    return rc;
}

static void assert_same(const struct answer_scan *a, const struct answer_scan *b)
{
    assert_int_equal(a->object, b->object);
    assert_int_equal(a->has_error, b->has_error);
    assert_int_equal(a->has_usage, b->has_usage);
    assert_int_equal(a->prompt_tokens, b->prompt_tokens);
    assert_int_equal(a->completion_tokens, b->completion_tokens);
    assert_int_equal(a->cached_tokens, b->cached_tokens);
    assert_int_equal(a->delivered, b->delivered);
    assert_int_equal(a->n_choices, b->n_choices);
    assert_int_equal(a->has_choices, b->has_choices);
    assert_int_equal(a->choices_len, b->choices_len);
    assert_int_equal(a->finished, b->finished);
    assert_int_equal(a->usage_start, b->usage_start);
    assert_int_equal(a->usage_end, b->usage_end);
    assert_string_equal(a->event_type, b->event_type);
    assert_string_equal(a->response_id, b->response_id);
    assert_int_equal(responses_event_kind(a), responses_event_kind(b));
}

/* Scans doc the fast way, expecting a decision, and checks it against yajl's. */
static void fast(enum answer_kind kind, const char *doc, struct answer_scan *out)
{
    size_t n = strlen(doc);
    struct answer_scan slow;
    assert_int_equal(event_scan(out, kind, doc, n), EVENT_SCAN_OK);
    assert_int_equal(slow_scan(kind, doc, n, &slow), 0);
    assert_same(out, &slow);
    assert_null(out->handle);
    assert_int_equal(out->depth, 0);
}

/* Expects a fallback, whatever yajl then says. */
static void falls_back(enum answer_kind kind, const char *doc, size_t n)
{
    struct answer_scan s;
    assert_int_equal(event_scan(&s, kind, doc, n), EVENT_SCAN_FALLBACK);
}

static const char chunk[] =
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1796595247,"
    "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":"
    "\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}";

static void test_chat_chunk(void **state)
{
    (void)state;
    struct answer_scan s;
    fast(ANSWER_KIND_CHOICES, chunk, &s);
    assert_true(s.object);
    assert_false(s.has_error);
    assert_false(s.has_usage);
    assert_int_equal(s.delivered, 5);
    assert_int_equal(s.n_choices, 1);
    assert_int_equal(s.choices_len, 1);
    assert_int_equal(s.finished, 0);
    assert_int_equal(s.usage_end, 0);

    fast(ANSWER_KIND_CHOICES,
         "{\"id\":\"c\",\"choices\":[{\"index\":1,\"delta\":{},\"finish_reason\":\"stop\"},"
         "{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"get\","
         "\"arguments\":\"{}\"}}]},\"finish_reason\":\"tool_calls\"}]}",
         &s);
    assert_int_equal(s.n_choices, 2);
    assert_int_equal(s.finished, 2);
    assert_int_equal(s.delivered, 5);
    fast(ANSWER_KIND_CHOICES, "{\"choices\":[{\"index\":0,\"text\":\" lorem\"}]}", &s);
    assert_int_equal(s.delivered, 6);
}

static void test_usage_chunk_and_span(void **state)
{
    (void)state;
    const char doc[] = "{\"id\":\"c\",\"choices\":[], \"usage\" : {\"prompt_tokens\":12,"
                       "\"completion_tokens\":7,\"total_tokens\":19,"
                       "\"prompt_tokens_details\":{\"cached_tokens\":4}} }";
    struct answer_scan s;
    fast(ANSWER_KIND_CHOICES, doc, &s);
    assert_true(s.has_usage);
    assert_int_equal(s.prompt_tokens, 12);
    assert_int_equal(s.completion_tokens, 7);
    assert_int_equal(s.cached_tokens, 4);
    assert_true(s.has_choices);
    assert_int_equal(s.choices_len, 0);
    assert_int_equal(doc[s.usage_start], '{');
    assert_int_equal(doc[s.usage_end - 1], '}');
    assert_int_equal(strstr(doc, "{\"prompt_tokens\"") - doc, (long)s.usage_start);
    assert_int_equal(s.usage_end, strlen(doc) - 2);

    /* numbers past 64 bits saturate; fractions are no token count; the last usage counts */
    fast(ANSWER_KIND_CHOICES,
         "{\"usage\":{\"prompt_tokens\":123456789012345678901234567890,"
         "\"completion_tokens\":-3}}",
         &s);
    assert_true(s.prompt_tokens > 0 && s.completion_tokens == -3);
    fast(ANSWER_KIND_CHOICES, "{\"usage\":{\"prompt_tokens\":1.5,\"completion_tokens\":2e2}}", &s);
    assert_false(s.has_usage);
    fast(ANSWER_KIND_CHOICES,
         "{\"usage\":{\"prompt_tokens\":3},\"choices\":[],\"usage\":{\"completion_tokens\":9}}",
         &s);
    assert_false(s.has_usage);
    assert_int_equal(s.completion_tokens, 9);
}

static void test_error_event(void **state)
{
    (void)state;
    struct answer_scan s;
    fast(ANSWER_KIND_CHOICES,
         "{\"error\":{\"message\":\"boom\",\"type\":\"server_error\",\"param\":null,"
         "\"code\":null}}",
         &s);
    assert_true(s.has_error);
    fast(ANSWER_KIND_CHOICES, "{\"error\":\"a string is no error object\"}", &s);
    assert_false(s.has_error);
}

/* Escapes are decoded as yajl decodes them: delivered counts the decoded bytes. */
static void test_escapes(void **state)
{
    (void)state;
    struct answer_scan s;
    fast(ANSWER_KIND_CHOICES,
         "{\"choices\":[{\"index\":0,\"delta\":{\"content\":"
         "\"a\\nb\\t\\\"\\\\\\/\\b\\f\\r\"}}]}",
         &s);
    assert_int_equal(s.delivered, 10);
    fast(ANSWER_KIND_CHOICES,
         "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\\u00e9\\u4E2D\\ud83d\\ude00"
         "\\u0000\"}}]}",
         &s);
    assert_int_equal(s.delivered, 2 + 3 + 4 + 1);
    /* raw UTF-8 is taken where it lies */
    fast(ANSWER_KIND_CHOICES,
         "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\xc3\xa9\xe4\xb8\xad\xf0\x9f\x98"
         "\x80\x7f\"}}]}",
         &s);
    assert_int_equal(s.delivered, 10);
    /* an escaped key is still the key */
    fast(ANSWER_KIND_CHOICES, "{\"\\u0075sage\":{\"prompt_tokens\":5}}", &s);
    assert_true(s.has_usage);
}

static void test_responses_events(void **state)
{
    (void)state;
    struct answer_scan s;
    fast(ANSWER_KIND_RESPONSES,
         "{\"type\":\"response.created\",\"response\":{\"id\":\"resp_abc\",\"object\":"
         "\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null},"
         "\"sequence_number\":0}",
         &s);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_CREATED);
    assert_string_equal(s.response_id, "resp_abc");
    fast(ANSWER_KIND_RESPONSES,
         "{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\",\"output_index\":0,"
         "\"delta\":\" lorem\",\"sequence_number\":5}",
         &s);
    assert_int_equal(s.delivered, 6);
    assert_int_equal(s.n_choices, 1);
    fast(ANSWER_KIND_RESPONSES,
         "{\"type\":\"response.completed\",\"response\":{\"id\":\"resp_abc\",\"status\":"
         "\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":"
         "\"output_text\",\"text\":\"hi\"}]}],\"usage\":{\"input_tokens\":4,"
         "\"input_tokens_details\":{\"cached_tokens\":1},\"output_tokens\":2}}}",
         &s);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_DONE);
    assert_true(s.has_usage);
    assert_int_equal(s.prompt_tokens, 4);
    assert_int_equal(s.cached_tokens, 1);
    assert_int_equal(s.finished, 1);
    fast(ANSWER_KIND_RESPONSES, "{\"type\":\"error\",\"message\":\"m\"}", &s);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_FAILED);
}

static void test_falls_back(void **state)
{
    (void)state;
    static const char *const docs[] = {
        "",
        " ",
        "[]",
        "\"s\"",
        "1",
        "null",
        "{",
        "{\"a\"",
        "{\"a\":",
        "{\"a\":1",
        "{\"a\":1,}",
        "{,}",
        "{\"a\" 1}",
        "{\"a\":1 \"b\":2}",
        "{\"a\":[1,]}",
        "{\"a\":01}",
        "{\"a\":1.}",
        "{\"a\":-}",
        "{\"a\":1e}",
        "{\"a\":.5}",
        "{\"a\":+1}",
        "{\"a\":tru}",
        "{\"a\":nul}",
        "{\"a\":True}",
        "{\"a\":1}x",
        "{\"a\":1}{}",
        "{\"a\":1}\v",
        "\f{\"a\":1}",
        "{\"a\":\"\\x\"}",
        "{\"a\":\"\\u12\"}",
        "{\"a\":\"\\u12G4\"}",
        "{\"a\":\"\\ud83d\"}",          /* a lone high surrogate (yajl: '?') */
        "{\"a\":\"\\ud83d\\u0041\"}",   /* a high surrogate before no low one */
        "{\"a\":\"\\ude00\"}",          /* a lone low surrogate */
        "{\"a\":\"\xc0\xaf\"}",         /* overlong */
        "{\"a\":\"\xed\xa0\x80\"}",     /* a surrogate in UTF-8 */
        "{\"a\":\"\xf4\x90\x80\x80\"}", /* past U+10FFFF */
        "{\"a\":\"\xe4\xb8\"}",         /* cut */
        "{\"a\":\"tab\there\"}",        /* a raw control byte */
        "{\"a\":/*c*/1}",
    };
    for (size_t i = 0; i < sizeof docs / sizeof *docs; i++)
        falls_back(ANSWER_KIND_CHOICES, docs[i], strlen(docs[i]));
    falls_back(ANSWER_KIND_CHOICES, "{\"a\":\"x\0y\"}", 11); /* a raw NUL */
}

/* Every proper prefix of an event falls back; only the whole is decided; bytes past n are
 * never read. */
static void test_prefixes_and_bounds(void **state)
{
    (void)state;
    size_t n = strlen(chunk);
    for (size_t i = 0; i < n; i++)
        falls_back(ANSWER_KIND_CHOICES, chunk, i);
    char buf[16] = "{\"a\":1}\"x";
    struct answer_scan s;
    assert_int_equal(event_scan(&s, ANSWER_KIND_CHOICES, buf, 7), EVENT_SCAN_OK);
    falls_back(ANSWER_KIND_CHOICES, buf, 6);
}

static void test_depth_and_long_strings(void **state)
{
    (void)state;
    char doc[4 * EVENT_SCAN_MAX_DEPTH + 8];
    struct answer_scan s;
    for (int depth = EVENT_SCAN_MAX_DEPTH; depth <= EVENT_SCAN_MAX_DEPTH + 1; depth++) {
        /* {"a":[[...]]}: the object and depth - 1 arrays */
        size_t n = (size_t)sprintf(doc, "{\"a\":");
        for (int i = 1; i < depth; i++)
            doc[n++] = '[';
        for (int i = 1; i < depth; i++)
            doc[n++] = ']';
        doc[n++] = '}';
        doc[n] = '\0';
        if (depth <= EVENT_SCAN_MAX_DEPTH)
            fast(ANSWER_KIND_CHOICES, doc, &s);
        else
            falls_back(ANSWER_KIND_CHOICES, doc, n);
    }

    /* a long plain string is read where it lies; a long escaped one falls back */
    size_t len = 3 * EVENT_SCAN_MAX_DECODED;
    char *big = malloc(len + 64);
    assert_non_null(big);
    int k = sprintf(big, "{\"choices\":[{\"index\":0,\"delta\":{\"content\":\"");
    memset(big + k, 'x', len);
    strcpy(big + k + len, "\"}}]}");
    fast(ANSWER_KIND_CHOICES, big, &s);
    assert_int_equal(s.delivered, len);
    big[k + 10] = '\\';
    big[k + 11] = 'n';
    falls_back(ANSWER_KIND_CHOICES, big, strlen(big));
    free(big);
}

/* One byte of a chunk replaced by each of a set of bytes: whatever is decided, yajl decides
 * alike with the same facts. */
static void test_mutations_agree_with_yajl(void **state)
{
    (void)state;
    static const char subst[] = "{}[]:,\" \\\t\n0-1.eE+tfnu\x80\xc3\xa9";
    size_t n = strlen(chunk);
    char *doc = malloc(n);
    assert_non_null(doc);
    unsigned decided = 0;
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < sizeof subst - 1; j++) {
            memcpy(doc, chunk, n);
            doc[i] = subst[j];
            struct answer_scan a, b;
            if (event_scan(&a, ANSWER_KIND_CHOICES, doc, n) != EVENT_SCAN_OK)
                continue;
            decided++;
            assert_int_equal(slow_scan(ANSWER_KIND_CHOICES, doc, n, &b), 0);
            assert_same(&a, &b);
        }
    }
    assert_true(decided > n); /* the same byte again, and white space, at least */
    free(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_chunk),
        cmocka_unit_test(test_usage_chunk_and_span),
        cmocka_unit_test(test_error_event),
        cmocka_unit_test(test_escapes),
        cmocka_unit_test(test_responses_events),
        cmocka_unit_test(test_falls_back),
        cmocka_unit_test(test_prefixes_and_bounds),
        cmocka_unit_test(test_depth_and_long_strings),
        cmocka_unit_test(test_mutations_agree_with_yajl),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

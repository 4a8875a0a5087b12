/* The Responses API's wire format: request validation and estimates, and the scanner's rules
 * for whole response objects and stream events, fed whole and split at every byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "base/error.h"
#include "openai/answer.h"
#include "openai/responses.h"

/* ---- validation --------------------------------------------------------------------------- */

struct checked {
    int rc;
    const char *param;
    char msg[400];
    struct openai_request req;
};

static json_t *validate(const char *text, struct checked *c)
{
    json_t *body = json_loads(text, 0, NULL);
    assert_non_null(body);
    c->rc = responses_validate(OPENAI_RESPONSES, body, &c->req, &c->param, c->msg, sizeof c->msg);
    return body;
}

static void expect_err(const char *text, int rc, const char *param)
{
    struct checked c;
    json_t *body = validate(text, &c);
    assert_int_equal(c.rc, rc);
    if (param)
        assert_string_equal(c.param, param);
    else
        assert_null(c.param);
    json_decref(body);
}

static void test_validate_ok(void **state)
{
    (void)state;
    struct checked c;
    json_t *b = validate("{\"model\":\"m\",\"input\":\"Say hello to the world\"}", &c);
    assert_int_equal(c.rc, 0);
    assert_string_equal(c.req.model, "m");
    assert_false(c.req.stream);
    assert_true(c.req.include_usage);
    assert_int_equal(c.req.max_tokens, -1);
    assert_int_equal(c.req.n_choices, 1);
    assert_int_equal(c.req.prompt_bytes, 22);
    assert_false(c.req.has_media);
    json_decref(b);

    b = validate("{\"model\":\"m\",\"stream\":true,\"max_output_tokens\":64,\"instructions\":"
                 "\"Be brief.\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"input_text\",\"text\":\"abcd\"}]},{\"type\":\"function_call_output\","
                 "\"call_id\":\"c\",\"output\":\"42\"}]}",
                 &c);
    assert_int_equal(c.rc, 0);
    assert_true(c.req.stream);
    assert_int_equal(c.req.max_tokens, 64);
    assert_int_equal(c.req.prompt_bytes, 4 + 2 + 9);
    assert_int_equal(c.req.n_items, 2);
    json_decref(b);

    /* An image: tokens not bounded by bytes. So are earlier turns held by the node. */
    b = validate("{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":[{\"type\":"
                 "\"input_image\",\"image_url\":\"https://x/y.png\"}]}]}",
                 &c);
    assert_int_equal(c.rc, 0);
    assert_true(c.req.has_media);
    json_decref(b);
    b = validate("{\"model\":\"m\",\"previous_response_id\":\"resp_abc-1\",\"input\":\"more\"}",
                 &c);
    assert_int_equal(c.rc, 0);
    assert_true(c.req.has_media);
    assert_string_equal(responses_previous_id(b), "resp_abc-1");
    json_decref(b);
    /* A follow-up may send no input at all. */
    b = validate("{\"model\":\"m\",\"previous_response_id\":\"resp_1\"}", &c);
    assert_int_equal(c.rc, 0);
    json_decref(b);
}

static void test_validate_errors(void **state)
{
    (void)state;
    expect_err("[1]", TG_ERR_INVALID_JSON, NULL);
    expect_err("{\"input\":\"x\"}", TG_ERR_MISSING_PARAM, "model");
    expect_err("{\"model\":7,\"input\":\"x\"}", TG_ERR_INVALID_TYPE, "model");
    expect_err("{\"model\":\"m\"}", TG_ERR_MISSING_PARAM, "input");
    expect_err("{\"model\":\"m\",\"input\":5}", TG_ERR_INVALID_TYPE, "input");
    expect_err("{\"model\":\"m\",\"input\":[\"x\"]}", TG_ERR_INVALID_TYPE, "input");
    expect_err("{\"model\":\"m\",\"input\":[{\"role\":\"user\",\"content\":3}]}",
               TG_ERR_INVALID_TYPE, "input");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"instructions\":[]}", TG_ERR_INVALID_TYPE,
               "instructions");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"stream\":\"yes\"}", TG_ERR_INVALID_TYPE,
               "stream");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"max_output_tokens\":-1}", TG_ERR_INVALID_TYPE,
               "max_output_tokens");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"max_output_tokens\":1.5}", TG_ERR_INVALID_TYPE,
               "max_output_tokens");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":3}", TG_ERR_INVALID_TYPE,
               "previous_response_id");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":\"../x\"}",
               TG_ERR_INVALID_VALUE, "previous_response_id");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"previous_response_id\":\"\"}",
               TG_ERR_INVALID_VALUE, "previous_response_id");
    expect_err("{\"model\":\"m\",\"input\":\"x\",\"tools\":{}}", TG_ERR_INVALID_TYPE, "tools");
}

static void test_id_ok(void **state)
{
    (void)state;
    assert_true(responses_id_ok("resp_0123abcDEF-x", 17));
    assert_false(responses_id_ok("", 0));
    assert_false(responses_id_ok("resp/1", 6));
    assert_false(responses_id_ok("resp 1", 6));
    char longid[RESPONSES_ID_MAX + 2];
    memset(longid, 'a', sizeof longid);
    assert_true(responses_id_ok(longid, RESPONSES_ID_MAX));
    assert_false(responses_id_ok(longid, RESPONSES_ID_MAX + 1));
}

/* ---- scanning ----------------------------------------------------------------------------- */

static const char whole[] =
    "{\"id\":\"resp_42\",\"object\":\"response\",\"created_at\":1,\"status\":\"completed\","
    "\"error\":null,\"model\":\"m\",\"output\":[{\"type\":\"reasoning\",\"id\":\"rs_1\","
    "\"summary\":[{\"type\":\"summary_text\",\"text\":\"think\"}]},{\"type\":\"message\",\"id\":"
    "\"msg_1\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":"
    "\"output_text\",\"text\":\"Hello there\",\"annotations\":[]}]},{\"type\":\"function_call\","
    "\"id\":\"fc_1\",\"call_id\":\"call_1\",\"name\":\"get\",\"arguments\":\"{\\\"q\\\":1}\"}],"
    "\"usage\":{\"input_tokens\":12,\"input_tokens_details\":{\"cached_tokens\":4},"
    "\"output_tokens\":7,\"output_tokens_details\":{\"reasoning_tokens\":2},\"total_tokens\":19}}";

static int scan(const char *doc, size_t step, struct answer_scan *out)
{
    assert_int_equal(answer_scan_init_kind(out, NULL, ANSWER_KIND_RESPONSES), 0);
    size_t n = strlen(doc);
    int bad = 0;
    if (!step)
        step = n;
    for (size_t i = 0; i < n && !bad; i += step)
        bad = answer_scan_feed(out, doc + i, i + step > n ? n - i : step);
    int rc = bad ? -1 : answer_scan_finish(out);
    answer_scan_free(out);
    return rc;
}

static void test_scan_whole(void **state)
{
    (void)state;
    for (size_t step = 0; step < sizeof whole; step++) {
        struct answer_scan s;
        assert_int_equal(scan(whole, step, &s), 0);
        assert_true(s.object);
        assert_false(s.has_error);
        assert_true(s.has_usage);
        assert_int_equal(s.prompt_tokens, 12);
        assert_int_equal(s.completion_tokens, 7);
        assert_int_equal(s.cached_tokens, 4);
        assert_int_equal(s.delivered, strlen("think") + strlen("Hello there") + strlen("get") +
                                          strlen("{\"q\":1}"));
        assert_true(s.has_choices);
        assert_int_equal(s.choices_len, 3);
        assert_int_equal(s.n_choices, 1);
        assert_int_equal(s.finished, 3); /* completed: every output item */
        assert_string_equal(s.response_id, "resp_42");
        const char *u = strstr(whole, "\"usage\":") + 8;
        assert_int_equal(s.usage_start, (size_t)(u - whole));
        assert_int_equal(s.usage_end, strlen(whole) - 1);
    }
}

static void test_scan_events(void **state)
{
    (void)state;
    struct answer_scan s;
    assert_int_equal(scan("{\"type\":\"response.created\",\"sequence_number\":0,\"response\":"
                          "{\"id\":\"resp_7\",\"status\":\"in_progress\",\"output\":[],"
                          "\"usage\":null}}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_CREATED);
    assert_string_equal(s.response_id, "resp_7");
    assert_int_equal(s.n_choices, 0);
    assert_false(s.has_usage);

    assert_int_equal(scan("{\"type\":\"response.output_text.delta\",\"item_id\":\"msg_1\","
                          "\"output_index\":0,\"content_index\":0,\"delta\":\"Hel\","
                          "\"sequence_number\":4}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_OTHER);
    assert_int_equal(s.delivered, 3);
    assert_int_equal(s.n_choices, 1);

    /* The done event repeats the text: not delivered twice. */
    assert_int_equal(scan("{\"type\":\"response.output_text.done\",\"text\":\"Hello\","
                          "\"sequence_number\":5}",
                          0, &s),
                     0);
    assert_int_equal(s.delivered, 0);

    /* The terminal event: usage under response, output counted, text not. */
    assert_int_equal(scan("{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":"
                          "{\"id\":\"resp_7\",\"status\":\"completed\",\"output\":[{\"type\":"
                          "\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hello\"}]}"
                          "],\"usage\":{\"input_tokens\":5,\"input_tokens_details\":"
                          "{\"cached_tokens\":0},\"output_tokens\":2,\"total_tokens\":7}}}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_DONE);
    assert_true(s.has_usage);
    assert_int_equal(s.prompt_tokens, 5);
    assert_int_equal(s.completion_tokens, 2);
    assert_int_equal(s.delivered, 0);
    assert_int_equal(s.choices_len, 1);
    assert_int_equal(s.finished, 1);
    assert_false(s.has_error);

    assert_int_equal(scan("{\"type\":\"response.incomplete\",\"response\":{\"status\":"
                          "\"incomplete\",\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_DONE);
    assert_int_equal(s.finished, 0);

    assert_int_equal(scan("{\"type\":\"error\",\"code\":\"server_error\",\"message\":\"x\","
                          "\"param\":null,\"sequence_number\":3}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_FAILED);
    assert_int_equal(scan("{\"type\":\"response.failed\",\"response\":{\"status\":\"failed\","
                          "\"error\":{\"code\":\"server_error\",\"message\":\"x\"}}}",
                          0, &s),
                     0);
    assert_int_equal(responses_event_kind(&s), RESPONSES_EVENT_FAILED);
    /* Audio deltas are not text. */
    assert_int_equal(scan("{\"type\":\"response.audio.delta\",\"delta\":\"AAAA\"}", 0, &s), 0);
    assert_int_equal(s.delivered, 0);
}

static void test_scan_usage_lies(void **state)
{
    (void)state;
    struct answer_scan s;
    assert_int_equal(scan("{\"id\":\"resp_1\",\"status\":\"completed\",\"output\":[],\"usage\":"
                          "{\"input_tokens\":99999999999999999999999,\"output_tokens\":-5}}",
                          1, &s),
                     0);
    assert_true(s.has_usage);
    assert_true(s.prompt_tokens > 1000000000LL);
    assert_int_equal(s.completion_tokens, -5);
    assert_int_equal(s.choices_len, 0);
    assert_int_equal(s.n_choices, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_validate_ok), cmocka_unit_test(test_validate_errors),
        cmocka_unit_test(test_id_ok),       cmocka_unit_test(test_scan_whole),
        cmocka_unit_test(test_scan_events), cmocka_unit_test(test_scan_usage_lies),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

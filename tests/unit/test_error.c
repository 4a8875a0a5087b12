/* Unit tests for gateway/error: tg_error to HTTP status and OpenAI's error body. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/error.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    enum tg_error err;
    unsigned status;
    const char *type;
    const char *code;
} expected[] = {
    {TG_ERR_NOMEM, 500, "server_error", "internal_error"},
    {TG_ERR_INTERNAL, 500, "server_error", "internal_error"},
    {TG_ERR_INVALID_JSON, 400, "invalid_request_error", "invalid_json"},
    {TG_ERR_MISSING_PARAM, 400, "invalid_request_error", "missing_required_parameter"},
    {TG_ERR_INVALID_TYPE, 400, "invalid_request_error", "invalid_type"},
    {TG_ERR_INVALID_VALUE, 400, "invalid_request_error", "invalid_value"},
    {TG_ERR_AUTH, 401, "invalid_request_error", "invalid_api_key"},
    {TG_ERR_FORBIDDEN, 403, "permission_error", "forbidden"},
    {TG_ERR_UNKNOWN_URL, 404, "invalid_request_error", "unknown_url"},
    {TG_ERR_MODEL_NOT_FOUND, 404, "invalid_request_error", "model_not_found"},
    {TG_ERR_METHOD, 405, "invalid_request_error", "method_not_allowed"},
    {TG_ERR_TOO_LARGE, 413, "invalid_request_error", "request_too_large"},
    {TG_ERR_RATE_LIMITED, 429, "rate_limit_error", "rate_limit_exceeded"},
    {TG_ERR_BACKEND_UNREACHABLE, 502, "api_error", "backend_unreachable"},
    {TG_ERR_BAD_BACKEND_RESPONSE, 502, "api_error", "bad_backend_response"},
    {TG_ERR_NO_BACKEND, 503, "api_error", "no_healthy_backend"},
    {TG_ERR_SHUTTING_DOWN, 503, "api_error", "shutting_down"},
    {TG_ERR_BACKEND_TIMEOUT, 504, "api_error", "backend_timeout"},
    {TG_ERR_STREAM, 502, "api_error", "backend_stream_error"},
    {TG_ERR_PRICE_CEILING, 400, "invalid_request_error", "max_price_exceeded"},
    {TG_ERR_BACKEND_RATE_LIMITED, 503, "api_error", "backend_rate_limited"},
    {TG_ERR_MODEL_NOT_ALLOWED, 403, "permission_error", "model_not_allowed"},
    {TG_ERR_INSUFFICIENT_QUOTA, 429, "insufficient_quota", "insufficient_quota"},
    {TG_ERR_KEY_UNAVAILABLE, 503, "api_error", "key_store_unavailable"},
    {TG_ERR_CAPABILITY, 400, "invalid_request_error", "unsupported_parameter"},
    {TG_ERR_CONTEXT_LENGTH, 400, "invalid_request_error", "context_length_exceeded"},
    {TG_ERR_BACKEND_UNTRUSTED, 502, "api_error", "backend_unreachable"},
};

#define N_EXPECTED (sizeof expected / sizeof expected[0])

static void test_every_error_maps(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_EXPECTED; i++) {
        enum tg_error e = expected[i].err;
        if (error_status(e) != expected[i].status)
            fail_msg("error %d: status %u, expected %u", e, error_status(e), expected[i].status);
        assert_non_null(error_type(e));
        assert_string_equal(error_type(e), expected[i].type);
        assert_non_null(error_code(e));
        assert_string_equal(error_code(e), expected[i].code);
    }
}

/* Every code with a mapping of its own is pinned in the table above, so a new tg_error
 * cannot go untested: anything that is not the 500 fallback must be listed. */
static void test_table_is_complete(void **state)
{
    (void)state;
    for (int e = -1; e >= -200; e--) {
        int found = 0;
        for (size_t i = 0; i < N_EXPECTED; i++)
            found |= (int)expected[i].err == e;
        if (!found && (error_status((enum tg_error)e) != 500 ||
                       strcmp(error_code((enum tg_error)e), "internal_error")))
            fail_msg("tg_error %d maps to %u %s but is not in this test's table", e,
                     error_status((enum tg_error)e), error_code((enum tg_error)e));
    }
}

/* The OpenAI client libraries pick their exception class from the status; the type must be
 * the one OpenAI uses with it. */
static void test_status_type_consistency(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_EXPECTED; i++) {
        unsigned s = error_status(expected[i].err);
        const char *type = error_type(expected[i].err);
        if (s >= 400 && s < 500 && s != 403 && s != 429)
            assert_string_equal(type, "invalid_request_error");
        if (s >= 500)
            assert_true(!strcmp(type, "api_error") || !strcmp(type, "server_error"));
    }
}

static void test_unknown_error_is_500(void **state)
{
    (void)state;
    assert_int_equal(error_status((enum tg_error) - 999), 500);
    assert_string_equal(error_type((enum tg_error) - 999), "server_error");
    assert_int_equal(error_status((enum tg_error)42), 500);
}

/* Parses an error body and checks its shape: {"error":{message,type,param,code}} exactly. */
static json_t *parse_body(const char *body, size_t len)
{
    assert_non_null(body);
    assert_int_equal(strlen(body), len);
    json_error_t jerr;
    json_t *root = json_loads(body, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        fail_msg("error body is not JSON (%s): %s", jerr.text, body);
    assert_true(json_is_object(root));
    assert_int_equal(json_object_size(root), 1);
    json_t *err = json_object_get(root, "error");
    assert_non_null(err);
    assert_true(json_is_object(err));
    assert_int_equal(json_object_size(err), 4);
    assert_true(json_is_string(json_object_get(err, "message")));
    assert_true(json_is_string(json_object_get(err, "type")));
    assert_non_null(json_object_get(err, "param"));
    assert_non_null(json_object_get(err, "code"));
    return root;
}

static const char *field(json_t *root, const char *key)
{
    return json_string_value(json_object_get(json_object_get(root, "error"), key));
}

static void test_body_shape_every_error(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_EXPECTED; i++) {
        size_t len = 0;
        char *body = error_body(expected[i].err, "Something went wrong.", NULL, NULL, &len);
        json_t *root = parse_body(body, len);
        assert_string_equal(field(root, "message"), "Something went wrong.");
        assert_string_equal(field(root, "type"), expected[i].type);
        assert_string_equal(field(root, "code"), expected[i].code);
        assert_true(json_is_null(json_object_get(json_object_get(root, "error"), "param")));
        json_decref(root);
        free(body);
    }
}

static void test_body_param(void **state)
{
    (void)state;
    size_t len = 0;
    char *body = error_body(TG_ERR_MISSING_PARAM, "You must provide a model parameter.", "model",
                            NULL, &len);
    json_t *root = parse_body(body, len);
    json_t *param = json_object_get(json_object_get(root, "error"), "param");
    assert_true(json_is_string(param));
    assert_string_equal(json_string_value(param), "model");
    assert_string_equal(field(root, "code"), "missing_required_parameter");
    json_decref(root);
    free(body);

    body = error_body(TG_ERR_MISSING_PARAM, "x", NULL, NULL, &len);
    root = parse_body(body, len);
    param = json_object_get(json_object_get(root, "error"), "param");
    assert_true(json_is_null(param));
    /* null, not the string "null" or an empty string */
    assert_non_null(strstr(body, "\"param\":null"));
    json_decref(root);
    free(body);
}

static void test_body_code_override(void **state)
{
    (void)state;
    size_t len = 0;
    char *body = error_body(TG_ERR_INVALID_VALUE, "Bad n.", "n", "integer_above_max_value", &len);
    json_t *root = parse_body(body, len);
    assert_string_equal(field(root, "code"), "integer_above_max_value");
    assert_string_equal(field(root, "type"), "invalid_request_error");
    json_decref(root);
    free(body);
}

static void test_body_escapes_message(void **state)
{
    (void)state;
    const char *msg = "The model 'gpt-\"4\"' does not exist.\nSee\\docs\ttab "
                      "caf\xc3\xa9 \xe2\x9c\x93 \xf0\x9f\x98\x80 </script> \x01";
    size_t len = 0;
    char *body = error_body(TG_ERR_MODEL_NOT_FOUND, msg, "model", NULL, &len);
    /* Raw control characters never reach the wire. */
    for (size_t i = 0; i < len; i++)
        assert_true((unsigned char)body[i] >= 0x20);
    json_t *root = parse_body(body, len);
    assert_string_equal(field(root, "message"), msg);
    assert_string_equal(field(root, "code"), "model_not_found");
    json_decref(root);
    free(body);

    /* A param with quotes round-trips too. */
    body = error_body(TG_ERR_INVALID_TYPE, "m", "messages[0].\"content\"", NULL, &len);
    root = parse_body(body, len);
    assert_string_equal(field(root, "param"), "messages[0].\"content\"");
    json_decref(root);
    free(body);
}

static void test_body_null_message_and_len(void **state)
{
    (void)state;
    size_t len = 0;
    char *body = error_body(TG_ERR_INTERNAL, NULL, NULL, NULL, &len);
    json_t *root = parse_body(body, len);
    assert_true(strlen(field(root, "message")) > 0);
    json_decref(root);
    free(body);
    /* len is optional */
    body = error_body(TG_ERR_AUTH, "Invalid API key.", NULL, NULL, NULL);
    assert_non_null(body);
    root = parse_body(body, strlen(body));
    assert_string_equal(field(root, "code"), "invalid_api_key");
    json_decref(root);
    free(body);
}

/* Messages carry text the gateway did not write (a URL path MHD has percent-decoded, a model
 * name cut to fit a buffer, an upstream message cut at N bytes), so they may not be valid
 * UTF-8. The body must still be produced: NULL is for out of memory only, and a NULL body
 * makes the gateway answer 500 with an empty body instead of the real error. */
static void test_body_invalid_utf8_message(void **state)
{
    (void)state;
    static const struct {
        const char *msg, *kept;
    } cases[] = {
        {"Invalid URL (GET /v1/\xff)", "Invalid URL (GET /v1/"},   /* /v1/%ff */
        {"The model 'caf\xc3' does not exist.", "The model 'caf"}, /* cut inside */
        {"Backend b answered HTTP 500: \xe2\x9c", "Backend b answered HTTP 500: "},
        {"\xc0\xaf overlong slash", " overlong slash"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = 0;
        char *body = error_body(TG_ERR_UNKNOWN_URL, cases[i].msg, NULL, NULL, &len);
        if (!body)
            fail_msg("error_body returned NULL for message %zu (invalid UTF-8)", i);
        json_t *root = parse_body(body, len);
        assert_string_equal(field(root, "code"), "unknown_url");
        /* The valid text of the message is kept. */
        assert_non_null(strstr(field(root, "message"), cases[i].kept));
        json_decref(root);
        free(body);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_error_maps),
        cmocka_unit_test(test_table_is_complete),
        cmocka_unit_test(test_status_type_consistency),
        cmocka_unit_test(test_unknown_error_is_500),
        cmocka_unit_test(test_body_shape_every_error),
        cmocka_unit_test(test_body_param),
        cmocka_unit_test(test_body_code_override),
        cmocka_unit_test(test_body_escapes_message),
        cmocka_unit_test(test_body_null_message_and_len),
        cmocka_unit_test(test_body_invalid_utf8_message),
    };
    return cmocka_run_group_tests_name("error", tests, NULL, NULL);
}

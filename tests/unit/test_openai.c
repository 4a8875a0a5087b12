/* Unit tests for gateway/openai: endpoint matching, request validation, prompt estimates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/arena.h"
#include "base/error.h"
#include "openai/media.h"
#include "openai/openai.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- openai_match ------------------------------------------------------------------------ */

static const struct openai_endpoint *match_ok(const char *method, const char *url,
                                              enum openai_route route)
{
    const struct openai_endpoint *ep = NULL;
    int rc = openai_match(method, url, &ep);
    if (rc != 0)
        fail_msg("%s %s: expected a match, got %d", method, url, rc);
    assert_non_null(ep);
    assert_int_equal(ep->route, route);
    return ep;
}

static void test_match_every_endpoint(void **state)
{
    (void)state;
    const struct openai_endpoint *ep;

    ep = match_ok("POST", "/v1/chat/completions", OPENAI_CHAT);
    assert_string_equal(ep->method, "POST");
    assert_string_equal(ep->upstream_path, "/chat/completions");
    assert_true(ep->can_stream);
    assert_true(ep->needs_auth);
    assert_int_equal(ep->metric, METRICS_ROUTE_CHAT);

    ep = match_ok("POST", "/v1/completions", OPENAI_COMPLETIONS);
    assert_string_equal(ep->upstream_path, "/completions");
    assert_true(ep->can_stream);
    assert_true(ep->needs_auth);
    assert_int_equal(ep->metric, METRICS_ROUTE_COMPLETIONS);

    ep = match_ok("POST", "/v1/responses", OPENAI_RESPONSES);
    assert_string_equal(ep->upstream_path, "/responses");
    assert_true(ep->can_stream);
    assert_true(ep->generates);
    assert_int_equal(ep->answer, ANSWER_KIND_RESPONSES);
    ep = match_ok("GET", "/v1/responses/resp_1", OPENAI_RESPONSE);
    ep = match_ok("DELETE", "/v1/responses/resp_1", OPENAI_RESPONSE);
    assert_string_equal(ep->method, "DELETE");
    ep = match_ok("POST", "/v1/images/generations", OPENAI_IMAGES);
    assert_int_equal(ep->meter, OPENAI_METER_IMAGES);
    ep = match_ok("POST", "/v1/audio/speech", OPENAI_SPEECH);
    assert_int_equal(ep->meter, OPENAI_METER_CHARACTERS);
    assert_int_equal(ep->answer, ANSWER_KIND_NONE);
    ep = match_ok("POST", "/v1/moderations", OPENAI_MODERATIONS);
    assert_int_equal(ep->meter, OPENAI_METER_TOKENS);
    ep = match_ok("POST", "/v1/audio/transcriptions", OPENAI_TRANSCRIPTIONS);
    assert_int_equal(ep->meter, OPENAI_METER_AUDIO_SECONDS);
    assert_true(ep->multipart);
    assert_int_equal(ep->metric, METRICS_ROUTE_AUDIO_TRANSCRIPTIONS);
    ep = match_ok("POST", "/v1/audio/translations", OPENAI_TRANSLATIONS);
    assert_true(ep->multipart);
    assert_false(match_ok("POST", "/v1/audio/speech", OPENAI_SPEECH)->multipart);
    ep = match_ok("POST", "/v1/embeddings", OPENAI_EMBEDDINGS);
    assert_string_equal(ep->upstream_path, "/embeddings");
    assert_false(ep->can_stream);
    assert_true(ep->needs_auth);
    assert_int_equal(ep->metric, METRICS_ROUTE_EMBEDDINGS);

    ep = match_ok("GET", "/v1/models", OPENAI_MODELS);
    assert_null(ep->upstream_path);
    assert_true(ep->needs_auth);
    assert_int_equal(ep->metric, METRICS_ROUTE_MODELS);

    ep = match_ok("GET", "/healthz", OPENAI_HEALTHZ);
    assert_null(ep->upstream_path);
    assert_false(ep->needs_auth);
    ep = match_ok("GET", "/readyz", OPENAI_READYZ);
    assert_false(ep->needs_auth);
    ep = match_ok("GET", "/metrics", OPENAI_METRICS);
    assert_false(ep->needs_auth);
    assert_int_equal(ep->metric, METRICS_ROUTE_OTHER);
}

static void test_match_model_by_id(void **state)
{
    (void)state;
    const struct openai_endpoint *ep = match_ok("GET", "/v1/models/gpt-4o-mini", OPENAI_MODEL);
    assert_string_equal(ep->method, "GET");
    assert_true(ep->needs_auth);
    assert_null(ep->upstream_path);
    assert_int_equal(ep->metric, METRICS_ROUTE_MODELS);
    /* Model ids may contain slashes (Hugging Face style). */
    match_ok("GET", "/v1/models/Qwen/Qwen2.5-7B-Instruct", OPENAI_MODEL);
    /* The list endpoint stays the list endpoint. */
    match_ok("GET", "/v1/models", OPENAI_MODELS);
}

static void test_match_head_as_get(void **state)
{
    (void)state;
    match_ok("HEAD", "/v1/models", OPENAI_MODELS);
    match_ok("HEAD", "/healthz", OPENAI_HEALTHZ);
    const struct openai_endpoint *ep = NULL;
    assert_int_equal(openai_match("HEAD", "/v1/chat/completions", &ep), TG_ERR_METHOD);
}

static void test_match_wrong_method(void **state)
{
    (void)state;
    static const struct {
        const char *method, *url;
        enum openai_route route;
        const char *allow;
    } cases[] = {
        {"GET", "/v1/chat/completions", OPENAI_CHAT, "POST"},
        {"PUT", "/v1/chat/completions", OPENAI_CHAT, "POST"},
        {"DELETE", "/v1/completions", OPENAI_COMPLETIONS, "POST"},
        {"GET", "/v1/embeddings", OPENAI_EMBEDDINGS, "POST"},
        {"POST", "/v1/models", OPENAI_MODELS, "GET"},
        {"DELETE", "/v1/models/gpt-4o", OPENAI_MODEL, "GET"},
        {"POST", "/healthz", OPENAI_HEALTHZ, "GET"},
        {"POST", "/metrics", OPENAI_METRICS, "GET"},
        {"post", "/v1/chat/completions", OPENAI_CHAT, "POST"}, /* methods are case-sensitive */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct openai_endpoint *ep = NULL;
        assert_int_equal(openai_match(cases[i].method, cases[i].url, &ep), TG_ERR_METHOD);
        assert_non_null(ep);
        assert_int_equal(ep->route, cases[i].route);
        assert_string_equal(ep->method, cases[i].allow);
    }
}

static void test_match_unknown_url(void **state)
{
    (void)state;
    static const char *const urls[] = {
        "/",
        "",
        "/v1",
        "/v1/",
        "/v1/chat",
        "/v1/chat/completion",
        "/v1/chat/completions/",
        "/v1/chat/completionsX",
        "/v2/chat/completions",
        "/V1/chat/completions",
        "/v1/models/", /* an empty id */
        "/v1/modelsX",
        "/v1/embedding",
        "/healthz/",
        "/v1/responsesX",
        "/v1/images/edits",
        "/v1/audio/transcriptionsX",
        "/v1/files",
    };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        const struct openai_endpoint *ep = (const void *)1;
        int rc = openai_match("GET", urls[i], &ep);
        if (rc != TG_ERR_UNKNOWN_URL)
            fail_msg("GET \"%s\": expected TG_ERR_UNKNOWN_URL, got %d", urls[i], rc);
        assert_null(ep);
        ep = (const void *)1;
        assert_int_equal(openai_match("POST", urls[i], &ep), TG_ERR_UNKNOWN_URL);
        assert_null(ep);
    }
}

/* An upload's fields as gateway/upload.c writes them: the file's size, the formats, stream. */
static void test_validate_upload(void **state)
{
    (void)state;
    static const struct {
        const char *body;
        int err;
        const char *param;
    } cases[] = {
        {"{\"model\":\"w\",\"file\":{\"bytes\":48000}}", 0, NULL},
        {"{\"model\":\"w\",\"file\":{\"bytes\":1},\"response_format\":\"vtt\"}", 0, NULL},
        {"{\"model\":\"w\"}", TG_ERR_MISSING_PARAM, "file"},
        {"{\"file\":{\"bytes\":5}}", TG_ERR_MISSING_PARAM, "model"},
        {"{\"model\":\"w\",\"file\":{\"bytes\":0}}", TG_ERR_INVALID_VALUE, "file"},
        {"{\"model\":\"w\",\"file\":{\"bytes\":5},\"response_format\":\"mp3\"}",
         TG_ERR_INVALID_VALUE, "response_format"},
        {"{\"model\":\"w\",\"file\":{\"bytes\":5},\"stream\":true}", TG_ERR_INVALID_VALUE,
         "stream"},
        {"{\"model\":\"w\",\"file\":{\"bytes\":5},\"stream\":\"yes\"}", TG_ERR_INVALID_TYPE,
         "stream"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *body = json_loads(cases[i].body, 0, NULL);
        assert_non_null(body);
        struct openai_request req;
        const char *param = NULL;
        char msg[200];
        int rc = media_validate(OPENAI_TRANSCRIPTIONS, body, &req, &param, msg, sizeof msg);
        if (rc != cases[i].err)
            fail_msg("%s: expected %d, got %d (%s)", cases[i].body, cases[i].err, rc, msg);
        if (cases[i].param)
            assert_string_equal(param, cases[i].param);
        if (i == 0) {
            assert_int_equal(req.upload_bytes, 48000);
            assert_int_equal(req.units, 48000 / MEDIA_AUDIO_MIN_BYTES_PER_SECOND);
            assert_int_equal(req.prompt_tokens_est, 4 * MEDIA_AUDIO_EST_TOKENS_PER_SECOND);
            assert_false(req.stream);
        }
        if (i == 1)
            assert_int_equal(req.units, 1); /* never below a second */
        json_decref(body);
    }
}

/* ---- openai_validate --------------------------------------------------------------------- */

struct vres {
    int rc;
    const char *param;
    char msg[256];
    struct openai_request req;
};

/* Validates `text` for `route`; the parsed body is kept alive in *body (caller decrefs). */
static json_t *validate(enum openai_route route, const char *text, struct vres *v)
{
    json_error_t jerr;
    json_t *body = json_loads(text, JSON_DECODE_ANY, &jerr);
    if (!body)
        fail_msg("test body is not JSON: %s: %s", jerr.text, text);
    memset(v, 0, sizeof *v);
    v->param = "unset";
    v->rc = openai_validate(route, body, &v->req, &v->param, v->msg, sizeof v->msg);
    return body;
}

static void expect_ok(enum openai_route route, const char *text, struct vres *v, json_t **body)
{
    *body = validate(route, text, v);
    if (v->rc != 0)
        fail_msg("expected valid, got %d (%s) for %s", v->rc, v->msg, text);
    assert_null(v->param);
}

static void expect_err(enum openai_route route, const char *text, int rc, const char *param)
{
    struct vres v;
    json_t *body = validate(route, text, &v);
    if (v.rc != rc)
        fail_msg("expected %d, got %d (%s) for %s", rc, v.rc, v.msg, text);
    if (param) {
        assert_non_null(v.param);
        assert_string_equal(v.param, param);
        assert_non_null(strstr(v.msg, param)); /* the message names the field */
    } else {
        assert_null(v.param);
    }
    assert_true(strlen(v.msg) > 0);
    assert_int_equal(error_status(v.rc), 400);
    json_decref(body);
}

#define CHAT_MSGS "\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]"

static void test_validate_valid_chat(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":\"Be "
              "brief.\"},{\"role\":\"user\",\"content\":\"Hello\"}],\"temperature\":0.2}",
              &v, &body);
    assert_string_equal(v.req.model, "gpt-4o-mini");
    assert_false(v.req.stream);
    assert_false(v.req.include_usage);
    assert_int_equal(v.req.max_tokens, -1);
    assert_true(v.req.prompt_tokens_est > 0);
    struct openai_request direct;
    openai_estimate_prompt(OPENAI_CHAT, body, &direct);
    assert_int_equal(v.req.prompt_tokens_est, direct.prompt_tokens_est);
    json_decref(body);
}

static void test_validate_not_object(void **state)
{
    (void)state;
    expect_err(OPENAI_CHAT, "[1,2,3]", TG_ERR_INVALID_JSON, NULL);
    expect_err(OPENAI_CHAT, "\"model\"", TG_ERR_INVALID_JSON, NULL);
    expect_err(OPENAI_EMBEDDINGS, "null", TG_ERR_INVALID_JSON, NULL);
}

static void test_validate_model(void **state)
{
    (void)state;
    expect_err(OPENAI_CHAT, "{" CHAT_MSGS "}", TG_ERR_MISSING_PARAM, "model");
    expect_err(OPENAI_CHAT, "{\"model\":null," CHAT_MSGS "}", TG_ERR_MISSING_PARAM, "model");
    expect_err(OPENAI_CHAT, "{\"model\":42," CHAT_MSGS "}", TG_ERR_INVALID_TYPE, "model");
    expect_err(OPENAI_CHAT, "{\"model\":[\"gpt-4o\"]," CHAT_MSGS "}", TG_ERR_INVALID_TYPE, "model");
    expect_err(OPENAI_CHAT, "{\"model\":{\"id\":\"x\"}," CHAT_MSGS "}", TG_ERR_INVALID_TYPE,
               "model");
    expect_err(OPENAI_CHAT, "{\"model\":\"\"," CHAT_MSGS "}", TG_ERR_INVALID_VALUE, "model");
    expect_err(OPENAI_COMPLETIONS, "{\"prompt\":\"x\"}", TG_ERR_MISSING_PARAM, "model");
    expect_err(OPENAI_EMBEDDINGS, "{\"input\":\"x\"}", TG_ERR_MISSING_PARAM, "model");
}

static void test_validate_messages(void **state)
{
    (void)state;
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"}", TG_ERR_MISSING_PARAM, "messages");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":null}", TG_ERR_MISSING_PARAM,
               "messages");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":\"hello\"}", TG_ERR_INVALID_TYPE,
               "messages");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":{\"role\":\"user\"}}",
               TG_ERR_INVALID_TYPE, "messages");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[]}", TG_ERR_INVALID_VALUE, "messages");
    /* Each message is an object with a string role. */
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[\"hi\"]}", TG_ERR_INVALID_TYPE,
               "messages");
    expect_err(OPENAI_CHAT,
               "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
               "{\"content\":\"no role\"}]}",
               TG_ERR_INVALID_TYPE, "messages");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":1,\"content\":\"a\"}]}",
               TG_ERR_INVALID_TYPE, "messages");
    /* Completions and embeddings do not need messages. */
    struct vres v;
    json_t *body;
    expect_ok(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"Once upon\"}", &v, &body);
    json_decref(body);
}

static void test_validate_stream(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":\"yes\"}",
               TG_ERR_INVALID_TYPE, "stream");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":1}", TG_ERR_INVALID_TYPE,
               "stream");
    expect_err(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":\"x\",\"stream\":true}",
               TG_ERR_INVALID_VALUE, "stream");

    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":true}", &v, &body);
    assert_true(v.req.stream);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":false}", &v, &body);
    assert_false(v.req.stream);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":null}", &v, &body);
    assert_false(v.req.stream);
    json_decref(body);
    expect_ok(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"p\",\"stream\":true}", &v, &body);
    assert_true(v.req.stream);
    json_decref(body);
    /* Embeddings with stream false is fine. */
    expect_ok(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":\"x\",\"stream\":false}", &v, &body);
    assert_false(v.req.stream);
    json_decref(body);
}

static void test_validate_include_usage(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS
              ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
              &v, &body);
    assert_true(v.req.stream);
    assert_true(v.req.include_usage);
    json_decref(body);
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS
              ",\"stream\":true,\"stream_options\":{\"include_usage\":false}}",
              &v, &body);
    assert_false(v.req.include_usage);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream\":true,\"stream_options\":{}}",
              &v, &body);
    assert_false(v.req.include_usage);
    json_decref(body);
    expect_err(OPENAI_CHAT,
               "{\"model\":\"m\"," CHAT_MSGS ",\"stream_options\":{\"include_usage\":\"yes\"}}",
               TG_ERR_INVALID_TYPE, "stream_options.include_usage");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"stream_options\":true}",
               TG_ERR_INVALID_TYPE, "stream_options");
}

static void test_validate_prompt_and_input(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    expect_err(OPENAI_COMPLETIONS, "{\"model\":\"m\"}", TG_ERR_MISSING_PARAM, "prompt");
    expect_err(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":null}", TG_ERR_MISSING_PARAM,
               "prompt");
    expect_err(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":5}", TG_ERR_INVALID_TYPE, "prompt");
    expect_err(OPENAI_COMPLETIONS, "{\"model\":\"m\"," CHAT_MSGS "}", TG_ERR_MISSING_PARAM,
               "prompt");
    expect_ok(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[\"a\",\"b\"]}", &v, &body);
    json_decref(body);

    expect_err(OPENAI_EMBEDDINGS, "{\"model\":\"e\"}", TG_ERR_MISSING_PARAM, "input");
    expect_err(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":{\"text\":\"x\"}}",
               TG_ERR_INVALID_TYPE, "input");
    expect_ok(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":[\"one\",\"two\"]}", &v, &body);
    assert_string_equal(v.req.model, "e");
    json_decref(body);
    expect_ok(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":[101,2023,2003]}", &v, &body);
    json_decref(body);
}

static void test_validate_max_tokens(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    static const char *const bad[] = {
        "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":-1}",
        "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":1.5}",
        "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":\"100\"}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *b = validate(OPENAI_CHAT, bad[i], &v);
        if (v.rc != TG_ERR_INVALID_TYPE && v.rc != TG_ERR_INVALID_VALUE)
            fail_msg("expected a 400 for %s, got %d", bad[i], v.rc);
        assert_string_equal(v.param, "max_tokens");
        assert_non_null(strstr(v.msg, "max_tokens"));
        json_decref(b);
    }
    body =
        validate(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"max_completion_tokens\":-5}", &v);
    assert_true(v.rc == TG_ERR_INVALID_TYPE || v.rc == TG_ERR_INVALID_VALUE);
    assert_string_equal(v.param, "max_completion_tokens");
    json_decref(body);

    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":256}", &v, &body);
    assert_int_equal(v.req.max_tokens, 256);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":0}", &v, &body);
    assert_int_equal(v.req.max_tokens, 0);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":null}", &v, &body);
    assert_int_equal(v.req.max_tokens, -1);
    json_decref(body);
    /* max_completion_tokens wins over the legacy max_tokens, in either order. */
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":100,\"max_completion_tokens\":50}", &v,
              &body);
    assert_int_equal(v.req.max_tokens, 50);
    json_decref(body);
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS ",\"max_completion_tokens\":500,\"max_tokens\":10}", &v,
              &body);
    assert_int_equal(v.req.max_tokens, 500);
    json_decref(body);
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS ",\"max_completion_tokens\":null,\"max_tokens\":7}", &v,
              &body);
    assert_int_equal(v.req.max_tokens, 7);
    json_decref(body);
    expect_ok(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"x\",\"max_tokens\":16}", &v,
              &body);
    assert_int_equal(v.req.max_tokens, 16);
    json_decref(body);
}

/* A tiny message buffer truncates the message and never overflows. */
static void test_validate_small_msg_buffer(void **state)
{
    (void)state;
    json_t *body = json_loads("{\"messages\":[]}", 0, NULL);
    assert_non_null(body);
    char msg[16];
    memset(msg, 'Z', sizeof msg);
    struct openai_request req;
    const char *param = NULL;
    assert_int_equal(openai_validate(OPENAI_CHAT, body, &req, &param, msg, 8),
                     TG_ERR_MISSING_PARAM);
    assert_int_equal(strlen(msg), 7);
    assert_int_equal(msg[8], 'Z');
    json_decref(body);
}

/* ---- prompt token estimates -------------------------------------------------------------- */

static struct openai_request estimate_req(enum openai_route route, const char *text)
{
    json_t *body = json_loads(text, 0, NULL);
    if (!body)
        fail_msg("test body is not JSON: %s", text);
    struct openai_request req;
    memset(&req, 0xA5, sizeof req);
    openai_estimate_prompt(route, body, &req);
    json_decref(body);
    return req;
}

static size_t estimate(enum openai_route route, const char *text)
{
    return estimate_req(route, text).prompt_tokens_est;
}

static void test_estimate_chat(void **state)
{
    (void)state;
    const char *sys = "You are a helpful assistant that answers in one short sentence.";
    const char *user = "What is the capital of France, and what river runs through it?";
    char body[1024];
    snprintf(body, sizeof body,
             "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":\"%s\"}]}",
             sys, user);
    size_t chars = strlen(sys) + strlen(user);
    size_t est = estimate(OPENAI_CHAT, body);
    /* About a token per four bytes of text, plus a little framing per message. */
    assert_true(est >= chars / 4);
    assert_true(est <= chars / 4 + 2 * 8 + 8);

    /* The JSON around the text and the model name do not count. */
    char other[1024];
    snprintf(other, sizeof other,
             "{\"model\":\"a-much-longer-model-name-that-is-not-prompt-text\",\"temperature\":0.7,"
             "\"top_p\":1,\"messages\":[{\"role\":\"system\",\"content\":\"%s\"},"
             "{\"role\":\"user\",\"content\":\"%s\"}]}",
             sys, user);
    assert_int_equal(estimate(OPENAI_CHAT, other), est);
}

/* Content given as parts counts the text parts, not the image URL. */
static void test_estimate_array_content_parts(void **state)
{
    (void)state;
    size_t plain = estimate(
        OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Describe "
                     "this image in detail, please.\"}]}");
    size_t parts = estimate(
        OPENAI_CHAT,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
        "{\"type\":\"text\",\"text\":\"Describe this image \"},"
        "{\"type\":\"image_url\",\"image_url\":{\"url\":\"https://example.com/a/very/long/path/"
        "to/an/image/that/would/count/for/a/lot/of/tokens/if/it/were/counted.png\"}},"
        "{\"type\":\"text\",\"text\":\"in detail, please.\"}]}]}");
    assert_int_equal(parts, plain);
    assert_true(parts > 0);
}

static void test_estimate_grows_with_prompt(void **state)
{
    (void)state;
    char *big = malloc(8192);
    assert_non_null(big);
    char text[4001];
    for (size_t i = 0; i < 4000; i++)
        text[i] = "lorem ipsum dolor sit amet "[i % 27];
    text[4000] = '\0';

    snprintf(big, 8192, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}",
             text);
    size_t large = estimate(OPENAI_CHAT, big);
    size_t small = estimate(OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                                         "\"content\":\"Say hi.\"}]}");
    assert_true(large > small);
    assert_in_range(large, 950, 1050); /* 4000 chars, roughly 1000 tokens */

    /* Three messages of text cost more than one. */
    snprintf(big, 8192,
             "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Say hi.\"},"
             "{\"role\":\"assistant\",\"content\":\"Hi!\"},{\"role\":\"user\",\"content\":"
             "\"Now say it in French.\"}]}");
    assert_true(estimate(OPENAI_CHAT, big) > small);

    snprintf(big, 8192, "{\"model\":\"m\",\"prompt\":\"%s\"}", text);
    assert_in_range(estimate(OPENAI_COMPLETIONS, big), 950, 1050);
    snprintf(big, 8192, "{\"model\":\"e\",\"input\":\"%s\"}", text);
    assert_in_range(estimate(OPENAI_EMBEDDINGS, big), 950, 1050);
    free(big);
}

static void test_estimate_prompt_arrays(void **state)
{
    (void)state;
    /* A list of strings counts all of them. */
    size_t one = estimate(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"abcdefghabcdefgh\"}");
    size_t two =
        estimate(OPENAI_COMPLETIONS,
                 "{\"model\":\"m\",\"prompt\":[\"abcdefghabcdefgh\",\"abcdefghabcdefgh\"]}");
    assert_in_range(one, 4, 5);
    assert_in_range(two, 8, 9);
    size_t emb =
        estimate(OPENAI_EMBEDDINGS,
                 "{\"model\":\"e\",\"input\":[\"abcdefghabcdefgh\",\"abcdefghabcdefgh\"]}");
    assert_int_equal(emb, two);
    /* Pre-tokenised input: one token an element. */
    assert_int_equal(estimate(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":[1,2,3,4,5,6,7,8]}"),
                     8);
    /* Nothing to count. */
    assert_int_equal(estimate(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":\"\"}"), 0);
}

/* Odd but legal message shapes do not break the estimate. */
static void test_estimate_tool_messages(void **state)
{
    (void)state;
    size_t est = estimate(
        OPENAI_CHAT,
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Weather in Paris?\"},"
        "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_1\","
        "\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":"
        "\"{\\\"city\\\":\\\"Paris\\\"}\"}}]},"
        "{\"role\":\"tool\",\"tool_call_id\":\"call_1\",\"content\":\"18C and sunny\"}]}");
    size_t text = strlen("Weather in Paris?") + strlen("18C and sunny");
    assert_true(est >= text / 4);
    assert_true(est < 100);
}

/* The other figures the estimate fills: text bytes, item count, and whether non-text input
 * makes the byte count a poor bound. */
static void test_estimate_fields(void **state)
{
    (void)state;
    struct openai_request r = estimate_req(
        OPENAI_CHAT, "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Be "
                     "brief.\"},{\"role\":\"user\",\"content\":\"Hello there\"}]}");
    assert_int_equal(r.prompt_bytes, strlen("Be brief.") + strlen("Hello there"));
    assert_int_equal(r.n_items, 2);
    assert_false(r.has_media);

    r = estimate_req(OPENAI_CHAT,
                     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":["
                     "{\"type\":\"text\",\"text\":\"What is in this picture?\"},"
                     "{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:image/png;base64,"
                     "iVBORw0KGgo\"}}]}]}");
    assert_true(r.has_media);
    assert_int_equal(r.prompt_bytes, strlen("What is in this picture?"));
    assert_int_equal(r.n_items, 1);

    r = estimate_req(OPENAI_EMBEDDINGS, "{\"model\":\"e\",\"input\":[\"a\",\"bb\",\"ccc\"]}");
    assert_int_equal(r.n_items, 3);
    assert_int_equal(r.prompt_bytes, 6);
    assert_false(r.has_media);
    r = estimate_req(OPENAI_COMPLETIONS, "{\"model\":\"m\",\"prompt\":\"abc\"}");
    assert_int_equal(r.n_items, 1);
    assert_int_equal(r.prompt_bytes, 3);
}

/* Tool definitions are sent to the model as text and count towards the prompt. */
static void test_estimate_counts_tools(void **state)
{
    (void)state;
    const char *base = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"Weather in Paris?\"}]";
    char with_tools[2048];
    snprintf(with_tools, sizeof with_tools,
             "%s,\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\","
             "\"description\":\"Get the current weather for a city, in Celsius or Fahrenheit."
             "\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
             "\"string\"},\"unit\":{\"type\":\"string\",\"enum\":[\"c\",\"f\"]}},"
             "\"required\":[\"city\"]}}}]}",
             base);
    char without[512];
    snprintf(without, sizeof without, "%s}", base);
    assert_true(estimate(OPENAI_CHAT, with_tools) > estimate(OPENAI_CHAT, without) + 20);
}

static void test_validate_n(void **state)
{
    (void)state;
    struct vres v;
    json_t *body;
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS "}", &v, &body);
    assert_int_equal(v.req.n_choices, 1);
    json_decref(body);
    expect_ok(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"n\":3}", &v, &body);
    assert_int_equal(v.req.n_choices, 3);
    json_decref(body);
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"n\":0}", TG_ERR_INVALID_VALUE, "n");
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"n\":\"2\"}", TG_ERR_INVALID_VALUE,
               "n");
}

/* ---- max_tokens × n never wraps (issue 13, item 5) ---------------------------------------- */

static void test_completion_cap_saturates(void **state)
{
    (void)state;
    struct openai_request req = {.max_tokens = -1, .n_choices = 3};
    assert_int_equal(openai_completion_cap(&req), -1);
    req.max_tokens = 100;
    assert_int_equal(openai_completion_cap(&req), 300);
    /* 9223372036854775807 × 128 was -128 as signed 64-bit (and UB); 6148914691236517206 × 3
     * wrapped to 2, so a node's 400 tokens were billed as 2. */
    req = (struct openai_request){.max_tokens = LLONG_MAX, .n_choices = 128};
    assert_true(openai_completion_cap(&req) == LLONG_MAX);
    req = (struct openai_request){.max_tokens = 6148914691236517206LL, .n_choices = 3};
    assert_true(openai_completion_cap(&req) == LLONG_MAX);
    req = (struct openai_request){.max_tokens = LLONG_MAX / 3, .n_choices = 3};
    assert_true(openai_completion_cap(&req) == LLONG_MAX / 3 * 3); /* exactly fits */
    req = (struct openai_request){.max_tokens = 5, .n_choices = 0};
    assert_int_equal(openai_completion_cap(&req), 5); /* n unset counts as 1 */
}

static void test_output_estimate_is_bounded(void **state)
{
    (void)state;
    const size_t cap = (size_t)OPENAI_MAX_TOKENS_ESTIMATE;
    struct openai_request req = {.max_tokens = -1, .n_choices = 2};
    assert_int_equal(openai_output_estimate(OPENAI_CHAT, &req, 256), 512);
    assert_int_equal(openai_output_estimate(OPENAI_CHAT, &req, SIZE_MAX), 2 * cap);
    req.max_tokens = 100;
    req.n_choices = 3;
    assert_int_equal(openai_output_estimate(OPENAI_COMPLETIONS, &req, 256), 300);
    assert_int_equal(openai_output_estimate(OPENAI_EMBEDDINGS, &req, 256), 0);
    req.max_tokens = 6148914691236517206LL; /* wrapped to an estimate of 2 before */
    assert_int_equal(openai_output_estimate(OPENAI_CHAT, &req, 256), 3 * cap);
    req = (struct openai_request){.max_tokens = LLONG_MAX, .n_choices = OPENAI_MAX_CHOICES};
    assert_int_equal(openai_output_estimate(OPENAI_CHAT, &req, 256), cap * OPENAI_MAX_CHOICES);

    /* From a body: the largest max_tokens and n there are pass validation and stay bounded. */
    struct vres v;
    json_t *body;
    expect_ok(OPENAI_CHAT,
              "{\"model\":\"m\"," CHAT_MSGS ",\"max_tokens\":9223372036854775807,\"n\":128}", &v,
              &body);
    assert_true(v.req.max_tokens == LLONG_MAX);
    assert_true(openai_completion_cap(&v.req) == LLONG_MAX);
    assert_int_equal(openai_output_estimate(OPENAI_CHAT, &v.req, 256), cap * 128);
    json_decref(body);
    expect_err(OPENAI_CHAT, "{\"model\":\"m\"," CHAT_MSGS ",\"n\":129}", TG_ERR_INVALID_VALUE, "n");
}

/* ---- openai_parse_body: bounded cost, duplicate keys (issue 13, items 7 and 9) ----------- */

struct pres {
    int rc;
    char param[256];
    char msg[400];
    size_t blocks; /* arena blocks the parse took */
};

/* Parses text under a max_body_bytes cap, in an arena as the gateway does. */
static struct pres parse(const char *text, size_t len, size_t max_body_bytes)
{
    struct pres p;
    memset(&p, 0, sizeof p);
    struct arena a = {0};
    json_t *body = (json_t *)&p; /* must be reset */
    strcpy(p.param, "unset");
    arena_enter(&a);
    p.rc = openai_parse_body(text, len, max_body_bytes, &body, p.param, sizeof p.param, p.msg,
                             sizeof p.msg);
    arena_leave();
    p.blocks = arena_n_blocks(&a);
    if (p.rc == 0) {
        assert_non_null(body);
        assert_string_equal(p.param, "");
    } else {
        assert_null(body);
        assert_true(strlen(p.msg) > 0);
    }
    json_decref(body);
    arena_release(&a);
    return p;
}

/* "[1,1,...,1]" with n elements. */
static char *int_array(size_t n, size_t *len)
{
    char *s = malloc(2 * n + 2);
    assert_non_null(s);
    size_t o = 0;
    s[o++] = '[';
    for (size_t i = 0; i < n; i++) {
        s[o++] = '1';
        s[o++] = ',';
    }
    s[n ? o - 1 : o++] = ']';
    s[o] = '\0';
    *len = o;
    return s;
}

static void test_parse_body_value_cap(void **state)
{
    (void)state;
    assert_int_equal(openai_body_max_values(8u << 20), (8u << 20) / OPENAI_BODY_BYTES_PER_VALUE);
    assert_int_equal(openai_body_max_values(100), OPENAI_BODY_MIN_VALUES);
    const size_t max_body = 5000 * OPENAI_BODY_BYTES_PER_VALUE; /* 5000 values */
    size_t len;
    char *text = int_array(4999, &len); /* the array and its elements: 5000 values */
    struct pres p = parse(text, len, max_body);
    assert_int_equal(p.rc, 0);
    free(text);
    text = int_array(5000, &len);
    p = parse(text, len, max_body);
    assert_int_equal(p.rc, TG_ERR_TOO_LARGE);
    assert_int_equal(error_status(p.rc), 413);
    assert_non_null(strstr(p.msg, "5000"));
    assert_string_equal(p.param, "");
    free(text);
    /* The 7.6 MiB of small integers: refused with nothing built (before, 404 MiB). */
    text = int_array(4000000, &len);
    p = parse(text, len, 8u << 20);
    assert_int_equal(p.rc, TG_ERR_TOO_LARGE);
    assert_int_equal(p.blocks, 0);
    free(text);
    /* Keys are not values: an object of 2000 members is 2001 values. */
    char *obj = malloc(2000 * 16 + 2);
    size_t o = 0;
    obj[o++] = '{';
    for (int i = 0; i < 2000; i++)
        o += (size_t)sprintf(obj + o, "%s\"k%d\":1", i ? "," : "", i);
    obj[o++] = '}';
    assert_int_equal(parse(obj, o, 2001 * OPENAI_BODY_BYTES_PER_VALUE).rc, 0);
    free(obj);
}

static void test_parse_body_depth(void **state)
{
    (void)state;
    char text[2 * (OPENAI_BODY_MAX_DEPTH + 1) + 1];
    for (int depth = OPENAI_BODY_MAX_DEPTH; depth <= OPENAI_BODY_MAX_DEPTH + 1; depth++) {
        memset(text, '[', (size_t)depth);
        memset(text + depth, ']', (size_t)depth);
        struct pres p = parse(text, 2 * (size_t)depth, 1u << 20);
        if (depth <= OPENAI_BODY_MAX_DEPTH) {
            assert_int_equal(p.rc, 0);
        } else {
            assert_int_equal(p.rc, TG_ERR_INVALID_JSON);
            assert_non_null(strstr(p.msg, "levels deep"));
            assert_int_equal(p.blocks, 0);
        }
    }
}

/* A duplicate key at any depth is refused; param is its path, as OpenAI writes paths. */
static void test_parse_body_duplicate_keys(void **state)
{
    (void)state;
    static const struct {
        const char *text, *param, *key;
    } dups[] = {
        {"{\"model\":\"big\",\"model\":\"small\"," CHAT_MSGS "}", "model", "model"},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"a\"},"
         "{\"role\":\"user\",\"content\":\"b\",\"content\":\"c\"}]}",
         "messages.[1].content", "content"},
        {"{\"model\":\"m\",\"mod\\u0065l\":\"x\"}", "model", "model"}, /* the same once decoded */
        {"{\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"a\",\"parameters\":{},"
         "\"name\":\"b\"}}]}",
         "tools.[0].function.name", "name"},
        {"{\"a\":[[1,2],[3,{\"x\":1,\"y\":[],\"x\":2}]]}", "a.[1].[1].x", "x"},
        {"{\"stream_options\":{\"include_usage\":false,\"include_usage\":true}}",
         "stream_options.include_usage", "include_usage"},
    };
    for (size_t i = 0; i < sizeof dups / sizeof dups[0]; i++) {
        struct pres p = parse(dups[i].text, strlen(dups[i].text), 1u << 20);
        if (p.rc != TG_ERR_INVALID_JSON)
            fail_msg("expected a duplicate refused, got %d for %s", p.rc, dups[i].text);
        assert_int_equal(error_status(p.rc), 400);
        assert_string_equal(p.param, dups[i].param);
        char quoted[80];
        snprintf(quoted, sizeof quoted, "'%s'", dups[i].key);
        assert_non_null(strstr(p.msg, quoted));
    }
    /* The same key in different objects is no duplicate. */
    static const char *const fine[] = {
        "{\"a\":{\"x\":1},\"b\":{\"x\":2},\"x\":3}",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\"},{\"role\":\"assistant\"}]}",
        "{\"k\":1,\"K\":2,\"k \":3}",
    };
    for (size_t i = 0; i < sizeof fine / sizeof fine[0]; i++)
        assert_int_equal(parse(fine[i], strlen(fine[i]), 1u << 20).rc, 0);
}

static void test_parse_body_malformed(void **state)
{
    (void)state;
    static const char *const bad[] = {"", "{", "{\"a\": tru}", "{\"a\":1}x", "[1,]", "\"text\""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct pres p = parse(bad[i], strlen(bad[i]), 1u << 20);
        assert_int_equal(p.rc, TG_ERR_INVALID_JSON);
        assert_non_null(strstr(p.msg, "We could not parse the JSON body"));
        assert_non_null(strstr(p.msg, "line 1"));
        assert_string_equal(p.param, "");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match_every_endpoint),
        cmocka_unit_test(test_match_model_by_id),
        cmocka_unit_test(test_match_head_as_get),
        cmocka_unit_test(test_match_wrong_method),
        cmocka_unit_test(test_match_unknown_url),
        cmocka_unit_test(test_validate_upload),
        cmocka_unit_test(test_validate_valid_chat),
        cmocka_unit_test(test_validate_not_object),
        cmocka_unit_test(test_validate_model),
        cmocka_unit_test(test_validate_messages),
        cmocka_unit_test(test_validate_stream),
        cmocka_unit_test(test_validate_include_usage),
        cmocka_unit_test(test_validate_prompt_and_input),
        cmocka_unit_test(test_validate_max_tokens),
        cmocka_unit_test(test_validate_small_msg_buffer),
        cmocka_unit_test(test_estimate_chat),
        cmocka_unit_test(test_estimate_array_content_parts),
        cmocka_unit_test(test_estimate_grows_with_prompt),
        cmocka_unit_test(test_estimate_prompt_arrays),
        cmocka_unit_test(test_estimate_tool_messages),
        cmocka_unit_test(test_estimate_fields),
        cmocka_unit_test(test_estimate_counts_tools),
        cmocka_unit_test(test_validate_n),
        cmocka_unit_test(test_completion_cap_saturates),
        cmocka_unit_test(test_output_estimate_is_bounded),
        cmocka_unit_test(test_parse_body_value_cap),
        cmocka_unit_test(test_parse_body_depth),
        cmocka_unit_test(test_parse_body_duplicate_keys),
        cmocka_unit_test(test_parse_body_malformed),
    };
    return cmocka_run_group_tests_name("openai", tests, NULL, NULL);
}

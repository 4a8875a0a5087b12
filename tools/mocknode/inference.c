#include "inference.h"

#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "answer.h"
#include "buf.h"
#include "fault.h"
#include "node.h"
#include "reply.h"
#include "req.h"
#include "rng.h"
#include "runtime.h"
#include "send.h"
#include "wake.h"

/* ---- request parsing ---- */

/* Code points, not bytes, so non-ASCII prompts count like the spec's "chars". */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

static size_t json_str_chars(json_t *v)
{
    return utf8_chars(json_string_value(v), json_string_length(v));
}

static bool is_token_array(json_t *v)
{
    if (!json_is_array(v))
        return false;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_integer(json_array_get(v, i)))
            return false;
    return true;
}

/*
 * Sizes a prompt/input: a string, an array of token ids, or an array of
 * strings and token-id arrays. Adds to *chars and *tokens; false if malformed.
 */
static bool measure_text(json_t *v, size_t *chars, size_t *tokens)
{
    if (json_is_string(v)) {
        *chars += json_str_chars(v);
    } else if (is_token_array(v) && json_array_size(v) > 0) {
        *tokens += json_array_size(v);
    } else if (json_is_array(v) && json_array_size(v) > 0) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (json_is_string(e))
                *chars += json_str_chars(e);
            else if (is_token_array(e))
                *tokens += json_array_size(e);
            else
                return false;
        }
    } else {
        return false;
    }
    return true;
}

static unsigned prompt_tokens(size_t chars, size_t tokens, size_t messages)
{
    size_t p = (chars + 3) / 4 + tokens + 3 * messages;

    if (p < 1)
        p = 1;
    return p > UINT_MAX / 100 ? UINT_MAX / 100 : (unsigned)p;
}

static unsigned chat_prompt_tokens(json_t *messages)
{
    size_t chars = 0;

    for (size_t i = 0; i < json_array_size(messages); i++) {
        json_t *content = json_object_get(json_array_get(messages, i), "content");
        if (json_is_string(content)) {
            chars += json_str_chars(content);
        } else if (json_is_array(content)) {
            for (size_t j = 0; j < json_array_size(content); j++) {
                json_t *text = json_object_get(json_array_get(content, j), "text");
                if (json_is_string(text))
                    chars += json_str_chars(text);
            }
        }
    }
    return prompt_tokens(chars, 0, json_array_size(messages));
}

/* Why a request is refused: the status and the OpenAI error fields to answer with. */
struct refusal {
    unsigned status;
    const char *param;
    const char *code;
    char text[256];
};

static bool refuse(struct refusal *r, unsigned status, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static bool refuse(struct refusal *r, unsigned status, const char *param, const char *code,
                   const char *fmt, ...)
{
    va_list ap;

    r->status = status;
    r->param = param;
    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof(r->text), fmt, ap);
    va_end(ap);
    return false;
}

/* Validates `root` like an OpenAI server would and fills the answer plan in `req`. */
static bool parse_inference(struct mock_req *req, json_t *root, const struct runtime *cfg,
                            struct refusal *why)
{
    size_t chars = 0, tokens = 0;

    if (!json_is_object(root))
        return refuse(why, MHD_HTTP_BAD_REQUEST, NULL, "invalid_json",
                      "We could not parse the JSON body of your request.");
    json_t *model = json_object_get(root, "model");
    if (!model)
        return refuse(why, MHD_HTTP_BAD_REQUEST, "model", "missing_required_parameter",
                      "you must provide a model parameter");
    if (!json_is_string(model))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "model", "invalid_type", "model must be a string");

    if (req->ep == EP_CHAT) {
        json_t *messages = json_object_get(root, "messages");
        if (!json_is_array(messages))
            return refuse(why, MHD_HTTP_BAD_REQUEST, "messages",
                          messages ? "invalid_type" : "missing_required_parameter",
                          "messages must be an array");
        req->gen.prompt_tokens = chat_prompt_tokens(messages);
    } else {
        const char *field = req->ep == EP_COMPLETIONS ? "prompt" : "input";
        json_t *v = json_object_get(root, field);
        if (!v)
            return refuse(why, MHD_HTTP_BAD_REQUEST, field, "missing_required_parameter",
                          "you must provide %s", field);
        if (!measure_text(v, &chars, &tokens))
            return refuse(why, MHD_HTTP_BAD_REQUEST, field, "invalid_type",
                          "%s must be a string or an array of strings or token ids", field);
        req->gen.prompt_tokens = prompt_tokens(chars, tokens, 0);
    }

    json_t *stream = json_object_get(root, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "stream", "invalid_type",
                      "stream must be a boolean");
    req->stream = req->ep != EP_EMBEDDINGS && json_is_true(stream);
    json_t *opts = json_object_get(root, "stream_options");
    req->include_usage = json_is_true(json_object_get(opts, "include_usage"));

    /* The newer name wins when a client sends both. */
    const char *cap_name = "max_completion_tokens";
    json_t *cap = json_object_get(root, cap_name);
    if (!cap || json_is_null(cap)) {
        cap_name = "max_tokens";
        cap = json_object_get(root, cap_name);
    }
    unsigned completion = cfg->tokens;
    if (cap && !json_is_null(cap)) {
        if (!json_is_integer(cap) || json_integer_value(cap) < 0)
            return refuse(why, MHD_HTTP_BAD_REQUEST, cap_name, "invalid_value",
                          "%s must be a non-negative integer", cap_name);
        if (json_integer_value(cap) < (json_int_t)completion) {
            completion = (unsigned)json_integer_value(cap);
            req->gen.capped = true;
        }
    }
    req->gen.completion_tokens = completion;

    if (!node_model_known(json_string_value(model)))
        return refuse(why, MHD_HTTP_NOT_FOUND, "model", "model_not_found",
                      "The model '%.180s' does not exist", json_string_value(model));
    req->model = strdup(json_string_value(model));
    if (!req->model)
        return refuse(why, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL, "out of memory");
    req->gen.model = req->model;
    req->gen.model_len = strlen(req->model);
    return true;
}

/* FNV-1a over the input's JSON text: the same input always gets the same vector. */
static uint64_t input_seed(json_t *v)
{
    uint64_t h = 0xcbf29ce484222325ull;
    char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *p = s ? s : json_string_value(v);
    size_t n = s ? strlen(s) : json_string_length(v);

    for (size_t i = 0; p && i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    free(s);
    return h;
}

static void build_embeddings(struct mock_req *req, json_t *root)
{
    struct buf *b = &req->out;
    json_t *input = json_object_get(root, "input");
    unsigned mult = req->gen.usage_mult;

    buf_adds(b, "{\"object\":\"list\",\"data\":[");
    if (json_is_string(input) || is_token_array(input)) {
        answer_embedding(b, 0, input_seed(input));
    } else {
        for (size_t i = 0; i < json_array_size(input); i++) {
            if (i)
                buf_adds(b, ",");
            answer_embedding(b, (unsigned)i, input_seed(json_array_get(input, i)));
        }
    }
    buf_adds(b, "],\"model\":");
    buf_add_json_str(b, req->gen.model, req->gen.model_len);
    buf_adds(b, ",\"usage\":");
    answer_usage(b, req->gen.prompt_tokens, 0, false, mult);
    buf_adds(b, "}");
}

/* ---- planning the answer ---- */

static void make_id(struct mock_req *req, const char *prefix)
{
    uint64_t a = rng_next(), b = rng_next();

    snprintf(req->id, sizeof(req->id), "%s%016llx%08llx", prefix, (unsigned long long)a,
             (unsigned long long)(b >> 32));
}

/* Prepares what send_answer() will send: the whole body, or the stream's chunk prefix. */
static bool plan_answer(struct mock_req *req, json_t *root)
{
    req->gen.kind = req->ep == EP_CHAT ? ANSWER_CHAT : ANSWER_COMPLETION;
    req->gen.created = (long long)time(NULL);
    req->gen.usage_mult = req->fault == FAULT_INFLATE ? 100 : 1;
    if (req->ep != EP_EMBEDDINGS)
        make_id(req, req->ep == EP_CHAT ? "chatcmpl-" : "cmpl-");
    req->gen.id = req->id;

    if (req->stream) {
        answer_chunk_prefix(&req->prefix, &req->gen);
        req->stage = req->fault == FAULT_INVALID_JSON ? STAGE_GARBAGE : STAGE_TOKENS;
        req->cut_after = UINT_MAX;
        if (req->fault == FAULT_CLOSE) {
            unsigned c = req->gen.completion_tokens;
            req->cut_after = c >= 2 ? c / 2 : c;
        }
        return !req->prefix.failed;
    }
    if (req->fault == FAULT_INVALID_JSON)
        buf_adds(&req->out, "{\"object\": this is not json");
    else if (req->ep == EP_EMBEDDINGS)
        build_embeddings(req, root);
    else
        answer_body(&req->out, &req->gen);
    return !req->out.failed;
}

enum MHD_Result inference_reply(struct mock_req *req)
{
    struct refusal why;
    struct runtime cfg = runtime_get();
    json_t *root = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    enum MHD_Result ret;

    if (!parse_inference(req, root, &cfg, &why)) {
        ret = reply_error(req->conn, why.status, why.text, why.param, why.code);
        goto out;
    }
    req->fault = fault_draw(cfg.fault, cfg.fault_rate);
    req->token_ms = cfg.token_ms;
    if (fault_reply(req, cfg.retry_after_s, &ret))
        goto out;

    if (!plan_answer(req, root)) {
        ret = reply_error_hdr(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "answer too large",
                              "server_error", NULL, NULL, NULL, NULL);
        goto out;
    }
    if (cfg.ttfb_ms == 0) {
        ret = send_answer(req);
        goto out;
    }
    req->phase = PHASE_DELAY;
    uint64_t due = wake_now_ns() + (uint64_t)cfg.ttfb_ms * 1000000u;
    ret = wake_suspend_until(req->conn, due) == 0 ? MHD_YES : MHD_NO;
out:
    json_decref(root);
    return ret;
}

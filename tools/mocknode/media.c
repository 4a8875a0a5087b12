#include "media.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "buf.h"
#include "fault.h"
#include "node.h"
#include "reply.h"
#include "req.h"
#include "runtime.h"

/* A 1x1 PNG. */
static const char png_b64[] = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
                              "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";

static enum MHD_Result images(struct mock_req *req, json_t *root, bool inflate)
{
    json_t *prompt = json_object_get(root, "prompt");
    if (!json_is_string(prompt))
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide a prompt", "prompt",
                           "missing_required_parameter");
    json_t *nv = json_object_get(root, "n");
    json_int_t n = json_is_integer(nv) ? json_integer_value(nv) : 1;
    if (n < 1 || n > 10)
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "n must be between 1 and 10", "n",
                           "invalid_value");
    if (inflate)
        n *= 3;
    const char *fmt = json_string_value(json_object_get(root, "response_format"));
    bool url = fmt && !strcmp(fmt, "url");
    json_t *data = json_array();
    for (json_int_t i = 0; i < n; i++) {
        char u[200];
        snprintf(u, sizeof(u), "https://images.invalid/%s/%lld.png", node_name, (long long)i);
        json_array_append_new(
            data, url ? json_pack("{s:s}", "url", u)
                      : json_pack("{s:s, s:O}", "b64_json", png_b64, "revised_prompt", prompt));
    }
    return reply_json(req->conn, MHD_HTTP_OK,
                      json_pack("{s:I, s:o}", "created", (json_int_t)time(NULL), "data", data));
}

static enum MHD_Result speech(struct mock_req *req, json_t *root)
{
    json_t *input = json_object_get(root, "input");
    if (!json_is_string(input))
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide an input", "input",
                           "missing_required_parameter");
    if (!json_is_string(json_object_get(root, "voice")))
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide a voice", "voice",
                           "missing_required_parameter");
    struct buf b;
    buf_init(&b, REQ_MAX_ANSWER);
    buf_adds(&b, "ID3");
    size_t chars = 0;
    const char *s = json_string_value(input);
    for (size_t i = 0; i < json_string_length(input); i++)
        chars += ((unsigned char)s[i] & 0xc0) != 0x80;
    for (size_t i = 0; i < chars; i++)
        buf_add(&b, "\xff\xfb\x90\x64\x00\x00\x00\x00", 8);
    return reply_buf(req->conn, MHD_HTTP_OK, "audio/mpeg", &b, NULL, NULL);
}

static enum MHD_Result moderations(struct mock_req *req, json_t *root)
{
    json_t *input = json_object_get(root, "input");
    if (!json_is_string(input) && !json_is_array(input))
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "input must be a string or an array",
                           "input", "invalid_type");
    size_t n = json_is_array(input) ? json_array_size(input) : 1;
    json_t *results = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(results,
                              json_pack("{s:b, s:{s:b}, s:{s:f}}", "flagged", 0, "categories",
                                        "violence", 0, "category_scores", "violence", 0.001));
    char id[64];
    snprintf(id, sizeof(id), "modr-%s-%lld", node_name, (long long)time(NULL));
    return reply_json(req->conn, MHD_HTTP_OK,
                      json_pack("{s:s, s:s, s:o}", "id", id, "model",
                                json_string_value(json_object_get(root, "model")), "results",
                                results));
}

enum MHD_Result media_reply(struct mock_req *req)
{
    struct runtime cfg = runtime_get();
    json_t *root = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    enum MHD_Result ret;
    json_t *model = json_object_get(root, "model");

    if (!json_is_object(root)) {
        ret =
            reply_error(req->conn, MHD_HTTP_BAD_REQUEST,
                        "We could not parse the JSON body of your request.", NULL, "invalid_json");
    } else if (!json_is_string(model)) {
        ret = reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide a model parameter",
                          "model", "missing_required_parameter");
    } else if (!node_model_known(json_string_value(model))) {
        char msg[256];
        snprintf(msg, sizeof(msg), "The model '%.180s' does not exist", json_string_value(model));
        ret = reply_error(req->conn, MHD_HTTP_NOT_FOUND, msg, "model", "model_not_found");
    } else {
        req->fault = fault_draw(cfg.fault, cfg.fault_rate);
        if (!fault_reply(req, cfg.retry_after_s, &ret)) {
            if (req->ep == EP_IMAGES)
                ret = images(req, root, req->fault == FAULT_INFLATE);
            else if (req->ep == EP_SPEECH)
                ret = speech(req, root);
            else
                ret = moderations(req, root);
        }
    }
    json_decref(root);
    return ret;
}

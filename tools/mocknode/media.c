#include "media.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
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

/* ---- uploads: /v1/audio/transcriptions and /v1/audio/translations ---- */

/* Seconds of audio the mock hears in a file: 16,000 bytes a second (128 kbit/s). */
#define MOCK_AUDIO_BYTES_PER_SECOND 16000.0
#define MOCK_TRANSCRIPT "Hello from the mock node."

struct upload_fields {
    char model[256];
    char format[32];
    bool has_file;
    size_t file_bytes;
};

/* The parameter `name` of a header value (name="x" or name=x) into out; false when absent. */
static bool header_param(const char *h, size_t hlen, const char *name, char *out, size_t n)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl + 1 < hlen; i++) {
        if ((i && h[i - 1] != ' ' && h[i - 1] != ';') || strncasecmp(h + i, name, nl) ||
            h[i + nl] != '=')
            continue;
        const char *v = h + i + nl + 1, *end = h + hlen;
        bool quoted = v < end && *v == '"';
        v += quoted;
        size_t k = 0;
        while (v < end && (quoted ? *v != '"' : *v != ';' && *v != '\r') && k + 1 < n)
            out[k++] = *v++;
        out[k] = '\0';
        return true;
    }
    return false;
}

/* A whole multipart body, read the simple way (the gateway's scanner is incremental). */
static const char *upload_parse(struct mock_req *req, struct upload_fields *f)
{
    const char *ct =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    char boundary[100], delim[110];
    if (!ct || strncasecmp(ct, "multipart/form-data", 19) ||
        !header_param(ct, strlen(ct), "boundary", boundary, sizeof(boundary)) || !boundary[0])
        return "the body must be multipart/form-data with a boundary";
    int dl = snprintf(delim, sizeof(delim), "\r\n--%s", boundary);
    const char *b = req->body.data ? req->body.data : "";
    size_t len = req->body.len;
    if (len < (size_t)dl - 2 || memcmp(b, delim + 2, (size_t)dl - 2))
        return "the multipart body does not start with its boundary";
    const char *p = b + dl - 2, *end = b + len;
    for (;;) {
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return NULL; /* the closing delimiter */
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return "a multipart boundary line is malformed";
        p += 2;
        const char *hend = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!hend)
            return "a multipart part has no end of headers";
        const char *content = hend + 4;
        const char *next = memmem(content, (size_t)(end - content), delim, (size_t)dl);
        if (!next)
            return "the multipart body ends before its closing boundary";
        char name[64] = "";
        header_param(p, (size_t)(hend - p), "name", name, sizeof(name));
        size_t clen = (size_t)(next - content);
        if (!strcmp(name, "file")) {
            f->has_file = true;
            f->file_bytes = clen;
        } else if (!strcmp(name, "model") && clen < sizeof(f->model)) {
            memcpy(f->model, content, clen);
            f->model[clen] = '\0';
        } else if (!strcmp(name, "response_format") && clen < sizeof(f->format)) {
            memcpy(f->format, content, clen);
            f->format[clen] = '\0';
        }
        p = next + dl;
    }
}

/* The transcript as asked for. A model whose name holds "transcribe" (as gpt-4o-transcribe)
 * reports tokens, others seconds; inflate-usage reports 1,000 times the seconds heard. */
static enum MHD_Result transcription(struct mock_req *req, const struct upload_fields *f,
                                     bool inflate)
{
    double seconds = (double)f->file_bytes / MOCK_AUDIO_BYTES_PER_SECOND;
    if (inflate)
        seconds *= 1000;
    const char *fmt = f->format[0] ? f->format : "json";
    if (!strcmp(fmt, "text") || !strcmp(fmt, "srt") || !strcmp(fmt, "vtt")) {
        struct buf b;
        buf_init(&b, 4096);
        if (!strcmp(fmt, "srt"))
            buf_adds(&b, "1\n00:00:00,000 --> 00:00:01,000\n" MOCK_TRANSCRIPT "\n");
        else if (!strcmp(fmt, "vtt"))
            buf_adds(&b, "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n" MOCK_TRANSCRIPT "\n");
        else
            buf_adds(&b, MOCK_TRANSCRIPT "\n");
        return reply_buf(req->conn, MHD_HTTP_OK, "text/plain; charset=utf-8", &b, NULL, NULL);
    }
    json_t *usage;
    if (strstr(f->model, "transcribe"))
        usage = json_pack("{s:s, s:I, s:I, s:I}", "type", "tokens", "input_tokens",
                          (json_int_t)(seconds * 10), "output_tokens", (json_int_t)6,
                          "total_tokens", (json_int_t)(seconds * 10) + 6);
    else
        usage = json_pack("{s:s, s:f}", "type", "duration", "seconds", seconds);
    if (!strcmp(fmt, "verbose_json")) {
        json_decref(usage);
        return reply_json(req->conn, MHD_HTTP_OK,
                          json_pack("{s:s, s:s, s:f, s:s, s:[]}", "task",
                                    req->ep == EP_TRANSLATIONS ? "translate" : "transcribe",
                                    "language", "english", "duration", seconds, "text",
                                    MOCK_TRANSCRIPT, "segments"));
    }
    return reply_json(req->conn, MHD_HTTP_OK,
                      json_pack("{s:s, s:o}", "text", MOCK_TRANSCRIPT, "usage", usage));
}

static enum MHD_Result upload_reply(struct mock_req *req, const struct runtime *cfg)
{
    struct upload_fields f = {0};
    const char *bad = upload_parse(req, &f);
    if (bad)
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, bad, NULL, "invalid_request_error");
    if (!f.model[0])
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide a model parameter",
                           "model", "missing_required_parameter");
    if (!f.has_file)
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "you must provide a file", "file",
                           "missing_required_parameter");
    if (!node_model_known(f.model)) {
        char msg[400];
        snprintf(msg, sizeof(msg), "The model '%.180s' does not exist", f.model);
        return reply_error(req->conn, MHD_HTTP_NOT_FOUND, msg, "model", "model_not_found");
    }
    req->fault = fault_draw(cfg->fault, cfg->fault_rate);
    enum MHD_Result ret;
    if (fault_reply(req, cfg->retry_after_s, &ret))
        return ret;
    return transcription(req, &f, req->fault == FAULT_INFLATE);
}

enum MHD_Result media_reply(struct mock_req *req)
{
    struct runtime cfg = runtime_get();
    if (req->ep == EP_TRANSCRIPTIONS || req->ep == EP_TRANSLATIONS)
        return upload_reply(req, &cfg);
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

#include "base/error.h"

#include "base/buf.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

struct error_info {
    enum tg_error err;
    unsigned status;
    const char *type;
    const char *code;
};

static const struct error_info error_table[] = {
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

static const struct error_info *error_find(enum tg_error err)
{
    for (size_t i = 0; i < sizeof error_table / sizeof error_table[0]; i++)
        if (error_table[i].err == err)
            return &error_table[i];
    return &error_table[1];
}

unsigned error_status(enum tg_error err)
{
    return error_find(err)->status;
}

const char *error_type(enum tg_error err)
{
    return error_find(err)->type;
}

const char *error_code(enum tg_error err)
{
    return error_find(err)->code;
}

/* A JSON string from bytes that may not be valid UTF-8 (a message can quote what a client
 * or a backend sent, or be cut mid-character): invalid bytes become U+FFFD. */
static json_t *error_string(const char *s)
{
    json_t *v = json_string(s);
    if (v)
        return v;
    size_t n = strlen(s), o = 0;
    char *clean = malloc(n * 3 + 1);
    if (!clean)
        return NULL;
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    while (p < end) {
        size_t len = buf_utf8_len(p, (size_t)(end - p));
        if (len) {
            memcpy(clean + o, p, len);
            o += len;
            p += len;
        } else {
            memcpy(clean + o, "\xEF\xBF\xBD", 3);
            o += 3;
            p++;
        }
    }
    clean[o] = '\0';
    v = json_string(clean);
    free(clean);
    return v;
}

char *error_body(enum tg_error err, const char *message, const char *param, const char *code,
                 size_t *len)
{
    const struct error_info *info = error_find(err);
    json_t *inner =
        json_pack("{s:o, s:s, s:o, s:o}", "message", error_string(message ? message : "error"),
                  "type", info->type, "param", param ? error_string(param) : json_null(), "code",
                  json_string(code ? code : info->code));
    if (!inner)
        return NULL;
    json_t *root = json_pack("{s:o}", "error", inner);
    if (!root)
        return NULL;
    char *out = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    if (out && len)
        *len = strlen(out);
    return out;
}

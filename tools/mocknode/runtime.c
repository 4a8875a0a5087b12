#include "runtime.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "reply.h"
#include "req.h"

static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct runtime rt = {
    .fault = FAULT_NONE,
    .fault_rate = 1.0,
    .tokens = 16,
    .retry_after_s = 1,
};

struct runtime runtime_get(void)
{
    pthread_mutex_lock(&rt_lock);
    struct runtime r = rt;
    pthread_mutex_unlock(&rt_lock);
    return r;
}

void runtime_set(const struct runtime *r)
{
    pthread_mutex_lock(&rt_lock);
    rt = *r;
    pthread_mutex_unlock(&rt_lock);
}

static json_t *runtime_json(const struct runtime *r)
{
    return json_pack("{s:s, s:f, s:I, s:I, s:I, s:I, s:I}", "fault", fault_name(r->fault),
                     "fault_rate", r->fault_rate, "ttfb_ms", (json_int_t)r->ttfb_ms, "token_ms",
                     (json_int_t)r->token_ms, "tokens", (json_int_t)r->tokens, "retry_after_s",
                     (json_int_t)r->retry_after_s, "fault_count", (json_int_t)r->fault_count);
}

/* Reads an integer field into *out; returns false when it is not an integer in [0, max]. */
static bool json_uint(json_t *v, unsigned max, unsigned *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return false;
    *out = (unsigned)json_integer_value(v);
    return true;
}

/* Applies the fields of `o` to *r; on error leaves a message in `msg` and returns false. */
static bool runtime_apply(json_t *o, struct runtime *r, char *msg, size_t msg_size)
{
    for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        bool ok;
        if (strcmp(key, "fault") == 0) {
            int f = -1;
            /* Also take the bare numbers, the likeliest typo for "500" and "429". */
            if (json_is_string(v))
                f = fault_parse(json_string_value(v));
            else if (json_is_integer(v) && json_integer_value(v) == 500)
                f = FAULT_500;
            else if (json_is_integer(v) && json_integer_value(v) == 429)
                f = FAULT_429;
            ok = f >= 0;
            if (ok)
                r->fault = (enum fault)f;
        } else if (strcmp(key, "fault_rate") == 0) {
            double d = json_number_value(v);
            ok = json_is_number(v) && d >= 0.0 && d <= 1.0;
            if (ok)
                r->fault_rate = d;
        } else if (strcmp(key, "ttfb_ms") == 0) {
            ok = json_uint(v, RUNTIME_MAX_DELAY_MS, &r->ttfb_ms);
        } else if (strcmp(key, "token_ms") == 0) {
            ok = json_uint(v, RUNTIME_MAX_DELAY_MS, &r->token_ms);
        } else if (strcmp(key, "tokens") == 0) {
            ok = json_uint(v, RUNTIME_MAX_TOKENS, &r->tokens);
        } else if (strcmp(key, "retry_after_s") == 0) {
            ok = json_uint(v, RUNTIME_MAX_RETRY_AFTER, &r->retry_after_s);
        } else if (strcmp(key, "fault_count") == 0) {
            ok = json_uint(v, RUNTIME_MAX_FAULT_COUNT, &r->fault_count);
        } else {
            snprintf(msg, msg_size, "unknown config key '%s'", key);
            return false;
        }
        if (!ok) {
            snprintf(msg, msg_size, "invalid value for '%s'", key);
            return false;
        }
    }
    return true;
}

enum MHD_Result runtime_reply(struct mock_req *req, const char *method)
{
    char msg[256];

    if (strcmp(method, "GET") == 0) {
        struct runtime r = runtime_get();
        return reply_json(req->conn, MHD_HTTP_OK, runtime_json(&r));
    }
    json_t *o = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "config body must be a JSON object",
                           NULL, "invalid_json");
    }
    pthread_mutex_lock(&rt_lock);
    struct runtime r = rt;
    bool ok = runtime_apply(o, &r, msg, sizeof(msg));
    if (ok)
        rt = r;
    /* A new fault (or count) starts its count again: "fail the next N, then recover". */
    if (ok && (json_object_get(o, "fault") || json_object_get(o, "fault_count")))
        fault_limit(r.fault_count);
    pthread_mutex_unlock(&rt_lock);
    json_decref(o);
    if (!ok)
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg, NULL, "invalid_value");
    return reply_json(req->conn, MHD_HTTP_OK, runtime_json(&r));
}

#include "gateway/request.h"

#include "gateway/auth.h"
#include "gateway/buf.h"
#include "gateway/error.h"
#include "gateway/log.h"
#include "gateway/openai.h"
#include "gateway/sse.h"
#include "gateway/worker.h"
#include "routing/backend.h"
#include "routing/router.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Above this many unsent stream bytes the upstream transfer is paused (slow client). */
#define REQUEST_STREAM_HIGH_WATER (256u << 10)
/* The largest single SSE event a backend may send. */
#define REQUEST_STREAM_MAX_EVENT (1u << 20)
/* Error answers from a backend are kept up to this size (enough for any real message). */
#define REQUEST_ERROR_BODY_MAX (64u << 10)
/* Output tokens assumed for a request that sets no max_tokens (routing estimate). */
#define REQUEST_DEFAULT_OUTPUT_TOKENS 256

enum request_state {
    REQUEST_BODY,     /* reading the request body */
    REQUEST_UPSTREAM, /* suspended while the backend works */
    REQUEST_REPLY,    /* a whole answer or an error is ready to queue */
    REQUEST_STREAM,   /* the backend's stream started: queue the streaming response */
    REQUEST_SENT,     /* a response is queued */
};

struct request {
    struct worker *w;
    struct MHD_Connection *conn;
    bool first_call; /* inside MHD's first call for this request */
    struct config *cfg; /* the snapshot this request started with (referenced) */
    const struct openai_endpoint *ep;
    enum request_state state;
    bool suspended;
    char id[132];
    char method[8];
    const char *key_name;
    const char *model; /* the route's model name (config-owned) */
    double t_start;
    struct buf body;
    json_t *json;
    struct openai_request oreq;
    const struct config_target *target;
    char *upstream_body; /* the rewritten body when the model is renamed, else NULL */
    char url[1024];
    struct upstream_xfer *xfer;
    bool got_headers;
    long up_status;
    char fail_detail[160]; /* why on_data aborted the transfer */

    /* A whole answer (or a backend's error) being collected. */
    struct buf resp;

    /* Stream relay: events from the backend, waiting to be sent. */
    bool stream_mode;
    struct sse_parser sse;
    struct buf out;
    size_t out_off;
    bool saw_done;
    bool stream_ended;   /* nothing more will be added to `out` */
    bool reader_waiting; /* the content reader suspended the connection */
    bool up_paused;

    /* The reply to queue when MHD calls back. */
    unsigned reply_status;
    char *reply_body;
    size_t reply_len;
    char reply_ctype[96];
    const char *allow; /* Allow header for 405 */

    unsigned status; /* what was sent, for the log and metrics */
    struct request *prev, *next;
};

static const struct upstream_ops request_upstream_ops;

/* ---- small helpers ---------------------------------------------------------------------- */

static void request_suspend(struct request *r)
{
    if (!r->suspended) {
        r->suspended = true;
        MHD_suspend_connection(r->conn);
    }
}

static void request_resume(struct request *r)
{
    if (r->suspended) {
        r->suspended = false;
        r->reader_waiting = false;
        MHD_resume_connection(r->conn);
        worker_kick(r->w);
    }
}

static void backend_release(struct request *r)
{
    if (r->target)
        atomic_fetch_sub_explicit(&r->target->backend->state->inflight, 1,
                                  memory_order_relaxed);
}

static bool request_id_ok(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (n >= 128 || !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                          (c >= '0' && c <= '9') || strchr("-_.:/+=", c)))
            return false;
    }
    return n > 0;
}

static void request_set_id(struct request *r)
{
    const char *given = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-request-id");
    if (given && request_id_ok(given)) {
        snprintf(r->id, sizeof r->id, "%s", given);
        return;
    }
    snprintf(r->id, sizeof r->id, "%016llx%016llx", (unsigned long long)worker_random(r->w),
             (unsigned long long)worker_random(r->w));
}

static void request_headers(struct request *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "x-request-id", r->id);
    if (r->target && r->up_status > 0)
        MHD_add_response_header(resp, "x-tollgate-backend", r->target->backend->name);
    if (worker_draining(r->w))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* ---- replies ---------------------------------------------------------------------------- */

static enum MHD_Result request_queue_reply(struct request *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer_with_free_callback(
        r->reply_len, r->reply_body, free);
    if (!resp)
        return MHD_NO;
    r->reply_body = NULL; /* the response owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->reply_ctype[0] ? r->reply_ctype : "application/json");
    if (r->allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->allow);
    request_headers(r, resp);
    enum MHD_Result ok = MHD_queue_response(r->conn, r->reply_status, resp);
    MHD_destroy_response(resp);
    r->status = r->reply_status;
    r->state = REQUEST_SENT;
    return ok;
}

static void request_set_reply(struct request *r, unsigned status, char *body, size_t len,
                              const char *ctype)
{
    free(r->reply_body);
    r->reply_status = status;
    r->reply_body = body;
    r->reply_len = len;
    snprintf(r->reply_ctype, sizeof r->reply_ctype, "%s", ctype ? ctype : "application/json");
    r->state = REQUEST_REPLY;
}

static void request_set_error(struct request *r, enum tg_error err, const char *param,
                              const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static void request_set_error(struct request *r, enum tg_error err, const char *param,
                              const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = error_body(err, msg, param, NULL, &len);
    request_set_reply(r, error_status(err), body, body ? len : 0, "application/json");
    if (!body)
        r->reply_status = 500;
}

/* True when the request carries a body MHD has not read yet. */
static bool request_has_body(const struct request *r)
{
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *te =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return (cl && strtoull(cl, NULL, 10) > 0) || te;
}

/* A reply decided on MHD's first call. Queued now, MHD would close the connection because
 * the request has not been read to its end; so without a body it waits for the next call and
 * the connection stays alive. With a body it goes at once, so the body is never read. */
static enum MHD_Result request_reply_early(struct request *r)
{
    if (r->first_call && r->state == REQUEST_REPLY && !request_has_body(r))
        return MHD_YES;
    return request_queue_reply(r);
}

/* From inside MHD's handler: answer with an error now (or on the next call, see above). */
#define REQUEST_FAIL_NOW(r, err, param, ...)                                                   \
    (request_set_error((r), (err), (param), __VA_ARGS__), request_reply_early(r))

static enum MHD_Result request_reply_json(struct request *r, unsigned status, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    request_set_reply(r, status, text, strlen(text), "application/json");
    return request_reply_early(r);
}

/* ---- local endpoints -------------------------------------------------------------------- */

static json_t *model_object(const struct request *r, const char *name)
{
    return json_pack("{s:s, s:s, s:I, s:s}", "id", name, "object", "model", "created",
                     (json_int_t)worker_started_at(r->w), "owned_by", "tollgate");
}

static enum MHD_Result request_local(struct request *r, const char *url)
{
    const struct config *cfg = r->cfg;
    switch (r->ep->route) {
    case OPENAI_HEALTHZ:
        return request_reply_json(r, 200, json_pack("{s:s}", "status", "ok"));
    case OPENAI_READYZ:
        if (worker_draining(r->w))
            return request_reply_json(r, 503, json_pack("{s:s}", "status", "draining"));
        return request_reply_json(r, 200, json_pack("{s:s}", "status", "ready"));
    case OPENAI_METRICS: {
        struct buf out;
        buf_init(&out, 16u << 20);
        if (worker_render_metrics(r->w, &out)) {
            buf_free(&out);
            return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "metrics too large");
        }
        size_t len;
        char *text = buf_steal(&out, &len);
        request_set_reply(r, 200, text, len, "text/plain; version=0.0.4; charset=utf-8");
        return request_reply_early(r);
    }
    case OPENAI_MODELS: {
        json_t *data = json_array();
        for (size_t i = 0; i < cfg->n_routes; i++)
            json_array_append_new(data, model_object(r, cfg->routes[i].model));
        return request_reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    case OPENAI_MODEL: {
        const char *id = url + strlen(r->ep->path);
        const struct config_route *route = config_find_route(cfg, id);
        if (!route) {
            char esc[200];
            return REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_FOUND, "model",
                                    "The model '%s' does not exist.",
                                    log_escape(esc, sizeof esc, id));
        }
        return request_reply_json(r, 200, model_object(r, route->model));
    }
    default:
        return REQUEST_FAIL_NOW(r, TG_ERR_INTERNAL, NULL, "unhandled route");
    }
}

/* ---- the first call: route, authenticate, size check ------------------------------------- */

static enum MHD_Result request_begin(struct request *r, const char *url, const char *method)
{
    snprintf(r->method, sizeof r->method, "%s", method);
    request_set_id(r);
    int rc = openai_match(method, url, &r->ep);
    if (rc == TG_ERR_METHOD) {
        r->allow = r->ep->method;
        return REQUEST_FAIL_NOW(r, TG_ERR_METHOD, NULL, "Method %s is not allowed on %s; use %s.",
                                r->method, r->ep->path, r->ep->method);
    }
    if (rc) {
        char esc[300];
        return REQUEST_FAIL_NOW(r, TG_ERR_UNKNOWN_URL, NULL, "Invalid URL (%s %s)", r->method,
                                log_escape(esc, sizeof esc, url));
    }
    if (r->ep->needs_auth) {
        struct auth_identity who;
        const char *authz =
            MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        enum auth_result a = auth_check(r->cfg, authz, &who);
        if (a == AUTH_MISSING)
            return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL,
                                    "You didn't provide an API key. Send it in the "
                                    "Authorization header as 'Bearer YOUR_KEY'.");
        if (a == AUTH_INVALID)
            return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "Incorrect API key provided.");
        r->key_name = who.key_name;
    }
    if (!r->ep->upstream_path)
        return request_local(r, url);

    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > r->cfg->max_body_bytes)
        return REQUEST_FAIL_NOW(r, TG_ERR_TOO_LARGE, NULL,
                                "The request body is larger than the limit of %zu bytes.",
                                r->cfg->max_body_bytes);
    buf_init(&r->body, r->cfg->max_body_bytes);
    r->state = REQUEST_BODY;
    return MHD_YES;
}

/* ---- upstream ------------------------------------------------------------------------------ */

static enum MHD_Result request_send_upstream(struct request *r)
{
    const struct config_target *t = r->target;
    const struct config_backend *b = t->backend;
    const char *body = r->body.data;
    size_t body_len = r->body.len;
    free(r->upstream_body);
    r->upstream_body = NULL;
    if (t->model->upstream && strcmp(t->model->upstream, r->model)) {
        json_object_set_new(r->json, "model", json_string(t->model->upstream));
        r->upstream_body = json_dumps(r->json, JSON_COMPACT);
        if (!r->upstream_body)
            return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
        body = r->upstream_body;
        body_len = strlen(body);
    }
    snprintf(r->url, sizeof r->url, "%s%s", b->url, r->ep->upstream_path);
    const struct config_upstream *uc = &r->cfg->upstream;
    struct upstream_req req = {
        .url = r->url,
        .body = body,
        .body_len = body_len,
        .headers = b->headers,
        .request_id = r->id,
        .connect_timeout_ms = uc->connect_timeout_ms,
        .first_byte_timeout_ms = uc->first_byte_timeout_ms,
        .idle_timeout_ms = uc->idle_timeout_ms,
        .total_timeout_ms = uc->total_timeout_ms,
    };
    r->got_headers = false;
    r->up_status = 0;
    r->fail_detail[0] = '\0';
    r->xfer = upstream_start(r->w->upstream, &req, &request_upstream_ops, r);
    if (!r->xfer)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "cannot start the upstream transfer");
    atomic_fetch_add_explicit(&b->state->inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->state->requests, 1, memory_order_relaxed);
    r->state = REQUEST_UPSTREAM;
    request_suspend(r);
    return MHD_YES;
}

/* The whole body is in: validate, route, forward. */
static enum MHD_Result request_dispatch(struct request *r)
{
    json_error_t jerr;
    r->json = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    if (!r->json)
        return REQUEST_FAIL_NOW(r, TG_ERR_INVALID_JSON, NULL,
                                "We could not parse the JSON body of your request: %s "
                                "(line %d, column %d).",
                                jerr.text, jerr.line, jerr.column);
    const char *param;
    char msg[256];
    int rc = openai_validate(r->ep->route, r->json, &r->oreq, &param, msg, sizeof msg);
    if (rc)
        return REQUEST_FAIL_NOW(r, rc, param, "%s", msg);
    const struct config_route *route = config_find_route(r->cfg, r->oreq.model);
    if (!route) {
        char esc[200];
        return REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_FOUND, "model",
                                "The model '%s' does not exist or no backend serves it.",
                                log_escape(esc, sizeof esc, r->oreq.model));
    }
    r->model = route->model;
    struct router_request rreq = {
        .prompt_tokens = r->oreq.prompt_tokens_est,
        .output_tokens = r->oreq.max_tokens >= 0 ? (size_t)r->oreq.max_tokens
                                                 : REQUEST_DEFAULT_OUTPUT_TOKENS,
    };
    if (r->ep->route == OPENAI_EMBEDDINGS)
        rreq.output_tokens = 0;
    r->target = router_pick(route, &rreq, NULL);
    if (!r->target)
        return REQUEST_FAIL_NOW(r, TG_ERR_NO_BACKEND, NULL, "No backend can serve '%s' now.",
                                r->model);
    return request_send_upstream(r);
}

static int request_on_event(void *ctx, const struct sse_event *ev)
{
    struct request *r = ctx;
    if (r->saw_done)
        return 0; /* nothing after [DONE] is relayed */
    if (ev->has_data && ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6))
        r->saw_done = true;
    return buf_append(&r->out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
}

static void request_start_body(struct request *r)
{
    r->got_headers = true;
    r->up_status = upstream_status(r->xfer);
    const char *ct = upstream_content_type(r->xfer);
    snprintf(r->reply_ctype, sizeof r->reply_ctype, "%s", ct ? ct : "application/json");
    r->stream_mode = r->oreq.stream && r->up_status == 200 && ct &&
                     !strncasecmp(ct, "text/event-stream", 17);
    if (r->stream_mode) {
        sse_init(&r->sse, REQUEST_STREAM_MAX_EVENT);
        buf_init(&r->out, REQUEST_STREAM_HIGH_WATER + REQUEST_STREAM_MAX_EVENT + 4096);
        r->out_off = 0;
    } else {
        buf_init(&r->resp, r->up_status / 100 == 2 ? r->cfg->upstream.max_response_bytes
                                                   : REQUEST_ERROR_BODY_MAX);
    }
}

static int request_on_data(void *ctx, const char *data, size_t len)
{
    struct request *r = ctx;
    if (!r->got_headers)
        request_start_body(r);
    if (!r->stream_mode) {
        int rc = buf_append(&r->resp, data, len);
        if (rc == BUF_ETOOBIG && r->up_status / 100 != 2)
            return 0; /* an oversized error page: keep what fits */
        if (rc == BUF_ETOOBIG) {
            snprintf(r->fail_detail, sizeof r->fail_detail, "answer larger than %zu bytes",
                     r->resp.max);
            return TG_ERR_BAD_BACKEND_RESPONSE;
        }
        return rc ? TG_ERR_NOMEM : 0;
    }
    if (r->out.len - r->out_off >= REQUEST_STREAM_HIGH_WATER) {
        r->up_paused = true;
        return UPSTREAM_PAUSE;
    }
    if (r->out_off && r->out_off == r->out.len) {
        buf_reset(&r->out);
        r->out_off = 0;
    }
    int rc = sse_feed(&r->sse, data, len, request_on_event, r);
    if (rc) {
        snprintf(r->fail_detail, sizeof r->fail_detail, "%s",
                 rc == SSE_ETOOBIG ? "stream event larger than 1 MiB" : "out of memory");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    if (r->out.len > r->out_off) {
        if (r->state == REQUEST_UPSTREAM) {
            r->state = REQUEST_STREAM;
            request_resume(r);
        } else if (r->reader_waiting) {
            request_resume(r);
        }
    }
    return 0;
}

static void request_stream_error(struct request *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Ends a started stream with an SSE error event, so the caller sees a failure, never a
 * silently truncated success. */
static void request_stream_error(struct request *r, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *body = error_body(TG_ERR_STREAM, msg, NULL, NULL, NULL);
    if (body) {
        buf_printf(&r->out, "data: %s\n\n", body);
        free(body);
    }
}

static const char *request_upstream_message(const struct request *r, char *out, size_t n)
{
    out[0] = '\0';
    json_t *doc = r->resp.len ? json_loadb(r->resp.data, r->resp.len, 0, NULL) : NULL;
    const char *m = json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
    if (m)
        snprintf(out, n, ": %s", m);
    json_decref(doc);
    return out;
}

static void request_on_done(void *ctx, int result, const char *detail)
{
    struct request *r = ctx;
    const char *backend = r->target->backend->name;
    r->xfer = NULL;
    backend_release(r);
    if (result && r->fail_detail[0])
        detail = r->fail_detail;
    if (result || (r->up_status >= 500))
        atomic_fetch_add_explicit(&r->target->backend->state->failures, 1,
                                  memory_order_relaxed);
    if (result)
        METRICS_ADD(r->w->metrics->upstream_errors, 1);

    if (r->stream_mode && r->state != REQUEST_UPSTREAM) {
        if (!result && !r->saw_done)
            request_stream_error(r, "backend %s ended the stream without [DONE]", backend);
        else if (result)
            request_stream_error(r, "backend %s broke the stream: %s", backend, detail);
        r->stream_ended = true;
        if (r->reader_waiting)
            request_resume(r);
        return;
    }

    if (result == TG_ERR_BACKEND_UNREACHABLE)
        request_set_error(r, result, NULL, "Backend %s is unreachable: %s", backend, detail);
    else if (result == TG_ERR_BACKEND_TIMEOUT)
        request_set_error(r, result, NULL, "Backend %s timed out: %s", backend, detail);
    else if (result)
        request_set_error(r, TG_ERR_BAD_BACKEND_RESPONSE, NULL,
                          "Backend %s sent a broken answer: %s", backend, detail);
    else if (r->stream_mode)
        request_set_error(r, TG_ERR_BAD_BACKEND_RESPONSE, NULL,
                          "Backend %s ended the stream before sending any event", backend);
    else if (r->up_status / 100 == 2) {
        json_t *doc = json_loadb(r->resp.data ? r->resp.data : "", r->resp.len, 0, NULL);
        if (!json_is_object(doc)) {
            request_set_error(r, TG_ERR_BAD_BACKEND_RESPONSE, NULL,
                              "Backend %s sent an answer that is not a JSON object", backend);
        } else if (r->oreq.stream) {
            request_set_error(r, TG_ERR_BAD_BACKEND_RESPONSE, NULL,
                              "Backend %s answered a streaming request without a stream",
                              backend);
        } else {
            size_t len;
            char *text = buf_steal(&r->resp, &len);
            request_set_reply(r, (unsigned)r->up_status, text, len, "application/json");
        }
        json_decref(doc);
    } else if (r->up_status >= 500 || r->up_status < 400) {
        char m[300];
        request_set_error(r, TG_ERR_BAD_BACKEND_RESPONSE, NULL, "Backend %s answered HTTP %ld%s",
                          backend, r->up_status, request_upstream_message(r, m, sizeof m));
    } else {
        /* A client error the backend found in the request: the caller should see it as is. */
        json_t *doc = json_loadb(r->resp.data ? r->resp.data : "", r->resp.len, 0, NULL);
        if (json_is_object(json_object_get(doc, "error"))) {
            size_t len;
            char *text = buf_steal(&r->resp, &len);
            request_set_reply(r, (unsigned)r->up_status, text, len, "application/json");
        } else {
            request_set_error(r, r->up_status == 404 ? TG_ERR_MODEL_NOT_FOUND
                                                     : TG_ERR_INVALID_VALUE,
                              NULL, "Backend %s rejected the request with HTTP %ld", backend,
                              r->up_status);
            r->reply_status = (unsigned)r->up_status;
        }
        json_decref(doc);
    }
    request_resume(r);
}

static const struct upstream_ops request_upstream_ops = {
    .on_data = request_on_data,
    .on_done = request_on_done,
};

/* ---- streaming to the caller --------------------------------------------------------------- */

static ssize_t request_stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    (void)pos;
    struct request *r = cls;
    size_t avail = r->out.len - r->out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(dst, r->out.data + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out.len) {
            buf_reset(&r->out);
            r->out_off = 0;
        } else if (r->out_off > (64u << 10)) {
            buf_consume(&r->out, r->out_off);
            r->out_off = 0;
        }
        if (r->up_paused && r->xfer && r->out.len - r->out_off < REQUEST_STREAM_HIGH_WATER / 2) {
            r->up_paused = false;
            upstream_resume(r->xfer); /* may hand us more data right away */
        }
        return (ssize_t)n;
    }
    if (r->stream_ended)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing to send yet: wait, suspended, for the backend's next event. */
    r->reader_waiting = true;
    request_suspend(r);
    return 0;
}

static enum MHD_Result request_queue_stream(struct request *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, request_stream_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    request_headers(r, resp);
    enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->state = REQUEST_SENT;
    METRICS_ADD(r->w->metrics->streams, 1);
    return ok;
}

/* ---- MHD callbacks --------------------------------------------------------------------------- */

enum MHD_Result request_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version,
                               const char *upload_data, size_t *upload_data_size,
                               void **con_cls)
{
    (void)version;
    struct worker *w = cls;
    struct request *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->w = w;
        r->conn = conn;
        r->cfg = config_ref(w->cfg);
        r->t_start = ev_time();
        r->state = REQUEST_SENT; /* until request_begin says otherwise */
        r->next = w->active;
        if (w->active)
            w->active->prev = r;
        w->active = r;
        w->n_active++;
        METRICS_ADD(w->metrics->inflight, 1);
        *con_cls = r;
        r->first_call = true;
        enum MHD_Result ok = request_begin(r, url, method);
        r->first_call = false;
        return ok;
    }
    switch (r->state) {
    case REQUEST_BODY:
        if (*upload_data_size) {
            int rc = buf_append(&r->body, upload_data, *upload_data_size);
            *upload_data_size = 0;
            if (rc == BUF_ETOOBIG)
                return REQUEST_FAIL_NOW(r, TG_ERR_TOO_LARGE, NULL,
                                        "The request body is larger than the limit of %zu bytes.",
                                        r->cfg->max_body_bytes);
            if (rc)
                return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
            return MHD_YES;
        }
        return request_dispatch(r);
    case REQUEST_REPLY:
        return request_queue_reply(r);
    case REQUEST_STREAM:
        return request_queue_stream(r);
    default:
        return MHD_YES;
    }
}

static void request_log(const struct request *r, double seconds)
{
    if (!log_enabled(LOG_INFO))
        return;
    char model[160], key[160];
    log_event(LOG_INFO, "request",
              "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"%s\",\"key\":\"%s\","
              "\"model\":\"%s\",\"backend\":\"%s\",\"status\":%u,\"stream\":%s,"
              "\"duration_ms\":%.3f",
              r->id, r->method, r->ep ? r->ep->path : "-",
              log_escape(key, sizeof key, r->key_name ? r->key_name : ""),
              log_escape(model, sizeof model, r->model ? r->model : ""),
              r->target ? r->target->backend->name : "", r->status,
              r->stream_mode ? "true" : "false", seconds * 1000);
}

void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe)
{
    (void)conn;
    struct worker *w = cls;
    struct request *r = *con_cls;
    if (!r)
        return;
    *con_cls = NULL;
    if (r->xfer) {
        /* The caller went away: stop the backend's work too. */
        upstream_cancel(r->xfer);
        r->xfer = NULL;
        backend_release(r);
    }
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 200 && r->stream_mode &&
        !r->stream_ended)
        r->status = 499; /* the client left mid-stream */
    if (!r->status)
        r->status = 499;
    double seconds = ev_time() - r->t_start;
    metrics_observe_request(w->metrics, r->ep ? r->ep->metric : METRICS_ROUTE_OTHER, r->status,
                            seconds);
    METRICS_ADD(w->metrics->inflight, -1);
    request_log(r, seconds);

    if (r->prev)
        r->prev->next = r->next;
    else
        w->active = r->next;
    if (r->next)
        r->next->prev = r->prev;
    w->n_active--;

    buf_free(&r->body);
    buf_free(&r->resp);
    buf_free(&r->out);
    if (r->stream_mode)
        sse_free(&r->sse);
    json_decref(r->json);
    free(r->upstream_body);
    free(r->reply_body);
    config_unref(r->cfg);
    free(r);
    worker_request_done(w);
}

void request_abort_all(struct worker *w)
{
    for (struct request *r = w->active; r; r = r->next) {
        if (!r->xfer)
            continue;
        upstream_cancel(r->xfer);
        r->xfer = NULL;
        backend_release(r);
        if (r->stream_mode && r->state != REQUEST_UPSTREAM) {
            request_stream_error(r, "the gateway is shutting down");
            r->stream_ended = true;
        } else {
            request_set_error(r, TG_ERR_SHUTTING_DOWN, NULL,
                              "The gateway is shutting down; retry the request.");
        }
        request_resume(r);
    }
}

void request_resume_all(struct worker *w)
{
    for (struct request *r = w->active; r; r = r->next) {
        if (r->xfer) {
            upstream_cancel(r->xfer);
            r->xfer = NULL;
            backend_release(r);
        }
        r->stream_ended = true;
        request_resume(r);
    }
}

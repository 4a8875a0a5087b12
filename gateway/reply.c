/* The bottom of the pipeline: suspending and resuming the connection, the request id, the
 * headers every answer carries, whole replies queued to MHD (streams are queued by
 * phase_relay.c) and SSE events written for a stream. */
#include "base/clock.h"
#include "base/usd.h"
#include "gateway/pipeline.h"
#include "routing/backend.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the answer names: the model that served (a chain's member, once a node answered). */
const char *request_served_model(const struct request *r)
{
    if (r->up.target && r->up.status > 0)
        return r->up.target->model->name;
    return r->model;
}

/* ---- the connection ------------------------------------------------------------------------ */

void request_suspend(struct request *r)
{
    if (!r->suspended) {
        r->suspended = true;
        MHD_suspend_connection(r->conn);
    }
}

void request_resume(struct request *r)
{
    if (r->suspended) {
        r->suspended = false;
        r->relay.reader_waiting = false;
        MHD_resume_connection(r->conn);
        worker_kick(r->w);
    }
}

/* Only one admission step is ever waiting, so one flag tells a parked request from one
 * suspended for its backend or its stream. */
enum MHD_Result request_park(struct request *r)
{
    r->parked = true;
    request_suspend(r);
    return MHD_YES;
}

void request_wake(struct request *r)
{
    if (r->parked) {
        r->parked = false;
        request_resume(r);
    }
}

void request_release_backend(struct request *r)
{
    if (r->up.target)
        atomic_fetch_sub_explicit(&r->up.target->backend->state->inflight, 1, memory_order_relaxed);
}

/* ---- replies -------------------------------------------------------------------------------- */

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

void request_set_id(struct request *r)
{
    const char *given = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-request-id");
    if (given && request_id_ok(given)) {
        snprintf(r->id, sizeof r->id, "%s", given);
        return;
    }
    uint64_t raw[2] = {worker_random(r->w), worker_random(r->w)};
    buf_hex((const unsigned char *)raw, sizeof raw, r->id); /* 32 hex digits */
}

/* x-ratelimit-limit-<what>, -remaining-<what>, -reset-<what> ("12s"), as OpenAI names them. */
static void ratelimit_headers(struct MHD_Response *resp, const char *what, long limit,
                              long remaining, long reset_s)
{
    char name[48], value[32];
    snprintf(name, sizeof name, "x-ratelimit-limit-%s", what);
    snprintf(value, sizeof value, "%ld", limit);
    MHD_add_response_header(resp, name, value);
    snprintf(name, sizeof name, "x-ratelimit-remaining-%s", what);
    snprintf(value, sizeof value, "%ld", remaining);
    MHD_add_response_header(resp, name, value);
    snprintf(name, sizeof name, "x-ratelimit-reset-%s", what);
    snprintf(value, sizeof value, "%lds", reset_s);
    MHD_add_response_header(resp, name, value);
}

/* base/usd.h: at most 10 decimals, trailing zeros dropped, as in every other place a cost is
 * printed. */
void request_format_usd(char *out, size_t n, double usd)
{
    usd_format(out, n, usd);
}

void request_headers(struct request *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "x-request-id", r->id);
    if (r->up.target && r->up.status > 0)
        MHD_add_response_header(resp, "x-tollgate-backend", r->up.target->backend->name);
    if (r->up.target && r->up.status > 0)
        MHD_add_response_header(resp, "x-tollgate-model", request_served_model(r));
    if (r->usage.done && !r->relay.stream_mode) {
        char cost[48];
        request_format_usd(cost, sizeof cost, r->usage.cost_usd);
        MHD_add_response_header(resp, "x-tollgate-cost-usd", cost);
    }
    if (r->reply.retry_after_s > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%ld", r->reply.retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (r->reply.no_retry)
        MHD_add_response_header(resp, "x-should-retry", "false");
    if (r->ep && r->ep->upstream_path) {
        static const char *const names[] = {"bypass", "miss", "hit"};
        MHD_add_response_header(resp, "x-tollgate-cache", names[r->cache.result]);
    }
    if (r->adm.limited) {
        const struct ratelimit_view *v = &r->adm.limit_view;
        long reset_s = (v->reset_ms + 999) / 1000;
        if (v->limit_requests)
            ratelimit_headers(resp, "requests", v->limit_requests, v->remaining_requests, reset_s);
        if (v->limit_tokens)
            ratelimit_headers(resp, "tokens", v->limit_tokens, v->remaining_tokens, reset_s);
    }
    if (worker_draining(r->w))
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close");
}

/* ---- replies ---------------------------------------------------------------------------- */

enum MHD_Result request_queue_reply(struct request *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(r->reply.len, r->reply.body, free);
    if (!resp)
        return MHD_NO;
    r->reply.body = NULL; /* the response owns it now */
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                            r->reply.ctype[0] ? r->reply.ctype : "application/json");
    if (r->reply.allow)
        MHD_add_response_header(resp, MHD_HTTP_HEADER_ALLOW, r->reply.allow);
    request_headers(r, resp);
    if (!r->t_queued)
        r->t_queued = clock_mono();
    enum MHD_Result ok = MHD_queue_response(r->conn, r->reply.status, resp);
    MHD_destroy_response(resp);
    r->status = r->reply.status;
    r->state = REQUEST_SENT;
    return ok;
}

void request_set_reply(struct request *r, unsigned status, char *body, size_t len,
                       const char *ctype)
{
    free(r->reply.body);
    r->reply.status = status;
    r->reply.body = body;
    r->reply.len = len;
    r->reply.err = TG_OK; /* request_set_error() sets it */
    snprintf(r->reply.ctype, sizeof r->reply.ctype, "%s", ctype ? ctype : "application/json");
    r->state = REQUEST_REPLY;
}

void request_set_error(struct request *r, enum tg_error err, const char *param, const char *fmt,
                       ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = 0;
    char *body = error_body(err, msg, param, NULL, &len);
    request_set_reply(r, error_status(err), body, body ? len : 0, "application/json");
    r->reply.err = err;
    if (err == TG_ERR_SHUTTING_DOWN && r->reply.retry_after_s <= 0)
        r->reply.retry_after_s = 1; /* every path of a stopping gateway: another replica */
    if (!body)
        r->reply.status = 500;
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

/* Queued on MHD's first call, a reply would make MHD close the connection because the request
 * has not been read to its end; so without a body it waits for the next call and the
 * connection stays alive. With a body it goes at once, so the body is never read. */
enum MHD_Result request_reply_early(struct request *r)
{
    if (r->first_call && r->state == REQUEST_REPLY && !request_has_body(r))
        return MHD_YES;
    return request_queue_reply(r);
}

enum MHD_Result request_reply_json(struct request *r, unsigned status, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    request_set_reply(r, status, text, strlen(text), "application/json");
    return request_reply_early(r);
}

/* `own`: a chunk the gateway wrote (usage, cost), whose reals go through usd_json_dumps(); a
 * node's chunk keeps its numbers as jansson reads them. */
static int request_emit(struct request *r, json_t *chunk, bool own)
{
    char *text = own ? usd_json_dumps(chunk, JSON_COMPACT) : json_dumps(chunk, JSON_COMPACT);
    if (!text)
        return TG_ERR_NOMEM;
    int rc = buf_printf(&r->relay.out, "data: %s\n\n", text);
    free(text);
    return rc ? TG_ERR_NOMEM : 0;
}

int request_emit_event(struct request *r, json_t *chunk)
{
    return request_emit(r, chunk, false);
}

int request_emit_usage_event(struct request *r, json_t *chunk)
{
    return request_emit(r, chunk, true);
}

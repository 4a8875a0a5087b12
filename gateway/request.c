/* The request pipeline's driver: MHD's callbacks, and the order of the phases. What each
 * phase does is in its own file (gateway/pipeline.h lists them). */
#include "gateway/request.h"

#include "base/clock.h"
#include "gateway/pipeline.h"
#include "gateway/upload.h"
#include "net/upstream.h"
#include "routing/backend.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A reply set by a phase, whole or as a stream. */
static enum MHD_Result request_queue_answer(struct request *r)
{
    return r->state == REQUEST_STREAM ? request_queue_stream(r) : request_queue_reply(r);
}

enum MHD_Result request_proceed(struct request *r)
{
    enum MHD_Result res;
    for (;;) {
        switch (r->state) {
        case REQUEST_CACHE:
            if (request_cache_lookup(r))
                return request_queue_answer(r);
            if (r->state == REQUEST_CACHE_WAIT)
                return request_park(r); /* request_cache_answer moves it on */
            r->state = REQUEST_COALESCE;
            break;
        case REQUEST_COALESCE:
            if (request_coalesce(r))
                return request_park(r); /* the flight's landing or the wait's end moves it on */
            if (r->state != REQUEST_COALESCE)
                return request_queue_answer(r); /* an answer that landed a moment ago */
            r->state = REQUEST_LIMIT;
            break;
        case REQUEST_LIMIT:
            request_admit_limit(r);
            if (r->state == REQUEST_LIMIT_WAIT)
                return request_park(r); /* the limiter's answer moves it on */
            break;
        case REQUEST_BUDGET:
            if (request_admit_budget(r, &res))
                return res;
            if (r->state == REQUEST_BUDGET_WAIT)
                return request_park(r); /* the budget's answer moves it on */
            break;
        case REQUEST_ROUTE:
            if (request_admit_refused(r, &res))
                return res;
            return request_route(r);
        case REQUEST_KEY_WAIT:
        case REQUEST_PIN_WAIT:
        case REQUEST_CACHE_WAIT:
        case REQUEST_FOLLOW:
        case REQUEST_LIMIT_WAIT:
        case REQUEST_BUDGET_WAIT:
            return request_park(r); /* resumed before its answer came: wait on */
        case REQUEST_REPLY:
        case REQUEST_STREAM:
            return request_queue_answer(r);
        default:
            return MHD_YES;
        }
    }
}

/* The whole body is in (or the key lookup it waited for answered). */
static enum MHD_Result request_body_done(struct request *r)
{
    if (r->adm.key_pending) {
        r->state = REQUEST_KEY_WAIT;
        return request_park(r); /* the key lookup's answer wakes it */
    }
    enum MHD_Result res;
    if (request_admit_body(r, &res))
        return res;
    r->state = REQUEST_CACHE;
    return request_proceed(r);
}

/* An HTTP-level refusal (net/httpd.h): OpenAI's error shape with the HTTP status. Queued on
 * the first call, so MHD closes the connection after it: the request's framing is not to be
 * trusted. */
static enum MHD_Result request_refuse(struct request *r, unsigned status, const char *code,
                                      const char *message)
{
    size_t len = 0;
    char *body = error_body(TG_ERR_INVALID_VALUE, message, NULL, code, &len);
    if (!body)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    request_set_reply(r, status, body, len, "application/json");
    return request_queue_reply(r);
}

/* MHD's first call. The URL comes with its escapes (net/httpd.h): the route is matched on the
 * path as sent, so "/v1/models%2Fx" or "/v1%2Fchat%2Fcompletions" match no route, while a
 * model id after "/v1/models/" is decoded ("meta-llama%2FLlama-3" is "meta-llama/Llama-3"). */
static enum MHD_Result request_start(struct request *r, const char *url, const char *method,
                                     const char *version)
{
    struct httpd_problem p;
    if (httpd_request_problem(r->conn, method, version, &p)) {
        snprintf(r->method, sizeof r->method, "%s", httpd_is_token(method) ? method : "-");
        request_set_id(r);
        return request_refuse(r, p.status, p.code, p.message);
    }
    const char *pct = strchr(url, '%');
    if (!pct)
        return request_begin(r, url, method);
    size_t n = strlen(url) + 1;
    char small[512], *dec = n <= sizeof small ? small : malloc(n);
    if (!dec)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    enum MHD_Result res;
    const struct openai_endpoint *ep;
    if (httpd_unescape(url, dec, n) < 0) {
        snprintf(r->method, sizeof r->method, "%s", method);
        request_set_id(r);
        res = request_refuse(r, 400, "invalid_url", "The URL contains an encoded NUL (%00).");
    } else {
        int rc = openai_match(method, dec, &ep);
        /* Decoded, it names a route: only if the route's own part was sent as is. */
        bool literal = (rc == 0 || rc == TG_ERR_METHOD) && (size_t)(pct - url) >= strlen(ep->path);
        res = request_begin(r, literal ? dec : url, method);
    }
    if (dec != small)
        free(dec);
    return res;
}

static struct request *request_new(struct worker *w, struct MHD_Connection *conn)
{
    struct request *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->w = w;
    r->conn = conn;
    r->cfg = config_ref(w->cfg);
    r->t_start = clock_mono();
    r->state = REQUEST_SENT; /* until request_begin says otherwise */
    list_push_tail(&w->live, &r->live);
    w->n_active++;
    w->begun++;
    METRICS_ADD(w->metrics->inflight, 1);
    return r;
}

enum MHD_Result request_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls)
{
    struct request *r = *con_cls;
    if (!r) {
        r = request_new(cls, conn);
        if (!r)
            return MHD_NO;
        *con_cls = r;
        r->first_call = true;
        enum MHD_Result ok = request_start(r, url, method, version);
        tracing_begin(r);
        r->first_call = false;
        return ok;
    }
    switch (r->state) {
    case REQUEST_BODY:
        if (*upload_data_size && r->upload) /* upload.c: spooled, scanned */
            return request_upload_data(r, upload_data, upload_data_size);
        if (*upload_data_size) {
            int rc = buf_append(&r->body, upload_data, *upload_data_size);
            *upload_data_size = 0;
            if (rc == 0)
                return MHD_YES;
            /* In the middle of a body (chunked: its size was not announced) MHD cannot send
             * an answer: the rest is read and dropped, and the answer goes at its end. */
            if (rc == BUF_ETOOBIG)
                request_set_error(r, TG_ERR_TOO_LARGE, NULL,
                                  "The request body is larger than the limit of %zu bytes.",
                                  r->cfg->max_body_bytes);
            else
                request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
            buf_free(&r->body);
            httpd_discard_body(conn);
            return MHD_YES;
        }
        if (r->upload && request_upload_end(r))
            return request_queue_reply(r); /* a malformed upload */
        return request_body_done(r);
    case REQUEST_KEY_WAIT:
        return request_body_done(r);
    case REQUEST_UPSTREAM:
    case REQUEST_SENT:
        return MHD_YES;
    default:
        return request_proceed(r);
    }
}

static void request_free(struct request *r)
{
    if (r->relay.scanning)
        answer_scan_free(&r->relay.scan);
    buf_free(&r->body);
    request_upload_free(r);
    buf_free(&r->relay.resp);
    buf_free(&r->relay.out);
    if (r->relay.stream_mode)
        sse_free(&r->relay.sse);
    json_decref(r->json);
    arena_release(&r->arena); /* after the scan and the body's tree, which live in it */
    free(r->up.body);
    free(r->reply.body);
    free(r->up.skip);
    free(r->chain.targets);
    free(r->adm.key_models);
    free(r->adm.local_url);
    config_unref(r->cfg);
    free(r);
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
    keyauth_cancel(r->adm.lookup);
    request_responses_forget(r);
    request_cache_forget(r);
    ratelimit_cancel(r->adm.limit_wait);
    budget_cancel(r->adm.budget_wait);
    request_cancel_attempt(r); /* the caller went away: stop the backend's work too */
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK && r->status == 200 && r->relay.stream_mode &&
        !r->relay.stream_ended)
        r->status = 499; /* the client left mid-stream */
    if (!r->status)
        r->status = 499;
    METRICS_ADD(w->metrics->inflight, -1);
    request_settle(r, clock_mono() - r->t_start);
    list_unlink(&r->live);
    w->n_active--;
    request_free(r);
    worker_request_done(w);
}

void request_abort_all(struct worker *w)
{
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &w->live) {
        struct request *r = LIST_ENTRY(node, struct request, live);
        if (r->cache.follows) {
            /* Waiting for an identical request's answer: it will not come in time. */
            request_unfollow(r);
            request_set_error(r, TG_ERR_SHUTTING_DOWN, NULL,
                              "The gateway is shutting down; retry the request.");
            request_wake(r);
            continue;
        }
        if (!r->up.xfer && !ev_is_active(&r->up.backoff_timer))
            continue; /* nothing asked of a backend, and no retry waiting to ask */
        request_cancel_attempt(r);
        if (r->relay.stream_mode && r->state != REQUEST_UPSTREAM) {
            request_stream_error(r, "the gateway is shutting down");
            r->relay.stream_ended = true;
        } else {
            request_set_error(r, TG_ERR_SHUTTING_DOWN, NULL,
                              "The gateway is shutting down; retry the request.");
        }
        request_resume(r);
    }
}

void request_resume_all(struct worker *w)
{
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &w->live) {
        struct request *r = LIST_ENTRY(node, struct request, live);
        request_cancel_attempt(r);
        r->relay.stream_ended = true;
        request_resume(r);
    }
}

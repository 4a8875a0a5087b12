#include "gateway/request.h"

#include "openai/answer.h"
#include "tenancy/auth.h"
#include "tenancy/budget.h"
#include "base/buf.h"
#include "cache/cache.h"
#include "base/clock.h"
#include "base/error.h"
#include "cache/flight.h"
#include "tenancy/keyauth.h"
#include "tenancy/ledger.h"
#include "base/log.h"
#include "openai/openai.h"
#include "tenancy/ratelimit.h"
#include "redis/redis.h"
#include "openai/sse.h"
#include "gateway/worker.h"
#include "routing/backend.h"
#include "routing/router.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

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
    bool parked;     /* suspended until a Redis answer (key, cache, limiter, budget) comes */
    struct config *cfg; /* the snapshot this request started with (referenced) */
    const struct openai_endpoint *ep;
    enum request_state state;
    bool suspended;
    char id[132];
    char method[8];
    const char *key_name; /* the static key's name (config), or key_name_buf */
    char key_name_buf[72];
    unsigned metric_key;  /* the key name's metric label index */
    char *key_models;     /* a Redis key's allowed models (keycache format); NULL = all */
    struct keyauth_lookup *lookup; /* a Redis key lookup in flight */
    bool auth_pending;    /* the key is being looked up */
    enum keyauth_result auth_result;
    char *local_url;      /* the path of a local endpoint answered after the lookup */
    long key_rpm, key_tpm; /* the key's per-minute limits, 0 = none */
    struct ratelimit_wait *limit_wait;
    bool limit_pending;   /* admission asked for, not answered yet */
    bool limited;         /* the key has limits: send x-ratelimit-* */
    enum ratelimit_result limit_result;
    struct ratelimit_view limit_view;
    long limit_tokens;    /* tokens admitted on the estimate */
    double key_budget;    /* USD, 0 = none */
    struct budget_wait *budget_wait;
    bool budget_asked, budget_pending, budget_in_redis;
    enum budget_result budget_result;
    double budget_reserved; /* the estimate reserved */
    enum { REQUEST_CACHE_BYPASS = 0, REQUEST_CACHE_MISS, REQUEST_CACHE_HIT } cache_result;
    bool cache_store;     /* a complete answer may be stored */
    bool cache_checked;
    bool cache_pending;   /* the shared store (Redis) is being asked */
    struct request_cache_ask *cache_ask;
    bool cache_read; /* may be answered from the cache (no Cache-Control: no-cache) */
    int64_t cache_max_age_ms;
    /* Coalescing: the first cacheable miss for a key leads a flight, identical ones that come
     * while it is answered follow it (parked) and get its answer. */
    bool coalesce_checked;
    bool leads, follows;
    uint64_t flight_token;
    struct flight_waiter waiter;                   /* its place in the flight it follows */
    struct request *follower_prev, *follower_next; /* the worker's followers */
    ev_timer follow_timer;
    /* A streamed miss assembled into a whole answer for the cache. */
    bool capturing;
    struct cache_capture capture;
    unsigned char cache_key[32];
    const char *model; /* the route's model name (config-owned) */
    double t_start;
    double t_queued;          /* when the answer (or the stream's first event) was queued */
    double up_wait;           /* seconds spent waiting on backends before that */
    double saved_usd;         /* a hit: what the stored answer cost when it was made */
    double routing_saved_usd; /* the priciest healthy alternative's cost minus ours */
    struct buf body;
    json_t *json;
    struct openai_request oreq;
    const struct config_route *route;
    const struct config_target *target;
    bool *skip;            /* per route target: already failed for this request */
    struct router_request rreq;
    unsigned attempts;
    double deadline;       /* no new attempt after this (clock_mono) */
    double t_attempt;      /* when the current attempt started */
    double ttfb;           /* its time to the first body byte */
    enum tg_error last_err;
    char last_msg[400];
    bool no_retry;         /* send x-should-retry: false */
    long retry_after_s;    /* send retry-after when > 0 */
    long up_retry_after_s; /* a 429's retry-after */
    long rate_limit_wait_s; /* the soonest a rate-limiting backend takes requests again */
    char *upstream_body; /* the body sent upstream when it differs from the caller's */
    char url[1024];
    struct upstream_xfer *xfer;
    bool got_headers;
    long up_status;
    char fail_detail[160]; /* why on_data aborted the transfer */

    /* A whole answer (or a backend's error) being collected, and scanned as it arrives. */
    struct buf resp;
    struct answer_scan scan;
    bool scanning;
    struct arena arena; /* the parsed body's nodes and the scans' state (gateway/arena.h) */

    /* Stream relay: events from the backend, waiting to be sent. */
    bool stream_mode;
    struct sse_parser sse;
    struct buf out;
    size_t out_off;
    bool saw_done;
    bool stream_ended;   /* nothing more will be added to `out` */
    bool reader_waiting; /* the content reader suspended the connection */
    bool up_paused;
    bool caller_usage;   /* the caller asked for the usage chunk */

    /* What the backend delivered and what it is billed for. */
    size_t delivered;    /* bytes of generated text (content, reasoning, tool calls) */
    unsigned n_choices;  /* choices seen in the answer */
    bool usage_reported; /* the backend sent usage */
    long rep_prompt, rep_completion;
    bool usage_done;
    long prompt_tokens, completion_tokens;
    bool usage_clamped;
    double cost_usd;

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
static enum MHD_Result request_admitted(struct request *r);
static enum MHD_Result request_proceed(struct request *r);
static enum MHD_Result request_queue_stream(struct request *r);
static int request_emit_event(struct request *r, json_t *chunk);

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

/* Waits for one of the checks that may ask Redis; request_wake() is its answer. Only one
 * such check is ever in progress, so one flag does. */
static enum MHD_Result request_park(struct request *r)
{
    r->parked = true;
    request_suspend(r);
    return MHD_YES;
}

/* An answer came: a parked request goes on through MHD's next call for it; one that is not
 * parked (the answer came before it had to wait) simply reads the result when it gets there. */
static void request_wake(struct request *r)
{
    if (r->parked) {
        r->parked = false;
        request_resume(r);
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

/* USD as a plain decimal, never in exponent form: 10 decimals, trailing zeros dropped
 * ("0.0000125", "3.0"). The digits of usual amounts by integer arithmetic, as printf's float
 * conversion is several times slower. */
static void format_usd(char *out, size_t n, double usd)
{
    if (!(usd >= 0 && usd < 1e5) || n < 21) { /* below 1e5, units fit in 53 bits */
        snprintf(out, n, "%.10f", usd);
    } else {
        unsigned long long units = (unsigned long long)(usd * 1e10 + 0.5);
        char tmp[24];
        int i = sizeof tmp;
        for (int d = 0; d < 10; d++, units /= 10)
            tmp[--i] = (char)('0' + units % 10);
        tmp[--i] = '.';
        do {
            tmp[--i] = (char)('0' + units % 10);
            units /= 10;
        } while (units);
        memcpy(out, tmp + i, sizeof tmp - (size_t)i);
        out[sizeof tmp - (size_t)i] = '\0';
    }
    char *dot = strchr(out, '.');
    if (!dot)
        return;
    char *end = out + strlen(out) - 1;
    while (end > dot + 1 && *end == '0')
        *end-- = '\0';
}

static void request_headers(struct request *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "x-request-id", r->id);
    if (r->target && r->up_status > 0)
        MHD_add_response_header(resp, "x-tollgate-backend", r->target->backend->name);
    if (r->usage_done && !r->stream_mode) {
        char cost[48];
        format_usd(cost, sizeof cost, r->cost_usd);
        MHD_add_response_header(resp, "x-tollgate-cost-usd", cost);
    }
    if (r->retry_after_s > 0) {
        char ra[24];
        snprintf(ra, sizeof ra, "%ld", r->retry_after_s);
        MHD_add_response_header(resp, MHD_HTTP_HEADER_RETRY_AFTER, ra);
    }
    if (r->no_retry)
        MHD_add_response_header(resp, "x-should-retry", "false");
    if (r->ep && r->ep->upstream_path) {
        static const char *const names[] = {"bypass", "miss", "hit"};
        MHD_add_response_header(resp, "x-tollgate-cache", names[r->cache_result]);
    }
    if (r->limited) {
        const struct ratelimit_view *v = &r->limit_view;
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
    if (!r->t_queued)
        r->t_queued = clock_mono();
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
        /* Per-key spend is no business of the callers: with an admin listener, only there. */
        if (r->cfg->admin_listen)
            return REQUEST_FAIL_NOW(r, TG_ERR_UNKNOWN_URL, NULL,
                                    "Invalid URL (GET /metrics): metrics are served on the "
                                    "admin listener.");
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
            if (keycache_allows(r->key_models, cfg->routes[i].model))
                json_array_append_new(data, model_object(r, cfg->routes[i].model));
        return request_reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    case OPENAI_MODEL: {
        const char *id = url + strlen(r->ep->path);
        const struct config_route *route = config_find_route(cfg, id);
        if (!route || !keycache_allows(r->key_models, route->model)) {
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

/* ---- keys held in Redis ---------------------------------------------------------------------- */

static void request_take_key(struct request *r, const struct keycache_entry *e)
{
    r->key_rpm = e->rpm > 0 ? e->rpm : 0;
    r->key_tpm = e->tpm > 0 ? e->tpm : 0;
    r->key_budget = e->budget_usd > 0 ? e->budget_usd : 0;
    snprintf(r->key_name_buf, sizeof r->key_name_buf, "%s", e->name);
    r->key_name = r->key_name_buf;
    r->metric_key = e->metric_key;
    free(r->key_models);
    r->key_models = NULL;
    if (e->models) {
        size_t n = 0;
        while (e->models[n])
            n += strlen(e->models + n) + 1;
        r->key_models = malloc(n + 1);
        if (r->key_models)
            memcpy(r->key_models, e->models, n + 1);
        else
            r->auth_result = KEYAUTH_UNAVAILABLE; /* never widen access on OOM */
    }
}

static void request_key_done(void *ctx, enum keyauth_result result,
                             const struct keycache_entry *e)
{
    struct request *r = ctx;
    r->lookup = NULL;
    r->auth_pending = false;
    r->auth_result = result;
    if (result == KEYAUTH_OK)
        request_take_key(r, e);
    request_wake(r);
}

/* The error for a key that did not resolve, or 0. */
static enum MHD_Result request_key_error(struct request *r)
{
    switch (r->auth_result) {
    case KEYAUTH_EXPIRED:
        return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "The API key provided has expired.");
    case KEYAUTH_UNAVAILABLE:
        return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL,
                                "The API key could not be checked: the key store is "
                                "unavailable. Retry shortly.");
    default:
        return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "Incorrect API key provided.");
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
        r->key_name = who.key_name;
        r->metric_key = who.metric_key;
        if (a == AUTH_INVALID) {
            if (!r->w->keycache)
                return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "Incorrect API key provided.");
            const struct keycache_entry *e = NULL;
            r->auth_result = keyauth_resolve(r->w->keycache, r->w->redis, who.digest,
                                             request_key_done, r, &r->lookup, &e);
            if (r->auth_result == KEYAUTH_OK)
                request_take_key(r, e);
            else if (r->auth_result == KEYAUTH_PENDING)
                r->auth_pending = true;
            else
                return request_key_error(r);
        }
    }
    if (!r->ep->upstream_path && !r->auth_pending)
        return request_local(r, url);
    if (!r->ep->upstream_path) {
        /* Answered once the key is known (see request_dispatch). */
        r->local_url = strdup(url);
        if (!r->local_url)
            return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
        buf_init(&r->body, 0);
        r->state = REQUEST_BODY;
        return MHD_YES;
    }

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

/* ---- upstream: attempts and failover ------------------------------------------------------ */

/* Forgets what an earlier attempt received, before the next backend is tried. */
static void request_reset_attempt(struct request *r)
{
    if (r->scanning)
        answer_scan_free(&r->scan);
    r->scanning = false;
    buf_free(&r->resp);
    buf_free(&r->out);
    if (r->stream_mode)
        sse_free(&r->sse);
    if (r->capturing)
        cache_capture_free(&r->capture);
    r->capturing = false;
    r->stream_mode = false;
    r->out_off = 0;
    r->saw_done = false;
    r->got_headers = false;
    r->up_status = 0;
    r->up_paused = false;
    r->fail_detail[0] = '\0';
    r->delivered = 0;
    r->n_choices = 0;
    r->usage_reported = false;
    r->usage_done = false;
}

/* The body for a target: the caller's bytes when nothing changes, else a rewrite with the
 * backend's model name and, for streams, a request for the usage chunk (which is how the
 * gateway learns what a stream cost; it is dropped again if the caller did not ask). */
static int request_upstream_body(struct request *r, const struct config_target *t,
                                 const char **body, size_t *len)
{
    const char *want = t->model->upstream ? t->model->upstream : r->model;
    const char *sent = json_string_value(json_object_get(r->json, "model"));
    bool rename = !sent || strcmp(want, sent);
    bool ask_usage = r->oreq.stream && !r->caller_usage;
    if (!rename && !ask_usage && !r->upstream_body) {
        *body = r->body.data;
        *len = r->body.len;
        return 0;
    }
    if (rename || ask_usage || !r->upstream_body) {
        if (rename)
            json_object_set_new(r->json, "model", json_string(want));
        if (ask_usage) {
            json_t *so = json_object_get(r->json, "stream_options");
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(r->json, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
        }
        free(r->upstream_body);
        r->upstream_body = json_dumps(r->json, JSON_COMPACT);
        if (!r->upstream_body)
            return TG_ERR_NOMEM;
    }
    *body = r->upstream_body;
    *len = strlen(r->upstream_body);
    return 0;
}

/* Sets the reply for "no backend can take this request" from the router's reasons. */
static void request_no_target(struct request *r, const struct router_outcome *why)
{
    if (why->over_price) {
        char max[48], cheapest[48];
        format_usd(max, sizeof max, r->rreq.max_price_usd);
        format_usd(cheapest, sizeof cheapest, why->cheapest_usd);
        request_set_error(r, TG_ERR_PRICE_CEILING, "x-tollgate-max-price-usd",
                          "No healthy backend serves '%s' for at most $%s (estimated); the "
                          "cheapest estimate is $%s.",
                          r->model, max, cheapest);
        r->no_retry = true;
        return;
    }
    long wait_s = 1;
    if (why->back_ms > r->rreq.now_ms)
        wait_s = (long)((why->back_ms - r->rreq.now_ms + 999) / 1000);
    else if (!why->saturated)
        wait_s = (r->cfg->health.interval_ms + 999) / 1000;
    r->retry_after_s = wait_s;
    if (why->saturated && !why->unavailable)
        request_set_error(r, TG_ERR_NO_BACKEND, NULL,
                          "Every backend serving '%s' is at its concurrency limit; retry in "
                          "%ld s.",
                          r->model, wait_s);
    else
        request_set_error(r, TG_ERR_NO_BACKEND, NULL,
                          "No healthy backend serves '%s' right now; retry in %ld s.", r->model,
                          wait_s);
}

/* Picks the next backend and starts the transfer: 0 when started, 1 when no backend is
 * eligible (*why says why), or a negative tg_error. */
static int request_start_attempt(struct request *r, struct router_outcome *why)
{
    r->rreq.now_ms = clock_mono_ms();
    r->rreq.random = worker_random(r->w);
    const struct config_target *t = router_pick(r->route, &r->rreq, r->skip, why);
    if (!t)
        return 1;
    const char *body;
    size_t body_len;
    int rc = request_upstream_body(r, t, &body, &body_len);
    if (rc)
        return rc;
    request_reset_attempt(r);
    r->target = t;
    r->attempts++;
    r->t_attempt = clock_mono();
    const struct config_backend *b = t->backend;
    snprintf(r->url, sizeof r->url, "%s%s", b->url, r->ep->upstream_path);
    const struct config_upstream *uc = &r->cfg->upstream;
    struct upstream_req req = {
        .url = r->url,
        .body = body,
        .body_len = body_len,
        .headers = b->headers,
        .ca_file = b->ca_file,
        .request_id = r->id,
        .connect_timeout_ms = uc->connect_timeout_ms,
        .first_byte_timeout_ms = uc->first_byte_timeout_ms,
        .idle_timeout_ms = uc->idle_timeout_ms,
        .total_timeout_ms = uc->total_timeout_ms,
    };
    r->xfer = upstream_start(r->w->upstream, &req, &request_upstream_ops, r);
    if (!r->xfer)
        return TG_ERR_NOMEM;
    atomic_fetch_add_explicit(&b->state->inflight, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&b->state->requests, 1, memory_order_relaxed);
    r->state = REQUEST_UPSTREAM;
    return 0;
}

/* Whether Cache-Control has a directive; for max-age=N, sets *max_age_ms. */
static bool cache_control_has(const char *cc, const char *what, int64_t *max_age_ms)
{
    for (const char *p = cc; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t w = strlen(what);
        if (n >= w && !strncasecmp(p, what, w)) {
            if (max_age_ms) {
                if (p[w] != '=')
                    return false;
                *max_age_ms = strtoll(p + w + 1, NULL, 10) * 1000;
            }
            return true;
        }
        p += n;
    }
    return false;
}

static void request_cache_ignored(void *ctx, int result, const redisReply *reply)
{
    (void)ctx;
    (void)result;
    (void)reply;
}

/* A cached answer becomes the reply. */
/* A stored whole answer replayed to a streaming caller: per choice one event with the whole
 * message as its delta and one with the finish reason, the usage chunk when asked for, then
 * [DONE] — what the SDKs assemble into the same answer. */
static bool request_cache_hit_stream(struct request *r, const char *body, size_t len,
                                     double saved_usd)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    json_t *choices = json_object_get(doc, "choices");
    if (!json_is_array(choices)) {
        json_decref(doc);
        return false;
    }
    bool chat = r->ep->route == OPENAI_CHAT;
    const char *object = chat ? "chat.completion.chunk" : "text_completion";
    buf_init(&r->out, REQUEST_STREAM_HIGH_WATER + 2 * REQUEST_STREAM_MAX_EVENT + len * 2);
    r->out_off = 0;
    int rc = 0;
    size_t i;
    json_t *c;
    json_array_foreach(choices, i, c)
    {
        json_t *index = json_object_get(c, "index");
        json_t *delta;
        if (chat) {
            delta = json_deep_copy(json_object_get(c, "message"));
            if (!json_is_object(delta)) {
                json_decref(delta);
                delta = json_object();
            }
            /* Streamed tool calls carry their position. */
            size_t k;
            json_t *call;
            json_array_foreach(json_object_get(delta, "tool_calls"), k, call)
                json_object_set_new(call, "index", json_integer((json_int_t)k));
        }
        json_t *first = json_pack("{s:O?, s:s, s:O?, s:O?, s:[{s:O?, s:o, s:n}]}", "id",
                                  json_object_get(doc, "id"), "object", object, "created",
                                  json_object_get(doc, "created"), "model",
                                  json_object_get(doc, "model"), "choices", "index", index,
                                  chat ? "delta" : "text",
                                  chat ? delta : json_copy(json_object_get(c, "text")),
                                  "finish_reason");
        json_t *last = json_pack("{s:O?, s:s, s:O?, s:O?, s:[{s:O?, s:o, s:O?}]}", "id",
                                 json_object_get(doc, "id"), "object", object, "created",
                                 json_object_get(doc, "created"), "model",
                                 json_object_get(doc, "model"), "choices", "index", index,
                                 chat ? "delta" : "text", chat ? json_object() : json_string(""),
                                 "finish_reason", json_object_get(c, "finish_reason"));
        if (!first || !last)
            rc = TG_ERR_NOMEM;
        if (!rc)
            rc = request_emit_event(r, first);
        if (!rc)
            rc = request_emit_event(r, last);
        json_decref(first);
        json_decref(last);
    }
    if (!rc && r->caller_usage) {
        json_t *usage = json_deep_copy(json_object_get(doc, "usage"));
        if (!json_is_object(usage)) {
            json_decref(usage);
            usage = json_object();
        }
        json_object_set_new(usage, "cost", json_real(0)); /* a hit costs nothing */
        json_t *u = json_pack("{s:O?, s:s, s:[], s:o}", "id", json_object_get(doc, "id"), "object",
                              object, "choices", "usage", usage);
        rc = u ? request_emit_event(r, u) : TG_ERR_NOMEM;
        json_decref(u);
    }
    json_decref(doc);
    if (!rc)
        rc = buf_append_str(&r->out, "data: [DONE]\n\n") ? TG_ERR_NOMEM : 0;
    if (rc) {
        buf_free(&r->out);
        return false;
    }
    r->stream_mode = true;
    r->stream_ended = true;
    sse_init(&r->sse, REQUEST_STREAM_MAX_EVENT); /* freed with the request like any stream */
    r->cache_result = REQUEST_CACHE_HIT;
    r->usage_done = true;
    r->cost_usd = 0;
    r->saved_usd = saved_usd;
    r->state = REQUEST_STREAM;
    return true;
}

static bool request_cache_hit(struct request *r, const char *body, size_t len, double saved_usd)
{
    if (r->oreq.stream)
        return request_cache_hit_stream(r, body, len, saved_usd);
    char *copy = malloc(len + 1);
    if (!copy)
        return false;
    memcpy(copy, body, len);
    copy[len] = '\0';
    r->cache_result = REQUEST_CACHE_HIT;
    r->usage_done = true; /* a hit costs nothing upstream */
    r->cost_usd = 0;
    r->saved_usd = saved_usd;
    request_set_reply(r, 200, copy, len, "application/json");
    return true;
}

/* The shared store: HASH tg:cache:<hex> {body, backend, cost, stored_at (wall ms)}. */
struct request_cache_ask {
    struct request *r; /* NULL once the request is gone */
};

static void cache_redis_key(const unsigned char key[32], char out[9 + 65])
{
    memcpy(out, "tg:cache:", 9);
    buf_hex(key, 32, out + 9);
}


static void request_cache_answer(void *ctx, int result, const redisReply *reply)
{
    struct request_cache_ask *ask = ctx;
    struct request *r = ask->r;
    free(ask);
    if (!r)
        return;
    r->cache_ask = NULL;
    r->cache_pending = false;
    const char *body = NULL, *backend = "";
    size_t len = 0;
    int64_t stored = 0;
    double cost = 0;
    if (result == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const redisReply *k = reply->element[i], *v = reply->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(k->str, "body")) {
                body = v->str;
                len = v->len;
            } else if (!strcmp(k->str, "backend")) {
                backend = v->str;
            } else if (!strcmp(k->str, "stored_at")) {
                stored = strtoll(v->str, NULL, 10);
            } else if (!strcmp(k->str, "cost")) {
                cost = strtod(v->str, NULL);
            }
        }
    }
    int64_t age = clock_wall_ms() - stored;
    if (body && (r->cache_max_age_ms < 0 || age <= r->cache_max_age_ms)) {
        /* Kept here too, for the worker's next caller. */
        cache_put(r->w->cache, r->cache_key, body, len, backend, cost, clock_mono_ms(),
                  r->cfg->cache.ttl_s * 1000 - (age > 0 ? age : 0));
        request_cache_hit(r, body, len, cost);
    }
    request_wake(r);
}

static void request_cache_ask(struct request *r)
{
    struct request_cache_ask *ask = calloc(1, sizeof *ask);
    if (!ask)
        return;
    ask->r = r;
    char key[9 + 65];
    cache_redis_key(r->cache_key, key);
    const char *argv[] = {"HGETALL", key};
    size_t argvlen[] = {7, strlen(key)};
    if (redis_command(r->w->redis, 2, argv, argvlen, request_cache_answer, ask)) {
        free(ask);
        return;
    }
    r->cache_ask = ask;
    r->cache_pending = true;
}

/* Stores a complete answer in the shared store too (fire and forget). */
static void request_cache_share(struct request *r, const char *text, size_t len)
{
    static const char script[] =
        "redis.call('HSET', KEYS[1], 'body', ARGV[1], 'backend', ARGV[2], 'cost', ARGV[3], "
        "'stored_at', ARGV[4])\n"
        "redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
        "return 1\n";
    if (!r->w->redis || !redis_client_available(r->w->redis))
        return;
    const struct redis_script *s = redis_script_load(r->w->redis, script, sizeof script - 1);
    if (!s)
        return;
    char key[9 + 65], cost[40], stored[24], ttl[24];
    cache_redis_key(r->cache_key, key);
    snprintf(cost, sizeof cost, "%.10f", r->cost_usd);
    snprintf(stored, sizeof stored, "%lld", (long long)clock_wall_ms());
    snprintf(ttl, sizeof ttl, "%ld", r->cfg->cache.ttl_s * 1000);
    const char *backend = r->target->backend->name;
    const char *argv[] = {key, text, backend, cost, stored, ttl};
    size_t argvlen[] = {strlen(key), len, strlen(backend), strlen(cost), strlen(stored),
                        strlen(ttl)};
    redis_evalsha(r->w->redis, s, 1, 6, argv, argvlen, request_cache_ignored, NULL);
}

/* ---- coalescing: identical misses share one upstream call -------------------------------- */

/* An answer posted by a leader (on any worker) for one of this worker's followers. */
struct worker_mail {
    uint64_t token;
    bool has_text;
    double cost_usd;
    size_t len;
    struct worker_mail *next;
    char text[];
};

/* flight_post_fn, on the leader's thread: queue it for the follower's worker. */
static void request_post(void *target, uint64_t token, const char *text, size_t len,
                         double cost_usd)
{
    struct worker *w = target;
    struct worker_mail *m = malloc(sizeof *m + (text ? len : 0));
    if (!m)
        return; /* the follower's wait ends and it goes on alone */
    *m = (struct worker_mail){
        .token = token, .has_text = text != NULL, .cost_usd = cost_usd, .len = text ? len : 0};
    if (text)
        memcpy(m->text, text, len);
    pthread_mutex_lock(&w->mail_lock);
    m->next = w->mail;
    w->mail = m;
    pthread_mutex_unlock(&w->mail_lock);
    ev_async_send(w->loop, &w->mail_async);
}

/* Takes a follower off this worker's list (and its timer off the loop). */
static void request_unlink_follower(struct request *r)
{
    if (r->follower_prev)
        r->follower_prev->follower_next = r->follower_next;
    else
        r->w->followers = r->follower_next;
    if (r->follower_next)
        r->follower_next->follower_prev = r->follower_prev;
    r->follower_prev = r->follower_next = NULL;
    r->follows = false;
    ev_timer_stop(r->w->loop, &r->follow_timer);
}

/* A follower stops waiting (its time is up, or it is gone). */
static void request_unfollow(struct request *r)
{
    if (!r->follows)
        return;
    flight_leave(&r->waiter);
    request_unlink_follower(r);
}

static void request_follow_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct request *r = t->data;
    request_unfollow(r);
    request_wake(r); /* on its own now: it goes on as a miss */
}

/* One delivered answer: the follower leaves the list and wakes with a hit, or without one
 * goes on as a miss. */
static void request_deliver(struct request *r, const struct worker_mail *m)
{
    request_unlink_follower(r);
    if (m->has_text)
        request_cache_hit(r, m->text, m->len, m->cost_usd);
    request_wake(r);
}

void request_take_mail(struct worker *w)
{
    pthread_mutex_lock(&w->mail_lock);
    struct worker_mail *m = w->mail;
    w->mail = NULL;
    pthread_mutex_unlock(&w->mail_lock);
    size_t n = 0;
    for (struct worker_mail *x = m; x; x = x->next)
        n++;
    /* A herd of identical requests can leave thousands of followers and as many answers:
     * index the answers by token (open addressing) and walk the followers once. Without
     * memory for the index the answers are dropped and the followers' waits run out. */
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    struct worker_mail **slots = n ? calloc(cap, sizeof *slots) : NULL;
    if (slots) {
        for (struct worker_mail *x = m; x; x = x->next) {
            size_t i = (size_t)x->token & (cap - 1);
            while (slots[i])
                i = (i + 1) & (cap - 1);
            slots[i] = x;
        }
        for (struct request *next, *r = w->followers; r; r = next) {
            next = r->follower_next;
            size_t i = (size_t)r->flight_token & (cap - 1);
            while (slots[i] && slots[i]->token != r->flight_token)
                i = (i + 1) & (cap - 1);
            if (slots[i])
                request_deliver(r, slots[i]);
        }
    }
    free(slots);
    for (struct worker_mail *next; m; m = next) {
        next = m->next;
        free(m);
    }
}

void request_drop_mail(struct worker *w)
{
    for (struct worker_mail *next, *m = w->mail; m; m = next) {
        next = m->next;
        free(m);
    }
    w->mail = NULL;
}

/* The leader's flight ends: with the stored answer, its followers are answered from it (a
 * hit, costing nothing); without one (the answer failed, was cut, or is not storable) they go
 * on on their own. */
static void request_flight_land(struct request *r, const char *text, size_t len, double cost)
{
    if (!r->leads)
        return;
    r->leads = false;
    flight_land(r->cache_key, r->flight_token, text, len, cost, request_post);
}

/* A cacheable miss: follows the flight already answering the same request, on any worker
 * (true: park until it lands or the wait ends), or leads a new one. */
static bool request_coalesce(struct request *r)
{
    long wait_ms = r->cfg->cache.coalesce_wait_ms;
    if (r->cache_result != REQUEST_CACHE_MISS || !wait_ms)
        return false;
    r->flight_token = worker_random(r->w);
    switch (flight_join(r->cache_key, r->flight_token, r->w, r->cache_read, r->cache_store,
                        &r->waiter)) {
    case FLIGHT_LEAD:
        r->leads = true;
        return false;
    case FLIGHT_FOLLOW:
        r->follows = true;
        r->follower_prev = NULL;
        r->follower_next = r->w->followers;
        if (r->w->followers)
            r->w->followers->follower_prev = r;
        r->w->followers = r;
        ev_timer_init(&r->follow_timer, request_follow_timeout, (double)wait_ms / 1000.0, 0);
        r->follow_timer.data = r;
        ev_timer_start(r->w->loop, &r->follow_timer);
        return true;
    default:
        return false;
    }
}

/* Keeps a complete answer (this worker's store and the shared one) and hands it to the
 * requests waiting for it. */
static void request_cache_store(struct request *r, const char *text, size_t len)
{
    if (len > r->cfg->cache.max_entry_bytes) {
        request_flight_land(r, NULL, 0, 0);
        return;
    }
    cache_put(r->w->cache, r->cache_key, text, len, r->target->backend->name, r->cost_usd,
              clock_mono_ms(), r->cfg->cache.ttl_s * 1000);
    request_cache_share(r, text, len);
    request_flight_land(r, text, len, r->cost_usd);
}

/* An answer from the cache, when there is one for this request: true when the reply is set.
 * Otherwise the request goes on, or waits for the shared store (cache_pending). */
static bool request_cache_lookup(struct request *r)
{
    const struct config_cache *cc = &r->cfg->cache;
    if (!r->w->cache || cc->mode == CONFIG_CACHE_OFF)
        return false;
    if (cc->mode == CONFIG_CACHE_DETERMINISTIC && r->ep->route != OPENAI_EMBEDDINGS &&
        !cache_deterministic(r->json))
        return false;
    const char *ctl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CACHE_CONTROL);
    const char *scope = cc->global ? "" : (r->key_name ? r->key_name : "");
    if (cache_key(r->ep->path, r->model, scope, r->json, r->cache_key))
        return false;
    r->cache_result = REQUEST_CACHE_MISS;
    r->cache_store = !cache_control_has(ctl, "no-store", NULL);
    if (cache_control_has(ctl, "no-cache", NULL))
        return false;
    r->cache_read = true;
    int64_t max_age = -1;
    cache_control_has(ctl, "max-age", &max_age);
    r->cache_max_age_ms = max_age;
    const struct cache_entry *e = cache_get(r->w->cache, r->cache_key, clock_mono_ms(), max_age);
    if (e)
        return request_cache_hit(r, e->body, e->len, e->cost_usd);
    /* Not in this worker's store: ask the shared one, unless Redis is out of reach (then
     * the request goes on as a miss; a cache never fails a request). */
    if (r->w->redis && redis_client_available(r->w->redis))
        request_cache_ask(r);
    return false;
}

static void request_limit_done(void *ctx, enum ratelimit_result result,
                               const struct ratelimit_view *view)
{
    struct request *r = ctx;
    r->limit_wait = NULL;
    r->limit_pending = false;
    r->limit_result = result;
    r->limit_view = *view;
    request_wake(r);
}

/* The whole body is in: validate, route, forward. */
static enum MHD_Result request_dispatch(struct request *r)
{
    if (r->auth_pending) {
        return request_park(r); /* request_key_done wakes us */
    }
    if (r->auth_result != KEYAUTH_OK && r->auth_result != KEYAUTH_PENDING)
        return request_key_error(r);
    if (r->local_url)
        return request_local(r, r->local_url);
    if (r->json)
        return request_proceed(r); /* back from waiting for the cache or the limiter */
    json_error_t jerr;
    arena_enter(&r->arena);
    r->json = json_loadb(r->body.data ? r->body.data : "", r->body.len, 0, &jerr);
    arena_leave();
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
    r->caller_usage = r->oreq.include_usage;
    r->route = config_find_route(r->cfg, r->oreq.model);
    if (!r->route) {
        char esc[200];
        return REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_FOUND, "model",
                                "The model '%s' does not exist or no backend serves it.",
                                log_escape(esc, sizeof esc, r->oreq.model));
    }
    r->model = r->route->model;
    if (!keycache_allows(r->key_models, r->model))
        return REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_ALLOWED, "model",
                                "This API key may not use the model '%s'.", r->model);

    const struct config_routing *rc_cfg = &r->cfg->routing;
    r->rreq = (struct router_request){
        .prompt_tokens = r->oreq.prompt_tokens_est,
        .output_tokens = r->oreq.max_tokens >= 0 ? (size_t)r->oreq.max_tokens
                                                 : rc_cfg->default_output_tokens,
        .strategy = rc_cfg->strategy,
        .max_price_usd = -1,
        .tie_tolerance = rc_cfg->tie_tolerance,
    };
    r->rreq.output_tokens *= r->oreq.n_choices;
    if (r->ep->route == OPENAI_EMBEDDINGS)
        r->rreq.output_tokens = 0;
    const char *strategy =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-tollgate-route");
    if (strategy && config_parse_strategy(strategy, &r->rreq.strategy))
        return REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "x-tollgate-route",
                                "x-tollgate-route must be cheapest, price-weighted or latency.");
    const char *max_price =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-tollgate-max-price-usd");
    if (max_price) {
        char *end;
        double v = strtod(max_price, &end);
        if (end == max_price || *end || !(v >= 0) || v > 1e9)
            return REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "x-tollgate-max-price-usd",
                                    "x-tollgate-max-price-usd must be a number of USD >= 0.");
        r->rreq.max_price_usd = v;
    }
    r->skip = calloc(r->route->n_targets, sizeof *r->skip);
    if (!r->skip)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    r->deadline = r->t_start + (double)rc_cfg->deadline_ms / 1000.0;
    return request_proceed(r);
}

/* The checks that may wait on Redis, in order, each resumed where it left off: the cache,
 * then the key's limits; then request_admitted() (budget, routing). */
static enum MHD_Result request_proceed(struct request *r)
{
    if (!r->cache_checked) {
        r->cache_checked = true;
        if (request_cache_lookup(r))
            return r->state == REQUEST_STREAM ? request_queue_stream(r) : request_queue_reply(r);
    }
    if (r->cache_pending) {
        return request_park(r); /* request_cache_answer wakes us */
    }
    if (!r->coalesce_checked) {
        r->coalesce_checked = true;
        if (request_coalesce(r))
            return request_park(r); /* request_flight_land or the wait's end wakes us */
    }
    if ((r->key_rpm || r->key_tpm) && r->w->ratelimit && !r->limited) {
        r->limited = true;
        r->limit_tokens = (long)(r->rreq.prompt_tokens + r->rreq.output_tokens);
        r->limit_pending = true;
        r->limit_result = ratelimit_admit(r->w->ratelimit, r->key_name, r->key_rpm, r->key_tpm,
                                          r->limit_tokens, request_limit_done, r, &r->limit_wait,
                                          &r->limit_view);
        if (r->limit_result != RATELIMIT_PENDING)
            r->limit_pending = false;
    }
    if (r->limit_pending) {
        return request_park(r); /* request_limit_done wakes us */
    }
    return request_admitted(r);
}

static void request_budget_done(void *ctx, enum budget_result result, bool in_redis)
{
    struct request *r = ctx;
    r->budget_wait = NULL;
    r->budget_pending = false;
    r->budget_result = result;
    r->budget_in_redis = result == BUDGET_OK && in_redis;
    request_wake(r);
}

/* The dearest estimate among the backends that may serve it: reserving that much means a
 * failover to a pricier node cannot overspend either. */
static double request_max_estimate(const struct request *r)
{
    double max = 0;
    for (size_t i = 0; i < r->route->n_targets; i++) {
        double c = router_estimate(&r->route->targets[i], &r->rreq);
        if (c > max)
            max = c;
    }
    return max;
}

/* Past every check: pick a backend and start. */
static enum MHD_Result request_admitted(struct request *r)
{
    if (r->limited && r->limit_result == RATELIMIT_DENY) {
        r->retry_after_s = (r->limit_view.reset_ms + 999) / 1000;
        bool tokens = r->limit_view.limit_tokens && !r->limit_view.remaining_tokens;
        return REQUEST_FAIL_NOW(r, TG_ERR_RATE_LIMITED, NULL,
                                "Rate limit reached for key '%s': %s per minute. Retry in %ld s.",
                                r->key_name, tokens ? "tokens" : "requests", r->retry_after_s);
    }
    if (r->key_budget > 0 && r->w->budget && !r->budget_asked) {
        r->budget_asked = true;
        r->budget_reserved = request_max_estimate(r);
        r->budget_pending = true;
        r->budget_result = budget_reserve(r->w->budget, r->key_name, r->key_budget,
                                          r->budget_reserved, request_budget_done, r,
                                          &r->budget_wait);
        if (r->budget_result != BUDGET_PENDING) {
            r->budget_pending = false;
        } else if (r->budget_pending) {
            return request_park(r); /* request_budget_done wakes us */
        }
    }
    if (r->budget_asked && r->budget_result == BUDGET_EXHAUSTED) {
        r->no_retry = true;
        return REQUEST_FAIL_NOW(r, TG_ERR_INSUFFICIENT_QUOTA, NULL,
                                "The budget of key '%s' is spent: you exceeded your current "
                                "quota.",
                                r->key_name);
    }
    if (r->w->forced)
        return REQUEST_FAIL_NOW(r, TG_ERR_SHUTTING_DOWN, NULL,
                                "The gateway is shutting down; retry the request.");
    struct router_outcome why;
    int rc = request_start_attempt(r, &why);
    if (rc == 1) {
        request_no_target(r, &why);
        return request_queue_reply(r);
    }
    if (rc)
        return REQUEST_FAIL_NOW(r, rc, NULL, "cannot start the upstream transfer");
    request_suspend(r);
    return MHD_YES;
}

/* This attempt failed before the caller got a byte: note it against the backend when the
 * backend is to blame, and move on to the next cheapest one while retries and the deadline
 * allow. The error set here is what the caller sees if nothing else works. */
static void request_attempt_failed(struct request *r, enum tg_error err, bool blame,
                                   bool unreachable, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static void request_attempt_failed(struct request *r, enum tg_error err, bool blame,
                                   bool unreachable, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->last_msg, sizeof r->last_msg, fmt, ap);
    va_end(ap);
    r->last_err = err;
    struct backend_state *s = r->target->backend->state;
    if (blame)
        backend_record_failure(s, &r->cfg->health, unreachable, clock_mono_ms());
    r->skip[r->target - r->route->targets] = true;
    if (r->cfg->metrics_enabled)
        METRICS_ADD(r->w->metrics->upstream_errors, 1);
    if (log_enabled(LOG_WARN)) {
        char esc[500];
        log_event(LOG_WARN, "upstream_failed",
                  "\"request_id\":\"%s\",\"backend\":\"%s\",\"attempt\":%u,\"message\":\"%s\"",
                  r->id, r->target->backend->name, r->attempts,
                  log_escape(esc, sizeof esc, r->last_msg));
    }
    if (r->attempts <= r->cfg->routing.retries && clock_mono() < r->deadline &&
        !worker_draining(r->w)) {
        struct router_outcome why;
        if (request_start_attempt(r, &why) == 0) {
            if (r->cfg->metrics_enabled)
                METRICS_ADD(r->w->metrics->retries, 1);
            return; /* still suspended; the next backend is working */
        }
    }
    request_set_error(r, r->last_err, NULL, "%s", r->last_msg);
    if (r->last_err == TG_ERR_BACKEND_RATE_LIMITED)
        r->retry_after_s = r->rate_limit_wait_s;
    r->no_retry = true; /* the gateway already retried: the SDK should not multiply it */
    request_resume(r);
}

/* ---- usage and cost ------------------------------------------------------------------------ */

/* What a scan found: the node's usage (if any), the text delivered, the choices. */
static void request_note_scan(struct request *r, const struct answer_scan *sc)
{
    r->delivered += sc->delivered;
    unsigned n = sc->n_choices > sc->choices_len ? sc->n_choices : (unsigned)sc->choices_len;
    if (n > r->n_choices && n <= 128)
        r->n_choices = n;
    if (sc->has_usage) {
        r->usage_reported = true;
        r->rep_prompt = (long)sc->prompt_tokens;
        r->rep_completion = (long)sc->completion_tokens;
    }
}

/* Settles what the request is billed for. Nodes are untrusted: completion tokens are capped
 * by max_tokens and by what was actually delivered (a token is at least one byte of text);
 * prompt tokens by the bytes the caller sent (unless it sent images or audio); and when a
 * node reports nothing, both are estimated. Cost uses the serving node's current price. */
static void request_settle_usage(struct request *r)
{
    if (r->usage_done)
        return;
    r->usage_done = true;
    long prompt = r->usage_reported ? r->rep_prompt : (long)r->oreq.prompt_tokens_est;
    long completion =
        r->usage_reported ? r->rep_completion : (long)((r->delivered + 3) / 4);
    long prompt_cap = (long)(r->oreq.prompt_bytes + 8 * r->oreq.n_items + 64);
    long completion_cap = (long)(r->delivered + (r->n_choices ? r->n_choices : 1));
    if (r->oreq.max_tokens >= 0 && r->oreq.max_tokens * r->oreq.n_choices < completion_cap)
        completion_cap = (long)(r->oreq.max_tokens * r->oreq.n_choices);
    if (r->ep->route == OPENAI_EMBEDDINGS)
        completion_cap = 0;
    bool clamped = false;
    if (prompt < 0 || (!r->oreq.has_media && prompt > prompt_cap)) {
        prompt = prompt < 0 ? 0 : prompt_cap;
        clamped = true;
    }
    if (completion < 0 || completion > completion_cap) {
        completion = completion < 0 ? 0 : completion_cap;
        clamped = true;
    }
    r->usage_clamped = clamped && r->usage_reported;
    r->prompt_tokens = prompt;
    r->completion_tokens = completion;
    const struct config_model *m = r->target->model;
    r->cost_usd = ((double)prompt * backend_input_price(m) +
                   (double)completion * backend_output_price(m)) /
                  1e6;
    if (!r->cfg->metrics_enabled)
        return; /* what routing saved only feeds the metrics */
    /* What routing saved: the same usage at the priciest backend that could have served it. */
    double dearest = r->cost_usd;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < r->route->n_targets; i++) {
        const struct config_target *t = &r->route->targets[i];
        if (t == r->target || !backend_available(t->backend->state, now, NULL))
            continue;
        double c = ((double)prompt * backend_input_price(t->model) +
                    (double)completion * backend_output_price(t->model)) /
                   1e6;
        if (c > dearest)
            dearest = c;
    }
    r->routing_saved_usd = dearest - r->cost_usd;
}

/* Writes the settled numbers into a usage object (and the cost, for stream chunks). */
static void request_write_usage(struct request *r, json_t *usage, bool with_cost)
{
    json_object_set_new(usage, "prompt_tokens", json_integer(r->prompt_tokens));
    json_object_set_new(usage, "completion_tokens", json_integer(r->completion_tokens));
    json_object_set_new(usage, "total_tokens",
                        json_integer(r->prompt_tokens + r->completion_tokens));
    if (with_cost)
        json_object_set_new(usage, "cost", json_real(r->cost_usd));
}

/* ---- upstream callbacks --------------------------------------------------------------------- */

static int request_emit_event(struct request *r, json_t *chunk)
{
    char *text = json_dumps(chunk, JSON_COMPACT);
    if (!text)
        return TG_ERR_NOMEM;
    int rc = buf_printf(&r->out, "data: %s\n\n", text);
    free(text);
    return rc ? TG_ERR_NOMEM : 0;
}

/* The usage chunk for a caller who asked for one when the node sent none. */
static int request_emit_estimated_usage(struct request *r)
{
    request_settle_usage(r);
    json_t *usage = json_object();
    request_write_usage(r, usage, true);
    json_t *chunk = json_pack("{s:s, s:s, s:[], s:o}", "id", r->id, "object",
                              r->ep->route == OPENAI_CHAT ? "chat.completion.chunk"
                                                          : "text_completion",
                              "choices", "usage", usage);
    if (!chunk)
        return TG_ERR_NOMEM;
    int rc = request_emit_event(r, chunk);
    json_decref(chunk);
    return rc;
}

/* [DONE]: a streamed miss captured whole is stored like a non-streamed one. */
static void request_capture_done(struct request *r)
{
    json_t *usage = json_object();
    if (usage)
        request_write_usage(r, usage, false);
    size_t len = 0;
    char *text = cache_capture_finish(&r->capture, usage, &len);
    cache_capture_free(&r->capture);
    r->capturing = false;
    if (text)
        request_cache_store(r, text, len);
    else
        request_flight_land(r, NULL, 0, 0);
    free(text);
}

static int request_on_event(void *ctx, const struct sse_event *ev)
{
    struct request *r = ctx;
    if (r->saw_done)
        return 0; /* nothing after [DONE] is relayed */
    if (!ev->has_data)
        return buf_append(&r->out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    if (ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6)) {
        r->saw_done = true;
        if (r->caller_usage && !r->usage_done) {
            int rc = request_emit_estimated_usage(r);
            if (rc)
                return rc;
        }
        request_settle_usage(r);
        if (r->capturing)
            request_capture_done(r);
        return buf_append(&r->out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    /* Each event's scan in an arena of its own: its block goes back to the thread's cache
     * at once, so a long stream neither grows the request's arena nor calls malloc. */
    struct answer_scan sc;
    struct arena event_arena = {0};
    if (answer_scan_init(&sc, &event_arena)) {
        arena_release(&event_arena);
        return TG_ERR_NOMEM;
    }
    bool ok = answer_scan_feed(&sc, ev->data, ev->data_len) == 0 && answer_scan_finish(&sc) == 0 &&
              sc.object;
    answer_scan_free(&sc);
    arena_release(&event_arena);
    if (!ok) {
        snprintf(r->fail_detail, sizeof r->fail_detail, "a stream event that is not JSON");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    if (sc.has_error) {
        /* A node reporting its own failure mid-stream: a failure, not content. */
        snprintf(r->fail_detail, sizeof r->fail_detail, "the node sent an error event");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    request_note_scan(r, &sc);
    if (r->capturing)
        cache_capture_event(&r->capture, ev->data, ev->data_len);
    if (!sc.has_usage)
        return buf_append(&r->out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    /* A chunk with usage: the usage chunk (no choices) comes after the last content. */
    bool usage_only = sc.choices_len == 0;
    if (usage_only)
        request_settle_usage(r);
    if (r->caller_usage && !usage_only)
        return buf_append(&r->out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    if (!r->caller_usage && usage_only)
        return 0; /* asked for by the gateway, not by the caller: dropped */
    /* Rewritten: the settled numbers and cost for the caller, or the usage removed. */
    json_t *chunk = json_loadb(ev->data, ev->data_len, 0, NULL);
    if (!chunk)
        return TG_ERR_NOMEM;
    if (usage_only)
        request_write_usage(r, json_object_get(chunk, "usage"), true);
    else
        json_object_del(chunk, "usage");
    int rc = request_emit_event(r, chunk);
    json_decref(chunk);
    return rc;
}

static void request_start_body(struct request *r)
{
    r->got_headers = true;
    r->ttfb = clock_mono() - r->t_attempt;
    r->up_status = upstream_status(r->xfer);
    const char *ct = upstream_content_type(r->xfer);
    snprintf(r->reply_ctype, sizeof r->reply_ctype, "%s", ct ? ct : "application/json");
    r->stream_mode = r->oreq.stream && r->up_status == 200 && ct &&
                     !strncasecmp(ct, "text/event-stream", 17);
    if (r->stream_mode) {
        sse_init(&r->sse, REQUEST_STREAM_MAX_EVENT);
        if (r->cache_result == REQUEST_CACHE_MISS && r->cache_store) {
            cache_capture_init(&r->capture, r->ep->route == OPENAI_CHAT,
                               r->cfg->cache.max_entry_bytes);
            r->capturing = true;
        }
        buf_init(&r->out, REQUEST_STREAM_HIGH_WATER + 2 * REQUEST_STREAM_MAX_EVENT + 4096);
        r->out_off = 0;
    } else {
        buf_init(&r->resp, r->up_status / 100 == 2 ? r->cfg->upstream.max_response_bytes
                                                   : REQUEST_ERROR_BODY_MAX);
        r->scanning = r->up_status / 100 == 2 && answer_scan_init(&r->scan, &r->arena) == 0;
    }
    if (r->up_status == 429) {
        char ra[32];
        long secs = 0;
        if (upstream_header(r->xfer, "retry-after", ra, sizeof ra) == 0)
            secs = strtol(ra, NULL, 10);
        r->up_retry_after_s = secs > 0 ? secs : 1;
        backend_record_rate_limited(r->target->backend->state, secs * 1000, clock_mono_ms());
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
        if (!rc && r->scanning && answer_scan_feed(&r->scan, data, len)) {
            snprintf(r->fail_detail, sizeof r->fail_detail, "an answer that is not JSON");
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
        if (!r->fail_detail[0])
            snprintf(r->fail_detail, sizeof r->fail_detail, "%s",
                     rc == SSE_ETOOBIG ? "stream event larger than 1 MiB" : "out of memory");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    if (r->out.len > r->out_off) {
        if (r->state == REQUEST_UPSTREAM) {
            r->state = REQUEST_STREAM; /* the first event: from here on, no failover */
            double now = clock_mono();
            r->up_wait += now - r->t_attempt;
            if (r->cfg->metrics_enabled)
                metrics_observe_ttft(r->w->metrics, r->ep->metric, r->route->metric_model,
                                     now - r->t_start, 1);
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
        /* The error event must get out even when the buffer is at its cap. */
        r->out.max = r->out.len + strlen(body) + 16;
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
        snprintf(out, n, ": %.200s", m);
    json_decref(doc);
    return out;
}

/* A whole 2xx answer, scanned as it arrived: settle usage and reply, rewriting the usage
 * (the only time the answer is parsed into a tree) when the node's numbers were clamped. */
static void request_whole_answer(struct request *r)
{
    request_note_scan(r, &r->scan);
    request_settle_usage(r);
    char *text = NULL;
    size_t len = 0;
    if (r->usage_clamped) {
        json_t *doc = json_loadb(r->resp.data, r->resp.len, 0, NULL);
        request_write_usage(r, json_object_get(doc, "usage"), false);
        text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
        len = text ? strlen(text) : 0;
        json_decref(doc);
    } else {
        text = buf_steal(&r->resp, &len);
    }
    if (!text) {
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        return;
    }
    /* Only complete answers are kept: every choice finished, nothing cut, no error. */
    bool complete = r->ep->route == OPENAI_EMBEDDINGS
                        ? true
                        : r->scan.choices_len > 0 && r->scan.finished == r->scan.choices_len;
    if (r->cache_result == REQUEST_CACHE_MISS && r->cache_store && complete && r->up_status == 200)
        request_cache_store(r, text, len);
    else
        request_flight_land(r, NULL, 0, 0);
    request_set_reply(r, (unsigned)r->up_status, text, len, "application/json");
}

/* One upstream attempt ended: counted by backend, model and outcome. */
static void request_note_attempt(struct request *r, enum metrics_outcome outcome, double now)
{
    if (!r->cfg->metrics_enabled)
        return;
    const struct config_target *t = r->target;
    metrics_observe_attempt(r->w->metrics, t->backend->state->metric_backend,
                            t->model->price ? t->model->price->metric_pair : 0, outcome,
                            now - r->t_attempt);
}

static void request_on_done(void *ctx, int result, long status, const char *detail)
{
    struct request *r = ctx;
    if (!r->got_headers)
        r->up_status = status; /* an answer with no body */
    const char *backend = r->target->backend->name;
    struct backend_state *bs = r->target->backend->state;
    r->xfer = NULL;
    backend_release(r);
    if (result && r->fail_detail[0])
        detail = r->fail_detail;
    double now = clock_mono();
    if (r->state == REQUEST_UPSTREAM)
        r->up_wait += now - r->t_attempt; /* (a stream's first event counted its own) */

    if (r->stream_mode && r->state != REQUEST_UPSTREAM) {
        /* The caller has bytes already: no failover, an honest end. */
        if (!result && !r->saw_done)
            request_stream_error(r, "backend %s ended the stream without [DONE]", backend);
        else if (result)
            request_stream_error(r, "backend %s broke the stream: %s", backend, detail);
        bool ok = !result && r->saw_done;
        if (!ok)
            backend_record_failure(bs, &r->cfg->health, false, clock_mono_ms());
        else
            backend_record_success(bs, r->ttfb, now - r->t_attempt);
        request_note_attempt(r, ok ? METRICS_OUTCOME_SUCCESS : METRICS_OUTCOME_BROKEN, now);
        r->stream_ended = true;
        if (r->reader_waiting)
            request_resume(r);
        return;
    }

    if (result == TG_ERR_BACKEND_UNREACHABLE) {
        request_note_attempt(r, METRICS_OUTCOME_UNREACHABLE, now);
        request_attempt_failed(r, result, true, true, "Backend %s is unreachable: %s", backend,
                               detail);
    } else if (result == TG_ERR_BACKEND_TIMEOUT) {
        /* Connected but silent: out for the cooldown, whatever the probes say. */
        request_note_attempt(r, METRICS_OUTCOME_TIMEOUT, now);
        request_attempt_failed(r, result, true, false, "Backend %s timed out: %s", backend,
                               detail);
    } else if (result) {
        /* A connection that died before any byte of an answer (the node crashed or was
         * killed) is a reachability failure: its next good probe readmits it. */
        request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, status == 0,
                               "Backend %s sent a broken answer: %s", backend, detail);
    } else if (r->stream_mode) {
        request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false,
                               "Backend %s ended the stream before sending any event", backend);
    } else if (r->up_status == 429) {
        char m[300];
        request_note_attempt(r, METRICS_OUTCOME_RATE_LIMITED, now);
        if (!r->rate_limit_wait_s || r->up_retry_after_s < r->rate_limit_wait_s)
            r->rate_limit_wait_s = r->up_retry_after_s;
        request_attempt_failed(r, TG_ERR_BACKEND_RATE_LIMITED, false, false,
                               "Backend %s is rate limiting%s", backend,
                               request_upstream_message(r, m, sizeof m));
    } else if (r->up_status / 100 == 2) {
        bool json_ok = r->scanning && answer_scan_finish(&r->scan) == 0 && r->scan.object;
        if (!json_ok || r->scan.has_error) {
            request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
            request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false,
                                   json_ok ? "Backend %s answered 2xx with an error object"
                                           : "Backend %s sent an answer that is not a JSON object",
                                   backend);
        } else if (r->oreq.stream) {
            request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
            request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false,
                                   "Backend %s answered a streaming request without a stream",
                                   backend);
        } else {
            backend_record_success(bs, r->ttfb, now - r->t_attempt);
            request_note_attempt(r, METRICS_OUTCOME_SUCCESS, now);
            if (r->cfg->metrics_enabled)
                metrics_observe_ttft(r->w->metrics, r->ep->metric, r->route->metric_model,
                                     now - r->t_start, 0);
            request_whole_answer(r);
            request_resume(r);
        }
    } else if (r->up_status >= 500 || r->up_status < 400) {
        char m[300];
        request_note_attempt(r, METRICS_OUTCOME_SERVER_ERROR, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false,
                               "Backend %s answered HTTP %ld%s", backend, r->up_status,
                               request_upstream_message(r, m, sizeof m));
    } else {
        /* A client error the backend found in the request: the caller sees it as is, and it
         * never counts against the backend. */
        request_note_attempt(r, METRICS_OUTCOME_CLIENT_ERROR, now);
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
        request_resume(r);
    }
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
    if (!r->t_queued)
        r->t_queued = clock_mono();
    enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->state = REQUEST_SENT;
    if (r->cfg->metrics_enabled)
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
        r->t_start = clock_mono();
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

/* Everything a finished request adds to the worker's metrics shard. */
static void request_observe(const struct request *r, double seconds)
{
    struct metrics_shard *m = r->w->metrics;
    enum metrics_route route = r->ep ? r->ep->metric : METRICS_ROUTE_OTHER;
    unsigned model = r->route ? r->route->metric_model : 0;
    metrics_observe_request(m, route, model, r->status, seconds);
    if (r->t_queued)
        metrics_observe_overhead(m, r->t_queued - r->t_start - r->up_wait);
    if (!r->route)
        return; /* refused before a model was known */
    static const enum metrics_cache results[] = {
        [REQUEST_CACHE_BYPASS] = METRICS_CACHE_BYPASS,
        [REQUEST_CACHE_MISS] = METRICS_CACHE_MISS,
        [REQUEST_CACHE_HIT] = METRICS_CACHE_HIT,
    };
    METRICS_ADD(m->cache[results[r->cache_result]], 1);
    if (r->cache_result == REQUEST_CACHE_HIT)
        METRICS_ADD(m->cache_savings, r->saved_usd);
    else if (r->usage_done && r->target) {
        const struct config_model *cm = r->target->model;
        metrics_observe_usage(m, route, model, cm->price ? cm->price->metric_pair : 0,
                              r->metric_key, r->prompt_tokens, r->completion_tokens, r->cost_usd);
        if (r->usage_clamped)
            metrics_observe_clamped(m, r->target->backend->state->metric_backend);
        if (r->routing_saved_usd > 0)
            METRICS_ADD(m->routing_savings, r->routing_saved_usd);
    }
}

static void request_log(const struct request *r, double seconds)
{
    if (!log_enabled(LOG_INFO))
        return;
    static const char *const cache[] = {[REQUEST_CACHE_BYPASS] = "bypass",
                                        [REQUEST_CACHE_MISS] = "miss",
                                        [REQUEST_CACHE_HIT] = "hit"};
    char model[160], key[160], backend[160];
    bool billed = r->usage_done && r->route;
    log_event(LOG_INFO, "request",
              "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"%s\",\"key\":\"%s\","
              "\"model\":\"%s\",\"backend\":\"%s\",\"status\":%u,\"stream\":%s,"
              "\"duration_ms\":%.3f,\"attempts\":%u,\"prompt_tokens\":%ld,"
              "\"completion_tokens\":%ld,\"cost_usd\":%.10f,\"cache\":\"%s\"",
              r->id /* request_id_ok(): nothing to escape */, r->method, r->ep ? r->ep->path : "-",
              log_escape(key, sizeof key, r->key_name ? r->key_name : ""),
              log_escape(model, sizeof model, r->model ? r->model : ""),
              log_escape(backend, sizeof backend,
                         r->target && r->up_status ? r->target->backend->name : ""),
              r->status, r->oreq.stream ? "true" : "false", seconds * 1000, r->attempts,
              billed ? r->prompt_tokens : 0, billed ? r->completion_tokens : 0,
              billed ? r->cost_usd : 0, r->route ? cache[r->cache_result] : "bypass");
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
    keyauth_cancel(r->lookup);
    request_unfollow(r);
    request_flight_land(r, NULL, 0, 0); /* followers of an unfinished leader go on alone */
    if (r->capturing)
        cache_capture_free(&r->capture);
    if (r->cache_ask)
        r->cache_ask->r = NULL; /* the answer, when it comes, finds nobody */
    ratelimit_cancel(r->limit_wait);
    budget_cancel(r->budget_wait);
    if (r->budget_asked && r->budget_result == BUDGET_OK && r->w->budget)
        budget_settle(r->w->budget, r->key_name, r->budget_in_redis ? r->budget_reserved : 0,
                      r->usage_done ? r->cost_usd : 0);
    if (r->limited && r->limit_result == RATELIMIT_ADMIT && r->w->ratelimit)
        ratelimit_settle(r->w->ratelimit, r->key_name, r->limit_tokens,
                         r->usage_done ? r->prompt_tokens + r->completion_tokens : 0);
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
    double seconds = clock_mono() - r->t_start;
    if (r->cfg->metrics_enabled)
        request_observe(r, seconds);
    METRICS_ADD(w->metrics->inflight, -1);
    request_log(r, seconds);
    if (r->w->ledger && r->ep && r->ep->upstream_path) {
        /* Exactly one usage record per inference request, answered or not. */
        struct ledger_entry e = {
            .request_id = r->id,
            .key = r->key_name ? r->key_name : "",
            .model = r->model ? r->model : "",
            .backend = r->target && r->up_status ? r->target->backend->name : "",
            .cache = r->cache_result == REQUEST_CACHE_HIT    ? "hit"
                     : r->cache_result == REQUEST_CACHE_MISS ? "miss"
                                                             : "bypass",
            .status = r->status,
            .prompt_tokens = r->usage_done ? r->prompt_tokens : 0,
            .completion_tokens = r->usage_done ? r->completion_tokens : 0,
            .cost_usd = r->usage_done ? r->cost_usd : 0,
            .saved_usd = r->cache_result == REQUEST_CACHE_HIT ? r->saved_usd : 0,
            .latency_ms = seconds * 1000,
        };
        ledger_record(r->w->ledger, &e);
    }

    if (r->prev)
        r->prev->next = r->next;
    else
        w->active = r->next;
    if (r->next)
        r->next->prev = r->prev;
    w->n_active--;

    if (r->scanning)
        answer_scan_free(&r->scan);
    buf_free(&r->body);
    buf_free(&r->resp);
    buf_free(&r->out);
    if (r->stream_mode)
        sse_free(&r->sse);
    json_decref(r->json);
    arena_release(&r->arena); /* after the scan and the body's tree, which live in it */
    free(r->upstream_body);
    free(r->reply_body);
    free(r->skip);
    free(r->key_models);
    free(r->local_url);
    config_unref(r->cfg);
    free(r);
    worker_request_done(w);
}

void request_abort_all(struct worker *w)
{
    for (struct request *r = w->active; r; r = r->next) {
        if (r->follows) {
            /* Waiting for an identical request's answer: it will not come in time. */
            request_unfollow(r);
            request_set_error(r, TG_ERR_SHUTTING_DOWN, NULL,
                              "The gateway is shutting down; retry the request.");
            request_wake(r);
            continue;
        }
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

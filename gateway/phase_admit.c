/* Admission: the route a request asks for, who the caller is (static keys, or keys held in
 * Redis, looked up while the body is read), the local endpoints, the body's validation and
 * its route, and the key's rate limits and budget. Owns r->adm. */
#include "base/log.h"
#include "gateway/pipeline.h"
#include "gateway/upload.h"
#include "tenancy/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
            if (keycache_allows(r->adm.key_models, cfg->routes[i].model))
                json_array_append_new(data, model_object(r, cfg->routes[i].model));
        return request_reply_json(r, 200, json_pack("{s:s, s:o}", "object", "list", "data", data));
    }
    case OPENAI_MODEL: {
        const char *id = url + strlen(r->ep->path);
        const struct config_route *route = config_find_route(cfg, id);
        if (!route || !keycache_allows(r->adm.key_models, route->model)) {
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

/* retry-after of a key that cannot be checked: about the Redis client's first breaker
 * cool-off, after which it probes again. */
#define REQUEST_KEY_RETRY_AFTER_S 1

static void request_take_key(struct request *r, const struct keycache_entry *e)
{
    r->adm.key_rpm = e->rpm > 0 ? e->rpm : 0;
    r->adm.key_tpm = e->tpm > 0 ? e->tpm : 0;
    r->adm.key_budget = e->budget_usd > 0 ? e->budget_usd : 0;
    snprintf(r->adm.key_name_buf, sizeof r->adm.key_name_buf, "%s", e->name);
    r->adm.key_name = r->adm.key_name_buf;
    r->adm.metric_key = e->metric_key;
    free(r->adm.key_models);
    r->adm.key_models = NULL;
    if (e->models) {
        size_t n = 0;
        while (e->models[n])
            n += strlen(e->models + n) + 1;
        r->adm.key_models = malloc(n + 1);
        if (r->adm.key_models)
            memcpy(r->adm.key_models, e->models, n + 1);
        else
            r->adm.key_result = KEYAUTH_UNAVAILABLE; /* never widen access on OOM */
    }
    r->adm.authenticated = r->adm.key_result == KEYAUTH_OK;
}

static void request_key_done(void *ctx, enum keyauth_result result, const struct keycache_entry *e)
{
    struct request *r = ctx;
    r->adm.lookup = NULL;
    r->adm.key_pending = false;
    r->adm.key_result = result;
    if (result == KEYAUTH_OK)
        request_take_key(r, e);
    request_wake(r);
}

/* The error for a key that did not resolve, or 0. */
static enum MHD_Result request_key_error(struct request *r)
{
    switch (r->adm.key_result) {
    case KEYAUTH_EXPIRED:
        return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "The API key provided has expired.");
    case KEYAUTH_UNAVAILABLE:
        /* Not a 401: the key may be good, and an SDK never retries a 401. */
        r->reply.retry_after_s = REQUEST_KEY_RETRY_AFTER_S;
        return REQUEST_FAIL_NOW(r, TG_ERR_KEY_UNAVAILABLE, NULL,
                                "The API key could not be checked: the key store is "
                                "unavailable. Retry shortly.");
    default:
        return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "Incorrect API key provided.");
    }
}

/* ---- the first call: route, authenticate, size check ------------------------------------- */

enum MHD_Result request_begin(struct request *r, const char *url, const char *method)
{
    snprintf(r->method, sizeof r->method, "%s", method);
    request_set_id(r);
    int rc = openai_match(method, url, &r->ep);
    if (rc == TG_ERR_METHOD) {
        r->reply.allow = r->ep->method;
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
        r->adm.key_name = who.key_name;
        r->adm.metric_key = who.metric_key;
        if (a == AUTH_INVALID) {
            if (!r->w->keycache)
                return REQUEST_FAIL_NOW(r, TG_ERR_AUTH, NULL, "Incorrect API key provided.");
            const struct keycache_entry *e = NULL;
            r->adm.key_result = keyauth_resolve(r->w->keycache, r->w->redis, who.digest,
                                                request_key_done, r, &r->adm.lookup, &e);
            if (r->adm.key_result == KEYAUTH_OK)
                request_take_key(r, e);
            else if (r->adm.key_result == KEYAUTH_PENDING)
                r->adm.key_pending = true;
            else
                return request_key_error(r);
        } else {
            r->adm.authenticated = true; /* a static key, or an open gateway */
        }
    }
    if (!r->ep->upstream_path && !r->adm.key_pending)
        return request_local(r, url);
    if (!r->ep->upstream_path) {
        /* Answered once the key is known (see request_admit_body). */
        r->adm.local_url = strdup(url);
        if (!r->adm.local_url)
            return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
        buf_init(&r->body, 0);
        r->state = REQUEST_BODY;
        return MHD_YES;
    }

    if (r->ep->route == OPENAI_RESPONSE && request_responses_begin(r, url))
        return request_reply_early(r);
    if (r->ep->multipart)
        return request_upload_begin(r); /* upload.c: spooled up to max_upload_bytes */
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

/* ---- the body: validation and the route --------------------------------------------------- */

/* *res = what MHD gets, and the request is answered (or waiting). */
#define ANSWERED(expr) (*res = (expr), true)

bool request_admit_body(struct request *r, enum MHD_Result *res)
{
    if (r->adm.key_result != KEYAUTH_OK && r->adm.key_result != KEYAUTH_PENDING)
        return ANSWERED(request_key_error(r));
    if (r->adm.local_url)
        return ANSWERED(request_local(r, r->adm.local_url));
    if (worker_refuses(r->w, r->t_start)) { /* came after SIGTERM: the caller goes elsewhere */
        r->reply.retry_after_s = 1;
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_SHUTTING_DOWN, NULL,
                                         "The gateway is shutting down; retry the request."));
    }
    if (r->ep->route == OPENAI_RESPONSE)
        return request_responses_admit(r, res); /* no body: the node that holds the id */
    char where[256], msg[400];
    arena_enter(&r->arena);
    int rc = openai_parse_body(r->body.data, r->body.len, r->cfg->max_body_bytes, &r->json, where,
                               sizeof where, msg, sizeof msg);
    arena_leave();
    if (rc)
        return ANSWERED(REQUEST_FAIL_NOW(r, rc, where[0] ? where : NULL, "%s", msg));
    const char *param;
    rc = r->ep->validate(r->ep->route, r->json, &r->oreq, &param, msg, sizeof msg);
    if (rc)
        return ANSWERED(REQUEST_FAIL_NOW(r, rc, param, "%s", msg));
    r->relay.caller_usage = r->oreq.include_usage;
    if (request_chain_admit(r, res)) /* chain.c: a `models` list */
        return true;
    if (!r->route)
        r->route = config_find_route(r->cfg, r->oreq.model);
    if (!r->route) {
        char esc[200];
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_FOUND, "model",
                                         "The model '%s' does not exist or no backend serves it.",
                                         log_escape(esc, sizeof esc, r->oreq.model)));
    }
    r->model = r->route->model;
    if (!keycache_allows(r->adm.key_models, r->model))
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_ALLOWED, "model",
                                         "This API key may not use the model '%s'.", r->model));

    const struct config_routing *rc_cfg = &r->cfg->routing;
    /* Estimates (routing, the rate limit's tokens, the budget's reservation) take max_tokens
     * × n bounded, so none of them wraps (a reservation must never pass on a wrapped one). */
    r->up.rreq = (struct router_request){
        .prompt_tokens = r->oreq.prompt_tokens_est,
        .output_tokens =
            openai_output_estimate(r->ep->route, &r->oreq, rc_cfg->default_output_tokens),
        .strategy = rc_cfg->strategy,
        .max_price_usd = -1,
        .tie_tolerance = rc_cfg->tie_tolerance,
        .images = r->ep->meter == OPENAI_METER_IMAGES ? r->oreq.units : 0,
        .characters = r->ep->meter == OPENAI_METER_CHARACTERS ? r->oreq.units : 0,
        .audio_seconds = r->ep->meter == OPENAI_METER_AUDIO_SECONDS ? (double)r->oreq.units : 0,
    };
    const char *strategy =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-tollgate-route");
    if (strategy && config_parse_strategy(strategy, &r->up.rreq.strategy))
        return ANSWERED(
            REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "x-tollgate-route",
                             "x-tollgate-route must be cheapest, price-weighted or latency."));
    const char *max_price =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-tollgate-max-price-usd");
    if (max_price) {
        char *end;
        double v = strtod(max_price, &end);
        if (end == max_price || *end || !(v >= 0) || v > 1e9)
            return ANSWERED(
                REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "x-tollgate-max-price-usd",
                                 "x-tollgate-max-price-usd must be a number of USD >= 0."));
        r->up.rreq.max_price_usd = v;
    }
    if (request_caps_admit(r, res)) /* chain.c: capabilities the request uses */
        return true;
    r->up.skip = calloc(r->route->n_targets, sizeof *r->up.skip);
    if (!r->up.skip)
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory"));
    r->up.deadline = r->t_start + (double)rc_cfg->deadline_ms / 1000.0;
    if (r->ep->route == OPENAI_RESPONSES)
        return request_responses_admit(r, res); /* previous_response_id: its node only */
    return false;
}

/* ---- the key's rate limits ------------------------------------------------------------------ */

static void request_limit_done(void *ctx, enum ratelimit_result result,
                               const struct ratelimit_view *view)
{
    struct request *r = ctx;
    r->adm.limit_wait = NULL;
    r->adm.limit_result = result;
    r->adm.limit_view = *view;
    r->state = REQUEST_BUDGET;
    request_wake(r);
}

void request_admit_limit(struct request *r)
{
    r->state = REQUEST_BUDGET;
    if (!(r->adm.key_rpm || r->adm.key_tpm) || !r->w->ratelimit)
        return;
    r->adm.limited = true;
    r->adm.limit_tokens = (long)(r->up.rreq.prompt_tokens + r->up.rreq.output_tokens);
    r->state = REQUEST_LIMIT_WAIT;
    r->adm.limit_result = ratelimit_admit(r->w->ratelimit, r->adm.key_name, r->adm.key_rpm,
                                          r->adm.key_tpm, r->adm.limit_tokens, request_limit_done,
                                          r, &r->adm.limit_wait, &r->adm.limit_view);
    if (r->adm.limit_result != RATELIMIT_PENDING)
        r->state = REQUEST_BUDGET;
}

/* ---- the key's budget ------------------------------------------------------------------------ */

static void request_budget_done(void *ctx, enum budget_result result, bool in_redis)
{
    struct request *r = ctx;
    r->adm.budget_wait = NULL;
    r->adm.budget_result = result;
    r->adm.budget_in_redis = result == BUDGET_OK && in_redis;
    r->state = REQUEST_ROUTE;
    request_wake(r);
}

/* The dearest estimate among the backends that may serve it: reserving that much means a
 * failover to a pricier node cannot overspend either. */
static double request_max_estimate(const struct request *r)
{
    double max = 0;
    for (size_t i = 0; i < r->route->n_targets; i++) {
        double c = router_estimate(&r->route->targets[i], &r->up.rreq);
        if (c > max)
            max = c;
    }
    return max;
}

bool request_admit_budget(struct request *r, enum MHD_Result *res)
{
    if (r->adm.limited && r->adm.limit_result == RATELIMIT_DENY) {
        r->reply.retry_after_s = (r->adm.limit_view.reset_ms + 999) / 1000;
        bool tokens = r->adm.limit_view.limit_tokens && !r->adm.limit_view.remaining_tokens;
        return ANSWERED(REQUEST_FAIL_NOW(
            r, TG_ERR_RATE_LIMITED, NULL,
            "Rate limit reached for key '%s': %s per minute. Retry in %ld s.", r->adm.key_name,
            tokens ? "tokens" : "requests", r->reply.retry_after_s));
    }
    r->state = REQUEST_ROUTE;
    if (r->adm.key_budget <= 0 || !r->w->budget)
        return false;
    r->adm.budget_asked = true;
    r->adm.budget_reserved = request_max_estimate(r);
    r->state = REQUEST_BUDGET_WAIT;
    enum budget_result result =
        budget_reserve(r->w->budget, r->adm.key_name, r->adm.key_budget, r->adm.budget_reserved,
                       request_budget_done, r, &r->adm.budget_wait);
    if (r->state == REQUEST_BUDGET_WAIT)
        r->adm.budget_result = result; /* unless its callback already answered */
    if (result != BUDGET_PENDING)
        r->state = REQUEST_ROUTE;
    return false;
}

bool request_admit_refused(struct request *r, enum MHD_Result *res)
{
    if (r->adm.budget_asked && r->adm.budget_result == BUDGET_EXHAUSTED) {
        r->reply.no_retry = true;
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_INSUFFICIENT_QUOTA, NULL,
                                         "The budget of key '%s' is spent: you exceeded your "
                                         "current quota.",
                                         r->adm.key_name));
    }
    if (r->w->forced)
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_SHUTTING_DOWN, NULL,
                                         "The gateway is shutting down; retry the request."));
    return false;
}

/* What a request is billed for and what is recorded of it: usage from the node's numbers,
 * clamped by what was sent and delivered (nodes are untrusted), priced at the serving node's
 * price; then the key's limits and budget settled, the metrics, the log line and exactly one
 * ledger record. Owns r->usage. */
#include "base/clock.h"
#include "base/log.h"
#include "base/usd.h"
#include "gateway/observe.h"
#include "gateway/pipeline.h"
#include "routing/backend.h"
#include "tenancy/ledger.h"

/* ---- usage and cost ------------------------------------------------------------------------ */

/* What a scan found: the node's usage (if any), the text delivered, the choices. */
void request_note_scan(struct request *r, const struct answer_scan *sc)
{
    r->usage.delivered += sc->delivered;
    unsigned n = sc->n_choices > sc->choices_len ? sc->n_choices : (unsigned)sc->choices_len;
    if (n > r->usage.n_choices && n <= 128)
        r->usage.n_choices = n;
    if (sc->has_usage) {
        r->usage.reported = true;
        r->usage.rep_prompt = (long)sc->prompt_tokens;
        r->usage.rep_completion = (long)sc->completion_tokens;
        r->usage.rep_cached = (long)sc->cached_tokens;
    }
}

/* With images or audio a prompt's tokens are not bounded by its bytes; they are by the
 * largest context window there is (2M tokens), which also keeps every sum and product of
 * token counts far from overflowing. */
#define REQUEST_MEDIA_PROMPT_MAX (1L << 21)

/* The node's reported usage against the gateway's own estimate of what was sent and
 * delivered (routing/honesty.h): a node that reports far more than its peers is billed at the
 * peer-calibrated estimate, never more than it claimed. */
static void request_judge_usage(struct request *r, bool clamped, long *prompt, long *completion)
{
    if (r->oreq.has_media)
        return; /* no estimate to hold it to */
    bool embeddings = !r->ep->generates;
    struct honesty_sample hs = {
        .rep_prompt = r->usage.rep_prompt,
        .rep_completion = embeddings ? -1 : r->usage.rep_completion,
        .est_prompt = (long)r->oreq.prompt_tokens_est,
        .est_completion = embeddings ? 0 : (long)((r->usage.delivered + 3) / 4),
        .impossible = clamped,
    };
    struct honesty_verdict v;
    const struct config_target *t = r->up.target;
    /* Judged on its earlier answers: the answer that flags a node is billed as before. */
    bool was_flagged = t->model->price && honesty_flagged(&t->model->price->honesty);
    honesty_observe(request_served_route(r), t->model, &r->cfg->routing, &hs, &v);
    if (v.changed)
        log_event(v.flagged ? LOG_WARN : LOG_INFO,
                  v.flagged ? "backend_overreporting" : "backend_usage_normal",
                  "\"backend\":\"%s\",\"model\":\"%s\",\"inflation\":%.3f,\"request_id\":\"%s\"",
                  t->backend->name, t->model->name, v.inflation, r->id);
    if (!was_flagged || !v.flagged)
        return;
    long prompt0 = *prompt, completion0 = *completion;
    if (v.bill_prompt < *prompt)
        *prompt = v.bill_prompt;
    if (!embeddings && v.bill_completion < *completion)
        *completion = v.bill_completion;
    if (*prompt != prompt0 || *completion != completion0)
        r->usage.clamped = true; /* its claim is replaced, in the answer too */
}

/* Settles what the request is billed for. Nodes are untrusted: completion tokens are capped
 * by max_tokens × n and by what was actually delivered (a token is at least one byte of
 * text); prompt tokens by the bytes the caller sent (with images or audio, by
 * REQUEST_MEDIA_PROMPT_MAX); and when a node reports nothing, both are estimated. A node
 * flagged for over-reporting is billed at its peers' rate instead. Cost uses the serving
 * node's price in force when the attempt was sent. */
void request_settle_usage(struct request *r)
{
    if (r->usage.done)
        return;
    r->usage.done = true;
    if (r->ep->meter != OPENAI_METER_TOKENS) {
        request_media_settle(r); /* images, characters: by the unit */
        return;
    }
    long prompt = r->usage.reported ? r->usage.rep_prompt : (long)r->oreq.prompt_tokens_est;
    long completion =
        r->usage.reported ? r->usage.rep_completion : (long)((r->usage.delivered + 3) / 4);
    long prompt_cap = (long)(r->oreq.prompt_bytes + 8 * r->oreq.n_items + 64);
    if (r->oreq.has_media && prompt_cap < REQUEST_MEDIA_PROMPT_MAX)
        prompt_cap = REQUEST_MEDIA_PROMPT_MAX;
    long completion_cap =
        (long)(r->usage.delivered + (r->usage.n_choices ? r->usage.n_choices : 1));
    long long asked = openai_completion_cap(&r->oreq); /* saturated: never wraps */
    if (asked >= 0 && asked < completion_cap)
        completion_cap = (long)asked;
    if (!r->ep->generates)
        completion_cap = 0;
    bool clamped = false;
    if (prompt < 0 || prompt > prompt_cap) {
        prompt = prompt < 0 ? 0 : prompt_cap;
        clamped = true;
    }
    if (completion < 0 || completion > completion_cap) {
        completion = completion < 0 ? 0 : completion_cap;
        clamped = true;
    }
    r->usage.clamped = clamped && r->usage.reported;
    r->usage.estimated = !r->usage.reported;
    if (r->usage.reported)
        request_judge_usage(r, clamped, &prompt, &completion);
    r->usage.prompt_tokens = prompt;
    r->usage.completion_tokens = completion;
    /* At the price in force when the attempt was sent. */
    double price_in, price_out;
    backend_billed_price(r->up.target->model, &r->up.price, &price_in, &price_out);
    /* Cached prompt tokens (as the node reports them, never more than the prompt billed) at
     * the model's cached-input price (routing/capability.h). */
    long cached = r->usage.reported && r->usage.rep_cached > 0 ? r->usage.rep_cached : 0;
    r->usage.cached_tokens = cached < prompt ? cached : prompt;
    if (cached > prompt)
        r->usage.clamped = true; /* the caller sees the cached count it is billed for */
    double price_cached = capability_cached_price(r->up.target->model, price_in);
    r->usage.cost_usd =
        ((double)(prompt - r->usage.cached_tokens) * price_in +
         (double)r->usage.cached_tokens * price_cached + (double)completion * price_out) /
        1e6;
    if (!r->cfg->metrics_enabled)
        return; /* what routing saved only feeds the metrics */
    /* What routing saved: the same usage at the priciest backend that could have served it. */
    double dearest = r->usage.cost_usd;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < r->route->n_targets; i++) {
        const struct config_target *t = &r->route->targets[i];
        if (t == r->up.target || !backend_available(t->backend->state, now, NULL))
            continue;
        double c = ((double)prompt * backend_input_price(t->model) +
                    (double)completion * backend_output_price(t->model)) /
                   1e6;
        if (c > dearest)
            dearest = c;
    }
    r->usage.routing_saved_usd = dearest - r->usage.cost_usd;
}

/* Writes the settled numbers into a usage object (and the cost, for stream chunks). */
void request_write_usage(struct request *r, json_t *usage, bool with_cost)
{
    if (r->ep->answer == ANSWER_KIND_RESPONSES) {
        request_responses_write_usage(r, usage, with_cost);
        return;
    }
    json_object_set_new(usage, "prompt_tokens", json_integer(r->usage.prompt_tokens));
    json_object_set_new(usage, "completion_tokens", json_integer(r->usage.completion_tokens));
    json_object_set_new(usage, "total_tokens",
                        json_integer(r->usage.prompt_tokens + r->usage.completion_tokens));
    json_t *details = json_object_get(usage, "prompt_tokens_details");
    if (json_is_object(details) && json_object_get(details, "cached_tokens"))
        json_object_set_new(details, "cached_tokens", json_integer(r->usage.cached_tokens));
    if (with_cost)
        json_object_set_new(usage, "cost", json_real(r->usage.cost_usd));
}

/* Everything a finished request adds to the worker's metrics shard. */
static void request_observe(const struct request *r, double seconds)
{
    struct metrics_shard *m = r->w->metrics;
    enum metrics_route route = r->ep ? r->ep->metric : METRICS_ROUTE_OTHER;
    /* Refused before its route was set: the model asked, when it is a configured one. */
    unsigned model = r->route ? request_served_route(r)->metric_model /* chain.c */
                              : request_asked_metric_model(r);
    metrics_observe_request(m, route, model, r->status, seconds);
    request_observe_genai(r, model, seconds); /* observe.c */
    if (r->t_queued)
        metrics_observe_overhead(m, r->t_queued - r->t_start - r->up.wait);
    if (!r->route)
        return; /* refused before a model was known */
    static const enum metrics_cache results[] = {
        [REQUEST_CACHE_BYPASS] = METRICS_CACHE_BYPASS,
        [REQUEST_CACHE_MISS] = METRICS_CACHE_MISS,
        [REQUEST_CACHE_HIT] = METRICS_CACHE_HIT,
    };
    METRICS_ADD(m->cache[results[r->cache.result]], 1);
    if (r->cache.result == REQUEST_CACHE_HIT)
        METRICS_ADD(m->cache_savings, r->cache.saved_usd);
    else if (r->usage.done && r->up.target) {
        const struct config_model *cm = r->up.target->model;
        metrics_observe_usage(m, route, model, cm->price ? cm->price->metric_pair : 0,
                              r->adm.metric_key, r->usage.prompt_tokens, r->usage.completion_tokens,
                              r->usage.cost_usd);
        metrics_observe_cached(m, cm->price ? cm->price->metric_pair : 0, r->usage.cached_tokens);
        if (r->usage.clamped)
            metrics_observe_clamped(m, r->up.target->backend->state->metric_backend);
        if (r->usage.routing_saved_usd > 0)
            METRICS_ADD(m->routing_savings, r->usage.routing_saved_usd);
    }
}

static void request_log(const struct request *r, double seconds)
{
    if (!log_enabled(LOG_INFO))
        return;
    static const char *const cache[] = {[REQUEST_CACHE_BYPASS] = "bypass",
                                        [REQUEST_CACHE_MISS] = "miss",
                                        [REQUEST_CACHE_HIT] = "hit"};
    char trace[96], model[160], key[160], backend[160], cost[USD_TEXT_MAX];
    bool billed = r->usage.done && r->route;
    usd_format(cost, sizeof cost, billed ? r->usage.cost_usd : 0);
    log_event(LOG_INFO, "request",
              "\"request_id\":\"%s\",\"method\":\"%s\",\"path\":\"%s\",\"key\":\"%s\","
              "\"model\":\"%s\",\"backend\":\"%s\",\"status\":%u,\"stream\":%s,"
              "\"duration_ms\":%.3f,\"attempts\":%u,\"prompt_tokens\":%ld,"
              "\"completion_tokens\":%ld,\"cost_usd\":%s,\"cache\":\"%s\"%s",
              r->id /* request_id_ok(): nothing to escape */, r->method, r->ep ? r->ep->path : "-",
              log_escape(key, sizeof key, r->adm.key_name ? r->adm.key_name : ""),
              log_escape(model, sizeof model, r->model ? request_served_model(r) : ""),
              log_escape(backend, sizeof backend,
                         r->up.target && r->up.status ? r->up.target->backend->name : ""),
              r->status, r->oreq.stream ? "true" : "false", seconds * 1000, r->up.attempts,
              billed ? r->usage.prompt_tokens : 0, billed ? r->usage.completion_tokens : 0, cost,
              r->route ? cache[r->cache.result] : "bypass",
              tracing_log_members(r, trace, sizeof trace));
}

void request_settle(struct request *r, double seconds)
{
    /* A caller that left a stream before its usage chunk came (499): the node's transfer was
     * stopped at once, so what it generated is what was relayed until then. Billed as the
     * prompt estimate (the one reserved) and the completion estimated from the text relayed,
     * marked as estimated; the budget and the TPM limit settle with the same numbers. */
    if (r->status == 499 && r->relay.stream_mode && !r->usage.done && r->up.target &&
        r->usage.n_choices)
        request_settle_usage(r);
    if (r->adm.budget_asked && r->adm.budget_result == BUDGET_OK && r->w->budget)
        budget_settle(r->w->budget, r->adm.key_name,
                      r->adm.budget_in_redis ? r->adm.budget_reserved : 0,
                      r->usage.done ? r->usage.cost_usd : 0);
    if (r->adm.limited && r->adm.limit_result == RATELIMIT_ADMIT && r->w->ratelimit)
        ratelimit_settle(r->w->ratelimit, r->adm.key_name, r->adm.limit_tokens,
                         r->usage.done ? r->usage.prompt_tokens + r->usage.completion_tokens : 0);
    if (r->cfg->metrics_enabled)
        request_observe(r, seconds);
    request_log(r, seconds);
    tracing_request_end(r, seconds);
    /* Exactly one usage record per authenticated inference request, answered or not. A
     * caller the gateway could not authenticate (401, or 503 with the key store out) leaves
     * none, so anonymous traffic cannot write to Redis; it is counted in the metrics and
     * logged above. */
    if (!r->w->ledger || !r->ep || !r->ep->upstream_path || !r->adm.authenticated)
        return;
    struct ledger_entry e = {
        .request_id = r->id,
        .key = r->adm.key_name ? r->adm.key_name : "",
        .model = r->model ? request_served_model(r) : "", /* a chain's: what served */
        .cached_tokens = r->usage.done ? r->usage.cached_tokens : 0,
        .backend = r->up.target && r->up.status ? r->up.target->backend->name : "",
        .cache = r->cache.result == REQUEST_CACHE_HIT    ? "hit"
                 : r->cache.result == REQUEST_CACHE_MISS ? "miss"
                                                         : "bypass",
        .status = r->status,
        .prompt_tokens = r->usage.done ? r->usage.prompt_tokens : 0,
        .completion_tokens = r->usage.done ? r->usage.completion_tokens : 0,
        .cost_usd = r->usage.done ? r->usage.cost_usd : 0,
        .estimated = r->usage.done && r->usage.estimated,
        .saved_usd = r->cache.result == REQUEST_CACHE_HIT ? r->cache.saved_usd : 0,
        .latency_ms = seconds * 1000,
    };
    ledger_record(r->w->ledger, &e);
}

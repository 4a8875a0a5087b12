/* Spans of the request pipeline (gateway/tracing.h). */
#include "gateway/tracing.h"

#include "base/clock.h"
#include "base/log.h"
#include "gateway/pipeline.h"
#include "trace/exporter.h"
#include "trace/otlp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void tracing_queue_attempt(struct request *r, bool serving);

/* a, b and c one after the other into out (cut to fit): what snprintf("%s%s%s") writes, at a
 * fraction of its cost on a path every traced request takes. */
static void tracing_join(char *out, size_t n, const char *a, const char *b, const char *c)
{
    size_t len = 0;
    const char *parts[] = {a, b, c};
    for (int i = 0; i < 3 && parts[i]; i++) {
        size_t k = strlen(parts[i]);
        if (k > n - 1 - len)
            k = n - 1 - len;
        memcpy(out + len, parts[i], k);
        len += k;
    }
    out[len] = '\0';
}

void tracing_configure(struct trace_exporter *e, const struct config *cfg)
{
    if (!e)
        return;
    const struct config_tracing *tc = &cfg->tracing;
    /* The resource: the config's attributes, then service.name (tracing.service_name) and
     * service.version unless they named those already. */
    const char *pairs[2 * 66];
    size_t n = 0;
    bool has_name = false, has_version = false;
    for (size_t i = 0; i < tc->n_resource && n < 64; i++, n++) {
        pairs[2 * n] = tc->resource[2 * i];
        pairs[2 * n + 1] = tc->resource[2 * i + 1];
        has_name |= !strcmp(pairs[2 * n], "service.name");
        has_version |= !strcmp(pairs[2 * n], "service.version");
    }
    if (!has_name) {
        pairs[2 * n] = "service.name";
        pairs[2 * n++ + 1] = tc->service_name ? tc->service_name : "tollgate";
    }
    if (!has_version) {
        pairs[2 * n] = "service.version";
        pairs[2 * n++ + 1] = TOLLGATE_VERSION;
    }
    struct trace_settings s = {
        .endpoint = tc->otlp_endpoint,
        .headers = (const char *const *)tc->headers,
        .n_headers = tc->n_headers,
        .resource = pairs,
        .n_resource = n,
        .timeout_ms = tc->timeout_ms,
    };
    if (trace_exporter_configure(e, &s))
        log_event(LOG_ERROR, "tracing_config_failed", "\"detail\":\"out of memory\"");
}

/* Tracing is on for this request: it has a server span (recorded or not). */
static bool tracing_on(const struct request_tracing *t)
{
    return trace_id_nonzero(t->span_id, sizeof t->span_id);
}

static void tracing_random_id(struct request *r, uint8_t *out, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t x = worker_random(r->w);
            size_t k = n - i < 8 ? n - i : 8;
            memcpy(out + i, &x, k);
        }
    } while (!trace_id_nonzero(out, n));
}

void tracing_begin(struct request *r)
{
    struct request_tracing *t = &r->trace;
    if (t->begun)
        return;
    t->begun = true;
    if (!r->ep || !r->ep->upstream_path)
        return; /* local endpoints (models, health, metrics) are not traced */
    t->traced = true;
    struct trace_context c;
    const char *tp = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "traceparent");
    if (tp && trace_parse_traceparent(tp, &c) == 0) {
        t->has_parent = true;
        memcpy(t->trace_id, c.trace_id, sizeof t->trace_id);
        memcpy(t->parent_id, c.span_id, sizeof t->parent_id);
        t->flags = c.flags;
        /* A tracestate goes with a valid traceparent only; one too long or with control
         * characters is dropped whole, as the spec allows. */
        const char *ts = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "tracestate");
        if (ts && trace_state_ok(ts))
            tracing_join(t->state, sizeof t->state, ts, NULL, NULL);
    }
    const struct config_tracing *tc = &r->cfg->tracing;
    if (!tc->otlp_endpoint || !r->w->shared->trace)
        return;
    /* Parent-based: the caller's sampled flag decides for its trace; a new trace is sampled
     * by ratio on its id. */
    if (!t->has_parent) {
        tracing_random_id(r, t->trace_id, sizeof t->trace_id);
        t->flags = trace_ratio_sampled(t->trace_id, tc->sample_ratio) ? TRACE_FLAG_SAMPLED : 0;
    }
    t->recording = t->flags & TRACE_FLAG_SAMPLED;
    tracing_random_id(r, t->span_id, sizeof t->span_id);
}

/* host and port of a backend's URL ("http://host:port/v1"), for server.address. */
static void tracing_url_host(const char *url, char *host, size_t n, long *port)
{
    *port = !strncmp(url, "https://", 8) ? 443 : 80;
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    const char *at = strpbrk(p, "@/"); /* user:password@ is never a host */
    if (at && *at == '@')
        p = at + 1;
    const char *end;
    if (*p == '[') { /* [v6]:port */
        end = strchr(p, ']');
        end = end ? end + 1 : p + strlen(p);
    } else {
        end = p + strcspn(p, ":/?#");
    }
    size_t len = (size_t)(end - p);
    if (len > n - 1)
        len = n - 1;
    memcpy(host, p, len);
    host[len] = '\0';
    if (*end == ':')
        *port = strtol(end + 1, NULL, 10);
}

struct curl_slist *tracing_attempt_headers(struct request *r, struct curl_slist *base)
{
    struct request_tracing *t = &r->trace;
    if (!t->begun)
        tracing_begin(r); /* an attempt made on MHD's first call */
    if (!t->traced)
        return base;
    if (t->att_pending || t->att_open) {
        /* The last attempt's span goes now: it has nothing more to learn. */
        if (t->att_open)
            tracing_attempt_end(r, METRICS_OUTCOME_BROKEN, clock_mono());
        tracing_queue_attempt(r, false);
    }
    struct trace_context c;
    memcpy(c.trace_id, t->trace_id, sizeof c.trace_id);
    c.flags = t->flags;
    if (tracing_on(t)) {
        /* Tracing is on: the node's parent is this attempt's client span. */
        tracing_random_id(r, t->att_id, sizeof t->att_id);
        memcpy(c.span_id, t->att_id, sizeof c.span_id);
        t->att_open = true;
        t->att_start = clock_mono();
        t->att_target = r->up.target;
        t->att_no = r->up.attempts;
        t->att_status = 0;
        t->att_cancelled = false;
    } else if (t->has_parent) {
        memcpy(c.span_id, t->parent_id, sizeof c.span_id); /* off: the caller's, as it came */
    } else {
        return base;
    }
    char tp[TRACE_PARENT_LEN + 1];
    trace_format_traceparent(&c, tp);
    tracing_join(t->tp_line, sizeof t->tp_line, "traceparent: ", tp, NULL);
    t->tp_node.data = t->tp_line;
    t->tp_node.next = base;
    if (t->state[0]) {
        tracing_join(t->ts_line, sizeof t->ts_line, "tracestate: ", t->state, NULL);
        t->ts_node.data = t->ts_line;
        t->ts_node.next = base;
        t->tp_node.next = &t->ts_node;
    }
    return &t->tp_node;
}

void tracing_attempt_end(struct request *r, enum metrics_outcome outcome, double now)
{
    struct request_tracing *t = &r->trace;
    if (!t->att_open)
        return;
    t->att_open = false;
    t->att_pending = true;
    t->att_end = now;
    t->att_outcome = outcome;
    t->att_status = r->up.status;
}

/* ---- spans ---------------------------------------------------------------------------------- */

static uint64_t tracing_wall_ns(double mono, double now_mono, uint64_t now_wall_ns)
{
    double back = (now_mono - mono) * 1e9;
    return back > 0 && (double)now_wall_ns > back ? now_wall_ns - (uint64_t)back : now_wall_ns;
}

static uint64_t tracing_now_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const char *tracing_operation(const struct request *r)
{
    static const char *const ops[] = {"chat", "text_completion", "embeddings"};
    int op = metrics_genai_op(r->ep->metric);
    return op >= 0 && op < 3 ? ops[op] : "chat";
}

/* error.type of an attempt's outcome (low cardinality: a status code or a word). */
static const char *tracing_error_type(enum metrics_outcome o, long status, char *buf, size_t n)
{
    switch (o) {
    case METRICS_OUTCOME_SUCCESS:
        return NULL;
    case METRICS_OUTCOME_TIMEOUT:
        return "timeout";
    case METRICS_OUTCOME_UNREACHABLE:
        return "unreachable";
    case METRICS_OUTCOME_BROKEN:
        return "broken_answer";
    case METRICS_OUTCOME_RATE_LIMITED:
    case METRICS_OUTCOME_CLIENT_ERROR:
    case METRICS_OUTCOME_SERVER_ERROR:
    default:
        if (status <= 0)
            return "server_error";
        snprintf(buf, n, "%ld", status);
        return buf;
    }
}

/* backends[].provider; every node speaks OpenAI's API, so "openai" when it says nothing. */
static const char *tracing_provider(const struct config_target *t)
{
    return t && t->backend->provider ? t->backend->provider : "openai";
}

static const char *tracing_strategy(const struct config *cfg)
{
    static const char *const names[] = {"cheapest", "price-weighted", "latency"};
    unsigned s = (unsigned)cfg->routing.strategy;
    return s < 3 ? names[s] : "other";
}

/* The attributes the server span and the serving attempt share: what was served and billed. */
static void tracing_usage_attrs(struct otlp_span *s, const struct request *r,
                                const struct config_target *t)
{
    otlp_attr_str(s, "gen_ai.response.model",
                  t->model->upstream ? t->model->upstream : t->model->name);
    if (!r->usage.done)
        return;
    otlp_attr_int(s, "gen_ai.usage.input_tokens", r->usage.prompt_tokens);
    otlp_attr_int(s, "gen_ai.usage.output_tokens", r->usage.completion_tokens);
    otlp_attr_double(s, "tollgate.cost_usd", r->usage.cost_usd);
}

static struct trace_ring *tracing_ring(const struct request *r)
{
    return trace_exporter_ring(r->w->shared->trace, r->w->id);
}

/* Queues the pending attempt's client span; `serving` when it is the one that answered. */
static void tracing_queue_attempt(struct request *r, bool serving)
{
    struct request_tracing *t = &r->trace;
    t->att_pending = false;
    const struct config_target *target = t->att_target;
    struct trace_ring *ring = tracing_ring(r);
    uint8_t *slot;
    if (!t->recording || !target || !ring || !(slot = trace_ring_reserve(ring)))
        return;
    uint64_t now_wall = tracing_now_wall_ns();
    double now = clock_mono();
    struct otlp_span s;
    otlp_span_init(&s, slot, TRACE_SPAN_MAX);
    otlp_span_ids(&s, t->trace_id, t->att_id, t->span_id);
    const char *op = tracing_operation(r);
    const char *asked = target->model->upstream ? target->model->upstream : target->model->name;
    char name[160];
    tracing_join(name, sizeof name, op, " ", asked);
    otlp_span_name(&s, name);
    otlp_span_kind(&s, OTLP_SPAN_CLIENT);
    otlp_span_times(&s, tracing_wall_ns(t->att_start, now, now_wall),
                    tracing_wall_ns(t->att_end, now, now_wall));
    otlp_attr_str(&s, "gen_ai.operation.name", op);
    otlp_attr_str(&s, "gen_ai.request.model", asked);
    otlp_attr_str(&s, "gen_ai.provider.name", tracing_provider(target));
    char host[256];
    long port;
    tracing_url_host(target->backend->url, host, sizeof host, &port);
    otlp_attr_str(&s, "server.address", host);
    otlp_attr_int(&s, "server.port", port);
    otlp_attr_str(&s, "tollgate.backend", target->backend->name);
    otlp_attr_int(&s, "tollgate.attempt", t->att_no);
    if (t->att_status > 0)
        otlp_attr_int(&s, "http.response.status_code", t->att_status);
    char buf[24];
    const char *err = t->att_cancelled
                          ? "cancelled"
                          : tracing_error_type(t->att_outcome, t->att_status, buf, sizeof buf);
    if (err)
        otlp_attr_str(&s, "error.type", err);
    if (serving && !err)
        tracing_usage_attrs(&s, r, target);
    size_t len =
        otlp_span_finish(&s, err ? OTLP_STATUS_ERROR : OTLP_STATUS_UNSET, err, t->flags, false);
    trace_ring_commit(ring, len);
}

void tracing_request_end(struct request *r, double seconds)
{
    struct request_tracing *t = &r->trace;
    if (!t->recording)
        return;
    double now = clock_mono();
    if (t->att_open) { /* the caller left, or the gateway stopped, while a node worked */
        tracing_attempt_end(r, METRICS_OUTCOME_BROKEN, now);
        t->att_cancelled = true;
    }
    bool served = t->att_pending && t->att_outcome == METRICS_OUTCOME_SUCCESS;
    char buf[24];
    const char *last_err =
        t->att_pending ? tracing_error_type(t->att_outcome, t->att_status, buf, sizeof buf) : NULL;
    if (t->att_cancelled)
        last_err = "cancelled";
    if (t->att_pending)
        tracing_queue_attempt(r, served);
    struct trace_ring *ring = tracing_ring(r);
    uint8_t *slot;
    if (!ring || !(slot = trace_ring_reserve(ring)))
        return;
    uint64_t now_wall = tracing_now_wall_ns();
    uint64_t start = tracing_wall_ns(r->t_start, now, now_wall);
    struct otlp_span s;
    otlp_span_init(&s, slot, TRACE_SPAN_MAX);
    otlp_span_ids(&s, t->trace_id, t->span_id, t->has_parent ? t->parent_id : NULL);
    otlp_span_trace_state(&s, t->state);
    char name[96];
    tracing_join(name, sizeof name, r->method, " ", r->ep->path);
    otlp_span_name(&s, name);
    otlp_span_kind(&s, OTLP_SPAN_SERVER);
    otlp_span_times(&s, start, start + (uint64_t)(seconds * 1e9));
    otlp_attr_str(&s, "http.request.method", r->method);
    otlp_attr_str(&s, "http.route", r->ep->path);
    otlp_attr_int(&s, "http.response.status_code", r->status);
    const char *op = tracing_operation(r);
    otlp_attr_str(&s, "gen_ai.operation.name", op);
    if (r->model)
        otlp_attr_str(&s, "gen_ai.request.model", r->model);
    const struct config_target *target = r->up.target;
    otlp_attr_str(&s, "gen_ai.provider.name", tracing_provider(target));
    if (target && r->up.status) {
        otlp_attr_str(&s, "tollgate.backend", target->backend->name);
        if (served)
            tracing_usage_attrs(&s, r, target);
    }
    static const char *const cache[] = {[REQUEST_CACHE_BYPASS] = "bypass",
                                        [REQUEST_CACHE_MISS] = "miss",
                                        [REQUEST_CACHE_HIT] = "hit"};
    otlp_attr_str(&s, "tollgate.cache", r->route ? cache[r->cache.result] : "bypass");
    if (r->cache.result == REQUEST_CACHE_HIT && r->usage.done)
        otlp_attr_double(&s, "tollgate.cost_usd", r->usage.cost_usd);
    otlp_attr_str(&s, "tollgate.route.strategy", tracing_strategy(r->cfg));
    if (r->adm.authenticated && r->adm.key_name)
        otlp_attr_str(&s, "tollgate.key.name", r->adm.key_name);
    otlp_attr_str(&s, "tollgate.request_id", r->id);
    otlp_attr_int(&s, "tollgate.attempts", r->up.attempts);
    otlp_attr_bool(&s, "tollgate.stream", r->oreq.stream);
    /* Failed: a 5xx, or a stream that began and then broke (its status was sent as 200). */
    const char *err = NULL;
    char sbuf[24];
    if (r->status >= 500) {
        snprintf(sbuf, sizeof sbuf, "%u", r->status);
        err = sbuf;
    } else if (r->status == 200 && r->relay.stream_mode && last_err) {
        err = last_err;
    }
    if (err)
        otlp_attr_str(&s, "error.type", err);
    size_t len = otlp_span_finish(&s, err ? OTLP_STATUS_ERROR : OTLP_STATUS_UNSET, err, t->flags,
                                  t->has_parent);
    trace_ring_commit(ring, len);
}

const char *tracing_log_members(const struct request *r, char *out, size_t n)
{
    const struct request_tracing *t = &r->trace;
    out[0] = '\0';
    if (!t->traced || (!t->has_parent && !tracing_on(t)))
        return out;
    char tid[2 * TRACE_ID_LEN + 1], sid[2 * TRACE_SPAN_ID_LEN + 1];
    buf_hex(t->trace_id, sizeof t->trace_id, tid);
    if (tracing_on(t)) {
        buf_hex(t->span_id, sizeof t->span_id, sid);
        snprintf(out, n, ",\"trace_id\":\"%s\",\"span_id\":\"%s\"", tid, sid);
    } else {
        snprintf(out, n, ",\"trace_id\":\"%s\"", tid);
    }
    return out;
}

#include "metrics/metrics-int.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#ifndef TOLLGATE_VERSION
#define TOLLGATE_VERSION "0.0.0"
#endif

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* ---- bucket bounds ------------------------------------------------------------------------- */

static const double duration_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
static const double overhead_le[] = {5e-06, 1e-05,  2.5e-05, 5e-05, 0.0001, 0.00025, 0.0005,
                                     0.001, 0.0025, 0.005,   0.01,  0.025,  0.1};
#define BOUNDS(a) METRICS_BOUNDS(a)

/* The shortest decimal that reads back as v (bucket bounds must print exactly). */
static const char *shortest(char out[40], double v)
{
    for (int digits = 6; digits <= 17; digits++) {
        snprintf(out, 40, "%.*g", digits, v);
        if (strtod(out, NULL) == v)
            break;
    }
    return out;
}

void metrics_hist_observe(struct metrics_hist *h, struct metrics_bounds bounds, double v)
{
    size_t b = 0;
    while (b < bounds.n && v > bounds.le[b])
        b++;
    METRICS_ADD(h->bucket[b], 1);
    METRICS_ADD(h->sum, v);
}

#define OBSERVE(h, a, v) metrics_hist_observe((h), BOUNDS(a), (v))

/* ---- labels -------------------------------------------------------------------------------- */

static const size_t label_caps[METRICS_LABEL_KINDS] = {
    METRICS_MAX_MODELS,    METRICS_MAX_BACKENDS,  METRICS_MAX_PAIRS,    METRICS_MAX_KEYS,
    METRICS_MAX_PROVIDERS, METRICS_MAX_ADDRESSES, METRICS_MAX_UPSTREAMS};
_Static_assert(METRICS_MAX_PAIRS >= METRICS_MAX_UPSTREAMS, "label_names holds every table");

/* Names are stored escaped for the exposition format. A PAIR is "backend\0model". */
static pthread_mutex_t label_lock = PTHREAD_MUTEX_INITIALIZER;
static char *label_names[METRICS_LABEL_KINDS][METRICS_MAX_PAIRS];
static _Atomic size_t label_count[METRICS_LABEL_KINDS] = {1, 1, 1, 1, 1, 1, 1};

/* Label value escaping (text format 0.0.4): backslash, double quote and line feed. */
static size_t label_escape(char *out, const char *in)
{
    size_t o = 0;
    for (const char *p = in; *p; p++) {
        if (*p == '\\' || *p == '"') {
            if (out) {
                out[o] = '\\';
                out[o + 1] = *p;
            }
            o += 2;
        } else if (*p == '\n') {
            if (out) {
                out[o] = '\\';
                out[o + 1] = 'n';
            }
            o += 2;
        } else {
            if (out)
                out[o] = *p;
            o++;
        }
    }
    return o;
}

static char *label_make(const char *name, const char *name2)
{
    size_t a = label_escape(NULL, name), b = name2 ? label_escape(NULL, name2) : 0;
    char *s = malloc(a + b + 2);
    if (!s)
        return NULL;
    label_escape(s, name);
    s[a] = '\0';
    if (name2) {
        label_escape(s + a + 1, name2);
        s[a + 1 + b] = '\0';
    }
    return s;
}

/* Whether a stored label is `want` (made by label_make; pairs compare both halves). */
static bool label_equal(const char *stored, const char *want, bool pair)
{
    size_t a = strlen(want);
    return !strcmp(stored, want) && (!pair || !strcmp(stored + a + 1, want + a + 1));
}

unsigned metrics_label(enum metrics_label_kind kind, const char *name, const char *name2)
{
    if ((unsigned)kind >= METRICS_LABEL_KINDS || !name)
        return 0;
    if (kind != METRICS_LABEL_PAIR)
        name2 = NULL;
    else if (!name2)
        return 0;
    if (label_escape(NULL, name) > METRICS_LABEL_MAX ||
        (name2 && label_escape(NULL, name2) > METRICS_LABEL_MAX))
        return 0; /* longer names count as "other": every series line stays bounded */
    char *want = label_make(name, name2);
    if (!want)
        return 0;
    pthread_mutex_lock(&label_lock);
    size_t n = atomic_load_explicit(&label_count[kind], memory_order_relaxed);
    unsigned found = 0;
    for (size_t i = 1; i < n && !found; i++)
        if (label_equal(label_names[kind][i], want, name2 != NULL))
            found = (unsigned)i;
    if (!found && n < label_caps[kind]) {
        label_names[kind][n] = want;
        want = NULL;
        found = (unsigned)n;
        /* Published after the name: a scrape never sees an index without its name. */
        atomic_store_explicit(&label_count[kind], n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&label_lock);
    free(want);
    return found;
}

size_t metrics_labels_in_use(enum metrics_label_kind kind)
{
    return atomic_load_explicit(&label_count[kind], memory_order_acquire);
}

static const char *label_name(enum metrics_label_kind kind, size_t i)
{
    return i ? label_names[kind][i] : "other";
}

const char *metrics_label_name(enum metrics_label_kind kind, unsigned i)
{
    return label_name(kind, i < metrics_labels_in_use(kind) ? i : 0);
}

/* The model half of a pair ("other" for index 0). */
static const char *pair_model(size_t i)
{
    return i ? label_names[METRICS_LABEL_PAIR][i] + strlen(label_names[METRICS_LABEL_PAIR][i]) + 1
             : "other";
}

const char *metrics_pair_model(unsigned pair)
{
    return pair_model(pair < metrics_labels_in_use(METRICS_LABEL_PAIR) ? pair : 0);
}

/* ---- statuses, routes, operations ------------------------------------------------------------ */

static const unsigned status_codes[] = {200, 201, 204, 206, 301, 302, 304, 400, 401, 403, 404, 405,
                                        408, 409, 413, 415, 422, 429, 499, 500, 501, 502, 503, 504};
#define STATUS_NAMED (sizeof status_codes / sizeof status_codes[0])
_Static_assert(STATUS_NAMED + 5 == METRICS_STATUSES, "status table size");

static unsigned status_index(unsigned status)
{
    for (unsigned i = 0; i < STATUS_NAMED; i++)
        if (status_codes[i] == status)
            return i;
    unsigned cls = status / 100;
    return STATUS_NAMED + (cls >= 1 && cls <= 5 ? cls - 1 : 4);
}

static void status_text(unsigned i, char out[8])
{
    if (i < STATUS_NAMED)
        snprintf(out, 8, "%u", status_codes[i]);
    else
        snprintf(out, 8, "%uxx", i - (unsigned)STATUS_NAMED + 1);
}

static const char *const route_names[METRICS_ROUTE_COUNT] = {
    "chat_completions", "completions",  "embeddings",           "responses",   "models",
    "images",           "audio_speech", "audio_transcriptions", "moderations", "other"};
static const char *const genai_op_names[METRICS_GENAI_OPS] = {"chat", "text_completion",
                                                              "embeddings"};
static const char *const outcome_names[METRICS_OUTCOME_COUNT] = {
    "success", "client_error", "rate_limited", "server_error", "timeout", "unreachable", "broken"};
static const char *const cache_names[3] = {"hit", "miss", "bypass"};
static const char *const token_types[2] = {"input", "output"};

const char *metrics_genai_op_name(int op)
{
    return op >= 0 && op < METRICS_GENAI_OPS ? genai_op_names[op] : "other";
}

const char *metrics_token_type(int output)
{
    return token_types[output ? 1 : 0];
}

int metrics_genai_op(enum metrics_route route)
{
    switch (route) {
    case METRICS_ROUTE_CHAT:
    case METRICS_ROUTE_RESPONSES: /* a chat operation in OpenTelemetry's terms */
        return 0;
    case METRICS_ROUTE_COMPLETIONS:
        return 1;
    case METRICS_ROUTE_EMBEDDINGS:
        return 2;
    default:
        return -1;
    }
}

/* ---- shards and observations -------------------------------------------------------------- */

struct metrics_shard *metrics_shard_new(void)
{
    /* A mapping of its own, whatever malloc's thresholds: its pages are zero already and
     * only the series a worker touches become resident (most stay untouched). */
    void *p = mmap(NULL, sizeof(struct metrics_shard), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct metrics_shard *s = p;
    atomic_store_explicit(&s->redis_up, -1, memory_order_relaxed);
    return s;
}

void metrics_shard_free(struct metrics_shard *s)
{
    if (s)
        munmap(s, sizeof *s);
}

unsigned metrics_clamp(unsigned i, unsigned cap)
{
    return i < cap ? i : 0;
}

void metrics_observe_request(struct metrics_shard *s, enum metrics_route route, unsigned model,
                             unsigned status, double seconds)
{
    model = metrics_clamp(model, METRICS_MAX_MODELS);
    METRICS_ADD(s->requests[route][model][status_index(status)], 1);
    OBSERVE(&s->duration[route], duration_le, seconds);
}

void metrics_observe_ttft(struct metrics_shard *s, enum metrics_route route, unsigned model,
                          double seconds, int stream)
{
    (void)route;
    (void)stream;
    OBSERVE(&s->ttft[metrics_clamp(model, METRICS_MAX_MODELS)], duration_le, seconds);
}

void metrics_observe_overhead(struct metrics_shard *s, double seconds)
{
    OBSERVE(&s->overhead, overhead_le, seconds > 0 ? seconds : 0);
}

void metrics_observe_attempt(struct metrics_shard *s, unsigned backend, unsigned pair,
                             enum metrics_outcome outcome, double seconds)
{
    METRICS_ADD(s->backend_requests[metrics_clamp(pair, METRICS_MAX_PAIRS)][outcome], 1);
    OBSERVE(&s->backend_duration[metrics_clamp(backend, METRICS_MAX_BACKENDS)], duration_le,
            seconds);
}

void metrics_observe_clamped(struct metrics_shard *s, unsigned backend)
{
    METRICS_ADD(s->usage_clamped[metrics_clamp(backend, METRICS_MAX_BACKENDS)], 1);
}

void metrics_observe_cached(struct metrics_shard *s, unsigned pair, long tokens)
{
    if (tokens > 0) /* an index past the table counts as 0, "other", as everywhere here */
        METRICS_ADD(s->cached_tokens[pair < METRICS_MAX_PAIRS ? pair : 0], (uint64_t)tokens);
}

void metrics_observe_usage(struct metrics_shard *s, enum metrics_route route, unsigned model,
                           unsigned pair, unsigned key, long input, long output, double cost_usd)
{
    (void)model; /* the pair names it */
    pair = metrics_clamp(pair, METRICS_MAX_PAIRS);
    METRICS_ADD(s->tokens[pair][0], (uint64_t)(input > 0 ? input : 0));
    METRICS_ADD(s->tokens[pair][1], (uint64_t)(output > 0 ? output : 0));
    METRICS_ADD(s->cost[pair], cost_usd);
    METRICS_ADD(s->key_cost[metrics_clamp(key, METRICS_MAX_KEYS)], cost_usd);
    metrics_genai_observe_tokens(s, route, pair, input, output);
}

/* ---- rendering ------------------------------------------------------------------------------ */

static uint64_t sum_u64(const struct metrics_render_ctx *rd, size_t off)
{
    uint64_t v = 0;
    for (size_t i = 0; i < rd->n; i++)
        v += atomic_load_explicit((_Atomic uint64_t *)((char *)rd->shards[i] + off),
                                  memory_order_relaxed);
    return v;
}

static double sum_f64(const struct metrics_render_ctx *rd, size_t off)
{
    double v = 0;
    for (size_t i = 0; i < rd->n; i++)
        v += atomic_load_explicit((_Atomic double *)((char *)rd->shards[i] + off),
                                  memory_order_relaxed);
    return v;
}

#define OFF(field) METRICS_OFF(field)

void metrics_head(struct metrics_render_ctx *rd, const char *name, const char *type,
                  const char *help)
{
    rd->err |= buf_printf(rd->out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_hist_render(struct metrics_render_ctx *rd, const char *name, const char *labels,
                         size_t off, struct metrics_bounds bounds, bool always)
{
    uint64_t counts[METRICS_HIST_MAX + 1] = {0};
    double sum = 0;
    uint64_t total = 0;
    for (size_t i = 0; i < rd->n; i++) {
        const struct metrics_hist *h = (const void *)((const char *)rd->shards[i] + off);
        for (size_t b = 0; b <= bounds.n; b++) {
            uint64_t c = LOAD(h->bucket[b]);
            counts[b] += c;
            total += c;
        }
        sum += LOAD(h->sum);
    }
    if (!total && !always)
        return;
    const char *sep = *labels ? "," : "";
    uint64_t cum = 0;
    for (size_t b = 0; b <= bounds.n; b++) {
        cum += counts[b];
        char le[40];
        if (b < bounds.n)
            rd->err |= buf_printf(rd->out, "%s_bucket{%s%sle=\"%s\"} %llu\n", name, labels, sep,
                                  shortest(le, bounds.le[b]), (unsigned long long)cum);
        else
            rd->err |= buf_printf(rd->out, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", name, labels, sep,
                                  (unsigned long long)cum);
    }
    const char *open = *labels ? "{" : "", *close = *labels ? "}" : "";
    rd->err |= buf_printf(rd->out, "%s_sum%s%s%s %.17g\n%s_count%s%s%s %llu\n", name, open, labels,
                          close, sum, name, open, labels, close, (unsigned long long)total);
}

static void render_requests(struct metrics_render_ctx *rd)
{
    metrics_head(
        rd, "tollgate_requests_total", "counter",
        "Requests answered, by route, model (from the config, else other) and HTTP status.");
    size_t models = metrics_labels_in_use(METRICS_LABEL_MODEL);
    for (int route = 0; route < METRICS_ROUTE_COUNT; route++)
        for (size_t m = 0; m < models; m++)
            for (unsigned st = 0; st < METRICS_STATUSES; st++) {
                uint64_t v = sum_u64(rd, OFF(requests[route][m][st]));
                if (!v)
                    continue;
                char code[8];
                status_text(st, code);
                rd->err |= buf_printf(
                    rd->out,
                    "tollgate_requests_total{route=\"%s\",model=\"%s\",status=\"%s\"} %llu\n",
                    route_names[route], label_name(METRICS_LABEL_MODEL, m), code,
                    (unsigned long long)v);
            }
    metrics_head(rd, "tollgate_request_duration_seconds", "histogram",
                 "Time from a request's arrival to the end of its answer.");
    for (int route = 0; route < METRICS_ROUTE_COUNT; route++) {
        char labels[512];
        snprintf(labels, sizeof labels, "route=\"%s\"", route_names[route]);
        metrics_hist_render(rd, "tollgate_request_duration_seconds", labels, OFF(duration[route]),
                            BOUNDS(duration_le), route <= METRICS_ROUTE_MODELS);
    }
    metrics_head(
        rd, "tollgate_time_to_first_token_seconds", "histogram",
        "Time from a request's arrival to its first content relayed (streams) or its answer "
        "(non-streams), for answers a backend served.");
    for (size_t m = 0; m < models; m++) {
        char labels[512];
        snprintf(labels, sizeof labels, "model=\"%s\"", label_name(METRICS_LABEL_MODEL, m));
        metrics_hist_render(rd, "tollgate_time_to_first_token_seconds", labels, OFF(ttft[m]),
                            BOUNDS(duration_le), false);
    }
    metrics_head(
        rd, "tollgate_overhead_seconds", "histogram",
        "Time a request spent in the gateway itself: until its answer was queued, minus the "
        "time spent waiting on backends.");
    metrics_hist_render(rd, "tollgate_overhead_seconds", "", OFF(overhead), BOUNDS(overhead_le),
                        true);
}

static void render_backends(struct metrics_render_ctx *rd)
{
    size_t pairs = metrics_labels_in_use(METRICS_LABEL_PAIR);
    size_t backends = metrics_labels_in_use(METRICS_LABEL_BACKEND);
    metrics_head(rd, "tollgate_backend_requests_total", "counter",
                 "Upstream attempts, by backend, model and outcome.");
    for (size_t p = 0; p < pairs; p++)
        for (int o = 0; o < METRICS_OUTCOME_COUNT; o++) {
            uint64_t v = sum_u64(rd, OFF(backend_requests[p][o]));
            if (v)
                rd->err |= buf_printf(rd->out,
                                      "tollgate_backend_requests_total{backend=\"%s\",model=\"%s\","
                                      "outcome=\"%s\"} %llu\n",
                                      label_name(METRICS_LABEL_PAIR, p), pair_model(p),
                                      outcome_names[o], (unsigned long long)v);
        }
    metrics_head(rd, "tollgate_backend_duration_seconds", "histogram",
                 "Duration of one upstream attempt, by backend.");
    for (size_t b = 0; b < backends; b++) {
        char labels[512];
        snprintf(labels, sizeof labels, "backend=\"%s\"", label_name(METRICS_LABEL_BACKEND, b));
        metrics_hist_render(rd, "tollgate_backend_duration_seconds", labels,
                            OFF(backend_duration[b]), BOUNDS(duration_le), false);
    }
    metrics_head(rd, "tollgate_backend_usage_clamped_total", "counter",
                 "Answers whose reported usage was more than the backend could have produced "
                 "(more than max_tokens or the text it delivered allow); billed at the bound.");
    for (size_t b = 0; b < backends; b++) {
        uint64_t v = sum_u64(rd, OFF(usage_clamped[b]));
        if (v)
            rd->err |=
                buf_printf(rd->out, "tollgate_backend_usage_clamped_total{backend=\"%s\"} %llu\n",
                           label_name(METRICS_LABEL_BACKEND, b), (unsigned long long)v);
    }
    metrics_head(rd, "tollgate_tokens_total", "counter",
                 "Tokens billed, by backend, model and type (input, output).");
    for (size_t p = 0; p < pairs; p++)
        for (int t = 0; t < 2; t++) {
            uint64_t v = sum_u64(rd, OFF(tokens[p][t]));
            if (v || sum_f64(rd, OFF(cost[p])) > 0)
                rd->err |= buf_printf(rd->out,
                                      "tollgate_tokens_total{backend=\"%s\",model=\"%s\","
                                      "type=\"%s\"} %llu\n",
                                      label_name(METRICS_LABEL_PAIR, p), pair_model(p),
                                      token_types[t], (unsigned long long)v);
        }
    metrics_head(rd, "tollgate_cached_tokens_total", "counter",
                 "Input tokens billed at the cached-input price, by backend and model (a part of "
                 "tollgate_tokens_total{type=\"input\"}).");
    for (size_t p = 0; p < pairs; p++) {
        uint64_t v = sum_u64(rd, OFF(cached_tokens[p]));
        if (v)
            rd->err |= buf_printf(
                rd->out, "tollgate_cached_tokens_total{backend=\"%s\",model=\"%s\"} %llu\n",
                label_name(METRICS_LABEL_PAIR, p), pair_model(p), (unsigned long long)v);
    }
    metrics_head(rd, "tollgate_cost_usd_total", "counter", "USD billed, by backend and model.");
    for (size_t p = 0; p < pairs; p++) {
        double v = sum_f64(rd, OFF(cost[p]));
        if (v > 0 || sum_u64(rd, OFF(tokens[p][0])))
            rd->err |=
                buf_printf(rd->out, "tollgate_cost_usd_total{backend=\"%s\",model=\"%s\"} %.17g\n",
                           label_name(METRICS_LABEL_PAIR, p), pair_model(p), v);
    }
    metrics_head(rd, "tollgate_key_cost_usd_total", "counter",
                 "USD billed, by caller key name (at most 255 names; the rest count as other).");
    size_t keys = metrics_labels_in_use(METRICS_LABEL_KEY);
    for (size_t k = 0; k < keys; k++) {
        double v = sum_f64(rd, OFF(key_cost[k]));
        if (v > 0)
            rd->err |= buf_printf(rd->out, "tollgate_key_cost_usd_total{key=\"%s\"} %.17g\n",
                                  label_name(METRICS_LABEL_KEY, k), v);
    }
}

static void render_scalars(struct metrics_render_ctx *rd)
{
    struct buf *out = rd->out;
    metrics_head(
        rd, "tollgate_routing_savings_usd_total", "counter",
        "USD saved by routing: the priciest healthy candidate's cost for the same usage minus "
        "the cost billed.");
    rd->err |= buf_printf(out, "tollgate_routing_savings_usd_total %.17g\n",
                          sum_f64(rd, OFF(routing_savings)));
    metrics_head(rd, "tollgate_cache_requests_total", "counter",
                 "Inference requests by cache result (hit, miss, bypass).");
    for (int c = 0; c < 3; c++)
        rd->err |= buf_printf(out, "tollgate_cache_requests_total{result=\"%s\"} %llu\n",
                              cache_names[c], (unsigned long long)sum_u64(rd, OFF(cache[c])));
    metrics_head(
        rd, "tollgate_cache_savings_usd_total", "counter",
        "USD that cache hits would have cost: what the stored answer cost when it was made.");
    rd->err |= buf_printf(out, "tollgate_cache_savings_usd_total %.17g\n",
                          sum_f64(rd, OFF(cache_savings)));
    int64_t inflight = 0;
    for (size_t i = 0; i < rd->n; i++)
        inflight += LOAD(rd->shards[i]->inflight);
    rd->err |= buf_printf(out,
                          "# HELP tollgate_upstream_errors_total Upstream attempts that failed.\n"
                          "# TYPE tollgate_upstream_errors_total counter\n"
                          "tollgate_upstream_errors_total %llu\n"
                          "# HELP tollgate_retries_total Further attempts after a failure before "
                          "the first byte (another backend, or the same after a backoff).\n"
                          "# TYPE tollgate_retries_total counter\n"
                          "tollgate_retries_total %llu\n"
                          "# HELP tollgate_streams_total Streamed answers started.\n"
                          "# TYPE tollgate_streams_total counter\n"
                          "tollgate_streams_total %llu\n"
                          "# HELP tollgate_inflight_requests Requests being served.\n"
                          "# TYPE tollgate_inflight_requests gauge\n"
                          "tollgate_inflight_requests %lld\n",
                          (unsigned long long)sum_u64(rd, OFF(upstream_errors)),
                          (unsigned long long)sum_u64(rd, OFF(retries)),
                          (unsigned long long)sum_u64(rd, OFF(streams)), (long long)inflight);
}

static void render_redis(struct metrics_render_ctx *rd)
{
    uint64_t errors = 0, timeouts = 0, reconnects = 0;
    int64_t up = 0, configured = 0;
    for (size_t i = 0; i < rd->n; i++) {
        int64_t u = LOAD(rd->shards[i]->redis_up);
        if (u < 0)
            continue;
        configured++;
        up += u;
        errors += LOAD(rd->shards[i]->redis_errors);
        timeouts += LOAD(rd->shards[i]->redis_timeouts);
        reconnects += LOAD(rd->shards[i]->redis_reconnects);
    }
    if (!configured)
        return;
    rd->err |=
        buf_printf(rd->out,
                   "# HELP tollgate_ledger_records_total Usage records, by what became of them.\n"
                   "# TYPE tollgate_ledger_records_total counter\n"
                   "tollgate_ledger_records_total{outcome=\"written\"} %llu\n"
                   "tollgate_ledger_records_total{outcome=\"spooled\"} %llu\n"
                   "tollgate_ledger_records_total{outcome=\"replayed\"} %llu\n"
                   "tollgate_ledger_records_total{outcome=\"dropped\"} %llu\n"
                   "# HELP tollgate_ledger_spool_bytes Usage records waiting in spool files.\n"
                   "# TYPE tollgate_ledger_spool_bytes gauge\n"
                   "tollgate_ledger_spool_bytes %llu\n"
                   "# HELP tollgate_ledger_held_records Usage records held in memory because "
                   "the spool could not take them (disk full or failing); lost if the process "
                   "stops before the spool or Redis takes them.\n"
                   "# TYPE tollgate_ledger_held_records gauge\n"
                   "tollgate_ledger_held_records %llu\n"
                   "# HELP tollgate_ledger_held_bytes Memory of the usage records held, "
                   "against spool_memory_bytes.\n"
                   "# TYPE tollgate_ledger_held_bytes gauge\n"
                   "tollgate_ledger_held_bytes %llu\n",
                   (unsigned long long)sum_u64(rd, OFF(ledger_written)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_spooled)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_replayed)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_dropped)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_spool_bytes)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_held)),
                   (unsigned long long)sum_u64(rd, OFF(ledger_held_bytes)));
    rd->err |= buf_printf(rd->out,
                          "# HELP tollgate_redis_errors_total Redis commands that failed "
                          "(errors, timeouts, refusals while the breaker is open).\n"
                          "# TYPE tollgate_redis_errors_total counter\n"
                          "tollgate_redis_errors_total %llu\n"
                          "# HELP tollgate_redis_timeouts_total Redis commands past their "
                          "deadline.\n"
                          "# TYPE tollgate_redis_timeouts_total counter\n"
                          "tollgate_redis_timeouts_total %llu\n"
                          "# HELP tollgate_redis_reconnects_total Redis reconnections.\n"
                          "# TYPE tollgate_redis_reconnects_total counter\n"
                          "tollgate_redis_reconnects_total %llu\n"
                          "# HELP tollgate_redis_up Share of workers connected to Redis.\n"
                          "# TYPE tollgate_redis_up gauge\n"
                          "tollgate_redis_up %g\n",
                          (unsigned long long)errors, (unsigned long long)timeouts,
                          (unsigned long long)reconnects, (double)up / (double)configured);
}

int metrics_render(struct buf *out, struct metrics_shard *const *shards, size_t n_shards)
{
    struct metrics_render_ctx rd = {.out = out, .shards = shards, .n = n_shards};
    render_requests(&rd);
    render_backends(&rd);
    render_scalars(&rd);
    metrics_render_genai(&rd);
    render_redis(&rd);
    return rd.err ? -1 : 0;
}

int metrics_render_build_info(struct buf *out)
{
    return buf_printf(out,
                      "# HELP tollgate_build_info The running build.\n"
                      "# TYPE tollgate_build_info gauge\n"
                      "tollgate_build_info{version=\"%s\"} 1\n",
                      TOLLGATE_VERSION);
}

#include "gateway/status.h"

#include "base/clock.h"
#include "base/digest.h"
#include "routing/backend.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the page and its Content-Security-Policy ------------------------------------------- */

#define STATUS_CSP_MAX 1280 /* the policy's text and two 511-byte hash lists */

static pthread_once_t status_csp_once = PTHREAD_ONCE_INIT;
static char status_csp_text[STATUS_CSP_MAX];

static void status_base64(const unsigned char *in, size_t len, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < len; i += 3) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)in[i + 1] << 8;
        if (i + 2 < len)
            v |= in[i + 2];
        out[o++] = abc[(v >> 18) & 63];
        out[o++] = abc[(v >> 12) & 63];
        out[o++] = i + 1 < len ? abc[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < len ? abc[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Appends " 'sha256-…'" for the text of every <tag>…</tag> of the page (plain tags, no
 * attributes: the page is ours). */
static void status_csp_hashes(const char *tag, char *out, size_t cap)
{
    char open[16], close[16];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *p = (const char *)status_html, *end = p + status_html_len;
    while (p < end) {
        const char *s = memmem(p, (size_t)(end - p), open, strlen(open));
        if (!s)
            break;
        s += strlen(open);
        const char *e = memmem(s, (size_t)(end - s), close, strlen(close));
        if (!e)
            break;
        unsigned char sum[DIGEST_SHA256_LEN];
        char b64[48];
        digest_sha256(s, (size_t)(e - s), sum);
        status_base64(sum, sizeof sum, b64);
        size_t used = strlen(out);
        snprintf(out + used, cap - used, " 'sha256-%s'", b64);
        p = e + strlen(close);
    }
}

static void status_csp_init(void)
{
    char scripts[512] = "", styles[512] = "";
    status_csp_hashes("script", scripts, sizeof scripts);
    status_csp_hashes("style", styles, sizeof styles);
    /* Nothing but the page's own script and style, and fetches to this listener; no string
     * ever reaches innerHTML (Trusted Types with no policy), no frame, no form post. */
    snprintf(status_csp_text, sizeof status_csp_text,
             "default-src 'none'; script-src%s; style-src%s; connect-src 'self'; img-src data:; "
             "base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
             "require-trusted-types-for 'script'; trusted-types 'none'",
             scripts, styles);
}

const char *status_csp(void)
{
    pthread_once(&status_csp_once, status_csp_init);
    return status_csp_text;
}

enum MHD_Result status_page(struct MHD_Connection *conn)
{
    /* Persistent: the page is static data that lives as long as the process. */
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        status_html_len, (void *)status_html, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/html; charset=utf-8");
    MHD_add_response_header(resp, "Content-Security-Policy", status_csp());
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    enum MHD_Result ok = MHD_queue_response(conn, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* ---- why a backend is where it is -------------------------------------------------------- */

static long status_secs(int64_t ms)
{
    return (long)((ms + 999) / 1000);
}

const char *status_health_reason(const struct config *cfg, const struct config_backend *b,
                                 int64_t now_ms, char *buf, size_t len)
{
    struct backend_state *s = b->state;
    unsigned fails = atomic_load(&s->consecutive_failures);
    int64_t until = atomic_load(&s->ejected_until_ms);
    switch (backend_health(s, now_ms)) {
    case BACKEND_DOWN: {
        unsigned n = atomic_load(&s->probe_failures);
        snprintf(buf, len, "health probes failing (%u in a row)", n);
        break;
    }
    case BACKEND_EJECTED:
        if (atomic_load(&s->eject_reason) == BACKEND_EJECT_UNREACHABLE)
            snprintf(buf, len, "unreachable (connect errors or timeouts): back in %ld s",
                     status_secs(until - now_ms));
        else
            snprintf(buf, len, "failing (5xx, timeouts or bad answers): back in %ld s",
                     status_secs(until - now_ms));
        if (atomic_load(&s->eject_streak) > 1) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "; ejected %u times in a row",
                     atomic_load(&s->eject_streak));
        }
        break;
    case BACKEND_RATE_LIMITED:
        snprintf(buf, len, "rate limited (429): paused for %ld s", status_secs(until - now_ms));
        break;
    case BACKEND_SUSPECTED:
        snprintf(buf, len, "suspected stuck: %d in flight, none answered since",
                 atomic_load(&s->stuck.waiting));
        break;
    default: {
        double share = limiter_ramp_share(&s->limit, cfg->health.slow_start_ms, now_ms);
        if (share < 1.0)
            snprintf(buf, len, "back in service, slow start at %.0f%%", share * 100);
        else if (fails)
            snprintf(buf, len, "serving; %u failure%s in a row", fails, fails == 1 ? "" : "s");
        else if (limiter_on_probation(&s->limit))
            snprintf(buf, len, "serving; not answered yet (one request at a time)");
        else
            snprintf(buf, len, "serving");
        break;
    }
    }
    /* A node that reports more usage than it delivers is still up, but priced higher. */
    for (size_t j = 0; j < b->n_models; j++) {
        const struct config_model *m = &b->models[j];
        if (m->price && honesty_flagged(&m->price->honesty)) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "; over-reports usage of %s", m->name);
            break;
        }
    }
    return buf;
}

/* ---- the totals ------------------------------------------------------------------------- */

static uint64_t sum_u64(struct metrics_shard *const *shards, size_t n, size_t off)
{
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++)
        v += atomic_load_explicit((_Atomic uint64_t *)((char *)shards[i] + off),
                                  memory_order_relaxed);
    return v;
}

static double sum_f64(struct metrics_shard *const *shards, size_t n, size_t off)
{
    double v = 0;
    for (size_t i = 0; i < n; i++)
        v +=
            atomic_load_explicit((_Atomic double *)((char *)shards[i] + off), memory_order_relaxed);
    return v;
}

#define OFF(field) offsetof(struct metrics_shard, field)

/* A label as interned is escaped for the exposition format (\\, \", \n): undone here, as
 * the JSON encoder escapes for itself. */
static void status_unescape(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (; *in && o + 1 < cap; in++) {
        if (*in == '\\' && in[1]) {
            in++;
            out[o++] = *in == 'n' ? '\n' : *in;
        } else {
            out[o++] = *in;
        }
    }
    out[o] = '\0';
}

struct status_key {
    unsigned index;
    double spend;
};

static int status_key_cmp(const void *a, const void *b)
{
    double x = ((const struct status_key *)a)->spend, y = ((const struct status_key *)b)->spend;
    return x < y ? 1 : x > y ? -1 : 0;
}

static json_t *status_top_keys(struct metrics_shard *const *shards, size_t n)
{
    struct status_key keys[METRICS_MAX_KEYS];
    size_t k = 0;
    for (unsigned i = 0; i < METRICS_MAX_KEYS; i++) {
        double v = sum_f64(shards, n, OFF(key_cost[i]));
        if (v > 0)
            keys[k++] = (struct status_key){i, v};
    }
    qsort(keys, k, sizeof keys[0], status_key_cmp);
    json_t *list = json_array();
    for (size_t i = 0; i < k && i < STATUS_TOP_KEYS; i++) {
        char name[METRICS_LABEL_MAX + 1];
        status_unescape(metrics_label_name(METRICS_LABEL_KEY, keys[i].index), name, sizeof name);
        json_array_append_new(list,
                              json_pack("{s:s, s:f}", "name", name, "spend_usd", keys[i].spend));
    }
    return list;
}

static json_t *status_backend(const struct config *cfg, const struct config_backend *b,
                              struct metrics_shard *const *shards, size_t n, int64_t now)
{
    uint64_t attempts = 0, failed = 0, limited = 0, in = 0, out = 0;
    double spend = 0;
    for (size_t j = 0; j < b->n_models; j++) {
        const struct config_model *m = &b->models[j];
        unsigned pair = m->price ? m->price->metric_pair : 0;
        if (!pair)
            continue; /* "other": shared by every pair past the cap, not this backend's */
        for (int o = 0; o < METRICS_OUTCOME_COUNT; o++) {
            uint64_t v = sum_u64(shards, n, OFF(backend_requests[pair][o]));
            attempts += v;
            /* A client's bad request is not the node's failure; a 429 is counted apart. */
            if (o == METRICS_OUTCOME_RATE_LIMITED)
                limited += v;
            else if (o != METRICS_OUTCOME_SUCCESS && o != METRICS_OUTCOME_CLIENT_ERROR)
                failed += v;
        }
        spend += sum_f64(shards, n, OFF(cost[pair]));
        in += sum_u64(shards, n, OFF(tokens[pair][0]));
        out += sum_u64(shards, n, OFF(tokens[pair][1]));
    }
    char why[256];
    return json_pack("{s:s, s:s, s:s, s:I, s:I, s:I, s:f, s:I, s:I}", "name", b->name, "health",
                     backend_health_name(b->state, now), "reason",
                     status_health_reason(cfg, b, now, why, sizeof why), "attempts",
                     (json_int_t)attempts, "failed", (json_int_t)failed, "rate_limited",
                     (json_int_t)limited, "spend_usd", spend, "input_tokens", (json_int_t)in,
                     "output_tokens", (json_int_t)out);
}

json_t *status_json(const struct config *cfg, struct metrics_shard *const *shards, size_t n)
{
    int64_t now = clock_mono_ms();
    uint64_t requests = 0, in = 0, out = 0;
    double spend = 0;
    for (size_t i = 0; i < n; i++)
        for (int r = 0; r < METRICS_ROUTE_COUNT; r++)
            for (int m = 0; m < METRICS_MAX_MODELS; m++)
                for (int st = 0; st < METRICS_STATUSES; st++)
                    requests +=
                        atomic_load_explicit(&shards[i]->requests[r][m][st], memory_order_relaxed);
    for (unsigned p = 0; p < METRICS_MAX_PAIRS; p++) {
        spend += sum_f64(shards, n, OFF(cost[p]));
        in += sum_u64(shards, n, OFF(tokens[p][0]));
        out += sum_u64(shards, n, OFF(tokens[p][1]));
    }
    int64_t inflight = 0;
    for (size_t i = 0; i < n; i++)
        inflight += atomic_load_explicit(&shards[i]->inflight, memory_order_relaxed);
    json_t *totals =
        json_pack("{s:I, s:f, s:f, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "requests",
                  (json_int_t)requests, "spend_usd", spend, "routing_savings_usd",
                  sum_f64(shards, n, OFF(routing_savings)), "cache_savings_usd",
                  sum_f64(shards, n, OFF(cache_savings)), "cache_hits",
                  (json_int_t)sum_u64(shards, n, OFF(cache[METRICS_CACHE_HIT])), "cache_misses",
                  (json_int_t)sum_u64(shards, n, OFF(cache[METRICS_CACHE_MISS])), "cache_bypasses",
                  (json_int_t)sum_u64(shards, n, OFF(cache[METRICS_CACHE_BYPASS])), "input_tokens",
                  (json_int_t)in, "output_tokens", (json_int_t)out, "streams",
                  (json_int_t)sum_u64(shards, n, OFF(streams)), "retries",
                  (json_int_t)sum_u64(shards, n, OFF(retries)), "inflight", (json_int_t)inflight);
    json_t *backends = json_array();
    for (size_t i = 0; i < cfg->n_backends; i++)
        json_array_append_new(backends, status_backend(cfg, &cfg->backends[i], shards, n, now));
    return json_pack("{s:o, s:o, s:o}", "totals", totals, "backends", backends, "top_keys",
                     status_top_keys(shards, n));
}

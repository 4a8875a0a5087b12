/* The OpenTelemetry GenAI metrics (gen_ai_*), as Prometheus names them: operation duration,
 * token usage, the model server's time to first token and the client's time to first chunk.
 *
 * Attributes stay bounded like every other label: a request a backend answered counts under
 * its (backend, model) pair, whose provider, server address and port and response model are
 * set from the config when it is attached (metrics_pair_describe()); a request answered
 * without a backend (the cache) or that failed counts under the model asked (a configured
 * name, else other) and its error type, one of the gateway's own error codes. */
#include "base/error.h"
#include "metrics/metrics-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The OpenTelemetry GenAI semantic conventions' advised boundaries: operation duration (and
 * the client's time to first chunk, which shares them), token usage, and the model server's
 * time to first token. */
static const double duration_le[] = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                     1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double tokens_le[] = {1,     4,     16,     64,      256,     1024,     4096,
                                   16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
static const double ttft_le[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                 0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};

#define GENAI_ERROR_OTHER (METRICS_GENAI_ERRORS - 1)

/* ---- a pair's attributes ------------------------------------------------------------------ */

/* Per pair, packed so a scrape reads them whole: provider (bits 0-7), address (8-15), port
 * (16-31), response model (32-47), bit 63 once described. */
static _Atomic uint64_t pair_attrs[METRICS_MAX_PAIRS];

#define ATTR_DESCRIBED (1ull << 63)

/* server.address and server.port of a backend URL (scheme://[user@]host[:port]/...). */
static void url_host_port(const char *url, char *host, size_t n, unsigned *port)
{
    host[0] = '\0';
    *port = 0;
    const char *p = strstr(url, "://");
    bool https = p && p - url == 5 && !strncmp(url, "https", 5);
    p = p ? p + 3 : url;
    size_t auth = strcspn(p, "/?#");
    const char *at = memchr(p, '@', auth);
    if (at) {
        auth -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    size_t hlen = auth;
    const char *colon = NULL;
    if (*p == '[') { /* an IPv6 literal: the address without its brackets */
        const char *close = memchr(p, ']', auth);
        if (close) {
            hlen = (size_t)(close - p - 1);
            p++;
            colon = close[1] == ':' ? close + 1 : NULL;
        }
    } else {
        colon = memchr(p, ':', auth);
        if (colon)
            hlen = (size_t)(colon - p);
    }
    if (hlen >= n)
        hlen = n - 1;
    memcpy(host, p, hlen);
    host[hlen] = '\0';
    *port = https ? 443 : 80;
    if (colon) {
        unsigned long v = strtoul(colon + 1, NULL, 10);
        if (v > 0 && v < 65536)
            *port = (unsigned)v;
    }
}

void metrics_pair_describe(unsigned pair, const char *provider, const char *url,
                           const char *response_model)
{
    if (!pair || pair >= METRICS_MAX_PAIRS)
        return;
    char host[256];
    unsigned port;
    url_host_port(url ? url : "", host, sizeof host, &port);
    uint64_t v = ATTR_DESCRIBED;
    v |= (uint64_t)metrics_label(METRICS_LABEL_PROVIDER, provider ? provider : "openai", NULL);
    v |= (uint64_t)metrics_label(METRICS_LABEL_ADDRESS, host, NULL) << 8;
    v |= (uint64_t)port << 16;
    v |= (uint64_t)metrics_label(METRICS_LABEL_UPSTREAM, response_model ? response_model : "", NULL)
         << 32;
    atomic_store_explicit(&pair_attrs[pair], v, memory_order_release);
}

/* The attribute labels of a pair (no braces), into out. */
static void pair_labels(char *out, size_t n, int op, size_t pair)
{
    uint64_t v = atomic_load_explicit(&pair_attrs[pair], memory_order_acquire);
    char port[8] = "0";
    if (v & ATTR_DESCRIBED)
        snprintf(port, sizeof port, "%u", (unsigned)(v >> 16) & 0xffff);
    snprintf(out, n,
             "gen_ai_operation_name=\"%s\",gen_ai_provider_name=\"%s\","
             "gen_ai_request_model=\"%s\",gen_ai_response_model=\"%s\",server_address=\"%s\","
             "server_port=\"%s\",tollgate_backend=\"%s\"",
             metrics_genai_op_name(op), metrics_label_name(METRICS_LABEL_PROVIDER, v & 0xff),
             metrics_pair_model((unsigned)pair),
             metrics_label_name(METRICS_LABEL_UPSTREAM, (v >> 32) & 0xffff),
             metrics_label_name(METRICS_LABEL_ADDRESS, (v >> 8) & 0xff), port,
             metrics_label_name(METRICS_LABEL_PAIR, (unsigned)pair));
}

/* ---- observations ------------------------------------------------------------------------- */

unsigned metrics_genai_error(int err, unsigned status)
{
    if (err >= 0)
        return status >= 400 ? GENAI_ERROR_OTHER : 0;
    if (-err >= GENAI_ERROR_OTHER)
        return GENAI_ERROR_OTHER;
    /* Codes that share a name (out of memory and internal errors are both internal_error)
     * share a series: the first of them. */
    const char *code = error_code((enum tg_error)err);
    for (int i = 1; i < -err; i++)
        if (!strcmp(error_code((enum tg_error) - i), code))
            return (unsigned)i;
    return (unsigned)-err;
}

static const char *genai_error_name(unsigned e)
{
    return e >= GENAI_ERROR_OTHER ? "_OTHER" : error_code((enum tg_error) - (int)e);
}

void metrics_observe_genai(struct metrics_shard *s, const struct metrics_genai_obs *o)
{
    int op = metrics_genai_op(o->route);
    if (op < 0)
        return;
    unsigned pair = metrics_clamp(o->pair, METRICS_MAX_PAIRS);
    if (o->pair && !o->error) {
        metrics_hist_observe(&s->genai_duration[op][pair], METRICS_BOUNDS(duration_le), o->seconds);
    } else {
        unsigned e = o->error < METRICS_GENAI_ERRORS ? o->error : GENAI_ERROR_OTHER;
        metrics_hist_observe(&s->genai_failed[op][metrics_clamp(o->model, METRICS_MAX_MODELS)][e],
                             METRICS_BOUNDS(duration_le), o->seconds);
    }
    if (!o->pair)
        return;
    if (o->first_token >= 0)
        metrics_hist_observe(&s->genai_ttft[op][pair], METRICS_BOUNDS(ttft_le), o->first_token);
    if (o->first_chunk >= 0)
        metrics_hist_observe(&s->genai_ttfc[op][pair], METRICS_BOUNDS(duration_le), o->first_chunk);
}

void metrics_genai_observe_tokens(struct metrics_shard *s, enum metrics_route route, unsigned pair,
                                  long input, long output)
{
    int op = metrics_genai_op(route);
    if (op < 0)
        return;
    pair = metrics_clamp(pair, METRICS_MAX_PAIRS);
    metrics_hist_observe(&s->genai_tokens[op][pair][0], METRICS_BOUNDS(tokens_le),
                         (double)(input > 0 ? input : 0));
    if (route != METRICS_ROUTE_EMBEDDINGS)
        metrics_hist_observe(&s->genai_tokens[op][pair][1], METRICS_BOUNDS(tokens_le),
                             (double)(output > 0 ? output : 0));
}

/* ---- rendering ---------------------------------------------------------------------------- */

#define LABELS_MAX 1600 /* seven labels of at most METRICS_LABEL_MAX bytes, and their names */

/* One family by pair: every operation, every pair in use. */
static void render_by_pair(struct metrics_render_ctx *rd, const char *name, size_t off0,
                           size_t op_stride, size_t pair_stride, struct metrics_bounds bounds,
                           const char *extra)
{
    size_t pairs = metrics_labels_in_use(METRICS_LABEL_PAIR);
    for (int op = 0; op < METRICS_GENAI_OPS; op++)
        for (size_t p = 0; p < pairs; p++) {
            char labels[LABELS_MAX];
            pair_labels(labels, sizeof labels, op, p);
            if (extra) {
                size_t len = strlen(labels);
                snprintf(labels + len, sizeof labels - len, ",%s", extra);
            }
            metrics_hist_render(rd, name, labels, off0 + (size_t)op * op_stride + p * pair_stride,
                                bounds, false);
        }
}

#define STRIDES(field)                                                                             \
    sizeof(((struct metrics_shard *)0)->field[0]), sizeof(((struct metrics_shard *)0)->field[0][0])

void metrics_render_genai(struct metrics_render_ctx *rd)
{
    static const char *const token_labels[2] = {"gen_ai_token_type=\"input\"",
                                                "gen_ai_token_type=\"output\""};
    size_t models = metrics_labels_in_use(METRICS_LABEL_MODEL);
    metrics_head(rd, "gen_ai_client_operation_duration_seconds", "histogram",
                 "GenAI operation duration (OpenTelemetry gen_ai.client.operation.duration): "
                 "by the backend that answered, or by the model asked and error_type.");
    render_by_pair(rd, "gen_ai_client_operation_duration_seconds", METRICS_OFF(genai_duration),
                   STRIDES(genai_duration), METRICS_BOUNDS(duration_le), NULL);
    for (int op = 0; op < METRICS_GENAI_OPS; op++)
        for (size_t m = 0; m < models; m++)
            for (unsigned e = 0; e < METRICS_GENAI_ERRORS; e++) {
                char labels[LABELS_MAX];
                int len = snprintf(labels, sizeof labels,
                                   "gen_ai_operation_name=\"%s\",gen_ai_request_model=\"%s\"",
                                   metrics_genai_op_name(op),
                                   metrics_label_name(METRICS_LABEL_MODEL, (unsigned)m));
                if (e && len > 0 && (size_t)len < sizeof labels)
                    snprintf(labels + len, sizeof labels - (size_t)len, ",error_type=\"%s\"",
                             genai_error_name(e));
                metrics_hist_render(rd, "gen_ai_client_operation_duration_seconds", labels,
                                    METRICS_OFF(genai_failed[op][m][e]),
                                    METRICS_BOUNDS(duration_le), false);
            }
    metrics_head(rd, "gen_ai_client_token_usage", "histogram",
                 "Tokens per operation (OpenTelemetry gen_ai.client.token.usage).");
    for (int t = 0; t < 2; t++)
        render_by_pair(rd, "gen_ai_client_token_usage",
                       METRICS_OFF(genai_tokens) + (size_t)t * sizeof(struct metrics_hist),
                       STRIDES(genai_tokens), METRICS_BOUNDS(tokens_le), token_labels[t]);
    metrics_head(rd, "gen_ai_server_time_to_first_token_seconds", "histogram",
                 "Time to the backend stream's first event (OpenTelemetry "
                 "gen_ai.server.time_to_first_token), streams only.");
    render_by_pair(rd, "gen_ai_server_time_to_first_token_seconds", METRICS_OFF(genai_ttft),
                   STRIDES(genai_ttft), METRICS_BOUNDS(ttft_le), NULL);
    metrics_head(rd, "gen_ai_client_operation_time_to_first_chunk_seconds", "histogram",
                 "Time from a request's arrival to the first bytes of its stream relayed to the "
                 "caller (OpenTelemetry gen_ai.client.operation.time_to_first_chunk), streams "
                 "only.");
    render_by_pair(rd, "gen_ai_client_operation_time_to_first_chunk_seconds",
                   METRICS_OFF(genai_ttfc), STRIDES(genai_ttfc), METRICS_BOUNDS(duration_le), NULL);
}

#include "metrics/metrics.h"

#include <stdlib.h>

static const double metrics_bounds[METRICS_DURATION_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static const char *const metrics_route_names[METRICS_ROUTE_COUNT] = {
    "chat_completions", "completions", "embeddings", "models", "other"};

struct metrics_shard *metrics_shard_new(void)
{
    struct metrics_shard *s = aligned_alloc(64, sizeof *s);
    if (!s)
        return NULL;
    *s = (struct metrics_shard){0};
    atomic_store_explicit(&s->redis_up, -1, memory_order_relaxed);
    return s;
}

void metrics_shard_free(struct metrics_shard *s)
{
    free(s);
}

void metrics_observe_request(struct metrics_shard *s, enum metrics_route route, unsigned status,
                             double seconds)
{
    unsigned cls = status / 100;
    if (cls >= METRICS_STATUS_CLASSES)
        cls = 0;
    METRICS_ADD(s->requests[route][cls], 1);
    size_t b = 0;
    while (b < METRICS_DURATION_BUCKETS && seconds > metrics_bounds[b])
        b++;
    METRICS_ADD(s->duration_bucket[route][b], 1);
    METRICS_ADD(s->duration_sum_us[route], (uint64_t)(seconds * 1e6));
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

int metrics_render(struct buf *out, struct metrics_shard *const *shards, size_t n_shards)
{
    int r = 0;
    r |= buf_append_str(out, "# HELP tollgate_requests_total Requests answered, by route and "
                             "status class.\n# TYPE tollgate_requests_total counter\n");
    for (int route = 0; route < METRICS_ROUTE_COUNT; route++)
        for (int c = 1; c < METRICS_STATUS_CLASSES; c++) {
            uint64_t v = 0;
            for (size_t i = 0; i < n_shards; i++)
                v += LOAD(shards[i]->requests[route][c]);
            if (v)
                r |= buf_printf(out, "tollgate_requests_total{route=\"%s\",status=\"%dxx\"} %llu\n",
                                metrics_route_names[route], c, (unsigned long long)v);
        }
    r |= buf_append_str(out, "# HELP tollgate_request_duration_seconds Time from request to "
                             "the end of the answer.\n"
                             "# TYPE tollgate_request_duration_seconds histogram\n");
    for (int route = 0; route < METRICS_ROUTE_COUNT; route++) {
        uint64_t cum = 0, sum_us = 0;
        for (size_t i = 0; i < n_shards; i++)
            sum_us += LOAD(shards[i]->duration_sum_us[route]);
        for (int b = 0; b <= METRICS_DURATION_BUCKETS; b++) {
            for (size_t i = 0; i < n_shards; i++)
                cum += LOAD(shards[i]->duration_bucket[route][b]);
            if (b < METRICS_DURATION_BUCKETS)
                r |= buf_printf(out,
                                "tollgate_request_duration_seconds_bucket{route=\"%s\",le=\"%g\"}"
                                " %llu\n",
                                metrics_route_names[route], metrics_bounds[b],
                                (unsigned long long)cum);
            else
                r |= buf_printf(out,
                                "tollgate_request_duration_seconds_bucket{route=\"%s\",le=\"+Inf\"}"
                                " %llu\n",
                                metrics_route_names[route], (unsigned long long)cum);
        }
        r |= buf_printf(out, "tollgate_request_duration_seconds_sum{route=\"%s\"} %.6f\n",
                        metrics_route_names[route], (double)sum_us / 1e6);
        r |= buf_printf(out, "tollgate_request_duration_seconds_count{route=\"%s\"} %llu\n",
                        metrics_route_names[route], (unsigned long long)cum);
    }
    uint64_t errors = 0, streams = 0, retries = 0;
    int64_t inflight = 0;
    for (size_t i = 0; i < n_shards; i++) {
        retries += LOAD(shards[i]->retries);
        errors += LOAD(shards[i]->upstream_errors);
        streams += LOAD(shards[i]->streams);
        inflight += LOAD(shards[i]->inflight);
    }
    r |= buf_printf(out,
                    "# HELP tollgate_upstream_errors_total Upstream transfers that failed.\n"
                    "# TYPE tollgate_upstream_errors_total counter\n"
                    "tollgate_upstream_errors_total %llu\n"
                    "# HELP tollgate_retries_total Requests moved to another backend after a "
                    "failure.\n"
                    "# TYPE tollgate_retries_total counter\n"
                    "tollgate_retries_total %llu\n"
                    "# HELP tollgate_streams_total Streamed answers started.\n"
                    "# TYPE tollgate_streams_total counter\n"
                    "tollgate_streams_total %llu\n"
                    "# HELP tollgate_inflight_requests Requests being served.\n"
                    "# TYPE tollgate_inflight_requests gauge\n"
                    "tollgate_inflight_requests %lld\n",
                    (unsigned long long)errors, (unsigned long long)retries,
                    (unsigned long long)streams, (long long)inflight);
    uint64_t redis_errors = 0, redis_timeouts = 0, redis_reconnects = 0;
    int64_t redis_up = 0, redis_configured = 0;
    for (size_t i = 0; i < n_shards; i++) {
        int64_t up = LOAD(shards[i]->redis_up);
        if (up < 0)
            continue;
        redis_configured++;
        redis_up += up;
        redis_errors += LOAD(shards[i]->redis_errors);
        redis_timeouts += LOAD(shards[i]->redis_timeouts);
        redis_reconnects += LOAD(shards[i]->redis_reconnects);
    }
    uint64_t lw = 0, ls = 0, lr = 0, ld = 0, lb = 0;
    for (size_t i = 0; i < n_shards; i++) {
        lw += LOAD(shards[i]->ledger_written);
        ls += LOAD(shards[i]->ledger_spooled);
        lr += LOAD(shards[i]->ledger_replayed);
        ld += LOAD(shards[i]->ledger_dropped);
        lb += LOAD(shards[i]->ledger_spool_bytes);
    }
    if (redis_configured)
        r |= buf_printf(out,
                        "# HELP tollgate_ledger_records_total Usage records, by what became of "
                        "them.\n"
                        "# TYPE tollgate_ledger_records_total counter\n"
                        "tollgate_ledger_records_total{outcome=\"written\"} %llu\n"
                        "tollgate_ledger_records_total{outcome=\"spooled\"} %llu\n"
                        "tollgate_ledger_records_total{outcome=\"replayed\"} %llu\n"
                        "tollgate_ledger_records_total{outcome=\"dropped\"} %llu\n"
                        "# HELP tollgate_ledger_spool_bytes Usage records waiting in spool files.\n"
                        "# TYPE tollgate_ledger_spool_bytes gauge\n"
                        "tollgate_ledger_spool_bytes %llu\n",
                        (unsigned long long)lw, (unsigned long long)ls, (unsigned long long)lr,
                        (unsigned long long)ld, (unsigned long long)lb);
    if (redis_configured)
        r |= buf_printf(out,
                        "# HELP tollgate_redis_errors_total Redis commands that failed "
                        "(errors, timeouts, refusals while the breaker is open).\n"
                        "# TYPE tollgate_redis_errors_total counter\n"
                        "tollgate_redis_errors_total %llu\n"
                        "# HELP tollgate_redis_timeouts_total Redis commands past their deadline.\n"
                        "# TYPE tollgate_redis_timeouts_total counter\n"
                        "tollgate_redis_timeouts_total %llu\n"
                        "# HELP tollgate_redis_reconnects_total Redis reconnections.\n"
                        "# TYPE tollgate_redis_reconnects_total counter\n"
                        "tollgate_redis_reconnects_total %llu\n"
                        "# HELP tollgate_redis_up Share of workers connected to Redis.\n"
                        "# TYPE tollgate_redis_up gauge\n"
                        "tollgate_redis_up %g\n",
                        (unsigned long long)redis_errors, (unsigned long long)redis_timeouts,
                        (unsigned long long)redis_reconnects,
                        (double)redis_up / (double)redis_configured);
    return r ? -1 : 0;
}

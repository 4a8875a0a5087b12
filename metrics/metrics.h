/* Counters and histograms, one shard per worker, summed when /metrics is scraped.
 *
 * A shard is written only by its worker thread (plain relaxed stores, no lock-prefixed
 * instruction on the hot path) and read by the scraping thread with relaxed loads, so a
 * scrape may be a few increments behind, never torn. Labels are bounded: routes are a fixed
 * enum, statuses are grouped by class. */
#ifndef TOLLGATE_METRICS_H
#define TOLLGATE_METRICS_H

#include "gateway/buf.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

enum metrics_route {
    METRICS_ROUTE_CHAT = 0,
    METRICS_ROUTE_COMPLETIONS,
    METRICS_ROUTE_EMBEDDINGS,
    METRICS_ROUTE_MODELS,
    METRICS_ROUTE_OTHER,
    METRICS_ROUTE_COUNT,
};

#define METRICS_STATUS_CLASSES 6 /* 1xx..5xx, and index 0 for "other" */
#define METRICS_DURATION_BUCKETS 14

struct metrics_shard {
    _Atomic uint64_t requests[METRICS_ROUTE_COUNT][METRICS_STATUS_CLASSES];
    _Atomic uint64_t duration_bucket[METRICS_ROUTE_COUNT][METRICS_DURATION_BUCKETS + 1];
    _Atomic uint64_t duration_sum_us[METRICS_ROUTE_COUNT];
    _Atomic uint64_t upstream_errors;
    _Atomic uint64_t retries;
    _Atomic uint64_t streams;
    _Atomic int64_t inflight;
    /* Copied from the worker's Redis client once a second (the client's own counters). */
    _Atomic uint64_t redis_errors;
    _Atomic uint64_t redis_timeouts;
    _Atomic uint64_t redis_reconnects;
    _Atomic int64_t redis_up; /* 1 connected, 0 not, -1 no Redis configured */
    /* The worker's usage ledger, copied with the Redis counters. */
    _Atomic uint64_t ledger_written;
    _Atomic uint64_t ledger_spooled;
    _Atomic uint64_t ledger_replayed;
    _Atomic uint64_t ledger_dropped;
    _Atomic uint64_t ledger_spool_bytes;
} __attribute__((aligned(64)));

struct metrics_shard *metrics_shard_new(void);
void metrics_shard_free(struct metrics_shard *s);

/* Single-writer increment: only the owning worker calls these. */
#define METRICS_ADD(field, n)                                                                  \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n), \
                          memory_order_relaxed)

void metrics_observe_request(struct metrics_shard *s, enum metrics_route route, unsigned status,
                             double seconds);

/* Appends the Prometheus text exposition (format 0.0.4) of the summed shards. */
int metrics_render(struct buf *out, struct metrics_shard *const *shards, size_t n_shards);

#endif

/* Counters and histograms, one shard per worker, summed when /metrics is scraped.
 *
 * A shard is written only by its worker thread (plain relaxed stores, no lock-prefixed
 * instruction on the hot path) and read by the scraping thread with relaxed loads, so a
 * scrape may be a few increments behind, never torn.
 *
 * Labels are bounded. Routes are a fixed enum and statuses a fixed table (other codes count
 * by class, "4xx"). Models, backends, (backend, model) pairs and key names are interned into
 * process-wide tables when a config is attached or a Redis-held key is first fetched, never
 * per request: a request carries small indexes. Each table holds at most its cap of names;
 * index 0 is "other", where everything past the cap counts. Names come from the config and
 * from the key store only, never from what a caller sends. */
#ifndef TOLLGATE_METRICS_H
#define TOLLGATE_METRICS_H

#include "base/buf.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

struct config;

enum metrics_route {
    METRICS_ROUTE_CHAT = 0,
    METRICS_ROUTE_COMPLETIONS,
    METRICS_ROUTE_EMBEDDINGS,
    METRICS_ROUTE_RESPONSES,
    METRICS_ROUTE_MODELS,
    /* The metered pass-through endpoints (openai/media.h). */
    METRICS_ROUTE_IMAGES,
    METRICS_ROUTE_AUDIO_SPEECH,
    METRICS_ROUTE_AUDIO_TRANSCRIPTIONS, /* and translations */
    METRICS_ROUTE_MODERATIONS,
    METRICS_ROUTE_OTHER,
    METRICS_ROUTE_COUNT,
};

/* What became of one upstream attempt. */
enum metrics_outcome {
    METRICS_OUTCOME_SUCCESS = 0,
    METRICS_OUTCOME_CLIENT_ERROR, /* a 4xx the backend found in the request */
    METRICS_OUTCOME_RATE_LIMITED, /* 429 */
    METRICS_OUTCOME_SERVER_ERROR, /* 5xx or another unexpected status */
    METRICS_OUTCOME_TIMEOUT,
    METRICS_OUTCOME_UNREACHABLE,
    METRICS_OUTCOME_BROKEN, /* garbage, a cut stream, an error event, a lie */
    METRICS_OUTCOME_COUNT,
};

enum metrics_cache { METRICS_CACHE_HIT = 0, METRICS_CACHE_MISS, METRICS_CACHE_BYPASS };

/* Interned label tables. */
enum metrics_label_kind {
    METRICS_LABEL_MODEL = 0, /* a model name clients send */
    METRICS_LABEL_BACKEND,
    METRICS_LABEL_PAIR, /* (backend, model) */
    METRICS_LABEL_KEY,  /* a caller key's name */
    /* The GenAI attributes of a pair (metrics_pair_describe()). */
    METRICS_LABEL_PROVIDER, /* gen_ai.provider.name: what the backend is */
    METRICS_LABEL_ADDRESS,  /* server.address: the backend URL's host */
    METRICS_LABEL_UPSTREAM, /* gen_ai.response.model: the name the backend serves it under */
    METRICS_LABEL_KINDS,
};

#define METRICS_MAX_MODELS 128
#define METRICS_MAX_BACKENDS 64
#define METRICS_MAX_PAIRS 512
#define METRICS_MAX_KEYS 256
#define METRICS_MAX_PROVIDERS 32
#define METRICS_MAX_ADDRESSES 64
#define METRICS_MAX_UPSTREAMS 512
/* error.type of a failed inference request: 0 none, 1..24 the gateway's error codes
 * (-enum tg_error, base/error.h), 25 "_OTHER". */
#define METRICS_GENAI_ERRORS 26
#define METRICS_STATUSES 29   /* 24 named codes, then 1xx..5xx for the rest */
#define METRICS_GENAI_OPS 3   /* chat, text_completion, embeddings */
#define METRICS_HIST_MAX 17   /* finite buckets of the widest histogram */
#define METRICS_LABEL_MAX 200 /* longest label value (escaped); longer names are "other" */

/* The index of a label (1..cap-1), interning it when new; 0 ("other") once the table is
 * full, for a name longer than METRICS_LABEL_MAX, or on OOM. `name2` is the model of a
 * METRICS_LABEL_PAIR, else NULL. Takes a mutex: call it when a config is attached or a key is
 * fetched, not per request. */
unsigned metrics_label(enum metrics_label_kind kind, const char *name, const char *name2);

struct metrics_hist {
    _Atomic uint64_t bucket[METRICS_HIST_MAX + 1]; /* per bucket, not cumulative; last: +Inf */
    _Atomic double sum;
};

struct metrics_shard {
    _Atomic uint64_t requests[METRICS_ROUTE_COUNT][METRICS_MAX_MODELS][METRICS_STATUSES];
    struct metrics_hist duration[METRICS_ROUTE_COUNT];
    struct metrics_hist ttft[METRICS_MAX_MODELS];
    struct metrics_hist overhead;
    _Atomic uint64_t backend_requests[METRICS_MAX_PAIRS][METRICS_OUTCOME_COUNT];
    struct metrics_hist backend_duration[METRICS_MAX_BACKENDS];
    _Atomic uint64_t usage_clamped[METRICS_MAX_BACKENDS]; /* answers claiming more than possible */
    _Atomic uint64_t tokens[METRICS_MAX_PAIRS][2];        /* input, output */
    _Atomic uint64_t cached_tokens[METRICS_MAX_PAIRS];    /* of input: at the cached price */
    _Atomic double cost[METRICS_MAX_PAIRS];
    _Atomic double key_cost[METRICS_MAX_KEYS];
    _Atomic double routing_savings;
    _Atomic double cache_savings;
    _Atomic uint64_t cache[3];
    /* GenAI (metrics/genai.c). A request a backend answered counts by its (backend, model)
     * pair, which carries the provider, server address and port and the response model; one
     * answered otherwise (the cache) or failed counts by the model asked and its error. */
    struct metrics_hist genai_duration[METRICS_GENAI_OPS][METRICS_MAX_PAIRS];
    struct metrics_hist genai_failed[METRICS_GENAI_OPS][METRICS_MAX_MODELS][METRICS_GENAI_ERRORS];
    struct metrics_hist genai_tokens[METRICS_GENAI_OPS][METRICS_MAX_PAIRS][2];
    struct metrics_hist genai_ttft[METRICS_GENAI_OPS][METRICS_MAX_PAIRS];
    struct metrics_hist genai_ttfc[METRICS_GENAI_OPS][METRICS_MAX_PAIRS];
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
    _Atomic uint64_t ledger_held;       /* records held in memory: the spool did not take them */
    _Atomic uint64_t ledger_held_bytes; /* their memory */
};

/* A zeroed shard: about 3 MiB of address space, of which only the pages of labels in use
 * ever become resident (a few dozen KiB for a handful of models and backends). */
struct metrics_shard *metrics_shard_new(void);
void metrics_shard_free(struct metrics_shard *s);

/* Single-writer increment: only the owning worker calls these. */
#define METRICS_ADD(field, n)                                                                      \
    atomic_store_explicit(&(field), atomic_load_explicit(&(field), memory_order_relaxed) + (n),    \
                          memory_order_relaxed)

/* The gen_ai operation of a route (chat, text_completion, embeddings), or -1. */
int metrics_genai_op(enum metrics_route route);

/* One answered request: its count and its duration (the gen_ai series are
 * metrics_observe_genai()'s). */
void metrics_observe_request(struct metrics_shard *s, enum metrics_route route, unsigned model,
                             unsigned status, double seconds);
/* tollgate_time_to_first_token_seconds: to the first content relayed (streams) or the answer. */
void metrics_observe_ttft(struct metrics_shard *s, enum metrics_route route, unsigned model,
                          double seconds, int stream);

/* One finished inference request in the OpenTelemetry GenAI metrics. */
struct metrics_genai_obs {
    enum metrics_route route; /* routes that are no GenAI operation are not counted */
    unsigned model;           /* the model asked (METRICS_LABEL_MODEL; 0 other) */
    unsigned pair;            /* the (backend, model) that answered; 0 when none did */
    unsigned error;           /* metrics_genai_error(); 0 when it succeeded */
    double seconds;           /* arrival to the end of the answer */
    double first_token;       /* arrival to the backend stream's first event; < 0 none */
    double first_chunk;       /* arrival to the first bytes relayed to the caller; < 0 none */
};
void metrics_observe_genai(struct metrics_shard *s, const struct metrics_genai_obs *o);
/* The error.type index of a request that failed with `err` (an enum tg_error, < 0), or with
 * only an HTTP status >= 400 (err 0): "_OTHER". 0 for a success. */
unsigned metrics_genai_error(int err, unsigned status);
/* The GenAI attributes of a pair: `provider` (gen_ai.provider.name), server.address and
 * server.port from the backend's `url`, and `response_model` (gen_ai.response.model). Names
 * past their table's cap count as other. Takes a mutex: call it when a config is attached. A
 * reload that changes them relabels the pair's series from then on. */
void metrics_pair_describe(unsigned pair, const char *provider, const char *url,
                           const char *response_model);
void metrics_observe_overhead(struct metrics_shard *s, double seconds);
void metrics_observe_attempt(struct metrics_shard *s, unsigned backend, unsigned pair,
                             enum metrics_outcome outcome, double seconds);
/* A backend reported more usage than it could have produced; the bill used the bound. */
void metrics_observe_clamped(struct metrics_shard *s, unsigned backend);
/* Of a request's billed input tokens, those billed at the cached-input price. */
void metrics_observe_cached(struct metrics_shard *s, unsigned pair, long tokens);
/* Billed usage of a request served by a backend. */
void metrics_observe_usage(struct metrics_shard *s, enum metrics_route route, unsigned model,
                           unsigned pair, unsigned key, long input, long output, double cost_usd);

/* Appends the Prometheus text exposition (format 0.0.4) of the summed shards. */
int metrics_render(struct buf *out, struct metrics_shard *const *shards, size_t n_shards);
/* Appends tollgate_build_info. */
int metrics_render_build_info(struct buf *out);

/* A label value as interned, escaped for the exposition format ("other" for 0 or unknown).
 * The strings live as long as the process. */
const char *metrics_label_name(enum metrics_label_kind kind, unsigned i);
/* The model half of a (backend, model) pair label. */
const char *metrics_pair_model(unsigned pair);
/* "input" or "output". */
const char *metrics_token_type(int output);

#endif

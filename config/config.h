/* Configuration: loading (YAML or JSON), `${VAR}` substitution, validation, and the
 * read-only snapshot every worker reads. YAML is read by config/yaml.h and ${VAR} expanded by
 * config/expand.h; this module checks the schema and builds the snapshot.
 *
 * A `struct config` is immutable once config_load() returns it. It is shared by all workers
 * and swapped by pointer on SIGHUP; config_ref()/config_unref() keep it alive while any
 * request still uses it (atomic count, the only shared write). */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include "base/log.h"

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct backend_state;
struct backend_price;
struct demand;
struct config_route;

/* Capabilities of a backend model (config/caps.h): CONFIG_CAP_* bits. */
struct config_caps {
    unsigned known;               /* the bits the config declares, supported or not */
    unsigned supported;           /* of those, the supported ones */
    unsigned long context_length; /* tokens; 0 = unknown */
};

struct config_model {
    char *name;                /* what clients send */
    char *upstream;            /* what the backend is sent; NULL = same as name */
    double input_usd_per_mtok; /* static prices; live ones (prices_url) override */
    double output_usd_per_mtok;
    double cached_input_usd_per_mtok; /* cached prompt tokens; < 0: at the input price */
    double usd_per_image;             /* images generated (/v1/images/generations) */
    double usd_per_mchar;             /* per million characters spoken (/v1/audio/speech) */
    double usd_per_audio_second;      /* audio transcribed or translated (/v1/audio/...) */
    struct config_caps caps;          /* what it is declared to support (config/caps.h) */
    struct backend_price *price;      /* live price slot, outlives reloads (routing/backend.h) */
};

struct config_backend {
    char *name;
    char *url;             /* base URL without trailing '/', e.g. http://host:port/v1 */
    char *api_key;         /* NULL when none */
    unsigned max_inflight; /* 0 = no limit */
    char *prices_url;      /* OpenRouter-style /models document with live prices, or NULL */
    char *ca_file;         /* PEM bundle verifying its https URLs; NULL = system store */
    char *provider;        /* gen_ai.provider.name in metrics (default "openai") */
    double prices_refresh_s;
    struct config_model *models;
    size_t n_models;
    /* Headers every upstream request to this backend carries (read-only, shared by workers;
     * a request links its own x-request-id node in front of it). */
    struct curl_slist *headers;
    struct backend_state *state; /* runtime state that outlives config reloads */
};

struct config_key {
    char *name;
    unsigned char sha256[32];
    unsigned metric_key; /* label index (metrics/metrics.h), set by backend_attach() */
};

/* One model name and every (backend, model) pair that serves it. */
struct config_target {
    struct config_backend *backend;
    struct config_model *model;
    unsigned tier; /* a model group's position of its model (0 first); 0 in a model's route */
    const struct config_route *origin; /* the route of the model itself (t->model->name) */
};

struct config_route {
    char *model;
    unsigned metric_model;         /* label index (metrics/metrics.h), set by backend_attach() */
    struct demand *demand;         /* learned shape of its requests (routing/demand.h) */
    struct config_target *targets; /* a model group's: by tier (config/groups.h) */
    size_t n_targets;
    unsigned n_tiers; /* models in a group's chain; 0 or 1 for a plain model */
};

/* model_groups: a public name and its ordered chain of model names. */
struct config_group {
    char *name;
    char **models;
    size_t n_models;
};

struct config_upstream {
    long connect_timeout_ms;
    long first_byte_timeout_ms;
    long idle_timeout_ms;
    long total_timeout_ms;
    size_t max_response_bytes;
    unsigned max_connections_per_backend; /* all workers together; more requests queue */
};

enum config_strategy {
    CONFIG_STRATEGY_CHEAPEST = 0,
    CONFIG_STRATEGY_PRICE_WEIGHTED,
    CONFIG_STRATEGY_LATENCY,
};

struct config_routing {
    enum config_strategy strategy;
    unsigned default_output_tokens;
    unsigned retries; /* further tries after a failure before the first byte (another node, else the
                         same one after a backoff) */
    long deadline_ms; /* no new attempt starts later than this after the request came */
    double tie_tolerance; /* estimates within this fraction of the cheapest are a tie */
    /* Learned concurrency limits (routing/limiter.h). */
    unsigned limit_initial;      /* a node's limit once it answered (before that, 1) */
    unsigned limit_max;          /* the learned limit never grows past this */
    double limit_backoff;        /* a 429 multiplies the limit by this */
    double limit_latency_factor; /* slow first bytes (× the usual) shrink it; 0 = off */
    long rate_limit_pause_ms;    /* a 429 with a retry-after this long takes the node out */
    long queue_ms; /* with every node at its limit, a request waits this long for a slot */
    /* Usage honesty (routing/honesty.h). */
    double honesty_tolerance; /* flagged above this × the peers' usage ratio */
    unsigned honesty_min_samples;
};

struct config_health {
    long interval_ms; /* active probe period */
    long timeout_ms;
    unsigned eject_after_failures;
    long cooldown_ms; /* first ejection; doubles on each repeat */
    long max_cooldown_ms;
    /* Stuck nodes (routing/stuck.h): no first byte after stuck_factor × the node's recent
     * p95 time to first byte (at least stuck_min_ms) suspects it; 0 = off. */
    double stuck_factor;
    long stuck_min_ms;
    long slow_start_ms; /* a node back from an ejection ramps up over this long; 0 = off */
};

enum config_cache_mode { CONFIG_CACHE_DETERMINISTIC = 0, CONFIG_CACHE_ALL, CONFIG_CACHE_OFF };

struct config_cache {
    enum config_cache_mode mode;
    long ttl_s;
    size_t max_bytes; /* all workers together */
    size_t max_entry_bytes;
    bool global;           /* scope: shared by all keys (default: per key) */
    long coalesce_wait_ms; /* identical misses wait this long for the first; 0 = never */
};

/* Traces over OTLP/HTTP (config/tracing.c). */
struct config_tracing {
    char *otlp_endpoint; /* NULL: no spans (a caller's traceparent is still passed on) */
    char **headers;      /* "Name: value" lines sent to the collector; NULL-terminated */
    size_t n_headers;
    double sample_ratio; /* of new traces; a caller's sampled flag decides for its trace */
    char *service_name;
    /* Resource attributes: name, value, name, value...; NULL-terminated. */
    char **resource;
    size_t n_resource; /* pairs */
    long timeout_ms;   /* one export to the collector */
};

struct config {
    char *listen;
    unsigned workers; /* resolved: never 0 */
    unsigned max_connections;
    unsigned client_header_timeout_ms; /* a request's header, from open or idle; 0 = none */
    unsigned client_body_timeout_ms;   /* its body, from the header; 0 = none */
    size_t connection_memory_bytes;
    size_t max_body_bytes;
    size_t max_upload_bytes; /* a multipart upload, spooled (base/spool.h) */
    unsigned drain_timeout_ms;
    enum log_level log_level;
    struct config_upstream upstream;
    struct config_key *keys;
    size_t n_keys;
    struct config_backend *backends;
    size_t n_backends;
    struct config_route *routes; /* sorted by model name; model groups included */
    size_t n_routes;
    struct config_group *groups; /* model_groups as written (config/groups.h) */
    size_t n_groups;
    struct config_routing routing;
    struct config_health health;
    struct config_cache cache;
    struct config_tracing tracing;
    bool metrics_enabled; /* metrics.enabled: false leaves the counters alone */
    char *admin_listen;   /* NULL: no admin listener */
    char *admin_key;      /* Bearer token for the admin listener */
    char *redis_url;      /* NULL when not configured */
    char *spool_dir;      /* where usage records wait while Redis is unreachable */
    char *source;         /* file it came from */
    atomic_int refs;
    /* Usage records in spool files, and those the spool cannot take held in memory: bytes,
     * all workers together. */
    size_t spool_max_bytes, spool_memory_bytes;
};

/* Parse and validate a config file. On failure returns NULL and sets *errors to a malloc'd
 * text with one "path: problem" line per problem (caller frees). */
struct config *config_load(const char *path, char **errors);
/* Same, from a string already in memory (`name` is used in messages). */
struct config *config_load_string(const char *text, size_t len, const char *name, char **errors);

/* "cheapest", "price-weighted" or "latency"; 0, or -1 for another name. */
int config_parse_strategy(const char *name, enum config_strategy *out);

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* The route for a model name, or NULL. Thread-safe (read-only). */
const struct config_route *config_find_route(const struct config *cfg, const char *model);

#endif

/* Configuration: loading (YAML or JSON), `${VAR}` substitution, validation, and the
 * read-only snapshot every worker reads.
 *
 * A `struct config` is immutable once config_load() returns it. It is shared by all workers
 * and swapped by pointer on SIGHUP; config_ref()/config_unref() keep it alive while any
 * request still uses it (atomic count, the only shared write). */
#ifndef TOLLGATE_CONFIG_H
#define TOLLGATE_CONFIG_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

struct backend_state;

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

struct config_model {
    char *name;     /* what clients send */
    char *upstream; /* what the backend is sent; NULL = same as name */
    double input_usd_per_mtok;
    double output_usd_per_mtok;
};

struct config_backend {
    char *name;
    char *url;     /* base URL without trailing '/', e.g. http://host:port/v1 */
    char *api_key; /* NULL when none */
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
};

/* One model name and every (backend, model) pair that serves it. */
struct config_target {
    struct config_backend *backend;
    struct config_model *model;
};

struct config_route {
    char *model;
    struct config_target *targets;
    size_t n_targets;
};

struct config_upstream {
    long connect_timeout_ms;
    long first_byte_timeout_ms;
    long idle_timeout_ms;
    long total_timeout_ms;
    size_t max_response_bytes;
};

struct config {
    char *listen;
    unsigned workers; /* resolved: never 0 */
    unsigned max_connections;
    size_t connection_memory_bytes;
    size_t max_body_bytes;
    unsigned drain_timeout_ms;
    enum log_level log_level;
    struct config_upstream upstream;
    struct config_key *keys;
    size_t n_keys;
    struct config_backend *backends;
    size_t n_backends;
    struct config_route *routes; /* sorted by model name */
    size_t n_routes;
    char *redis_url; /* NULL when not configured */
    char *source;    /* file it came from */
    atomic_int refs;
};

/* Parse and validate a config file. On failure returns NULL and sets *errors to a malloc'd
 * text with one "path: problem" line per problem (caller frees). */
struct config *config_load(const char *path, char **errors);
/* Same, from a string already in memory (`name` is used in messages). */
struct config *config_load_string(const char *text, size_t len, const char *name,
                                  char **errors);

struct config *config_ref(struct config *cfg);
void config_unref(struct config *cfg);

/* The route for a model name, or NULL. Thread-safe (read-only). */
const struct config_route *config_find_route(const struct config *cfg, const char *model);

/* Replace ${VAR} and ${VAR:-default} in `in` from the environment. Returns a malloc'd string,
 * or NULL with *missing set to the first unset variable's name (malloc'd) or NULL on OOM. */
char *config_expand_env(const char *in, char **missing);

#endif

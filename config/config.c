#include "config/config.h"

#include "base/buf.h"
#include "base/digest.h"
#include "config/schema.h"
#include "config/yaml.h"
#include "redis/redis.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_FILE_BYTES (4u << 20)

/* ---- building the config ----------------------------------------------------------------- */

static void parse_keys(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"name", "key", "sha256", NULL};
    json_t *arr = config_get_arr(ctx, root, "keys", "");
    if (!arr)
        return;
    cfg->keys = calloc(json_array_size(arr) + 1, sizeof *cfg->keys);
    size_t i;
    json_t *item;
    json_array_foreach (arr, i, item) {
        char path[64];
        snprintf(path, sizeof path, "keys[%zu]", i);
        if (!json_is_object(item)) {
            config_problem(ctx, path, "must be a mapping with name and key or sha256");
            continue;
        }
        config_check_keys(ctx, item, path, allowed);
        struct config_key *k = &cfg->keys[cfg->n_keys];
        k->name = config_get_str(ctx, item, "name", path, true);
        char *key = config_get_str(ctx, item, "key", path, false);
        char *hex = config_get_str(ctx, item, "sha256", path, false);
        char p[96];
        if (key && hex) {
            snprintf(p, sizeof p, "%s", path);
            config_problem(ctx, p, "give either key or sha256, not both");
        } else if (key) {
            if (!*key) {
                snprintf(p, sizeof p, "%s.key", path);
                config_problem(ctx, p, "must not be empty");
            }
            digest_sha256(key, strlen(key), k->sha256);
        } else if (hex) {
            if (config_hex_to_bytes(hex, k->sha256, 32)) {
                snprintf(p, sizeof p, "%s.sha256", path);
                config_problem(ctx, p, "must be 64 hex digits");
            }
        } else {
            config_problem(ctx, path, "needs key or sha256");
        }
        if (key) {
            explicit_bzero(key, strlen(key));
            free(key);
        }
        free(hex);
        for (size_t j = 0; k->name && j < cfg->n_keys; j++)
            if (cfg->keys[j].name && !strcmp(cfg->keys[j].name, k->name)) {
                snprintf(p, sizeof p, "%s.name", path);
                config_problem(ctx, p, "duplicate key name \"%s\"", k->name);
            }
        cfg->n_keys++;
    }
}

static void parse_upstream(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"connect_timeout_ms",
                                          "first_byte_timeout_ms",
                                          "idle_timeout_ms",
                                          "total_timeout_ms",
                                          "max_response_bytes",
                                          "max_connections_per_backend",
                                          NULL};
    struct config_upstream *u = &cfg->upstream;
    u->connect_timeout_ms = 2000;
    u->first_byte_timeout_ms = 60000;
    u->idle_timeout_ms = 60000;
    u->total_timeout_ms = 600000;
    u->max_response_bytes = 32u << 20;
    u->max_connections_per_backend = 1024;
    json_t *o = config_get_obj(ctx, root, "upstream", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "upstream", allowed);
    u->connect_timeout_ms = (long)config_get_num(ctx, o, "connect_timeout_ms", "upstream", 1,
                                                 600000, 2000, false, true);
    u->first_byte_timeout_ms = (long)config_get_num(ctx, o, "first_byte_timeout_ms", "upstream", 1,
                                                    3600000, 60000, false, true);
    u->idle_timeout_ms =
        (long)config_get_num(ctx, o, "idle_timeout_ms", "upstream", 1, 3600000, 60000, false, true);
    u->total_timeout_ms = (long)config_get_num(ctx, o, "total_timeout_ms", "upstream", 1, 86400000,
                                               600000, false, true);
    u->max_response_bytes = (size_t)config_get_num(ctx, o, "max_response_bytes", "upstream", 1024,
                                                   1 << 30, 32u << 20, false, true);
    u->max_connections_per_backend = (unsigned)config_get_num(
        ctx, o, "max_connections_per_backend", "upstream", 1, 1000000, 1024, false, true);
}

static void parse_redis(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"url", NULL};
    json_t *o = config_get_obj(ctx, root, "redis", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "redis", allowed);
    cfg->redis_url = config_get_str(ctx, o, "url", "redis", false);
    if (cfg->redis_url && !*cfg->redis_url) {
        free(cfg->redis_url);
        cfg->redis_url = NULL;
    } else if (cfg->redis_url) {
        struct redis_url parsed;
        char why[160];
        if (redis_parse_url(cfg->redis_url, &parsed, why, sizeof why))
            config_problem(ctx, "redis.url", "%s", why);
        explicit_bzero(&parsed, sizeof parsed); /* it may hold the password */
    }
}

static void parse_routing(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"strategy",
                                          "default_output_tokens",
                                          "retries",
                                          "deadline_ms",
                                          "tie_tolerance",
                                          "limit_initial",
                                          "limit_max",
                                          "limit_backoff",
                                          "limit_latency_factor",
                                          "rate_limit_pause_ms",
                                          "queue_ms",
                                          "honesty_tolerance",
                                          "honesty_min_samples",
                                          NULL};
    struct config_routing *r = &cfg->routing;
    r->strategy = CONFIG_STRATEGY_CHEAPEST;
    r->default_output_tokens = 256;
    r->retries = 2;
    r->deadline_ms = 30000;
    r->tie_tolerance = 0.01;
    r->limit_initial = 8;
    r->limit_max = 1000;
    r->limit_backoff = 0.9;
    r->limit_latency_factor = 3;
    r->rate_limit_pause_ms = 5000;
    r->queue_ms = 1000;
    r->honesty_tolerance = 1.5;
    r->honesty_min_samples = 5;
    json_t *o = config_get_obj(ctx, root, "routing", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "routing", allowed);
    char *strategy = config_get_str(ctx, o, "strategy", "routing", false);
    if (strategy) {
        if (config_parse_strategy(strategy, &r->strategy))
            config_problem(ctx, "routing.strategy",
                           "must be one of cheapest, price-weighted, latency");
        free(strategy);
    }
    r->default_output_tokens = (unsigned)config_get_num(ctx, o, "default_output_tokens", "routing",
                                                        0, 10000000, 256, false, true);
    r->retries = (unsigned)config_get_num(ctx, o, "retries", "routing", 0, 10, 2, false, true);
    r->deadline_ms =
        (long)config_get_num(ctx, o, "deadline_ms", "routing", 1, 3600000, 30000, false, true);
    r->tie_tolerance = config_get_num(ctx, o, "tie_tolerance", "routing", 0, 1, 0.01, false, false);
    r->limit_initial =
        (unsigned)config_get_num(ctx, o, "limit_initial", "routing", 1, 1000000, 8, false, true);
    r->limit_max =
        (unsigned)config_get_num(ctx, o, "limit_max", "routing", 1, 1000000, 1000, false, true);
    if (r->limit_max < r->limit_initial)
        config_problem(ctx, "routing.limit_max", "must be at least routing.limit_initial");
    r->limit_backoff =
        config_get_num(ctx, o, "limit_backoff", "routing", 0.1, 0.99, 0.9, false, false);
    r->limit_latency_factor =
        config_get_num(ctx, o, "limit_latency_factor", "routing", 0, 1000, 3, false, false);
    if (r->limit_latency_factor > 0 && r->limit_latency_factor < 1.5)
        config_problem(ctx, "routing.limit_latency_factor", "must be 0 (off) or at least 1.5");
    r->rate_limit_pause_ms = (long)config_get_num(ctx, o, "rate_limit_pause_ms", "routing", 0,
                                                  86400000, 5000, false, true);
    r->queue_ms =
        (long)config_get_num(ctx, o, "queue_ms", "routing", 0, 3600000, 1000, false, true);
    r->honesty_tolerance =
        config_get_num(ctx, o, "honesty_tolerance", "routing", 1.05, 1000, 1.5, false, false);
    r->honesty_min_samples = (unsigned)config_get_num(ctx, o, "honesty_min_samples", "routing", 1,
                                                      100000, 5, false, true);
}

static void parse_health(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"interval_ms",  "timeout_ms",      "eject_after_failures",
                                          "cooldown_ms",  "max_cooldown_ms", "stuck_factor",
                                          "stuck_min_ms", "slow_start_ms",   NULL};
    struct config_health *h = &cfg->health;
    h->interval_ms = 5000;
    h->timeout_ms = 2000;
    h->eject_after_failures = 3;
    h->cooldown_ms = 10000;
    h->max_cooldown_ms = 300000;
    h->stuck_factor = 2;
    h->stuck_min_ms = 250;
    h->slow_start_ms = 3000;
    json_t *o = config_get_obj(ctx, root, "health", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "health", allowed);
    h->interval_ms =
        (long)config_get_num(ctx, o, "interval_ms", "health", 50, 3600000, 5000, false, true);
    h->timeout_ms =
        (long)config_get_num(ctx, o, "timeout_ms", "health", 10, 600000, 2000, false, true);
    h->eject_after_failures =
        (unsigned)config_get_num(ctx, o, "eject_after_failures", "health", 1, 1000, 3, false, true);
    h->cooldown_ms =
        (long)config_get_num(ctx, o, "cooldown_ms", "health", 1, 86400000, 10000, false, true);
    h->max_cooldown_ms =
        (long)config_get_num(ctx, o, "max_cooldown_ms", "health", 1, 86400000, 300000, false, true);
    if (h->max_cooldown_ms < h->cooldown_ms)
        h->max_cooldown_ms = h->cooldown_ms;
    h->stuck_factor = config_get_num(ctx, o, "stuck_factor", "health", 0, 1000, 2, false, false);
    if (h->stuck_factor > 0 && h->stuck_factor < 1)
        config_problem(ctx, "health.stuck_factor", "must be 0 (off) or at least 1");
    h->stuck_min_ms =
        (long)config_get_num(ctx, o, "stuck_min_ms", "health", 1, 3600000, 250, false, true);
    h->slow_start_ms =
        (long)config_get_num(ctx, o, "slow_start_ms", "health", 0, 3600000, 3000, false, true);
}

static void parse_cache(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {
        "mode", "ttl_s", "max_bytes", "max_entry_bytes", "scope", "coalesce_wait_ms", NULL};
    struct config_cache *c = &cfg->cache;
    c->mode = CONFIG_CACHE_DETERMINISTIC;
    c->ttl_s = 3600;
    c->max_bytes = 64u << 20;
    c->max_entry_bytes = 1u << 20;
    c->global = false;
    c->coalesce_wait_ms = 30000;
    json_t *o = config_get_obj(ctx, root, "cache", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "cache", allowed);
    char *mode = config_get_str(ctx, o, "mode", "cache", false);
    if (mode) {
        if (!strcmp(mode, "deterministic"))
            c->mode = CONFIG_CACHE_DETERMINISTIC;
        else if (!strcmp(mode, "all"))
            c->mode = CONFIG_CACHE_ALL;
        else if (!strcmp(mode, "off"))
            c->mode = CONFIG_CACHE_OFF;
        else
            config_problem(ctx, "cache.mode", "must be one of deterministic, all, off");
        free(mode);
    }
    c->ttl_s = (long)config_get_num(ctx, o, "ttl_s", "cache", 1, 31536000, 3600, false, true);
    c->max_bytes =
        (size_t)config_get_num(ctx, o, "max_bytes", "cache", 0, 1e12, 64u << 20, false, true);
    c->max_entry_bytes = (size_t)config_get_num(ctx, o, "max_entry_bytes", "cache", 1, 1 << 30,
                                                1u << 20, false, true);
    c->coalesce_wait_ms =
        (long)config_get_num(ctx, o, "coalesce_wait_ms", "cache", 0, 3600000, 30000, false, true);
    char *scope = config_get_str(ctx, o, "scope", "cache", false);
    if (scope) {
        if (!strcmp(scope, "global"))
            c->global = true;
        else if (strcmp(scope, "key"))
            config_problem(ctx, "cache.scope", "must be key or global");
        free(scope);
    }
}

static void parse_metrics(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"enabled", NULL};
    cfg->metrics_enabled = true;
    json_t *o = config_get_obj(ctx, root, "metrics", "");
    if (!o)
        return;
    config_check_keys(ctx, o, "metrics", allowed);
    json_t *v = json_object_get(o, "enabled");
    if (v && !json_is_boolean(v))
        config_problem(ctx, "metrics.enabled", "must be true or false");
    else if (v)
        cfg->metrics_enabled = json_is_true(v);
}

int config_parse_strategy(const char *name, enum config_strategy *out)
{
    static const char *const names[] = {"cheapest", "price-weighted", "latency"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *out = (enum config_strategy)i;
            return 0;
        }
    return -1;
}

static int route_cmp(const void *a, const void *b)
{
    const struct config_route *ra = a, *rb = b;
    return strcmp(ra->model, rb->model);
}

static int build_routes(struct config *cfg)
{
    size_t total = 0;
    for (size_t i = 0; i < cfg->n_backends; i++)
        total += cfg->backends[i].n_models;
    cfg->routes = calloc(total + 1, sizeof *cfg->routes);
    if (!cfg->routes)
        return -1;
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct config_backend *b = &cfg->backends[i];
        for (size_t j = 0; j < b->n_models; j++) {
            struct config_model *m = &b->models[j];
            struct config_route *r = NULL;
            for (size_t k = 0; k < cfg->n_routes; k++)
                if (!strcmp(cfg->routes[k].model, m->name))
                    r = &cfg->routes[k];
            if (!r) {
                r = &cfg->routes[cfg->n_routes++];
                r->model = strdup(m->name);
                r->targets = calloc(cfg->n_backends, sizeof *r->targets);
                if (!r->model || !r->targets)
                    return -1;
            }
            r->targets[r->n_targets].backend = b;
            r->targets[r->n_targets].model = m;
            r->n_targets++;
        }
    }
    qsort(cfg->routes, cfg->n_routes, sizeof *cfg->routes, route_cmp);
    return 0;
}

static int build_headers(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct config_backend *b = &cfg->backends[i];
        struct curl_slist *h = NULL, *t;
#define HDR(s)                                                                                     \
    do {                                                                                           \
        if (!(t = curl_slist_append(h, (s))))                                                      \
            goto err;                                                                              \
        h = t;                                                                                     \
    } while (0)
        HDR("Content-Type: application/json");
        HDR("Expect:"); /* no 100-continue round trip */
        HDR("User-Agent: tollgate/" TOLLGATE_VERSION);
        if (b->api_key) {
            char *line = NULL;
            if (asprintf(&line, "Authorization: Bearer %s", b->api_key) < 0)
                goto err;
            t = curl_slist_append(h, line);
            explicit_bzero(line, strlen(line));
            free(line);
            if (!t)
                goto err;
            h = t;
        }
#undef HDR
        b->headers = h;
        continue;
    err:
        curl_slist_free_all(h);
        return -1;
    }
    return 0;
}

static void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    free(cfg->listen);
    free(cfg->redis_url);
    free(cfg->spool_dir);
    free(cfg->admin_listen);
    if (cfg->admin_key) {
        explicit_bzero(cfg->admin_key, strlen(cfg->admin_key));
        free(cfg->admin_key);
    }
    free(cfg->source);
    for (size_t i = 0; i < cfg->n_keys; i++)
        free(cfg->keys[i].name);
    free(cfg->keys);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct config_backend *b = &cfg->backends[i];
        free(b->name);
        free(b->url);
        free(b->ca_file);
        free(b->provider);
        if (b->api_key) {
            explicit_bzero(b->api_key, strlen(b->api_key));
            free(b->api_key);
        }
        for (size_t j = 0; j < b->n_models; j++) {
            free(b->models[j].name);
            free(b->models[j].upstream);
        }
        free(b->models);
        free(b->prices_url);
        curl_slist_free_all(b->headers);
    }
    free(cfg->backends);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        free(cfg->routes[i].model);
        free(cfg->routes[i].targets);
    }
    free(cfg->routes);
    config_free_groups(cfg);
    config_free_tracing(cfg);
    free(cfg);
}

static struct config *config_build(json_t *root, struct config_problems *ctx)
{
    static const char *const allowed[] = {"listen",
                                          "workers",
                                          "max_connections",
                                          "client_header_timeout_ms",
                                          "client_body_timeout_ms",
                                          "connection_memory_bytes",
                                          "max_body_bytes",
                                          "max_upload_bytes",
                                          "drain_timeout_ms",
                                          "log_level",
                                          "upstream",
                                          "keys",
                                          "backends",
                                          "model_groups",
                                          "redis",
                                          "routing",
                                          "health",
                                          "admin_listen",
                                          "admin_key",
                                          "spool_dir",
                                          "spool_max_bytes",
                                          "spool_memory_bytes",
                                          "cache",
                                          "metrics",
                                          "tracing",
                                          NULL};
    struct config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return NULL;
    atomic_init(&cfg->refs, 1);
    if (!json_is_object(root)) {
        config_problem(ctx, "(root)", "must be a mapping");
        return cfg;
    }
    config_check_keys(ctx, root, "", allowed);
    cfg->listen = config_get_str(ctx, root, "listen", "", false);
    if (!cfg->listen)
        cfg->listen = strdup("127.0.0.1:8080");
    const char *env_listen = getenv("TOLLGATE_LISTEN");
    if (env_listen && *env_listen) {
        free(cfg->listen);
        cfg->listen = strdup(env_listen);
    }
    if (!strrchr(cfg->listen, ':'))
        config_problem(ctx, "listen", "must be host:port");
    cfg->workers = (unsigned)config_get_num(ctx, root, "workers", "", 0, 256, 0, false, true);
    if (cfg->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (unsigned)n : 1;
    }
    cfg->max_connections =
        (unsigned)config_get_num(ctx, root, "max_connections", "", 1, 1000000, 16384, false, true);
    cfg->client_header_timeout_ms = (unsigned)config_get_num(ctx, root, "client_header_timeout_ms",
                                                             "", 0, 3600000, 60000, false, true);
    cfg->client_body_timeout_ms = (unsigned)config_get_num(ctx, root, "client_body_timeout_ms", "",
                                                           0, 3600000, 60000, false, true);
    /* MHD clears a connection's memory for every request: keep it to what headers need. */
    cfg->connection_memory_bytes = (size_t)config_get_num(ctx, root, "connection_memory_bytes", "",
                                                          4096, 1 << 24, 16384, false, true);
    cfg->max_body_bytes =
        (size_t)config_get_num(ctx, root, "max_body_bytes", "", 1, 1 << 30, 8u << 20, false, true);
    /* Uploads (multipart, /v1/audio/transcriptions) are spooled, not held: OpenAI's 25 MiB. */
    cfg->max_upload_bytes = (size_t)config_get_num(ctx, root, "max_upload_bytes", "", 1, 1LL << 32,
                                                   25u << 20, false, true);
    cfg->drain_timeout_ms =
        (unsigned)config_get_num(ctx, root, "drain_timeout_ms", "", 0, 3600000, 10000, false, true);
    char *level = config_get_str(ctx, root, "log_level", "", false);
    cfg->log_level = LOG_INFO;
    if (level) {
        static const char *const names[] = {"debug", "info", "warn", "error", "off"};
        bool ok = false;
        for (int i = 0; i < 5; i++)
            if (!strcmp(level, names[i])) {
                cfg->log_level = (enum log_level)i;
                ok = true;
            }
        if (!ok)
            config_problem(ctx, "log_level", "must be one of debug, info, warn, error, off");
        free(level);
    }
    parse_upstream(ctx, cfg, root);
    parse_keys(ctx, cfg, root);
    config_parse_backends(ctx, cfg, root);
    config_parse_groups(ctx, cfg, root);
    parse_redis(ctx, cfg, root);
    parse_routing(ctx, cfg, root);
    parse_health(ctx, cfg, root);
    parse_cache(ctx, cfg, root);
    parse_metrics(ctx, cfg, root);
    config_parse_tracing(ctx, cfg, root);
    cfg->spool_dir = config_get_str(ctx, root, "spool_dir", "", false);
    if (!cfg->spool_dir || !*cfg->spool_dir) {
        free(cfg->spool_dir);
        cfg->spool_dir = strdup("/var/tmp");
    }
    cfg->spool_max_bytes = (size_t)config_get_num(
        ctx, root, "spool_max_bytes", "", 0, (double)(1ll << 40), (double)(1ll << 30), false, true);
    cfg->spool_memory_bytes = (size_t)config_get_num(ctx, root, "spool_memory_bytes", "", 0,
                                                     (double)(1ll << 36), 16u << 20, false, true);
    cfg->admin_listen = config_get_str(ctx, root, "admin_listen", "", false);
    cfg->admin_key = config_get_str(ctx, root, "admin_key", "", false);
    if (cfg->admin_listen && !*cfg->admin_listen) {
        free(cfg->admin_listen);
        cfg->admin_listen = NULL;
    }
    if (cfg->admin_listen && !strrchr(cfg->admin_listen, ':'))
        config_problem(ctx, "admin_listen", "must be host:port");
    if (cfg->admin_listen && (!cfg->admin_key || strlen(cfg->admin_key) < 16))
        config_problem(ctx, "admin_key", "is required with admin_listen, at least 16 characters");
    return cfg;
}

struct config *config_load_string(const char *text, size_t len, const char *name, char **errors)
{
    struct buf problem_text;
    buf_init(&problem_text, 1 << 20);
    struct config_problems ctx = {.text = &problem_text, .count = 0};
    *errors = NULL;

    const char *p = text;
    while (p < text + len && isspace((unsigned char)*p))
        p++;
    size_t nlen = name ? strlen(name) : 0;
    bool is_json = (p < text + len && *p == '{') || (nlen > 5 && !strcmp(name + nlen - 5, ".json"));
    json_t *root;
    if (is_json) {
        json_error_t jerr;
        root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!root) {
            char where[64];
            snprintf(where, sizeof where, "line %d column %d", jerr.line, jerr.column);
            config_problem(&ctx, where, "JSON syntax error: %s", jerr.text);
        }
    } else {
        root = config_yaml_to_json(text, len, &ctx);
    }
    struct config *cfg = NULL;
    if (root) {
        cfg = config_build(root, &ctx);
        json_decref(root);
    }
    if (cfg && !ctx.count &&
        (build_routes(cfg) || config_build_groups(&ctx, cfg) || build_headers(cfg)))
        config_problem(&ctx, "(root)", "out of memory");
    if (cfg && !ctx.count)
        cfg->source = strdup(name ? name : "-");
    if (ctx.count || !cfg) {
        config_free(cfg);
        if (!ctx.count)
            config_problem(&ctx, "(root)", "out of memory");
        *errors = buf_steal(&problem_text, NULL);
        return NULL;
    }
    buf_free(&problem_text);
    return cfg;
}

struct config *config_load(const char *path, char **errors)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (asprintf(errors, "%s: cannot open: %s\n", path, strerror(errno)) < 0)
            *errors = NULL;
        return NULL;
    }
    struct buf text;
    buf_init(&text, CONFIG_MAX_FILE_BYTES);
    char chunk[8192];
    size_t n;
    int result = BUF_OK;
    while (result == BUF_OK && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        result = buf_append(&text, chunk, n);
    bool failed = ferror(f);
    fclose(f);
    if (result || failed) {
        if (asprintf(errors, "%s: %s\n", path,
                     result == BUF_ETOOBIG ? "file is larger than 4 MiB" : "read error") < 0)
            *errors = NULL;
        buf_free(&text);
        return NULL;
    }
    struct config *cfg = config_load_string(text.data ? text.data : "", text.len, path, errors);
    buf_free(&text);
    return cfg;
}

struct config *config_ref(struct config *cfg)
{
    atomic_fetch_add_explicit(&cfg->refs, 1, memory_order_relaxed);
    return cfg;
}

void config_unref(struct config *cfg)
{
    if (cfg && atomic_fetch_sub_explicit(&cfg->refs, 1, memory_order_acq_rel) == 1)
        config_free(cfg);
}

const struct config_route *config_find_route(const struct config *cfg, const char *model)
{
    size_t lo = 0, hi = cfg->n_routes;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int c = strcmp(model, cfg->routes[mid].model);
        if (c == 0)
            return &cfg->routes[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

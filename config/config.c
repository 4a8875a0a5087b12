#include "config/config.h"

#include "base/buf.h"
#include "base/digest.h"
#include "config/expand.h"
#include "config/yaml.h"
#include "redis/redis.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CONFIG_MAX_FILE_BYTES (4u << 20)

/* Collected problems: every one is reported, not just the first. */
struct cfg_ctx {
    struct buf errors;
    unsigned n_errors;
};

static void cfg_error(struct cfg_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cfg_error(struct cfg_ctx *ctx, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_printf(&ctx->errors, "%s: %s\n", path && *path ? path : "(root)", msg);
    ctx->n_errors++;
}

/* ---- typed accessors with paths ---------------------------------------------------------- */

static void path_join(char *out, size_t n, const char *base, const char *key)
{
    if (base && *base)
        snprintf(out, n, "%s.%s", base, key);
    else
        snprintf(out, n, "%s", key);
}

static void check_keys(struct cfg_ctx *ctx, json_t *obj, const char *path,
                       const char *const *allowed)
{
    const char *key;
    json_t *v;
    json_object_foreach (obj, key, v) {
        bool ok = false;
        for (const char *const *a = allowed; *a; a++)
            if (!strcmp(*a, key))
                ok = true;
        if (!ok) {
            char p[256];
            path_join(p, sizeof p, path, key);
            cfg_error(ctx, p, "unknown key");
        }
    }
}

/* A string field (env-expanded). Returns a malloc'd string, or NULL when absent/invalid. */
static char *get_str(struct cfg_ctx *ctx, json_t *obj, const char *key, const char *path,
                     bool required)
{
    char p[256];
    path_join(p, sizeof p, path, key);
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            cfg_error(ctx, p, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        cfg_error(ctx, p, "must be a string");
        return NULL;
    }
    char *missing = NULL;
    char *out = config_expand_env(json_string_value(v), &missing);
    if (!out) {
        if (missing)
            cfg_error(ctx, p, "environment variable %s is not set", missing);
        else
            cfg_error(ctx, p, "out of memory");
        free(missing);
    }
    return out;
}

/* A number field: a JSON number, or a string that expands to one. */
static double get_num(struct cfg_ctx *ctx, json_t *obj, const char *key, const char *path,
                      double min, double max, double def, bool required, bool integer)
{
    char p[256];
    path_join(p, sizeof p, path, key);
    json_t *v = json_object_get(obj, key);
    double d;
    if (!v || json_is_null(v)) {
        if (required)
            cfg_error(ctx, p, "is required");
        return def;
    }
    if (json_is_number(v)) {
        d = json_number_value(v);
    } else if (json_is_string(v)) {
        char *s = get_str(ctx, obj, key, path, true);
        if (!s)
            return def;
        char *end;
        errno = 0;
        d = strtod(s, &end);
        bool bad = !*s || *end || errno;
        free(s);
        if (bad) {
            cfg_error(ctx, p, "must be a number");
            return def;
        }
    } else {
        cfg_error(ctx, p, "must be a number");
        return def;
    }
    if (!isfinite(d) || d < min || d > max || (integer && d != floor(d))) {
        if (max >= 1e15)
            cfg_error(ctx, p, "must be %s >= %.15g", integer ? "an integer" : "a number", min);
        else
            cfg_error(ctx, p, "must be %s between %.15g and %.15g",
                      integer ? "an integer" : "a number", min, max);
        return def;
    }
    return d;
}

static json_t *get_obj(struct cfg_ctx *ctx, json_t *root, const char *key, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_object(v)) {
        char p[256];
        path_join(p, sizeof p, path, key);
        cfg_error(ctx, p, "must be a mapping");
        return NULL;
    }
    return v;
}

static json_t *get_arr(struct cfg_ctx *ctx, json_t *root, const char *key, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_array(v)) {
        char p[256];
        path_join(p, sizeof p, path, key);
        cfg_error(ctx, p, "must be a list");
        return NULL;
    }
    return v;
}

/* ---- building the config ----------------------------------------------------------------- */

static int hex_to_bytes(const char *hex, unsigned char *out, size_t n)
{
    if (strlen(hex) != n * 2)
        return -1;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        if (!isxdigit((unsigned char)hex[2 * i]) || !isxdigit((unsigned char)hex[2 * i + 1]) ||
            sscanf(hex + 2 * i, "%2x", &v) != 1)
            return -1;
        out[i] = (unsigned char)v;
    }
    return 0;
}

static void parse_keys(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"name", "key", "sha256", NULL};
    json_t *arr = get_arr(ctx, root, "keys", "");
    if (!arr)
        return;
    cfg->keys = calloc(json_array_size(arr) + 1, sizeof *cfg->keys);
    size_t i;
    json_t *item;
    json_array_foreach (arr, i, item) {
        char path[64];
        snprintf(path, sizeof path, "keys[%zu]", i);
        if (!json_is_object(item)) {
            cfg_error(ctx, path, "must be a mapping with name and key or sha256");
            continue;
        }
        check_keys(ctx, item, path, allowed);
        struct config_key *k = &cfg->keys[cfg->n_keys];
        k->name = get_str(ctx, item, "name", path, true);
        char *key = get_str(ctx, item, "key", path, false);
        char *hex = get_str(ctx, item, "sha256", path, false);
        char p[96];
        if (key && hex) {
            snprintf(p, sizeof p, "%s", path);
            cfg_error(ctx, p, "give either key or sha256, not both");
        } else if (key) {
            if (!*key) {
                snprintf(p, sizeof p, "%s.key", path);
                cfg_error(ctx, p, "must not be empty");
            }
            digest_sha256(key, strlen(key), k->sha256);
        } else if (hex) {
            if (hex_to_bytes(hex, k->sha256, 32)) {
                snprintf(p, sizeof p, "%s.sha256", path);
                cfg_error(ctx, p, "must be 64 hex digits");
            }
        } else {
            cfg_error(ctx, path, "needs key or sha256");
        }
        if (key) {
            explicit_bzero(key, strlen(key));
            free(key);
        }
        free(hex);
        for (size_t j = 0; k->name && j < cfg->n_keys; j++)
            if (cfg->keys[j].name && !strcmp(cfg->keys[j].name, k->name)) {
                snprintf(p, sizeof p, "%s.name", path);
                cfg_error(ctx, p, "duplicate key name \"%s\"", k->name);
            }
        cfg->n_keys++;
    }
}

static void parse_models(struct cfg_ctx *ctx, struct config_backend *b, json_t *item,
                         const char *bpath)
{
    static const char *const allowed[] = {"name", "upstream", "input_usd_per_mtok",
                                          "output_usd_per_mtok", NULL};
    char path[128];
    snprintf(path, sizeof path, "%s.models", bpath);
    json_t *arr = get_arr(ctx, item, "models", bpath);
    if (!arr || json_array_size(arr) == 0) {
        /* Absent, null ("models:" with nothing after it) or []; get_arr said so for a non-list. */
        json_t *v = json_object_get(item, "models");
        if (!v || json_is_null(v) || arr)
            cfg_error(ctx, path, "must list at least one model");
        return;
    }
    b->models = calloc(json_array_size(arr), sizeof *b->models);
    size_t i;
    json_t *m;
    json_array_foreach (arr, i, m) {
        char mpath[160];
        snprintf(mpath, sizeof mpath, "%s[%zu]", path, i);
        if (!json_is_object(m)) {
            cfg_error(ctx, mpath, "must be a mapping");
            continue;
        }
        check_keys(ctx, m, mpath, allowed);
        struct config_model *cm = &b->models[b->n_models++];
        cm->name = get_str(ctx, m, "name", mpath, true);
        cm->upstream = get_str(ctx, m, "upstream", mpath, false);
        cm->input_usd_per_mtok =
            get_num(ctx, m, "input_usd_per_mtok", mpath, 0, 1e15, 0, true, false);
        cm->output_usd_per_mtok =
            get_num(ctx, m, "output_usd_per_mtok", mpath, 0, 1e15, 0, true, false);
        if (cm->name && !*cm->name) {
            char p[200];
            snprintf(p, sizeof p, "%s.name", mpath);
            cfg_error(ctx, p, "must not be empty");
        }
        for (size_t j = 0; cm->name && j + 1 < b->n_models; j++)
            if (b->models[j].name && !strcmp(b->models[j].name, cm->name)) {
                char p[200];
                snprintf(p, sizeof p, "%s.name", mpath);
                cfg_error(ctx, p, "duplicate model \"%s\" on this backend", cm->name);
            }
    }
}

/* A backend's ca_file: a readable PEM bundle, for a backend with an https URL. */
static void check_ca_file(struct cfg_ctx *ctx, const char *path, const char *file, const char *url)
{
    if (url && strncmp(url, "https://", 8)) {
        cfg_error(ctx, path, "applies only to a backend with an https:// url");
        return;
    }
    FILE *f = fopen(file, "r");
    if (!f) {
        cfg_error(ctx, path, "cannot read %s: %s", file, strerror(errno));
        return;
    }
    /* Enough to find the first certificate of any real bundle. */
    char head[64 * 1024];
    size_t n = fread(head, 1, sizeof head - 1, f);
    fclose(f);
    head[n] = '\0';
    if (!strstr(head, "-----BEGIN CERTIFICATE-----"))
        cfg_error(ctx, path, "%s holds no PEM certificate", file);
}

static void parse_backends(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {
        "name",    "url", "api_key", "models", "max_inflight", "prices_url", "prices_refresh_s",
        "ca_file", NULL};
    json_t *arr = get_arr(ctx, root, "backends", "");
    if (!arr || json_array_size(arr) == 0) {
        json_t *v = json_object_get(root, "backends");
        if (!v || json_is_null(v) || arr)
            cfg_error(ctx, "backends", "must list at least one backend");
        return;
    }
    cfg->backends = calloc(json_array_size(arr), sizeof *cfg->backends);
    size_t i;
    json_t *item;
    json_array_foreach (arr, i, item) {
        char path[64];
        snprintf(path, sizeof path, "backends[%zu]", i);
        if (!json_is_object(item)) {
            cfg_error(ctx, path, "must be a mapping");
            continue;
        }
        check_keys(ctx, item, path, allowed);
        struct config_backend *b = &cfg->backends[cfg->n_backends++];
        b->name = get_str(ctx, item, "name", path, true);
        b->url = get_str(ctx, item, "url", path, true);
        b->api_key = get_str(ctx, item, "api_key", path, false);
        if (b->api_key && !*b->api_key) {
            free(b->api_key); /* an unset optional secret means "no key" */
            b->api_key = NULL;
        }
        b->max_inflight =
            (unsigned)get_num(ctx, item, "max_inflight", path, 0, 1000000, 0, false, true);
        b->prices_url = get_str(ctx, item, "prices_url", path, false);
        if (b->prices_url && !*b->prices_url) {
            free(b->prices_url);
            b->prices_url = NULL;
        }
        if (b->prices_url && strncmp(b->prices_url, "http://", 7) &&
            strncmp(b->prices_url, "https://", 8)) {
            char pp[96];
            snprintf(pp, sizeof pp, "%s.prices_url", path);
            cfg_error(ctx, pp, "must start with http:// or https://");
        }
        b->prices_refresh_s =
            get_num(ctx, item, "prices_refresh_s", path, 0.1, 86400, 300, false, false);
        b->ca_file = get_str(ctx, item, "ca_file", path, false);
        if (b->ca_file && !*b->ca_file) {
            free(b->ca_file);
            b->ca_file = NULL;
        }
        char p[96];
        if (b->ca_file) {
            snprintf(p, sizeof p, "%s.ca_file", path);
            check_ca_file(ctx, p, b->ca_file, b->url);
        }
        if (b->url) {
            size_t n = strlen(b->url);
            while (n > 0 && b->url[n - 1] == '/')
                b->url[--n] = '\0';
            if (n > 900) {
                snprintf(p, sizeof p, "%s.url", path);
                cfg_error(ctx, p, "is longer than 900 characters");
            } else if (strncmp(b->url, "http://", 7) && strncmp(b->url, "https://", 8)) {
                snprintf(p, sizeof p, "%s.url", path);
                cfg_error(ctx, p, "must start with http:// or https://");
            } else if (strpbrk(b->url, " \t\r\n?#")) {
                snprintf(p, sizeof p, "%s.url", path);
                cfg_error(ctx, p, "must be a plain base URL without spaces, query or fragment");
            }
        }
        if (b->name && (!*b->name || strpbrk(b->name, " \t\r\n\"\\"))) {
            snprintf(p, sizeof p, "%s.name", path);
            cfg_error(ctx, p, "must be a non-empty name without spaces or quotes");
        }
        for (size_t j = 0; b->name && j + 1 < cfg->n_backends; j++)
            if (cfg->backends[j].name && !strcmp(cfg->backends[j].name, b->name)) {
                snprintf(p, sizeof p, "%s.name", path);
                cfg_error(ctx, p, "duplicate backend name \"%s\"", b->name);
            }
        parse_models(ctx, b, item, path);
    }
}

static void parse_upstream(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
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
    json_t *o = get_obj(ctx, root, "upstream", "");
    if (!o)
        return;
    check_keys(ctx, o, "upstream", allowed);
    u->connect_timeout_ms =
        (long)get_num(ctx, o, "connect_timeout_ms", "upstream", 1, 600000, 2000, false, true);
    u->first_byte_timeout_ms =
        (long)get_num(ctx, o, "first_byte_timeout_ms", "upstream", 1, 3600000, 60000, false, true);
    u->idle_timeout_ms =
        (long)get_num(ctx, o, "idle_timeout_ms", "upstream", 1, 3600000, 60000, false, true);
    u->total_timeout_ms =
        (long)get_num(ctx, o, "total_timeout_ms", "upstream", 1, 86400000, 600000, false, true);
    u->max_response_bytes = (size_t)get_num(ctx, o, "max_response_bytes", "upstream", 1024, 1 << 30,
                                            32u << 20, false, true);
    u->max_connections_per_backend = (unsigned)get_num(ctx, o, "max_connections_per_backend",
                                                       "upstream", 1, 1000000, 1024, false, true);
}

static void parse_redis(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"url", NULL};
    json_t *o = get_obj(ctx, root, "redis", "");
    if (!o)
        return;
    check_keys(ctx, o, "redis", allowed);
    cfg->redis_url = get_str(ctx, o, "url", "redis", false);
    if (cfg->redis_url && !*cfg->redis_url) {
        free(cfg->redis_url);
        cfg->redis_url = NULL;
    } else if (cfg->redis_url) {
        struct redis_url parsed;
        char why[160];
        if (redis_parse_url(cfg->redis_url, &parsed, why, sizeof why))
            cfg_error(ctx, "redis.url", "%s", why);
        explicit_bzero(&parsed, sizeof parsed); /* it may hold the password */
    }
}

static void parse_routing(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
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
    json_t *o = get_obj(ctx, root, "routing", "");
    if (!o)
        return;
    check_keys(ctx, o, "routing", allowed);
    char *strategy = get_str(ctx, o, "strategy", "routing", false);
    if (strategy) {
        if (config_parse_strategy(strategy, &r->strategy))
            cfg_error(ctx, "routing.strategy", "must be one of cheapest, price-weighted, latency");
        free(strategy);
    }
    r->default_output_tokens = (unsigned)get_num(ctx, o, "default_output_tokens", "routing", 0,
                                                 10000000, 256, false, true);
    r->retries = (unsigned)get_num(ctx, o, "retries", "routing", 0, 10, 2, false, true);
    r->deadline_ms =
        (long)get_num(ctx, o, "deadline_ms", "routing", 1, 3600000, 30000, false, true);
    r->tie_tolerance = get_num(ctx, o, "tie_tolerance", "routing", 0, 1, 0.01, false, false);
    r->limit_initial =
        (unsigned)get_num(ctx, o, "limit_initial", "routing", 1, 1000000, 8, false, true);
    r->limit_max = (unsigned)get_num(ctx, o, "limit_max", "routing", 1, 1000000, 1000, false, true);
    if (r->limit_max < r->limit_initial)
        cfg_error(ctx, "routing.limit_max", "must be at least routing.limit_initial");
    r->limit_backoff = get_num(ctx, o, "limit_backoff", "routing", 0.1, 0.99, 0.9, false, false);
    r->limit_latency_factor =
        get_num(ctx, o, "limit_latency_factor", "routing", 0, 1000, 3, false, false);
    if (r->limit_latency_factor > 0 && r->limit_latency_factor < 1.5)
        cfg_error(ctx, "routing.limit_latency_factor", "must be 0 (off) or at least 1.5");
    r->rate_limit_pause_ms =
        (long)get_num(ctx, o, "rate_limit_pause_ms", "routing", 0, 86400000, 5000, false, true);
    r->queue_ms = (long)get_num(ctx, o, "queue_ms", "routing", 0, 3600000, 1000, false, true);
    r->honesty_tolerance =
        get_num(ctx, o, "honesty_tolerance", "routing", 1.05, 1000, 1.5, false, false);
    r->honesty_min_samples =
        (unsigned)get_num(ctx, o, "honesty_min_samples", "routing", 1, 100000, 5, false, true);
}

static void parse_health(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
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
    json_t *o = get_obj(ctx, root, "health", "");
    if (!o)
        return;
    check_keys(ctx, o, "health", allowed);
    h->interval_ms = (long)get_num(ctx, o, "interval_ms", "health", 50, 3600000, 5000, false, true);
    h->timeout_ms = (long)get_num(ctx, o, "timeout_ms", "health", 10, 600000, 2000, false, true);
    h->eject_after_failures =
        (unsigned)get_num(ctx, o, "eject_after_failures", "health", 1, 1000, 3, false, true);
    h->cooldown_ms =
        (long)get_num(ctx, o, "cooldown_ms", "health", 1, 86400000, 10000, false, true);
    h->max_cooldown_ms =
        (long)get_num(ctx, o, "max_cooldown_ms", "health", 1, 86400000, 300000, false, true);
    if (h->max_cooldown_ms < h->cooldown_ms)
        h->max_cooldown_ms = h->cooldown_ms;
    h->stuck_factor = get_num(ctx, o, "stuck_factor", "health", 0, 1000, 2, false, false);
    if (h->stuck_factor > 0 && h->stuck_factor < 1)
        cfg_error(ctx, "health.stuck_factor", "must be 0 (off) or at least 1");
    h->stuck_min_ms = (long)get_num(ctx, o, "stuck_min_ms", "health", 1, 3600000, 250, false, true);
    h->slow_start_ms =
        (long)get_num(ctx, o, "slow_start_ms", "health", 0, 3600000, 3000, false, true);
}

static void parse_cache(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
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
    json_t *o = get_obj(ctx, root, "cache", "");
    if (!o)
        return;
    check_keys(ctx, o, "cache", allowed);
    char *mode = get_str(ctx, o, "mode", "cache", false);
    if (mode) {
        if (!strcmp(mode, "deterministic"))
            c->mode = CONFIG_CACHE_DETERMINISTIC;
        else if (!strcmp(mode, "all"))
            c->mode = CONFIG_CACHE_ALL;
        else if (!strcmp(mode, "off"))
            c->mode = CONFIG_CACHE_OFF;
        else
            cfg_error(ctx, "cache.mode", "must be one of deterministic, all, off");
        free(mode);
    }
    c->ttl_s = (long)get_num(ctx, o, "ttl_s", "cache", 1, 31536000, 3600, false, true);
    c->max_bytes = (size_t)get_num(ctx, o, "max_bytes", "cache", 0, 1e12, 64u << 20, false, true);
    c->max_entry_bytes =
        (size_t)get_num(ctx, o, "max_entry_bytes", "cache", 1, 1 << 30, 1u << 20, false, true);
    c->coalesce_wait_ms =
        (long)get_num(ctx, o, "coalesce_wait_ms", "cache", 0, 3600000, 30000, false, true);
    char *scope = get_str(ctx, o, "scope", "cache", false);
    if (scope) {
        if (!strcmp(scope, "global"))
            c->global = true;
        else if (strcmp(scope, "key"))
            cfg_error(ctx, "cache.scope", "must be key or global");
        free(scope);
    }
}

static void parse_metrics(struct cfg_ctx *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {"enabled", NULL};
    cfg->metrics_enabled = true;
    json_t *o = get_obj(ctx, root, "metrics", "");
    if (!o)
        return;
    check_keys(ctx, o, "metrics", allowed);
    json_t *v = json_object_get(o, "enabled");
    if (v && !json_is_boolean(v))
        cfg_error(ctx, "metrics.enabled", "must be true or false");
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
    free(cfg);
}

static struct config *config_build(json_t *root, struct cfg_ctx *ctx)
{
    static const char *const allowed[] = {"listen",
                                          "workers",
                                          "max_connections",
                                          "client_header_timeout_ms",
                                          "client_body_timeout_ms",
                                          "connection_memory_bytes",
                                          "max_body_bytes",
                                          "drain_timeout_ms",
                                          "log_level",
                                          "upstream",
                                          "keys",
                                          "backends",
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
                                          NULL};
    struct config *cfg = calloc(1, sizeof *cfg);
    if (!cfg)
        return NULL;
    atomic_init(&cfg->refs, 1);
    if (!json_is_object(root)) {
        cfg_error(ctx, "(root)", "must be a mapping");
        return cfg;
    }
    check_keys(ctx, root, "", allowed);
    cfg->listen = get_str(ctx, root, "listen", "", false);
    if (!cfg->listen)
        cfg->listen = strdup("127.0.0.1:8080");
    const char *env_listen = getenv("TOLLGATE_LISTEN");
    if (env_listen && *env_listen) {
        free(cfg->listen);
        cfg->listen = strdup(env_listen);
    }
    if (!strrchr(cfg->listen, ':'))
        cfg_error(ctx, "listen", "must be host:port");
    cfg->workers = (unsigned)get_num(ctx, root, "workers", "", 0, 256, 0, false, true);
    if (cfg->workers == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        cfg->workers = n > 0 ? (unsigned)n : 1;
    }
    cfg->max_connections =
        (unsigned)get_num(ctx, root, "max_connections", "", 1, 1000000, 16384, false, true);
    cfg->client_header_timeout_ms = (unsigned)get_num(ctx, root, "client_header_timeout_ms", "", 0,
                                                      3600000, 60000, false, true);
    cfg->client_body_timeout_ms =
        (unsigned)get_num(ctx, root, "client_body_timeout_ms", "", 0, 3600000, 60000, false, true);
    /* MHD clears a connection's memory for every request: keep it to what headers need. */
    cfg->connection_memory_bytes = (size_t)get_num(ctx, root, "connection_memory_bytes", "", 4096,
                                                   1 << 24, 16384, false, true);
    cfg->max_body_bytes =
        (size_t)get_num(ctx, root, "max_body_bytes", "", 1, 1 << 30, 8u << 20, false, true);
    cfg->drain_timeout_ms =
        (unsigned)get_num(ctx, root, "drain_timeout_ms", "", 0, 3600000, 10000, false, true);
    char *level = get_str(ctx, root, "log_level", "", false);
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
            cfg_error(ctx, "log_level", "must be one of debug, info, warn, error, off");
        free(level);
    }
    parse_upstream(ctx, cfg, root);
    parse_keys(ctx, cfg, root);
    parse_backends(ctx, cfg, root);
    parse_redis(ctx, cfg, root);
    parse_routing(ctx, cfg, root);
    parse_health(ctx, cfg, root);
    parse_cache(ctx, cfg, root);
    parse_metrics(ctx, cfg, root);
    cfg->spool_dir = get_str(ctx, root, "spool_dir", "", false);
    if (!cfg->spool_dir || !*cfg->spool_dir) {
        free(cfg->spool_dir);
        cfg->spool_dir = strdup("/var/tmp");
    }
    cfg->spool_max_bytes = (size_t)get_num(ctx, root, "spool_max_bytes", "", 0, (double)(1ll << 40),
                                           (double)(1ll << 30), false, true);
    cfg->spool_memory_bytes = (size_t)get_num(ctx, root, "spool_memory_bytes", "", 0,
                                              (double)(1ll << 36), 16u << 20, false, true);
    cfg->admin_listen = get_str(ctx, root, "admin_listen", "", false);
    cfg->admin_key = get_str(ctx, root, "admin_key", "", false);
    if (cfg->admin_listen && !*cfg->admin_listen) {
        free(cfg->admin_listen);
        cfg->admin_listen = NULL;
    }
    if (cfg->admin_listen && !strrchr(cfg->admin_listen, ':'))
        cfg_error(ctx, "admin_listen", "must be host:port");
    if (cfg->admin_listen && (!cfg->admin_key || strlen(cfg->admin_key) < 16))
        cfg_error(ctx, "admin_key", "is required with admin_listen, at least 16 characters");
    return cfg;
}

struct config *config_load_string(const char *text, size_t len, const char *name, char **errors)
{
    struct cfg_ctx ctx;
    buf_init(&ctx.errors, 1 << 20);
    ctx.n_errors = 0;
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
            cfg_error(&ctx, where, "JSON syntax error: %s", jerr.text);
        }
    } else {
        root = config_yaml_to_json(text, len, &ctx.errors, &ctx.n_errors);
    }
    struct config *cfg = NULL;
    if (root) {
        cfg = config_build(root, &ctx);
        json_decref(root);
    }
    if (cfg && !ctx.n_errors && (build_routes(cfg) || build_headers(cfg)))
        cfg_error(&ctx, "(root)", "out of memory");
    if (cfg && !ctx.n_errors)
        cfg->source = strdup(name ? name : "-");
    if (ctx.n_errors || !cfg) {
        config_free(cfg);
        if (!ctx.n_errors)
            cfg_error(&ctx, "(root)", "out of memory");
        *errors = buf_steal(&ctx.errors, NULL);
        return NULL;
    }
    buf_free(&ctx.errors);
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

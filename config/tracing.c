/* The `tracing` section: where spans go over OTLP/HTTP, with which headers, how many new
 * traces are sampled, and the resource that names this service. Off without an endpoint. */
#include "config/schema.h"

#include <stdlib.h>
#include <string.h>

/* A header name is an HTTP token. */
static bool tracing_token(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!(*s > 0x20 && *s < 0x7f) || strchr("\"(),/:;<=>?@[\\]{}", *s))
            return false;
    return true;
}

/* A header value or an attribute: printable text, so never a second header line. */
static bool tracing_printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            return false;
    return true;
}

/* A mapping of strings (${VAR} expanded) into "name: value" lines (as_headers) or into
 * name, value pairs. */
static char **tracing_map(struct config_problems *ctx, json_t *o, const char *key, bool as_headers,
                          size_t *n_out)
{
    char path[128];
    snprintf(path, sizeof path, "tracing.%s", key);
    json_t *map = config_get_obj(ctx, o, key, "tracing");
    *n_out = 0;
    if (!map)
        return NULL;
    size_t n = json_object_size(map);
    char **out = calloc(2 * n + 1, sizeof *out);
    if (!out) {
        config_problem(ctx, path, "out of memory");
        return NULL;
    }
    const char *name;
    json_t *v;
    size_t i = 0;
    json_object_foreach (map, name, v) {
        char *value = config_get_str(ctx, map, name, path, true);
        if (!value)
            continue;
        char where[256];
        config_path_join(where, sizeof where, path, name);
        if (as_headers && !tracing_token(name))
            config_problem(ctx, where, "is not a valid header name");
        else if (!tracing_printable(value) || !tracing_printable(name))
            config_problem(ctx, where, "must not hold control characters");
        else if (as_headers) {
            size_t len = strlen(name) + strlen(value) + 3;
            out[i] = malloc(len);
            if (out[i])
                snprintf(out[i++], len, "%s: %s", name, value);
        } else {
            out[i++] = strdup(name);
            out[i++] = value;
            value = NULL;
        }
        if (value) {
            explicit_bzero(value, strlen(value)); /* an exporter's token, maybe */
            free(value);
        }
    }
    *n_out = as_headers ? i : i / 2;
    return out;
}

void config_parse_tracing(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {
        "otlp_endpoint", "headers", "sample_ratio", "service_name", "resource_attributes",
        "timeout_ms",    NULL};
    struct config_tracing *t = &cfg->tracing;
    t->sample_ratio = 1.0;
    t->timeout_ms = 10000;
    json_t *o = config_get_obj(ctx, root, "tracing", "");
    if (o) {
        config_check_keys(ctx, o, "tracing", allowed);
        t->otlp_endpoint = config_get_str(ctx, o, "otlp_endpoint", "tracing", false);
        t->sample_ratio =
            config_get_num(ctx, o, "sample_ratio", "tracing", 0, 1, 1.0, false, false);
        t->timeout_ms =
            (long)config_get_num(ctx, o, "timeout_ms", "tracing", 1, 600000, 10000, false, true);
        t->service_name = config_get_str(ctx, o, "service_name", "tracing", false);
        t->headers = tracing_map(ctx, o, "headers", true, &t->n_headers);
        t->resource = tracing_map(ctx, o, "resource_attributes", false, &t->n_resource);
    }
    if (t->otlp_endpoint && !*t->otlp_endpoint) {
        free(t->otlp_endpoint); /* "${OTLP_ENDPOINT}" set to nothing: off */
        t->otlp_endpoint = NULL;
    }
    if (t->otlp_endpoint && strncmp(t->otlp_endpoint, "http://", 7) &&
        strncmp(t->otlp_endpoint, "https://", 8))
        config_problem(ctx, "tracing.otlp_endpoint",
                       "must be an http:// or https:// URL (e.g. "
                       "http://collector:4318/v1/traces)");
    if (t->service_name && (!*t->service_name || !tracing_printable(t->service_name)))
        config_problem(ctx, "tracing.service_name", "must be printable text");
    if (!t->service_name)
        t->service_name = strdup("tollgate");
}

void config_free_tracing(struct config *cfg)
{
    struct config_tracing *t = &cfg->tracing;
    free(t->otlp_endpoint);
    free(t->service_name);
    for (size_t i = 0; t->headers && t->headers[i]; i++) {
        explicit_bzero(t->headers[i], strlen(t->headers[i]));
        free(t->headers[i]);
    }
    free(t->headers);
    for (size_t i = 0; t->resource && t->resource[i]; i++)
        free(t->resource[i]);
    free(t->resource);
}

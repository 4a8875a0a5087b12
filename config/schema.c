#include "config/schema.h"

#include "config/expand.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void config_problem(struct config_problems *ctx, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    buf_printf(ctx->text, "%s: %s\n", path && *path ? path : "(root)", msg);
    ctx->count++;
}

/* ---- typed accessors with paths ---------------------------------------------------------- */

void config_path_join(char *out, size_t n, const char *base, const char *key)
{
    if (base && *base)
        snprintf(out, n, "%s.%s", base, key);
    else
        snprintf(out, n, "%s", key);
}

void config_check_keys(struct config_problems *ctx, json_t *obj, const char *path,
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
            config_path_join(p, sizeof p, path, key);
            config_problem(ctx, p, "unknown key");
        }
    }
}

/* A string field (env-expanded). Returns a malloc'd string, or NULL when absent/invalid. */
char *config_get_str(struct config_problems *ctx, json_t *obj, const char *key, const char *path,
                     bool required)
{
    char p[256];
    config_path_join(p, sizeof p, path, key);
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (required)
            config_problem(ctx, p, "is required");
        return NULL;
    }
    if (!json_is_string(v)) {
        config_problem(ctx, p, "must be a string");
        return NULL;
    }
    char *missing = NULL;
    char *out = config_expand_env(json_string_value(v), &missing);
    if (!out) {
        if (missing)
            config_problem(ctx, p, "environment variable %s is not set", missing);
        else
            config_problem(ctx, p, "out of memory");
        free(missing);
    }
    return out;
}

/* A number field: a JSON number, or a string that expands to one. */
double config_get_num(struct config_problems *ctx, json_t *obj, const char *key, const char *path,
                      double min, double max, double def, bool required, bool integer)
{
    char p[256];
    config_path_join(p, sizeof p, path, key);
    json_t *v = json_object_get(obj, key);
    double d;
    if (!v || json_is_null(v)) {
        if (required)
            config_problem(ctx, p, "is required");
        return def;
    }
    if (json_is_number(v)) {
        d = json_number_value(v);
    } else if (json_is_string(v)) {
        char *s = config_get_str(ctx, obj, key, path, true);
        if (!s)
            return def;
        char *end;
        errno = 0;
        d = strtod(s, &end);
        bool bad = !*s || *end || errno;
        free(s);
        if (bad) {
            config_problem(ctx, p, "must be a number");
            return def;
        }
    } else {
        config_problem(ctx, p, "must be a number");
        return def;
    }
    if (!isfinite(d) || d < min || d > max || (integer && d != floor(d))) {
        if (max >= 1e15)
            config_problem(ctx, p, "must be %s >= %.15g", integer ? "an integer" : "a number", min);
        else
            config_problem(ctx, p, "must be %s between %.15g and %.15g",
                           integer ? "an integer" : "a number", min, max);
        return def;
    }
    return d;
}

json_t *config_get_obj(struct config_problems *ctx, json_t *root, const char *key, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_object(v)) {
        char p[256];
        config_path_join(p, sizeof p, path, key);
        config_problem(ctx, p, "must be a mapping");
        return NULL;
    }
    return v;
}

json_t *config_get_arr(struct config_problems *ctx, json_t *root, const char *key, const char *path)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v))
        return NULL;
    if (!json_is_array(v)) {
        char p[256];
        config_path_join(p, sizeof p, path, key);
        config_problem(ctx, p, "must be a list");
        return NULL;
    }
    return v;
}

int config_hex_to_bytes(const char *hex, unsigned char *out, size_t n)
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

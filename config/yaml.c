#include "config/yaml.h"

#include "config/schema.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

static json_t *yaml_scalar(const yaml_event_t *ev)
{
    const char *v = (const char *)ev->data.scalar.value;
    size_t n = ev->data.scalar.length;
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return json_stringn(v, n);
    if (n == 0 || !strcmp(v, "~") || !strcmp(v, "null") || !strcmp(v, "Null") || !strcmp(v, "NULL"))
        return json_null();
    if (!strcmp(v, "true") || !strcmp(v, "True") || !strcmp(v, "TRUE"))
        return json_true();
    if (!strcmp(v, "false") || !strcmp(v, "False") || !strcmp(v, "FALSE"))
        return json_false();
    char *end;
    errno = 0;
    long long ll = strtoll(v, &end, 10);
    if (*v && !*end && errno == 0)
        return json_integer(ll);
    errno = 0;
    double d = strtod(v, &end);
    if (*v && !*end && errno == 0 && isfinite(d) &&
        (isdigit((unsigned char)v[0]) || v[0] == '-' || v[0] == '+' || v[0] == '.'))
        return json_real(d);
    return json_stringn(v, n);
}

static json_t *yaml_node(yaml_parser_t *p, yaml_event_t *ev, int depth,
                         struct config_problems *ctx);

static int yaml_next(yaml_parser_t *p, yaml_event_t *ev, struct config_problems *ctx)
{
    if (yaml_parser_parse(p, ev))
        return 0;
    char where[64];
    snprintf(where, sizeof where, "line %zu", p->problem_mark.line + 1);
    config_problem(ctx, where, "YAML syntax error: %s", p->problem ? p->problem : "unknown");
    return -1;
}

static json_t *yaml_collection(yaml_parser_t *p, bool mapping, int depth,
                               struct config_problems *ctx)
{
    json_t *out = mapping ? json_object() : json_array();
    yaml_event_t ev;
    for (;;) {
        if (yaml_next(p, &ev, ctx))
            goto err;
        if (ev.type == YAML_SEQUENCE_END_EVENT || ev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ev);
            return out;
        }
        if (!mapping) {
            json_t *item = yaml_node(p, &ev, depth + 1, ctx);
            if (!item)
                goto err;
            json_array_append_new(out, item);
            continue;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            char where[64];
            snprintf(where, sizeof where, "line %zu", ev.start_mark.line + 1);
            config_problem(ctx, where, "mapping keys must be plain strings");
            yaml_event_delete(&ev);
            goto err;
        }
        char *key = strndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
        size_t line = ev.start_mark.line + 1;
        yaml_event_delete(&ev);
        if (!key || yaml_next(p, &ev, ctx)) {
            free(key);
            goto err;
        }
        json_t *val = yaml_node(p, &ev, depth + 1, ctx);
        if (!val) {
            free(key);
            goto err;
        }
        if (json_object_get(out, key)) {
            char where[64];
            snprintf(where, sizeof where, "line %zu", line);
            config_problem(ctx, where, "duplicate key \"%s\"", key);
        }
        json_object_set_new(out, key, val);
        free(key);
    }
err:
    json_decref(out);
    return NULL;
}

/* Consumes `ev` (and the events of the whole node). */
static json_t *yaml_node(yaml_parser_t *p, yaml_event_t *ev, int depth, struct config_problems *ctx)
{
    json_t *out = NULL;
    char where[64];
    snprintf(where, sizeof where, "line %zu", ev->start_mark.line + 1);
    if (depth > CONFIG_YAML_MAX_DEPTH) {
        config_problem(ctx, where, "nesting too deep");
        yaml_event_delete(ev);
        return NULL;
    }
    switch (ev->type) {
    case YAML_SCALAR_EVENT:
        out = yaml_scalar(ev);
        if (!out)
            config_problem(ctx, where, "invalid UTF-8 in scalar");
        yaml_event_delete(ev);
        return out;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
        bool mapping = ev->type == YAML_MAPPING_START_EVENT;
        yaml_event_delete(ev);
        return yaml_collection(p, mapping, depth, ctx);
    }
    case YAML_ALIAS_EVENT:
        config_problem(ctx, where, "YAML aliases are not supported");
        break;
    default:
        config_problem(ctx, where, "unexpected YAML event");
        break;
    }
    yaml_event_delete(ev);
    return NULL;
}

json_t *config_yaml_to_json(const char *text, size_t len, struct config_problems *ctx)
{
    unsigned before = ctx->count;
    yaml_parser_t p;
    yaml_event_t ev;
    json_t *root = NULL;
    if (!yaml_parser_initialize(&p))
        return NULL;
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    for (;;) {
        if (yaml_next(&p, &ev, ctx))
            break;
        if (ev.type == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type == YAML_STREAM_START_EVENT || ev.type == YAML_DOCUMENT_START_EVENT ||
            ev.type == YAML_DOCUMENT_END_EVENT) {
            yaml_event_delete(&ev);
            continue;
        }
        if (root) {
            config_problem(ctx, "(root)", "only one YAML document is allowed");
            yaml_event_delete(&ev);
            break;
        }
        root = yaml_node(&p, &ev, 0, ctx);
        if (!root)
            break;
    }
    yaml_parser_delete(&p);
    if (ctx->count != before) {
        json_decref(root);
        return NULL;
    }
    if (!root)
        root = json_object(); /* an empty file is an empty config */
    return root;
}

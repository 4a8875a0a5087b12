/* The config schema's internals, shared by the files of config/ (config.c, backends.c, yaml.c)
 * and by nothing else: the list of problems a load collects, typed reads of the jansson tree that
 * name the dotted path of each problem, and the section parsers that live outside config.c.
 * Every problem is reported, not just the first. No state: thread-safe. */
#ifndef TOLLGATE_CONFIG_SCHEMA_H
#define TOLLGATE_CONFIG_SCHEMA_H

#include "base/buf.h"
#include "config/config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* Where the problems of one load go: one "where: problem\n" line each in `text`. */
struct config_problems {
    struct buf *text;
    unsigned count;
};

/* Add one problem at `path` (a dotted config path or "line N"; empty or NULL means "(root)"). */
void config_problem(struct config_problems *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* `base.key`, or `key` when base is empty. */
void config_path_join(char *out, size_t n, const char *base, const char *key);

/* A problem for every key of `obj` not in the NULL-terminated `allowed`. */
void config_check_keys(struct config_problems *ctx, json_t *obj, const char *path,
                       const char *const *allowed);

/* A string field, ${VAR}-expanded. Returns a malloc'd string, or NULL when absent or invalid
 * (a problem is added when invalid, or absent and required). */
char *config_get_str(struct config_problems *ctx, json_t *obj, const char *key, const char *path,
                     bool required);

/* A number field: a JSON number, or a string that expands to one, within [min, max] (and whole
 * when `integer`). Returns `def` when absent or invalid. */
double config_get_num(struct config_problems *ctx, json_t *obj, const char *key, const char *path,
                      double min, double max, double def, bool required, bool integer);

/* The mapping / list at root[key] (borrowed), or NULL when absent, null or of another type. */
json_t *config_get_obj(struct config_problems *ctx, json_t *root, const char *key,
                       const char *path);
json_t *config_get_arr(struct config_problems *ctx, json_t *root, const char *key,
                       const char *path);

/* 2n hex digits into n bytes: 0, or -1 when the text is not exactly that. */
int config_hex_to_bytes(const char *hex, unsigned char *out, size_t n);

/* The `backends` list with their models (config/backends.c). */
void config_parse_backends(struct config_problems *ctx, struct config *cfg, json_t *root);

/* A backend model's capabilities, context_length and cached_input_usd_per_mtok (caps.c). */
void config_parse_model_extras(struct config_problems *ctx, struct config_model *cm, json_t *m,
                               const char *mpath);

/* `model_groups` as written (groups.c); config_build_groups() adds their routes once the
 * models' routes are built (0, or -1 on OOM; unknown members are problems). */
void config_parse_groups(struct config_problems *ctx, struct config *cfg, json_t *root);
int config_build_groups(struct config_problems *ctx, struct config *cfg);
void config_free_groups(struct config *cfg);

/* The `tracing` section (tracing.c). */
void config_parse_tracing(struct config_problems *ctx, struct config *cfg, json_t *root);
void config_free_tracing(struct config *cfg);

#endif

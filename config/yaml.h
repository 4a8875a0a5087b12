/* YAML → JSON: the config's YAML is read into the same jansson tree a JSON config gives, so the
 * schema checks (config/config.c) are written once.
 *
 * Only what a config needs: one document of mappings, sequences and scalars. Plain scalars are
 * typed as YAML 1.2's core schema does (null, booleans, integers, floats); quoted ones stay
 * strings. Anchors and aliases, duplicate keys, non-scalar keys and nesting deeper than
 * CONFIG_YAML_MAX_DEPTH are errors. No I/O and no state: thread-safe. */
#ifndef TOLLGATE_CONFIG_YAML_H
#define TOLLGATE_CONFIG_YAML_H

#include <jansson.h>
#include <stddef.h>

#define CONFIG_YAML_MAX_DEPTH 32

struct config_problems;

/* Parse `text` (`len` bytes). Returns a new reference the caller owns (an empty document gives
 * an empty object). On failure returns NULL and adds one "line N: problem" (or "(root): ...")
 * to `problems` per problem (config/schema.h); NULL with no problem added means out of memory. */
json_t *config_yaml_to_json(const char *text, size_t len, struct config_problems *problems);

#endif

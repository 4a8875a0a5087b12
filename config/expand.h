/* ${VAR} expansion: the one place config text reads the environment.
 *
 * Pure apart from getenv(); no state, thread-safe as far as getenv() is (the gateway calls it
 * only while loading a config, before and outside the workers). */
#ifndef TOLLGATE_CONFIG_EXPAND_H
#define TOLLGATE_CONFIG_EXPAND_H

/* The longest expansion, the same cap as a whole config file. */
#define CONFIG_EXPAND_MAX_BYTES (4u << 20)

/* Replace ${VAR} and ${VAR:-default} in `in` from the environment (the default also replaces an
 * empty value; a "${" without its "}" is copied as it is). Returns a malloc'd string (caller
 * frees), or NULL with *missing set to the first unset variable's name (malloc'd, caller frees)
 * or to NULL when out of memory or over CONFIG_EXPAND_MAX_BYTES. */
char *config_expand_env(const char *in, char **missing);

#endif

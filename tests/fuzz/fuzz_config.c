/* Fuzz target: a config file (config/config.c config_load_string: YAML, or JSON when it starts
 * with '{', with ${VAR} expansion).
 *
 * A config is an operator's file, not a caller's request, but it is parsed by the same process
 * that serves traffic and its YAML reader is our own code over libyaml: a mistake in it must be
 * an error message, never a crash. The gateway runs it at start and on every SIGHUP.
 *
 * Checks: exactly one of a config and an error text (whole lines) comes back; a config's
 * routes are sorted, each found by config_find_route() and served by targets of its model. */
#include "tests/fuzz/fuzz.h"

#include "config/config.h"

#include <stdbool.h>
#include <string.h>

static void check_config(const struct config *cfg)
{
    FUZZ_CHECK(cfg->workers > 0 && cfg->n_backends > 0 && cfg->listen);
    for (size_t i = 0; i < cfg->n_routes; i++) {
        const struct config_route *r = &cfg->routes[i];
        if (i)
            FUZZ_CHECK(strcmp(cfg->routes[i - 1].model, r->model) < 0);
        FUZZ_CHECK(config_find_route(cfg, r->model) == r);
        FUZZ_CHECK(r->n_targets > 0);
        for (size_t t = 0; t < r->n_targets; t++)
            FUZZ_CHECK(!strcmp(r->targets[t].model->name, r->model));
    }
    for (size_t b = 0; b < cfg->n_backends; b++) {
        const struct config_backend *be = &cfg->backends[b];
        FUZZ_CHECK(be->name && be->url && be->n_models > 0);
        for (size_t m = 0; m < be->n_models; m++)
            FUZZ_CHECK(config_find_route(cfg, be->models[m].name));
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *errors = NULL;
    struct config *cfg =
        config_load_string(size ? (const char *)data : "", size, "fuzz.yaml", &errors);
    FUZZ_CHECK(!cfg != !errors);
    if (cfg) {
        check_config(cfg);
        config_unref(cfg);
    } else {
        FUZZ_CHECK(errors[0] && errors[strlen(errors) - 1] == '\n');
        free(errors);
    }
    return 0;
}

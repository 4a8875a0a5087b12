/* Model groups and fallback chains: a public name for an ordered list of models, each with
 * its own backends and prices (`model_groups` in the config, or a request's own `models`
 * list). A chain is a route whose targets are its models' targets in chain order, each marked
 * with its model's place (`tier`); the router takes the first tier that has an eligible node
 * (routing/router.h), and a failed attempt moves on within it, then to the next.
 *
 * Group routes live in the config's route table beside the models' own routes (found by
 * config_find_route()); a request's own chain is built per request. Read-only; thread-safe. */
#ifndef TOLLGATE_CONFIG_GROUPS_H
#define TOLLGATE_CONFIG_GROUPS_H

#include "config/config.h"

#include <stddef.h>

/* The most models in one chain (a request's `models` list included). */
#define CONFIG_CHAIN_MAX 16

/* Builds the route of a chain of names (models or groups, a group standing for its own
 * chain; repeats after the first are dropped) in *out: model = the first name, targets
 * malloc'd (the caller frees out->targets). 0; -1 on OOM; 1 when a name is no model or
 * group (*unknown names it). */
int config_chain_route(const struct config *cfg, const char *const *names, size_t n,
                       struct config_route *out, const char **unknown);

/* Whether the route is a chain of more than one model. */
static inline int config_route_is_chain(const struct config_route *r)
{
    return r->n_tiers > 1;
}

#endif

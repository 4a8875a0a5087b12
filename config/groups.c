#include "config/groups.h"

#include "config/schema.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- model_groups: name -> list of model names ------------------------------------------- */

void config_parse_groups(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    json_t *groups = config_get_obj(ctx, root, "model_groups", "");
    if (!groups || !json_object_size(groups))
        return;
    cfg->groups = calloc(json_object_size(groups), sizeof *cfg->groups);
    if (!cfg->groups) {
        config_problem(ctx, "model_groups", "out of memory");
        return;
    }
    const char *name;
    json_t *list;
    json_object_foreach (groups, name, list) {
        char path[200];
        config_path_join(path, sizeof path, "model_groups", name);
        if (!*name) {
            config_problem(ctx, path, "a group needs a name");
            continue;
        }
        if (!json_is_array(list) || json_array_size(list) == 0 ||
            json_array_size(list) > CONFIG_CHAIN_MAX) {
            config_problem(ctx, path, "must list 1 to %d model names, in the order to try them",
                           CONFIG_CHAIN_MAX);
            continue;
        }
        struct config_group *g = &cfg->groups[cfg->n_groups++];
        g->name = strdup(name);
        g->models = calloc(json_array_size(list), sizeof *g->models);
        if (!g->name || !g->models) {
            config_problem(ctx, path, "out of memory");
            continue;
        }
        size_t i;
        json_t *m;
        json_array_foreach (list, i, m) {
            char p[260];
            snprintf(p, sizeof p, "%.200s[%zu]", path, i);
            if (!json_is_string(m) || !*json_string_value(m)) {
                config_problem(ctx, p, "must be a model name");
                continue;
            }
            for (size_t j = 0; j < g->n_models; j++)
                if (!strcmp(g->models[j], json_string_value(m)))
                    config_problem(ctx, p, "\"%s\" is listed twice", json_string_value(m));
            g->models[g->n_models] = strdup(json_string_value(m));
            if (!g->models[g->n_models++])
                config_problem(ctx, p, "out of memory");
        }
    }
}

void config_free_groups(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_groups; i++) {
        for (size_t j = 0; j < cfg->groups[i].n_models; j++)
            free(cfg->groups[i].models[j]);
        free(cfg->groups[i].models);
        free(cfg->groups[i].name);
    }
    free(cfg->groups);
    cfg->groups = NULL;
    cfg->n_groups = 0;
}

/* ---- chains ---------------------------------------------------------------------------- */

/* The route named so among the first n routes (unsorted while groups are added). */
static const struct config_route *find_route(const struct config *cfg, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(cfg->routes[i].model, name))
            return &cfg->routes[i];
    return NULL;
}

static int chain_route(const struct config *cfg, size_t n_routes, const char *const *names,
                       size_t n, struct config_route *out, const char **unknown)
{
    const struct config_route *parts[CONFIG_CHAIN_MAX];
    size_t n_parts = 0, n_targets = 0;
    for (size_t i = 0; i < n && n_parts < CONFIG_CHAIN_MAX; i++) {
        const struct config_route *r = n_routes == cfg->n_routes
                                           ? config_find_route(cfg, names[i])
                                           : find_route(cfg, n_routes, names[i]);
        if (!r) {
            *unknown = names[i];
            return 1;
        }
        bool seen = false;
        for (size_t j = 0; j < n_parts; j++)
            seen |= parts[j] == r;
        if (seen)
            continue;
        parts[n_parts++] = r;
        n_targets += r->n_targets;
    }
    struct config_target *t = calloc(n_targets ? n_targets : 1, sizeof *t);
    if (!t)
        return -1;
    size_t k = 0;
    unsigned tier = 0;
    for (size_t i = 0; i < n_parts; i++) {
        const struct config_route *r = parts[i];
        for (size_t j = 0; j < r->n_targets; j++) {
            t[k] = r->targets[j];
            t[k].tier = tier + r->targets[j].tier;
            k++;
        }
        tier += r->n_tiers ? r->n_tiers : 1;
    }
    *out = (struct config_route){
        .model = (char *)names[0],
        .metric_model = parts[0]->metric_model,
        .demand = parts[0]->demand,
        .targets = t,
        .n_targets = n_targets,
        .n_tiers = tier,
    };
    return 0;
}

int config_chain_route(const struct config *cfg, const char *const *names, size_t n,
                       struct config_route *out, const char **unknown)
{
    return chain_route(cfg, cfg->n_routes, names, n, out, unknown);
}

static int route_cmp(const void *a, const void *b)
{
    const struct config_route *ra = a, *rb = b;
    return strcmp(ra->model, rb->model);
}

int config_build_groups(struct config_problems *ctx, struct config *cfg)
{
    size_t n_models = cfg->n_routes;
    if (cfg->n_groups) {
        struct config_route *all = calloc(n_models + cfg->n_groups + 1, sizeof *all);
        if (!all)
            return -1;
        memcpy(all, cfg->routes, n_models * sizeof *all);
        free(cfg->routes);
        cfg->routes = all;
    }
    for (size_t i = 0; i < n_models; i++)
        cfg->routes[i].n_tiers = 1;
    for (size_t i = 0; i < cfg->n_groups; i++) {
        const struct config_group *g = &cfg->groups[i];
        char path[200];
        config_path_join(path, sizeof path, "model_groups", g->name);
        if (find_route(cfg, n_models, g->name)) {
            config_problem(ctx, path,
                           "a backend serves a model of this name: a group needs a "
                           "name of its own");
            continue;
        }
        const char *unknown = NULL;
        struct config_route r;
        int rc =
            chain_route(cfg, n_models, (const char *const *)g->models, g->n_models, &r, &unknown);
        if (rc < 0)
            return -1;
        if (rc > 0) {
            config_problem(ctx, path, "no backend serves the model \"%s\"", unknown);
            continue;
        }
        r.model = strdup(g->name);
        if (!r.model) {
            free(r.targets);
            return -1;
        }
        r.demand = NULL; /* demand_attach() gives each route its own */
        cfg->routes[cfg->n_routes++] = r;
    }
    qsort(cfg->routes, cfg->n_routes, sizeof *cfg->routes, route_cmp);
    /* Every target knows its model's own route (metrics and honesty are per model). */
    for (size_t i = 0; i < cfg->n_routes; i++)
        for (size_t j = 0; j < cfg->routes[i].n_targets; j++) {
            struct config_target *t = &cfg->routes[i].targets[j];
            t->origin = config_find_route(cfg, t->model->name);
        }
    return 0;
}

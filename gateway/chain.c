/* Model chains and capabilities on the request path: a body's own `models` list (OpenRouter's
 * form) made into a chain route, the capabilities a request uses for the router, the errors
 * when no model can take it, a backend's context-length refusal moving the request on, and
 * which model served it. Model groups from the config need nothing here: their routes are in
 * the config's table (config/groups.h). */
#include "base/log.h"
#include "config/caps.h"
#include "config/groups.h"
#include "gateway/pipeline.h"
#include "openai/bignum.h"
#include "openai/needs.h"
#include "tenancy/keycache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Longest model name taken from a `models` list. */
#define REQUEST_CHAIN_NAME_MAX 256

#define ANSWERED(expr) (*res = (expr), true)

bool request_chain_admit(struct request *r, enum MHD_Result *res)
{
    json_t *list = json_object_get(r->json, "models");
    if (!list)
        return false;
    if (!json_is_array(list) || json_array_size(list) == 0 ||
        json_array_size(list) > CONFIG_CHAIN_MAX - 1)
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "models",
                                         "models must list 1 to %d model names to fall back on.",
                                         CONFIG_CHAIN_MAX - 1));
    const char *names[CONFIG_CHAIN_MAX];
    size_t n = 0;
    names[n++] = r->oreq.model;
    size_t i;
    json_t *m;
    json_array_foreach (list, i, m) {
        const char *name = json_string_value(m);
        if (!name || !*name || strlen(name) > REQUEST_CHAIN_NAME_MAX)
            return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_INVALID_TYPE, "models",
                                             "models must be a list of model names."));
        char esc[300];
        if (!keycache_allows(r->adm.key_models, name))
            return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_ALLOWED, "models",
                                             "This API key may not use the model '%s'.",
                                             log_escape(esc, sizeof esc, name)));
        names[n++] = name;
    }
    const char *unknown = NULL;
    int rc = config_chain_route(r->cfg, names, n, &r->chain, &unknown);
    if (rc < 0)
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory"));
    if (rc > 0) {
        char esc[300];
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_MODEL_NOT_FOUND,
                                         unknown == names[0] ? "model" : "models",
                                         "The model '%s' does not exist or no backend serves it.",
                                         log_escape(esc, sizeof esc, unknown)));
    }
    /* The list stays in the body the cache key is made of (a chain's answer is not the first
     * model's alone); request_dump_upstream() leaves it out of what backends get. */
    r->route = &r->chain;
    r->up.body = request_dump_upstream(r);
    if (!r->up.body)
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory"));
    return false;
}

bool request_caps_admit(struct request *r, enum MHD_Result *res)
{
    r->up.rreq.caps_needed = openai_needed_caps(r->ep->route, r->json);
    const char *req =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "x-tollgate-require-parameters");
    if (!req)
        return false;
    if (!strcmp(req, "true"))
        r->up.rreq.caps_declared = true;
    else if (strcmp(req, "false"))
        return ANSWERED(REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, "x-tollgate-require-parameters",
                                         "x-tollgate-require-parameters must be true or false."));
    return false;
}

bool request_no_capable_target(struct request *r, const struct router_outcome *why)
{
    if (why->unavailable || why->saturated || why->full || why->over_price)
        return false; /* some model could take it: the usual reasons apply */
    if (why->incapable) {
        char names[96];
        config_cap_names(why->lacking, names, sizeof names);
        request_set_error(r, TG_ERR_CAPABILITY, NULL,
                          r->up.rreq.caps_declared
                              ? "No backend serving '%s' is declared to support what this "
                                "request uses (%s), as x-tollgate-require-parameters demands."
                              : "No backend serving '%s' supports what this request uses (%s).",
                          r->model, names);
        r->reply.no_retry = true;
        return true;
    }
    if (why->too_long) {
        request_set_error(r, TG_ERR_CONTEXT_LENGTH, "messages",
                          "The prompt (about %zu tokens) is longer than the context of every "
                          "backend serving '%s' (at most %lu tokens).",
                          r->up.rreq.prompt_tokens, r->model, why->max_context);
        r->reply.no_retry = true;
        return true;
    }
    return false;
}

/* A backend's error body naming a context overflow (OpenAI's code, or its message). */
static bool context_error(const struct request *r)
{
    if (r->up.status != 400 && r->up.status != 413)
        return false;
    json_t *doc =
        r->relay.resp.len ? json_loadb(r->relay.resp.data, r->relay.resp.len, 0, NULL) : NULL;
    json_t *err = json_object_get(doc, "error");
    const char *code = json_string_value(json_object_get(err, "code"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    bool yes = (code && !strcmp(code, "context_length_exceeded")) ||
               (msg && strstr(msg, "context length"));
    json_decref(doc);
    return yes;
}

bool request_context_retry(struct request *r)
{
    if (!context_error(r))
        return false;
    /* Only when another target could take it; else the caller gets the backend's answer. */
    size_t me = (size_t)(r->up.target - r->route->targets);
    bool was = r->up.skip[me];
    r->up.skip[me] = true;
    struct router_request probe = r->up.rreq;
    probe.free_only = false;
    probe.wait_probation = false;
    bool other = router_pick(r->route, &probe, r->up.skip, NULL) != NULL;
    r->up.skip[me] = was;
    return other;
}

const struct config_route *request_served_route(const struct request *r)
{
    if (r->up.target && r->up.target->origin)
        return r->up.target->origin;
    return r->route;
}

char *request_dump_upstream(struct request *r)
{
    json_t *models = json_object_get(r->json, "models");
    if (!models || r->route != &r->chain)
        return openai_dump_body(r->json);
    json_incref(models);
    json_object_del(r->json, "models");
    char *text = openai_dump_body(r->json);
    json_object_set_new(r->json, "models", models);
    return text;
}

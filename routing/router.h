/* Backend selection: which (backend, model) pair serves a request.
 *
 * Policy v0: the lowest estimated cost for this request (estimated prompt tokens x input
 * price + expected output tokens x output price); ties go to the backend with fewer requests
 * in flight. Thread-safe: reads the immutable config and atomic backend state. */
#ifndef TOLLGATE_ROUTER_H
#define TOLLGATE_ROUTER_H

#include "gateway/config.h"

#include <stdbool.h>
#include <stddef.h>

struct router_request {
    size_t prompt_tokens; /* estimate */
    size_t output_tokens; /* max_tokens, or the default */
};

/* Estimated USD cost of a request on a target. */
double router_estimate(const struct config_target *t, const struct router_request *req);

/* The best target not marked in `skip` (one flag per route target; may be NULL), or NULL
 * when every target is skipped. */
const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip);

#endif

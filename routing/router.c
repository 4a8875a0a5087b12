#include "routing/router.h"

#include "routing/backend.h"

#include <math.h>

double router_estimate(const struct config_target *t, const struct router_request *req)
{
    return ((double)req->prompt_tokens * t->model->input_usd_per_mtok +
            (double)req->output_tokens * t->model->output_usd_per_mtok) /
           1e6;
}

const struct config_target *router_pick(const struct config_route *route,
                                        const struct router_request *req, const bool *skip)
{
    const struct config_target *best = NULL;
    double best_cost = 0;
    int best_inflight = 0;
    for (size_t i = 0; i < route->n_targets; i++) {
        if (skip && skip[i])
            continue;
        const struct config_target *t = &route->targets[i];
        double cost = router_estimate(t, req);
        int inflight = atomic_load_explicit(&t->backend->state->inflight, memory_order_relaxed);
        /* Costs within a part in a million are a tie: fewer requests in flight wins. */
        double tie = fmax(best_cost, cost) * 1e-6;
        if (!best || cost < best_cost - tie ||
            (fabs(cost - best_cost) <= tie && inflight < best_inflight)) {
            best = t;
            best_cost = cost;
            best_inflight = inflight;
        }
    }
    return best;
}

#include "gateway/observe.h"

#include "gateway/pipeline.h"

unsigned request_asked_metric_model(const struct request *r)
{
    const struct config_route *route =
        r->oreq.model ? config_find_route(r->cfg, r->oreq.model) : NULL;
    return route ? route->metric_model : 0;
}

void request_observe_genai(const struct request *r, unsigned model, double seconds)
{
    if (!r->ep)
        return;
    /* Failed: an error status, or a stream that began and then broke (sent as 200). */
    unsigned error = metrics_genai_error(r->reply.err, r->status);
    if (!error && r->status >= 400)
        error = metrics_genai_error(0, r->status);
    const struct config_target *t = r->up.target;
    bool served = t && r->up.status > 0 && r->cache.result != REQUEST_CACHE_HIT;
    struct metrics_genai_obs o = {
        .route = r->ep->metric,
        .model = model,
        .pair = served && t->model->price ? t->model->price->metric_pair : 0,
        .error = error,
        .seconds = seconds,
        .first_token = served && r->relay.t_first_event ? r->relay.t_first_event - r->t_start : -1,
        .first_chunk = served && r->relay.t_first_out ? r->relay.t_first_out - r->t_start : -1,
    };
    metrics_observe_genai(r->w->metrics, &o);
}

#include "routing/demand.h"

#include "base/double_bits.h"

#include <stdlib.h>
#include <string.h>

/* Below this share, the estimate is kept at it: an answer always may be long. */
#define DEMAND_FILL_MIN 0.05

/* Guarded by the caller's lock (backend_attach()). */
static struct demand *demand_registry;

static struct demand *demand_for(const char *model)
{
    for (struct demand *d = demand_registry; d; d = d->next)
        if (!strcmp(d->model, model))
            return d;
    struct demand *d = calloc(1, sizeof *d);
    if (!d)
        return NULL;
    d->model = strdup(model);
    if (!d->model) {
        free(d);
        return NULL;
    }
    d->next = demand_registry;
    demand_registry = d;
    return d;
}

int demand_attach(struct config *cfg)
{
    int result = 0;
    for (size_t i = 0; i < cfg->n_routes; i++) {
        cfg->routes[i].demand = demand_for(cfg->routes[i].model);
        if (!cfg->routes[i].demand)
            result = -1;
    }
    return result;
}

void demand_note_output(struct demand *d, long expected, long tokens)
{
    if (!d || expected <= 0 || tokens < 0)
        return;
    double x = (double)tokens / (double)expected;
    if (x > 1)
        x = 1;
    double old = double_bits_load(&d->fill_bits);
    double_bits_store(&d->fill_bits, old > 0 ? old + (x - old) / 64 : x);
}

double demand_output_fill(const struct demand *d)
{
    double f = d ? double_bits_load(&d->fill_bits) : 0;
    if (f <= 0)
        return 1;
    return f < DEMAND_FILL_MIN ? DEMAND_FILL_MIN : f;
}

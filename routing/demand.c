#include "routing/demand.h"

#include <stdlib.h>
#include <string.h>

#define RELAXED memory_order_relaxed
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

static double get(const _Atomic uint64_t *v)
{
    uint64_t bits = atomic_load_explicit(v, RELAXED);
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static void set(_Atomic uint64_t *v, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    atomic_store_explicit(v, bits, RELAXED);
}

void demand_note_output(struct demand *d, long expected, long tokens)
{
    if (!d || expected <= 0 || tokens < 0)
        return;
    double x = (double)tokens / (double)expected;
    if (x > 1)
        x = 1;
    double old = get(&d->fill_bits);
    set(&d->fill_bits, old > 0 ? old + (x - old) / 64 : x);
}

double demand_output_fill(const struct demand *d)
{
    double f = d ? get(&d->fill_bits) : 0;
    if (f <= 0)
        return 1;
    return f < DEMAND_FILL_MIN ? DEMAND_FILL_MIN : f;
}

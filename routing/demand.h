/* What a model's requests turn out to need, learned per model: how much of the expected
 * output (max_tokens x n, or routing.default_output_tokens) answers really use. Ranking nodes
 * by max_tokens over-weights output prices (an answer rarely uses all of it); ranking by the
 * share recent answers used is right on average.
 *
 * States are created while a config is attached (under the registry's lock, never on the
 * hot path), looked up by model name and never freed, so they outlive reloads. Lock-free:
 * racing samples may lose one. */
#ifndef TOLLGATE_DEMAND_H
#define TOLLGATE_DEMAND_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdint.h>

struct demand {
    char *model;
    _Atomic uint64_t fill_bits; /* share of the expected output used (double); 0 = none yet */
    struct demand *next;        /* registry list */
};

/* Points every route of `cfg` at its model's state, creating the missing ones (call with the
 * backend registry's lock held: routing/backend.c does). 0, or -1 on OOM. */
int demand_attach(struct config *cfg);

/* An answer used `tokens` output tokens of the `expected` it was estimated at. */
void demand_note_output(struct demand *d, long expected, long tokens);
/* The share of the expected output answers use (1 until something is known). */
double demand_output_fill(const struct demand *d);

#endif

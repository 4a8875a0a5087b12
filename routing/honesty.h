/* Usage honesty: does a node bill for the tokens it really served? Nodes are untrusted, and a
 * node that reports more usage than its peers costs more than its listed price says.
 *
 * Per (backend, model), every answer with reported usage is a sample: the node's prompt and
 * completion tokens against the gateway's own estimates from what was sent (the prompt's
 * estimate from the body) and delivered (completion: bytes of text ÷ 4). The node's ratio is
 * a ratio of sums decayed over about the last 64 answers, for prompt and completion apart.
 * The reference is the median ratio of its peers (the other nodes serving the model with at
 * least routing.honesty_min_samples samples, not flagged themselves), or 1 (the gateway's own
 * estimate) when it has none. Its inflation is its ratio ÷ the reference.
 *
 * A node is flagged when its inflation (the larger of prompt and completion) passes
 * routing.honesty_tolerance (twice that with no peer to compare with), once it has
 * honesty_min_samples samples, or at once when it claimed more than it could have produced
 * (a clamped claim, evidence enough). It is unflagged when its inflation falls back under
 * the tolerance ÷ 1.2. A flagged node is billed at the peer-calibrated estimate (never more
 * than it claims) and routed at its effective price: listed price × its inflation, per token
 * type; honest nodes are billed and routed at their own numbers.
 *
 * Lock-free: sums are doubles kept as atomic bits; two racing samples may lose one, which
 * only makes a ratio a sample older. */
#ifndef TOLLGATE_HONESTY_H
#define TOLLGATE_HONESTY_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct honesty {
    _Atomic uint64_t rep_prompt, est_prompt; /* decayed sums, doubles as bits */
    _Atomic uint64_t rep_completion, est_completion;
    _Atomic uint64_t impossible; /* decayed count of clamped claims */
    atomic_uint samples;
    atomic_bool flagged;
    _Atomic uint64_t inflation_in, inflation_out; /* vs peers at the last sample; doubles */
};

struct honesty_sample {
    long rep_prompt, rep_completion; /* what the node reported */
    long est_prompt, est_completion; /* the gateway's estimate of what was sent and delivered */
    bool impossible;                 /* the claim exceeded what could have been produced */
};

struct honesty_verdict {
    bool flagged;
    bool changed;                      /* this sample flagged or cleared the node */
    double inflation;                  /* the larger of prompt and completion, vs peers */
    double ref_prompt, ref_completion; /* the reference ratios */
    long bill_prompt, bill_completion; /* flagged: the peer-calibrated estimate */
};

/* Adds a sample for `self` (a model of one of route's targets) and judges the node against
 * the route's other targets. */
void honesty_observe(const struct config_route *route, const struct config_model *self,
                     const struct config_routing *rc, const struct honesty_sample *s,
                     struct honesty_verdict *v);

/* The node's own ratio of reported to estimated tokens (1 with no samples). */
double honesty_ratio(const struct honesty *h, bool completion);
bool honesty_flagged(const struct honesty *h);
/* What routing multiplies the listed price by: the inflation when flagged, else 1. */
double honesty_price_factor(const struct honesty *h, bool completion);
/* The inflation at the last sample (1 with none). */
double honesty_inflation(const struct honesty *h);

#endif

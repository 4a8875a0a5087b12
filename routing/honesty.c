#include "routing/honesty.h"

#include "base/double_bits.h"
#include "routing/backend.h"

#include <math.h>
#include <stdlib.h>

#define RELAXED memory_order_relaxed
/* Sums decay by 1/64 a sample: about the last 64 answers count. */
#define HONESTY_KEEP (63.0 / 64.0)
/* Unflagged below tolerance ÷ this (hysteresis, so a node near the line does not flap). */
#define HONESTY_HYSTERESIS 1.2

static void decay_add(_Atomic uint64_t *v, double x)
{
    double_bits_store(v, double_bits_load(v) * HONESTY_KEEP + x);
}

double honesty_ratio(const struct honesty *h, bool completion)
{
    double rep = double_bits_load(completion ? &h->rep_completion : &h->rep_prompt);
    double est = double_bits_load(completion ? &h->est_completion : &h->est_prompt);
    return est > 0 ? rep / est : 1;
}

bool honesty_flagged(const struct honesty *h)
{
    return atomic_load_explicit(&h->flagged, RELAXED);
}

double honesty_price_factor(const struct honesty *h, bool completion)
{
    if (!honesty_flagged(h))
        return 1;
    double f = double_bits_load(completion ? &h->inflation_out : &h->inflation_in);
    return f > 1 ? f : 1;
}

double honesty_inflation(const struct honesty *h)
{
    double in = double_bits_load(&h->inflation_in), out = double_bits_load(&h->inflation_out);
    double f = in > out ? in : out;
    return f > 0 ? f : 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The median ratio of the peers that have enough samples and are not flagged; 0 with none. */
static double peer_reference(const struct config_route *route, const struct honesty *self,
                             unsigned min_samples, bool completion)
{
    double v[256];
    size_t n = 0;
    for (size_t i = 0; i < route->n_targets && n < 256; i++) {
        const struct backend_price *p = route->targets[i].model->price;
        if (!p || &p->honesty == self)
            continue;
        const struct honesty *h = &p->honesty;
        if (atomic_load_explicit(&h->samples, RELAXED) < min_samples || honesty_flagged(h))
            continue;
        if (double_bits_load(completion ? &h->est_completion : &h->est_prompt) <= 0)
            continue;
        v[n++] = honesty_ratio(h, completion);
    }
    if (!n)
        return 0;
    qsort(v, n, sizeof v[0], cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

void honesty_observe(const struct config_route *route, const struct config_model *self,
                     const struct config_routing *rc, const struct honesty_sample *s,
                     struct honesty_verdict *v)
{
    memset(v, 0, sizeof *v);
    v->ref_prompt = v->ref_completion = 1;
    v->inflation = 1;
    if (!self->price)
        return;
    struct honesty *h = &self->price->honesty;
    bool have_prompt = s->est_prompt > 0 && s->rep_prompt >= 0;
    bool have_completion = s->est_completion > 0 && s->rep_completion >= 0;
    if (have_prompt) {
        decay_add(&h->rep_prompt, (double)s->rep_prompt);
        decay_add(&h->est_prompt, (double)s->est_prompt);
    }
    if (have_completion) {
        decay_add(&h->rep_completion, (double)s->rep_completion);
        decay_add(&h->est_completion, (double)s->est_completion);
    }
    decay_add(&h->impossible, s->impossible ? 1 : 0);
    unsigned samples = atomic_load_explicit(&h->samples, RELAXED);
    if ((have_prompt || have_completion) && samples < UINT32_MAX)
        atomic_store_explicit(&h->samples, ++samples, RELAXED);

    double ref_p = peer_reference(route, h, rc->honesty_min_samples, false);
    double ref_c = peer_reference(route, h, rc->honesty_min_samples, true);
    bool peers = ref_p > 0 || ref_c > 0;
    v->ref_prompt = ref_p > 0 ? ref_p : 1;
    v->ref_completion = ref_c > 0 ? ref_c : 1;
    double infl_p =
        double_bits_load(&h->est_prompt) > 0 ? honesty_ratio(h, false) / v->ref_prompt : 1;
    double infl_c =
        double_bits_load(&h->est_completion) > 0 ? honesty_ratio(h, true) / v->ref_completion : 1;
    double_bits_store(&h->inflation_in, infl_p);
    double_bits_store(&h->inflation_out, infl_c);
    v->inflation = infl_p > infl_c ? infl_p : infl_c;

    double threshold = rc->honesty_tolerance * (peers ? 1 : 2);
    bool evidence = samples >= rc->honesty_min_samples || double_bits_load(&h->impossible) >= 0.5;
    bool was = honesty_flagged(h);
    bool now = was;
    if (evidence && !was && v->inflation > threshold)
        now = true;
    else if (evidence && was && v->inflation < threshold / HONESTY_HYSTERESIS)
        now = false;
    if (now != was)
        atomic_store_explicit(&h->flagged, now, RELAXED);
    v->flagged = now;
    v->changed = now != was;
    if (now) {
        v->bill_prompt =
            (long)llround((double)(s->est_prompt > 0 ? s->est_prompt : 0) * v->ref_prompt);
        v->bill_completion = (long)llround((double)(s->est_completion > 0 ? s->est_completion : 0) *
                                           v->ref_completion);
    }
}

#include "routing/backend.h"

#include "base/buf.h"
#include "base/clock.h"
#include "metrics/metrics.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Guards the registry list only; taken when a config is loaded, never per request. */
static pthread_mutex_t backend_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct backend_state *backend_registry;

#define RELAXED memory_order_relaxed

static struct backend_state *backend_state_for(const char *name)
{
    for (struct backend_state *s = backend_registry; s; s = s->next)
        if (!strcmp(s->name, name))
            return s;
    struct backend_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->name = strdup(name);
    if (!s->name) {
        free(s);
        return NULL;
    }
    s->metric_backend = metrics_label(METRICS_LABEL_BACKEND, name, NULL);
    s->next = backend_registry;
    backend_registry = s;
    return s;
}

static struct backend_price *backend_price_for(struct backend_state *s, const char *model)
{
    for (struct backend_price *p = s->prices; p; p = p->next)
        if (!strcmp(p->model, model))
            return p;
    struct backend_price *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    p->model = strdup(model);
    if (!p->model) {
        free(p);
        return NULL;
    }
    p->metric_pair = metrics_label(METRICS_LABEL_PAIR, s->name, model);
    /* Published last: readers walking the list see a complete slot. */
    p->next = s->prices;
    s->prices = p;
    return p;
}

int backend_attach(struct config *cfg)
{
    int result = 0;
    pthread_mutex_lock(&backend_registry_lock);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct config_backend *b = &cfg->backends[i];
        b->state = backend_state_for(b->name);
        if (!b->state) {
            result = -1;
            continue;
        }
        for (size_t j = 0; j < b->n_models; j++) {
            b->models[j].price = backend_price_for(b->state, b->models[j].name);
            if (!b->models[j].price)
                result = -1;
        }
    }
    pthread_mutex_unlock(&backend_registry_lock);
    for (size_t i = 0; i < cfg->n_routes; i++)
        cfg->routes[i].metric_model =
            metrics_label(METRICS_LABEL_MODEL, cfg->routes[i].model, NULL);
    for (size_t i = 0; i < cfg->n_keys; i++)
        cfg->keys[i].metric_key = metrics_label(METRICS_LABEL_KEY, cfg->keys[i].name, NULL);
    return result;
}

bool backend_available(struct backend_state *s, int64_t now_ms, int64_t *back_ms)
{
    int64_t until = atomic_load_explicit(&s->ejected_until_ms, RELAXED);
    bool down = atomic_load_explicit(&s->probe_down, RELAXED);
    if (back_ms)
        *back_ms = down ? 0 : until;
    return !down && until <= now_ms;
}

static void ewma(_Atomic uint64_t *slot, double seconds)
{
    uint64_t sample = (uint64_t)(seconds * 1e6);
    uint64_t old = atomic_load_explicit(slot, RELAXED);
    atomic_store_explicit(slot, old ? (old * 4 + sample) / 5 : sample, RELAXED);
}

void backend_record_success(struct backend_state *s, double ttfb_s, double total_s)
{
    if (atomic_load_explicit(&s->consecutive_failures, RELAXED))
        atomic_store_explicit(&s->consecutive_failures, 0, RELAXED);
    if (atomic_load_explicit(&s->eject_streak, RELAXED))
        atomic_store_explicit(&s->eject_streak, 0, RELAXED);
    if (ttfb_s > 0)
        ewma(&s->ttfb_ewma_us, ttfb_s);
    if (total_s > 0)
        ewma(&s->duration_ewma_us, total_s);
}

static void backend_eject(struct backend_state *s, const struct config_health *h,
                          enum backend_eject_reason reason, int64_t now_ms)
{
    unsigned streak = atomic_fetch_add_explicit(&s->eject_streak, 1, RELAXED);
    long cooldown = h->cooldown_ms;
    for (unsigned i = 0; i < streak && cooldown < h->max_cooldown_ms; i++)
        cooldown *= 2;
    if (cooldown > h->max_cooldown_ms)
        cooldown = h->max_cooldown_ms;
    atomic_store_explicit(&s->eject_reason, reason, RELAXED);
    atomic_store_explicit(&s->ejected_until_ms, now_ms + cooldown, RELAXED);
    atomic_store_explicit(&s->consecutive_failures, 0, RELAXED);
    atomic_fetch_add_explicit(&s->ejections, 1, RELAXED);
}

void backend_record_failure(struct backend_state *s, const struct config_health *h,
                            bool unreachable, int64_t now_ms)
{
    atomic_fetch_add_explicit(&s->failures, 1, RELAXED);
    if (atomic_load_explicit(&s->ejected_until_ms, RELAXED) > now_ms)
        return; /* already out: late failures of requests sent before do not extend it */
    unsigned n = atomic_fetch_add_explicit(&s->consecutive_failures, 1, RELAXED) + 1;
    /* Back from an ejection and failing again: out at once, for longer. */
    bool on_trial = atomic_load_explicit(&s->eject_streak, RELAXED) > 0;
    if (on_trial || n >= h->eject_after_failures)
        backend_eject(s, h, unreachable ? BACKEND_EJECT_UNREACHABLE : BACKEND_EJECT_FAILING,
                      now_ms);
}

void backend_record_rate_limited(struct backend_state *s, long retry_after_ms, int64_t now_ms)
{
    if (retry_after_ms < 1000)
        retry_after_ms = 1000;
    int64_t until = now_ms + retry_after_ms;
    if (atomic_load_explicit(&s->ejected_until_ms, RELAXED) < until) {
        atomic_store_explicit(&s->eject_reason, BACKEND_EJECT_RATE_LIMITED, RELAXED);
        atomic_store_explicit(&s->ejected_until_ms, until, RELAXED);
    }
}

void backend_record_probe(struct backend_state *s, const struct config_health *h, bool ok,
                          int64_t now_ms)
{
    atomic_store_explicit(&s->last_probe_ms, now_ms, RELAXED);
    if (ok) {
        atomic_store_explicit(&s->probe_failures, 0, RELAXED);
        atomic_store_explicit(&s->probe_down, false, RELAXED);
        /* The node answers again: an ejection for being unreachable is over. */
        if (atomic_load_explicit(&s->eject_reason, RELAXED) == BACKEND_EJECT_UNREACHABLE &&
            atomic_load_explicit(&s->ejected_until_ms, RELAXED) > now_ms) {
            atomic_store_explicit(&s->ejected_until_ms, 0, RELAXED);
            atomic_store_explicit(&s->eject_reason, BACKEND_EJECT_NONE, RELAXED);
        }
        return;
    }
    unsigned n = atomic_fetch_add_explicit(&s->probe_failures, 1, RELAXED) + 1;
    if (n >= h->eject_after_failures)
        atomic_store_explicit(&s->probe_down, true, RELAXED);
}

static double bits_to_double(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static uint64_t double_to_bits(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

double backend_input_price(const struct config_model *m)
{
    if (m->price && atomic_load_explicit(&m->price->live, memory_order_acquire))
        return bits_to_double(atomic_load_explicit(&m->price->input_bits, RELAXED));
    return m->input_usd_per_mtok;
}

double backend_output_price(const struct config_model *m)
{
    if (m->price && atomic_load_explicit(&m->price->live, memory_order_acquire))
        return bits_to_double(atomic_load_explicit(&m->price->output_bits, RELAXED));
    return m->output_usd_per_mtok;
}

void backend_set_price(struct backend_price *p, double input_usd_per_mtok,
                       double output_usd_per_mtok, int64_t now_ms)
{
    atomic_store_explicit(&p->input_bits, double_to_bits(input_usd_per_mtok), RELAXED);
    atomic_store_explicit(&p->output_bits, double_to_bits(output_usd_per_mtok), RELAXED);
    atomic_store_explicit(&p->updated_ms, now_ms, RELAXED);
    atomic_store_explicit(&p->live, true, memory_order_release);
}

const char *backend_health_name(struct backend_state *s, int64_t now_ms)
{
    if (atomic_load_explicit(&s->probe_down, RELAXED))
        return "down";
    if (atomic_load_explicit(&s->ejected_until_ms, RELAXED) > now_ms)
        return atomic_load_explicit(&s->eject_reason, RELAXED) == BACKEND_EJECT_RATE_LIMITED
                   ? "rate_limited"
                   : "ejected";
    return "up";
}

/* A backend's label as its state interned it ("other" without one). */
static const char *backend_label(const struct config_backend *b)
{
    return metrics_label_name(METRICS_LABEL_BACKEND, b->state ? b->state->metric_backend : 0);
}

int backend_render_metrics(struct buf *out, const struct config *cfg)
{
    static const struct {
        const char *name, *type, *help;
    } families[] = {
        {"tollgate_backend_up", "gauge",
         "Whether the backend takes requests (1) or is ejected or failing its probes (0)."},
        {"tollgate_backend_inflight", "gauge", "Requests in flight to the backend (all workers)."},
        {"tollgate_backend_ejections_total", "counter",
         "Times the backend was ejected after failures."},
    };
    int err = 0;
    int64_t now = clock_mono_ms();
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        err |= buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help,
                          families[f].name, families[f].type);
        for (size_t i = 0; i < cfg->n_backends; i++) {
            struct backend_state *st = cfg->backends[i].state;
            double v = 0;
            if (st && f == 0)
                v = backend_available(st, now, NULL);
            else if (st && f == 1)
                v = atomic_load_explicit(&st->inflight, memory_order_relaxed);
            else if (st)
                v = (double)atomic_load_explicit(&st->ejections, memory_order_relaxed);
            err |= buf_printf(out, "%s{backend=\"%s\"} %.17g\n", families[f].name,
                              backend_label(&cfg->backends[i]), v);
        }
    }
    err |= buf_append_str(out, "# HELP tollgate_backend_price_usd_per_mtok Current price, USD "
                               "per million tokens (live feed or config).\n"
                               "# TYPE tollgate_backend_price_usd_per_mtok gauge\n");
    for (size_t i = 0; i < cfg->n_backends; i++) {
        const struct config_backend *b = &cfg->backends[i];
        for (size_t j = 0; j < b->n_models; j++) {
            const struct config_model *m = &b->models[j];
            unsigned pair = m->price ? m->price->metric_pair : 0;
            for (int t = 0; t < 2; t++)
                err |= buf_printf(out,
                                  "tollgate_backend_price_usd_per_mtok{backend=\"%s\",model=\"%s\","
                                  "type=\"%s\"} %.17g\n",
                                  metrics_label_name(METRICS_LABEL_PAIR, pair),
                                  metrics_pair_model(pair), metrics_token_type(t),
                                  t ? backend_output_price(m) : backend_input_price(m));
        }
    }
    return err ? -1 : 0;
}

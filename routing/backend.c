#include "routing/backend.h"

#include "base/buf.h"
#include "base/clock.h"
#include "base/double_bits.h"
#include "metrics/metrics.h"
#include "routing/demand.h"

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
            struct config_model *m = &b->models[j];
            m->price = backend_price_for(b->state, m->name);
            if (!m->price)
                result = -1;
            else /* gen_ai.provider.name, server.address, gen_ai.response.model */
                metrics_pair_describe(m->price->metric_pair, b->provider, b->url,
                                      m->upstream ? m->upstream : m->name);
        }
    }
    if (demand_attach(cfg))
        result = -1;
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
    bool down = atomic_load_explicit(&s->probe_down, RELAXED) || stuck_suspected(&s->stuck);
    if (back_ms)
        *back_ms = down ? 0 : until;
    return !down && until <= now_ms;
}

enum backend_health backend_health(struct backend_state *s, int64_t now_ms)
{
    if (atomic_load_explicit(&s->probe_down, RELAXED))
        return BACKEND_DOWN;
    if (atomic_load_explicit(&s->ejected_until_ms, RELAXED) > now_ms)
        return atomic_load_explicit(&s->eject_reason, RELAXED) == BACKEND_EJECT_RATE_LIMITED
                   ? BACKEND_RATE_LIMITED
                   : BACKEND_EJECTED;
    if (stuck_suspected(&s->stuck))
        return BACKEND_SUSPECTED;
    return BACKEND_UP;
}

unsigned backend_limit(const struct config *cfg, const struct config_backend *b, int64_t now_ms)
{
    return limiter_effective(&b->state->limit, &cfg->routing, cfg->health.slow_start_ms,
                             b->max_inflight, now_ms);
}

int backend_attempt_begin(struct backend_state *s)
{
    stuck_attempt_begin(&s->stuck);
    atomic_fetch_add_explicit(&s->requests, 1, RELAXED);
    return atomic_fetch_add_explicit(&s->inflight, 1, RELAXED) + 1;
}

void backend_attempt_end(struct backend_state *s)
{
    stuck_attempt_end(&s->stuck);
}

void backend_first_byte(struct backend_state *s, int64_t started_us, double ttfb_s, bool stream,
                        int64_t now_ms)
{
    if (stream)
        latency_first_byte(&s->lat, ttfb_s);
    if (stuck_answered(&s->stuck, started_us))
        limiter_ramp(&s->limit, now_ms);
}

void backend_record_served(struct backend_state *s, const struct config_routing *rc,
                           int inflight_at_send, double ttfb_s, double total_s, long tokens,
                           int64_t now_ms)
{
    backend_record_success(s, ttfb_s > 0 ? ttfb_s : total_s, total_s);
    latency_answer(&s->lat, ttfb_s, total_s, tokens);
    limiter_on_success(&s->limit, rc, inflight_at_send, latency_slowdown(&s->lat), now_ms);
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
    atomic_store_explicit(&s->ejected_at_ms, now_ms, RELAXED);
    atomic_store_explicit(&s->ejected_until_ms, now_ms + cooldown, RELAXED);
    atomic_store_explicit(&s->consecutive_failures, 0, RELAXED);
    atomic_fetch_add_explicit(&s->ejections, 1, RELAXED);
    limiter_ramp(&s->limit, now_ms + cooldown);
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

/* Backoffs are at least this far apart (µs): a 429 answers in a moment, a slot frees in an
 * answer's time. */
#define BACKEND_BACKOFF_ROUND_MIN_US 100000

bool backend_record_rate_limited(struct backend_state *s, const struct config_routing *rc,
                                 long retry_after_ms, int64_t started_us, int64_t now_ms)
{
    /* This attempt still holds its slot: the others are what the node held besides. */
    int others = atomic_load_explicit(&s->inflight, RELAXED) - 1;
    int64_t round = (int64_t)atomic_load_explicit(&s->duration_ewma_us, RELAXED);
    if (round < BACKEND_BACKOFF_ROUND_MIN_US)
        round = BACKEND_BACKOFF_ROUND_MIN_US;
    limiter_on_rate_limited(&s->limit, rc, others, started_us, now_ms * 1000, round);
    if (others > 0 && retry_after_ms < rc->rate_limit_pause_ms)
        return false; /* full right now: the limit says so, the node stays in */
    if (retry_after_ms < 1000)
        retry_after_ms = 1000;
    int64_t until = now_ms + retry_after_ms;
    if (atomic_load_explicit(&s->ejected_until_ms, RELAXED) < until) {
        atomic_store_explicit(&s->eject_reason, BACKEND_EJECT_RATE_LIMITED, RELAXED);
        atomic_store_explicit(&s->ejected_until_ms, until, RELAXED);
        limiter_ramp(&s->limit, until);
    }
    return true;
}

/* A failing node's cooldown may end early on a good probe only the first times in a row:
 * one whose probes answer while its requests fail is then left to its doubling cooldown. */
#define BACKEND_PROBE_READMITS 2

void backend_record_probe(struct backend_state *s, const struct config_health *h, bool ok,
                          int64_t started_ms, int64_t now_ms)
{
    atomic_store_explicit(&s->last_probe_ms, now_ms, RELAXED);
    if (ok) {
        atomic_store_explicit(&s->probe_failures, 0, RELAXED);
        if (atomic_load_explicit(&s->probe_down, RELAXED)) {
            atomic_store_explicit(&s->probe_down, false, RELAXED);
            limiter_ramp(&s->limit, now_ms);
        }
        /* The node answers again: an ejection for being unreachable is over, and one for
         * failing answers too when its probes failed during it (so this one is news: a probe
         * that always answers says nothing about inference) and it is not a repeat offender.
         * A rate-limit pause is the node's own word: it runs its course. */
        int reason = atomic_load_explicit(&s->eject_reason, RELAXED);
        int64_t ejected_at = atomic_load_explicit(&s->ejected_at_ms, RELAXED);
        bool early = reason == BACKEND_EJECT_UNREACHABLE ||
                     (reason == BACKEND_EJECT_FAILING && started_ms >= ejected_at &&
                      atomic_load_explicit(&s->probe_failed_ms, RELAXED) >= ejected_at &&
                      atomic_load_explicit(&s->eject_streak, RELAXED) <= BACKEND_PROBE_READMITS);
        if (early && atomic_load_explicit(&s->ejected_until_ms, RELAXED) > now_ms) {
            atomic_store_explicit(&s->ejected_until_ms, 0, RELAXED);
            atomic_store_explicit(&s->eject_reason, BACKEND_EJECT_NONE, RELAXED);
            limiter_ramp(&s->limit, now_ms);
        }
        if (stuck_probe_ok(&s->stuck, h, started_ms, now_ms))
            limiter_ramp(&s->limit, now_ms);
        return;
    }
    atomic_store_explicit(&s->probe_failed_ms, now_ms, RELAXED);
    unsigned n = atomic_fetch_add_explicit(&s->probe_failures, 1, RELAXED) + 1;
    if (n >= h->eject_after_failures)
        atomic_store_explicit(&s->probe_down, true, RELAXED);
}

double backend_input_price(const struct config_model *m)
{
    if (m->price && atomic_load_explicit(&m->price->live, memory_order_acquire))
        return double_bits_load(&m->price->input_bits);
    return m->input_usd_per_mtok;
}

double backend_output_price(const struct config_model *m)
{
    if (m->price && atomic_load_explicit(&m->price->live, memory_order_acquire))
        return double_bits_load(&m->price->output_bits);
    return m->output_usd_per_mtok;
}

void backend_set_price(struct backend_price *p, double input_usd_per_mtok,
                       double output_usd_per_mtok, int64_t now_ms)
{
    uint64_t in = double_bits_of(input_usd_per_mtok), out = double_bits_of(output_usd_per_mtok);
    bool was_live = atomic_load_explicit(&p->live, memory_order_acquire);
    uint64_t old_in = atomic_load_explicit(&p->input_bits, RELAXED);
    uint64_t old_out = atomic_load_explicit(&p->output_bits, RELAXED);
    if (was_live && old_in == in && old_out == out) {
        atomic_store_explicit(&p->checked_ms, now_ms, RELAXED);
        return;
    }
    uint64_t v = atomic_load_explicit(&p->version, RELAXED);
    atomic_store_explicit(&p->version, v + 1, RELAXED); /* odd: being written */
    atomic_thread_fence(memory_order_release);
    atomic_store_explicit(&p->prev_input_bits, old_in, RELAXED);
    atomic_store_explicit(&p->prev_output_bits, old_out, RELAXED);
    atomic_store_explicit(&p->prev_checked_ms,
                          was_live ? atomic_load_explicit(&p->checked_ms, RELAXED) : 0, RELAXED);
    atomic_store_explicit(&p->input_bits, in, RELAXED);
    atomic_store_explicit(&p->output_bits, out, RELAXED);
    atomic_store_explicit(&p->updated_ms, now_ms, RELAXED);
    atomic_store_explicit(&p->checked_ms, now_ms, RELAXED);
    atomic_store_explicit(&p->version, v + 2, memory_order_release);
    atomic_store_explicit(&p->live, true, memory_order_release);
}

/* A consistent view of a price slot (the writer is one thread and quick: a few tries do). */
struct price_view {
    uint64_t version;
    double input, output, prev_input, prev_output;
    int64_t prev_checked_ms, updated_ms;
};

static bool price_read(const struct backend_price *p, struct price_view *v)
{
    for (int tries = 0; tries < 100; tries++) {
        uint64_t v1 = atomic_load_explicit(&p->version, memory_order_acquire);
        if (v1 & 1)
            continue;
        v->input = double_bits_load(&p->input_bits);
        v->output = double_bits_load(&p->output_bits);
        v->prev_input = double_bits_load(&p->prev_input_bits);
        v->prev_output = double_bits_load(&p->prev_output_bits);
        v->prev_checked_ms = atomic_load_explicit(&p->prev_checked_ms, RELAXED);
        v->updated_ms = atomic_load_explicit(&p->updated_ms, RELAXED);
        atomic_thread_fence(memory_order_acquire);
        if (atomic_load_explicit(&p->version, RELAXED) == v1) {
            v->version = v1;
            return true;
        }
    }
    return false;
}

void backend_capture_price(const struct config_model *m, int64_t now_ms,
                           struct backend_price_capture *c)
{
    struct price_view v;
    c->at_ms = now_ms;
    c->version = 0;
    c->input = m->input_usd_per_mtok;
    c->output = m->output_usd_per_mtok;
    if (!m->price || !atomic_load_explicit(&m->price->live, memory_order_acquire) ||
        !price_read(m->price, &v)) {
        c->input = backend_input_price(m);
        c->output = backend_output_price(m);
        return;
    }
    c->version = v.version;
    c->input = v.input;
    c->output = v.output;
}

void backend_billed_price(const struct config_model *m, const struct backend_price_capture *c,
                          double *input, double *output)
{
    *input = c->input;
    *output = c->output;
    struct price_view v;
    if (!c->version || !m->price || !price_read(m->price, &v))
        return;
    /* Exactly one change since, shown after the attempt was sent, with a known confirmation
     * of the old price before it. */
    if (v.version != c->version + 2 || v.prev_checked_ms <= 0 || v.updated_ms <= c->at_ms ||
        v.updated_ms <= v.prev_checked_ms)
        return;
    double share =
        (double)(c->at_ms - v.prev_checked_ms) / (double)(v.updated_ms - v.prev_checked_ms);
    if (share <= 0)
        return; /* the old price was confirmed after it was sent */
    if (share > 1)
        share = 1;
    *input = c->input + (v.input - c->input) * share;
    *output = c->output + (v.output - c->output) * share;
}

void backend_confirm_price(struct backend_price *p, int64_t now_ms)
{
    atomic_store_explicit(&p->checked_ms, now_ms, RELAXED);
}

const char *backend_health_name(struct backend_state *s, int64_t now_ms)
{
    static const char *const names[] = {
        [BACKEND_UP] = "up",
        [BACKEND_EJECTED] = "ejected",
        [BACKEND_RATE_LIMITED] = "rate_limited",
        [BACKEND_DOWN] = "down",
        [BACKEND_SUSPECTED] = "suspected",
    };
    return names[backend_health(s, now_ms)];
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
        {"tollgate_backend_limit", "gauge",
         "The concurrency limit the backend is held to now (learned, slow start included)."},
        {"tollgate_backend_suspected", "gauge",
         "Whether the backend is suspected stuck: requests in flight and none answered (1)."},
        {"tollgate_backend_stuck_total", "counter", "Times the backend was suspected stuck."},
        {"tollgate_backend_limit_cuts_total", "counter",
         "Times the learned limit was lowered (429s and slow first bytes)."},
    };
    int err = 0;
    int64_t now = clock_mono_ms();
    for (size_t f = 0; f < sizeof families / sizeof families[0]; f++) {
        err |= buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", families[f].name, families[f].help,
                          families[f].name, families[f].type);
        for (size_t i = 0; i < cfg->n_backends; i++) {
            struct backend_state *st = cfg->backends[i].state;
            double v = 0;
            if (!st)
                v = 0;
            else if (f == 0)
                v = backend_available(st, now, NULL);
            else if (f == 1)
                v = atomic_load_explicit(&st->inflight, RELAXED);
            else if (f == 2)
                v = (double)atomic_load_explicit(&st->ejections, RELAXED);
            else if (f == 3)
                v = backend_limit(cfg, &cfg->backends[i], now);
            else if (f == 4)
                v = stuck_suspected(&st->stuck);
            else if (f == 5)
                v = (double)atomic_load_explicit(&st->stuck.total, RELAXED);
            else
                v = (double)atomic_load_explicit(&st->limit.cuts, RELAXED);
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
    /* Per (backend, model): how much more usage the node reports than its peers, whether it
     * is flagged for it (routing/honesty.h), and how old its live price is. */
    static const struct {
        const char *name, *help;
    } pair_families[] = {
        {"tollgate_backend_usage_inflation",
         "Usage the backend reports / what its peers report for the same work (1 = as honest)."},
        {"tollgate_backend_usage_flagged",
         "Whether the backend is flagged for over-reporting usage (billed at the peers' rate)."},
        {"tollgate_backend_price_age_seconds",
         "Seconds since the live price was last confirmed by its feed (-1: config price)."},
    };
    for (size_t f = 0; f < sizeof pair_families / sizeof pair_families[0]; f++) {
        err |= buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", pair_families[f].name,
                          pair_families[f].help, pair_families[f].name);
        for (size_t i = 0; i < cfg->n_backends; i++) {
            const struct config_backend *b = &cfg->backends[i];
            for (size_t j = 0; j < b->n_models; j++) {
                const struct backend_price *p = b->models[j].price;
                if (!p)
                    continue;
                double v;
                if (f == 0)
                    v = honesty_inflation(&p->honesty);
                else if (f == 1)
                    v = honesty_flagged(&p->honesty);
                else
                    v = atomic_load_explicit(&p->live, memory_order_acquire)
                            ? (double)(now - atomic_load_explicit(&p->checked_ms, RELAXED)) / 1000
                            : -1;
                err |= buf_printf(out, "%s{backend=\"%s\",model=\"%s\"} %.17g\n",
                                  pair_families[f].name,
                                  metrics_label_name(METRICS_LABEL_PAIR, p->metric_pair),
                                  metrics_pair_model(p->metric_pair), v);
            }
        }
    }
    return err ? -1 : 0;
}

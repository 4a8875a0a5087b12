/* Runtime state of each backend, shared by all workers and kept across config reloads,
 * looked up by backend name: in-flight count, health (passive ejection, active probes,
 * rate-limit pauses), recent latency, counters, and live prices per model.
 *
 * States and price slots are created while a config is loaded (under a mutex, never on the
 * hot path) and never freed, so pointers to them stay valid for the life of the process.
 * Every field is an atomic: workers and the health thread update them without a lock; two
 * racing updates may both apply, which only makes a decision a request early or late. */
#ifndef TOLLGATE_BACKEND_H
#define TOLLGATE_BACKEND_H

#include "config/config.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct buf;

enum backend_eject_reason {
    BACKEND_EJECT_NONE = 0,
    BACKEND_EJECT_UNREACHABLE,  /* connect errors/timeouts: a good probe readmits at once */
    BACKEND_EJECT_FAILING,      /* 5xx, garbage: out for the whole cooldown */
    BACKEND_EJECT_RATE_LIMITED, /* 429: out for its retry-after */
};

/* A live price for one model of one backend (USD per million tokens). */
struct backend_price {
    char *model;
    _Atomic uint64_t input_bits; /* doubles, stored as bits so they can be atomic */
    _Atomic uint64_t output_bits;
    atomic_bool live;
    _Atomic int64_t updated_ms;
    unsigned metric_pair; /* (backend, model) label index (metrics/metrics.h) */
    struct backend_price *next;
};

struct backend_state {
    char *name;
    unsigned metric_backend; /* label index (metrics/metrics.h) */
    atomic_int inflight;
    _Atomic uint64_t requests;
    _Atomic uint64_t failures;
    _Atomic uint64_t ejections;
    atomic_uint consecutive_failures;
    atomic_uint eject_streak; /* ejections with no success between: cooldown doubles */
    _Atomic int64_t ejected_until_ms;
    atomic_int eject_reason;
    atomic_uint probe_failures;
    atomic_bool probe_down; /* active probes say the node does not answer */
    _Atomic int64_t last_probe_ms;
    _Atomic uint64_t ttfb_ewma_us; /* recent time to first byte; 0 = not measured yet */
    _Atomic uint64_t duration_ewma_us;
    struct backend_price *prices;
    struct backend_state *next; /* registry list */
};

/* Points every backend (and model price slot) of `cfg` at its state, creating the missing
 * ones, and gives backends, models, (backend, model) pairs and static keys their metric label
 * indexes. 0, or -1 on OOM. */
int backend_attach(struct config *cfg);

/* Appends the gauges of `cfg`'s backends (up, in flight, ejections, prices) in the
 * Prometheus text format. 0, or -1 when `out` is full. */
int backend_render_metrics(struct buf *out, const struct config *cfg);

/* Whether the backend may take a request now; when not, *back_ms (if not NULL) is when it
 * is expected back (0 when unknown, e.g. probes failing). */
bool backend_available(struct backend_state *s, int64_t now_ms, int64_t *back_ms);

void backend_record_success(struct backend_state *s, double ttfb_s, double total_s);
/* A failure the backend caused (connect error, timeout, 5xx, garbage). */
void backend_record_failure(struct backend_state *s, const struct config_health *h,
                            bool unreachable, int64_t now_ms);
/* A 429: the backend is paused for retry_after_ms (at least one second). */
void backend_record_rate_limited(struct backend_state *s, long retry_after_ms, int64_t now_ms);
void backend_record_probe(struct backend_state *s, const struct config_health *h, bool ok,
                          int64_t now_ms);

/* The model's current prices: live ones when a price feed set them, else the config's. */
double backend_input_price(const struct config_model *m);
double backend_output_price(const struct config_model *m);
void backend_set_price(struct backend_price *p, double input_usd_per_mtok,
                       double output_usd_per_mtok, int64_t now_ms);

/* "up", "ejected", "rate_limited", "down" (probes failing). */
const char *backend_health_name(struct backend_state *s, int64_t now_ms);

#endif

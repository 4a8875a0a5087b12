/* Runtime state of each backend, shared by all workers and kept across config reloads,
 * looked up by backend name: in-flight count, health (passive ejection, active probes,
 * rate-limit pauses, stuck suspicion), its learned concurrency limit and slow start, recent
 * latency, counters, and per model its live price and usage honesty. The decisions live in
 * one file per concern (limiter, latency, stuck, honesty); this module keeps the state and
 * ties them to what happens to a request.
 *
 * States and price slots are created while a config is loaded (under a mutex, never on the
 * hot path) and never freed, so pointers to them stay valid for the life of the process.
 * Every field is an atomic: workers and the health thread update them without a lock; two
 * racing updates may both apply, which only makes a decision a request early or late. */
#ifndef TOLLGATE_BACKEND_H
#define TOLLGATE_BACKEND_H

#include "config/config.h"
#include "routing/capability.h"
#include "routing/honesty.h"
#include "routing/latency.h"
#include "routing/limiter.h"
#include "routing/stuck.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct buf;

/* What the router sees of a backend now (backend_health()). */
enum backend_health {
    BACKEND_UP = 0,
    BACKEND_EJECTED,      /* failures: out for its cooldown */
    BACKEND_RATE_LIMITED, /* a long retry-after, or a 429 with nothing else in flight */
    BACKEND_DOWN,         /* probes failing */
    BACKEND_SUSPECTED,    /* stuck: requests in flight and none answered (routing/stuck.h) */
};

enum backend_eject_reason {
    BACKEND_EJECT_NONE = 0,
    BACKEND_EJECT_UNREACHABLE,  /* connect errors/timeouts: a good probe readmits at once */
    BACKEND_EJECT_FAILING,      /* 5xx, garbage: out for the whole cooldown */
    BACKEND_EJECT_RATE_LIMITED, /* 429: out for its retry-after */
};

/* A live price for one model of one backend (USD per million tokens). Written by the health
 * thread only; `version` is a sequence count (odd while a change is written) that lets a
 * reader take the price and its predecessor consistently. */
struct backend_price {
    char *model;
    _Atomic uint64_t input_bits; /* doubles, stored as bits so they can be atomic */
    _Atomic uint64_t output_bits;
    _Atomic uint64_t version;
    _Atomic uint64_t prev_input_bits; /* the price before the last change */
    _Atomic uint64_t prev_output_bits;
    _Atomic int64_t prev_checked_ms; /* the previous price was last confirmed then; 0 = never */
    atomic_bool live;
    _Atomic int64_t updated_ms;  /* last changed */
    _Atomic int64_t checked_ms;  /* last confirmed by the feed (a 200 or a 304) */
    struct honesty honesty;      /* the usage this node reports for this model */
    struct capability_feed feed; /* capabilities, context length, cached price from the feed */
    unsigned metric_pair;        /* (backend, model) label index (metrics/metrics.h) */
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
    _Atomic int64_t ejected_at_ms;
    atomic_int eject_reason;
    atomic_uint probe_failures;
    atomic_bool probe_down;          /* active probes say the node does not answer */
    _Atomic int64_t probe_failed_ms; /* the last failed probe */
    _Atomic int64_t last_probe_ms;
    _Atomic uint64_t ttfb_ewma_us; /* recent time to first byte; 0 = not measured yet */
    _Atomic uint64_t duration_ewma_us;
    struct limiter limit; /* learned concurrency limit and slow start */
    struct latency lat;   /* stream first byte and time per token */
    struct stuck stuck;   /* stuck-node suspicion */
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
 * is expected back (0 when unknown, e.g. probes failing or suspected stuck). */
bool backend_available(struct backend_state *s, int64_t now_ms, int64_t *back_ms);
enum backend_health backend_health(struct backend_state *s, int64_t now_ms);

/* The learned limit the router holds the backend to now (slow start included), and the
 * hard cap max_inflight on top. */
unsigned backend_limit(const struct config *cfg, const struct config_backend *b, int64_t now_ms);

/* An attempt starts: counts it in flight and waiting for its first byte; returns the
 * in-flight count with it (what the limiter learns from). The caller gives the slot back
 * by decrementing `inflight` and ends the wait with backend_first_byte() or
 * backend_attempt_end(). */
int backend_attempt_begin(struct backend_state *s);
void backend_attempt_end(struct backend_state *s);
/* The attempt started at started_us (clock_mono() in µs) got its first answer after ttfb_s;
 * `stream`: a stream's first event (a first-byte latency sample). Ends a suspicion when the
 * node answered what it was suspected of ignoring. */
void backend_first_byte(struct backend_state *s, int64_t started_us, double ttfb_s, bool stream,
                        int64_t now_ms);
/* A request answered in full: health counters reset, latency (ttfb_s is a stream's first
 * event, 0 for a whole answer), and the learned limit grows when it was in use. */
void backend_record_served(struct backend_state *s, const struct config_routing *rc,
                           int inflight_at_send, double ttfb_s, double total_s, long tokens,
                           int64_t now_ms);

void backend_record_success(struct backend_state *s, double ttfb_s, double total_s);
/* A failure the backend caused (connect error, timeout, 5xx, garbage). */
void backend_record_failure(struct backend_state *s, const struct config_health *h,
                            bool unreachable, int64_t now_ms);
/* A 429 to the attempt sent at started_us (clock_mono µs), while it is still counted in
 * flight. It lowers the learned limit (a full node, not a failing one; once per episode); the
 * backend is paused for retry_after_ms (at least a second) only when that is at least
 * routing.rate_limit_pause_ms or nothing else was in flight there. True when it paused the backend.
 */
bool backend_record_rate_limited(struct backend_state *s, const struct config_routing *rc,
                                 long retry_after_ms, int64_t started_us, int64_t now_ms);
/* A probe that started at started_ms finished: good probes bring a node back (probes down,
 * an unreachable ejection, a failing one whose probes failed too and now answer again unless
 * it is a repeat offender, a stuck suspicion), with a slow start. */
void backend_record_probe(struct backend_state *s, const struct config_health *h, bool ok,
                          int64_t started_ms, int64_t now_ms);

/* The price an attempt was sent at, with what it takes to tell later whether it was still in
 * force then (a feed read once a second shows a change up to a second late). */
struct backend_price_capture {
    double input, output; /* USD per million tokens */
    uint64_t version;     /* the slot's version then; 0 for a config price */
    int64_t at_ms;
};

void backend_capture_price(const struct config_model *m, int64_t now_ms,
                           struct backend_price_capture *c);
/* The price to bill an attempt sent at capture c: the captured one, unless the feed showed a
 * change after the attempt was sent that may already have been in force when it was: the
 * change happened somewhere between the last read that confirmed the old price and the read
 * that showed the new one, so the attempt is billed at the expected price, old + (new - old)
 * x the share of that interval that had passed when it was sent. */
void backend_billed_price(const struct config_model *m, const struct backend_price_capture *c,
                          double *input, double *output);

/* The model's current prices: live ones when a price feed set them, else the config's. */
double backend_input_price(const struct config_model *m);
double backend_output_price(const struct config_model *m);
void backend_set_price(struct backend_price *p, double input_usd_per_mtok,
                       double output_usd_per_mtok, int64_t now_ms);
/* The feed confirmed the price (answered it again, or said 304 Not Modified). */
void backend_confirm_price(struct backend_price *p, int64_t now_ms);

/* "up", "ejected", "rate_limited", "down" (probes failing), "suspected" (stuck). */
const char *backend_health_name(struct backend_state *s, int64_t now_ms);

#endif

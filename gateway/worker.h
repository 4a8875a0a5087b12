/* A worker's state, shared by the server loop (server.c) and the request lifecycle
 * (request.c), and the helpers request.c calls (worker.c). Everything here is touched only by
 * the worker's own thread, except where a field says otherwise. Internal header: not part of
 * any public API. */
#ifndef TOLLGATE_WORKER_H
#define TOLLGATE_WORKER_H

#include "base/buf.h"
#include "base/list.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "net/httpd.h"
#include "net/upstream.h"

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct keycache;
struct ratelimit;
struct budget;
struct ledger;
struct cache;
struct redis_client;
struct request;
struct worker_mail;
struct worker;
struct trace_exporter;

/* What the workers need of the server that runs them: gateway/server.c fills it before the
 * first worker starts, and every worker points to it (so worker.c needs nothing of server.c).
 * started_at, port, workers and n_workers are read-only once the workers run; cfg_lock guards
 * cfg and cfg_gen (taken on reload, on a worker's pick-up and on a /metrics scrape, never per
 * request); draining and n_stopped are atomics. */
struct worker_shared {
    double started_at; /* seconds since the epoch */
    int port;          /* the port the listeners are bound to */
    struct worker *workers;
    unsigned n_workers;
    pthread_mutex_t cfg_lock;
    struct config *cfg; /* the newest snapshot; the server holds a reference */
    unsigned cfg_gen;   /* bumped by every reload */
    atomic_bool draining;
    atomic_uint n_stopped;         /* workers that have left their loop */
    _Atomic int64_t trimmed_at_ms; /* clock_mono_ms() of the last malloc_trim() by any worker */
    _Atomic long rss_after_trim;   /* the process's resident bytes just after it (0: unknown) */
    /* Spans go to its ring `id` of each worker (trace/exporter.h); NULL when it could not
     * start. Created before the workers, freed after them. */
    struct trace_exporter *trace;
};

struct worker {
    unsigned id;
    struct worker_shared *shared;
    pthread_t thread;
    struct ev_loop *loop;
    int listen_fd;      /* until the daemon takes it; -1 after */
    struct httpd httpd; /* libmicrohttpd on the loop (net/httpd.h) */
    ev_async wakeup;    /* another thread asks: reload, drain */
    ev_timer drain_timer;
    struct upstream *upstream;
    struct redis_client *redis;  /* NULL without redis.url; created on the worker's thread */
    struct keycache *keycache;   /* Redis-held keys seen lately; NULL without redis.url */
    struct ratelimit *ratelimit; /* per-key limits; NULL without redis.url */
    struct budget *budget;       /* per-key budgets; NULL without redis.url */
    struct ledger *ledger;       /* usage records; NULL without redis.url */
    struct cache *cache;         /* answers, this worker's share of cache.max_bytes */
    /* Requests waiting for an identical miss's answer (cache/flight.h), and the answers
     * other workers post for them: mail_lock guards `mail`, the one field other threads
     * write; mail_async wakes the loop to read it. */
    struct list followers; /* of struct request, by cache.follower */
    pthread_mutex_t mail_lock;
    struct worker_mail *mail;
    ev_async mail_async;
    ev_timer redis_stats_timer;
    ev_timer housekeeping; /* pools sized to the traffic, memory given back after a burst */
    unsigned trim_pending; /* trims due after a burst (once the worker is not busy) */
    bool arena_trim;       /* a trim due after a big request (base/arena.h) */
    unsigned ticks;        /* of the housekeeping timer */
    /* Requests begun (request.c), what the last tick saw of it, and the quiet ticks since
     * (held at the idle trim's count once it is reached, and from the start): a worker gone
     * quiet after traffic trims once. */
    unsigned long begun, begun_seen;
    unsigned quiet_ticks;
    /* httpd's connection counters (net/httpd.h), copied every second for the scraper. */
    struct {
        atomic_ulong at_cap, at_fd_limit, header_timeout, body_timeout, lingered;
        atomic_uint conns;
    } shed;
    struct metrics_shard *metrics; /* read by the scraping thread (relaxed atomics) */
    struct config *cfg;            /* current snapshot; the worker holds a reference */
    unsigned cfg_gen;
    bool draining;
    bool forced;
    double drain_started; /* clock_mono() when this worker began to drain */
    bool drained;         /* its in-flight work is done: the listener is closed */
    ev_timer drained_timer;
    struct list live; /* every live request (struct request, by live), for drain and abort */
    unsigned n_active;
    uint64_t rng[2];
};

/* Runs MHD after a connection of this worker was resumed outside MHD's own callbacks. */
void worker_kick(struct worker *w);
/* A request ended; a draining worker stops when its last one is gone. */
void worker_request_done(struct worker *w);
bool worker_draining(const struct worker *w);
/* True for a request that arrived (clock_mono() at its start) after the drain began: it is
 * refused (503 shutting_down), while work that arrived before finishes. */
bool worker_refuses(const struct worker *w, double arrived);
/* A draining worker has no request left: its listener closes, and its loop stops once the
 * ledger has handed Redis what it can (tenancy/ledger.h, ledger_flush()). A request that
 * comes meanwhile on an open connection puts this off until it is done. */
void worker_drained(struct worker *w);
/* Prometheus text of all workers' shards (any worker may call it). */
int worker_render_metrics(struct worker *w, struct buf *out);
/* The same from any thread, given the server's shared part (the admin listener's /metrics). */
int worker_shared_render_metrics(struct worker_shared *sh, struct buf *out);
/* The port the listeners are bound to. */
int worker_port(const struct worker *w);
/* Seconds since the epoch the server started. */
double worker_started_at(const struct worker *w);
uint64_t worker_random(struct worker *w);

#endif

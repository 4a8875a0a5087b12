/* A worker's state, shared by the server loop (server.c) and the request lifecycle
 * (request.c). Everything here is touched only by the worker's own thread, except where a
 * field says otherwise. Internal header: not part of any public API. */
#ifndef TOLLGATE_WORKER_H
#define TOLLGATE_WORKER_H

#include "config/config.h"
#include "metrics/metrics.h"
#include "net/upstream.h"

#include <ev.h>
#include <microhttpd.h>
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
struct server;

struct worker {
    unsigned id;
    struct server *server;
    pthread_t thread;
    struct ev_loop *loop;
    int listen_fd;
    struct MHD_Daemon *mhd;
    ev_io mhd_io;           /* MHD's epoll fd */
    ev_timer mhd_timer;     /* MHD's own timeouts */
    ev_prepare mhd_prepare; /* runs MHD once more after connections were resumed */
    bool mhd_dirty;
    ev_async wakeup; /* another thread asks: reload, drain */
    ev_timer drain_timer;
    struct upstream *upstream;
    struct redis_client *redis; /* NULL without redis.url; created on the worker's thread */
    struct keycache *keycache;  /* Redis-held keys seen lately; NULL without redis.url */
    struct ratelimit *ratelimit; /* per-key limits; NULL without redis.url */
    struct budget *budget;       /* per-key budgets; NULL without redis.url */
    struct ledger *ledger;       /* usage records; NULL without redis.url */
    struct cache *cache;         /* answers, this worker's share of cache.max_bytes */
    /* Requests waiting for an identical miss's answer (gateway/flight.h), and the answers
     * other workers post for them: mail_lock guards `mail`, the one field other threads
     * write; mail_async wakes the loop to read it. */
    struct request *followers;
    pthread_mutex_t mail_lock;
    struct worker_mail *mail;
    ev_async mail_async;
    ev_timer redis_stats_timer;
    struct metrics_shard *metrics; /* read by the scraping thread (relaxed atomics) */
    struct config *cfg;            /* current snapshot; the worker holds a reference */
    unsigned cfg_gen;
    bool draining;
    bool forced;
    struct request *active; /* every live request, for drain and abort */
    unsigned n_active;
    uint64_t rng[2];
};

/* Runs MHD after a connection of this worker was resumed outside MHD's own callbacks. */
void worker_kick(struct worker *w);
/* A request ended; a draining worker stops when its last one is gone. */
void worker_request_done(struct worker *w);
bool worker_draining(const struct worker *w);
/* Prometheus text of all workers' shards (any worker may call it). */
int worker_render_metrics(struct worker *w, struct buf *out);
/* The port the listeners are bound to. */
int worker_port(const struct worker *w);
/* Seconds since the epoch the server started. */
double worker_started_at(const struct worker *w);
uint64_t worker_random(struct worker *w);

#endif

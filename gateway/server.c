#include "gateway/server.h"

#include "base/arena.h"
#include "base/clock.h"
#include "base/error.h"
#include "base/listen.h"
#include "base/log.h"
#include "cache/cache.h"
#include "gateway/request.h"
#include "gateway/tracing.h"
#include "gateway/worker.h"
#include "metrics/metrics.h"
#include "net/httpd.h"
#include "redis/keyspace.h"
#include "redis/redis.h"
#include "tenancy/budget.h"
#include "tenancy/keyauth.h"
#include "tenancy/keycache.h"
#include "tenancy/ledger.h"
#include "tenancy/ratelimit.h"
#include "trace/exporter.h"

#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

/* Seconds an idle client connection is kept open. */
#define SERVER_CLIENT_IDLE_S 120
/* After an answer sent before the request's body was read (413, 401…), what the client
 * still sends is read and dropped for this long, up to this much, before the close (so its
 * TCP stack does not reset the connection under the answer). Also the most of a chunked
 * body read and dropped after it went over max_body_bytes. */
#define SERVER_CLIENT_LINGER_MS 5000
#define SERVER_CLIENT_LINGER_BYTES (256u << 20)

/* The housekeeping timer's period: the connection counters are published for /metrics. */
#define SERVER_TICK_S 1.0
/* How often a worker sizes its pools to the traffic and looks whether memory can go back. */
#define SERVER_HOUSEKEEPING_S 10.0
/* Without a burst, the heap is trimmed this often (by one worker for all: malloc_trim()
 * walks every thread's arena). */
#define SERVER_TRIM_EVERY_MS 600000
/* Between those, the heap is trimmed when the process's resident memory grew this much since
 * the last trim (a peak of requests or connections went by and left its pages), at most this
 * often: what a peak leaves is bounded in size and time, not held for 10 minutes. */
#define SERVER_TRIM_GROWTH_BYTES (1L << 20)
#define SERVER_TRIM_GROWTH_EVERY_MS 60000
/* A worker with nothing in flight for this many ticks after traffic trims once (it holds up
 * no request, and what the traffic left goes back), unless a trim came this recently. */
#define SERVER_IDLE_TRIM_TICKS 2
#define SERVER_IDLE_TRIM_EVERY_MS 10000
/* A worker with more requests than this in flight puts its trim off. */
#define SERVER_TRIM_BUSY 32
/* A trim that took longer is logged at info. */
#define SERVER_TRIM_SLOW_MS 20.0
/* A burst went by when a worker held this many connections more than twice what it holds now.
 * Not lower: in steady traffic a trim costs 20-200 ms of the loop too (a 1,800 s soak with
 * 32 here, and any freed curl handle counted as a burst, trimmed every 10-30 s). */
#define SERVER_BURST_CONNS 256

/* The workers and what they share; the main thread owns it (gateway/worker.h says who may
 * touch which field of `shared`). */
struct server {
    struct worker_shared shared;
};

int server_render_metrics(struct server *s, struct buf *out)
{
    return worker_shared_render_metrics(&s->shared, out);
}

size_t server_metrics_shards(struct server *s, struct metrics_shard **out, size_t max)
{
    size_t n = s->shared.n_workers < max ? s->shared.n_workers : max;
    for (size_t i = 0; i < n; i++)
        out[i] = s->shared.workers[i].metrics;
    return n;
}

/* ---- reload and drain ------------------------------------------------------------------- */

/* The spool and memory caps of the config are for all workers together. */
static void worker_ledger_limits(struct worker *w)
{
    unsigned n = w->shared->n_workers;
    ledger_set_limits(w->ledger, w->cfg->spool_max_bytes / n, w->cfg->spool_memory_bytes / n);
}

static void worker_take_config(struct worker *w)
{
    struct worker_shared *s = w->shared;
    pthread_mutex_lock(&s->cfg_lock);
    if (w->cfg_gen != s->cfg_gen) {
        struct config *old = w->cfg;
        w->cfg = config_ref(s->cfg);
        w->cfg_gen = s->cfg_gen;
        pthread_mutex_unlock(&s->cfg_lock);
        config_unref(old);
        worker_ledger_limits(w);
        return;
    }
    pthread_mutex_unlock(&s->cfg_lock);
}

static void drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct worker *w = t->data;
    if (!w->forced) {
        w->forced = true;
        /* What the drain still waited for: requests in flight (cut now), or, with none
         * left, the ledger's records to Redis (what Redis has not taken goes to the spool). */
        log_event(LOG_WARN, "drain_timeout", "\"worker\":%u,\"waited_for\":\"%s\",\"aborted\":%u",
                  w->id, w->n_active ? "requests" : "ledger_flush", w->n_active);
        request_abort_all(w);
        /* Give the error answers a moment to be written, then stop regardless. */
        ev_timer_set(t, 0.5, 0.);
        ev_timer_start(loop, t);
        return;
    }
    ev_break(loop, EVBREAK_ALL);
}

/* The listener stays open while in-flight work finishes, so /readyz answers 503 and new
 * requests get 503 shutting_down (a load balancer may route to the gateway for a few seconds
 * after the signal); it closes when the worker's last request is done (worker_drained()). */
static void worker_begin_drain(struct worker *w)
{
    if (!w->draining) {
        w->draining = true;
        w->drain_started = clock_mono();
        ev_timer_init(&w->drain_timer, drain_timer_cb, (double)w->cfg->drain_timeout_ms / 1000.0,
                      0.);
        w->drain_timer.data = w;
        ev_timer_start(w->loop, &w->drain_timer);
        if (w->n_active == 0)
            worker_drained(w);
    } else if (!w->forced) {
        /* Asked twice: cut the drain short. */
        ev_timer_stop(w->loop, &w->drain_timer);
        ev_timer_set(&w->drain_timer, 0., 0.);
        ev_timer_start(w->loop, &w->drain_timer);
    }
}

static void mail_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    request_take_mail(a->data);
}

static void wakeup_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = a->data;
    worker_take_config(w);
    if (atomic_load(&w->shared->draining))
        worker_begin_drain(w);
}

/* ---- workers ---------------------------------------------------------------------------- */

/* Free heap pages back to the kernel now, on this worker's loop (see housekeeping_cb for what it
 * costs and when it is worth it); `why` and the curl handles the shrink freed go in the log. */
/* The process's resident bytes (/proc/self/statm, a few microseconds), 0 when unreadable. */
static long resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "re");
    long pages = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2)
        resident = 0;
    fclose(f);
    return resident * sysconf(_SC_PAGESIZE);
}

/* One worker trims for all: this one, unless another did less than `gap_ms` ago. */
static bool server_claim_trim(struct worker *w, int64_t now, int64_t gap_ms)
{
    int64_t last = atomic_load_explicit(&w->shared->trimmed_at_ms, memory_order_relaxed);
    return now - last >= gap_ms &&
           atomic_compare_exchange_strong(&w->shared->trimmed_at_ms, &last, now);
}

static void server_trim(struct worker *w, const char *why, size_t handles_freed)
{
    atomic_store_explicit(&w->shared->trimmed_at_ms, clock_mono_ms(), memory_order_relaxed);
    double t0 = clock_mono();
    int released = malloc_trim(0);
    double ms = (clock_mono() - t0) * 1000;
    atomic_store_explicit(&w->shared->rss_after_trim, resident_bytes(), memory_order_relaxed);
    /* A slow trim held up the loop (and the other workers' allocations): worth a line. */
    log_event(ms >= SERVER_TRIM_SLOW_MS ? LOG_INFO : LOG_DEBUG, "memory_trimmed",
              "\"worker\":%u,\"why\":\"%s\",\"handles_freed\":%zu,\"released\":%s,"
              "\"duration_ms\":%.3f",
              w->id, why, handles_freed, released ? "true" : "false", ms);
}

/* glibc keeps freed memory: the free top of each thread's arena up to M_TRIM_THRESHOLD (4 MiB,
 * gateway/main.c) and every free page in the middle of a heap. After a burst of connections
 * (each with its request buffers, a curl handle and a keep-alive connection to a node) that is
 * tens of MiB held for good. Off the hot path, every few seconds: the upstream pools shrink to
 * what the traffic of the last period needed, and after a burst (or every 10 minutes) the heap's
 * free pages go back to the kernel, once the worker is not busy. malloc_trim() walks every
 * arena's free chunks, holding each arena's lock meanwhile, and a page given back costs a page
 * fault when reused: 0.1-3 ms in steady traffic; after a burst of 2,000 connections, which left
 * 50-70 MiB resident for good without it, 0.8-1.1 s once, then 0.15-0.25 s (bench/SOAK.md). */
static void housekeeping_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = t->data;
    struct httpd *h = &w->httpd;
    atomic_store_explicit(&w->shed.at_cap, h->stats.at_cap, memory_order_relaxed);
    atomic_store_explicit(&w->shed.at_fd_limit, h->stats.at_fd_limit, memory_order_relaxed);
    atomic_store_explicit(&w->shed.header_timeout, h->stats.header_timeout, memory_order_relaxed);
    atomic_store_explicit(&w->shed.body_timeout, h->stats.body_timeout, memory_order_relaxed);
    atomic_store_explicit(&w->shed.lingered, h->stats.lingered, memory_order_relaxed);
    atomic_store_explicit(&w->shed.conns, h->n_conns, memory_order_relaxed);
    /* A request that grew its arena past ARENA_TRIM_BLOCKS (a body of many small values) left
     * free pages scattered in the heap: they go back on the next tick this worker is not busy,
     * never on that request's path. */
    if (arena_take_trim())
        w->arena_trim = true;
    if (w->arena_trim && w->n_active <= SERVER_TRIM_BUSY) {
        w->arena_trim = false;
        server_trim(w, "big_request", 0);
    }
    /* Quiet ticks count up to the idle trim and stay there until traffic comes again. */
    if (w->n_active || w->begun != w->begun_seen) {
        w->begun_seen = w->begun;
        w->quiet_ticks = 0;
    } else if (w->quiet_ticks < SERVER_IDLE_TRIM_TICKS &&
               ++w->quiet_ticks == SERVER_IDLE_TRIM_TICKS &&
               server_claim_trim(w, clock_mono_ms(), SERVER_IDLE_TRIM_EVERY_MS)) {
        server_trim(w, "idle", 0);
    }
    if (++w->ticks % (unsigned)(SERVER_HOUSEKEEPING_S / SERVER_TICK_S))
        return;
    size_t freed = upstream_shrink(w->upstream);
    bool burst = h->peak_conns >= 2 * h->n_conns + SERVER_BURST_CONNS;
    h->peak_conns = h->n_conns;
    /* After a burst: a trim, and one more once the pools' idle connections have closed (as
     * transfers end after the shrink). */
    if (burst)
        w->trim_pending = 2;
    int64_t now = clock_mono_ms();
    int64_t last = atomic_load_explicit(&w->shared->trimmed_at_ms, memory_order_relaxed);
    /* Not while the worker is busy: in the middle of a burst a trim walks a heap that is still
     * churning (0.9-1.1 s measured, holding up every request of the loop) and gives back
     * pages about to be faulted in again. It waits for a quieter tick. */
    if (w->n_active > SERVER_TRIM_BUSY)
        return;
    bool grown = false;
    if (!w->trim_pending && now - last >= SERVER_TRIM_GROWTH_EVERY_MS &&
        now - last < SERVER_TRIM_EVERY_MS) {
        long base = atomic_load_explicit(&w->shared->rss_after_trim, memory_order_relaxed);
        long rss = resident_bytes();
        if (!base) /* no trim yet: growth counts from here */
            atomic_compare_exchange_strong(&w->shared->rss_after_trim, &base, rss);
        grown = base && rss > base + SERVER_TRIM_GROWTH_BYTES;
    }
    if (!w->trim_pending && !grown && now - last < SERVER_TRIM_EVERY_MS)
        return;
    if (w->trim_pending)
        w->trim_pending--;
    /* Another worker trimmed for all a moment ago. */
    if (!server_claim_trim(w, now, (int64_t)(SERVER_HOUSEKEEPING_S * 500)))
        return;
    server_trim(w, burst ? "burst" : grown ? "grown" : "periodic", freed);
}

static int worker_init(struct worker *w, struct config *cfg, char *err, size_t err_len)
{
    pthread_mutex_init(&w->mail_lock, NULL);
    list_init(&w->live);
    list_init(&w->followers);
    w->quiet_ticks = SERVER_IDLE_TRIM_TICKS; /* no traffic yet: nothing to give back */
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    unsigned per_host =
        (cfg->upstream.max_connections_per_backend + cfg->workers - 1) / cfg->workers;
    w->upstream = w->loop ? upstream_new(w->loop, per_host) : NULL;
    w->metrics = metrics_shard_new();
    if (cfg->cache.mode != CONFIG_CACHE_OFF && cfg->cache.max_bytes &&
        !(w->cache = cache_new(cfg->cache.max_bytes / cfg->workers))) {
        snprintf(err, err_len, "worker %u: out of memory", w->id);
        return -1;
    }
    /* Keys in Redis: a bounded cache, 60 s for keys found, 5 s for keys not found. */
    if (cfg->redis_url && !(w->keycache = keycache_new(10000, 60000, 5000))) {
        snprintf(err, err_len, "worker %u: out of memory", w->id);
        return -1;
    }
    if (!w->loop || !w->upstream || !w->metrics) {
        snprintf(err, err_len, "worker %u: out of memory", w->id);
        return -1;
    }
    if (getrandom(w->rng, sizeof w->rng, 0) != sizeof w->rng || (!w->rng[0] && !w->rng[1])) {
        w->rng[0] = (uint64_t)(uintptr_t)w ^ (uint64_t)time(NULL);
        w->rng[1] = 0x9e3779b97f4a7c15ull;
    }
    char msg[96];
    snprintf(msg, sizeof msg, "The request body did not arrive within %u ms.",
             cfg->client_body_timeout_ms);
    char *timeout_body = error_body(TG_ERR_INVALID_VALUE, msg, NULL, "request_timeout", NULL);
    struct httpd_config hc = {
        .listen_fd = w->listen_fd,
        .connection_limit = (cfg->max_connections + cfg->workers - 1) / cfg->workers,
        .connection_memory = cfg->connection_memory_bytes,
        .idle_timeout_s = SERVER_CLIENT_IDLE_S,
        .header_timeout_ms = cfg->client_header_timeout_ms,
        .body_timeout_ms = cfg->client_body_timeout_ms,
        .linger_ms = SERVER_CLIENT_LINGER_MS,
        .linger_bytes = SERVER_CLIENT_LINGER_BYTES,
        .body_timeout_body = timeout_body,
        .on_request = request_handle,
        .on_completed = request_completed,
        .ctx = w,
        .log = true,
    };
    int rc = httpd_start(&w->httpd, w->loop, w->upstream, &hc);
    free(timeout_body);
    if (rc == HTTPD_ESTART) {
        snprintf(err, err_len, "worker %u: cannot start the HTTP daemon", w->id);
        return -1;
    }
    w->listen_fd = -1; /* the daemon owns and closes it now */
    if (rc) {
        snprintf(err, err_len, "worker %u: HTTP daemon has no epoll fd", w->id);
        return -1;
    }
    ev_async_init(&w->wakeup, wakeup_cb);
    w->wakeup.data = w;
    ev_async_start(w->loop, &w->wakeup);
    ev_async_init(&w->mail_async, mail_cb);
    w->mail_async.data = w;
    ev_async_start(w->loop, &w->mail_async);
    ev_timer_init(&w->housekeeping, housekeeping_cb, SERVER_TICK_S, SERVER_TICK_S);
    w->housekeeping.data = w;
    ev_timer_start(w->loop, &w->housekeeping);
    return 0;
}

/* The Redis client's counters, copied into the worker's shard for the scraper. */
static void redis_stats_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = t->data;
    struct redis_stats st;
    redis_client_stats(w->redis, &st);
    struct metrics_shard *m = w->metrics;
    atomic_store_explicit(&m->redis_errors, st.errors + st.timeouts + st.rejected,
                          memory_order_relaxed);
    atomic_store_explicit(&m->redis_timeouts, st.timeouts, memory_order_relaxed);
    atomic_store_explicit(&m->redis_reconnects, st.reconnects, memory_order_relaxed);
    atomic_store_explicit(&m->redis_up, st.connected ? 1 : 0, memory_order_relaxed);
    if (w->ledger) {
        struct ledger_stats ls;
        ledger_stats(w->ledger, &ls);
        atomic_store_explicit(&m->ledger_written, ls.written, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_spooled, ls.spooled, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_replayed, ls.replayed, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_dropped, ls.dropped, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_spool_bytes, ls.spool_bytes, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_held, ls.held, memory_order_relaxed);
        atomic_store_explicit(&m->ledger_held_bytes, ls.held_bytes, memory_order_relaxed);
    }
}

/* Revocations from any replica: evicted at once. After a (re)subscription, messages may
 * have been missed, so everything cached is fetched again. */
static void revoked_cb(void *ctx, enum redis_sub_event ev, const char *channel, size_t channel_len,
                       const char *msg, size_t msg_len)
{
    (void)channel;
    (void)channel_len;
    struct worker *w = ctx;
    if (ev == REDIS_SUB_READY)
        keycache_clear(w->keycache);
    else
        keyauth_revoked(w->keycache, msg, msg_len);
}

/* A client belongs to its loop's thread, so it is made here, not in server_start(). */
static void worker_start_redis(struct worker *w)
{
    if (!w->cfg->redis_url)
        return;
    /* Probing a Redis that is down every 5 s at most costs little; coming back soon after it
     * does is what matters (keys fetched afresh, spooled usage replayed). */
    struct redis_options opt = {.url = w->cfg->redis_url, .breaker_cooloff_max_ms = 5000};
    w->redis = redis_client_new(w->loop, &opt);
    if (w->redis && w->keycache)
        redis_subscribe(w->redis, REDIS_CHANNEL_KEYS_REVOKED, revoked_cb, w);
    if (w->redis) {
        w->ratelimit = ratelimit_new(w->redis, w->cfg->workers);
        w->budget = budget_new(w->redis);
        /* One spool file per worker and port: a spool has exactly one writer. */
        char path[1024];
        snprintf(path, sizeof path, "%s/" LEDGER_SPOOL_PREFIX "%d-%u" LEDGER_SPOOL_SUFFIX,
                 w->cfg->spool_dir, w->shared->port, w->id);
        w->ledger = ledger_new(w->loop, w->redis, path);
        worker_ledger_limits(w);
        if (!w->ledger) {
            char esc[1100];
            log_event(LOG_ERROR, "ledger_failed",
                      "\"worker\":%u,\"spool\":\"%s\",\"message\":\"cannot create the usage "
                      "ledger (out of memory): this worker's usage records are not recorded\"",
                      w->id, log_escape(esc, sizeof esc, path));
        }
    }
    if (!w->redis) {
        log_event(LOG_ERROR, "redis_failed",
                  "\"worker\":%u,\"message\":\"cannot create the "
                  "Redis client; running without Redis\"",
                  w->id);
        return;
    }
    ev_timer_init(&w->redis_stats_timer, redis_stats_cb, 0., 1.);
    w->redis_stats_timer.data = w;
    ev_timer_start(w->loop, &w->redis_stats_timer);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    log_buffer_lines();
    worker_start_redis(w);
    httpd_run(&w->httpd); /* pick up anything already pending, arm MHD's timer */
    ev_run(w->loop, 0);
    ev_timer_stop(w->loop, &w->housekeeping);
    /* Stopped: no suspended connection may remain when the daemon goes. */
    request_resume_all(w);
    httpd_stop(&w->httpd);
    log_flush();
    ledger_free(w->ledger); /* after the daemon: the last requests' records are in */
    w->ledger = NULL;
    if (w->redis) {
        ev_timer_stop(w->loop, &w->redis_stats_timer);
        redis_client_free(w->redis); /* its callbacks may still reach the limiter */
        w->redis = NULL;
        ratelimit_free(w->ratelimit);
        w->ratelimit = NULL;
        budget_free(w->budget);
        w->budget = NULL;
    }
    log_flush();
    atomic_fetch_add(&w->shared->n_stopped, 1);
    return NULL;
}

static void worker_destroy(struct worker *w)
{
    httpd_stop(&w->httpd);
    upstream_free(w->upstream);
    metrics_shard_free(w->metrics);
    keycache_free(w->keycache);
    cache_free(w->cache);
    request_drop_mail(w);
    pthread_mutex_destroy(&w->mail_lock);
    if (w->loop)
        ev_loop_destroy(w->loop);
    if (w->listen_fd >= 0)
        close(w->listen_fd);
    config_unref(w->cfg);
}

struct server *server_start(struct config *cfg, char *err, size_t err_len)
{
    err[0] = '\0';
    struct listen_addr addr;
    if (listen_parse(&addr, "listen", cfg->listen, err, err_len))
        return NULL;
    struct server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    struct worker_shared *sh = &s->shared;
    pthread_mutex_init(&sh->cfg_lock, NULL);
    sh->cfg = config_ref(cfg);
    sh->cfg_gen = 1;
    sh->started_at = ev_time();
    sh->n_workers = cfg->workers;
    sh->workers = calloc(sh->n_workers, sizeof *sh->workers);
    if (!sh->workers)
        goto err;
    sh->trace = trace_exporter_new(sh->n_workers); /* NULL: requests go untraced */
    tracing_configure(sh->trace, cfg);
    int port = -1;
    unsigned started = 0;
    for (unsigned i = 0; i < sh->n_workers; i++) {
        struct worker *w = &sh->workers[i];
        w->id = i;
        w->shared = sh;
        w->cfg = config_ref(cfg);
        w->cfg_gen = sh->cfg_gen;
        /* Later workers bind the port the first one got (it may have been 0). */
        w->listen_fd =
            listen_open(&addr, port, 4096, LISTEN_NONBLOCK | LISTEN_REUSEPORT, err, err_len);
        if (w->listen_fd == -1)
            goto err_workers;
        int bound = listen_bound_port(w->listen_fd);
        if (bound >= 0)
            port = bound;
        if (worker_init(w, cfg, err, err_len))
            goto err_workers;
    }
    sh->port = port; /* before any worker runs: they name their spool files after it */
    for (; started < sh->n_workers; started++)
        if (pthread_create(&sh->workers[started].thread, NULL, worker_main,
                           &sh->workers[started])) {
            snprintf(err, err_len, "cannot start worker threads");
            break;
        }
    if (started < sh->n_workers) {
        atomic_store(&sh->draining, true);
        for (unsigned i = 0; i < started; i++)
            ev_async_send(sh->workers[i].loop, &sh->workers[i].wakeup);
        for (unsigned i = 0; i < started; i++)
            pthread_join(sh->workers[i].thread, NULL);
        goto err_workers;
    }
    char esc[300];
    log_event(LOG_INFO, "listening", "\"listen\":\"%s\",\"port\":%d,\"workers\":%u",
              log_escape(esc, sizeof esc, cfg->listen), port, sh->n_workers);
    return s;

err_workers:
    for (unsigned i = 0; i < sh->n_workers; i++)
        worker_destroy(&sh->workers[i]);
err:
    trace_exporter_free(sh->trace);
    config_unref(sh->cfg);
    free(sh->workers);
    free(s);
    return NULL;
}

void server_reload(struct server *s, struct config *cfg)
{
    struct worker_shared *sh = &s->shared;
    pthread_mutex_lock(&sh->cfg_lock);
    struct config *old = sh->cfg;
    sh->cfg = config_ref(cfg);
    sh->cfg_gen++;
    pthread_mutex_unlock(&sh->cfg_lock);
    config_unref(old);
    tracing_configure(sh->trace, cfg);
    for (unsigned i = 0; i < sh->n_workers; i++)
        ev_async_send(sh->workers[i].loop, &sh->workers[i].wakeup);
}

void server_drain(struct server *s)
{
    struct worker_shared *sh = &s->shared;
    atomic_store(&sh->draining, true);
    for (unsigned i = 0; i < sh->n_workers; i++)
        ev_async_send(sh->workers[i].loop, &sh->workers[i].wakeup);
}

bool server_stopped(struct server *s)
{
    return atomic_load(&s->shared.n_stopped) == s->shared.n_workers;
}

void server_wait(struct server *s)
{
    struct worker_shared *sh = &s->shared;
    for (unsigned i = 0; i < sh->n_workers; i++)
        pthread_join(sh->workers[i].thread, NULL);
    for (unsigned i = 0; i < sh->n_workers; i++)
        worker_destroy(&sh->workers[i]);
    trace_exporter_free(sh->trace); /* the spans still queued go out, within a bound */
    config_unref(sh->cfg);
    pthread_mutex_destroy(&sh->cfg_lock);
    free(sh->workers);
    free(s);
}

#include "gateway/server.h"

#include "tenancy/keyauth.h"
#include "tenancy/ledger.h"
#include "base/log.h"
#include "tenancy/budget.h"
#include "cache/cache.h"
#include "tenancy/ratelimit.h"
#include "redis/redis.h"
#include "gateway/request.h"
#include "gateway/worker.h"
#include "metrics/metrics.h"
#include "routing/backend.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

/* Seconds an idle client connection is kept open. */
#define SERVER_CLIENT_IDLE_S 120

struct server {
    struct worker *workers;
    atomic_uint n_stopped;
    unsigned n_workers;
    /* cfg_lock guards `cfg` and `cfg_gen` while a reload publishes or a worker picks up a
     * new snapshot; never taken per request. */
    pthread_mutex_t cfg_lock;
    struct config *cfg;
    unsigned cfg_gen;
    atomic_bool draining;
    double started_at;
    int port;
};

/* ---- helpers for request.c -------------------------------------------------------------- */

void worker_kick(struct worker *w)
{
    w->mhd_dirty = true;
}

bool worker_draining(const struct worker *w)
{
    return w->draining || atomic_load_explicit(&w->server->draining, memory_order_relaxed);
}

int worker_port(const struct worker *w)
{
    return w->server->port;
}

double worker_started_at(const struct worker *w)
{
    return w->server->started_at;
}

int worker_render_metrics(struct worker *w, struct buf *out)
{
    return server_render_metrics(w->server, out);
}

int server_render_metrics(struct server *s, struct buf *out)
{
    struct metrics_shard *shards[256];
    unsigned n = s->n_workers < 256 ? s->n_workers : 256;
    for (unsigned i = 0; i < n; i++)
        shards[i] = s->workers[i].metrics;
    pthread_mutex_lock(&s->cfg_lock);
    struct config *cfg = config_ref(s->cfg);
    pthread_mutex_unlock(&s->cfg_lock);
    int rc = metrics_render(out, shards, n);
    if (!rc)
        rc = metrics_render_build_info(out);
    if (!rc)
        rc = backend_render_metrics(out, cfg);
    config_unref(cfg);
    return rc;
}

uint64_t worker_random(struct worker *w)
{
    /* xorshift128+: fast, per worker, seeded from getrandom(); ids need not be secret. */
    uint64_t a = w->rng[0], b = w->rng[1];
    w->rng[0] = b;
    a ^= a << 23;
    a ^= a >> 17;
    a ^= b ^ (b >> 26);
    w->rng[1] = a;
    return a + b;
}

void worker_request_done(struct worker *w)
{
    if (w->draining && w->n_active == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

/* ---- MHD on libev ----------------------------------------------------------------------- */

static void mhd_run(struct worker *w)
{
    w->mhd_dirty = false;
    MHD_UNSIGNED_LONG_LONG timeout = 0;
    bool has_timeout = false;
    /* MHD says "again at once" while a connection sits on its ready list (e.g. after a
     * response went out, until a read finds nothing). Running it again here costs one
     * epoll_wait; a zero timer would cost a whole turn of the loop as well. */
    for (int i = 0; i < 3; i++) {
        MHD_run(w->mhd);
        has_timeout = MHD_get_timeout(w->mhd, &timeout) == MHD_YES;
        if (!has_timeout || timeout > 0)
            break;
    }
    ev_timer_stop(w->loop, &w->mhd_timer);
    if (has_timeout) {
        ev_timer_set(&w->mhd_timer, (double)timeout / 1000.0, 0.);
        ev_timer_start(w->loop, &w->mhd_timer);
    }
}

static void mhd_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    mhd_run(io->data);
}

static void mhd_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    mhd_run(t->data);
}

/* Before the loop blocks: let MHD handle connections resumed during this turn, and send the
 * upstream requests they started, so neither waits for another turn of the loop. Each step
 * can make work for the other (a finished transfer resumes a connection), hence the loop. */
static void mhd_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = p->data;
    for (int i = 0; i < 4; i++) {
        bool did = false;
        if (w->mhd_dirty) {
            mhd_run(w);
            did = true;
        }
        did |= upstream_flush(w->upstream);
        if (!did)
            break;
    }
    log_flush();
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512], esc[600];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_event(LOG_DEBUG, "http", "\"message\":\"%s\"", log_escape(esc, sizeof esc, msg));
}

/* ---- reload and drain ------------------------------------------------------------------- */

static void worker_take_config(struct worker *w)
{
    struct server *s = w->server;
    pthread_mutex_lock(&s->cfg_lock);
    if (w->cfg_gen != s->cfg_gen) {
        struct config *old = w->cfg;
        w->cfg = config_ref(s->cfg);
        w->cfg_gen = s->cfg_gen;
        pthread_mutex_unlock(&s->cfg_lock);
        config_unref(old);
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
        log_event(LOG_WARN, "drain_timeout", "\"worker\":%u,\"aborted\":%u", w->id, w->n_active);
        request_abort_all(w);
        /* Give the error answers a moment to be written, then stop regardless. */
        ev_timer_set(t, 0.5, 0.);
        ev_timer_start(loop, t);
        return;
    }
    ev_break(loop, EVBREAK_ALL);
}

static void worker_begin_drain(struct worker *w)
{
    if (!w->draining) {
        w->draining = true;
        MHD_socket fd = MHD_quiesce_daemon(w->mhd);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
        w->listen_fd = -1;
        ev_timer_init(&w->drain_timer, drain_timer_cb, (double)w->cfg->drain_timeout_ms / 1000.0,
                      0.);
        w->drain_timer.data = w;
        ev_timer_start(w->loop, &w->drain_timer);
        if (w->n_active == 0)
            ev_break(w->loop, EVBREAK_ALL);
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
    if (atomic_load(&w->server->draining))
        worker_begin_drain(w);
}

/* ---- listeners -------------------------------------------------------------------------- */

static int listen_socket(const char *listen_addr, char *err, size_t err_len, int *port_out)
{
    char host[256];
    const char *colon = strrchr(listen_addr, ':');
    if (!colon) {
        snprintf(err, err_len, "listen \"%s\": expected host:port", listen_addr);
        return -1;
    }
    size_t hn = (size_t)(colon - listen_addr);
    if (hn >= sizeof host)
        hn = sizeof host - 1;
    memcpy(host, listen_addr, hn);
    host[hn] = '\0';
    if (host[0] == '[' && hn > 1 && host[hn - 1] == ']') {
        memmove(host, host + 1, hn - 2);
        host[hn - 2] = '\0';
    }
    char port[16];
    if (*port_out >= 0)
        snprintf(port, sizeof port, "%d", *port_out);
    else
        snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, port, &hints, &res);
    if (gai) {
        snprintf(err, err_len, "listen \"%s\": %s", listen_addr, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        /* One listener per worker; the kernel spreads new connections over them. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0)
            break;
        snprintf(err, err_len, "listen \"%s\": %s", listen_addr, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd == -1) {
        if (!err[0])
            snprintf(err, err_len, "listen \"%s\": no usable address", listen_addr);
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
        *port_out = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
                                                   : ((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

/* ---- workers ---------------------------------------------------------------------------- */

static int worker_init(struct worker *w, struct config *cfg, char *err, size_t err_len)
{
    pthread_mutex_init(&w->mail_lock, NULL);
    w->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    unsigned per_host = (cfg->upstream.max_connections_per_backend + cfg->workers - 1) /
                        cfg->workers;
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
    unsigned per_worker = (cfg->max_connections + cfg->workers - 1) / cfg->workers;
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG, 0, NULL,
        NULL, request_handle, w, MHD_OPTION_LISTEN_SOCKET, w->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, per_worker, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        cfg->connection_memory_bytes, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)SERVER_CLIENT_IDLE_S, MHD_OPTION_NOTIFY_COMPLETED, request_completed, w,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
    if (!w->mhd) {
        snprintf(err, err_len, "worker %u: cannot start the HTTP daemon", w->id);
        return -1;
    }
    w->listen_fd = -1; /* the daemon owns and closes it now */
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) {
        snprintf(err, err_len, "worker %u: HTTP daemon has no epoll fd", w->id);
        return -1;
    }
    ev_io_init(&w->mhd_io, mhd_io_cb, info->epoll_fd, EV_READ);
    w->mhd_io.data = w;
    ev_io_start(w->loop, &w->mhd_io);
    ev_timer_init(&w->mhd_timer, mhd_timer_cb, 0., 0.);
    w->mhd_timer.data = w;
    ev_prepare_init(&w->mhd_prepare, mhd_prepare_cb);
    w->mhd_prepare.data = w;
    ev_prepare_start(w->loop, &w->mhd_prepare);
    ev_async_init(&w->wakeup, wakeup_cb);
    w->wakeup.data = w;
    ev_async_start(w->loop, &w->wakeup);
    ev_async_init(&w->mail_async, mail_cb);
    w->mail_async.data = w;
    ev_async_start(w->loop, &w->mail_async);
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
    }
}

/* Revocations from any replica: evicted at once. After a (re)subscription, messages may
 * have been missed, so everything cached is fetched again. */
static void revoked_cb(void *ctx, enum redis_sub_event ev, const char *channel,
                       size_t channel_len, const char *msg, size_t msg_len)
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
        redis_subscribe(w->redis, KEYAUTH_REVOKED_CHANNEL, revoked_cb, w);
    if (w->redis) {
        w->ratelimit = ratelimit_new(w->redis, w->cfg->workers);
        w->budget = budget_new(w->redis);
        /* One spool file per worker and port: a spool has exactly one writer. */
        char path[1024];
        snprintf(path, sizeof path, "%s/" LEDGER_SPOOL_PREFIX "%d-%u" LEDGER_SPOOL_SUFFIX,
                 w->cfg->spool_dir, w->server->port, w->id);
        w->ledger = ledger_new(w->loop, w->redis, path);
        if (!w->ledger) {
            char esc[1100];
            log_event(LOG_ERROR, "ledger_failed",
                      "\"worker\":%u,\"spool\":\"%s\",\"message\":\"cannot open the usage "
                      "spool; usage records are lost while Redis is unreachable\"",
                      w->id, log_escape(esc, sizeof esc, path));
        }
    }
    if (!w->redis) {
        log_event(LOG_ERROR, "redis_failed", "\"worker\":%u,\"message\":\"cannot create the "
                  "Redis client; running without Redis\"", w->id);
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
    mhd_run(w); /* pick up anything already pending, arm MHD's timer */
    ev_run(w->loop, 0);
    /* Stopped: no suspended connection may remain when the daemon goes. */
    request_resume_all(w);
    MHD_stop_daemon(w->mhd);
    log_flush();
    w->mhd = NULL;
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
    atomic_fetch_add(&w->server->n_stopped, 1);
    return NULL;
}

static void worker_destroy(struct worker *w)
{
    if (w->mhd)
        MHD_stop_daemon(w->mhd);
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
    struct server *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    pthread_mutex_init(&s->cfg_lock, NULL);
    s->cfg = config_ref(cfg);
    s->cfg_gen = 1;
    s->started_at = ev_time();
    s->n_workers = cfg->workers;
    s->workers = calloc(s->n_workers, sizeof *s->workers);
    if (!s->workers)
        goto err;
    int port = -1;
    unsigned started = 0;
    for (unsigned i = 0; i < s->n_workers; i++) {
        struct worker *w = &s->workers[i];
        w->id = i;
        w->server = s;
        w->cfg = config_ref(cfg);
        w->cfg_gen = s->cfg_gen;
        /* Later workers bind the port the first one got (it may have been 0). */
        w->listen_fd = listen_socket(cfg->listen, err, err_len, &port);
        if (w->listen_fd == -1 || worker_init(w, cfg, err, err_len))
            goto err_workers;
    }
    s->port = port; /* before any worker runs: they name their spool files after it */
    for (; started < s->n_workers; started++)
        if (pthread_create(&s->workers[started].thread, NULL, worker_main,
                           &s->workers[started])) {
            snprintf(err, err_len, "cannot start worker threads");
            break;
        }
    if (started < s->n_workers) {
        atomic_store(&s->draining, true);
        for (unsigned i = 0; i < started; i++)
            ev_async_send(s->workers[i].loop, &s->workers[i].wakeup);
        for (unsigned i = 0; i < started; i++)
            pthread_join(s->workers[i].thread, NULL);
        goto err_workers;
    }
    char esc[300];
    log_event(LOG_INFO, "listening", "\"listen\":\"%s\",\"port\":%d,\"workers\":%u",
              log_escape(esc, sizeof esc, cfg->listen), port, s->n_workers);
    return s;

err_workers:
    for (unsigned i = 0; i < s->n_workers; i++)
        worker_destroy(&s->workers[i]);
err:
    config_unref(s->cfg);
    free(s->workers);
    free(s);
    return NULL;
}

void server_reload(struct server *s, struct config *cfg)
{
    pthread_mutex_lock(&s->cfg_lock);
    struct config *old = s->cfg;
    s->cfg = config_ref(cfg);
    s->cfg_gen++;
    pthread_mutex_unlock(&s->cfg_lock);
    config_unref(old);
    for (unsigned i = 0; i < s->n_workers; i++)
        ev_async_send(s->workers[i].loop, &s->workers[i].wakeup);
}

void server_drain(struct server *s)
{
    atomic_store(&s->draining, true);
    for (unsigned i = 0; i < s->n_workers; i++)
        ev_async_send(s->workers[i].loop, &s->workers[i].wakeup);
}

bool server_stopped(struct server *s)
{
    return atomic_load(&s->n_stopped) == s->n_workers;
}

void server_wait(struct server *s)
{
    for (unsigned i = 0; i < s->n_workers; i++)
        pthread_join(s->workers[i].thread, NULL);
    for (unsigned i = 0; i < s->n_workers; i++)
        worker_destroy(&s->workers[i]);
    config_unref(s->cfg);
    pthread_mutex_destroy(&s->cfg_lock);
    free(s->workers);
    free(s);
}

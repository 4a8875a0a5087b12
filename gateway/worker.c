#include "gateway/worker.h"

#include "metrics/metrics.h"
#include "routing/backend.h"
#include "tenancy/ledger.h"
#include "trace/exporter.h"

void worker_kick(struct worker *w)
{
    httpd_kick(&w->httpd);
}

bool worker_draining(const struct worker *w)
{
    return w->draining || atomic_load_explicit(&w->shared->draining, memory_order_relaxed);
}

int worker_port(const struct worker *w)
{
    return w->shared->port;
}

double worker_started_at(const struct worker *w)
{
    return w->shared->started_at;
}

int worker_render_metrics(struct worker *w, struct buf *out)
{
    return worker_shared_render_metrics(w->shared, out);
}

/* The client connections of every worker's listener (net/httpd.h), as of their last second. */
static int worker_render_connections(struct worker_shared *sh, struct buf *out)
{
    unsigned long at_cap = 0, fd_limit = 0, header = 0, body = 0, lingered = 0;
    unsigned long conns = 0;
    for (unsigned i = 0; i < sh->n_workers; i++) {
        struct worker *w = &sh->workers[i];
        at_cap += atomic_load_explicit(&w->shed.at_cap, memory_order_relaxed);
        fd_limit += atomic_load_explicit(&w->shed.at_fd_limit, memory_order_relaxed);
        header += atomic_load_explicit(&w->shed.header_timeout, memory_order_relaxed);
        body += atomic_load_explicit(&w->shed.body_timeout, memory_order_relaxed);
        lingered += atomic_load_explicit(&w->shed.lingered, memory_order_relaxed);
        conns += atomic_load_explicit(&w->shed.conns, memory_order_relaxed);
    }
    return buf_printf(
        out,
        "# HELP tollgate_connections_shed_total Client connections the gateway closed before "
        "their request was in: at_cap (room made at max_connections), fd_limit (a descriptor "
        "freed at the process's limit), header_timeout (no complete header in "
        "client_header_timeout_ms), body_timeout (no complete body in client_body_timeout_ms, "
        "answered 408).\n"
        "# TYPE tollgate_connections_shed_total counter\n"
        "tollgate_connections_shed_total{reason=\"at_cap\"} %lu\n"
        "tollgate_connections_shed_total{reason=\"fd_limit\"} %lu\n"
        "tollgate_connections_shed_total{reason=\"header_timeout\"} %lu\n"
        "tollgate_connections_shed_total{reason=\"body_timeout\"} %lu\n"
        "# HELP tollgate_connections_lingered_total Lingering closes after an answer sent "
        "before the request's body was read (413, 401...).\n"
        "# TYPE tollgate_connections_lingered_total counter\n"
        "tollgate_connections_lingered_total %lu\n"
        "# HELP tollgate_client_connections Open client connections.\n"
        "# TYPE tollgate_client_connections gauge\n"
        "tollgate_client_connections %lu\n",
        at_cap, fd_limit, header, body, lingered, conns);
}

int worker_shared_render_metrics(struct worker_shared *sh, struct buf *out)
{
    struct metrics_shard *shards[256];
    unsigned n = sh->n_workers < 256 ? sh->n_workers : 256;
    for (unsigned i = 0; i < n; i++)
        shards[i] = sh->workers[i].metrics;
    pthread_mutex_lock(&sh->cfg_lock);
    struct config *cfg = config_ref(sh->cfg);
    pthread_mutex_unlock(&sh->cfg_lock);
    int rc = metrics_render(out, shards, n);
    if (!rc)
        rc = metrics_render_build_info(out);
    if (!rc)
        rc = backend_render_metrics(out, cfg);
    if (!rc)
        rc = worker_render_connections(sh, out);
    if (!rc)
        rc = trace_exporter_render(sh->trace, out);
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

bool worker_refuses(const struct worker *w, double arrived)
{
    /* Between the signal and the worker's wakeup, drain_started is not set yet. */
    return worker_draining(w) && (!w->draining || arrived >= w->drain_started);
}

static void worker_flushed(void *ctx)
{
    struct worker *w = ctx;
    if (w->n_active == 0)
        ev_break(w->loop, EVBREAK_ALL);
}

static void worker_drained_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct worker *w = t->data;
    if (!w->drained) {
        w->drained = true;
        httpd_quiesce(&w->httpd);
    }
    /* Records of the last requests may still be on their way to Redis: a stop now would
     * leave them to the spool (in Kubernetes an emptyDir, gone with the pod). */
    if (w->n_active == 0)
        ledger_flush(w->ledger, worker_flushed, w);
}

void worker_drained(struct worker *w)
{
    /* Called from MHD's completion callback: the listener closes on the loop's next turn,
     * outside the daemon's own processing. */
    ev_timer_stop(w->loop, &w->drained_timer);
    ev_timer_init(&w->drained_timer, worker_drained_cb, 0., 0.);
    w->drained_timer.data = w;
    ev_timer_start(w->loop, &w->drained_timer);
}

void worker_request_done(struct worker *w)
{
    if (w->draining && w->n_active == 0)
        worker_drained(w);
}

/* libmicrohttpd on a libev loop: the HTTP half of the engine (net/upstream.h is the other).
 *
 * The daemon runs in external-polling epoll mode with suspend/resume (DESIGN.md §2): its
 * epoll fd is one io watcher of the loop, its timeouts one timer, and a prepare hook runs it
 * again before the loop blocks when a connection was resumed outside MHD's own callbacks
 * (httpd_kick()), together with the curl transfers started meanwhile (upstream_flush()).
 * The hook then writes the thread's buffered log lines (base/log.h).
 *
 * Not thread-safe: an httpd belongs to the thread that runs its loop; the handler and the
 * completion callback run there. The gateway's workers and bench/floor.c both use it. */
#ifndef TOLLGATE_HTTPD_H
#define TOLLGATE_HTTPD_H

#include "net/upstream.h"

#include <ev.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

struct httpd {
    struct ev_loop *loop;
    struct MHD_Daemon *mhd; /* NULL before httpd_start() and after httpd_stop() */
    struct upstream *upstream;
    ev_io io;           /* MHD's epoll fd */
    ev_timer timer;     /* MHD's own timeouts */
    ev_prepare prepare; /* runs MHD once more after connections were resumed */
    bool dirty;         /* a connection was resumed: run MHD before the loop blocks */
};

struct httpd_config {
    int listen_fd; /* bound and listening; the daemon takes it unless HTTPD_ESTART */
    unsigned connection_limit;
    size_t connection_memory; /* per connection, for headers (MHD's default: 32 KiB) */
    unsigned idle_timeout_s;  /* an idle client connection is closed after this */
    MHD_AccessHandlerCallback on_request;
    MHD_RequestCompletedCallback on_completed;
    void *ctx; /* the first argument of both callbacks */
    bool log;  /* MHD's own messages become debug log lines ("event":"http") */
};

enum httpd_error {
    HTTPD_OK = 0,
    HTTPD_ESTART = -1, /* MHD_start_daemon() failed; the caller still owns listen_fd */
    HTTPD_EEPOLL = -2, /* the daemon has no epoll fd (stopped again, listen_fd closed) */
};

/* Starts the daemon on `loop`; `upstream` is the loop's curl multi, flushed by the same
 * prepare hook. Returns 0 or an httpd_error; on error h->mhd is NULL. */
int httpd_start(struct httpd *h, struct ev_loop *loop, struct upstream *upstream,
                const struct httpd_config *c);

/* Lets MHD do what is pending and re-arms its timer. Call it once before the loop first runs;
 * after that the watchers call it. */
void httpd_run(struct httpd *h);

/* A connection of this daemon was resumed outside MHD's callbacks: MHD runs again before the
 * loop blocks. Inline: the request path calls it on every resume. */
static inline void httpd_kick(struct httpd *h)
{
    h->dirty = true;
}

/* Stops accepting: the listening socket is closed, open connections go on. */
void httpd_quiesce(struct httpd *h);

/* Stops the daemon (every connection's completion callback runs) and its watchers. No
 * connection may be suspended. Safe to call twice or on a daemon that never started. */
void httpd_stop(struct httpd *h);

#endif

/* libmicrohttpd on a libev loop: the HTTP half of the engine (net/upstream.h is the other).
 *
 * The daemon runs in external-polling epoll mode with suspend/resume (DESIGN.md §2): its
 * epoll fd is one io watcher of the loop, its timeouts one timer, and a prepare hook runs it
 * again before the loop blocks when a connection was resumed outside MHD's own callbacks
 * (httpd_kick()), together with the curl transfers started meanwhile (upstream_flush()).
 * The hook then writes the thread's buffered log lines (base/log.h).
 *
 * Connections are accepted here, not by MHD (MHD_add_connection()), so that limits are ours:
 *   - at the connection cap, the connection that has waited longest for its request (idle
 *     keep-alive, or a header or body still dripping in) is shut to make room; a connection
 *     whose request is in is never shed. With nothing to shed, accepting pauses until a
 *     connection closes or goes idle (new ones wait in the listen backlog).
 *   - at the process's fd limit (EMFILE/ENFILE), the same: shed one, retry shortly.
 *   - a request's header must be complete within header_timeout_ms of the connection opening
 *     or going idle after its previous answer; its body within body_timeout_ms of the header.
 *     Unlike MHD's idle timeout, a byte now and then does not extend them (slowloris).
 *   - an answer sent before the request's body was read (413, 401…) is followed by a
 *     lingering close: the socket is half-closed, and what the client still sends is read and
 *     dropped for a bounded time and size, so its TCP stack does not reset the connection
 *     under the answer (nginx's lingering_close; Node's fetch reports ECONNRESET otherwise).
 *
 * The handler's `url` is the path as sent, percent escapes kept (MHD_OPTION_UNESCAPE_CALLBACK),
 * so a route is never matched on what %2F or %00 decode to; httpd_unescape() decodes.
 *
 * Not thread-safe: an httpd belongs to the thread that runs its loop; the handler and the
 * completion callback run there. The gateway's workers and bench/floor.c both use it. */
#ifndef TOLLGATE_HTTPD_H
#define TOLLGATE_HTTPD_H

#include "base/list.h"
#include "net/upstream.h"

#include <ev.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

/* Why connections were shed, counted since the start. */
struct httpd_stats {
    unsigned long at_cap;         /* to make room at the connection cap */
    unsigned long at_fd_limit;    /* to free a descriptor after EMFILE/ENFILE */
    unsigned long header_timeout; /* no complete header in time (idle or dripping) */
    unsigned long body_timeout;   /* no complete body in time (408) */
    unsigned long lingered;       /* lingering closes after an early answer */
};

struct httpd {
    struct ev_loop *loop;
    struct MHD_Daemon *mhd; /* NULL before httpd_start() and after httpd_stop() */
    struct upstream *upstream;
    ev_io io;           /* MHD's epoll fd */
    ev_timer timer;     /* MHD's own timeouts */
    ev_prepare prepare; /* runs MHD once more after connections were resumed */
    bool dirty;         /* a connection was resumed: run MHD before the loop blocks */
    bool stopping;      /* inside httpd_stop(): no lingering */

    int listen_fd;         /* owned from httpd_start() on; -1 after httpd_quiesce() */
    ev_io accept_io;       /* the listening socket; stopped while accepting is paused */
    ev_timer accept_retry; /* after EMFILE/ENFILE: try again */
    bool accept_paused;    /* at the cap or the fd limit: resumed when a slot may be free */
    ev_timer sweep;        /* the header, body and linger deadlines */
    double sweep_at;       /* when it fires (clock_mono), 0 = not armed */
    struct list head_wait; /* connections waiting for a request's header, oldest first */
    struct list body_wait; /* connections reading a request's body, oldest first */
    struct list lingering; /* closed by MHD after an early answer, oldest first */
    unsigned n_conns;      /* MHD's connections */
    unsigned peak_conns;   /* the most at once since its owner last set it to n_conns */
    unsigned n_shed;       /* of them, shut down here and not yet closed by MHD */
    unsigned n_lingering;  /* sockets in `lingering` (they hold a descriptor) */
    unsigned cap;          /* connection_limit */
    unsigned mhd_limit;    /* MHD's own limit: the cap plus room for shed connections */
    double header_timeout; /* seconds, 0 = none */
    double body_timeout;   /* seconds, 0 = none */
    double linger_time;    /* seconds, 0 = no lingering close */
    char *timeout_body;    /* the 408's JSON body, or NULL */
    size_t linger_bytes;   /* read and dropped at most, per connection */
    MHD_AccessHandlerCallback on_request;
    MHD_RequestCompletedCallback on_completed;
    void *ctx;
    struct httpd_stats stats;
    struct httpd_stats logged; /* what the last "connections_shed" line said */
    double log_at;             /* when it was written (clock_mono) */
};

struct httpd_config {
    int listen_fd; /* bound, listening, non-blocking; taken unless HTTPD_ESTART */
    unsigned connection_limit;
    size_t connection_memory;      /* per connection, for headers (MHD's default: 32 KiB) */
    unsigned idle_timeout_s;       /* an idle client connection is closed after this */
    unsigned header_timeout_ms;    /* see above; 0 = no deadline */
    unsigned body_timeout_ms;      /* see above; 0 = no deadline */
    unsigned linger_ms;            /* lingering close after an early answer; 0 = none */
    size_t linger_bytes;           /* at most this much is read and dropped (also a body whose
                                      answer waits for its end, httpd_discard_body()) */
    const char *body_timeout_body; /* the JSON body of the 408 for a late body (copied);
                                      NULL: the connection is closed without one */
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

/* Stops the daemon (every connection's completion callback runs) and its watchers, and closes
 * lingering sockets and the listening socket. No connection may be suspended. Safe to call
 * twice or on a daemon that never started. */
void httpd_stop(struct httpd *h);

/* ---- HTTP edges ---------------------------------------------------------------------------- */

/* What libmicrohttpd 0.9.75 lets through that a strict HTTP/1.1 server refuses (RFC 9110,
 * 9112): a method that is not a token (it would reach logs as is); an HTTP/1.1 request
 * without Host, or with two; two Content-Length headers (a smuggling risk behind another
 * proxy); Transfer-Encoding with Content-Length; a transfer coding other than chunked (501:
 * MHD would wait for the body until the idle timeout); a header name with whitespace. For
 * the handler's first call of a request: true with *p set when the request must be refused
 * (with its status, and the connection closed after it). */
struct httpd_problem {
    unsigned status;
    const char *code;    /* for the error body, e.g. "invalid_http_request" */
    const char *message; /* static text */
};
bool httpd_request_problem(struct MHD_Connection *conn, const char *method, const char *version,
                           struct httpd_problem *p);

/* True when s is a non-empty HTTP token (a method, a header name). */
bool httpd_is_token(const char *s);

/* Percent-decodes `raw` into out (NUL-terminated). Returns the decoded length, or -1 when an
 * escape decodes to NUL (%00) or out is too small. A '%' not followed by two hex digits is
 * kept as it is. out may be raw itself. */
long httpd_unescape(const char *raw, char *out, size_t out_len);

/* From the handler, while a body is being read: the rest of it is read and dropped (up to
 * linger_bytes, else the connection is closed) and the handler is called again only once it
 * ended (*upload_data_size 0), when a response may be queued. For an answer decided in the
 * middle of a body, which MHD 0.9.75 cannot send before the body's end. */
void httpd_discard_body(struct MHD_Connection *conn);

#endif

#include "net/httpd.h"

#include "base/clock.h"
#include "base/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

/* Connections MHD may hold beyond the cap: those shed here that it has not closed yet. */
#define HTTPD_SHED_ROOM 64
/* Connections accepted per wake-up of the listener, so one busy listener cannot starve the
 * loop's other work. */
#define HTTPD_ACCEPT_BATCH 64
/* After EMFILE/ENFILE, accepting is tried again after this (or when a connection closes). */
#define HTTPD_ACCEPT_RETRY_S 0.1
/* At most one "connections_shed" line per worker this often. */
#define HTTPD_LOG_EVERY_S 10.0
/* A connection is shed for room only once it has waited this long for its request. */
#define HTTPD_SHED_MIN_AGE 1.0

/* Where a connection is, for the deadlines and for shedding. */
enum httpd_phase {
    HTTPD_HEAD,   /* waiting for a request's header: since it opened or its last answer */
    HTTPD_BODY,   /* the handler has the header; the body is being read */
    HTTPD_BUSY,   /* the request is in and being answered: never shed */
    HTTPD_SHED,   /* shut down here; MHD closes it on its next run */
    HTTPD_LINGER, /* MHD closed it after an early answer; the rest of the body is dropped */
};

/* One per connection: MHD's socket context. Lives from MHD's STARTED notification until its
 * CLOSED one, or until the end of its lingering close. */
struct httpd_conn {
    struct list node; /* on head_wait, body_wait or lingering, by phase; else unlinked */
    struct httpd *h;
    int fd; /* MHD's socket; while lingering, our own duplicate of it */
    enum httpd_phase phase;
    double since;     /* when it entered its phase (clock_mono) */
    bool answered;    /* a response was queued before the body was all read */
    bool discard;     /* httpd_discard_body(): the rest of the body is dropped */
    size_t discarded; /* bytes dropped, of the body or while lingering */
    ev_io linger_io;
};

/* ---- MHD on the loop ------------------------------------------------------------------------ */

void httpd_run(struct httpd *h)
{
    h->dirty = false;
    MHD_UNSIGNED_LONG_LONG timeout = 0;
    bool has_timeout = false;
    /* MHD says "again at once" while a connection sits on its ready list (e.g. after a
     * response went out, until a read finds nothing). Running it again here costs one
     * epoll_wait; a zero timer would cost a whole turn of the loop as well. */
    for (int i = 0; i < 3; i++) {
        MHD_run(h->mhd);
        has_timeout = MHD_get_timeout(h->mhd, &timeout) == MHD_YES;
        if (!has_timeout || timeout > 0)
            break;
    }
    ev_timer_stop(h->loop, &h->timer);
    if (has_timeout) {
        ev_timer_set(&h->timer, (double)timeout / 1000.0, 0.);
        ev_timer_start(h->loop, &h->timer);
    }
}

static void httpd_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    httpd_run(io->data);
}

static void httpd_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    httpd_run(t->data);
}

/* Before the loop blocks: let MHD handle connections resumed during this turn, and send the
 * upstream requests they started, so neither waits for another turn of the loop. Each step
 * can make work for the other (a finished transfer resumes a connection), hence the loop. */
static void httpd_prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    struct httpd *h = p->data;
    for (int i = 0; i < 4; i++) {
        bool did = false;
        if (h->dirty) {
            httpd_run(h);
            did = true;
        }
        did |= upstream_flush(h->upstream);
        if (!did)
            break;
    }
    log_flush();
}

static void httpd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512], esc[600];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
        msg[--n] = '\0';
    log_event(LOG_DEBUG, "http", "\"message\":\"%s\"", log_escape(esc, sizeof esc, msg));
}

/* ---- phases and deadlines ------------------------------------------------------------------ */

static struct httpd_conn *httpd_conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static double httpd_deadline(const struct list *anchor, double timeout)
{
    const struct list *first = list_first(anchor);
    if (!first || timeout <= 0)
        return 0;
    return LIST_ENTRY(first, struct httpd_conn, node)->since + timeout;
}

/* Arms the sweep for the earliest deadline (each list is in deadline order). */
static void httpd_arm_sweep(struct httpd *h)
{
    double at = 0;
    double d[3] = {httpd_deadline(&h->head_wait, h->header_timeout),
                   httpd_deadline(&h->body_wait, h->body_timeout),
                   httpd_deadline(&h->lingering, h->linger_time)};
    for (int i = 0; i < 3; i++)
        if (d[i] > 0 && (at == 0 || d[i] < at))
            at = d[i];
    if (at == h->sweep_at)
        return;
    ev_timer_stop(h->loop, &h->sweep);
    h->sweep_at = at;
    if (at > 0) {
        double in = at - clock_mono();
        ev_timer_set(&h->sweep, in > 0 ? in + 0.001 : 0., 0.);
        ev_timer_start(h->loop, &h->sweep);
    }
}

static void httpd_set_phase(struct httpd *h, struct httpd_conn *c, enum httpd_phase phase)
{
    list_unlink(&c->node);
    c->phase = phase;
    c->since = clock_mono();
    struct list *anchor = phase == HTTPD_HEAD     ? &h->head_wait
                          : phase == HTTPD_BODY   ? &h->body_wait
                          : phase == HTTPD_LINGER ? &h->lingering
                                                  : NULL;
    if (!anchor)
        return;
    list_push_tail(anchor, &c->node);
    /* A new tail's deadline is the latest of its list: only an unarmed sweep, or one armed
     * later than this list's head, needs moving. */
    if (!h->sweep_at || list_first(anchor) == &c->node)
        httpd_arm_sweep(h);
}

/* A slot or a descriptor may be free (a connection closed, or it is time to try again). */
static void httpd_resume_accept(struct httpd *h)
{
    if (h->accept_paused && h->listen_fd >= 0) {
        h->accept_paused = false;
        ev_timer_stop(h->loop, &h->accept_retry);
        ev_io_start(h->loop, &h->accept_io);
    }
}

static void httpd_linger_end(struct httpd *h, struct httpd_conn *c)
{
    ev_io_stop(h->loop, &c->linger_io);
    close(c->fd);
    list_unlink(&c->node);
    h->n_lingering--;
    free(c);
    httpd_resume_accept(h);
}

static void httpd_log_shed(struct httpd *h)
{
    double now = clock_mono();
    if (now - h->log_at < HTTPD_LOG_EVERY_S)
        return;
    const struct httpd_stats *s = &h->stats, *l = &h->logged;
    if (s->at_cap == l->at_cap && s->at_fd_limit == l->at_fd_limit)
        return; /* deadlines alone are routine (idle keep-alive connections) */
    log_event(LOG_WARN, "connections_shed",
              "\"at_cap\":%lu,\"at_fd_limit\":%lu,\"header_timeout\":%lu,\"body_timeout\":%lu,"
              "\"connections\":%u,\"cap\":%u",
              s->at_cap - l->at_cap, s->at_fd_limit - l->at_fd_limit,
              s->header_timeout - l->header_timeout, s->body_timeout - l->body_timeout,
              h->n_conns - h->n_shed + h->n_lingering, h->cap);
    h->logged = *s;
    h->log_at = now;
}

/* A body that missed its deadline gets a 408 if nothing was answered yet: written on the
 * socket itself, as MHD cannot queue a response in the middle of a body. Best effort. */
static void httpd_send_408(struct httpd *h, struct httpd_conn *c)
{
    if (!h->timeout_body)
        return;
    char head[256];
    size_t len = strlen(h->timeout_body);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                     len);
    if (n > 0 && (size_t)n < sizeof head && send(c->fd, head, (size_t)n, MSG_NOSIGNAL) == n)
        (void)send(c->fd, h->timeout_body, len, MSG_NOSIGNAL);
}

/* Shuts a connection down; MHD sees the end of its input and closes it on its next run. */
static void httpd_shed(struct httpd *h, struct httpd_conn *c)
{
    if (c->phase == HTTPD_LINGER) {
        httpd_linger_end(h, c);
        return;
    }
    list_unlink(&c->node);
    c->phase = HTTPD_SHED;
    h->n_shed++;
    shutdown(c->fd, SHUT_RDWR);
    h->dirty = true;
}

/* Sheds a connection to make room: a lingering one, else the one that has waited longest
 * for its request's header, else for its body, if it has waited HTTPD_SHED_MIN_AGE (a
 * connection just accepted has not had its first read yet). True when one went; else
 * *retry_in is how long until one may (0: none is waiting). */
static bool httpd_shed_one(struct httpd *h, double *retry_in)
{
    *retry_in = 0;
    struct list *first = list_first(&h->lingering);
    if (first) {
        httpd_linger_end(h, LIST_ENTRY(first, struct httpd_conn, node));
        return true;
    }
    double now = clock_mono();
    struct list *anchors[2] = {&h->head_wait, &h->body_wait};
    for (int i = 0; i < 2; i++) {
        if (!(first = list_first(anchors[i])))
            continue;
        struct httpd_conn *c = LIST_ENTRY(first, struct httpd_conn, node);
        double wait = c->since + HTTPD_SHED_MIN_AGE - now;
        if (wait <= 0) {
            httpd_shed(h, c);
            httpd_arm_sweep(h);
            return true;
        }
        if (*retry_in == 0 || wait < *retry_in)
            *retry_in = wait;
    }
    return false;
}

static void httpd_sweep_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct httpd *h = t->data;
    h->sweep_at = 0;
    double now = clock_mono();
    struct list *first;
    while ((first = list_first(&h->lingering))) {
        struct httpd_conn *c = LIST_ENTRY(first, struct httpd_conn, node);
        if (c->since + h->linger_time > now)
            break;
        httpd_linger_end(h, c);
    }
    while (h->header_timeout > 0 && (first = list_first(&h->head_wait))) {
        struct httpd_conn *c = LIST_ENTRY(first, struct httpd_conn, node);
        if (c->since + h->header_timeout > now)
            break;
        h->stats.header_timeout++;
        httpd_shed(h, c);
    }
    while (h->body_timeout > 0 && (first = list_first(&h->body_wait))) {
        struct httpd_conn *c = LIST_ENTRY(first, struct httpd_conn, node);
        if (c->since + h->body_timeout > now)
            break;
        h->stats.body_timeout++;
        if (!c->answered)
            httpd_send_408(h, c);
        httpd_shed(h, c);
    }
    httpd_arm_sweep(h);
}

/* ---- lingering close ----------------------------------------------------------------------- */

static void httpd_linger_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    struct httpd_conn *c = io->data;
    char scratch[16384];
    for (;;) {
        ssize_t n = recv(c->fd, scratch, sizeof scratch, 0);
        if (n > 0) {
            c->discarded += (size_t)n;
            if (c->discarded <= c->h->linger_bytes)
                continue;
        } else if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            return;
        } else if (n == -1 && errno == EINTR) {
            continue;
        }
        /* The client is done (end of input, an error) or sent more than we read. */
        httpd_linger_end(c->h, c);
        return;
    }
}

/* MHD closes a connection it answered before reading the request's body: keep the socket
 * (a duplicate of its fd), half-close it after the answer, and drop what still comes. */
static void httpd_linger_start(struct httpd *h, struct httpd_conn *c)
{
    int fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    if (fd == -1) {
        free(c);
        return;
    }
    shutdown(fd, SHUT_WR);
    c->fd = fd;
    c->discarded = 0;
    h->n_lingering++;
    h->stats.lingered++;
    httpd_set_phase(h, c, HTTPD_LINGER);
    ev_io_init(&c->linger_io, httpd_linger_cb, fd, EV_READ);
    c->linger_io.data = c;
    ev_io_start(h->loop, &c->linger_io);
}

/* ---- MHD's callbacks, wrapped -----------------------------------------------------------------
 */

static void httpd_on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                                enum MHD_ConnectionNotificationCode code)
{
    struct httpd *h = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        if (++h->n_conns > h->peak_conns)
            h->peak_conns = h->n_conns;
        struct httpd_conn *c = calloc(1, sizeof *c);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!c || !ci) {
            free(c);
            *socket_context = NULL; /* not tracked: never shed, no deadlines */
            return;
        }
        c->h = h;
        c->fd = ci->connect_fd;
        httpd_set_phase(h, c, HTTPD_HEAD);
        *socket_context = c;
        return;
    }
    h->n_conns--;
    struct httpd_conn *c = *socket_context;
    *socket_context = NULL;
    if (c) {
        if (c->phase == HTTPD_SHED)
            h->n_shed--;
        list_unlink(&c->node);
        if (c->answered && h->linger_time > 0 && !h->stopping && c->phase != HTTPD_SHED)
            httpd_linger_start(h, c);
        else
            free(c);
    }
    httpd_resume_accept(h);
}

/* True when the request announces a body (MHD reads it after the first call). */
static bool httpd_has_body(struct MHD_Connection *conn)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl)
        return strtoull(cl, NULL, 10) > 0;
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
}

static enum MHD_Result httpd_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                        const char *method, const char *version,
                                        const char *upload_data, size_t *upload_data_size,
                                        void **con_cls)
{
    struct httpd *h = cls;
    struct httpd_conn *c = httpd_conn_of(conn);
    if (c && c->phase == HTTPD_HEAD) {
        /* The first call of a request: its header is in. */
        c->answered = c->discard = false;
        c->discarded = 0;
        httpd_set_phase(h, c, httpd_has_body(conn) ? HTTPD_BODY : HTTPD_BUSY);
    } else if (c && c->phase == HTTPD_BODY && !*upload_data_size) {
        httpd_set_phase(h, c, HTTPD_BUSY); /* the body is in */
    }
    if (c && c->discard && *upload_data_size) {
        c->discarded += *upload_data_size;
        *upload_data_size = 0;
        return c->discarded <= h->linger_bytes ? MHD_YES : MHD_NO;
    }
    enum MHD_Result rc =
        h->on_request(h->ctx, conn, url, method, version, upload_data, upload_data_size, con_cls);
    if (c && c->phase == HTTPD_BODY && rc == MHD_YES &&
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_HTTP_STATUS)) {
        /* Answered before the body was read: MHD closes after the answer, and the close
         * lingers. The answer is on its way, so no deadline or shedding cuts it. */
        c->answered = true;
        httpd_set_phase(h, c, HTTPD_BUSY);
    }
    return rc;
}

static void httpd_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                               enum MHD_RequestTerminationCode toe)
{
    struct httpd *h = cls;
    if (h->on_completed)
        h->on_completed(h->ctx, conn, con_cls, toe);
    struct httpd_conn *c = httpd_conn_of(conn);
    if (c && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK &&
        (c->phase == HTTPD_BUSY || c->phase == HTTPD_BODY)) {
        /* Kept alive (or about to close): it waits for its next request now, and is the
         * first to go at the cap after the ones that waited longer. */
        httpd_set_phase(h, c, HTTPD_HEAD);
        /* Accepting paused at the cap: this one may be shed for room once it waited. */
        if (h->accept_paused && !ev_is_active(&h->accept_retry)) {
            ev_timer_set(&h->accept_retry, HTTPD_SHED_MIN_AGE, 0.);
            ev_timer_start(h->loop, &h->accept_retry);
        }
    }
}

void httpd_discard_body(struct MHD_Connection *conn)
{
    struct httpd_conn *c = httpd_conn_of(conn);
    if (c)
        c->discard = true;
}

/* The path as sent: routes are matched on it, escapes decoded afterwards (httpd_unescape()). */
static size_t httpd_keep_escapes(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return strlen(s);
}

/* ---- accepting ------------------------------------------------------------------------------ */

/* Stops accepting until a connection closes, or for `retry_in` seconds at most (0: until a
 * connection closes). */
static void httpd_pause_accept(struct httpd *h, double retry_in)
{
    h->accept_paused = true;
    ev_io_stop(h->loop, &h->accept_io);
    ev_timer_stop(h->loop, &h->accept_retry);
    if (retry_in > 0) {
        ev_timer_set(&h->accept_retry, retry_in, 0.);
        ev_timer_start(h->loop, &h->accept_retry);
    }
}

static void httpd_accept_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    httpd_resume_accept(t->data);
}

static void httpd_accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    (void)revents;
    struct httpd *h = io->data;
    double retry_in;
    for (int i = 0; i < HTTPD_ACCEPT_BATCH; i++) {
        if (h->n_conns - h->n_shed + h->n_lingering >= h->cap) {
            if (!httpd_shed_one(h, &retry_in)) {
                /* Every connection has a request in, or came just now: new ones wait in
                 * the backlog. */
                httpd_pause_accept(h, retry_in);
                break;
            }
            h->stats.at_cap++;
        }
        if (h->n_conns >= h->mhd_limit) {
            httpd_pause_accept(h, 0); /* MHD closes the shed ones on its next run */
            break;
        }
        struct sockaddr_storage addr;
        socklen_t addr_len = sizeof addr;
        int fd = accept4(h->listen_fd, (struct sockaddr *)&addr, &addr_len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1) {
            if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: free one of ours if a connection can go, and try again
                 * shortly either way (the workers share the process's limit). */
                if (httpd_shed_one(h, &retry_in))
                    h->stats.at_fd_limit++;
                httpd_pause_accept(h, HTTPD_ACCEPT_RETRY_S);
            }
            break; /* EAGAIN: the backlog is empty */
        }
        /* MHD closes the socket itself when it refuses it. */
        if (MHD_add_connection(h->mhd, fd, (struct sockaddr *)&addr, addr_len) != MHD_YES)
            log_event(LOG_DEBUG, "http", "\"message\":\"connection refused by MHD: %s\"",
                      strerror(errno));
        h->dirty = true;
    }
    httpd_log_shed(h);
}

/* ---- start and stop ------------------------------------------------------------------------- */

int httpd_start(struct httpd *h, struct ev_loop *loop, struct upstream *upstream,
                const struct httpd_config *c)
{
    memset(h, 0, sizeof *h);
    h->loop = loop;
    h->upstream = upstream;
    h->listen_fd = -1;
    list_init(&h->head_wait);
    list_init(&h->body_wait);
    list_init(&h->lingering);
    h->cap = c->connection_limit ? c->connection_limit : 1;
    h->mhd_limit = h->cap + HTTPD_SHED_ROOM;
    h->header_timeout = (double)c->header_timeout_ms / 1000.0;
    h->body_timeout = (double)c->body_timeout_ms / 1000.0;
    h->linger_time = (double)c->linger_ms / 1000.0;
    h->linger_bytes = c->linger_bytes;
    if (c->body_timeout_body && !(h->timeout_body = strdup(c->body_timeout_body)))
        return HTTPD_ESTART;
    h->on_request = c->on_request;
    h->on_completed = c->on_completed;
    h->ctx = c->ctx;
    /* MHD logs only with MHD_USE_ERROR_LOG; the logger is set either way, and first, so that
     * MHD's messages about the other options go to it too. MHD_OPTION_STRICT_FOR_CLIENT stays
     * 0: in 0.9.75 level 1 answers a missing Host with its status line and headers written
     * twice, and level -1 is the one that refuses whitespace before a colon (the condition is
     * inverted); httpd_request_problem() does both checks. */
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO |
                     MHD_USE_NO_LISTEN_SOCKET | (c->log ? MHD_USE_ERROR_LOG : 0);
    h->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, httpd_on_request, h, MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL,
        MHD_OPTION_CONNECTION_LIMIT, h->mhd_limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
        c->connection_memory, MHD_OPTION_CONNECTION_TIMEOUT, c->idle_timeout_s,
        MHD_OPTION_NOTIFY_COMPLETED, httpd_on_completed, h, MHD_OPTION_NOTIFY_CONNECTION,
        httpd_on_connection, h, MHD_OPTION_UNESCAPE_CALLBACK, httpd_keep_escapes, NULL,
        MHD_OPTION_STRICT_FOR_CLIENT, 0, MHD_OPTION_END);
    if (!h->mhd) {
        free(h->timeout_body);
        h->timeout_body = NULL;
        return HTTPD_ESTART;
    }
    h->listen_fd = c->listen_fd;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) {
        httpd_stop(h);
        return HTTPD_EEPOLL;
    }
    ev_io_init(&h->io, httpd_io_cb, info->epoll_fd, EV_READ);
    h->io.data = h;
    ev_io_start(loop, &h->io);
    ev_timer_init(&h->timer, httpd_timer_cb, 0., 0.);
    h->timer.data = h;
    ev_prepare_init(&h->prepare, httpd_prepare_cb);
    h->prepare.data = h;
    ev_prepare_start(loop, &h->prepare);
    ev_timer_init(&h->sweep, httpd_sweep_cb, 0., 0.);
    h->sweep.data = h;
    ev_timer_init(&h->accept_retry, httpd_accept_retry_cb, 0., 0.);
    h->accept_retry.data = h;
    ev_io_init(&h->accept_io, httpd_accept_cb, h->listen_fd, EV_READ);
    h->accept_io.data = h;
    ev_io_start(loop, &h->accept_io);
    return HTTPD_OK;
}

void httpd_quiesce(struct httpd *h)
{
    if (h->listen_fd < 0)
        return;
    ev_io_stop(h->loop, &h->accept_io);
    ev_timer_stop(h->loop, &h->accept_retry);
    close(h->listen_fd);
    h->listen_fd = -1;
}

void httpd_stop(struct httpd *h)
{
    if (!h->mhd)
        return;
    httpd_quiesce(h);
    h->stopping = true;
    MHD_stop_daemon(h->mhd); /* every connection's CLOSED notification frees its state */
    h->mhd = NULL;
    struct list *first;
    while ((first = list_first(&h->lingering)))
        httpd_linger_end(h, LIST_ENTRY(first, struct httpd_conn, node));
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    ev_timer_stop(h->loop, &h->sweep);
    ev_prepare_stop(h->loop, &h->prepare);
    free(h->timeout_body);
    h->timeout_body = NULL;
}

/* ---- HTTP edges ---------------------------------------------------------------------------- */

bool httpd_is_token(const char *s)
{
    if (!s || !*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s)))
            return false;
    return true;
}

struct httpd_header_count {
    unsigned host, content_length, transfer_encoding;
    bool chunked;  /* the (one) Transfer-Encoding is exactly "chunked" */
    bool bad_name; /* a header name that is not a token (whitespace in it, or empty) */
};

static enum MHD_Result httpd_count_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                          const char *value)
{
    (void)kind;
    struct httpd_header_count *n = cls;
    if (!httpd_is_token(key))
        n->bad_name = true;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_HOST))
        n->host++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH))
        n->content_length++;
    else if (!strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
        n->transfer_encoding++;
        n->chunked = value && !strcasecmp(value, "chunked");
    }
    return MHD_YES;
}

#define HTTPD_PROBLEM(p, st, cd, msg)                                                              \
    ((p)->status = (st), (p)->code = (cd), (p)->message = (msg), true)

bool httpd_request_problem(struct MHD_Connection *conn, const char *method, const char *version,
                           struct httpd_problem *p)
{
    if (!httpd_is_token(method))
        return HTTPD_PROBLEM(p, 400, "invalid_http_request", "The request method is not a token.");
    struct httpd_header_count n = {0};
    MHD_get_connection_values(conn, MHD_HEADER_KIND, httpd_count_header, &n);
    if (n.bad_name)
        return HTTPD_PROBLEM(p, 400, "invalid_http_request",
                             "A header name is not a token (it has whitespace, or is empty).");
    bool http11 = version && !strncmp(version, "HTTP/1.", 7) && version[7] >= '1';
    if (n.host > 1 || (http11 && n.host == 0))
        return HTTPD_PROBLEM(p, 400, "invalid_http_request",
                             "An HTTP/1.1 request needs exactly one Host header.");
    if (n.content_length > 1)
        return HTTPD_PROBLEM(p, 400, "invalid_http_request",
                             "The request has more than one Content-Length header.");
    if (n.transfer_encoding && n.content_length)
        return HTTPD_PROBLEM(p, 400, "invalid_http_request",
                             "The request has both Transfer-Encoding and Content-Length.");
    if (n.transfer_encoding > 1 || (n.transfer_encoding && !n.chunked))
        return HTTPD_PROBLEM(p, 501, "unsupported_transfer_encoding",
                             "Transfer-Encoding must be chunked.");
    return false;
}

static int httpd_hex(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

long httpd_unescape(const char *raw, char *out, size_t out_len)
{
    size_t o = 0;
    for (size_t i = 0; raw[i]; i++) {
        char ch = raw[i];
        int hi, lo;
        if (ch == '%' && (hi = httpd_hex(raw[i + 1])) >= 0 && (lo = httpd_hex(raw[i + 2])) >= 0) {
            ch = (char)(hi * 16 + lo);
            if (!ch)
                return -1;
            i += 2;
        }
        if (o + 1 >= out_len)
            return -1;
        out[o++] = ch;
    }
    if (!out_len)
        return -1;
    out[o] = '\0';
    return (long)o;
}

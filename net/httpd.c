#include "net/httpd.h"

#include "base/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

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

int httpd_start(struct httpd *h, struct ev_loop *loop, struct upstream *upstream,
                const struct httpd_config *c)
{
    h->loop = loop;
    h->upstream = upstream;
    h->dirty = false;
    /* MHD logs only with MHD_USE_ERROR_LOG; the logger is set either way. */
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | (c->log ? MHD_USE_ERROR_LOG : 0);
    h->mhd = MHD_start_daemon(flags, 0, NULL, NULL, c->on_request, c->ctx, MHD_OPTION_LISTEN_SOCKET,
                              c->listen_fd, MHD_OPTION_CONNECTION_LIMIT, c->connection_limit,
                              MHD_OPTION_CONNECTION_MEMORY_LIMIT, c->connection_memory,
                              MHD_OPTION_CONNECTION_TIMEOUT, c->idle_timeout_s,
                              MHD_OPTION_NOTIFY_COMPLETED, c->on_completed, c->ctx,
                              MHD_OPTION_EXTERNAL_LOGGER, httpd_log, NULL, MHD_OPTION_END);
    if (!h->mhd)
        return HTTPD_ESTART;
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (!info) {
        MHD_stop_daemon(h->mhd);
        h->mhd = NULL;
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
    return HTTPD_OK;
}

void httpd_quiesce(struct httpd *h)
{
    MHD_socket fd = MHD_quiesce_daemon(h->mhd);
    if (fd != MHD_INVALID_SOCKET)
        close(fd);
}

void httpd_stop(struct httpd *h)
{
    if (!h->mhd)
        return;
    MHD_stop_daemon(h->mhd);
    h->mhd = NULL;
    ev_io_stop(h->loop, &h->io);
    ev_timer_stop(h->loop, &h->timer);
    ev_prepare_stop(h->loop, &h->prepare);
}

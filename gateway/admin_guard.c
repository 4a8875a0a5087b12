#include "gateway/admin_guard.h"

#include "base/clock.h"
#include "base/list.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* Connections MHD may hold beyond the cap: those shed here that it has not closed yet. */
#define ADMIN_GUARD_SHED_ROOM 16
/* A connection is shed for room only once it has waited this long for its request. */
#define ADMIN_GUARD_SHED_MIN_AGE 1.0
/* The deadlines are checked this often. */
#define ADMIN_GUARD_SWEEP_MS 100

enum admin_guard_phase {
    ADMIN_GUARD_HEAD, /* waiting for a request's header: since it opened or its last answer */
    ADMIN_GUARD_BODY, /* the header is in; the body is being read */
    ADMIN_GUARD_BUSY, /* the request is in and being answered: never shed */
    ADMIN_GUARD_SHED, /* shut down here; MHD closes it */
};

/* MHD's socket context, from its STARTED notification to its CLOSED one (MHD sends that
 * before it closes the socket, so under the lock fd is always the connection's own). */
struct admin_guard_conn {
    struct list node;
    int fd;
    enum admin_guard_phase phase;
    double since; /* when it entered its phase (clock_mono) */
};

struct admin_guard {
    pthread_mutex_t lock; /* guards everything below but the config */
    pthread_cond_t wake;
    pthread_t thread;
    bool stop;
    struct list conns;
    unsigned n_open, n_shed;
    unsigned long shed_at_cap, shed_header, shed_body;
    /* Set once before the thread starts, read-only after. */
    unsigned cap;
    double header_timeout, body_timeout; /* seconds, 0 = none */
    MHD_AccessHandlerCallback handler;
    void *handler_cls;
    MHD_RequestCompletedCallback completed;
    void *completed_cls;
};

static struct admin_guard_conn *guard_conn_of(struct MHD_Connection *conn)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* Under the lock. */
static void guard_set_phase(struct admin_guard_conn *c, enum admin_guard_phase phase)
{
    c->phase = phase;
    c->since = clock_mono();
}

/* Under the lock. */
static void guard_shed(struct admin_guard *g, struct admin_guard_conn *c)
{
    shutdown(c->fd, SHUT_RDWR);
    guard_set_phase(c, ADMIN_GUARD_SHED);
    g->n_shed++;
}

/* Under the lock: over the cap, the connection that waited longest for its request goes, if
 * it waited long enough. True when one went. */
static bool guard_make_room(struct admin_guard *g)
{
    if (g->n_open - g->n_shed <= g->cap)
        return false;
    double now = clock_mono();
    struct admin_guard_conn *oldest = NULL;
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &g->conns) {
        struct admin_guard_conn *c = LIST_ENTRY(node, struct admin_guard_conn, node);
        if (c->phase == ADMIN_GUARD_HEAD && now - c->since >= ADMIN_GUARD_SHED_MIN_AGE &&
            (!oldest || c->since < oldest->since))
            oldest = c;
    }
    if (!oldest)
        return false;
    guard_shed(g, oldest);
    g->shed_at_cap++;
    return true;
}

static void *guard_main(void *arg)
{
    struct admin_guard *g = arg;
    pthread_mutex_lock(&g->lock);
    while (!g->stop) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += ADMIN_GUARD_SWEEP_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&g->wake, &g->lock, &ts);
        double now = clock_mono();
        struct list *node, *tmp;
        LIST_FOR_EACH_SAFE (node, tmp, &g->conns) {
            struct admin_guard_conn *c = LIST_ENTRY(node, struct admin_guard_conn, node);
            if (c->phase == ADMIN_GUARD_HEAD && g->header_timeout > 0 &&
                now - c->since > g->header_timeout) {
                guard_shed(g, c);
                g->shed_header++;
            } else if (c->phase == ADMIN_GUARD_BODY && g->body_timeout > 0 &&
                       now - c->since > g->body_timeout) {
                guard_shed(g, c);
                g->shed_body++;
            }
        }
        /* Over the cap (MHD's limit leaves room above it) with nothing new coming: MHD stops
         * accepting at its limit, so room is made here once the idle ones are old enough. */
        while (guard_make_room(g))
            ;
    }
    pthread_mutex_unlock(&g->lock);
    return NULL;
}

struct admin_guard *admin_guard_new(const struct admin_guard_config *c)
{
    struct admin_guard *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    list_init(&g->conns);
    g->cap = c->cap ? c->cap : 1;
    g->header_timeout = (double)c->header_timeout_ms / 1000.0;
    g->body_timeout = (double)c->body_timeout_ms / 1000.0;
    g->handler = c->handler;
    g->handler_cls = c->handler_cls;
    g->completed = c->completed;
    g->completed_cls = c->completed_cls;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g->wake, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&g->lock, NULL);
    if (pthread_create(&g->thread, NULL, guard_main, g)) {
        pthread_cond_destroy(&g->wake);
        pthread_mutex_destroy(&g->lock);
        free(g);
        return NULL;
    }
    return g;
}

unsigned admin_guard_mhd_limit(const struct admin_guard *g)
{
    return g->cap + ADMIN_GUARD_SHED_ROOM;
}

void admin_guard_stats(struct admin_guard *g, unsigned long *at_cap, unsigned long *header,
                       unsigned long *body)
{
    pthread_mutex_lock(&g->lock);
    *at_cap = g->shed_at_cap;
    *header = g->shed_header;
    *body = g->shed_body;
    pthread_mutex_unlock(&g->lock);
}

void admin_guard_free(struct admin_guard *g)
{
    if (!g)
        return;
    pthread_mutex_lock(&g->lock);
    g->stop = true;
    pthread_cond_signal(&g->wake);
    pthread_mutex_unlock(&g->lock);
    pthread_join(g->thread, NULL);
    /* MHD_stop_daemon() sent every CLOSED notification: the list is empty. */
    pthread_cond_destroy(&g->wake);
    pthread_mutex_destroy(&g->lock);
    free(g);
}

void admin_guard_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                            enum MHD_ConnectionNotificationCode code)
{
    struct admin_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct admin_guard_conn *c = ci ? calloc(1, sizeof *c) : NULL;
        *socket_context = c; /* NULL: not tracked, never shed */
        pthread_mutex_lock(&g->lock);
        g->n_open++;
        if (c) {
            c->fd = ci->connect_fd;
            guard_set_phase(c, ADMIN_GUARD_HEAD);
            list_push_tail(&g->conns, &c->node);
        }
        guard_make_room(g);
        pthread_mutex_unlock(&g->lock);
        return;
    }
    struct admin_guard_conn *c = *socket_context;
    *socket_context = NULL;
    pthread_mutex_lock(&g->lock);
    g->n_open--;
    if (c) {
        if (c->phase == ADMIN_GUARD_SHED)
            g->n_shed--;
        list_unlink(&c->node);
    }
    pthread_mutex_unlock(&g->lock);
    free(c);
}

/* True when the request announces a body (MHD reads it after the first call). */
static bool guard_has_body(struct MHD_Connection *conn)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl)
        return strtoull(cl, NULL, 10) > 0;
    return MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
}

enum MHD_Result admin_guard_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_data_size, void **con_cls)
{
    struct admin_guard *g = cls;
    struct admin_guard_conn *c = guard_conn_of(conn);
    if (c) {
        pthread_mutex_lock(&g->lock);
        if (c->phase == ADMIN_GUARD_HEAD)
            guard_set_phase(c, guard_has_body(conn) ? ADMIN_GUARD_BODY : ADMIN_GUARD_BUSY);
        else if (c->phase == ADMIN_GUARD_BODY && !*upload_data_size)
            guard_set_phase(c, ADMIN_GUARD_BUSY); /* the body is in */
        pthread_mutex_unlock(&g->lock);
    }
    return g->handler(g->handler_cls, conn, url, method, version, upload_data, upload_data_size,
                      con_cls);
}

void admin_guard_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe)
{
    struct admin_guard *g = cls;
    if (g->completed)
        g->completed(g->completed_cls, conn, con_cls, toe);
    struct admin_guard_conn *c = guard_conn_of(conn);
    if (c && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        pthread_mutex_lock(&g->lock);
        if (c->phase == ADMIN_GUARD_BUSY || c->phase == ADMIN_GUARD_BODY)
            guard_set_phase(c, ADMIN_GUARD_HEAD); /* kept alive: waits for its next request */
        pthread_mutex_unlock(&g->lock);
    }
}

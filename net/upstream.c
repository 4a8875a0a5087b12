#include "net/upstream.h"

#include "base/error.h"
#include "base/list.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UPSTREAM_MAX_POOLED_HANDLES 256
/* What upstream_shrink() keeps at least: recycled easy handles, and the keep-alive pool's size
 * (CURLMOPT_MAXCONNECTS) above twice the busiest moment of the last period. */
#define UPSTREAM_MIN_POOLED_HANDLES 16
#define UPSTREAM_MIN_POOLED_CONNS 64
#define UPSTREAM_MAX_POOLED_CONNS 4096

struct upstream {
    struct ev_loop *loop;
    CURLM *multi;
    ev_timer timer; /* curl's own timeout */
    int running;
    struct list idle; /* recycled transfers with their easy handles, last released first */
    size_t n_free;
    struct list live; /* running transfers, for upstream_free() */
    size_t n_live;
    size_t peak_live; /* the most running at once since the last upstream_shrink() */
    bool pending;     /* transfers were added since the last flush */
};

struct upstream_xfer {
    struct upstream *u;
    CURL *easy;
    const struct upstream_ops *ops;
    void *ctx;
    ev_timer deadline; /* first byte, then idle gap between body bytes */
    double idle_s;
    ev_timer total; /* the whole transfer, paused or not (curl's own ignores a paused one) */
    double total_s;
    ev_tstamp started;
    bool got_data;
    bool paused;
    int abort_result; /* set when on_data or the deadline aborts */
    char abort_detail[160];
    bool reading;               /* the handle carries a read callback (upstream_req.read) */
    struct curl_slist rid_node; /* x-request-id linked in front of the shared headers */
    char rid_line[160];
    char errbuf[CURL_ERROR_SIZE];
    char *ca_file;    /* the CURLOPT_CAINFO this handle carries (a copy); NULL = curl's default */
    struct list node; /* on u->live while running, on u->idle while recycled */
};

struct upstream_sock {
    ev_io io;
    curl_socket_t fd;
    struct upstream *u;
};

static void upstream_check_done(struct upstream *u);

static void upstream_event(struct upstream *u, curl_socket_t fd, int ev_bitmask)
{
    curl_multi_socket_action(u->multi, fd, ev_bitmask, &u->running);
    upstream_check_done(u);
}

static void upstream_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
    (void)loop;
    struct upstream_sock *s = w->data;
    int action =
        (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
    upstream_event(s->u, s->fd, action);
}

static void upstream_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct upstream *u = w->data;
    upstream_event(u, CURL_SOCKET_TIMEOUT, 0);
}

static int upstream_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    (void)easy;
    struct upstream *u = userp;
    struct upstream_sock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            ev_io_stop(u->loop, &s->io);
            free(s);
            curl_multi_assign(u->multi, fd, NULL);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->fd = fd;
        s->u = u;
        curl_multi_assign(u->multi, fd, s);
    } else {
        ev_io_stop(u->loop, &s->io);
    }
    int kind = (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0);
    ev_io_init(&s->io, upstream_io_cb, fd, kind);
    s->io.data = s;
    ev_io_start(u->loop, &s->io);
    return 0;
}

static int upstream_timerfn(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct upstream *u = userp;
    ev_timer_stop(u->loop, &u->timer);
    if (timeout_ms >= 0) {
        /* curl forbids calling socket_action from here: a 0 timeout runs on the next turn. */
        ev_timer_set(&u->timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(u->loop, &u->timer);
    }
    return 0;
}

struct upstream *upstream_new(struct ev_loop *loop, unsigned max_per_host)
{
    struct upstream *u = calloc(1, sizeof *u);
    if (!u)
        return NULL;
    u->loop = loop;
    list_init(&u->idle);
    list_init(&u->live);
    u->multi = curl_multi_init();
    if (!u->multi) {
        free(u);
        return NULL;
    }
    ev_timer_init(&u->timer, upstream_timer_cb, 0., 0.);
    u->timer.data = u;
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, upstream_socket_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, upstream_timerfn);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    /* The keep-alive pool: enough idle connections for every concurrent transfer (until
     * upstream_shrink() sizes it to the traffic). */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)UPSTREAM_MAX_POOLED_CONNS);
    curl_multi_setopt(u->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)max_per_host);
    return u;
}

/* A transfer and its easy handle, gone for good. */
static void xfer_destroy(struct upstream_xfer *x)
{
    curl_easy_cleanup(x->easy);
    free(x->ca_file);
    free(x);
}

/* Ends a transfer's life: detach from curl and the loop, and keep it for reuse. */
static void xfer_release(struct upstream_xfer *x)
{
    struct upstream *u = x->u;
    ev_timer_stop(u->loop, &x->deadline);
    ev_timer_stop(u->loop, &x->total);
    curl_multi_remove_handle(u->multi, x->easy);
    if (x->reading) {
        /* A recycled handle keeps no pointer to the upload's context, which goes now. */
        curl_easy_setopt(x->easy, CURLOPT_READFUNCTION, NULL);
        curl_easy_setopt(x->easy, CURLOPT_READDATA, NULL);
        curl_easy_setopt(x->easy, CURLOPT_SEEKFUNCTION, NULL);
        curl_easy_setopt(x->easy, CURLOPT_SEEKDATA, NULL);
        x->reading = false;
    }
    list_unlink(&x->node);
    u->n_live--;
    if (u->n_free < UPSTREAM_MAX_POOLED_HANDLES) {
        list_push_head(&u->idle, &x->node);
        u->n_free++;
    } else {
        xfer_destroy(x);
    }
}

size_t upstream_shrink(struct upstream *u)
{
    size_t keep =
        u->peak_live > UPSTREAM_MIN_POOLED_HANDLES ? u->peak_live : UPSTREAM_MIN_POOLED_HANDLES;
    size_t freed = 0;
    while (u->n_free > keep) {
        /* The least recently used: the idle list is pushed at its head. */
        struct upstream_xfer *x = LIST_ENTRY(u->idle.prev, struct upstream_xfer, node);
        list_unlink(&x->node);
        u->n_free--;
        xfer_destroy(x);
        freed++;
    }
    /* curl closes the oldest idle connections beyond this as transfers give theirs back. */
    size_t conns = 2 * u->peak_live + UPSTREAM_MIN_POOLED_CONNS;
    if (conns > UPSTREAM_MAX_POOLED_CONNS)
        conns = UPSTREAM_MAX_POOLED_CONNS;
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, (long)conns);
    u->peak_live = u->n_live;
    return freed;
}

void upstream_free(struct upstream *u)
{
    if (!u)
        return;
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &u->live) {
        xfer_release(LIST_ENTRY(node, struct upstream_xfer, node));
    }
    ev_timer_stop(u->loop, &u->timer);
    LIST_FOR_EACH_SAFE (node, tmp, &u->idle) {
        xfer_destroy(LIST_ENTRY(node, struct upstream_xfer, node));
    }
    curl_multi_cleanup(u->multi);
    free(u);
}

static size_t xfer_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct upstream_xfer *x = userp;
    size_t n = size * nmemb;
    x->got_data = true;
    if (x->idle_s > 0) {
        x->deadline.repeat = x->idle_s;
        ev_timer_again(x->u->loop, &x->deadline);
    } else {
        ev_timer_stop(x->u->loop, &x->deadline);
    }
    int rc = x->ops->on_data(x->ctx, data, n);
    if (rc == UPSTREAM_PAUSE) {
        /* A slow client, not an idle backend: no idle deadline while paused. */
        x->paused = true;
        ev_timer_stop(x->u->loop, &x->deadline);
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc < 0) {
        x->abort_result = rc;
        return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
    }
    return n;
}

static void xfer_finish(struct upstream_xfer *x, int result, const char *detail)
{
    const struct upstream_ops *ops = x->ops;
    void *ctx = x->ctx;
    char copy[CURL_ERROR_SIZE + 64];
    snprintf(copy, sizeof copy, "%s", detail ? detail : "");
    long status = upstream_status(x);
    xfer_release(x);
    ops->on_done(ctx, result, status, copy);
}

static void xfer_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct upstream_xfer *x = w->data;
    char detail[96];
    if (x->got_data)
        snprintf(detail, sizeof detail, "no data for %.0f ms", x->idle_s * 1000);
    else
        snprintf(detail, sizeof detail, "no answer within %.0f ms",
                 (ev_now(x->u->loop) - x->started) * 1000);
    xfer_finish(x, TG_ERR_BACKEND_TIMEOUT, detail);
}

static void xfer_total_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct upstream_xfer *x = w->data;
    char detail[96];
    snprintf(detail, sizeof detail, "not finished within %.0f ms%s", x->total_s * 1000,
             x->paused ? " (paused by a slow reader)" : "");
    xfer_finish(x, TG_ERR_BACKEND_TIMEOUT, detail);
}

static int upstream_map_curl(CURLcode code)
{
    switch (code) {
    case CURLE_OK:
        return 0;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
        return TG_ERR_BACKEND_UNREACHABLE;
    case CURLE_PEER_FAILED_VERIFICATION: /* will not verify a moment later either */
        return TG_ERR_BACKEND_UNTRUSTED;
    case CURLE_OPERATION_TIMEDOUT:
        return TG_ERR_BACKEND_TIMEOUT;
    default:
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
}

static void upstream_check_done(struct upstream *u)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(u->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct upstream_xfer *x = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        if (!x)
            continue;
        CURLcode code = msg->data.result;
        if (x->abort_result) {
            xfer_finish(x, x->abort_result, x->abort_detail);
            continue;
        }
        int result = upstream_map_curl(code);
        if (code == CURLE_OPERATION_TIMEDOUT && !x->got_data) {
            long connected = 0;
            curl_easy_getinfo(x->easy, CURLINFO_CONNECT_TIME_T, &connected);
            if (connected == 0)
                result = TG_ERR_BACKEND_UNREACHABLE; /* connect timed out */
        }
        xfer_finish(x, result, x->errbuf[0] ? x->errbuf : curl_easy_strerror(code));
    }
}

/* A recycled handle may carry another backend's CA bundle: set this one's (or curl's built-in
 * default) when it differs. Only then, since curl copies the string on every set. */
static bool upstream_set_ca(struct upstream_xfer *x, const char *ca_file)
{
    bool same = x->ca_file && ca_file ? !strcmp(x->ca_file, ca_file) : x->ca_file == ca_file;
    if (same)
        return true;
    char *copy = NULL;
    if (ca_file && !(copy = strdup(ca_file)))
        return false;
    const char *set = ca_file ? ca_file : curl_version_info(CURLVERSION_NOW)->cainfo;
    if (curl_easy_setopt(x->easy, CURLOPT_CAINFO, set) != CURLE_OK) {
        free(copy);
        return false;
    }
    free(x->ca_file);
    x->ca_file = copy;
    return true;
}

struct upstream_xfer *upstream_start(struct upstream *u, const struct upstream_req *req,
                                     const struct upstream_ops *ops, void *ctx)
{
    /* A recycled handle keeps its options: every transfer sets the same ones below, so no
     * curl_easy_reset() (a large memset and re-initialisation per request). */
    struct list *idle = list_first(&u->idle);
    struct upstream_xfer *x = idle ? LIST_ENTRY(idle, struct upstream_xfer, node) : NULL;
    bool fresh = !x;
    if (x) {
        list_unlink(&x->node);
        u->n_free--;
    } else {
        x = calloc(1, sizeof *x);
        if (!x)
            return NULL;
        x->easy = curl_easy_init();
        if (!x->easy) {
            free(x);
            return NULL;
        }
    }
    CURL *easy = x->easy;
    x->u = u;
    x->ops = ops;
    x->ctx = ctx;
    x->got_data = false;
    x->paused = false;
    x->abort_result = 0;
    x->abort_detail[0] = '\0';
    x->errbuf[0] = '\0';
    x->started = ev_now(u->loop);
    x->idle_s = req->idle_timeout_ms > 0 ? (double)req->idle_timeout_ms / 1000.0 : 0;
    list_push_head(&u->live, &x->node);
    if (++u->n_live > u->peak_live)
        u->peak_live = u->n_live;

    struct curl_slist *headers = req->headers;
    if (req->request_id) {
        snprintf(x->rid_line, sizeof x->rid_line, "x-request-id: %s", req->request_id);
        x->rid_node.data = x->rid_line;
        x->rid_node.next = req->headers;
        headers = &x->rid_node;
    }

    curl_easy_setopt(easy, CURLOPT_URL, req->url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
    if (req->read) {
        curl_easy_setopt(easy, CURLOPT_POST, 1L);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, NULL);
        curl_easy_setopt(easy, CURLOPT_READFUNCTION, req->read);
        curl_easy_setopt(easy, CURLOPT_READDATA, req->read_ctx);
        curl_easy_setopt(easy, CURLOPT_SEEKFUNCTION, req->seek);
        curl_easy_setopt(easy, CURLOPT_SEEKDATA, req->read_ctx);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
        x->reading = true;
    } else if (req->body) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
    } else {
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    }
    curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, req->method); /* NULL: as set above */
    if (!upstream_set_ca(x, req->ca_file)) {
        xfer_release(x);
        return NULL;
    }
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, req->total_timeout_ms);
    if (fresh) {
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, xfer_write_cb);
        curl_easy_setopt(easy, CURLOPT_WRITEDATA, x);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, x);
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
        curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
        /* Backend URLs come only from config: no proxy from the environment (which curl
         * would otherwise look up on every transfer), no redirect elsewhere. */
        curl_easy_setopt(easy, CURLOPT_PROXY, "");
        curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    }

    ev_timer_init(&x->deadline, xfer_deadline_cb, 0., 0.);
    x->deadline.data = x;
    if (req->first_byte_timeout_ms > 0) {
        ev_timer_set(&x->deadline, (double)req->first_byte_timeout_ms / 1000.0, 0.);
        ev_timer_start(u->loop, &x->deadline);
    }
    x->total_s = req->total_timeout_ms > 0 ? (double)req->total_timeout_ms / 1000.0 : 0;
    ev_timer_init(&x->total, xfer_total_cb, x->total_s, 0.);
    x->total.data = x;
    if (x->total_s > 0)
        ev_timer_start(u->loop, &x->total);
    if (curl_multi_add_handle(u->multi, easy) != CURLM_OK) {
        xfer_release(x);
        return NULL;
    }
    u->pending = true;
    return x;
}

bool upstream_flush(struct upstream *u)
{
    if (!u->pending)
        return false;
    u->pending = false;
    upstream_event(u, CURL_SOCKET_TIMEOUT, 0);
    return true;
}

void upstream_cancel(struct upstream_xfer *x)
{
    if (x)
        xfer_release(x);
}

void upstream_resume(struct upstream_xfer *x)
{
    if (!x->paused)
        return;
    x->paused = false;
    if (x->idle_s > 0) {
        x->deadline.repeat = x->idle_s;
        ev_timer_again(x->u->loop, &x->deadline);
    }
    curl_easy_pause(x->easy, CURLPAUSE_CONT);
}

long upstream_status(struct upstream_xfer *x)
{
    long status = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &status);
    return status;
}

const char *upstream_content_type(struct upstream_xfer *x)
{
    char *ct = NULL;
    curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ct);
    return ct;
}

int upstream_header(struct upstream_xfer *x, const char *name, char *out, size_t n)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(x->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
        return -1;
    snprintf(out, n, "%s", h->value);
    return 0;
}

/* floor: the least a proxy built on the gateway's libraries can do, for `make bench`.
 *
 * The gateway's engine with everything of the gateway taken out: one thread per worker, each
 * with a libev loop driving libmicrohttpd (external epoll, SO_REUSEPORT listener, suspend and
 * resume, the gateway's flags) and a curl multi (socket API, keep-alive pool, recycled easy
 * handles). A request's body is posted to the one upstream URL and the upstream's status and
 * body are returned; no parsing, routing, auth, metrics or logs. Its throughput is the ceiling
 * of any proxy built on these libraries this way, so the bench can show how much of the gap
 * to nginx is the gateway's and how much the libraries'.
 *
 *   floor PORT UPSTREAM_URL [WORKERS]
 */
#include <curl/curl.h>
#include <ev.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FLOOR_BODY_MAX (1u << 20)

static const char *upstream_url;
static struct curl_slist *upstream_headers;

struct floor_worker {
    struct ev_loop *loop;
    struct MHD_Daemon *mhd;
    ev_io mhd_io;
    ev_timer mhd_timer;
    ev_prepare prepare;
    bool mhd_dirty;
    CURLM *multi;
    ev_timer curl_timer;
    bool curl_pending;
    CURL *free_easy[256];
    unsigned n_free;
    int listen_fd;
};

struct floor_req {
    struct floor_worker *w;
    struct MHD_Connection *conn;
    CURL *easy;
    char *in, *out;
    size_t in_len, out_len;
    long status;
    bool done, failed;
};

struct floor_sock {
    ev_io io;
    struct floor_worker *w;
    curl_socket_t fd;
};

/* ---- curl on libev ------------------------------------------------------------------------ */

static void curl_check_done(struct floor_worker *w)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(w->multi, &left))) {
        if (m->msg != CURLMSG_DONE)
            continue;
        struct floor_req *r;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        r->failed = m->data.result != CURLE_OK;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->status);
        curl_multi_remove_handle(w->multi, r->easy);
        if (w->n_free < sizeof w->free_easy / sizeof w->free_easy[0])
            w->free_easy[w->n_free++] = r->easy;
        else
            curl_easy_cleanup(r->easy);
        r->easy = NULL;
        r->done = true;
        MHD_resume_connection(r->conn);
        w->mhd_dirty = true;
    }
}

static void curl_action(struct floor_worker *w, curl_socket_t fd, int bits)
{
    int running;
    curl_multi_socket_action(w->multi, fd, bits, &running);
    curl_check_done(w);
}

static void curl_io_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)loop;
    struct floor_sock *s = io->data;
    curl_action(s->w, s->fd,
                (revents & EV_READ ? CURL_CSELECT_IN : 0) |
                    (revents & EV_WRITE ? CURL_CSELECT_OUT : 0));
}

static void curl_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    curl_action(t->data, CURL_SOCKET_TIMEOUT, 0);
}

static int curl_socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *sockp)
{
    (void)easy;
    struct floor_worker *w = userp;
    struct floor_sock *s = sockp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            ev_io_stop(w->loop, &s->io);
            curl_multi_assign(w->multi, fd, NULL);
            free(s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof *s);
        if (!s)
            return -1;
        s->w = w;
        s->fd = fd;
        curl_multi_assign(w->multi, fd, s);
    } else {
        ev_io_stop(w->loop, &s->io);
    }
    ev_io_init(&s->io, curl_io_cb, fd,
               (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
    s->io.data = s;
    ev_io_start(w->loop, &s->io);
    return 0;
}

static int curl_timer_fn(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct floor_worker *w = userp;
    ev_timer_stop(w->loop, &w->curl_timer);
    if (timeout_ms >= 0) {
        /* As routing/upstream.c: a 0 timeout runs on the next turn; new transfers are driven
         * from the prepare hook (curl_pending, set when one starts). */
        ev_timer_set(&w->curl_timer, (double)timeout_ms / 1000.0, 0.);
        ev_timer_start(w->loop, &w->curl_timer);
    }
    return 0;
}

static size_t curl_write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct floor_req *r = userp;
    size_t n = size * nmemb;
    if (r->out_len + n > FLOOR_BODY_MAX)
        return 0;
    char *p = realloc(r->out, r->out_len + n);
    if (!p)
        return 0;
    memcpy(p + r->out_len, data, n);
    r->out = p;
    r->out_len += n;
    return n;
}

static bool upstream_start(struct floor_worker *w, struct floor_req *r)
{
    CURL *e = w->n_free ? w->free_easy[--w->n_free] : curl_easy_init();
    if (!e)
        return false;
    r->easy = e;
    curl_easy_setopt(e, CURLOPT_URL, upstream_url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, upstream_headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->in ? r->in : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->in_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, curl_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    return curl_multi_add_handle(w->multi, e) == CURLM_OK;
}

/* ---- MHD on libev ------------------------------------------------------------------------- */

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **con_cls)
{
    (void)url;
    (void)method;
    (void)version;
    struct floor_worker *w = cls;
    struct floor_req *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        r->w = w;
        r->conn = conn;
        *con_cls = r;
        return MHD_YES;
    }
    if (*upload_size) {
        if (r->in_len + *upload_size > FLOOR_BODY_MAX)
            return MHD_NO;
        char *p = realloc(r->in, r->in_len + *upload_size);
        if (!p)
            return MHD_NO;
        memcpy(p + r->in_len, upload, *upload_size);
        r->in = p;
        r->in_len += *upload_size;
        *upload_size = 0;
        return MHD_YES;
    }
    if (!r->done) {
        if (!upstream_start(w, r))
            return MHD_NO;
        w->curl_pending = true;
        MHD_suspend_connection(conn);
        return MHD_YES;
    }
    struct MHD_Response *resp;
    if (r->failed) {
        resp = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        r->status = MHD_HTTP_BAD_GATEWAY;
    } else {
        resp = MHD_create_response_from_buffer(r->out_len, r->out, MHD_RESPMEM_MUST_FREE);
        r->out = NULL;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    enum MHD_Result ok = MHD_queue_response(conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static void completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    struct floor_req *r = *con_cls;
    if (!r)
        return;
    free(r->in);
    free(r->out);
    free(r);
    *con_cls = NULL;
}

static void mhd_run(struct floor_worker *w)
{
    w->mhd_dirty = false;
    MHD_UNSIGNED_LONG_LONG timeout = 0;
    bool has_timeout = false;
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

static void prepare_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
    (void)loop;
    (void)revents;
    struct floor_worker *w = p->data;
    for (int i = 0; i < 4; i++) {
        bool did = false;
        if (w->mhd_dirty) {
            mhd_run(w);
            did = true;
        }
        if (w->curl_pending) {
            w->curl_pending = false;
            curl_action(w, CURL_SOCKET_TIMEOUT, 0);
            did = true;
        }
        if (!did)
            break;
    }
}

static int listen_on(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 4096)) {
        perror("floor: listen");
        exit(1);
    }
    return fd;
}

static void *worker_main(void *arg)
{
    struct floor_worker *w = arg;
    ev_run(w->loop, 0);
    return NULL;
}

static void worker_init(struct floor_worker *w, int port)
{
    w->loop = ev_loop_new(EVBACKEND_EPOLL);
    w->listen_fd = listen_on(port);
    w->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO, 0, NULL,
                              NULL, handle, w, MHD_OPTION_LISTEN_SOCKET, w->listen_fd,
                              MHD_OPTION_CONNECTION_LIMIT, 10000u, MHD_OPTION_CONNECTION_TIMEOUT,
                              60u, MHD_OPTION_NOTIFY_COMPLETED, completed, w, MHD_OPTION_END);
    const union MHD_DaemonInfo *info =
        w->mhd ? MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        fprintf(stderr, "floor: cannot start the HTTP daemon\n");
        exit(1);
    }
    ev_io_init(&w->mhd_io, mhd_io_cb, info->epoll_fd, EV_READ);
    w->mhd_io.data = w;
    ev_io_start(w->loop, &w->mhd_io);
    ev_timer_init(&w->mhd_timer, mhd_timer_cb, 0., 0.);
    w->mhd_timer.data = w;
    ev_prepare_init(&w->prepare, prepare_cb);
    w->prepare.data = w;
    ev_prepare_start(w->loop, &w->prepare);
    w->multi = curl_multi_init();
    ev_timer_init(&w->curl_timer, curl_timer_cb, 0., 0.);
    w->curl_timer.data = w;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, curl_timer_fn);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 4096L);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: floor PORT UPSTREAM_URL [WORKERS]\n");
        return 2;
    }
    int port = atoi(argv[1]);
    upstream_url = argv[2];
    unsigned n = argc > 3 ? (unsigned)atoi(argv[3]) : 2;
    if (n < 1 || n > 64)
        n = 2;
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    upstream_headers = curl_slist_append(NULL, "Content-Type: application/json");
    upstream_headers = curl_slist_append(upstream_headers, "Expect:");
    struct floor_worker *ws = calloc(n, sizeof *ws);
    pthread_t *th = calloc(n, sizeof *th);
    for (unsigned i = 0; i < n; i++)
        worker_init(&ws[i], port);
    for (unsigned i = 0; i < n; i++)
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    for (unsigned i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    return 0;
}

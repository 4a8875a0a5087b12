/* floor: the least a proxy built on the gateway's libraries can do, for `make bench`.
 *
 * The gateway's engine with everything of the gateway taken out: one thread per worker, each
 * with a libev loop driving libmicrohttpd (net/httpd.c: external epoll, suspend and resume,
 * the gateway's flags) on an SO_REUSEPORT listener (base/listen.c), and a curl multi
 * (net/upstream.c: socket API, keep-alive pool, recycled easy handles). These are the
 * gateway's own files, linked, not copies. A request's body is posted to the one upstream URL
 * and the upstream's status and body are returned; no parsing, routing, auth, metrics or
 * logs. Its throughput is the ceiling of any proxy built on these libraries this way, so the
 * bench can show how much of the gap to nginx is the gateway's and how much the libraries'.
 *
 * With "stream" as its fourth argument it relays the upstream's body as it arrives instead
 * (bench/streams.sh): the answer is queued at the first bytes as a chunked response whose
 * reader hands over what came and, when nothing has, suspends the connection until the next
 * bytes resume it, as the gateway relays a token stream, with nothing parsed.
 *
 *   floor PORT UPSTREAM_URL [WORKERS] [stream]
 */
#include "base/error.h"
#include "base/listen.h"
#include "net/httpd.h"
#include "net/upstream.h"

#include <curl/curl.h>
#include <ev.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FLOOR_BODY_MAX (1u << 20)

static const char *upstream_url;
static struct curl_slist *upstream_headers;
static bool stream_mode;

struct floor_worker {
    struct ev_loop *loop;
    struct upstream *upstream;
    struct httpd httpd;
};

struct floor_req {
    struct floor_worker *w;
    struct MHD_Connection *conn;
    struct upstream_xfer *xfer; /* while the upstream answers */
    char *in, *out;
    size_t in_len, out_len;
    size_t out_off; /* stream mode: bytes of out already handed to MHD */
    long status;
    bool done, failed;
    bool suspended; /* stream mode: waiting for the upstream's next bytes */
    bool queued;    /* stream mode: the chunked response is queued */
};

/* Stream mode: bytes or the end came while the connection waits for them. */
static void floor_wake(struct floor_req *r)
{
    if (!r->suspended)
        return;
    r->suspended = false;
    MHD_resume_connection(r->conn);
    httpd_kick(&r->w->httpd);
}

/* ---- the upstream transfer -------------------------------------------------------------- */

static int on_data(void *ctx, const char *data, size_t len)
{
    struct floor_req *r = ctx;
    if (r->out_len + len > FLOOR_BODY_MAX)
        return TG_ERR_BAD_BACKEND_RESPONSE;
    char *p = realloc(r->out, r->out_len + len);
    if (!p)
        return TG_ERR_NOMEM;
    memcpy(p + r->out_len, data, len);
    r->out = p;
    r->out_len += len;
    if (stream_mode)
        floor_wake(r);
    return 0;
}

static void on_done(void *ctx, int result, long status, const char *detail)
{
    (void)detail;
    struct floor_req *r = ctx;
    r->xfer = NULL;
    r->failed = result != 0;
    r->status = status;
    r->done = true;
    if (stream_mode) {
        floor_wake(r);
        return;
    }
    MHD_resume_connection(r->conn);
    httpd_kick(&r->w->httpd);
}

static const struct upstream_ops floor_ops = {.on_data = on_data, .on_done = on_done};

/* ---- the client's request --------------------------------------------------------------- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    (void)pos;
    struct floor_req *r = cls;
    size_t avail = r->out_len - r->out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(dst, r->out + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out_len)
            r->out_off = r->out_len = 0;
        return (ssize_t)n;
    }
    if (r->done)
        return r->failed ? MHD_CONTENT_READER_END_WITH_ERROR : MHD_CONTENT_READER_END_OF_STREAM;
    r->suspended = true;
    MHD_suspend_connection(r->conn);
    return 0;
}

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
    if (!r->done && !r->xfer) {
        struct upstream_req req = {
            .url = upstream_url,
            .body = r->in ? r->in : "",
            .body_len = r->in_len,
            .headers = upstream_headers,
            .total_timeout_ms = 30000,
        };
        r->xfer = upstream_start(w->upstream, &req, &floor_ops, r);
        if (!r->xfer)
            return MHD_NO;
        r->suspended = stream_mode;
        MHD_suspend_connection(conn);
        return MHD_YES;
    }
    if (stream_mode && r->queued)
        return MHD_YES;
    struct MHD_Response *resp;
    if (stream_mode && !r->failed) {
        /* Resumed by the first bytes (or the end of a short answer): relay as they come. */
        /* The block is never used for a chunked body (read into the connection's buffer). */
        resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 1024, stream_reader, r, NULL);
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        r->queued = true;
        enum MHD_Result ok = MHD_queue_response(conn, 200, resp);
        MHD_destroy_response(resp);
        return ok;
    }
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
    upstream_cancel(r->xfer);
    free(r->in);
    free(r->out);
    free(r);
    *con_cls = NULL;
}

/* ---- workers ---------------------------------------------------------------------------- */

static void *worker_main(void *arg)
{
    struct floor_worker *w = arg;
    httpd_run(&w->httpd);
    ev_run(w->loop, 0);
    return NULL;
}

static void worker_init(struct floor_worker *w, const struct listen_addr *addr)
{
    char err[512];
    int fd = listen_open(addr, -1, 4096, LISTEN_NONBLOCK | LISTEN_REUSEPORT, err, sizeof err);
    if (fd == -1) {
        fprintf(stderr, "floor: %s\n", err);
        exit(1);
    }
    w->loop = ev_loop_new(EVBACKEND_EPOLL);
    w->upstream = w->loop ? upstream_new(w->loop, 0) : NULL;
    struct httpd_config hc = {
        .listen_fd = fd,
        .connection_limit = 10000,
        .connection_memory = 32 * 1024, /* MHD's default */
        .idle_timeout_s = 60,
        .on_request = handle,
        .on_completed = completed,
        .ctx = w,
    };
    if (!w->upstream || httpd_start(&w->httpd, w->loop, w->upstream, &hc)) {
        fprintf(stderr, "floor: cannot start the HTTP daemon\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: floor PORT UPSTREAM_URL [WORKERS]\n");
        return 2;
    }
    char listen_text[64], err[512];
    snprintf(listen_text, sizeof listen_text, "127.0.0.1:%s", argv[1]);
    struct listen_addr addr;
    if (listen_parse(&addr, "floor", listen_text, err, sizeof err)) {
        fprintf(stderr, "floor: %s\n", err);
        return 2;
    }
    upstream_url = argv[2];
    unsigned n = argc > 3 ? (unsigned)atoi(argv[3]) : 2;
    stream_mode = argc > 4 && !strcmp(argv[4], "stream");
    if (n < 1 || n > 64)
        n = 2;
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    upstream_headers = curl_slist_append(NULL, "Content-Type: application/json");
    upstream_headers = curl_slist_append(upstream_headers, "Expect:");
    struct floor_worker *ws = calloc(n, sizeof *ws);
    pthread_t *th = calloc(n, sizeof *th);
    for (unsigned i = 0; i < n; i++)
        worker_init(&ws[i], &addr);
    for (unsigned i = 0; i < n; i++)
        pthread_create(&th[i], NULL, worker_main, &ws[i]);
    for (unsigned i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    return 0;
}

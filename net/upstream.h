/* Upstream HTTP transfers on a worker's event loop: one curl multi handle per worker driven
 * by libev through curl's socket API, with a keep-alive connection pool to the backends and a
 * recycled pool of easy handles.
 *
 * Not thread-safe: an upstream and its transfers belong to the worker that created them.
 * Callbacks run on that worker's loop. on_data may be called from inside curl (so it must not
 * call upstream_cancel); on_done is called exactly once per transfer, from the loop, unless
 * the transfer was cancelled first, and the transfer is gone when it returns. */
#ifndef TOLLGATE_UPSTREAM_H
#define TOLLGATE_UPSTREAM_H

#include <curl/curl.h>
#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

struct upstream;
struct upstream_xfer;

#define UPSTREAM_PAUSE 1 /* on_data: do not take these bytes now; they come again on resume */

struct upstream_ops {
    /* Body bytes arrived; the status is known (upstream_status()). Return 0 when taken,
     * UPSTREAM_PAUSE to be handed them again after upstream_resume(), or a negative
     * tg_error to abort the transfer (on_done then gets that error). */
    int (*on_data)(void *ctx, const char *data, size_t len);
    /* The transfer ended: 0 when the whole answer arrived, else a negative tg_error with a
     * human-readable detail. `status` is the HTTP status (0 when none arrived). */
    void (*on_done)(void *ctx, int result, long status, const char *detail);
};

struct upstream_req {
    const char *url;
    const char *body;   /* must stay valid until on_done or cancel */
    const char *method; /* NULL: POST with a body, GET without; else this method */
    size_t body_len;
    /* Instead of `body`: a POST of body_len bytes pulled through read (CURLOPT_READFUNCTION's
     * contract) and rewound through seek (CURLOPT_SEEKFUNCTION's) when curl sends it again;
     * for a body spooled to disk (base/spool.h). read_ctx must stay valid as `body` must. */
    size_t (*read)(char *buf, size_t size, size_t nitems, void *read_ctx);
    int (*seek)(void *read_ctx, curl_off_t offset, int origin);
    void *read_ctx;
    struct curl_slist *headers; /* shared, read-only; must outlive the transfer */
    const char *ca_file;        /* CA bundle for https, NULL = curl's default (the system's) */
    const char *request_id;     /* sent as x-request-id; NULL: no such header */
    long connect_timeout_ms;
    long first_byte_timeout_ms; /* until the first body byte */
    long idle_timeout_ms;       /* between body bytes */
    long total_timeout_ms;      /* the whole transfer, also while paused (UPSTREAM_PAUSE) */
};

/* max_per_host: connections to one backend this upstream may hold (0 = no limit); further
 * transfers wait for a free one, so a burst of callers never floods a node with connections. */
struct upstream *upstream_new(struct ev_loop *loop, unsigned max_per_host);
/* Sizes the pools to the traffic: the recycled easy handles and the keep-alive connections
 * beyond what the busiest moment since the last call needed (with headroom) are let go, so
 * that a burst's handles and connections do not stay for good. Cheap; for a low-frequency
 * timer (gateway/server.c: every few seconds). Returns the handles freed. */
size_t upstream_shrink(struct upstream *u);
/* Cancels what is still running (no callbacks) and frees everything. */
void upstream_free(struct upstream *u);

/* Starts a POST (or a GET when body is NULL). NULL on OOM. */
struct upstream_xfer *upstream_start(struct upstream *u, const struct upstream_req *req,
                                     const struct upstream_ops *ops, void *ctx);
/* Drives transfers started since the last call, at once rather than on curl's zero timeout
 * (which would cost the loop another turn). Call it from the loop's prepare hook, never
 * from inside an upstream callback. Returns true when it did work. */
bool upstream_flush(struct upstream *u);
/* Stops a transfer at once; no callback follows. */
void upstream_cancel(struct upstream_xfer *x);
/* Lets a transfer whose on_data answered UPSTREAM_PAUSE go on. May call on_data at once. */
void upstream_resume(struct upstream_xfer *x);

long upstream_status(struct upstream_xfer *x);
/* The response Content-Type, or NULL. Valid until the transfer ends. */
const char *upstream_content_type(struct upstream_xfer *x);
/* A response header value (e.g. "retry-after"), copied into out; 0 when found. */
int upstream_header(struct upstream_xfer *x, const char *name, char *out, size_t n);

#endif

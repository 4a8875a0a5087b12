#include "trace/exporter.h"

#include "base/log.h"
#include "trace/otlp.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef TOLLGATE_VERSION
#define TOLLGATE_VERSION "0.0.0"
#endif

/* How often the sender looks at the rings: every TRACE_POLL_MS while a ring was found a
 * quarter full or more (a worker's ring then takes 2048 / 0.025 s = 80,000 spans a second
 * before it drops one), and less often, up to TRACE_POLL_MAX_MS, while traffic is light, so
 * that a batch carries more than a few spans (2048 / 0.2 s: a burst of 10,000 spans a second
 * from idle fits). */
#define TRACE_POLL_MS 25
#define TRACE_POLL_MAX_MS 200
/* After a failed export the sender waits this long (doubling up to the max) before the next:
 * meanwhile the rings fill and the workers drop, which costs them nothing. */
#define TRACE_BACKOFF_MS 1000
#define TRACE_BACKOFF_MAX_MS 8000
/* The final flush at shutdown waits at most this long for the collector. */
#define TRACE_FINAL_TIMEOUT_MS 2000
/* One request's body: TRACE_BATCH_MAX spans and the envelope. */
#define TRACE_BODY_MAX ((size_t)TRACE_BATCH_MAX * (TRACE_SPAN_MAX + 8) + 65536)

struct trace_slot {
    uint32_t len;
    uint8_t data[TRACE_SPAN_MAX];
};

struct trace_ring {
    _Atomic uint64_t head; /* written by the worker */
    uint64_t tail_seen;    /* the worker's last look at tail */
    char pad1[48];
    _Atomic uint64_t tail; /* written by the sender */
    char pad2[56];
    _Atomic uint64_t dropped;         /* written by the worker */
    const atomic_bool *down;          /* the exporter's: its last export failed */
    struct trace_slot *_Atomic slots; /* allocated by the worker on its first span */
    char pad3[48];
};

/* A copy of the settings, shared by the exporter and a sender's batch in flight. */
struct trace_conf {
    atomic_int refs;
    char *endpoint;
    struct curl_slist *headers;
    struct buf resource; /* the Resource message's body */
    long timeout_ms;
};

struct trace_exporter {
    struct trace_ring *rings;
    unsigned n_rings;
    pthread_t thread;
    pthread_mutex_t lock; /* guards conf and stop */
    pthread_cond_t wake;
    struct trace_conf *conf;
    bool stop;
    /* Set with stop: an export in flight gives up (a hung collector must not hold the
     * shutdown), except the final flush's, which has its own short timeout. */
    atomic_bool stopping;
    bool final; /* the sender's own: the final flush runs */
    _Atomic uint64_t exported, failed, discarded, exports, export_failures;
    /* The last export failed: workers queue a span only into an empty ring (the sender's
     * next probe), and drop the rest before encoding them. Written by the sender. */
    atomic_bool down;
    struct buf body;
    struct otlp_span_ref batch[TRACE_BATCH_MAX];
    uint64_t taken[256]; /* per ring: slots in the batch (rings past 256 wait their turn) */
    uint64_t fullest;    /* the most spans one ring held at the first look of a round */
};

static void trace_conf_unref(struct trace_conf *c)
{
    if (!c || atomic_fetch_sub(&c->refs, 1) != 1)
        return;
    free(c->endpoint);
    curl_slist_free_all(c->headers);
    buf_free(&c->resource);
    free(c);
}

static struct trace_conf *trace_conf_new(const struct trace_settings *s)
{
    struct trace_conf *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    atomic_init(&c->refs, 1);
    buf_init(&c->resource, 1u << 20);
    c->timeout_ms = s->timeout_ms > 0 ? s->timeout_ms : 10000;
    if (!s->endpoint)
        return c;
    c->endpoint = strdup(s->endpoint);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/x-protobuf");
    /* No 100-continue round trip for a large batch. */
    struct curl_slist *h2 = h ? curl_slist_append(h, "Expect:") : NULL;
    bool ok = c->endpoint && h2;
    c->headers = h;
    for (size_t i = 0; ok && i < s->n_headers; i++)
        ok = curl_slist_append(c->headers, s->headers[i]) != NULL;
    if (!ok || otlp_encode_resource(&c->resource, s->resource, s->n_resource)) {
        trace_conf_unref(c);
        return NULL;
    }
    return c;
}

static void trace_deadline(struct timespec *ts, long ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static size_t trace_discard_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    (void)data;
    (void)userp;
    return size * nmemb; /* an ExportTraceServiceResponse: nothing we act on */
}

static int trace_progress_cb(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                             curl_off_t ulnow)
{
    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    const struct trace_exporter *e = userp;
    return atomic_load_explicit(&e->stopping, memory_order_relaxed) && !e->final;
}

/* Posts the body: true when the collector took it (2xx). */
static bool trace_post(CURL *easy, const struct trace_conf *c, const struct buf *body,
                       long timeout_ms, char *why, size_t why_len)
{
    curl_easy_setopt(easy, CURLOPT_URL, c->endpoint);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, body->data);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
    CURLcode rc = curl_easy_perform(easy);
    long status = 0;
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (rc != CURLE_OK)
        snprintf(why, why_len, "%s", curl_easy_strerror(rc));
    else if (status / 100 != 2)
        snprintf(why, why_len, "HTTP %ld", status);
    return rc == CURLE_OK && status / 100 == 2;
}

/* Takes up to TRACE_BATCH_MAX waiting spans from the rings into e->batch; their slots stay
 * the sender's until trace_release(). */
static size_t trace_take(struct trace_exporter *e)
{
    size_t n = 0;
    unsigned rings = e->n_rings < 256 ? e->n_rings : 256;
    for (unsigned i = 0; i < rings; i++) {
        struct trace_ring *r = &e->rings[i];
        uint64_t tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
        uint64_t head = atomic_load_explicit(&r->head, memory_order_acquire);
        e->taken[i] = 0;
        if (head - tail > e->fullest)
            e->fullest = head - tail;
        if (head == tail)
            continue;
        struct trace_slot *slots = atomic_load_explicit(&r->slots, memory_order_acquire);
        for (; tail != head && n < TRACE_BATCH_MAX; tail++, n++, e->taken[i]++) {
            const struct trace_slot *s = &slots[tail % TRACE_RING_SLOTS];
            e->batch[n].data = s->data;
            e->batch[n].len = s->len;
        }
    }
    return n;
}

/* Hands the batch's slots back to the workers. */
static void trace_release(struct trace_exporter *e)
{
    unsigned rings = e->n_rings < 256 ? e->n_rings : 256;
    for (unsigned i = 0; i < rings; i++)
        if (e->taken[i])
            atomic_fetch_add_explicit(&e->rings[i].tail, e->taken[i], memory_order_release);
}

static void trace_count(struct trace_exporter *e, size_t spans, bool ok)
{
    atomic_fetch_add_explicit(ok ? &e->exported : &e->failed, spans, memory_order_relaxed);
    atomic_fetch_add_explicit(ok ? &e->exports : &e->export_failures, 1, memory_order_relaxed);
}

/* Encodes spans into e->body and posts it; counts the outcome. */
static bool trace_send(struct trace_exporter *e, CURL *easy, const struct trace_conf *c,
                       const struct otlp_span_ref *spans, size_t n, bool release_first,
                       long timeout_ms)
{
    buf_reset(&e->body);
    int rc = otlp_encode_request(&e->body, &c->resource, "tollgate", TOLLGATE_VERSION, spans, n);
    if (release_first)
        trace_release(e); /* the spans are in the body now: the workers get their slots back */
    char why[CURL_ERROR_SIZE] = "cannot encode the batch";
    bool ok = !rc && trace_post(easy, c, &e->body, timeout_ms, why, sizeof why);
    trace_count(e, n, ok);
    if (!ok && log_enabled(LOG_DEBUG)) {
        char esc[2 * CURL_ERROR_SIZE];
        log_event(LOG_DEBUG, "trace_export_failed", "\"spans\":%zu,\"detail\":\"%s\"", n,
                  log_escape(esc, sizeof esc, why));
    }
    return ok;
}

/* Sends what the rings hold, batch by batch. After a failed export (`probe`) one span goes
 * first: while the collector is away the rest of the batch is counted as failed without
 * being encoded. False when an export failed. */
static bool trace_export_all(struct trace_exporter *e, CURL *easy, const struct trace_conf *c,
                             long timeout_ms, bool probe)
{
    size_t n;
    while ((n = trace_take(e)) > 0) {
        if (!c || !c->endpoint) { /* tracing was turned off while these waited */
            trace_release(e);
            atomic_fetch_add_explicit(&e->discarded, n, memory_order_relaxed);
            continue;
        }
        bool ok;
        if (probe && n > 1) {
            ok = trace_send(e, easy, c, e->batch, 1, false, timeout_ms);
            if (ok) {
                ok = trace_send(e, easy, c, e->batch + 1, n - 1, true, timeout_ms);
            } else {
                trace_release(e);
                atomic_fetch_add_explicit(&e->failed, n - 1, memory_order_relaxed);
            }
        } else {
            ok = trace_send(e, easy, c, e->batch, n, true, timeout_ms);
        }
        if (!ok)
            return false;
        probe = false;
    }
    return true;
}

static void *trace_sender_main(void *arg)
{
    struct trace_exporter *e = arg;
    CURL *easy = curl_easy_init();
    if (easy) {
        curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, trace_discard_cb);
        curl_easy_setopt(easy, CURLOPT_PROXY, "");
        curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
        curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, trace_progress_cb);
        curl_easy_setopt(easy, CURLOPT_XFERINFODATA, e);
        curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
    }
    long wait_ms = TRACE_POLL_MS, backoff_ms = 0;
    pthread_mutex_lock(&e->lock);
    for (;;) {
        struct timespec until;
        trace_deadline(&until, wait_ms);
        while (!e->stop && pthread_cond_timedwait(&e->wake, &e->lock, &until) == 0)
            ; /* woken for nothing but the stop */
        struct trace_conf *c = e->conf;
        if (c)
            atomic_fetch_add(&c->refs, 1);
        bool stop = e->stop;
        pthread_mutex_unlock(&e->lock);
        long timeout = c ? c->timeout_ms : 0;
        e->final = stop;
        if (stop && timeout > TRACE_FINAL_TIMEOUT_MS)
            timeout = TRACE_FINAL_TIMEOUT_MS;
        e->fullest = 0;
        bool ok = easy ? trace_export_all(e, easy, c, timeout, backoff_ms > 0) : false;
        atomic_store_explicit(&e->down, !ok, memory_order_relaxed);
        trace_conf_unref(c);
        if (stop)
            break;
        if (ok) {
            backoff_ms = 0;
            if (e->fullest >= TRACE_RING_SLOTS / 4)
                wait_ms = TRACE_POLL_MS;
            else if ((wait_ms *= 2) > TRACE_POLL_MAX_MS)
                wait_ms = TRACE_POLL_MAX_MS;
        } else {
            backoff_ms = backoff_ms ? backoff_ms * 2 : TRACE_BACKOFF_MS;
            if (backoff_ms > TRACE_BACKOFF_MAX_MS)
                backoff_ms = TRACE_BACKOFF_MAX_MS;
            wait_ms = backoff_ms;
        }
        pthread_mutex_lock(&e->lock);
    }
    if (easy)
        curl_easy_cleanup(easy);
    return NULL;
}

struct trace_exporter *trace_exporter_new(unsigned n_rings)
{
    struct trace_exporter *e = calloc(1, sizeof *e);
    if (!e)
        return NULL;
    e->n_rings = n_rings;
    e->rings = calloc(n_rings ? n_rings : 1, sizeof *e->rings);
    buf_init(&e->body, TRACE_BODY_MAX);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&e->wake, &attr);
    pthread_condattr_destroy(&attr);
    pthread_mutex_init(&e->lock, NULL);
    for (unsigned i = 0; e->rings && i < n_rings; i++)
        e->rings[i].down = &e->down;
    if (!e->rings || pthread_create(&e->thread, NULL, trace_sender_main, e)) {
        pthread_cond_destroy(&e->wake);
        pthread_mutex_destroy(&e->lock);
        free(e->rings);
        free(e);
        return NULL;
    }
    return e;
}

int trace_exporter_configure(struct trace_exporter *e, const struct trace_settings *s)
{
    struct trace_conf *c = trace_conf_new(s);
    if (!c)
        return -1;
    pthread_mutex_lock(&e->lock);
    struct trace_conf *old = e->conf;
    e->conf = c;
    pthread_mutex_unlock(&e->lock);
    trace_conf_unref(old);
    return 0;
}

void trace_exporter_free(struct trace_exporter *e)
{
    if (!e)
        return;
    atomic_store(&e->stopping, true);
    pthread_mutex_lock(&e->lock);
    e->stop = true;
    pthread_cond_signal(&e->wake);
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->thread, NULL);
    for (unsigned i = 0; i < e->n_rings; i++)
        free(atomic_load(&e->rings[i].slots));
    trace_conf_unref(e->conf);
    buf_free(&e->body);
    pthread_cond_destroy(&e->wake);
    pthread_mutex_destroy(&e->lock);
    free(e->rings);
    free(e);
}

struct trace_ring *trace_exporter_ring(struct trace_exporter *e, unsigned i)
{
    return e && i < e->n_rings ? &e->rings[i] : NULL;
}

uint8_t *trace_ring_reserve(struct trace_ring *r)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (atomic_load_explicit(r->down, memory_order_relaxed)) {
        /* The collector is away: one span waits for the sender's probe, the rest cost
         * nothing but the count. */
        r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head != r->tail_seen) {
            atomic_store_explicit(&r->dropped,
                                  atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            return NULL;
        }
    }
    if (head - r->tail_seen >= TRACE_RING_SLOTS) {
        r->tail_seen = atomic_load_explicit(&r->tail, memory_order_acquire);
        if (head - r->tail_seen >= TRACE_RING_SLOTS) {
            atomic_store_explicit(&r->dropped,
                                  atomic_load_explicit(&r->dropped, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            return NULL;
        }
    }
    struct trace_slot *slots = atomic_load_explicit(&r->slots, memory_order_relaxed);
    if (!slots) {
        /* Only pages the ring reaches become resident. */
        slots = malloc((size_t)TRACE_RING_SLOTS * sizeof *slots);
        if (!slots)
            return NULL;
        atomic_store_explicit(&r->slots, slots, memory_order_release);
    }
    return slots[head % TRACE_RING_SLOTS].data;
}

void trace_ring_commit(struct trace_ring *r, size_t len)
{
    uint64_t head = atomic_load_explicit(&r->head, memory_order_relaxed);
    struct trace_slot *slots = atomic_load_explicit(&r->slots, memory_order_relaxed);
    slots[head % TRACE_RING_SLOTS].len = (uint32_t)len;
    atomic_store_explicit(&r->head, head + 1, memory_order_release);
}

int trace_exporter_render(struct trace_exporter *e, struct buf *out)
{
    if (!e)
        return 0;
    uint64_t dropped = atomic_load_explicit(&e->discarded, memory_order_relaxed);
    for (unsigned i = 0; i < e->n_rings; i++)
        dropped += atomic_load_explicit(&e->rings[i].dropped, memory_order_relaxed);
    return buf_printf(
        out,
        "# HELP tollgate_trace_spans_exported_total Spans the OTLP collector accepted.\n"
        "# TYPE tollgate_trace_spans_exported_total counter\n"
        "tollgate_trace_spans_exported_total %llu\n"
        "# HELP tollgate_trace_spans_failed_total Spans in exports that failed (collector "
        "unreachable, too slow, or refusing).\n"
        "# TYPE tollgate_trace_spans_failed_total counter\n"
        "tollgate_trace_spans_failed_total %llu\n"
        "# HELP tollgate_trace_spans_dropped_total Spans never sent: a worker's queue was full "
        "(the collector was slow or away), or tracing was turned off while they waited.\n"
        "# TYPE tollgate_trace_spans_dropped_total counter\n"
        "tollgate_trace_spans_dropped_total %llu\n"
        "# HELP tollgate_trace_exports_total Export requests sent to the collector, by result.\n"
        "# TYPE tollgate_trace_exports_total counter\n"
        "tollgate_trace_exports_total{result=\"ok\"} %llu\n"
        "tollgate_trace_exports_total{result=\"failed\"} %llu\n",
        (unsigned long long)atomic_load_explicit(&e->exported, memory_order_relaxed),
        (unsigned long long)atomic_load_explicit(&e->failed, memory_order_relaxed),
        (unsigned long long)dropped,
        (unsigned long long)atomic_load_explicit(&e->exports, memory_order_relaxed),
        (unsigned long long)atomic_load_explicit(&e->export_failures, memory_order_relaxed));
}

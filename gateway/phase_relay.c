/* The answer on its way to the caller: a whole answer collected and scanned as it arrives, or
 * a stream relayed event by event (usage chunks rewritten or dropped, a capture for the cache,
 * the upstream paused above a high-water mark and resumed as the caller reads), ended
 * honestly with an SSE error event when it breaks. Owns r->relay. */
#include "base/clock.h"
#include "base/usd.h"
#include "gateway/pipeline.h"
#include "net/upstream.h"
#include "openai/answer_event.h"
#include "openai/event_scan.h"
#include "routing/backend.h"
#include "routing/backoff.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

/* A stream's socket send buffer (the kernel doubles it): a slow reader's backlog in the
 * kernel stays about the size of the relay's own (REQUEST_STREAM_HIGH_WATER). */
#define REQUEST_STREAM_SNDBUF (128 << 10)
/* The stream response's block (see request_queue_stream). */
#define REQUEST_STREAM_BLOCK 1024

/* ---- upstream callbacks --------------------------------------------------------------------- */

/* The usage chunk for a caller who asked for one when the node sent none. */
static int request_emit_estimated_usage(struct request *r)
{
    request_settle_usage(r);
    json_t *usage = json_object();
    request_write_usage(r, usage, true);
    json_t *chunk = json_pack("{s:s, s:s, s:[], s:o}", "id", r->id, "object", r->ep->chunk_object,
                              "choices", "usage", usage);
    if (!chunk)
        return TG_ERR_NOMEM;
    int rc = request_emit_usage_event(r, chunk);
    json_decref(chunk);
    return rc;
}

/* [DONE]: a streamed miss captured whole is stored like a non-streamed one. */
static void request_capture_done(struct request *r)
{
    json_t *usage = json_object();
    if (usage)
        request_write_usage(r, usage, false);
    size_t len = 0;
    char *text = cache_capture_finish(&r->cache.capture, usage, &len);
    cache_capture_free(&r->cache.capture);
    r->cache.capturing = false;
    if (text)
        request_cache_store(r, text, len);
    else
        request_flight_land(r, NULL, 0, 0);
    free(text);
}

/* A node's usage object larger than this is replaced whole, not parsed and edited. */
#define RELAY_USAGE_MAX (16u << 10)

/* The settled usage as JSON text: the node's usage object (bytes [start, end) of doc) with
 * the settled numbers written over its own, so its other fields (token details) stay when it
 * is of a sane size and readable; else a fresh object. NULL on OOM. */
static char *request_settled_usage(struct request *r, const char *doc, size_t start, size_t end,
                                   bool with_cost)
{
    json_t *usage = NULL;
    if (end - start <= RELAY_USAGE_MAX)
        usage = json_loadb(doc + start, end - start, 0, NULL);
    if (!json_is_object(usage)) {
        json_decref(usage);
        usage = json_object();
    }
    if (!usage)
        return NULL;
    request_write_usage(r, usage, with_cost);
    char *text = usd_json_dumps(usage, JSON_COMPACT);
    json_decref(usage);
    return text;
}

/* Bytes [start, end) of text (n bytes, malloc'd; taken) replaced by `with`: the result,
 * NUL-terminated, in *len bytes; NULL on OOM. The rest is never parsed: a hostile answer of
 * tens of MiB in small tokens would cost hundreds of MiB as a tree. */
static char *request_splice(char *text, size_t n, size_t start, size_t end, const char *with,
                            size_t *len)
{
    size_t wlen = strlen(with), out = n - (end - start) + wlen;
    if (out > n || !text) {
        char *grown = realloc(text, out + 1);
        if (!grown) {
            free(text);
            return NULL;
        }
        text = grown;
    }
    memmove(text + start + wlen, text + end, n - end);
    memcpy(text + start, with, wlen);
    text[out] = '\0';
    *len = out;
    return text;
}

/* A stream chunk with its usage object replaced by `with` (settled numbers, or null), as an
 * SSE event: from the bytes, so numbers jansson cannot hold are no failure. */
static int request_emit_spliced(struct request *r, const struct sse_event *ev,
                                const struct answer_scan *sc, const char *with)
{
    char *copy = malloc(ev->data_len + 1);
    if (!copy)
        return TG_ERR_NOMEM;
    memcpy(copy, ev->data, ev->data_len);
    size_t len;
    char *text = request_splice(copy, ev->data_len, sc->usage_start, sc->usage_end, with, &len);
    if (!text)
        return TG_ERR_NOMEM;
    for (size_t i = 0; i < len; i++)
        if (text[i] == '\n')
            text[i] = ' '; /* joined data lines: white space in JSON, an end of line in SSE */
    int rc = buf_append(&r->relay.out, "data: ", 6) || buf_append(&r->relay.out, text, len) ||
             buf_append(&r->relay.out, "\n\n", 2);
    free(text);
    return rc ? TG_ERR_NOMEM : 0;
}

/* An event is read by the single-pass scanner (openai/event_scan.h) when it can decide, which
 * is every well-formed object it does not find odd; else by yajl, in an arena of its own: its
 * block goes back to the thread's cache at once, so a long stream neither grows the request's
 * arena nor calls malloc. What the scan keeps by value (flags, offsets, ids) is read after;
 * nothing it allocated is. */
int request_scan_stream_event(struct request *r, const struct sse_event *ev, enum answer_kind kind,
                              struct answer_scan *out)
{
    if (event_scan(out, kind, ev->data, ev->data_len) == EVENT_SCAN_OK)
        return 0;
    struct arena event_arena = {0};
    if (answer_scan_init_kind(out, &event_arena, kind)) {
        arena_release(&event_arena);
        return TG_ERR_NOMEM;
    }
    bool ok = answer_scan_event(out, ev->data, ev->data_len) == 0 && out->object;
    answer_scan_free(out);
    arena_release(&event_arena);
    if (!ok) {
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "a stream event that is not JSON");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    return 0;
}

static int request_on_event(void *ctx, const struct sse_event *ev)
{
    struct request *r = ctx;
    if (r->ep->answer == ANSWER_KIND_RESPONSES)
        return request_responses_event(r, ev);
    if (r->relay.saw_done)
        return 0; /* nothing after [DONE] is relayed */
    if (!ev->has_data) {
        /* A comment (a keep-alive ping) is not an answer: before the first event nothing
         * reaches the caller, so a node that pings and dies is still failed over. */
        if (r->state == REQUEST_UPSTREAM && r->relay.out.len == r->relay.out_off)
            return 0;
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    if (ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6)) {
        if (!r->usage.n_choices) {
            /* Nothing generated: a broken answer, never relayed (or billed) as a success. */
            snprintf(r->up.fail_detail, sizeof r->up.fail_detail,
                     "a stream that ended without any choice");
            return TG_ERR_BAD_BACKEND_RESPONSE;
        }
        r->relay.saw_done = true;
        if (r->relay.caller_usage && !r->usage.done) {
            int rc = request_emit_estimated_usage(r);
            if (rc)
                return rc;
        }
        request_settle_usage(r);
        if (r->cache.capturing)
            request_capture_done(r);
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    struct answer_scan sc;
    int scan_rc = request_scan_stream_event(r, ev, r->ep->answer, &sc);
    if (scan_rc)
        return scan_rc;
    if (sc.has_error) {
        /* A node reporting its own failure mid-stream: a failure, not content. */
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "the node sent an error event");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    request_note_scan(r, &sc);
    if (r->cache.capturing)
        cache_capture_event(&r->cache.capture, ev->data, ev->data_len);
    if (!sc.has_usage && !(sc.usage_end && sc.choices_len == 0))
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    /* A chunk with usage: the usage chunk (no choices) comes after the last content; one
     * whose numbers are not token counts is a usage chunk too, settled on estimates. */
    bool usage_only = sc.choices_len == 0;
    if (usage_only && !r->usage.n_choices) {
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "a usage chunk before any choice");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    if (usage_only)
        request_settle_usage(r);
    if (r->relay.caller_usage && !usage_only)
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    if (!r->relay.caller_usage && usage_only)
        return 0; /* asked for by the gateway, not by the caller: dropped */
    /* Rewritten: the settled numbers and cost for the caller, or the usage removed (null
     * when the chunk holds what jansson cannot read, such as numbers past 64 bits). */
    json_t *chunk = usage_only ? NULL : json_loadb(ev->data, ev->data_len, 0, NULL);
    if (chunk) {
        json_object_del(chunk, "usage");
        int rc = request_emit_event(r, chunk);
        json_decref(chunk);
        return rc;
    }
    if (!usage_only)
        return sc.usage_end ? request_emit_spliced(r, ev, &sc, "null") : TG_ERR_NOMEM;
    char *usage = request_settled_usage(r, ev->data, sc.usage_start, sc.usage_end, true);
    if (!usage)
        return TG_ERR_NOMEM;
    int rc = request_emit_spliced(r, ev, &sc, usage);
    free(usage);
    return rc;
}

static void request_relay_start(struct request *r)
{
    r->up.got_headers = true;
    r->up.ttfb = clock_mono() - r->up.t_attempt;
    r->up.status = upstream_status(r->up.xfer);
    const char *ct = upstream_content_type(r->up.xfer);
    snprintf(r->reply.ctype, sizeof r->reply.ctype, "%s", ct ? ct : "application/json");
    r->relay.stream_mode =
        r->oreq.stream && r->up.status == 200 && ct && !strncasecmp(ct, "text/event-stream", 17);
    if (r->relay.stream_mode) {
        sse_init(&r->relay.sse, REQUEST_STREAM_MAX_EVENT);
        if (r->cache.result == REQUEST_CACHE_MISS && r->cache.store) {
            cache_capture_init(&r->cache.capture, r->ep->route == OPENAI_CHAT,
                               r->cfg->cache.max_entry_bytes);
            r->cache.capturing = true;
        }
        buf_init(&r->relay.out, REQUEST_STREAM_HIGH_WATER + 2 * REQUEST_STREAM_MAX_EVENT + 4096);
        r->relay.out_off = 0;
    } else {
        buf_init(&r->relay.resp, r->up.status / 100 == 2 ? r->cfg->upstream.max_response_bytes
                                                         : REQUEST_ERROR_BODY_MAX);
        r->relay.scanning = r->up.status / 100 == 2 && r->ep->answer != ANSWER_KIND_NONE &&
                            answer_scan_init_kind(&r->relay.scan, &r->arena, r->ep->answer) == 0;
    }
    request_note_retry_after(r); /* backoff.c: a 429's or 5xx's Retry-After, read once */
    if (r->up.status == 429) {
        long ms = r->up.retry_after_ms; /* -1 none, BACKOFF_NOT_SOON_MS a date */
        backend_record_rate_limited(r->up.target->backend->state, &r->cfg->routing,
                                    ms > 0 && ms < BACKOFF_NOT_SOON_MS ? ms : 0, r->up.started_us,
                                    clock_mono_ms());
    }
}

int request_relay_data(void *ctx, const char *data, size_t len)
{
    struct request *r = ctx;
    if (!r->up.got_headers)
        request_relay_start(r);
    if (!r->relay.stream_mode) {
        int rc = buf_append(&r->relay.resp, data, len);
        if (rc == BUF_ETOOBIG && r->up.status / 100 != 2)
            return 0; /* an oversized error page: keep what fits */
        if (rc == BUF_ETOOBIG) {
            snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "answer larger than %zu bytes",
                     r->relay.resp.max);
            return TG_ERR_BAD_BACKEND_RESPONSE;
        }
        if (!rc && r->relay.scanning && answer_scan_feed(&r->relay.scan, data, len)) {
            snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "an answer that is not JSON");
            return TG_ERR_BAD_BACKEND_RESPONSE;
        }
        return rc ? TG_ERR_NOMEM : 0;
    }
    if (r->relay.out.len - r->relay.out_off >= REQUEST_STREAM_HIGH_WATER) {
        r->relay.up_paused = true;
        return UPSTREAM_PAUSE;
    }
    if (r->relay.out_off && r->relay.out_off == r->relay.out.len) {
        buf_reset(&r->relay.out);
        r->relay.out_off = 0;
    }
    int rc = sse_feed(&r->relay.sse, data, len, request_on_event, r);
    if (rc) {
        if (!r->up.fail_detail[0])
            snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "%s",
                     rc == SSE_ETOOBIG ? "stream event larger than 1 MiB" : "out of memory");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    long first_ms = r->cfg->upstream.first_byte_timeout_ms;
    if (r->state == REQUEST_UPSTREAM && r->relay.out.len == r->relay.out_off &&
        clock_mono() - r->up.t_attempt > (double)first_ms / 1000.0) {
        /* Pings, or an event that never ends, are no answer: the first event is due within
         * first_byte_timeout_ms like a first byte. */
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "no stream event within %ld ms",
                 first_ms);
        return TG_ERR_BACKEND_TIMEOUT;
    }
    if (r->relay.out.len > r->relay.out_off) {
        if (r->state == REQUEST_UPSTREAM) {
            r->state = REQUEST_STREAM; /* the first event: from here on, no failover */
            double now = clock_mono();
            r->up.wait += now - r->up.t_attempt;
            r->relay.t_first_event = now;
            if (r->cfg->metrics_enabled)
                metrics_observe_ttft(r->w->metrics, r->ep->metric, r->route->metric_model,
                                     now - r->t_start, 1);
            request_resume(r);
        } else if (r->relay.reader_waiting) {
            request_resume(r);
        }
    }
    return 0;
}

/* An SSE error event, so the caller sees a failure, never a silently truncated success. */
void request_stream_error(struct request *r, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    r->reply.err = TG_ERR_STREAM;
    if (r->ep->answer == ANSWER_KIND_RESPONSES) {
        request_responses_error_event(r, msg);
        return;
    }
    char *body = error_body(TG_ERR_STREAM, msg, NULL, NULL, NULL);
    if (body) {
        /* The error event must get out even when the buffer is at its cap. */
        r->relay.out.max = r->relay.out.len + strlen(body) + 16;
        buf_printf(&r->relay.out, "data: %s\n\n", body);
        free(body);
    }
}

/* The stream's time is up while the caller reads slower than the node writes: what it has not
 * read yet is dropped, so the error event comes next rather than after the backlog. */
void request_stream_late(struct request *r, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* Whole events only: the one the connection is in the middle of is finished first. */
    struct buf *out = &r->relay.out;
    size_t from = r->relay.out_off ? r->relay.out_off - 1 : 0;
    const char *end = out->len > from ? memmem(out->data + from, out->len - from, "\n\n", 2) : NULL;
    if (end) {
        out->len = (size_t)(end - out->data) + 2;
        out->data[out->len] = '\0';
    }
    request_stream_error(r, "%s", msg);
}

/* Scanned as it arrived; a clamped usage is spliced into the bytes (never a parse). */
void request_whole_answer(struct request *r)
{
    if (r->ep->route == OPENAI_RESPONSE) {
        request_responses_whole(r); /* passed through as the node answered */
        return;
    }
    if (r->ep->meter != OPENAI_METER_TOKENS) {
        request_media_whole(r); /* images, audio: billed by the unit */
        return;
    }
    request_note_scan(r, &r->relay.scan);
    request_settle_usage(r);
    char *text = NULL;
    size_t len = 0;
    /* The caller sees what it is billed: clamped numbers, or estimates in place of a usage
     * object the node filled with something else than token counts. */
    const struct answer_scan *sc = &r->relay.scan;
    if (r->usage.clamped || (!r->usage.reported && sc->usage_end)) {
        char *usage =
            request_settled_usage(r, r->relay.resp.data, sc->usage_start, sc->usage_end, false);
        if (usage) {
            size_t n;
            char *whole = buf_steal(&r->relay.resp, &n);
            text = request_splice(whole, n, sc->usage_start, sc->usage_end, usage, &len);
        }
        free(usage);
    } else {
        text = buf_steal(&r->relay.resp, &len);
    }
    if (!text) {
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        return;
    }
    /* Only complete answers are kept: every choice finished, nothing cut, no error. */
    bool complete = !r->ep->generates ? true
                                      : r->relay.scan.choices_len > 0 &&
                                            r->relay.scan.finished == r->relay.scan.choices_len;
    if (r->cache.result == REQUEST_CACHE_MISS && r->cache.store && complete && r->up.status == 200)
        request_cache_store(r, text, len);
    else
        request_flight_land(r, NULL, 0, 0);
    request_set_reply(r, (unsigned)r->up.status, text, len, "application/json");
    if (r->ep->answer == ANSWER_KIND_RESPONSES)
        request_responses_whole(r); /* its node, for the follow-ups */
}

/* ---- streaming to the caller --------------------------------------------------------------- */

static ssize_t request_stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    (void)pos;
    struct request *r = cls;
    size_t avail = r->relay.out.len - r->relay.out_off;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(dst, r->relay.out.data + r->relay.out_off, n);
        r->relay.out_off += n;
        if (!r->relay.t_first_out)
            r->relay.t_first_out = clock_mono(); /* the client's time to first chunk */
        if (r->relay.out_off == r->relay.out.len) {
            buf_reset(&r->relay.out);
            r->relay.out_off = 0;
        } else if (r->relay.out_off > (64u << 10)) {
            buf_consume(&r->relay.out, r->relay.out_off);
            r->relay.out_off = 0;
        }
        if (r->relay.up_paused && r->up.xfer &&
            r->relay.out.len - r->relay.out_off < REQUEST_STREAM_HIGH_WATER / 2) {
            r->relay.up_paused = false;
            upstream_resume(r->up.xfer); /* may hand us more data right away */
        }
        return (ssize_t)n;
    }
    if (r->relay.stream_ended)
        return MHD_CONTENT_READER_END_OF_STREAM;
    /* Nothing to send yet: wait, suspended, for the backend's next event. */
    r->relay.reader_waiting = true;
    request_suspend(r);
    return 0;
}

enum MHD_Result request_queue_stream(struct request *r)
{
    /* A chunked body is read into the connection's own write buffer, never into the response's
     * block (whose size caps nothing here), so the block is kept small: it is allocated and
     * zeroed for every stream, 16 KiB per stream when it was 16 KiB. */
    struct MHD_Response *resp = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, REQUEST_STREAM_BLOCK, request_stream_reader, r, NULL);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    request_headers(r, resp);
    /* The kernel's send buffer is a backlog too: left to autotuning it grows to MiBs for a
     * slow reader on a fast link, which it then reads long after the stream's time is up. */
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    int sndbuf = REQUEST_STREAM_SNDBUF;
    if (ci)
        setsockopt(ci->connect_fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    if (!r->t_queued)
        r->t_queued = clock_mono();
    enum MHD_Result ok = MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->state = REQUEST_SENT;
    if (r->cfg->metrics_enabled)
        METRICS_ADD(r->w->metrics->streams, 1);
    return ok;
}

#include "send.h"

#include <stdbool.h>
#include <string.h>
#include <sys/types.h>

#include "answer.h"
#include "buf.h"
#include "reply.h"
#include "req.h"
#include "wake.h"

#define STREAM_BLOCK 16384

/*
 * Builds the next stream event into req->out. Returns its size, 0 when the
 * next token is not due yet (the connection is parked only if `may_park`), or
 * an MHD end code, which repeats on every later call.
 */
static ssize_t next_event(struct mock_req *req, bool may_park)
{
    struct buf *b = &req->out;

    buf_reset(b);
    req->out_off = 0;
    switch (req->stage) {
    case STAGE_TOKENS:
        if (req->next_token == req->cut_after) {
            req->stage = STAGE_ABORT;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (req->next_token >= req->gen.completion_tokens) {
            answer_event_finish(b, &req->gen, &req->prefix);
            req->stage = req->include_usage ? STAGE_USAGE : STAGE_DONE;
            break;
        }
        if (req->token_ms && req->next_token > 0 && wake_now_ns() < req->next_due_ns) {
            if (!may_park)
                return 0;
            if (wake_suspend_until(req->conn, req->next_due_ns) == 0)
                return 0;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        answer_event_token(b, &req->gen, &req->prefix, req->next_token);
        req->next_token++;
        /* A fixed grid from the first token, so wake-up lateness does not add up. */
        req->next_due_ns += (uint64_t)req->token_ms * 1000000u;
        break;
    case STAGE_USAGE:
        answer_event_usage(b, &req->gen, &req->prefix);
        req->stage = STAGE_DONE;
        break;
    case STAGE_DONE:
        buf_adds(b, "data: [DONE]\n\n");
        req->stage = STAGE_END;
        break;
    case STAGE_GARBAGE:
        buf_adds(b, "data: {garbage\n\n");
        req->stage = STAGE_END;
        break;
    case STAGE_END:
        return MHD_CONTENT_READER_END_OF_STREAM;
    case STAGE_ABORT:
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (b->failed) {
        req->stage = STAGE_ABORT;
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return (ssize_t)b->len;
}

/*
 * Fills `dst` with as many events as are due, so an unpaced stream goes out in
 * a few large chunks. Parks or ends only when nothing was copied: returning 0
 * is legal only after suspending, and data must go out before the end code.
 */
static ssize_t stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct mock_req *req = cls;
    size_t done = 0;

    (void)pos;
    while (done < max) {
        if (req->out_off == req->out.len) {
            ssize_t r = next_event(req, done == 0);
            if (r <= 0)
                return done > 0 ? (ssize_t)done : r;
        }
        size_t n = req->out.len - req->out_off;
        if (n > max - done)
            n = max - done;
        memcpy(dst + done, req->out.data + req->out_off, n);
        req->out_off += n;
        done += n;
    }
    return (ssize_t)done;
}

/* Serves the first cut_at bytes of a body announced at full length, then drops the connection. */
static ssize_t cut_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct mock_req *req = cls;

    if (pos >= req->cut_at)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = req->cut_at - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(dst, req->out.data + pos, n);
    return (ssize_t)n;
}

enum MHD_Result send_answer(struct mock_req *req)
{
    struct MHD_Response *r;
    const char *ctype = "application/json";

    req->phase = PHASE_SENDING;
    if (req->stream) {
        ctype = "text/event-stream";
        req->next_due_ns = wake_now_ns();
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, req,
                                              NULL);
    } else if (req->fault == FAULT_CLOSE) {
        req->cut_at = req->out.len / 2;
        r = MHD_create_response_from_callback(req->out.len, STREAM_BLOCK, cut_reader, req, NULL);
    } else {
        return reply_buf(req->conn, MHD_HTTP_OK, ctype, &req->out, NULL, NULL);
    }
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_NO;
    if (reply_add_headers(r, ctype) &&
        (!req->stream ||
         MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") == MHD_YES))
        ret = MHD_queue_response(req->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

/* Incremental Server-Sent Events parser (no I/O), for relaying a backend's stream event by
 * event.
 *
 * Bytes are fed as they arrive, split anywhere; each complete event (ended by a blank line)
 * is handed to a callback in a normalised form ("field: value\n" lines ending with "\n\n")
 * together with its joined `data` payload. Lines may end in LF, CRLF or CR. An event larger
 * than `max` bytes is an error, so a hostile backend cannot make the gateway buffer without
 * bound. Not thread-safe: one parser per stream. */
#ifndef TOLLGATE_SSE_H
#define TOLLGATE_SSE_H

#include "base/buf.h"

#include <stdbool.h>
#include <stddef.h>

enum sse_result {
    SSE_OK = 0,
    SSE_ENOMEM = -1,
    SSE_ETOOBIG = -2, /* one event passed the cap */
};

struct sse_event {
    const char *raw; /* the normalised event, ending in "\n\n" */
    size_t raw_len;
    const char *data; /* the data lines joined with '\n'; "" when none */
    size_t data_len;
    bool has_data; /* false for comment-only events such as keep-alives */
};

/* Return 0 to go on, or a negative value to stop sse_feed() (which then returns it). */
typedef int (*sse_event_fn)(void *ctx, const struct sse_event *ev);

struct sse_parser {
    struct buf line; /* the line being read */
    struct buf raw;  /* the event being read, normalised */
    struct buf data; /* its data payload */
    bool has_data;
    bool skip_lf; /* the previous chunk ended in CR; a leading LF belongs to it */
};

void sse_init(struct sse_parser *p, size_t max_event_bytes);
int sse_feed(struct sse_parser *p, const char *bytes, size_t n, sse_event_fn fn, void *ctx);
/* True when bytes of an unfinished event are pending (a cut stream). */
bool sse_pending(const struct sse_parser *p);
void sse_free(struct sse_parser *p);

#endif

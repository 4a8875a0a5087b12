/* OTLP/HTTP's binary protobuf encoding of traces (opentelemetry-proto's
 * collector/trace/v1/trace_service.proto), written by hand: a span is one flat message of a
 * dozen fields, and a request wraps spans in three levels of messages.
 *
 * A span is written into a fixed buffer (a slot of a worker's queue, trace/exporter.h)
 * without allocating; an attribute that does not fit is left out and counted in the span's
 * dropped_attributes_count. The request around a batch of spans is written by the exporter
 * into a capped buffer. No I/O; not thread-safe per writer. */
#ifndef TOLLGATE_TRACE_OTLP_H
#define TOLLGATE_TRACE_OTLP_H

#include "base/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum otlp_span_kind { OTLP_SPAN_INTERNAL = 1, OTLP_SPAN_SERVER = 2, OTLP_SPAN_CLIENT = 3 };
enum otlp_status { OTLP_STATUS_UNSET = 0, OTLP_STATUS_OK = 1, OTLP_STATUS_ERROR = 2 };

/* Room kept at a span's end for its status, dropped count and flags. */
#define OTLP_SPAN_TAIL 64
/* A status message longer than this is cut. */
#define OTLP_STATUS_MESSAGE_MAX 40

struct otlp_span {
    uint8_t *p;
    size_t len;
    size_t cap; /* the buffer's size, OTLP_SPAN_TAIL of it kept for otlp_span_finish() */
    unsigned dropped;
};

/* cap must be more than OTLP_SPAN_TAIL plus the ids and times (about 120 bytes). */
void otlp_span_init(struct otlp_span *s, uint8_t *buf, size_t cap);
/* parent NULL: a root span. */
void otlp_span_ids(struct otlp_span *s, const uint8_t trace_id[16], const uint8_t span_id[8],
                   const uint8_t *parent);
void otlp_span_trace_state(struct otlp_span *s, const char *state);
void otlp_span_name(struct otlp_span *s, const char *name);
void otlp_span_kind(struct otlp_span *s, enum otlp_span_kind kind);
/* Nanoseconds since the epoch. */
void otlp_span_times(struct otlp_span *s, uint64_t start_ns, uint64_t end_ns);
void otlp_attr_str(struct otlp_span *s, const char *key, const char *value);
void otlp_attr_int(struct otlp_span *s, const char *key, int64_t value);
void otlp_attr_double(struct otlp_span *s, const char *key, double value);
void otlp_attr_bool(struct otlp_span *s, const char *key, bool value);
/* Writes the status (message may be NULL), the dropped-attribute count and the span flags
 * (the W3C trace flags; remote_parent says the parent came from another process). Returns
 * the span's length. */
size_t otlp_span_finish(struct otlp_span *s, enum otlp_status status, const char *message,
                        uint8_t trace_flags, bool remote_parent);

/* A Resource message's body: string attributes from key/value pairs. 0 or a buf error. */
int otlp_encode_resource(struct buf *out, const char *const *pairs, size_t n_pairs);

struct otlp_span_ref {
    const uint8_t *data;
    size_t len;
};

/* An ExportTraceServiceRequest with one ResourceSpans (the resource's encoded body) holding
 * one ScopeSpans (scope name and version) with the spans. 0 or a buf error. */
int otlp_encode_request(struct buf *out, const struct buf *resource, const char *scope_name,
                        const char *scope_version, const struct otlp_span_ref *spans, size_t n);

#endif

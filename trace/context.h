/* W3C Trace Context (https://www.w3.org/TR/trace-context/): the `traceparent` and
 * `tracestate` headers, and the sampling decision for a new trace. A parser with no I/O.
 *
 * Thread-safe; no state. */
#ifndef TOLLGATE_TRACE_CONTEXT_H
#define TOLLGATE_TRACE_CONTEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TRACE_ID_LEN 16
#define TRACE_SPAN_ID_LEN 8
/* "00-" 32 hex "-" 16 hex "-" 2 hex */
#define TRACE_PARENT_LEN 55
/* The longest tracestate passed on: the spec asks vendors to propagate at least 512
 * characters, and lets a longer one be dropped whole. */
#define TRACE_STATE_MAX 512
#define TRACE_FLAG_SAMPLED 0x01

struct trace_context {
    uint8_t trace_id[TRACE_ID_LEN];
    uint8_t span_id[TRACE_SPAN_ID_LEN];
    uint8_t flags;
};

/* Reads a traceparent value: 0 with *out set, or -1 when it is not one (wrong length or
 * characters, upper-case hex, version ff, an all-zero id, or a version-00 value with
 * anything after the flags). A later version is read by its version-00 prefix, as the spec
 * says. */
int trace_parse_traceparent(const char *s, struct trace_context *out);

/* Writes the version-00 form, TRACE_PARENT_LEN characters and a NUL. */
void trace_format_traceparent(const struct trace_context *c, char out[TRACE_PARENT_LEN + 1]);

/* A tracestate value that may be passed on as it is: at most TRACE_STATE_MAX characters,
 * printable ASCII only (so never a line break into another header). */
bool trace_state_ok(const char *s);

/* The ratio sampler of OpenTelemetry's TraceIdRatioBased: a trace is sampled when the low 63
 * bits of its id's last 8 bytes, read big-endian, are below ratio * 2^63; 0 samples nothing,
 * 1 everything. The same id gets the same answer on every replica. */
bool trace_ratio_sampled(const uint8_t trace_id[TRACE_ID_LEN], double ratio);

/* An id of n bytes that is not all zeros (the spec's invalid value). */
bool trace_id_nonzero(const uint8_t *id, size_t n);

#endif

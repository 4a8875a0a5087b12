/* Traces of the request pipeline: a server span per inference request and a client span per
 * backend attempt (failovers are siblings under the server span), with the OpenTelemetry
 * GenAI attributes and Tollgate's own; W3C trace context continued from the caller and passed
 * to the node; the ids in the request's log line. The spans go to the worker's queue of the
 * exporter (trace/exporter.h) when the request ends; nothing here waits on anything.
 *
 * When tracing is off (no tracing.otlp_endpoint) the caller's traceparent and tracestate
 * still reach the node unchanged, and its trace id is in the log line.
 *
 * Everything runs on the request's worker. Internal to gateway/. */
#ifndef TOLLGATE_GATEWAY_TRACING_H
#define TOLLGATE_GATEWAY_TRACING_H

#include "metrics/metrics.h"
#include "trace/context.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct request;
struct config;
struct trace_exporter;

/* The exporter takes the config's tracing section (at start and on every reload; from the
 * main thread). e may be NULL. */
void tracing_configure(struct trace_exporter *e, const struct config *cfg);

/* A request's trace state (r->trace). */
struct request_tracing {
    bool begun;      /* tracing_begin() ran */
    bool traced;     /* an inference request: propagation and spans apply */
    bool has_parent; /* the caller sent a valid traceparent */
    bool recording;  /* tracing is on and this trace is sampled: spans are exported */
    uint8_t flags;   /* the W3C trace flags passed on */
    uint8_t trace_id[TRACE_ID_LEN];
    uint8_t span_id[TRACE_SPAN_ID_LEN];   /* the server span */
    uint8_t parent_id[TRACE_SPAN_ID_LEN]; /* the caller's span */
    char state[TRACE_STATE_MAX + 1];      /* the caller's tracestate; "" when none */
    /* The current (or last) attempt's client span: open while the attempt runs, pending once
     * it ended until it is queued (at the next attempt, or with the server span). */
    bool att_open, att_pending;
    bool att_cancelled; /* still running when the request ended (the caller left) */
    uint8_t att_id[TRACE_SPAN_ID_LEN];
    double att_start, att_end; /* clock_mono() */
    enum metrics_outcome att_outcome;
    long att_status;
    unsigned att_no;
    const void *att_target; /* const struct config_target * */
    /* traceparent and tracestate linked in front of the backend's shared headers. */
    struct curl_slist tp_node, ts_node;
    char tp_line[16 + TRACE_PARENT_LEN];
    char ts_line[16 + TRACE_STATE_MAX];
};

/* MHD's first call: reads the caller's traceparent and tracestate, decides the sampling. */
void tracing_begin(struct request *r);
/* An attempt starts (r->up.target and r->up.attempts are set): its client span opens, and
 * the headers the node gets are returned: traceparent (naming the client span, or the
 * caller's as it came when tracing is off) and tracestate in front of `base`. */
struct curl_slist *tracing_attempt_headers(struct request *r, struct curl_slist *base);
/* The attempt ended with this outcome (at clock_mono() `now`). */
void tracing_attempt_end(struct request *r, enum metrics_outcome outcome, double now);
/* The request is over (after usage and status are settled): its spans are queued. */
void tracing_request_end(struct request *r, double seconds);
/* The log line's members: `,"trace_id":"…","span_id":"…"`, or "" without a trace. */
const char *tracing_log_members(const struct request *r, char *out, size_t n);

#endif

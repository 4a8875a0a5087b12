/* The span exporter: a bounded queue per worker and one sender thread that posts batches to
 * an OTLP/HTTP traces endpoint (binary protobuf, trace/otlp.h).
 *
 * Why a thread of its own, with its own curl handle, rather than the worker's curl multi: a
 * worker never encodes a batch, never holds a connection to the collector, and never runs a
 * callback for it; a collector that hangs or refuses holds only the sender, whose queues
 * then fill, so the workers' spans are dropped and counted, and their requests cost what they
 * cost without tracing. The sender's curl handle is blocking, which is what a thread that
 * does nothing else wants.
 *
 * Threads: a ring has one producer (its worker: trace_ring_reserve/commit) and one consumer
 * (the sender); they share only the ring's head and tail (acquire/release) and the slots
 * between them. trace_exporter_configure() may be called from any thread (a reload); the
 * sender takes the settings under a mutex once per batch, never a worker. The counters are
 * read with relaxed loads by whoever renders /metrics. */
#ifndef TOLLGATE_TRACE_EXPORTER_H
#define TOLLGATE_TRACE_EXPORTER_H

#include "base/buf.h"

#include <stddef.h>
#include <stdint.h>

/* Spans one worker may have waiting; past it they are dropped (counted). */
#define TRACE_RING_SLOTS 2048
/* The most bytes of one encoded span (a slot). */
#define TRACE_SPAN_MAX 1020
/* Spans in one export request. */
#define TRACE_BATCH_MAX 512

struct trace_exporter;
struct trace_ring;

struct trace_settings {
    const char *endpoint;       /* http(s) URL of the traces endpoint; NULL = off */
    const char *const *headers; /* "Name: value" lines sent with every export */
    size_t n_headers;
    const char *const *resource; /* key, value, key, value...: the resource attributes */
    size_t n_resource;           /* pairs */
    long timeout_ms;             /* one export, connection included */
};

/* One ring per worker, the sender thread started. NULL on failure. */
struct trace_exporter *trace_exporter_new(unsigned n_rings);
/* Takes a copy of the settings (a reload calls it again). 0, or -1 on OOM (the old ones
 * stay). */
int trace_exporter_configure(struct trace_exporter *e, const struct trace_settings *s);
/* Exports what the rings still hold (once, within the timeout), stops the sender and frees
 * everything. The producers must be gone. */
void trace_exporter_free(struct trace_exporter *e);

/* Worker i's ring. */
struct trace_ring *trace_exporter_ring(struct trace_exporter *e, unsigned i);
/* A slot of TRACE_SPAN_MAX bytes to encode one span into, or NULL when the ring is full or
 * the last export failed and a span already waits in it (the span is counted as dropped,
 * before any work is done for it), or its memory cannot be had. Only the ring's worker calls
 * it. */
uint8_t *trace_ring_reserve(struct trace_ring *r);
/* The reserved slot holds a span of len bytes: hand it to the sender. */
void trace_ring_commit(struct trace_ring *r, size_t len);

/* Appends the exporter's counters in the Prometheus text format. */
int trace_exporter_render(struct trace_exporter *e, struct buf *out);

#endif

/* Fuzz target: the W3C trace context headers a caller sends (trace/context.c), and the span
 * writer (trace/otlp.c) given what came from them.
 *
 * Input: the first byte splits the rest into a traceparent and a tracestate (NUL-terminated
 * copies, as MHD hands header values over).
 *
 * Checks: a traceparent that parses has non-zero ids and formats back to itself when it was
 * a version-00 value; a tracestate passed as valid is printable and within the cap; a span
 * written with that state into a slot of TRACE_SPAN_MAX bytes never passes the slot. */
#include "tests/fuzz/fuzz.h"

#include "trace/context.h"
#include "trace/exporter.h"
#include "trace/otlp.h"

#include <stdbool.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 4096)
        return 0;
    size_t cut = data[0] < size - 1 ? data[0] : size - 1;
    char *tp = malloc(cut + 1), *ts = malloc(size - 1 - cut + 1);
    if (!tp || !ts) {
        free(tp);
        free(ts);
        return 0;
    }
    memcpy(tp, data + 1, cut);
    tp[cut] = '\0';
    memcpy(ts, data + 1 + cut, size - 1 - cut);
    ts[size - 1 - cut] = '\0';

    struct trace_context c;
    if (trace_parse_traceparent(tp, &c) == 0) {
        FUZZ_CHECK(trace_id_nonzero(c.trace_id, TRACE_ID_LEN));
        FUZZ_CHECK(trace_id_nonzero(c.span_id, TRACE_SPAN_ID_LEN));
        char out[TRACE_PARENT_LEN + 1];
        trace_format_traceparent(&c, out);
        FUZZ_CHECK(strlen(out) == TRACE_PARENT_LEN);
        if (tp[0] == '0' && tp[1] == '0')
            FUZZ_CHECK(!strcmp(out, tp));
        struct trace_context again;
        FUZZ_CHECK(trace_parse_traceparent(out, &again) == 0);
        FUZZ_CHECK(!memcmp(&again, &c, sizeof c));
    }
    if (trace_state_ok(ts)) {
        size_t n = strlen(ts);
        FUZZ_CHECK(n <= TRACE_STATE_MAX);
        for (size_t i = 0; i < n; i++)
            FUZZ_CHECK(ts[i] >= 0x20 && ts[i] < 0x7f);
        /* The slot has a guard after it: a write past the span's end would change it. */
        static uint8_t slot[TRACE_SPAN_MAX + 16];
        memset(slot + TRACE_SPAN_MAX, 0xa5, 16);
        struct otlp_span s;
        uint8_t id[16] = {1}, sid[8] = {2};
        otlp_span_init(&s, slot, TRACE_SPAN_MAX);
        otlp_span_ids(&s, id, sid, sid);
        otlp_span_trace_state(&s, ts);
        otlp_span_name(&s, "POST /v1/chat/completions");
        for (int i = 0; i < 8; i++)
            otlp_attr_str(&s, "tollgate.request_id", ts);
        size_t len = otlp_span_finish(&s, OTLP_STATUS_ERROR, ts, 1, true);
        FUZZ_CHECK(len <= TRACE_SPAN_MAX);
        for (int i = 0; i < 16; i++)
            FUZZ_CHECK(slot[TRACE_SPAN_MAX + i] == 0xa5);
    }
    free(tp);
    free(ts);
    return 0;
}

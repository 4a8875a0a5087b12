/* Unit tests for trace/: W3C traceparent and tracestate, the ratio sampler, the hand-written
 * OTLP protobuf (read back with a small decoder here), and a worker's queue to the sender. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "trace/context.h"
#include "trace/exporter.h"
#include "trace/otlp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_traceparent_good(void **state)
{
    (void)state;
    const char *tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    struct trace_context c;
    assert_int_equal(trace_parse_traceparent(tp, &c), 0);
    assert_int_equal(c.trace_id[0], 0x4b);
    assert_int_equal(c.trace_id[15], 0x36);
    assert_int_equal(c.span_id[0], 0x00);
    assert_int_equal(c.span_id[7], 0xb7);
    assert_int_equal(c.flags, 1);
    char out[TRACE_PARENT_LEN + 1];
    trace_format_traceparent(&c, out);
    assert_string_equal(out, tp);
    /* A later version is read by its version-00 prefix, extra fields and all. */
    assert_int_equal(
        trace_parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what", &c),
        0);
    assert_int_equal(c.flags, 0);
}

static void test_traceparent_bad(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",   /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* v00 with more */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* upper case */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version ff */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero span id */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  /* not hex */
        "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", /* later version, no '-' */
    };
    struct trace_context c;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(trace_parse_traceparent(bad[i], &c), -1);
    assert_int_equal(trace_parse_traceparent(NULL, &c), -1);
}

static void test_tracestate(void **state)
{
    (void)state;
    assert_true(trace_state_ok("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"));
    assert_true(trace_state_ok(""));
    assert_false(trace_state_ok("a=b\r\nx-evil: 1"));
    assert_false(trace_state_ok(NULL));
    char big[TRACE_STATE_MAX + 2];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_false(trace_state_ok(big));
    big[TRACE_STATE_MAX] = '\0';
    assert_true(trace_state_ok(big));
}

static void test_ratio_sampler(void **state)
{
    (void)state;
    uint8_t id[16] = {0};
    int hits = 0;
    for (int i = 0; i < 4096; i++) {
        uint64_t x = (uint64_t)i * 0x9e3779b97f4a7c15ull;
        for (int b = 0; b < 8; b++)
            id[8 + b] = (uint8_t)(x >> (8 * b));
        assert_true(trace_ratio_sampled(id, 1.0));
        assert_false(trace_ratio_sampled(id, 0.0));
        hits += trace_ratio_sampled(id, 0.25);
    }
    assert_in_range(hits, 900, 1150);
}

/* ---- a minimal protobuf reader, to read back what the encoder wrote ---- */

struct pb {
    const uint8_t *p, *end;
};

static uint64_t pb_varint(struct pb *b)
{
    uint64_t v = 0;
    for (int shift = 0; b->p < b->end; shift += 7) {
        uint8_t c = *b->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            break;
    }
    return v;
}

/* The next field: its number, wire type, and for length-delimited ones the bytes. */
static int pb_next(struct pb *b, unsigned *wire, struct pb *sub, uint64_t *num)
{
    if (b->p >= b->end)
        return 0;
    uint64_t tag = pb_varint(b);
    *wire = tag & 7;
    if (*wire == 2) {
        uint64_t n = pb_varint(b);
        assert_true(n <= (uint64_t)(b->end - b->p));
        sub->p = b->p;
        sub->end = b->p + n;
        b->p += n;
    } else if (*wire == 0) {
        *num = pb_varint(b);
    } else if (*wire == 1) {
        memcpy(num, b->p, 8);
        b->p += 8;
    } else {
        assert_int_equal(*wire, 5);
        uint32_t v;
        memcpy(&v, b->p, 4);
        *num = v;
        b->p += 4;
    }
    return (int)(tag >> 3);
}

static bool pb_str_is(const struct pb *s, const char *want)
{
    return (size_t)(s->end - s->p) == strlen(want) && !memcmp(s->p, want, strlen(want));
}

static void test_otlp_span(void **state)
{
    (void)state;
    uint8_t buf[400];
    uint8_t tid[16], sid[8], pid[8];
    for (int i = 0; i < 16; i++)
        tid[i] = (uint8_t)(i + 1);
    memset(sid, 0xab, sizeof sid);
    memset(pid, 0xcd, sizeof pid);
    struct otlp_span s;
    otlp_span_init(&s, buf, sizeof buf);
    otlp_span_ids(&s, tid, sid, pid);
    otlp_span_name(&s, "chat m");
    otlp_span_kind(&s, OTLP_SPAN_CLIENT);
    otlp_span_times(&s, 1000, 2500);
    otlp_attr_str(&s, "gen_ai.request.model", "m");
    otlp_attr_int(&s, "gen_ai.usage.input_tokens", 300);
    otlp_attr_int(&s, "neg", -1);
    otlp_attr_double(&s, "tollgate.cost_usd", 0.25);
    otlp_attr_bool(&s, "flag", true);
    size_t len = otlp_span_finish(&s, OTLP_STATUS_ERROR, "timeout", 1, false);
    assert_true(len > 0 && len <= sizeof buf);

    struct pb b = {buf, buf + len}, sub;
    unsigned wire;
    uint64_t num = 0;
    int field, attrs = 0;
    bool saw_status = false, saw_flags = false;
    while ((field = pb_next(&b, &wire, &sub, &num)) != 0) {
        switch (field) {
        case 1:
            assert_memory_equal(sub.p, tid, 16);
            break;
        case 2:
            assert_memory_equal(sub.p, sid, 8);
            break;
        case 4:
            assert_memory_equal(sub.p, pid, 8);
            break;
        case 5:
            assert_true(pb_str_is(&sub, "chat m"));
            break;
        case 6:
            assert_int_equal(num, OTLP_SPAN_CLIENT);
            break;
        case 7:
            assert_int_equal(num, 1000);
            break;
        case 8:
            assert_int_equal(num, 2500);
            break;
        case 9: {
            attrs++;
            struct pb kv = sub, k = {0}, v = {0}, inner;
            unsigned w2;
            uint64_t n2;
            int f;
            while ((f = pb_next(&kv, &w2, &inner, &n2)) != 0)
                *(f == 1 ? &k : &v) = inner;
            unsigned vw;
            uint64_t vn = 0;
            struct pb vs;
            int vf = pb_next(&v, &vw, &vs, &vn);
            if (pb_str_is(&k, "gen_ai.usage.input_tokens"))
                assert_true(vf == 3 && vn == 300);
            else if (pb_str_is(&k, "neg"))
                assert_true(vf == 3 && (int64_t)vn == -1);
            else if (pb_str_is(&k, "tollgate.cost_usd")) {
                double d;
                memcpy(&d, &vn, 8);
                assert_true(vf == 4 && d == 0.25);
            } else if (pb_str_is(&k, "flag"))
                assert_true(vf == 2 && vn == 1);
            else
                assert_true(pb_str_is(&k, "gen_ai.request.model") && vf == 1 &&
                            pb_str_is(&vs, "m"));
            break;
        }
        case 15: {
            saw_status = true;
            struct pb st = sub, m;
            unsigned w2;
            uint64_t n2 = 0;
            int f;
            while ((f = pb_next(&st, &w2, &m, &n2)) != 0) {
                if (f == 2)
                    assert_true(pb_str_is(&m, "timeout"));
                else
                    assert_true(f == 3 && n2 == OTLP_STATUS_ERROR);
            }
            break;
        }
        case 16:
            saw_flags = true;
            assert_int_equal(num, 0x101);
            break;
        default:
            fail_msg("unexpected field %d", field);
        }
    }
    assert_int_equal(attrs, 5);
    assert_true(saw_status && saw_flags);
}

static void test_otlp_span_full(void **state)
{
    (void)state;
    /* Attributes that do not fit are dropped and counted; the tail always fits. */
    uint8_t buf[260];
    struct otlp_span s;
    otlp_span_init(&s, buf, sizeof buf);
    uint8_t tid[16] = {1}, sid[8] = {2};
    otlp_span_ids(&s, tid, sid, NULL);
    char big[100];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    otlp_attr_str(&s, "a", big);
    otlp_attr_str(&s, "b", big);
    otlp_attr_str(&s, "c", big);
    assert_int_equal(s.dropped, 2);
    size_t len = otlp_span_finish(&s, OTLP_STATUS_ERROR, big, 1, true);
    assert_true(len <= sizeof buf);
}

static void test_otlp_request(void **state)
{
    (void)state;
    struct buf res, out;
    buf_init(&res, 4096);
    buf_init(&out, 1 << 20);
    const char *pairs[] = {"service.name", "tollgate", "deployment.environment", "test"};
    assert_int_equal(otlp_encode_resource(&res, pairs, 2), 0);
    uint8_t a[300], c[300];
    struct otlp_span s;
    uint8_t tid[16] = {9}, sid[8] = {7};
    otlp_span_init(&s, a, sizeof a);
    otlp_span_ids(&s, tid, sid, NULL);
    otlp_span_name(&s, "first");
    size_t alen = otlp_span_finish(&s, OTLP_STATUS_UNSET, NULL, 1, false);
    otlp_span_init(&s, c, sizeof c);
    otlp_span_ids(&s, tid, sid, NULL);
    otlp_span_name(&s, "second");
    size_t clen = otlp_span_finish(&s, OTLP_STATUS_UNSET, NULL, 1, false);
    struct otlp_span_ref spans[] = {{a, alen}, {c, clen}};
    assert_int_equal(otlp_encode_request(&out, &res, "tollgate", "1.2.3", spans, 2), 0);

    /* request.resource_spans[0] -> resource, scope_spans[0] -> scope, spans */
    struct pb b = {(const uint8_t *)out.data, (const uint8_t *)out.data + out.len}, rs, sub;
    unsigned wire;
    uint64_t num;
    assert_int_equal(pb_next(&b, &wire, &rs, &num), 1);
    assert_true(b.p == b.end);
    assert_int_equal(pb_next(&rs, &wire, &sub, &num), 1);
    assert_int_equal(sub.end - sub.p, (long)res.len);
    assert_memory_equal(sub.p, res.data, res.len);
    struct pb ss;
    assert_int_equal(pb_next(&rs, &wire, &ss, &num), 2);
    assert_true(rs.p == rs.end);
    struct pb scope;
    assert_int_equal(pb_next(&ss, &wire, &scope, &num), 1);
    struct pb name;
    assert_int_equal(pb_next(&scope, &wire, &name, &num), 1);
    assert_true(pb_str_is(&name, "tollgate"));
    assert_int_equal(pb_next(&scope, &wire, &name, &num), 2);
    assert_true(pb_str_is(&name, "1.2.3"));
    struct pb span;
    assert_int_equal(pb_next(&ss, &wire, &span, &num), 2);
    assert_memory_equal(span.p, a, alen);
    assert_int_equal(pb_next(&ss, &wire, &span, &num), 2);
    assert_memory_equal(span.p, c, clen);
    assert_true(ss.p == ss.end);
    buf_free(&res);
    buf_free(&out);
}

/* Reads a counter's value from the exporter's Prometheus text. */
static unsigned long long counter(struct trace_exporter *e, const char *name)
{
    struct buf out;
    buf_init(&out, 1 << 16);
    assert_int_equal(trace_exporter_render(e, &out), 0);
    char want[128];
    snprintf(want, sizeof want, "\n%s ", name);
    const char *at = strstr(out.data, want);
    assert_non_null(at);
    unsigned long long v = strtoull(at + strlen(want), NULL, 10);
    buf_free(&out);
    return v;
}

static void test_ring(void **state)
{
    (void)state;
    struct trace_exporter *e = trace_exporter_new(2);
    assert_non_null(e);
    /* Off (no endpoint): queued spans are taken and counted as dropped. A full ring drops
     * at once. */
    struct trace_settings off = {0};
    assert_int_equal(trace_exporter_configure(e, &off), 0);
    struct trace_ring *r = trace_exporter_ring(e, 1);
    assert_non_null(r);
    assert_null(trace_exporter_ring(e, 2));
    unsigned queued = 0, full = 0;
    for (unsigned i = 0; i < TRACE_RING_SLOTS + 10; i++) {
        uint8_t *slot = trace_ring_reserve(r);
        if (!slot) {
            full++;
            continue;
        }
        slot[0] = 1;
        trace_ring_commit(r, 1);
        queued++;
    }
    assert_int_equal(queued + full, TRACE_RING_SLOTS + 10);
    for (int i = 0; i < 400 && counter(e, "tollgate_trace_spans_dropped_total") <
                                   (unsigned long long)TRACE_RING_SLOTS + 10;
         i++)
        usleep(10000);
    assert_int_equal(counter(e, "tollgate_trace_spans_dropped_total"), TRACE_RING_SLOTS + 10);
    assert_int_equal(counter(e, "tollgate_trace_spans_exported_total"), 0);
    /* A collector that is not there: the export fails, counted. */
    const char *pairs[] = {"service.name", "t"};
    struct trace_settings dead = {.endpoint = "http://127.0.0.1:1/v1/traces",
                                  .resource = pairs,
                                  .n_resource = 1,
                                  .timeout_ms = 500};
    assert_int_equal(trace_exporter_configure(e, &dead), 0);
    uint8_t *slot = trace_ring_reserve(r);
    assert_non_null(slot);
    trace_ring_commit(r, 0);
    for (int i = 0; i < 400 && counter(e, "tollgate_trace_spans_failed_total") == 0; i++)
        usleep(10000);
    assert_int_equal(counter(e, "tollgate_trace_spans_failed_total"), 1);
    /* While it is away, one span waits for the sender's next probe and the rest are dropped
     * before anything is done for them. */
    unsigned long long dropped = counter(e, "tollgate_trace_spans_dropped_total");
    int i = 0;
    for (; i < 200 && (slot = trace_ring_reserve(r)) != NULL; i++) {
        trace_ring_commit(r, 0);
        usleep(5000);
    }
    assert_true(i < 200);
    assert_int_equal(counter(e, "tollgate_trace_spans_dropped_total"), dropped + 1);
    trace_exporter_free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_good), cmocka_unit_test(test_traceparent_bad),
        cmocka_unit_test(test_tracestate),       cmocka_unit_test(test_ratio_sampler),
        cmocka_unit_test(test_otlp_span),        cmocka_unit_test(test_otlp_span_full),
        cmocka_unit_test(test_otlp_request),     cmocka_unit_test(test_ring),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

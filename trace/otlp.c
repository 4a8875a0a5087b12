#include "trace/otlp.h"

#include <string.h>

/* Protobuf wire types. */
enum { PB_VARINT = 0, PB_FIXED64 = 1, PB_LEN = 2, PB_FIXED32 = 5 };

/* Span fields (trace.proto). */
enum {
    SPAN_TRACE_ID = 1,
    SPAN_SPAN_ID = 2,
    SPAN_TRACE_STATE = 3,
    SPAN_PARENT_SPAN_ID = 4,
    SPAN_NAME = 5,
    SPAN_KIND = 6,
    SPAN_START = 7,
    SPAN_END = 8,
    SPAN_ATTRIBUTES = 9,
    SPAN_DROPPED_ATTRIBUTES = 10,
    SPAN_STATUS = 15,
    SPAN_FLAGS = 16,
};

/* SpanFlags: the W3C flags in bits 0-7, then whether the parent's remoteness is known and
 * whether it is remote. */
#define OTLP_FLAGS_HAS_IS_REMOTE 0x100u
#define OTLP_FLAGS_IS_REMOTE 0x200u

static size_t pb_varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static size_t pb_put_varint(uint8_t *p, uint64_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (uint8_t)v;
    return n;
}

static size_t pb_put_fixed64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return 8;
}

/* The size of a length-delimited field with a tag below 16 (one tag byte). */
static size_t pb_len_field(size_t body)
{
    return 1 + pb_varint_len(body) + body;
}

/* ---- a span in a fixed buffer ---------------------------------------------------------------- */

static bool span_room(const struct otlp_span *s, size_t need, size_t keep)
{
    return s->len + need + keep <= s->cap;
}

static void span_varint(struct otlp_span *s, uint64_t v)
{
    s->len += pb_put_varint(s->p + s->len, v);
}

static void span_tag(struct otlp_span *s, unsigned field, unsigned wire)
{
    span_varint(s, (uint64_t)field << 3 | wire);
}

static void span_bytes(struct otlp_span *s, unsigned field, const void *data, size_t n)
{
    if (!span_room(s, 2 + pb_varint_len(n) + n, OTLP_SPAN_TAIL))
        return;
    span_tag(s, field, PB_LEN);
    span_varint(s, n);
    memcpy(s->p + s->len, data, n);
    s->len += n;
}

void otlp_span_init(struct otlp_span *s, uint8_t *buf, size_t cap)
{
    s->p = buf;
    s->len = 0;
    s->cap = cap;
    s->dropped = 0;
}

void otlp_span_ids(struct otlp_span *s, const uint8_t trace_id[16], const uint8_t span_id[8],
                   const uint8_t *parent)
{
    span_bytes(s, SPAN_TRACE_ID, trace_id, 16);
    span_bytes(s, SPAN_SPAN_ID, span_id, 8);
    if (parent)
        span_bytes(s, SPAN_PARENT_SPAN_ID, parent, 8);
}

void otlp_span_trace_state(struct otlp_span *s, const char *state)
{
    if (state && *state)
        span_bytes(s, SPAN_TRACE_STATE, state, strlen(state));
}

void otlp_span_name(struct otlp_span *s, const char *name)
{
    span_bytes(s, SPAN_NAME, name, strlen(name));
}

void otlp_span_kind(struct otlp_span *s, enum otlp_span_kind kind)
{
    if (!span_room(s, 2, OTLP_SPAN_TAIL))
        return;
    span_tag(s, SPAN_KIND, PB_VARINT);
    span_varint(s, (uint64_t)kind);
}

void otlp_span_times(struct otlp_span *s, uint64_t start_ns, uint64_t end_ns)
{
    if (!span_room(s, 18, OTLP_SPAN_TAIL))
        return;
    span_tag(s, SPAN_START, PB_FIXED64);
    s->len += pb_put_fixed64(s->p + s->len, start_ns);
    span_tag(s, SPAN_END, PB_FIXED64);
    s->len += pb_put_fixed64(s->p + s->len, end_ns);
}

/* AnyValue fields. */
enum { ANY_STRING = 1, ANY_BOOL = 2, ANY_INT = 3, ANY_DOUBLE = 4 };

/* One KeyValue whose AnyValue holds `vlen` bytes of field `vfield` (wire type `vwire`);
 * returns where the value's bytes go, or NULL when it does not fit (counted as dropped). */
static uint8_t *span_attr(struct otlp_span *s, const char *key, unsigned vfield, unsigned vwire,
                          size_t vlen, bool len_prefixed)
{
    size_t klen = strlen(key);
    size_t value_body = 1 + (len_prefixed ? pb_varint_len(vlen) : 0) + vlen;
    size_t kv_body = pb_len_field(klen) + pb_len_field(value_body);
    if (!span_room(s, 2 + pb_varint_len(kv_body) + kv_body, OTLP_SPAN_TAIL)) {
        s->dropped++;
        return NULL;
    }
    span_tag(s, SPAN_ATTRIBUTES, PB_LEN);
    span_varint(s, kv_body);
    span_tag(s, 1, PB_LEN); /* KeyValue.key */
    span_varint(s, klen);
    memcpy(s->p + s->len, key, klen);
    s->len += klen;
    span_tag(s, 2, PB_LEN); /* KeyValue.value */
    span_varint(s, value_body);
    span_tag(s, vfield, vwire);
    if (len_prefixed)
        span_varint(s, vlen);
    uint8_t *at = s->p + s->len;
    s->len += vlen;
    return at;
}

void otlp_attr_str(struct otlp_span *s, const char *key, const char *value)
{
    size_t n = strlen(value);
    uint8_t *at = span_attr(s, key, ANY_STRING, PB_LEN, n, true);
    if (at)
        memcpy(at, value, n);
}

void otlp_attr_int(struct otlp_span *s, const char *key, int64_t value)
{
    uint64_t v = (uint64_t)value; /* int64: two's complement, ten bytes when negative */
    uint8_t *at = span_attr(s, key, ANY_INT, PB_VARINT, pb_varint_len(v), false);
    if (at)
        pb_put_varint(at, v);
}

void otlp_attr_double(struct otlp_span *s, const char *key, double value)
{
    uint64_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint8_t *at = span_attr(s, key, ANY_DOUBLE, PB_FIXED64, 8, false);
    if (at)
        pb_put_fixed64(at, bits);
}

void otlp_attr_bool(struct otlp_span *s, const char *key, bool value)
{
    uint8_t *at = span_attr(s, key, ANY_BOOL, PB_VARINT, 1, false);
    if (at)
        *at = value ? 1 : 0;
}

size_t otlp_span_finish(struct otlp_span *s, enum otlp_status status, const char *message,
                        uint8_t trace_flags, bool remote_parent)
{
    /* The tail was kept for this: status (at most 2 + 1 + 2 + 40 + 2 bytes), the dropped
     * count (at most 6) and the flags (6). */
    size_t mlen = message ? strnlen(message, OTLP_STATUS_MESSAGE_MAX) : 0;
    if (status != OTLP_STATUS_UNSET || mlen) {
        size_t body = (mlen ? pb_len_field(mlen) : 0) + (status ? 2 : 0);
        span_tag(s, SPAN_STATUS, PB_LEN);
        span_varint(s, body);
        if (mlen) {
            span_tag(s, 2, PB_LEN); /* Status.message */
            span_varint(s, mlen);
            memcpy(s->p + s->len, message, mlen);
            s->len += mlen;
        }
        if (status) {
            span_tag(s, 3, PB_VARINT); /* Status.code */
            span_varint(s, (uint64_t)status);
        }
    }
    if (s->dropped) {
        span_tag(s, SPAN_DROPPED_ATTRIBUTES, PB_VARINT);
        span_varint(s, s->dropped);
    }
    uint32_t flags =
        trace_flags | OTLP_FLAGS_HAS_IS_REMOTE | (remote_parent ? OTLP_FLAGS_IS_REMOTE : 0);
    span_tag(s, SPAN_FLAGS, PB_FIXED32);
    for (int i = 0; i < 4; i++)
        s->p[s->len++] = (uint8_t)(flags >> (8 * i));
    return s->len;
}

/* ---- a request in a growing buffer ------------------------------------------------------------
 */

static int buf_varint(struct buf *b, uint64_t v)
{
    uint8_t tmp[10];
    return buf_append(b, tmp, pb_put_varint(tmp, v));
}

/* Tag and length of a length-delimited field (tags below 16). */
static int buf_len_head(struct buf *b, unsigned field, size_t len)
{
    int rc = buf_varint(b, (uint64_t)field << 3 | PB_LEN);
    return rc ? rc : buf_varint(b, len);
}

static int buf_len_field(struct buf *b, unsigned field, const void *data, size_t len)
{
    int rc = buf_len_head(b, field, len);
    return rc ? rc : buf_append(b, data, len);
}

int otlp_encode_resource(struct buf *out, const char *const *pairs, size_t n_pairs)
{
    for (size_t i = 0; i < n_pairs; i++) {
        const char *k = pairs[2 * i], *v = pairs[2 * i + 1];
        size_t klen = strlen(k), vlen = strlen(v);
        size_t any = pb_len_field(vlen);
        int rc = buf_len_head(out, 1, pb_len_field(klen) + pb_len_field(any)); /* attributes */
        if (!rc)
            rc = buf_len_field(out, 1, k, klen);
        if (!rc)
            rc = buf_len_head(out, 2, any);
        if (!rc)
            rc = buf_len_field(out, ANY_STRING, v, vlen);
        if (rc)
            return rc;
    }
    return 0;
}

int otlp_encode_request(struct buf *out, const struct buf *resource, const char *scope_name,
                        const char *scope_version, const struct otlp_span_ref *spans, size_t n)
{
    size_t name_len = strlen(scope_name), version_len = strlen(scope_version);
    size_t scope = pb_len_field(name_len) + pb_len_field(version_len);
    size_t scope_spans = pb_len_field(scope);
    for (size_t i = 0; i < n; i++)
        scope_spans += pb_len_field(spans[i].len);
    size_t resource_spans = pb_len_field(resource->len) + pb_len_field(scope_spans);
    int rc = buf_len_head(out, 1, resource_spans); /* ExportTraceServiceRequest.resource_spans */
    if (!rc)
        rc = buf_len_field(out, 1, resource->data, resource->len); /* ResourceSpans.resource */
    if (!rc)
        rc = buf_len_head(out, 2, scope_spans); /* ResourceSpans.scope_spans */
    if (!rc)
        rc = buf_len_head(out, 1, scope); /* ScopeSpans.scope */
    if (!rc)
        rc = buf_len_field(out, 1, scope_name, name_len);
    if (!rc)
        rc = buf_len_field(out, 2, scope_version, version_len);
    for (size_t i = 0; !rc && i < n; i++)
        rc = buf_len_field(out, 2, spans[i].data, spans[i].len); /* ScopeSpans.spans */
    return rc;
}

#include "trace/context.h"

#include <string.h>

static int trace_hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is not allowed */
}

/* n bytes from 2n lower-case hex digits; -1 on any other character. */
static int trace_unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = trace_hex_digit(s[2 * i]), lo = trace_hex_digit(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

bool trace_id_nonzero(const uint8_t *id, size_t n)
{
    uint8_t any = 0;
    for (size_t i = 0; i < n; i++)
        any |= id[i];
    return any != 0;
}

int trace_parse_traceparent(const char *s, struct trace_context *out)
{
    if (!s)
        return -1;
    size_t len = strnlen(s, TRACE_PARENT_LEN + 1);
    if (len < TRACE_PARENT_LEN)
        return -1;
    uint8_t version;
    if (trace_unhex(s, &version, 1) || version == 0xff)
        return -1;
    /* Version 00 is exactly 55 characters; a later one may carry more after a '-'. */
    if (len > TRACE_PARENT_LEN && (version == 0 || s[TRACE_PARENT_LEN] != '-'))
        return -1;
    if (s[2] != '-' || s[35] != '-' || s[52] != '-')
        return -1;
    struct trace_context c;
    if (trace_unhex(s + 3, c.trace_id, TRACE_ID_LEN) ||
        trace_unhex(s + 36, c.span_id, TRACE_SPAN_ID_LEN) || trace_unhex(s + 53, &c.flags, 1))
        return -1;
    if (!trace_id_nonzero(c.trace_id, TRACE_ID_LEN) ||
        !trace_id_nonzero(c.span_id, TRACE_SPAN_ID_LEN))
        return -1;
    *out = c;
    return 0;
}

static char *trace_put_hex(char *p, const uint8_t *in, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        *p++ = digits[in[i] >> 4];
        *p++ = digits[in[i] & 15];
    }
    return p;
}

void trace_format_traceparent(const struct trace_context *c, char out[TRACE_PARENT_LEN + 1])
{
    char *p = out;
    *p++ = '0';
    *p++ = '0';
    *p++ = '-';
    p = trace_put_hex(p, c->trace_id, TRACE_ID_LEN);
    *p++ = '-';
    p = trace_put_hex(p, c->span_id, TRACE_SPAN_ID_LEN);
    *p++ = '-';
    p = trace_put_hex(p, &c->flags, 1);
    *p = '\0';
}

bool trace_state_ok(const char *s)
{
    if (!s)
        return false;
    size_t i = 0;
    for (; s[i]; i++)
        if (i >= TRACE_STATE_MAX || (unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return false;
    return true;
}

bool trace_ratio_sampled(const uint8_t trace_id[TRACE_ID_LEN], double ratio)
{
    if (!(ratio > 0))
        return false;
    if (ratio >= 1)
        return true;
    uint64_t x = 0;
    for (int i = 8; i < 16; i++)
        x = x << 8 | trace_id[i];
    return (x >> 1) < (uint64_t)(ratio * 9223372036854775808.0);
}

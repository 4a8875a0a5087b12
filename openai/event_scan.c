#include "openai/event_scan.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct walk {
    const unsigned char *start, *end;
    const struct answer_rules *rules;
    void *ctx;
    size_t *at;
    unsigned char *scratch; /* EVENT_SCAN_MAX_DECODED bytes: a string with escapes, decoded */
};

#define ONES 0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

/* Which of 8 bytes a string scan must look at: '"', '\\', a control byte, or a byte of a
 * multi-byte UTF-8 sequence, flagged in their high bits (the zero-byte tests of Bit Twiddling
 * Hacks). None flagged means none there; the lowest flag is exact (a false flag, from a borrow,
 * can only sit above a true one), so on a little-endian machine it says where to look. */
static inline uint64_t block_special(uint64_t v)
{
    uint64_t q = v ^ (ONES * '"'), b = v ^ (ONES * '\\');
    return (((q - ONES) & ~q) | ((b - ONES) & ~b) | ((v - ONES * 0x20) & ~v) | v) & HIGHS;
}

/* The first byte at p a string scan must look at, or the last few bytes before end. */
static inline const unsigned char *skip_plain(const unsigned char *p, const unsigned char *end)
{
    while (end - p >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        uint64_t m = block_special(v);
        if (m) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
            p += __builtin_ctzll(m) >> 3;
#endif
            break;
        }
        p += 8;
    }
    return p;
}

static inline const unsigned char *skip_ws(const unsigned char *p, const unsigned char *end)
{
    /* JSON's four (yajl also takes \v and \f: those fall back, and yajl decides) */
    while (p < end && *p <= ' ' && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++; /* the first test alone sends the usual case (no white space) on */
    return p;
}

static inline bool cont(unsigned char c)
{
    return (c & 0xC0) == 0x80;
}

/* The length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong forms, no
 * surrogates, nothing past U+10FFFF), 0 when there is none. */
static size_t utf8_len(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t left = (size_t)(end - p);
    if (c >= 0xC2 && c <= 0xDF)
        return left >= 2 && cont(p[1]) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
        return left >= 3 && p[1] >= lo && p[1] <= hi && cont(p[2]) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
        return left >= 4 && p[1] >= lo && p[1] <= hi && cont(p[2]) && cont(p[3]) ? 4 : 0;
    }
    return 0;
}

/* Four hex digits at p, or -1. */
static long hex4(const unsigned char *p)
{
    long v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The rest of a string that has an escape at p (begin: its first byte), decoded into the
 * scratch buffer as yajl decodes it (yajl_string_decode: a surrogate pair is one 4-byte
 * character; a lone surrogate, which yajl turns into '?' or worse, falls back). */
static const unsigned char *read_escaped(struct walk *w, const unsigned char *begin,
                                         const unsigned char *p, const unsigned char **out,
                                         size_t *out_len)
{
    const unsigned char *end = w->end;
    unsigned char *d = w->scratch, *dend = w->scratch + EVENT_SCAN_MAX_DECODED;
    size_t k = (size_t)(p - begin);
    if (k > EVENT_SCAN_MAX_DECODED)
        return NULL;
    memcpy(d, begin, k);
    d += k;
    for (;;) {
        if (p == end)
            return NULL;
        unsigned c = *p;
        if (c == '"')
            break;
        if (c < 0x20)
            return NULL;
        if (c < 0x80 && c != '\\') {
            if (d == dend)
                return NULL;
            *d++ = (unsigned char)c;
            p++;
            continue;
        }
        if (c >= 0x80) {
            k = utf8_len(p, end);
            if (!k || (size_t)(dend - d) < k)
                return NULL;
            memcpy(d, p, k);
            d += k;
            p += k;
            continue;
        }
        if (end - p < 2 || dend - d < 4)
            return NULL;
        switch (p[1]) {
        case '"':
        case '\\':
        case '/':
            *d++ = p[1];
            break;
        case 'b':
            *d++ = '\b';
            break;
        case 'f':
            *d++ = '\f';
            break;
        case 'n':
            *d++ = '\n';
            break;
        case 'r':
            *d++ = '\r';
            break;
        case 't':
            *d++ = '\t';
            break;
        case 'u': {
            if (end - p < 6)
                return NULL;
            long cp = hex4(p + 2);
            if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
                return NULL;
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                long lo = end - p >= 12 && p[6] == '\\' && p[7] == 'u' ? hex4(p + 8) : -1;
                if (lo < 0xDC00 || lo > 0xDFFF)
                    return NULL;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                *d++ = (unsigned char)(0xF0 | cp >> 18);
                *d++ = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
                *d++ = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
                *d++ = (unsigned char)(0x80 | (cp & 0x3F));
                p += 6;
            } else if (cp < 0x80) {
                *d++ = (unsigned char)cp;
            } else if (cp < 0x800) {
                *d++ = (unsigned char)(0xC0 | cp >> 6);
                *d++ = (unsigned char)(0x80 | (cp & 0x3F));
            } else {
                *d++ = (unsigned char)(0xE0 | cp >> 12);
                *d++ = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
                *d++ = (unsigned char)(0x80 | (cp & 0x3F));
            }
            p += 4;
            break;
        }
        default:
            return NULL;
        }
        p += 2;
    }
    *out = w->scratch;
    *out_len = (size_t)(d - w->scratch);
    return p + 1;
}

/* The string whose opening quote is just before p: its decoded bytes (where they lie when it
 * has no escape) in *out; where it ends (the byte after its closing quote), or NULL. */
static inline const unsigned char *read_string(struct walk *w, const unsigned char *p,
                                               const unsigned char **out, size_t *out_len)
{
    const unsigned char *begin = p, *end = w->end;
    for (;;) {
        p = skip_plain(p, end);
        if (p == end)
            return NULL;
        unsigned c = *p;
        if (c == '"') {
            *out = begin;
            *out_len = (size_t)(p - begin);
            return p + 1;
        }
        if (c == '\\')
            return read_escaped(w, begin, p, out, out_len);
        if (c < 0x20)
            return NULL;
        if (c < 0x80) {
            p++;
        } else {
            size_t k = utf8_len(p, end);
            if (!k)
                return NULL;
            p += k;
        }
    }
}

static inline bool digit(const unsigned char *p, const unsigned char *end)
{
    return p < end && *p >= '0' && *p <= '9';
}

/* A number at p (RFC 8259's grammar, as yajl's lexer reads it): where it ends, or NULL. */
static const unsigned char *read_number(const unsigned char *p, const unsigned char *end)
{
    if (p < end && *p == '-')
        p++;
    if (!digit(p, end))
        return NULL;
    if (*p++ != '0')
        while (digit(p, end))
            p++;
    if (p < end && *p == '.') {
        if (!digit(++p, end))
            return NULL;
        while (digit(p, end))
            p++;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        if (!digit(p, end))
            return NULL;
        while (digit(p, end))
            p++;
    }
    return p;
}

enum event_scan_result event_scan_walk(const char *data, size_t n, const struct answer_rules *rules,
                                       void *ctx, size_t *at)
{
    unsigned char scratch[EVENT_SCAN_MAX_DECODED]; /* not zeroed: only what is written is read */
    struct walk w = {.start = (const unsigned char *)data, .rules = rules, .ctx = ctx, .at = at};
    w.end = w.start + n;
    w.scratch = scratch;
    const unsigned char *p = skip_ws(w.start, w.end), *end = w.end, *str, *next;
    size_t len;
    int depth = 0;
    uint64_t maps = 0; /* bit i: the container at depth i is an object */
    if (p == end || *p != '{')
        return EVENT_SCAN_FALLBACK;
    goto open_map;

value: /* p at a value's first byte */
    if (p == end)
        return EVENT_SCAN_FALLBACK;
    switch (*p) {
    case '{':
    open_map:
        if (depth == EVENT_SCAN_MAX_DEPTH)
            return EVENT_SCAN_FALLBACK;
        maps |= 1ull << depth++;
        *at = (size_t)(p + 1 - w.start);
        rules->on_start_map(ctx);
        p = skip_ws(p + 1, end);
        if (p < end && *p == '}')
            goto close;
        goto key;
    case '[':
        if (depth == EVENT_SCAN_MAX_DEPTH)
            return EVENT_SCAN_FALLBACK;
        maps &= ~(1ull << depth++);
        *at = (size_t)(p + 1 - w.start);
        rules->on_start_array(ctx);
        p = skip_ws(p + 1, end);
        if (p < end && *p == ']')
            goto close;
        goto value;
    case '"':
        next = read_string(&w, p + 1, &str, &len);
        if (!next)
            return EVENT_SCAN_FALLBACK;
        rules->on_string(ctx, str, len);
        p = next;
        goto after_value;
    case 't':
        if (end - p < 4 || memcmp(p, "true", 4))
            return EVENT_SCAN_FALLBACK;
        rules->on_bool(ctx, 1);
        p += 4;
        goto after_value;
    case 'f':
        if (end - p < 5 || memcmp(p, "false", 5))
            return EVENT_SCAN_FALLBACK;
        rules->on_bool(ctx, 0);
        p += 5;
        goto after_value;
    case 'n':
        if (end - p < 4 || memcmp(p, "null", 4))
            return EVENT_SCAN_FALLBACK;
        rules->on_null(ctx);
        p += 4;
        goto after_value;
    default:
        next = read_number(p, end);
        if (!next)
            return EVENT_SCAN_FALLBACK;
        rules->on_number(ctx, (const char *)p, (size_t)(next - p));
        p = next;
        goto after_value;
    }

after_value: /* a value ended inside the container at depth - 1 */
    p = skip_ws(p, end);
    if (p == end)
        return EVENT_SCAN_FALLBACK;
    if (*p == ',') {
        p = skip_ws(p + 1, end);
        if (maps >> (depth - 1) & 1)
            goto key;
        goto value;
    }
    if (*p != ((maps >> (depth - 1) & 1) ? '}' : ']'))
        return EVENT_SCAN_FALLBACK;

close: /* p at the byte that closes the container at depth - 1 */
    *at = (size_t)(p + 1 - w.start);
    if (maps >> (depth - 1) & 1)
        rules->on_end_map(ctx);
    else
        rules->on_end_array(ctx);
    p++;
    if (--depth > 0)
        goto after_value;
    return skip_ws(p, end) == end ? EVENT_SCAN_OK : EVENT_SCAN_FALLBACK;

key: /* p where a member's key must start */
    if (p == end || *p != '"' || !(next = read_string(&w, p + 1, &str, &len)))
        return EVENT_SCAN_FALLBACK;
    rules->on_key(ctx, str, len);
    p = skip_ws(next, end);
    if (p == end || *p != ':')
        return EVENT_SCAN_FALLBACK;
    p = skip_ws(p + 1, end);
    goto value;
}

enum event_scan_result event_scan(struct answer_scan *s, enum answer_kind kind, const char *data,
                                  size_t n)
{
    /* As answer_scan_init_kind, but the frames: a frame is written whole when its container
     * opens and read only while it is open. */
    size_t frames_at = offsetof(struct answer_scan, frames),
           frames_end = frames_at + sizeof s->frames;
    memset(s, 0, frames_at);
    memset((char *)s + frames_end, 0, sizeof *s - frames_end);
    s->kind = kind;
    if (event_scan_walk(data, n, &answer_rules, s, &s->fed) != EVENT_SCAN_OK)
        return EVENT_SCAN_FALLBACK;
    s->fed = n; /* as answer_scan_event leaves it */
    return EVENT_SCAN_OK;
}

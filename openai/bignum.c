#include "openai/bignum.h"

#include "base/buf.h"
#include "base/error.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* The marker as a decoded string, its NUL included (sizeof - 1 is its length). */
static const char mark[] = "\0tollgate-bignum:";
#define MARK_LEN (sizeof mark - 1)

/* Where the integers out of jansson's range lie in the text. */
struct big_scan {
    const char *base;
    size_t *at, *len, n, cap;
    bool nomem;
};

static bool out_of_range(const char *num, size_t len)
{
    if (memchr(num, '.', len) || memchr(num, 'e', len) || memchr(num, 'E', len))
        return false;
    bool neg = num[0] == '-';
    size_t digits = len - neg;
    if (digits != 19)
        return digits > 19;
    return memcmp(num + neg, neg ? "9223372036854775808" : "9223372036854775807", 19) > 0;
}

static int on_number(void *ctx, const char *num, size_t len)
{
    struct big_scan *s = ctx;
    if (!out_of_range(num, len))
        return 1;
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 16;
        size_t *at = realloc(s->at, cap * sizeof *at);
        if (at)
            s->at = at;
        size_t *ln = at ? realloc(s->len, cap * sizeof *ln) : NULL;
        if (!at || !ln) {
            s->nomem = true;
            return 0;
        }
        s->len = ln;
        s->cap = cap;
    }
    s->at[s->n] = (size_t)(num - s->base);
    s->len[s->n++] = len;
    return 1;
}

static const yajl_callbacks big_callbacks = {.yajl_number = on_number};

/* Counts the strings in the tree that start with the marker, and those holding a NUL without
 * being one (keys cannot hold a NUL): jansson refuses a NUL in a body without big integers, so
 * this path must too. */
static void count_marks(json_t *v, size_t *marks, size_t *nuls, size_t depth)
{
    if (depth > 256)
        return; /* the body's depth was checked before; this only bounds the recursion */
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
        if (n >= MARK_LEN && !memcmp(s, mark, MARK_LEN) && !memchr(s + 1, 0, n - 1))
            (*marks)++;
        else if (memchr(s, 0, n))
            (*nuls)++;
    } else if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach (v, key, item)
            count_marks(item, marks, nuls, depth + 1);
    } else if (json_is_array(v)) {
        size_t i;
        json_t *item;
        json_array_foreach (v, i, item)
            count_marks(item, marks, nuls, depth + 1);
    }
}

int openai_parse_bignums(const char *data, size_t len, json_t **out, char *msg, size_t msg_len)
{
    *out = NULL;
    struct big_scan s = {.base = data};
    yajl_handle h = yajl_alloc(&big_callbacks, NULL, &s);
    if (!h) {
        snprintf(msg, msg_len, "out of memory");
        return TG_ERR_NOMEM;
    }
    yajl_config(h, yajl_dont_validate_strings, 1);
    /* One call with the whole text: yajl hands each number as a pointer into it. */
    if (yajl_parse(h, (const unsigned char *)data, len) == yajl_status_ok)
        yajl_complete_parse(h);
    yajl_free(h);
    int rc = TG_ERR_INVALID_JSON;
    struct buf text;
    buf_init(&text, len + s.n * (MARK_LEN + 16) + 1);
    if (s.nomem) {
        rc = TG_ERR_NOMEM;
        snprintf(msg, msg_len, "out of memory");
        goto out;
    }
    size_t from = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (buf_append(&text, data + from, s.at[i] - from) ||
            buf_append(&text, "\"" OPENAI_BIGNUM_MARK, 1 + strlen(OPENAI_BIGNUM_MARK)) ||
            buf_append(&text, data + s.at[i], s.len[i]) || buf_append(&text, "\"", 1))
            goto oom;
        from = s.at[i] + s.len[i];
    }
    if (buf_append(&text, data + from, len - from))
        goto oom;
    json_error_t jerr;
    /* The markers hold a NUL, which jansson takes only when told. */
    *out = json_loadb(text.data ? text.data : "", text.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL,
                      &jerr);
    if (!*out) {
        snprintf(msg, msg_len,
                 "We could not parse the JSON body of your request: %s (line %d, column %d).",
                 jerr.text, jerr.line, jerr.column);
        goto out;
    }
    size_t marks = 0, nuls = 0;
    count_marks(*out, &marks, &nuls, 0);
    if (nuls) {
        json_decref(*out);
        *out = NULL;
        snprintf(msg, msg_len,
                 "We could not parse the JSON body of your request: a string holds a NUL "
                 "character (\\u0000), which is not accepted.");
        goto out;
    }
    if (marks != s.n) {
        json_decref(*out);
        *out = NULL;
        rc = TG_ERR_INVALID_VALUE;
        snprintf(msg, msg_len,
                 "The request body holds a string that starts with the text the "
                 "gateway reserves for large integers.");
        goto out;
    }
    rc = 0;
    goto out;
oom:
    rc = TG_ERR_NOMEM;
    snprintf(msg, msg_len, "out of memory");
out:
    buf_free(&text);
    free(s.at);
    free(s.len);
    return rc;
}

char *openai_dump_body(const json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT);
    if (!text || !strstr(text, OPENAI_BIGNUM_MARK))
        return text;
    /* "\u0000tollgate-bignum:123" -> 123, in place: the text only shrinks. */
    const size_t ml = strlen(OPENAI_BIGNUM_MARK);
    char *w = text, *r = text, *hit;
    char *from = r;
    while ((hit = strstr(from, OPENAI_BIGNUM_MARK))) {
        /* A marker is always a whole string: its opening quote is just before it. The same text
         * elsewhere is a caller's string spelling it out ("\\u0000..." in the dump: a NUL
         * anywhere but at the start of a marker is refused when the body is read), kept. */
        if (hit == text || hit[-1] != '"') {
            from = hit + 1;
            continue;
        }
        size_t keep = (size_t)(hit - r) - 1;
        memmove(w, r, keep);
        w += keep;
        r = hit + ml;
        char *end = strchr(r, '"');
        size_t digits = end ? (size_t)(end - r) : strlen(r);
        memmove(w, r, digits);
        w += digits;
        r += digits + (end ? 1 : 0);
        from = r;
    }
    memmove(w, r, strlen(r) + 1);
    return text;
}

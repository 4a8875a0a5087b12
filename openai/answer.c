#include "openai/answer.h"

#include "openai/responses.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* The most bytes of one unfinished token held back (callers cap whole answers far lower). */
#define ANSWER_MAX_HELD ((size_t)1 << 30)

/* Where the bytes so far end in the document: yajl is at a token's first byte. */
static size_t at_byte(const struct answer_scan *s)
{
    return s->handle ? s->fed + yajl_get_bytes_consumed(s->handle) : s->fed; /* answer_rules */
}

/* The frame that holds the value being reported (the innermost open container). */
static struct answer_frame *top(struct answer_scan *s)
{
    return s->depth > 0 && s->depth <= ANSWER_MAX_DEPTH ? &s->frames[s->depth - 1] : NULL;
}

static bool key_is(const struct answer_scan *s, int level, const char *key)
{
    /* the first byte first: most keys differ there, and strcmp is a call per event per rule */
    return level < s->depth && level < ANSWER_MAX_DEPTH && s->frames[level].is_map &&
           s->frames[level].key[0] == key[0] && !strcmp(s->frames[level].key, key);
}

static bool array_at(const struct answer_scan *s, int level)
{
    return level < s->depth && level < ANSWER_MAX_DEPTH && !s->frames[level].is_map;
}

/* choices[i].message / choices[i].delta, the levels under which generated text lives. */
static bool in_choice_message(const struct answer_scan *s)
{
    return key_is(s, 0, "choices") && array_at(s, 1) &&
           (key_is(s, 2, "message") || key_is(s, 2, "delta"));
}

/* A value completed: arrays count their elements. */
static void value_done(struct answer_scan *s)
{
    struct answer_frame *f = top(s);
    if (f && !f->is_map)
        f->count++;
}

static int on_string(void *ctx, const unsigned char *str, size_t len)
{
    (void)str;
    struct answer_scan *s = ctx;
    if (s->kind == ANSWER_KIND_RESPONSES) {
        responses_scan_string(s, str, len);
        value_done(s);
        return 1;
    }
    bool text = false;
    if (s->depth == 4 && in_choice_message(s))
        text = key_is(s, 3, "content") || key_is(s, 3, "reasoning_content") ||
               key_is(s, 3, "reasoning") || key_is(s, 3, "refusal");
    else if (s->depth == 3)
        text = key_is(s, 0, "choices") && array_at(s, 1) && key_is(s, 2, "text");
    else if (s->depth == 5 && in_choice_message(s) && key_is(s, 3, "function_call"))
        text = key_is(s, 4, "name") || key_is(s, 4, "arguments");
    else if (s->depth == 7 && in_choice_message(s) && key_is(s, 3, "tool_calls") &&
             array_at(s, 4) && key_is(s, 5, "function"))
        text = key_is(s, 6, "name") || key_is(s, 6, "arguments");
    if (text)
        s->delivered += len;
    if (s->depth == 3 && key_is(s, 0, "choices") && array_at(s, 1) &&
        key_is(s, 2, "finish_reason") && len > 0)
        s->finished++;
    value_done(s);
    return 1;
}

/* An integer's text (already checked by yajl's lexer: '-'? digits), saturated at the ends of
 * long long: a node claiming 10^30 tokens is absurd, not malformed. */
static long long integer_value(const char *num, size_t len)
{
    bool neg = len > 0 && num[0] == '-';
    long long v = 0;
    for (size_t i = neg; i < len; i++) {
        int d = num[i] - '0';
        if (v > (LLONG_MAX - d) / 10)
            return neg ? LLONG_MIN : LLONG_MAX;
        v = v * 10 + d;
    }
    return neg ? -v : v;
}

static void on_integer(struct answer_scan *s, long long v)
{
    if (s->kind == ANSWER_KIND_RESPONSES) {
        responses_scan_integer(s, v);
        return;
    }
    if (s->depth == 2 && key_is(s, 0, "usage") && s->frames[1].is_map) {
        if (!strcmp(s->frames[1].key, "prompt_tokens")) {
            s->prompt_tokens = v;
            s->has_usage = true;
        } else if (!strcmp(s->frames[1].key, "completion_tokens")) {
            s->completion_tokens = v;
        }
    } else if (s->depth == 3 && key_is(s, 0, "usage") && key_is(s, 1, "prompt_tokens_details") &&
               s->frames[2].is_map && !strcmp(s->frames[2].key, "cached_tokens")) {
        s->cached_tokens = v;
    } else if (s->depth == 3 && key_is(s, 0, "choices") && array_at(s, 1) &&
               key_is(s, 2, "index") && v >= 0 && v < 128 && (unsigned)v + 1 > s->n_choices) {
        s->n_choices = (unsigned)v + 1;
    }
}

/* Numbers come as text (yajl's number callback), so none is converted but the few billing
 * reads, and none is an error for being out of range (yajl's integer and double callbacks
 * fail the whole document on an overflow). */
static int on_number(void *ctx, const char *num, size_t len)
{
    struct answer_scan *s = ctx;
    size_t i = 0;
    while (i < len && num[i] != '.' && num[i] != 'e' && num[i] != 'E')
        i++; /* one pass: a number's text is short, three memchr calls cost more */
    if (i == len)
        on_integer(s, integer_value(num, len));
    value_done(s);
    return 1;
}

static int on_scalar(void *ctx)
{
    value_done(ctx);
    return 1;
}

static int on_bool(void *ctx, int b)
{
    (void)b;
    return on_scalar(ctx);
}

static int on_open(struct answer_scan *s, bool is_map)
{
    if (s->kind == ANSWER_KIND_RESPONSES)
        responses_scan_open(s, is_map);
    if (s->depth == 0)
        s->object = is_map;
    else if (s->depth == 1 && is_map && key_is(s, 0, "error"))
        s->has_error = true;
    else if (s->depth == 1 && is_map && key_is(s, 0, "usage"))
        s->usage_start = at_byte(s) - 1; /* the '{' just read */
    else if (s->depth == 1 && !is_map &&
             key_is(s, 0, s->kind == ANSWER_KIND_DATA ? "data" : "choices"))
        s->has_choices = true;
    if (s->depth < ANSWER_MAX_DEPTH)
        s->frames[s->depth] = (struct answer_frame){.is_map = is_map};
    s->depth++;
    return 1;
}

static int on_start_map(void *ctx)
{
    return on_open(ctx, true);
}

static int on_start_array(void *ctx)
{
    return on_open(ctx, false);
}

static int on_close(void *ctx)
{
    struct answer_scan *s = ctx;
    if (s->kind == ANSWER_KIND_RESPONSES)
        responses_scan_close(s);
    if (s->depth == 2 && array_at(s, 1) &&
        key_is(s, 0, s->kind == ANSWER_KIND_DATA ? "data" : "choices"))
        s->choices_len = s->frames[1].count;
    else if (s->depth == 2 && s->frames[1].is_map && key_is(s, 0, "usage"))
        s->usage_end = at_byte(s); /* just past the '}' */
    s->depth--;
    value_done(s);
    return 1;
}

static int on_key(void *ctx, const unsigned char *key, size_t len)
{
    struct answer_scan *s = ctx;
    struct answer_frame *f = top(s);
    if (f) {
        if (len >= sizeof f->key)
            len = 0; /* too long to be one we look for */
        memcpy(f->key, key, len);
        f->key[len] = '\0';
        if (s->depth == 1 && !strcmp(f->key, "usage")) {
            /* A repeated "usage": the last one is the one a JSON parser reads. */
            s->has_usage = false;
            s->prompt_tokens = s->completion_tokens = s->cached_tokens = 0;
            s->usage_start = s->usage_end = 0;
        }
    }
    return 1;
}

static const yajl_callbacks answer_callbacks = {
    .yajl_null = on_scalar,
    .yajl_boolean = on_bool,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_key,
    .yajl_end_map = on_close,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_close,
};

const struct answer_rules answer_rules = {
    .on_null = on_scalar,
    .on_bool = on_bool,
    .on_number = on_number,
    .on_string = on_string,
    .on_start_map = on_start_map,
    .on_key = on_key,
    .on_end_map = on_close,
    .on_start_array = on_start_array,
    .on_end_array = on_close,
};

int answer_scan_init(struct answer_scan *s, struct arena *a)
{
    return answer_scan_init_kind(s, a, ANSWER_KIND_CHOICES);
}

int answer_scan_init_kind(struct answer_scan *s, struct arena *a, enum answer_kind kind)
{
    memset(s, 0, sizeof *s);
    s->kind = kind;
    buf_init(&s->held, ANSWER_MAX_HELD);
    yajl_alloc_funcs funcs;
    if (a)
        arena_yajl_funcs(a, &funcs);
    s->handle = yajl_alloc(&answer_callbacks, a ? &funcs : NULL, s);
    return s->handle ? 0 : -1;
}

/* Hands bytes to yajl. */
static int parse(struct answer_scan *s, const unsigned char *p, size_t n)
{
    if (!n)
        return 0;
    yajl_status st = yajl_parse(s->handle, p, n);
    s->fed += n;
    return st == yajl_status_ok ? 0 : -1;
}

static bool ends_token(unsigned char c)
{
    return c == '{' || c == '}' || c == '[' || c == ']' || c == ',' || c == ':' || c == ' ' ||
           c == '\t' || c == '\n' || c == '\r';
}

/* The longest prefix of p that ends where no token is left unfinished (after a structural
 * byte, white space or a string's closing quote): its length, 0 when there is none. Carries
 * the string state over all of p. */
static size_t token_cut(struct answer_scan *s, const unsigned char *p, size_t n)
{
    size_t cut = 0, i = 0;
    while (i < n) {
        if (s->in_string) {
            if (s->escaped) {
                s->escaped = false;
                i++;
                continue;
            }
            while (i < n && p[i] != '"' && p[i] != '\\')
                i++;
            if (i == n)
                break;
            if (p[i] == '\\') {
                s->escaped = true;
            } else {
                s->in_string = false;
                cut = i + 1;
            }
        } else if (p[i] == '"') {
            s->in_string = true;
        } else if (ends_token(p[i])) {
            cut = i + 1;
        }
        i++;
    }
    return cut;
}

int answer_scan_feed(struct answer_scan *s, const char *bytes, size_t n)
{
    const unsigned char *p = (const unsigned char *)bytes;
    size_t cut = token_cut(s, p, n);
    if (cut) {
        /* Whatever token was open ends in this piece: yajl reads it once more, to its end. */
        if (parse(s, (const unsigned char *)s->held.data, s->held.len) || parse(s, p, cut))
            return -1;
        buf_reset(&s->held);
        s->open = 0;
        p += cut;
        n -= cut;
    }
    if (!n)
        return 0;
    /* A token left open at the end: yajl would reread all it holds of it on every piece, so
     * it gets the next part only once that is as long as what it holds (doubling: linear). */
    if (s->held.len + n < s->open)
        return buf_append(&s->held, p, n) ? -1 : 0;
    if (s->held.len) {
        if (buf_append(&s->held, p, n))
            return -1;
        p = (const unsigned char *)s->held.data;
        n = s->held.len;
    }
    int rc = parse(s, p, n);
    s->open += n;
    buf_reset(&s->held);
    return rc;
}

int answer_scan_finish(struct answer_scan *s)
{
    int rc = parse(s, (const unsigned char *)s->held.data, s->held.len);
    buf_reset(&s->held);
    s->open = 0;
    if (rc)
        return -1;
    return yajl_complete_parse(s->handle) == yajl_status_ok && s->depth == 0 ? 0 : -1;
}

void answer_scan_free(struct answer_scan *s)
{
    if (s->handle)
        yajl_free(s->handle);
    s->handle = NULL;
    buf_free(&s->held);
}

/* Unit tests for gateway/sse: the incremental Server-Sent Events parser. Streams are fed
 * whole, split in two at every byte, and one byte at a time; every way must yield the same
 * events. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "openai/sse.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS 32
/* Feeds a string literal (without its NUL). */
#define FEED(p, lit, c) sse_feed((p), (lit), sizeof(lit) - 1, collect, (c))

struct got_event {
    char *raw;
    size_t raw_len;
    char *data;
    size_t data_len;
    bool has_data;
};

struct collector {
    struct got_event ev[MAX_EVENTS];
    size_t n;
    size_t stop_after; /* return stop_rc once this many events arrived; 0 = never */
    int stop_rc;
};

static char *dup_bytes(const char *p, size_t n)
{
    char *out = malloc(n + 1);
    assert_non_null(out);
    memcpy(out, p, n);
    out[n] = '\0';
    return out;
}

static int collect(void *ctx, const struct sse_event *ev)
{
    struct collector *c = ctx;
    assert_true(c->n < MAX_EVENTS);
    assert_non_null(ev->raw);
    assert_non_null(ev->data);
    struct got_event *g = &c->ev[c->n++];
    g->raw = dup_bytes(ev->raw, ev->raw_len);
    g->raw_len = ev->raw_len;
    g->data = dup_bytes(ev->data, ev->data_len);
    g->data_len = ev->data_len;
    g->has_data = ev->has_data;
    if (c->stop_after && c->n == c->stop_after)
        return c->stop_rc;
    return 0;
}

static void collector_free(struct collector *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->ev[i].raw);
        free(c->ev[i].data);
    }
    memset(c, 0, sizeof *c);
}

static void assert_same_events(const struct collector *a, const struct collector *b)
{
    assert_int_equal(a->n, b->n);
    for (size_t i = 0; i < a->n; i++) {
        assert_int_equal(a->ev[i].raw_len, b->ev[i].raw_len);
        assert_memory_equal(a->ev[i].raw, b->ev[i].raw, a->ev[i].raw_len);
        assert_int_equal(a->ev[i].data_len, b->ev[i].data_len);
        assert_memory_equal(a->ev[i].data, b->ev[i].data, a->ev[i].data_len);
        assert_int_equal(a->ev[i].has_data, b->ev[i].has_data);
    }
}

/* Feeds `s` in the pieces given by `cuts` (ascending offsets) and collects the events. */
static void feed_cuts(const char *s, size_t n, const size_t *cuts, size_t n_cuts,
                      struct collector *c)
{
    struct sse_parser p;
    sse_init(&p, 4096);
    size_t at = 0;
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t to = i < n_cuts ? cuts[i] : n;
        assert_int_equal(sse_feed(&p, s + at, to - at, collect, c), SSE_OK);
        at = to;
    }
    assert_false(sse_pending(&p));
    sse_free(&p);
}

static void feed_whole(const char *s, struct collector *c)
{
    feed_cuts(s, strlen(s), NULL, 0, c);
}

/* A realistic chat completion stream, with a keep-alive comment, a named event with an id,
 * a usage chunk and the [DONE] sentinel. */
#define CHUNK(delta, finish)                                                                       \
    "{\"id\":\"chatcmpl-9xYz\",\"object\":\"chat.completion.chunk\",\"created\":1717000000,"       \
    "\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\","               \
    "\"choices\":[{\"index\":0,\"delta\":" delta ",\"logprobs\":null,\"finish_reason\":" finish    \
    "}]}"

static const char *const openai_data[] = {
    CHUNK("{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}", "null"),
    CHUNK("{\"content\":\"Hello\"}", "null"),
    CHUNK("{\"content\":\" there! \\\"quoted\\\" caf\xc3\xa9\"}", "null"),
    CHUNK("{}", "\"stop\""),
    "{\"id\":\"chatcmpl-9xYz\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29}}",
    "[DONE]",
};

/* clang-format off */
static const char openai_stream[] =
    ": keep-alive\n"
    "\n"
    "data: " CHUNK("{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null}", "null") "\n"
    "\n"
    "data: " CHUNK("{\"content\":\"Hello\"}", "null") "\n"
    "\n"
    "event: message\n"
    "id: 3\n"
    "data: " CHUNK("{\"content\":\" there! \\\"quoted\\\" caf\xc3\xa9\"}", "null") "\n"
    "\n"
    "event: message\n" /* named, as every Responses API event is */
    "data: " CHUNK("{}", "\"stop\"") "\n"
    "\n"
    "data: {\"id\":\"chatcmpl-9xYz\",\"object\":\"chat.completion.chunk\",\"choices\":[],"
    "\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":10,\"total_tokens\":29}}\n"
    "\n"
    "data: [DONE]\n"
    "\n";
/* clang-format on */

/* The stream with every "\n" turned into `eol`. */
static char *with_eol(const char *s, const char *eol)
{
    size_t el = strlen(eol), n = 0;
    for (const char *p = s; *p; p++)
        n += *p == '\n' ? el : 1;
    char *out = malloc(n + 1), *o = out;
    assert_non_null(out);
    for (const char *p = s; *p; p++) {
        if (*p == '\n') {
            memcpy(o, eol, el);
            o += el;
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static void check_openai_events(const struct collector *c)
{
    size_t n_data = sizeof openai_data / sizeof openai_data[0];
    assert_int_equal(c->n, 1 + n_data);
    assert_false(c->ev[0].has_data);
    assert_string_equal(c->ev[0].raw, ": keep-alive\n\n");
    assert_int_equal(c->ev[0].data_len, 0);
    for (size_t i = 0; i < n_data; i++) {
        const struct got_event *g = &c->ev[i + 1];
        assert_true(g->has_data);
        assert_int_equal(g->data_len, strlen(openai_data[i]));
        assert_string_equal(g->data, openai_data[i]);
        /* Normalised: LF line ends, a blank line at the end, never a CR. */
        assert_true(g->raw_len >= 2);
        assert_memory_equal(g->raw + g->raw_len - 2, "\n\n", 2);
        assert_null(memchr(g->raw, '\r', g->raw_len));
        assert_non_null(strstr(g->raw, openai_data[i]));
    }
    assert_string_equal(c->ev[3].raw,
                        "event: message\nid: 3\ndata: " CHUNK(
                            "{\"content\":\" there! \\\"quoted\\\" caf\xc3\xa9\"}", "null") "\n\n");
    assert_string_equal(c->ev[4].raw, "event: message\ndata: " CHUNK("{}", "\"stop\"") "\n\n");
    assert_string_equal(c->ev[c->n - 1].raw, "data: [DONE]\n\n");
    assert_string_equal(c->ev[c->n - 1].data, "[DONE]");
}

/* Two feeds at every split point, then one byte at a time: the same events each time. */
static void check_every_split(const char *s)
{
    size_t n = strlen(s);
    struct collector whole = {0};
    feed_whole(s, &whole);
    check_openai_events(&whole);

    for (size_t i = 0; i <= n; i++) {
        struct collector c = {0};
        feed_cuts(s, n, &i, 1, &c);
        assert_same_events(&whole, &c);
        collector_free(&c);
    }

    size_t *cuts = malloc(n * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    struct collector c = {0};
    feed_cuts(s, n, cuts, n, &c);
    assert_same_events(&whole, &c);
    collector_free(&c);
    free(cuts);
    collector_free(&whole);
}

static void test_openai_stream_every_split_lf(void **state)
{
    (void)state;
    check_every_split(openai_stream);
}

static void test_openai_stream_every_split_crlf(void **state)
{
    (void)state;
    char *s = with_eol(openai_stream, "\r\n");
    check_every_split(s);
    free(s);
}

static void test_openai_stream_every_split_cr(void **state)
{
    (void)state;
    char *s = with_eol(openai_stream, "\r");
    check_every_split(s);
    free(s);
}

/* All three line endings in one stream give the same events as LF alone. */
static void test_mixed_line_endings(void **state)
{
    (void)state;
    struct collector lf = {0}, mixed = {0};
    feed_whole("data: a\ndata: b\n\n: c\n\ndata: d\n\n", &lf);
    feed_whole("data: a\r\ndata: b\r\r: c\n\r\ndata: d\r\r", &mixed);
    assert_int_equal(lf.n, 3);
    assert_string_equal(lf.ev[0].data, "a\nb");
    assert_false(lf.ev[1].has_data);
    assert_string_equal(lf.ev[2].data, "d");
    assert_same_events(&lf, &mixed);
    collector_free(&lf);
    collector_free(&mixed);
}

/* A CRLF cut between the CR and the LF is one line end, not a line end and a blank line. */
static void test_crlf_split_between_feeds(void **state)
{
    (void)state;
    struct sse_parser p;
    struct collector c = {0};
    sse_init(&p, 1024);
    assert_int_equal(FEED(&p, "data: a\r", &c), SSE_OK);
    assert_int_equal(FEED(&p, "\ndata: b\r\n\r", &c), SSE_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(FEED(&p, "\n", &c), SSE_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.ev[0].data, "a\nb");
    assert_string_equal(c.ev[0].raw, "data: a\ndata: b\n\n");
    assert_false(sse_pending(&p));
    /* The next event is unaffected by the swallowed LF. */
    assert_int_equal(FEED(&p, "data: c\r\n\r\n", &c), SSE_OK);
    assert_int_equal(c.n, 2);
    assert_string_equal(c.ev[1].data, "c");
    collector_free(&c);
    sse_free(&p);
}

/* An empty feed (a zero-length read) between the CR and the LF of a CRLF must not change how
 * the LF is read: the input is the same bytes, only split differently. */
static void test_crlf_split_with_empty_feed_between(void **state)
{
    (void)state;
    struct sse_parser p;
    struct collector c = {0};
    sse_init(&p, 1024);
    assert_int_equal(FEED(&p, "data: a\r", &c), SSE_OK);
    assert_int_equal(FEED(&p, "", &c), SSE_OK);
    assert_int_equal(FEED(&p, "\ndata: b\r\n\r\n", &c), SSE_OK);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.ev[0].data, "a\nb");
    collector_free(&c);
    sse_free(&p);
}

static void test_multiline_data_joined(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole("data: line1\ndata: line2\ndata:\ndata: line4\n\n", &c);
    assert_int_equal(c.n, 1);
    assert_true(c.ev[0].has_data);
    assert_string_equal(c.ev[0].data, "line1\nline2\n\nline4");
    assert_int_equal(c.ev[0].data_len, strlen("line1\nline2\n\nline4"));
    assert_string_equal(c.ev[0].raw, "data: line1\ndata: line2\ndata:\ndata: line4\n\n");
    collector_free(&c);
}

static void test_comment_only_event(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole(": ping\n\n:another comment\n: and more\n\n", &c);
    assert_int_equal(c.n, 2);
    assert_false(c.ev[0].has_data);
    assert_int_equal(c.ev[0].data_len, 0);
    assert_string_equal(c.ev[0].data, "");
    assert_string_equal(c.ev[0].raw, ": ping\n\n");
    assert_false(c.ev[1].has_data);
    assert_string_equal(c.ev[1].raw, ":another comment\n: and more\n\n");
    collector_free(&c);
}

/* Other fields are relayed in raw but do not count as data. */
static void test_non_data_fields(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole("event: ping\nid: 7\nretry: 1000\ndatax: no\n\n", &c);
    assert_int_equal(c.n, 1);
    assert_false(c.ev[0].has_data);
    assert_string_equal(c.ev[0].data, "");
    assert_string_equal(c.ev[0].raw, "event: ping\nid: 7\nretry: 1000\ndatax: no\n\n");
    collector_free(&c);
}

static void test_data_without_space(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole("data:{\"a\":1}\n\ndata:  two spaces\n\ndata\n\n", &c);
    assert_int_equal(c.n, 3);
    assert_true(c.ev[0].has_data);
    assert_string_equal(c.ev[0].data, "{\"a\":1}");
    /* Only the one space after the colon is part of the syntax. */
    assert_string_equal(c.ev[1].data, " two spaces");
    /* A bare "data" line is data with an empty value. */
    assert_true(c.ev[2].has_data);
    assert_string_equal(c.ev[2].data, "");
    assert_int_equal(c.ev[2].data_len, 0);
    collector_free(&c);
}

static void test_done(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole("data: [DONE]\n\n", &c);
    assert_int_equal(c.n, 1);
    assert_true(c.ev[0].has_data);
    assert_int_equal(c.ev[0].data_len, 6);
    assert_memory_equal(c.ev[0].data, "[DONE]", 6);
    assert_string_equal(c.ev[0].raw, "data: [DONE]\n\n");
    collector_free(&c);
}

static void test_stray_blank_lines(void **state)
{
    (void)state;
    struct collector c = {0};
    feed_whole("\n\r\n\n\ndata: x\n\n\n\n", &c);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.ev[0].data, "x");
    collector_free(&c);
}

/* One line longer than the cap. */
static void test_event_over_cap_long_line(void **state)
{
    (void)state;
    char s[200];
    snprintf(s, sizeof s, "data: %0100d\n\n", 0);
    for (size_t cut = 0; cut <= strlen(s); cut++) {
        struct sse_parser p;
        struct collector c = {0};
        sse_init(&p, 64);
        int r1 = sse_feed(&p, s, cut, collect, &c);
        int r2 = r1 ? r1 : sse_feed(&p, s + cut, strlen(s) - cut, collect, &c);
        assert_int_equal(r2, SSE_ETOOBIG);
        assert_int_equal(c.n, 0);
        sse_free(&p);
    }
}

/* Many short lines whose sum passes the cap. */
static void test_event_over_cap_many_lines(void **state)
{
    (void)state;
    char s[400] = "";
    for (int i = 0; i < 30; i++)
        strcat(s, "data: xyz\n");
    strcat(s, "\n");
    struct sse_parser p;
    struct collector c = {0};
    sse_init(&p, 64);
    int rc = SSE_OK;
    for (size_t i = 0; s[i] && rc == SSE_OK; i++)
        rc = sse_feed(&p, s + i, 1, collect, &c);
    assert_int_equal(rc, SSE_ETOOBIG);
    assert_int_equal(c.n, 0);
    sse_free(&p);
}

static int count_events(void *ctx, const struct sse_event *ev)
{
    size_t *n = ctx;
    assert_true(ev->has_data);
    assert_int_equal(ev->data_len, 40);
    (*n)++;
    return 0;
}

/* The cap bounds one event, not the stream: many events just under it all pass. */
static void test_cap_is_per_event(void **state)
{
    (void)state;
    const char *ev = "data: 0123456789012345678901234567890123456789\n\n";
    struct sse_parser p;
    size_t n = 0;
    sse_init(&p, 64);
    for (int i = 0; i < 100; i++)
        assert_int_equal(sse_feed(&p, ev, strlen(ev), count_events, &n), SSE_OK);
    assert_int_equal(n, 100);
    sse_free(&p);
}

/* A one-line event of exactly the cap fits; one byte more does not. */
static void test_event_exactly_at_cap(void **state)
{
    (void)state;
    char line[65];
    memset(line, 'x', 64);
    memcpy(line, "data: ", 6);
    line[64] = '\0';
    char s[80];
    snprintf(s, sizeof s, "%s\n\n", line);
    struct sse_parser p;
    struct collector c = {0};
    sse_init(&p, 64);
    assert_int_equal(sse_feed(&p, s, strlen(s), collect, &c), SSE_OK);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.ev[0].data_len, 58);
    collector_free(&c);
    sse_free(&p);

    snprintf(s, sizeof s, "%sx\n\n", line);
    sse_init(&p, 64);
    assert_int_equal(sse_feed(&p, s, strlen(s), collect, &c), SSE_ETOOBIG);
    assert_int_equal(c.n, 0);
    sse_free(&p);
}

static void test_pending_after_cut(void **state)
{
    (void)state;
    struct sse_parser p;
    struct collector c = {0};
    sse_init(&p, 1024);
    assert_false(sse_pending(&p));
    assert_int_equal(FEED(&p, "data: {\"choices\"", &c), SSE_OK);
    assert_true(sse_pending(&p)); /* half a line */
    assert_int_equal(FEED(&p, ":[]}\n", &c), SSE_OK);
    assert_true(sse_pending(&p)); /* a whole line, but no blank line yet */
    assert_int_equal(c.n, 0);
    assert_int_equal(FEED(&p, "\n", &c), SSE_OK);
    assert_false(sse_pending(&p));
    assert_int_equal(c.n, 1);
    assert_string_equal(c.ev[0].data, "{\"choices\":[]}");
    /* Blank lines alone leave nothing pending. */
    assert_int_equal(FEED(&p, "\n\n", &c), SSE_OK);
    assert_false(sse_pending(&p));
    assert_int_equal(FEED(&p, ": ka", &c), SSE_OK);
    assert_true(sse_pending(&p));
    collector_free(&c);
    sse_free(&p);
}

static void test_callback_stops_feed(void **state)
{
    (void)state;
    const char *s = "data: one\n\ndata: two\n\ndata: three\n\n";
    struct sse_parser p;
    struct collector c = {.stop_after = 1, .stop_rc = -42};
    sse_init(&p, 1024);
    assert_int_equal(sse_feed(&p, s, strlen(s), collect, &c), -42);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.ev[0].data, "one");
    collector_free(&c);
    sse_free(&p);

    /* Stopping on the second event of a byte-at-a-time feed. */
    struct collector c2 = {.stop_after = 2, .stop_rc = -7};
    sse_init(&p, 1024);
    int rc = 0;
    size_t i = 0;
    for (; s[i] && rc == 0; i++)
        rc = sse_feed(&p, s + i, 1, collect, &c2);
    assert_int_equal(rc, -7);
    assert_int_equal(c2.n, 2);
    assert_int_equal(i, strlen("data: one\n\ndata: two\n\n"));
    collector_free(&c2);
    sse_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_stream_every_split_lf),
        cmocka_unit_test(test_openai_stream_every_split_crlf),
        cmocka_unit_test(test_openai_stream_every_split_cr),
        cmocka_unit_test(test_mixed_line_endings),
        cmocka_unit_test(test_crlf_split_between_feeds),
        cmocka_unit_test(test_crlf_split_with_empty_feed_between),
        cmocka_unit_test(test_multiline_data_joined),
        cmocka_unit_test(test_comment_only_event),
        cmocka_unit_test(test_non_data_fields),
        cmocka_unit_test(test_data_without_space),
        cmocka_unit_test(test_done),
        cmocka_unit_test(test_stray_blank_lines),
        cmocka_unit_test(test_event_over_cap_long_line),
        cmocka_unit_test(test_event_over_cap_many_lines),
        cmocka_unit_test(test_cap_is_per_event),
        cmocka_unit_test(test_event_exactly_at_cap),
        cmocka_unit_test(test_pending_after_cut),
        cmocka_unit_test(test_callback_stops_feed),
    };
    return cmocka_run_group_tests_name("sse", tests, NULL, NULL);
}

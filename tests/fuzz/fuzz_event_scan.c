/* Fuzz target: one stream event's JSON through the single-pass scanner (openai/event_scan.c),
 * differentially against yajl, the parser it stands in for.
 *
 * Input: a control byte whose low two bits choose the answer kind (chat/completions,
 * Responses, a data list), then the event's bytes.
 *
 * Checks, whenever the scanner decides (EVENT_SCAN_OK; a fallback is always allowed):
 * - yajl accepts the same bytes, and reports the same callbacks in the same order with the
 *   same decoded strings and keys, the same number texts, and the same offsets at every
 *   container's start and end (a digest of each side's calls, and their count);
 * - the facts the relay reads are the same as the yajl scan's (answer_scan_event in a fresh
 *   scan, as gateway/phase_relay.c runs it): object, error, usage and its numbers and span,
 *   choices, finish reasons, delivered text, a Responses event's type and response id. */
#include "tests/fuzz/answer_twice.h"

#include "openai/answer.h"
#include "openai/answer_event.h"
#include "openai/event_scan.h"
#include "openai/responses.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

/* What one parser reported, folded into a digest (FNV-1a). */
struct record {
    uint64_t digest;
    size_t calls;
    size_t at;             /* the scanner's offset (event_scan_walk's *at) */
    yajl_handle handle;    /* yajl's, for its offset */
    bool first_was_object; /* the first call opened an object */
};

static void mix(struct record *r, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        r->digest = (r->digest ^ b[i]) * 0x100000001b3ull;
}

static void note(struct record *r, char tag, const void *p, size_t n)
{
    if (!r->calls)
        r->first_was_object = tag == '{';
    r->calls++;
    mix(r, &tag, 1);
    mix(r, &n, sizeof n);
    mix(r, p, n);
}

/* A container's bounds: where the parser stood when it reported them. */
static void note_at(struct record *r, char tag)
{
    size_t at = r->handle ? yajl_get_bytes_consumed(r->handle) : r->at;
    note(r, tag, &at, sizeof at);
}

static int rec_null(void *ctx)
{
    note(ctx, 'n', NULL, 0);
    return 1;
}

static int rec_bool(void *ctx, int b)
{
    note(ctx, b ? 't' : 'f', NULL, 0);
    return 1;
}

static int rec_number(void *ctx, const char *num, size_t len)
{
    note(ctx, '0', num, len);
    return 1;
}

static int rec_string(void *ctx, const unsigned char *str, size_t len)
{
    note(ctx, '"', str, len);
    return 1;
}

static int rec_key(void *ctx, const unsigned char *key, size_t len)
{
    note(ctx, 'k', key, len);
    return 1;
}

static int rec_start_map(void *ctx)
{
    note_at(ctx, '{');
    return 1;
}

static int rec_end_map(void *ctx)
{
    note_at(ctx, '}');
    return 1;
}

static int rec_start_array(void *ctx)
{
    note_at(ctx, '[');
    return 1;
}

static int rec_end_array(void *ctx)
{
    note_at(ctx, ']');
    return 1;
}

static const struct answer_rules rec_rules = {
    .on_null = rec_null,
    .on_bool = rec_bool,
    .on_number = rec_number,
    .on_string = rec_string,
    .on_start_map = rec_start_map,
    .on_key = rec_key,
    .on_end_map = rec_end_map,
    .on_start_array = rec_start_array,
    .on_end_array = rec_end_array,
};

static const yajl_callbacks rec_callbacks = {
    .yajl_null = rec_null,
    .yajl_boolean = rec_bool,
    .yajl_number = rec_number,
    .yajl_string = rec_string,
    .yajl_start_map = rec_start_map,
    .yajl_map_key = rec_key,
    .yajl_end_map = rec_end_map,
    .yajl_start_array = rec_start_array,
    .yajl_end_array = rec_end_array,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const enum answer_kind kinds[4] = {ANSWER_KIND_CHOICES, ANSWER_KIND_RESPONSES,
                                              ANSWER_KIND_DATA, ANSWER_KIND_CHOICES};
    if (size == 0)
        return 0;
    enum answer_kind kind = kinds[data[0] & 3];
    size_t n = size - 1;
    /* A copy of exactly the event's bytes: a read past them is a sanitizer's error. */
    char *bytes = malloc(n ? n : 1);
    FUZZ_CHECK(bytes != NULL);
    memcpy(bytes, data + 1, n);

    struct record fast = {.digest = 0xcbf29ce484222325ull};
    enum event_scan_result rc = event_scan_walk(bytes, n, &rec_rules, &fast, &fast.at);

    struct record slow = {.digest = 0xcbf29ce484222325ull};
    slow.handle = yajl_alloc(&rec_callbacks, NULL, &slow);
    FUZZ_CHECK(slow.handle != NULL);
    bool slow_ok =
        (!n || yajl_parse(slow.handle, (const unsigned char *)bytes, n) == yajl_status_ok) &&
        yajl_complete_parse(slow.handle) == yajl_status_ok;
    yajl_free(slow.handle);

    struct answer_scan a, b;
    enum event_scan_result facts_rc = event_scan(&a, kind, bytes, n);
    FUZZ_CHECK(facts_rc == rc);
    if (rc == EVENT_SCAN_OK) {
        FUZZ_CHECK(slow_ok && slow.first_was_object && fast.first_was_object);
        FUZZ_CHECK(fast.calls == slow.calls && fast.digest == slow.digest);

        FUZZ_CHECK(answer_scan_init_kind(&b, NULL, kind) == 0);
        bool b_ok = answer_scan_event(&b, bytes, n) == 0 && b.object;
        answer_scan_free(&b);
        FUZZ_CHECK(b_ok);
        fuzz_answer_same(&a, &b);
        FUZZ_CHECK(a.depth == 0 && a.handle == NULL);
        FUZZ_CHECK(responses_event_kind(&a) == responses_event_kind(&b));
        if (a.usage_end)
            FUZZ_CHECK(a.usage_start < a.usage_end && a.usage_end <= n &&
                       bytes[a.usage_start] == '{' && bytes[a.usage_end - 1] == '}');
    } else {
        FUZZ_CHECK(rc == EVENT_SCAN_FALLBACK);
    }
    free(bytes);
    return 0;
}

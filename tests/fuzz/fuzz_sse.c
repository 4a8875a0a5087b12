/* Fuzz target: a backend's event stream, as gateway/phase_relay.c reads it.
 *
 * Input: a control byte and chunk lengths (tests/fuzz/fuzz.h, struct fuzz_split), then the
 * stream. The control byte's high bits choose the event cap (0: the gateway's 1 MiB, else a
 * few hundred bytes at most, so the cap is reached) and chat or completions.
 *
 * The stream is fed to the SSE parser (openai/sse.c) whole, then in the chunks the input
 * chose. Each event of the first pass goes where the relay sends it: its data is scanned
 * (openai/answer.c) in an arena of its own and added to a stream capture (cache/cache.c),
 * which is finished at `[DONE]`.
 *
 * Checks: both passes see the same events and end the same way; every event is normalised
 * (ends in a blank line, no CR), within the cap, with NUL-terminated data; a finished capture
 * is a JSON object. */
#include "tests/fuzz/fuzz.h"

#include "base/arena.h"
#include "cache/cache.h"
#include "openai/answer.h"
#include "openai/sse.h"

#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#define GATEWAY_MAX_EVENT (1u << 20) /* REQUEST_STREAM_MAX_EVENT, gateway/pipeline.h */

struct seen {
    size_t max;    /* the event cap */
    size_t n;      /* events */
    uint64_t hash; /* of every event's raw bytes, data and has_data, in order */
    bool relay;    /* pass the events on as the relay does */
    bool done;     /* saw [DONE], or an event that ends the relay */
    struct cache_capture capture;
};

static uint64_t mix(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

static void relay(struct seen *s, const struct sse_event *ev)
{
    if (!ev->has_data || s->done)
        return;
    if (ev->data_len == 6 && !memcmp(ev->data, "[DONE]", 6)) {
        s->done = true;
        size_t len = 0;
        char *text =
            cache_capture_finish(&s->capture, json_pack("{s:i}", "prompt_tokens", 1), &len);
        if (text) {
            json_t *doc = json_loadb(text, len, 0, NULL);
            FUZZ_CHECK(json_is_object(doc));
            json_decref(doc);
            free(text);
        }
        return;
    }
    struct answer_scan sc;
    struct arena event_arena = {0};
    FUZZ_CHECK(answer_scan_init(&sc, &event_arena) == 0);
    bool ok = answer_scan_feed(&sc, ev->data, ev->data_len) == 0 && answer_scan_finish(&sc) == 0 &&
              sc.object;
    answer_scan_free(&sc);
    arena_release(&event_arena);
    if (!ok || sc.has_error)
        s->done = true; /* the relay fails the stream here */
    else
        cache_capture_event(&s->capture, ev->data, ev->data_len);
}

static int on_event(void *ctx, const struct sse_event *ev)
{
    struct seen *s = ctx;
    FUZZ_CHECK(ev->raw && ev->raw_len >= 2 && ev->raw_len <= s->max + 2);
    FUZZ_CHECK(ev->raw[ev->raw_len - 1] == '\n' && ev->raw[ev->raw_len - 2] == '\n');
    FUZZ_CHECK(!memchr(ev->raw, '\r', ev->raw_len));
    FUZZ_CHECK(ev->data && ev->data_len <= s->max && ev->data[ev->data_len] == '\0');
    FUZZ_CHECK(ev->has_data || ev->data_len == 0);
    s->n++;
    s->hash = mix(s->hash, &ev->raw_len, sizeof ev->raw_len);
    s->hash = mix(s->hash, ev->raw, ev->raw_len);
    s->hash = mix(s->hash, &ev->data_len, sizeof ev->data_len);
    s->hash = mix(s->hash, ev->data, ev->data_len);
    s->hash = mix(s->hash, &ev->has_data, sizeof ev->has_data);
    if (s->relay)
        relay(s, ev);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_split split;
    fuzz_split_init(&split, &data, &size);
    const char *bytes = (const char *)data;
    size_t max = split.extra >> 1 ? (split.extra >> 1) * 16 : GATEWAY_MAX_EVENT;
    bool chat = split.extra & 1;

    struct seen whole = {.max = max, .hash = 0xcbf29ce484222325ull, .relay = true};
    cache_capture_init(&whole.capture, chat, GATEWAY_MAX_EVENT);
    struct sse_parser p;
    sse_init(&p, max);
    int rc_whole = sse_feed(&p, size ? bytes : "", size, on_event, &whole);
    bool pending_whole = sse_pending(&p);
    sse_free(&p);
    cache_capture_free(&whole.capture);

    struct seen pieces = {.max = max, .hash = 0xcbf29ce484222325ull};
    sse_init(&p, max);
    int rc_pieces = 0;
    for (size_t at = 0; at < size && !rc_pieces;) {
        size_t n = fuzz_split_next(&split, size - at);
        rc_pieces = sse_feed(&p, bytes + at, n, on_event, &pieces);
        at += n;
    }
    bool pending_pieces = sse_pending(&p);
    sse_free(&p);

    FUZZ_CHECK(rc_whole == rc_pieces);
    FUZZ_CHECK(whole.n == pieces.n && whole.hash == pieces.hash);
    if (!rc_whole)
        FUZZ_CHECK(pending_whole == pending_pieces);
    return 0;
}

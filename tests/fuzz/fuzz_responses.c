/* Fuzz target: a Responses API answer (a whole response object or one typed stream event), as
 * the relay scans it for billing (openai/answer.c with openai/responses.c's rules).
 *
 * Input: a control byte and chunk lengths (tests/fuzz/fuzz.h, struct fuzz_split), then the
 * answer. It is scanned whole on malloc, then fed in the chunks the input chose in a request
 * arena, as the gateway scans whole answers; a scan stops at its first error.
 *
 * Checks: both scans accept or refuse alike and, when they accept, find the same facts (usage,
 * cached tokens, delivered text, output items, the event's type, the response id); delivered
 * text is never more bytes than the answer; the id and type are NUL-terminated within their
 * fields; a completed response finishes at most its output items. */
#include "tests/fuzz/fuzz.h"

#include "base/arena.h"
#include "openai/answer.h"
#include "openai/responses.h"

#include <stdbool.h>
#include <string.h>

static void check_same(const struct answer_scan *a, const struct answer_scan *b)
{
    FUZZ_CHECK(a->object == b->object && a->has_error == b->has_error);
    FUZZ_CHECK(a->has_usage == b->has_usage && a->prompt_tokens == b->prompt_tokens &&
               a->completion_tokens == b->completion_tokens &&
               a->cached_tokens == b->cached_tokens);
    FUZZ_CHECK(a->delivered == b->delivered && a->n_choices == b->n_choices);
    FUZZ_CHECK(a->has_choices == b->has_choices && a->choices_len == b->choices_len &&
               a->finished == b->finished);
    FUZZ_CHECK(a->usage_start == b->usage_start && a->usage_end == b->usage_end);
    FUZZ_CHECK(!strcmp(a->event_type, b->event_type) && !strcmp(a->response_id, b->response_id));
    FUZZ_CHECK(responses_event_kind(a) == responses_event_kind(b));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_split split;
    fuzz_split_init(&split, &data, &size);
    const char *bytes = size ? (const char *)data : "";

    struct answer_scan whole;
    FUZZ_CHECK(answer_scan_init_kind(&whole, NULL, ANSWER_KIND_RESPONSES) == 0);
    bool ok_whole = answer_scan_feed(&whole, bytes, size) == 0 && answer_scan_finish(&whole) == 0;
    answer_scan_free(&whole);

    struct arena arena = {0};
    struct answer_scan pieces;
    FUZZ_CHECK(answer_scan_init_kind(&pieces, &arena, ANSWER_KIND_RESPONSES) == 0);
    bool ok_pieces = true;
    for (size_t at = 0; at < size && ok_pieces;) {
        size_t n = fuzz_split_next(&split, size - at);
        ok_pieces = answer_scan_feed(&pieces, bytes + at, n) == 0;
        at += n;
    }
    ok_pieces = ok_pieces && answer_scan_finish(&pieces) == 0;
    answer_scan_free(&pieces);
    arena_release(&arena);

    FUZZ_CHECK(ok_whole == ok_pieces);
    if (ok_whole) {
        check_same(&whole, &pieces);
        FUZZ_CHECK(whole.delivered <= size);
        FUZZ_CHECK(whole.n_choices <= 1);
        FUZZ_CHECK(whole.depth == 0);
        FUZZ_CHECK(memchr(whole.event_type, '\0', sizeof whole.event_type) != NULL);
        FUZZ_CHECK(memchr(whole.response_id, '\0', sizeof whole.response_id) != NULL);
    }
    return 0;
}

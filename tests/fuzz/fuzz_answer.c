/* Fuzz target: a backend's JSON answer (a whole answer or one stream chunk), as the relay
 * scans it for billing (openai/answer.c).
 *
 * Input: a control byte and chunk lengths (tests/fuzz/fuzz.h, struct fuzz_split), then the
 * answer. It is scanned whole with the scanner on malloc, then fed in the chunks the input
 * chose with the scanner in a request arena (base/arena.h), as the gateway scans whole
 * answers; a scan stops at its first error, as the relay does.
 *
 * Checks: both scans accept or refuse alike and, when they accept, find the same numbers;
 * delivered text is never more bytes than the answer; at most 128 choices are counted; the
 * usage object's span holds exactly the usage a JSON parser reads. */
#include "tests/fuzz/answer_twice.h"

#include "base/arena.h"
#include "openai/answer.h"

#include <jansson.h>
#include <stdbool.h>
#include <string.h>

/* The usage span (what gateway/phase_relay.c splices the settled usage over) is the bytes of
 * the top-level "usage" object a JSON parser reads, when jansson reads the document at all
 * (yajl also takes what jansson refuses: \u0000, nesting past 2048). */
static void check_usage_span(const char *bytes, size_t size, const struct answer_scan *s)
{
    if (!s->usage_end)
        return;
    FUZZ_CHECK(s->usage_start < s->usage_end && s->usage_end <= size);
    FUZZ_CHECK(bytes[s->usage_start] == '{' && bytes[s->usage_end - 1] == '}');
    json_t *doc = json_loadb(bytes, size, 0, NULL);
    if (doc) {
        json_t *span = json_loadb(bytes + s->usage_start, s->usage_end - s->usage_start, 0, NULL);
        FUZZ_CHECK(span && json_equal(span, json_object_get(doc, "usage")));
        json_decref(span);
    }
    json_decref(doc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_split split;
    fuzz_split_init(&split, &data, &size);
    const char *bytes = size ? (const char *)data : "";

    struct answer_scan whole, pieces;
    if (fuzz_answer_twice(ANSWER_KIND_CHOICES, bytes, size, &split, &whole, &pieces)) {
        fuzz_answer_same(&whole, &pieces);
        FUZZ_CHECK(whole.delivered <= size);
        FUZZ_CHECK(whole.n_choices <= 128);
        FUZZ_CHECK(whole.depth == 0);
        check_usage_span(bytes, size, &whole);
    }
    return 0;
}

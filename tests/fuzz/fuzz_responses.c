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
#include "tests/fuzz/answer_twice.h"

#include "base/arena.h"
#include "openai/answer.h"
#include "openai/responses.h"

#include <stdbool.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_split split;
    fuzz_split_init(&split, &data, &size);
    const char *bytes = size ? (const char *)data : "";

    struct answer_scan whole, pieces;
    if (fuzz_answer_twice(ANSWER_KIND_RESPONSES, bytes, size, &split, &whole, &pieces)) {
        fuzz_answer_same(&whole, &pieces);
        FUZZ_CHECK(responses_event_kind(&whole) == responses_event_kind(&pieces));
        FUZZ_CHECK(whole.delivered <= size);
        FUZZ_CHECK(whole.n_choices <= 1);
        FUZZ_CHECK(whole.depth == 0);
        FUZZ_CHECK(memchr(whole.event_type, '\0', sizeof whole.event_type) != NULL);
        FUZZ_CHECK(memchr(whole.response_id, '\0', sizeof whole.response_id) != NULL);
    }
    return 0;
}

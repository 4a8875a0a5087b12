/* What fuzz_answer and fuzz_responses share: an answer scanned twice, whole with the scanner on
 * malloc and then in the pieces the input chose with the scanner in a request arena (as the
 * gateway scans whole answers; a scan stops at its first error, as the relay does), and the
 * check that both found the same facts. */
#ifndef TOLLGATE_FUZZ_ANSWER_TWICE_H
#define TOLLGATE_FUZZ_ANSWER_TWICE_H

#include "tests/fuzz/fuzz.h"

#include "base/arena.h"
#include "openai/answer.h"

#include <stdbool.h>
#include <string.h>

/* Scans `bytes` whole into *whole and in pieces into *pieces (both freed; their facts kept);
 * FUZZ_CHECKs that both accept or refuse alike and returns whether they accepted. */
static inline bool fuzz_answer_twice(enum answer_kind kind, const char *bytes, size_t size,
                                     struct fuzz_split *split, struct answer_scan *whole,
                                     struct answer_scan *pieces)
{
    FUZZ_CHECK(answer_scan_init_kind(whole, NULL, kind) == 0);
    bool ok_whole = answer_scan_feed(whole, bytes, size) == 0 && answer_scan_finish(whole) == 0;
    answer_scan_free(whole);

    struct arena arena = {0};
    FUZZ_CHECK(answer_scan_init_kind(pieces, &arena, kind) == 0);
    bool ok_pieces = true;
    for (size_t at = 0; at < size && ok_pieces;) {
        size_t n = fuzz_split_next(split, size - at);
        ok_pieces = answer_scan_feed(pieces, bytes + at, n) == 0;
        at += n;
    }
    ok_pieces = ok_pieces && answer_scan_finish(pieces) == 0;
    answer_scan_free(pieces);
    arena_release(&arena);

    FUZZ_CHECK(ok_whole == ok_pieces);
    return ok_whole;
}

/* The facts of two scans of the same answer are the same. */
static inline void fuzz_answer_same(const struct answer_scan *a, const struct answer_scan *b)
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
}

#endif

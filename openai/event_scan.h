/* One stream event's JSON read in a single pass, with no allocation: the fast path of the
 * relay's per-event scan (openai/answer_event.h's yajl scan is the slow one).
 *
 * The relay needs a few facts of every event (a JSON object? an "error" member? usage, its
 * numbers and where it lies, choices, finish reasons, text delivered, a Responses event's type
 * and response id). answer.c's rules find them from a parser's callbacks; here a hand-written
 * parser calls the same rules (answer_rules) instead of yajl, without yajl's handle, lexer
 * buffers and per-event arena.
 *
 * It validates the whole text (RFC 8259: structure, strings with their escapes and strict
 * UTF-8, numbers, nesting up to EVENT_SCAN_MAX_DEPTH) but decides only the plain case: a
 * document that is one JSON object it reads whole. Anything else (not an object, malformed,
 * nested too deep, an escaped string longer than EVENT_SCAN_MAX_DECODED, a lone surrogate
 * escape, white space JSON does not have) is EVENT_SCAN_FALLBACK, and the caller runs the
 * yajl scan, which gives the verdict. So correctness never depends on this path covering a
 * case, only speed does; tests/fuzz/fuzz_event_scan.c checks that whenever it decides, yajl
 * reports the same callbacks and the same facts.
 *
 * No I/O, no global state: thread-safe. */
#ifndef TOLLGATE_EVENT_SCAN_H
#define TOLLGATE_EVENT_SCAN_H

#include "openai/answer.h"

#include <stddef.h>

/* Containers open at once: deeper documents fall back (no event nests past a few levels). */
#define EVENT_SCAN_MAX_DEPTH 64
/* The longest string with escapes decoded (for the rules) on the stack; longer ones fall
 * back. Strings without escapes are handed over where they lie, whatever their length. */
#define EVENT_SCAN_MAX_DECODED 2048

enum event_scan_result {
    EVENT_SCAN_OK = 0,       /* one JSON object, read whole: the facts are filled */
    EVENT_SCAN_FALLBACK = 1, /* not decided here: scan it with yajl (answer_scan_event) */
};

/* Scans the whole document data (n bytes, need not be NUL-terminated) into *s for an answer of
 * `kind`. EVENT_SCAN_OK: *s holds what answer_scan_init_kind(s, NULL, kind) then
 * answer_scan_event(s, data, n) would have found (s->object true; s->handle NULL, nothing to
 * free). EVENT_SCAN_FALLBACK: *s holds nothing of use. */
enum event_scan_result event_scan(struct answer_scan *s, enum answer_kind kind, const char *data,
                                  size_t n);

/* The parse itself, with any rules: calls them as yajl would for the same text (ctx passed to
 * each; *at set to the offset just past the byte last read before each call). EVENT_SCAN_OK
 * when data is one JSON object read whole; on EVENT_SCAN_FALLBACK the calls made so far are
 * to be discarded. The tests record the calls to compare them with yajl's. */
enum event_scan_result event_scan_walk(const char *data, size_t n, const struct answer_rules *rules,
                                       void *ctx, size_t *at);

#endif

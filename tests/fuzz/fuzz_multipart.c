/* Fuzz target: an upload's multipart/form-data body, as the gateway scans it for
 * /v1/audio/transcriptions (openai/multipart.c).
 *
 * Input: a control byte and chunk lengths (tests/fuzz/fuzz.h, struct fuzz_split), then the
 * Content-Type header's value up to the first newline, then the body.
 *
 * The body is scanned whole, then in the chunks the input chose. Checks: both scans end the
 * same way with the same fields, file byte count and offsets; a scan that succeeds consumed
 * the whole body, counted at most its bytes as the file's, and each captured value is at most
 * MULTIPART_VALUE_MAX bytes and is the body's bytes at its offset. */
#include "tests/fuzz/fuzz.h"

#include "openai/multipart.h"

#include <stdbool.h>
#include <string.h>

static int scan_pieces(struct multipart *m, const char *ct, const char *body, size_t size,
                       struct fuzz_split *split)
{
    int rc = multipart_init(m, ct);
    for (size_t at = 0; at < size && !rc;) {
        size_t n = fuzz_split_next(split, size - at);
        rc = multipart_feed(m, body + at, n);
        at += n;
    }
    return rc ? rc : multipart_finish(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_split split;
    fuzz_split_init(&split, &data, &size);
    const uint8_t *nl = memchr(data, '\n', size);
    size_t ct_len = nl ? (size_t)(nl - data) : size;
    char *ct = fuzz_cstr(data, ct_len);
    const char *body = nl ? (const char *)nl + 1 : "";
    size_t body_len = nl ? size - ct_len - 1 : 0;

    static struct multipart whole, pieces;
    int rc_whole = multipart_init(&whole, ct);
    if (!rc_whole && body_len)
        rc_whole = multipart_feed(&whole, body, body_len);
    if (!rc_whole)
        rc_whole = multipart_finish(&whole);
    int rc_pieces = scan_pieces(&pieces, ct, body, body_len, &split);

    FUZZ_CHECK(rc_whole == rc_pieces);
    if (!rc_whole) {
        FUZZ_CHECK(whole.offset == body_len && pieces.offset == body_len);
        FUZZ_CHECK(whole.has_file == pieces.has_file);
        FUZZ_CHECK(whole.file_bytes == pieces.file_bytes && whole.file_bytes <= body_len);
        for (int f = 0; f < MULTIPART_FIELDS; f++) {
            const struct multipart_value *a = &whole.values[f], *b = &pieces.values[f];
            FUZZ_CHECK(a->seen == b->seen && a->len == b->len && a->offset == b->offset);
            FUZZ_CHECK(a->len <= MULTIPART_VALUE_MAX && !memcmp(a->text, b->text, a->len));
            if (a->seen) {
                FUZZ_CHECK(a->offset + a->len <= body_len);
                FUZZ_CHECK(!memcmp(body + a->offset, a->text, a->len));
            }
        }
    } else {
        FUZZ_CHECK(whole.msg[0] && pieces.msg[0]);
    }
    free(ct);
    return 0;
}

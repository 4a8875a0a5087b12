/*
 * buf: a growable byte buffer with a mandatory size cap.
 *
 * Appends never fail loudly: the first allocation failure or cap overrun sets
 * `failed` and every later append is a no-op, so builders can write a whole
 * answer and check once at the end. Not thread-safe; one owner at a time.
 */
#ifndef MOCKNODE_BUF_H
#define MOCKNODE_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
    char *data; /* NUL-terminated when not failed and len > 0 */
    size_t len;
    size_t cap;
    size_t max; /* len never exceeds this */
    bool failed;
};

/* Starts an empty buffer that may grow up to `max` bytes. Allocates nothing. */
void buf_init(struct buf *b, size_t max);

/* Frees the storage and leaves an empty buffer with the same cap. */
void buf_free(struct buf *b);

/* Empties the buffer but keeps its storage for reuse. Clears `failed`. */
void buf_reset(struct buf *b);

void buf_add(struct buf *b, const void *p, size_t n);
void buf_adds(struct buf *b, const char *s);
void buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends `n` bytes of `s` as a quoted JSON string, escaping as RFC 8259 needs. */
void buf_add_json_str(struct buf *b, const char *s, size_t n);

/*
 * Hands the storage to the caller (free() it) and leaves the buffer empty.
 * Returns NULL when the buffer failed; an empty buffer yields an allocated "".
 */
char *buf_steal(struct buf *b, size_t *len);

#endif

/* A growable byte buffer whose size cap is mandatory.
 *
 * Every buffer that holds data from the network is a `struct buf` with a `max` set at
 * init time; growing past it is an error the caller turns into 413/502, never a crash.
 * Not thread-safe: a buffer belongs to one request on one worker. */
#ifndef TOLLGATE_BUF_H
#define TOLLGATE_BUF_H

#include <stddef.h>

enum buf_result {
    BUF_OK = 0,
    BUF_ENOMEM = -1,
    BUF_ETOOBIG = -2, /* the append would pass the cap; nothing was appended */
};

struct buf {
    char *data; /* NUL-terminated when len > 0 (one spare byte is always kept) */
    size_t len;
    size_t cap; /* allocated bytes */
    size_t max; /* most bytes the buffer may ever hold */
};

void buf_init(struct buf *b, size_t max);
int buf_append(struct buf *b, const void *p, size_t n);
int buf_append_str(struct buf *b, const char *s);
/* printf-style append; BUF_ETOOBIG when the result would pass the cap. */
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drop the first n bytes (n <= len). */
void buf_consume(struct buf *b, size_t n);
void buf_reset(struct buf *b);
/* Hand the storage to the caller (free() it); the buffer is left empty. */
char *buf_steal(struct buf *b, size_t *len);
void buf_free(struct buf *b);

/* Length of the well-formed UTF-8 sequence at p (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF; `avail` bytes readable), or 0 when there is none. */
size_t buf_utf8_len(const unsigned char *p, size_t avail);

/* Lowercase hex of n bytes into out, which must hold 2n + 1 characters (NUL-terminated). */
void buf_hex(const unsigned char *in, size_t n, char *out);

#endif

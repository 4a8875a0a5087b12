/* SHA-256 and constant-time comparison, for keys and cache keys.
 *
 * Thread-safe; no global state. */
#ifndef TOLLGATE_DIGEST_H
#define TOLLGATE_DIGEST_H

#include <stdbool.h>
#include <stddef.h>

#define DIGEST_SHA256_LEN 32

/* SHA-256 of `len` bytes at `data`. */
void digest_sha256(const void *data, size_t len, unsigned char out[DIGEST_SHA256_LEN]);

/* Compares two buffers in time that does not depend on where they differ. */
bool digest_equal(const void *a, const void *b, size_t len);

#endif

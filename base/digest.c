#include "base/digest.h"

#include <nettle/memops.h>
#include <nettle/sha2.h>

/* Nettle, not OpenSSL: it is already in the process (GnuTLS's, via libmicrohttpd and
 * libcurl), has no global state to set up, and uses the CPU's SHA instructions. OpenSSL 3's
 * provider tables alone touched 2 MiB of library pages. */
void digest_sha256(const void *data, size_t len, unsigned char out[DIGEST_SHA256_LEN])
{
    struct sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, len, data);
    sha256_digest(&ctx, SHA256_DIGEST_SIZE, out);
}

bool digest_equal(const void *a, const void *b, size_t len)
{
    return memeql_sec(a, b, len);
}

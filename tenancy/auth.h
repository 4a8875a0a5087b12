/* Caller authentication by API key.
 *
 * A presented key is hashed with SHA-256 at once and only the digest is compared, in
 * constant time, against every configured key, so neither the key nor the position of a
 * match leaks through timing. The plaintext is never stored or logged. Thread-safe: reads
 * the immutable config only. Redis-held keys plug in behind auth_check() (AUTH_PENDING). */
#ifndef TOLLGATE_AUTH_H
#define TOLLGATE_AUTH_H

#include "config/config.h"

enum auth_result {
    AUTH_OK = 0,
    AUTH_OPEN = 1,     /* no static keys and no Redis: the gateway is open */
    AUTH_MISSING = -1, /* no usable Authorization header */
    AUTH_INVALID = -2, /* matches no static key (with Redis configured: look it up there) */
};

struct auth_identity {
    const char *key_name;     /* points into the config; NULL when open */
    unsigned metric_key;      /* the key's metric label index */
    unsigned char digest[32]; /* SHA-256 of the presented key, when there was one */
};

/* Checks an Authorization header value ("Bearer <key>"); NULL means absent. */
enum auth_result auth_check(const struct config *cfg, const char *authorization,
                            struct auth_identity *who);

/* The key from an Authorization header value, or NULL; *len is set. */
const char *auth_bearer(const char *authorization, size_t *len);

#endif

/* Resolving a presented key that is not a static one: the worker's key cache first, then
 * Redis (HGETALL tg:key:<sha256hex>, see redis/keyspace.h), asynchronously, so the
 * worker never waits. Not thread-safe: one worker's cache and Redis client. */
#ifndef TOLLGATE_KEYAUTH_H
#define TOLLGATE_KEYAUTH_H

#include "tenancy/keycache.h"

#include <stddef.h>

struct redis_client;
struct keyauth_lookup;

enum keyauth_result {
    KEYAUTH_OK = 0,
    KEYAUTH_PENDING = 1,  /* the callback will say */
    KEYAUTH_UNKNOWN = -1, /* no such key (or revoked) */
    KEYAUTH_EXPIRED = -2,
    KEYAUTH_UNAVAILABLE = -3, /* Redis cannot answer now and the cache cannot say: 503 */
};

/* Called once with the outcome; `e` (NULL unless KEYAUTH_OK) is valid during the call. */
typedef void (*keyauth_fn)(void *ctx, enum keyauth_result result, const struct keycache_entry *e);

/* Resolves a digest. KEYAUTH_OK sets *out (valid until the cache changes); KEYAUTH_PENDING
 * sets *pending, and fn is called later unless keyauth_cancel(*pending) is called first;
 * anything else is final.
 *
 * A fresh cache entry answers at once. Otherwise Redis is asked; when it cannot answer (not
 * connected, breaker open, or the command fails or times out) a key found before keeps
 * working on its stale entry (an expired one is refused), and a key with no entry, or only
 * a stale refusal, is KEYAUTH_UNAVAILABLE: the gateway cannot tell, which is not a 401. */
enum keyauth_result keyauth_resolve(struct keycache *cache, struct redis_client *redis,
                                    const unsigned char digest[32], keyauth_fn fn, void *ctx,
                                    struct keyauth_lookup **pending,
                                    const struct keycache_entry **out);
/* The caller is gone: fn will not be called (the answer still fills the cache). */
void keyauth_cancel(struct keyauth_lookup *l);

/* A revocation message from the REDIS_CHANNEL_KEYS_REVOKED channel (redis/keyspace.h): a
 * hex digest. */
void keyauth_revoked(struct keycache *cache, const char *hex, size_t len);

#endif

/* A worker's cache of Redis-held API keys, keyed by the key's SHA-256.
 *
 * Bounded (least recently used entries go first) so that a flood of random keys cannot
 * grow it. A found key is kept `ttl_ms`; a key Redis does not know is remembered for
 * `negative_ttl_ms`, so a caller retrying a bad key does not reach Redis every time; such
 * entries go once that time is over and are at most a quarter of the capacity, so random keys
 * neither hold memory for long nor push out the keys of real callers.
 * Entries past their time are still returned when the caller allows stale ones (Redis
 * unreachable: keys already seen keep working). Revocations evict at once.
 * Not thread-safe: one cache per worker. Returned entries are valid until the next call
 * that changes the cache (put, evict, clear). */
#ifndef TOLLGATE_KEYCACHE_H
#define TOLLGATE_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct keycache;

struct keycache_entry {
    unsigned char digest[32];
    bool known; /* false: Redis said there is no such key */
    char name[72];
    unsigned metric_key; /* label index of the name (metrics/metrics.h) */
    char *models; /* allowed models, each NUL-terminated, ending with an empty one; NULL = all */
    int64_t expires_at; /* unix seconds, 0 = never */
    long rpm, tpm;      /* per-minute limits, 0 = none */
    double budget_usd;  /* 0 = no budget */
    int64_t fetched_ms;
};

struct keycache *keycache_new(size_t capacity, int64_t ttl_ms, int64_t negative_ttl_ms);
void keycache_free(struct keycache *c);

/* The entry for a digest, or NULL when absent or (unless allow_stale) past its time. */
const struct keycache_entry *keycache_get(struct keycache *c, const unsigned char digest[32],
                                          int64_t now_ms, bool allow_stale);
/* Stores a copy of `e` (models copied too), replacing any entry for the digest. -1 on OOM. */
int keycache_put(struct keycache *c, const struct keycache_entry *e);
void keycache_evict(struct keycache *c, const unsigned char digest[32]);
/* Makes every entry stale (after a reconnect, when revocations may have been missed): each
 * is fetched again before it is used while Redis answers, and is only the outage fallback
 * until then. Nothing is dropped, so keys keep working if Redis fails again meanwhile. */
void keycache_clear(struct keycache *c);
size_t keycache_size(const struct keycache *c);

/* Whether `model` is in an entry's list (a NULL list allows every model). */
bool keycache_allows(const char *models, const char *model);

#endif

/* Response cache: exact match on a canonical hash of everything that changes the answer.
 *
 * The key is SHA-256 over the route, the model, the scope (the caller's key name, unless the
 * cache is global) and the request JSON with object keys sorted, integral numbers written as
 * integers, and `stream`, `stream_options` and `user` left out. The store is a worker's own
 * LRU with a byte cap, so no lock is shared on the hot path. Not thread-safe: one per worker;
 * an entry returned by cache_get() is valid until the next call that changes the cache. */
#ifndef TOLLGATE_CACHE_H
#define TOLLGATE_CACHE_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct cache;

struct cache_entry {
    unsigned char key[32];
    char *body;
    size_t len;
    char backend[64];  /* who answered it first */
    double cost_usd;   /* what it cost then: what a hit saves */
    int64_t stored_ms; /* monotonic */
    int64_t expires_ms;
};

struct cache *cache_new(size_t max_bytes);
void cache_free(struct cache *c);

/* The entry for a key stored no longer than max_age_ms ago (-1: any age) and not expired. */
const struct cache_entry *cache_get(struct cache *c, const unsigned char key[32], int64_t now_ms,
                                    int64_t max_age_ms);
/* Stores a copy of body. -1 on OOM or when it alone is bigger than the cache. */
int cache_put(struct cache *c, const unsigned char key[32], const char *body, size_t len,
              const char *backend, double cost_usd, int64_t now_ms, int64_t ttl_ms);
size_t cache_bytes(const struct cache *c);

/* A streamed answer assembled as it passes, so that a streamed miss can be stored as the
 * whole answer a non-streaming caller would have had (and replayed to streaming ones).
 * Chat deltas (role, content, refusal, reasoning, tool calls by index) and completion texts
 * are concatenated per choice; finish reasons kept. A capture gives up (and stores nothing)
 * on anything it cannot represent faithfully (logprobs, a malformed event) or past
 * `max_bytes` of text. */
struct cache_capture {
    json_t *doc; /* the answer so far; NULL until the first event */
    bool chat;
    bool failed;
    size_t bytes, max_bytes;
};

void cache_capture_init(struct cache_capture *c, bool chat, size_t max_bytes);
void cache_capture_free(struct cache_capture *c);
/* Adds one event's data (a JSON chunk). */
void cache_capture_event(struct cache_capture *c, const char *data, size_t len);
/* The whole answer with `usage` (taken, may be NULL) when every choice finished: a malloc'd
 * compact JSON text and its length, or NULL. */
char *cache_capture_finish(struct cache_capture *c, json_t *usage, size_t *len);

/* The canonical key of a request. 0, or -1 on OOM. */
int cache_key(const char *route, const char *model, const char *scope, json_t *body,
              unsigned char out[32]);
/* Whether a request asks for a reproducible answer: temperature 0, or a seed. */
bool cache_deterministic(json_t *body);

#endif

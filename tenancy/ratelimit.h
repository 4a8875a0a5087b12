/* Per-key request and token limits (rpm, tpm) that hold across every replica.
 *
 * Each worker leases a slice of a key's per-minute allowance from Redis (one atomic Lua
 * script over tg:rl:<key>:<minute>) and admits requests from that lease locally, so a busy
 * key costs one Redis round trip per slice, not per request; a small limit's slice is one
 * request, which keeps it exact. Grants never exceed the limit in Redis, so replicas together
 * never admit more than it (unused slices at the minute's end only admit fewer).
 * Redis out of reach: each replica enforces the limits alone, split over its workers.
 * Not thread-safe: one per worker, on the worker's loop. */
#ifndef TOLLGATE_RATELIMIT_H
#define TOLLGATE_RATELIMIT_H

#include <stdbool.h>
#include <stdint.h>

struct redis_client;
struct ratelimit;
struct ratelimit_wait;

enum ratelimit_result {
    RATELIMIT_ADMIT = 0,
    RATELIMIT_PENDING = 1, /* the callback will say */
    RATELIMIT_DENY = -1,
};

/* What the x-ratelimit-* headers say. */
struct ratelimit_view {
    long limit_requests, remaining_requests; /* limit 0: no request limit */
    long limit_tokens, remaining_tokens;     /* limit 0: no token limit */
    long reset_ms;                           /* until the window starts afresh */
};

typedef void (*ratelimit_fn)(void *ctx, enum ratelimit_result result,
                             const struct ratelimit_view *view);

struct ratelimit *ratelimit_new(struct redis_client *redis, unsigned workers);
void ratelimit_free(struct ratelimit *rl);

/* Admits one request of about `tokens` tokens for a key with these limits (0 = none).
 * ADMIT or DENY fill *view at once; PENDING sets *wait and calls fn later, unless
 * ratelimit_cancel(*wait) comes first. */
enum ratelimit_result ratelimit_admit(struct ratelimit *rl, const char *key, long rpm, long tpm,
                                      long tokens, ratelimit_fn fn, void *ctx,
                                      struct ratelimit_wait **wait, struct ratelimit_view *view);
void ratelimit_cancel(struct ratelimit_wait *w);
/* After the answer: the tokens really used, so the estimate admitted is corrected. */
void ratelimit_settle(struct ratelimit *rl, const char *key, long estimated, long used);

#endif

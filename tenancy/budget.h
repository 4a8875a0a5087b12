/* Per-key spending budgets that hold across replicas.
 *
 * Before a request is forwarded, its estimated cost is reserved against the key's budget in
 * one atomic Lua script (tg:budget:<key>: spent, reserved); at the end the reservation is
 * replaced by the actual cost. However many requests race on however many replicas,
 * spent + reserved never passes the budget, so recorded spend exceeds it by at most what a
 * request cost beyond its estimate. Redis out of reach, or too slow to answer within its
 * deadline: each worker allows a small local allowance (1% of the budget), then refuses. Not
 * thread-safe: one per worker. */
#ifndef TOLLGATE_BUDGET_H
#define TOLLGATE_BUDGET_H

#include <stdbool.h>

struct redis_client;
struct budget;
struct budget_wait;

enum budget_result {
    BUDGET_OK = 0,
    BUDGET_PENDING = 1,
    BUDGET_EXHAUSTED = -1,
};

/* in_redis: the reservation is held in Redis (false: from the local allowance, after Redis
 * did not answer), which budget_settle() needs to know. */
typedef void (*budget_fn)(void *ctx, enum budget_result result, bool in_redis);

struct budget *budget_new(struct redis_client *redis);
void budget_free(struct budget *b);

/* Reserves est_usd for a key whose budget is budget_usd. PENDING sets *wait and calls fn
 * later (unless budget_cancel() first); OK and EXHAUSTED are final. */
enum budget_result budget_reserve(struct budget *b, const char *key, double budget_usd,
                                  double est_usd, budget_fn fn, void *ctx,
                                  struct budget_wait **wait);
void budget_cancel(struct budget_wait *w);
/* Replaces a reservation by what the request really cost (0 when nothing was served). */
void budget_settle(struct budget *b, const char *key, double reserved_usd, double actual_usd);

#endif

/* Response affinity: which backend (and model) answered a Responses API response id, so a
 * follow-up that names it (previous_response_id, GET or DELETE /v1/responses/{id}) goes to the
 * node that holds its state, never to another one.
 *
 * Kept in Redis when the worker has a client (tg:resp:<id>, redis/keyspace.h), so every
 * replica knows, and in a bounded in-memory table shared by the process's workers (a
 * fixed number of slots; a new id may take an older one's slot), which answers first. With
 * no Redis the table is all there is: a follow-up after its slot was reused, or on another
 * replica, is not found.
 *
 * Threads: the table may be used from any worker (striped locks held for a copy);
 * affinity_lookup and affinity_remember use the calling worker's Redis client, so call them
 * on its thread; the callback runs there. */
#ifndef TOLLGATE_AFFINITY_H
#define TOLLGATE_AFFINITY_H

#include <stdbool.h>
#include <stddef.h>

struct redis_client;

/* How long Redis keeps an id's node (OpenAI keeps stored responses 30 days). */
#define AFFINITY_TTL_S (30L * 24 * 3600)
/* Slots of the in-memory table. */
#define AFFINITY_SLOTS 8192
#define AFFINITY_NAME_MAX 96

struct affinity_hit {
    char backend[AFFINITY_NAME_MAX];
    char model[AFFINITY_NAME_MAX];
};

/* Notes that `backend` answered response `id` for `model` (names longer than
 * AFFINITY_NAME_MAX - 1 bytes are not kept); redis may be NULL. Never waits. */
void affinity_remember(struct redis_client *redis, const char *id, const char *backend,
                       const char *model);

/* Forgets id (its response was deleted). */
void affinity_forget(struct redis_client *redis, const char *id);

/* found: false when no replica knows the id (or Redis could not say: `unavailable`). */
typedef void (*affinity_fn)(void *ctx, bool found, bool unavailable,
                            const struct affinity_hit *hit);

struct affinity_ask;

/* Looks id up. Returns 1 with *hit filled when the table knows it, 0 when nobody does (no
 * Redis to ask, or it is out of reach), or 2 when Redis was asked: fn is then called once,
 * later, from the loop, unless affinity_cancel(*ask) comes first. -1 on OOM. */
int affinity_lookup(struct redis_client *redis, const char *id, struct affinity_hit *hit,
                    affinity_fn fn, void *ctx, struct affinity_ask **ask);

/* The caller is gone: fn will not be called. NULL is fine. */
void affinity_cancel(struct affinity_ask *ask);

#endif

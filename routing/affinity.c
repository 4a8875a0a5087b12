#include "routing/affinity.h"

#include "redis/keyspace.h"
#include "redis/redis.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AFFINITY_STRIPES 64
#define AFFINITY_ID_MAX 128

struct affinity_slot {
    char id[AFFINITY_ID_MAX];
    struct affinity_hit hit;
};

/* Slot i is guarded by stripe i % AFFINITY_STRIPES. */
static struct affinity_slot affinity_slots[AFFINITY_SLOTS];
static pthread_mutex_t affinity_locks[AFFINITY_STRIPES] = {[0 ... AFFINITY_STRIPES - 1] =
                                                               PTHREAD_MUTEX_INITIALIZER};

static size_t affinity_index(const char *id)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)*p) * 0x100000001b3ull;
    return (size_t)(h % AFFINITY_SLOTS);
}

static bool affinity_fits(const char *id, const char *backend, const char *model)
{
    return strlen(id) < AFFINITY_ID_MAX && strlen(backend) < AFFINITY_NAME_MAX &&
           strlen(model) < AFFINITY_NAME_MAX;
}

static void affinity_key(char *out, size_t n, const char *id)
{
    snprintf(out, n, "%s%s", REDIS_KEY_RESPONSE_PREFIX, id);
}

static void affinity_ignored(void *ctx, int result, const redisReply *reply)
{
    (void)ctx;
    (void)result;
    (void)reply;
}

void affinity_remember(struct redis_client *redis, const char *id, const char *backend,
                       const char *model)
{
    if (!id[0] || !affinity_fits(id, backend, model))
        return;
    size_t i = affinity_index(id);
    pthread_mutex_t *lock = &affinity_locks[i % AFFINITY_STRIPES];
    pthread_mutex_lock(lock);
    struct affinity_slot *s = &affinity_slots[i];
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->hit.backend, sizeof s->hit.backend, "%s", backend);
    snprintf(s->hit.model, sizeof s->hit.model, "%s", model);
    pthread_mutex_unlock(lock);
    if (!redis || !redis_client_available(redis))
        return;
    char key[AFFINITY_ID_MAX + 16], value[2 * AFFINITY_NAME_MAX + 2], ttl[24];
    affinity_key(key, sizeof key, id);
    snprintf(value, sizeof value, "%s\n%s", backend, model);
    snprintf(ttl, sizeof ttl, "%ld", AFFINITY_TTL_S);
    const char *argv[] = {"SET", key, value, "EX", ttl};
    redis_command(redis, 5, argv, NULL, affinity_ignored, NULL);
}

void affinity_forget(struct redis_client *redis, const char *id)
{
    if (strlen(id) >= AFFINITY_ID_MAX)
        return;
    size_t i = affinity_index(id);
    pthread_mutex_t *lock = &affinity_locks[i % AFFINITY_STRIPES];
    pthread_mutex_lock(lock);
    if (!strcmp(affinity_slots[i].id, id))
        affinity_slots[i].id[0] = '\0';
    pthread_mutex_unlock(lock);
    if (!redis || !redis_client_available(redis))
        return;
    char key[AFFINITY_ID_MAX + 16];
    affinity_key(key, sizeof key, id);
    const char *argv[] = {"DEL", key};
    redis_command(redis, 2, argv, NULL, affinity_ignored, NULL);
}

struct affinity_ask {
    affinity_fn fn;
    void *ctx; /* NULL once cancelled */
    char id[AFFINITY_ID_MAX];
};

static void affinity_answer(void *ctx, int result, const redisReply *reply)
{
    struct affinity_ask *ask = ctx;
    if (!ask->ctx) {
        free(ask);
        return;
    }
    struct affinity_hit hit;
    memset(&hit, 0, sizeof hit);
    bool found = false;
    if (result == 0 && reply->type == REDIS_REPLY_STRING) {
        const char *nl = memchr(reply->str, '\n', reply->len);
        size_t blen = nl ? (size_t)(nl - reply->str) : 0;
        size_t mlen = nl ? reply->len - blen - 1 : 0;
        if (nl && blen && blen < sizeof hit.backend && mlen < sizeof hit.model) {
            memcpy(hit.backend, reply->str, blen);
            memcpy(hit.model, nl + 1, mlen);
            found = true;
        }
    }
    if (found) { /* the next follow-up on this replica needs no Redis */
        size_t i = affinity_index(ask->id);
        pthread_mutex_t *lock = &affinity_locks[i % AFFINITY_STRIPES];
        pthread_mutex_lock(lock);
        snprintf(affinity_slots[i].id, AFFINITY_ID_MAX, "%s", ask->id);
        affinity_slots[i].hit = hit;
        pthread_mutex_unlock(lock);
    }
    ask->fn(ask->ctx, found, result != 0, found ? &hit : NULL);
    free(ask);
}

int affinity_lookup(struct redis_client *redis, const char *id, struct affinity_hit *hit,
                    affinity_fn fn, void *ctx, struct affinity_ask **out)
{
    *out = NULL;
    if (strlen(id) >= AFFINITY_ID_MAX)
        return 0;
    size_t i = affinity_index(id);
    pthread_mutex_t *lock = &affinity_locks[i % AFFINITY_STRIPES];
    pthread_mutex_lock(lock);
    bool found = !strcmp(affinity_slots[i].id, id);
    if (found)
        *hit = affinity_slots[i].hit;
    pthread_mutex_unlock(lock);
    if (found)
        return 1;
    if (!redis || !redis_client_available(redis))
        return 0;
    struct affinity_ask *ask = calloc(1, sizeof *ask);
    if (!ask)
        return -1;
    ask->fn = fn;
    ask->ctx = ctx;
    snprintf(ask->id, sizeof ask->id, "%s", id);
    char key[AFFINITY_ID_MAX + 16];
    affinity_key(key, sizeof key, id);
    const char *argv[] = {"GET", key};
    if (redis_command(redis, 2, argv, NULL, affinity_answer, ask)) {
        free(ask);
        return 0;
    }
    *out = ask;
    return 2;
}

void affinity_cancel(struct affinity_ask *ask)
{
    if (ask)
        ask->ctx = NULL; /* freed when its answer comes */
}

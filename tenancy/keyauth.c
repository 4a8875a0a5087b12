#include "tenancy/keyauth.h"

#include "base/buf.h"
#include "base/clock.h"
#include "metrics/metrics.h"
#include "redis/keyspace.h"
#include "redis/redis.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct keyauth_lookup {
    struct keycache *cache;
    unsigned char digest[32];
    keyauth_fn fn; /* NULL once cancelled */
    void *ctx;
};

static bool expired(const struct keycache_entry *e)
{
    return e->expires_at > 0 && (int64_t)time(NULL) >= e->expires_at;
}

/* The models field (a JSON array of names) as a NUL-separated list; NULL for "all". */
static char *models_list(const char *json, size_t len)
{
    if (!len)
        return NULL;
    json_t *arr = json_loadb(json, len, 0, NULL);
    if (!json_is_array(arr)) {
        json_decref(arr);
        return calloc(1, 1); /* an unreadable list must not widen access: allow nothing */
    }
    if (json_array_size(arr) == 0) {
        json_decref(arr);
        return NULL; /* [] is the same as no list */
    }
    size_t total = 1, i;
    json_t *m;
    json_array_foreach (arr, i, m)
        total += json_is_string(m) ? json_string_length(m) + 1 : 0;
    char *out = malloc(total), *p = out;
    if (out) {
        json_array_foreach (arr, i, m) {
            if (!json_is_string(m))
                continue;
            memcpy(p, json_string_value(m), json_string_length(m) + 1);
            p += json_string_length(m) + 1;
        }
        *p = '\0';
    }
    json_decref(arr);
    return out;
}

/* Fills an entry from an HGETALL reply; an empty reply means no such key. */
static void entry_from_reply(struct keycache_entry *e, const redisReply *reply)
{
    e->known = reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2;
    for (size_t i = 0; e->known && i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (!strcmp(k->str, "name"))
            snprintf(e->name, sizeof e->name, "%.*s", (int)v->len, v->str);
        else if (!strcmp(k->str, "models"))
            e->models = models_list(v->str, v->len);
        else if (!strcmp(k->str, "expires_at"))
            e->expires_at = strtoll(v->str, NULL, 10);
        else if (!strcmp(k->str, "rpm"))
            e->rpm = strtol(v->str, NULL, 10);
        else if (!strcmp(k->str, "tpm"))
            e->tpm = strtol(v->str, NULL, 10);
        else if (!strcmp(k->str, "budget_usd"))
            e->budget_usd = strtod(v->str, NULL);
    }
    if (e->known && !e->name[0])
        e->known = false; /* a record without a name is not a key */
    if (e->known)
        e->metric_key = metrics_label(METRICS_LABEL_KEY, e->name, NULL);
}

/* Redis cannot answer now: a key seen before keeps working past its cache time (an expired
 * one stays refused); one it never confirmed, or only refused longer ago than the negative
 * cache time, cannot be checked. *out set for KEYAUTH_OK. */
static enum keyauth_result from_stale(struct keycache *cache, const unsigned char digest[32],
                                      const struct keycache_entry **out)
{
    const struct keycache_entry *e = keycache_get(cache, digest, clock_mono_ms(), true);
    if (!e || !e->known)
        return KEYAUTH_UNAVAILABLE;
    if (expired(e))
        return KEYAUTH_EXPIRED;
    *out = e;
    return KEYAUTH_OK;
}

static void lookup_reply(void *ctx, int result, const redisReply *reply)
{
    struct keyauth_lookup *l = ctx;
    enum keyauth_result res;
    struct keycache_entry e = {0};
    const struct keycache_entry *stored = NULL;
    if (result == 0 && reply) {
        memcpy(e.digest, l->digest, sizeof e.digest);
        e.fetched_ms = clock_mono_ms();
        entry_from_reply(&e, reply);
        keycache_put(l->cache, &e);
        stored = keycache_get(l->cache, l->digest, e.fetched_ms, true);
        res = !e.known ? KEYAUTH_UNKNOWN : expired(&e) ? KEYAUTH_EXPIRED : KEYAUTH_OK;
        free(e.models);
    } else {
        /* A stale entry was being refreshed when Redis failed (timeout, lost connection): the
         * breaker may not have opened yet, but the answer is the same as when it has. */
        res = from_stale(l->cache, l->digest, &stored);
    }
    if (l->fn)
        l->fn(l->ctx, res, res == KEYAUTH_OK ? stored : NULL);
    free(l);
}

enum keyauth_result keyauth_resolve(struct keycache *cache, struct redis_client *redis,
                                    const unsigned char digest[32], keyauth_fn fn, void *ctx,
                                    struct keyauth_lookup **pending,
                                    const struct keycache_entry **out)
{
    const struct keycache_entry *e = keycache_get(cache, digest, clock_mono_ms(), false);
    if (e) {
        if (!e->known)
            return KEYAUTH_UNKNOWN;
        if (expired(e))
            return KEYAUTH_EXPIRED;
        *out = e;
        return KEYAUTH_OK;
    }
    if (!redis || !redis_client_available(redis))
        return from_stale(cache, digest, out);
    struct keyauth_lookup *l = calloc(1, sizeof *l);
    if (!l)
        return from_stale(cache, digest, out);
    l->cache = cache;
    memcpy(l->digest, digest, sizeof l->digest);
    l->fn = fn;
    l->ctx = ctx;
    char key[sizeof REDIS_KEY_KEY_PREFIX + 64];
    const size_t pre = sizeof REDIS_KEY_KEY_PREFIX - 1;
    memcpy(key, REDIS_KEY_KEY_PREFIX, pre);
    buf_hex(digest, 32, key + pre);
    const char *argv[] = {"HGETALL", key};
    size_t argvlen[] = {7, pre + 64};
    if (redis_command(redis, 2, argv, argvlen, lookup_reply, l)) {
        free(l);
        return from_stale(cache, digest, out);
    }
    *pending = l;
    return KEYAUTH_PENDING;
}

void keyauth_cancel(struct keyauth_lookup *l)
{
    if (l)
        l->fn = NULL;
}

void keyauth_revoked(struct keycache *cache, const char *hex, size_t len)
{
    unsigned char d[32];
    if (len != 64)
        return;
    for (int i = 0; i < 32; i++) {
        unsigned v;
        if (sscanf(hex + 2 * i, "%2x", &v) != 1)
            return;
        d[i] = (unsigned char)v;
    }
    keycache_evict(cache, d);
}

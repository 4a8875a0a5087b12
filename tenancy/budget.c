#include "tenancy/budget.h"

#include "redis/keyspace.h"
#include "redis/redis.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BUDGET_LOCAL_SHARE 0.01 /* of a budget, per worker, while Redis is out of reach */
#define BUDGET_BUCKETS 256

static const char budget_reserve_script[] =
    "local spent = tonumber(redis.call('HGET', KEYS[1], 'spent') or '0')\n"
    "local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved') or '0')\n"
    "if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[1]) then return 0 end\n"
    "redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', ARGV[2])\n"
    "return 1\n";

static const char budget_settle_script[] =
    "redis.call('HINCRBYFLOAT', KEYS[1], 'reserved', '-' .. ARGV[1])\n"
    "redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])\n"
    "if tonumber(redis.call('HGET', KEYS[1], 'reserved')) < 0 then\n"
    "  redis.call('HSET', KEYS[1], 'reserved', '0')\n"
    "end\n"
    "return 1\n";

struct budget_wait {
    budget_fn fn;
    void *ctx;
    bool cancelled;
    struct budget *b; /* for the local allowance when Redis does not answer */
    double budget_usd, est_usd;
    struct budget_late *late;
    char key[];
};

/* A reservation whose answer missed its deadline: the request went on with the local
 * allowance, so if the script ran in Redis after all, what it reserved there is nobody's and
 * is released (else the key's budget would shrink by it for good). */
struct budget_late {
    struct budget *b;
    double est_usd;
    char key[];
};

/* What a worker spent on its own while Redis was out of reach. */
struct local_spend {
    char *key;
    double spent;
    struct local_spend *next;
};

struct budget {
    struct redis_client *redis;
    const struct redis_script *reserve, *settle;
    struct local_spend *local[BUDGET_BUCKETS];
};

struct budget *budget_new(struct redis_client *redis)
{
    struct budget *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->redis = redis;
    b->reserve = redis_script_load(redis, budget_reserve_script, sizeof budget_reserve_script - 1);
    b->settle = redis_script_load(redis, budget_settle_script, sizeof budget_settle_script - 1);
    return b;
}

void budget_free(struct budget *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < BUDGET_BUCKETS; i++)
        while (b->local[i]) {
            struct local_spend *l = b->local[i];
            b->local[i] = l->next;
            free(l->key);
            free(l);
        }
    free(b);
}

static struct local_spend *local_for(struct budget *b, const char *key)
{
    unsigned h = 5381;
    for (const char *p = key; *p; p++)
        h = h * 33 + (unsigned char)*p;
    struct local_spend **slot = &b->local[h % BUDGET_BUCKETS];
    for (struct local_spend *l = *slot; l; l = l->next)
        if (!strcmp(l->key, key))
            return l;
    struct local_spend *l = calloc(1, sizeof *l);
    if (!l || !(l->key = strdup(key))) {
        free(l);
        return NULL;
    }
    l->next = *slot;
    *slot = l;
    return l;
}

static enum budget_result reserve_alone(struct budget *b, const char *key, double budget_usd,
                                        double est_usd)
{
    struct local_spend *l = local_for(b, key);
    if (!l || l->spent + est_usd > budget_usd * BUDGET_LOCAL_SHARE)
        return BUDGET_EXHAUSTED;
    l->spent += est_usd;
    return BUDGET_OK;
}

static void settled(void *ctx, int result, const redisReply *reply);
static int budget_eval(struct budget *b, const struct redis_script *script, const char *key,
                       double x, double y, redis_reply_fn fn, void *ctx, redis_reply_fn late,
                       void *late_ctx);

static void reserved_late(void *ctx, int result, const redisReply *reply)
{
    struct budget_late *l = ctx;
    if (result == 0 && reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        budget_eval(l->b, l->b->settle, l->key, l->est_usd, 0, settled, NULL, NULL, NULL);
    free(l);
}

static void reserved(void *ctx, int result, const redisReply *reply)
{
    struct budget_wait *w = ctx;
    if (result != REDIS_ETIMEOUT)
        free(w->late); /* only a timed-out command hears of its late reply */
    enum budget_result res;
    if (result == 0 && reply && reply->type == REDIS_REPLY_INTEGER)
        res = reply->integer == 1 ? BUDGET_OK : BUDGET_EXHAUSTED;
    else /* Redis did not answer in time: the same small local allowance as in an outage */
        res = reserve_alone(w->b, w->key, w->budget_usd, w->est_usd);
    if (!w->cancelled)
        w->fn(w->ctx, res, result == 0);
    free(w);
}

/* Runs one of the scripts on tg:budget:<key> with two USD amounts (and `late`: see
 * redis_evalsha_late()). */
static int budget_eval(struct budget *b, const struct redis_script *script, const char *key,
                       double x, double y, redis_reply_fn fn, void *ctx, redis_reply_fn late,
                       void *late_ctx)
{
    char k[200], a[40], c[40];
    snprintf(k, sizeof k, REDIS_KEY_BUDGET_PREFIX "%s", key);
    snprintf(a, sizeof a, "%.10f", x > 0 ? x : 0);
    snprintf(c, sizeof c, "%.10f", y > 0 ? y : 0);
    const char *argv[] = {k, a, c};
    size_t argvlen[] = {strlen(k), strlen(a), strlen(c)};
    return redis_evalsha_late(b->redis, script, 1, 3, argv, argvlen, fn, ctx, late, late_ctx);
}

enum budget_result budget_reserve(struct budget *b, const char *key, double budget_usd,
                                  double est_usd, budget_fn fn, void *ctx,
                                  struct budget_wait **wait)
{
    if (!b->reserve || !redis_client_available(b->redis))
        return reserve_alone(b, key, budget_usd, est_usd);
    size_t klen = strlen(key);
    struct budget_wait *w = calloc(1, sizeof *w + klen + 1);
    if (!w)
        return BUDGET_EXHAUSTED;
    w->fn = fn;
    w->ctx = ctx;
    w->b = b;
    w->budget_usd = budget_usd;
    w->est_usd = est_usd;
    memcpy(w->key, key, klen + 1);
    w->late = malloc(sizeof *w->late + klen + 1);
    if (!w->late) {
        free(w);
        return BUDGET_EXHAUSTED;
    }
    w->late->b = b;
    w->late->est_usd = est_usd;
    memcpy(w->late->key, key, klen + 1);
    if (budget_eval(b, b->reserve, key, budget_usd, est_usd, reserved, w, reserved_late, w->late)) {
        free(w->late);
        free(w);
        return reserve_alone(b, key, budget_usd, est_usd);
    }
    *wait = w;
    return BUDGET_PENDING;
}

void budget_cancel(struct budget_wait *w)
{
    if (w)
        w->cancelled = true;
}

static void settled(void *ctx, int result, const redisReply *reply)
{
    (void)ctx;
    (void)result;
    (void)reply;
}

void budget_settle(struct budget *b, const char *key, double reserved_usd, double actual_usd)
{
    if (!b->settle || !redis_client_available(b->redis))
        return; /* the reservation stays: the key can spend less, never more */
    budget_eval(b, b->settle, key, reserved_usd, actual_usd, settled, NULL, NULL, NULL);
}

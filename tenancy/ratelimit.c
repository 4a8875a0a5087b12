#include "tenancy/ratelimit.h"
#include "base/clock.h"

#include "redis/keyspace.h"
#include "redis/redis.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RATELIMIT_WINDOW_MS 60000
#define RATELIMIT_BUCKETS 1024
#define RATELIMIT_SLICES 20 /* a lease is about 1/20 of a limit */

/* Grants a lease from a key's allowance for this minute, or nothing when what the caller
 * needs is no longer there. Returns {granted requests, granted tokens, used requests, used
 * tokens} (used includes this grant). */
static const char ratelimit_script[] =
    "local rpm, tpm = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
    "local want_r, want_t, need_t = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])\n"
    "local ur = tonumber(redis.call('HGET', KEYS[1], 'r') or '0')\n"
    "local ut = tonumber(redis.call('HGET', KEYS[1], 't') or '0')\n"
    "if (rpm > 0 and ur >= rpm) or (tpm > 0 and ut + need_t > tpm) then\n"
    "  return {0, 0, ur, ut}\n"
    "end\n"
    "local gr, gt = 0, 0\n"
    "if rpm > 0 then gr = math.min(want_r, rpm - ur) end\n"
    "if tpm > 0 then gt = math.min(want_t, tpm - ut) end\n"
    "if gr > 0 then redis.call('HINCRBY', KEYS[1], 'r', gr) end\n"
    "if gt > 0 then redis.call('HINCRBY', KEYS[1], 't', gt) end\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[6])\n"
    "return {gr, gt, ur + gr, ut + gt}\n";

struct ratelimit_wait {
    struct rl_state *st;
    long tokens;
    ratelimit_fn fn;
    void *ctx;
    bool cancelled;
    struct ratelimit_wait *next;
};

struct rl_state {
    char *key;
    long rpm, tpm;
    int64_t window;            /* the minute the counts below are for */
    long lease_req, lease_tok; /* granted to this worker, not used yet */
    long used_req, used_tok;   /* all replicas, as of the last grant */
    long local_req, local_tok; /* admitted alone while Redis was out of reach */
    bool taking;               /* a grant is being asked for */
    int64_t taking_window;
    struct ratelimit_wait *head, *tail;
    struct ratelimit *rl;
    struct rl_state *next;
};

struct ratelimit {
    struct redis_client *redis;
    const struct redis_script *script;
    unsigned workers;
    struct rl_state *buckets[RATELIMIT_BUCKETS];
};

struct ratelimit *ratelimit_new(struct redis_client *redis, unsigned workers)
{
    struct ratelimit *rl = calloc(1, sizeof *rl);
    if (!rl)
        return NULL;
    rl->redis = redis;
    rl->workers = workers ? workers : 1;
    if (redis)
        rl->script = redis_script_load(redis, ratelimit_script, sizeof ratelimit_script - 1);
    return rl;
}

void ratelimit_free(struct ratelimit *rl)
{
    if (!rl)
        return;
    for (size_t i = 0; i < RATELIMIT_BUCKETS; i++)
        while (rl->buckets[i]) {
            struct rl_state *st = rl->buckets[i];
            rl->buckets[i] = st->next;
            while (st->head) {
                struct ratelimit_wait *w = st->head;
                st->head = w->next;
                free(w);
            }
            free(st->key);
            free(st);
        }
    free(rl);
}

static struct rl_state *state_for(struct ratelimit *rl, const char *key, bool create)
{
    unsigned h = 5381;
    for (const char *p = key; *p; p++)
        h = h * 33 + (unsigned char)*p;
    struct rl_state **slot = &rl->buckets[h % RATELIMIT_BUCKETS];
    for (struct rl_state *st = *slot; st; st = st->next)
        if (!strcmp(st->key, key))
            return st;
    if (!create)
        return NULL;
    struct rl_state *st = calloc(1, sizeof *st);
    if (!st || !(st->key = strdup(key))) {
        free(st);
        return NULL;
    }
    st->rl = rl;
    st->window = -1;
    st->next = *slot;
    *slot = st;
    return st;
}

static void roll(struct rl_state *st, int64_t now)
{
    int64_t w = now / RATELIMIT_WINDOW_MS;
    if (st->window == w)
        return;
    st->window = w;
    st->lease_req = st->lease_tok = 0;
    st->used_req = st->used_tok = 0;
    st->local_req = st->local_tok = 0;
}

static void view_of(const struct rl_state *st, int64_t now, struct ratelimit_view *v)
{
    v->limit_requests = st->rpm;
    v->limit_tokens = st->tpm;
    long used_r = st->used_req - st->lease_req + st->local_req;
    long used_t = st->used_tok - st->lease_tok + st->local_tok;
    v->remaining_requests = st->rpm > used_r ? st->rpm - used_r : 0;
    v->remaining_tokens = st->tpm > used_t ? st->tpm - used_t : 0;
    v->reset_ms = (long)((st->window + 1) * RATELIMIT_WINDOW_MS - now);
}

/* From this worker's lease. */
static bool take_local(struct rl_state *st, long tokens)
{
    long need_r = st->rpm > 0 ? 1 : 0, need_t = st->tpm > 0 ? tokens : 0;
    if (st->lease_req < need_r || (need_t && st->lease_tok < need_t))
        return false;
    st->lease_req -= need_r;
    st->lease_tok -= need_t;
    return true;
}

/* Redis out of reach: this replica's share, split over its workers. */
static bool take_alone(struct rl_state *st, long tokens)
{
    unsigned n = st->rl->workers;
    long share_r = (st->rpm + n - 1) / n, share_t = (st->tpm + n - 1) / n;
    if ((st->rpm > 0 && st->local_req + 1 > share_r) ||
        (st->tpm > 0 && st->local_tok + tokens > share_t))
        return false;
    st->local_req++;
    st->local_tok += tokens;
    return true;
}

static void ask(struct rl_state *st);

/* Settles queued requests with what there is; asks for more when a grant ran out. */
static void serve_waiters(struct rl_state *st, bool denied, bool unavailable)
{
    int64_t now = clock_wall_ms();
    while (st->head) {
        struct ratelimit_wait *w = st->head;
        enum ratelimit_result res;
        if (w->cancelled) {
            res = RATELIMIT_DENY;
        } else if (take_local(st, w->tokens)) {
            res = RATELIMIT_ADMIT;
        } else if (unavailable) {
            res = take_alone(st, w->tokens) ? RATELIMIT_ADMIT : RATELIMIT_DENY;
        } else if (denied) {
            res = RATELIMIT_DENY;
        } else {
            ask(st); /* the grant is used up: another slice for the rest */
            return;
        }
        st->head = w->next;
        if (!st->head)
            st->tail = NULL;
        if (!w->cancelled) {
            struct ratelimit_view v;
            view_of(st, now, &v);
            w->fn(w->ctx, res, &v);
        }
        free(w);
    }
}

static void granted(void *ctx, int result, const redisReply *reply)
{
    struct rl_state *st = ctx;
    st->taking = false;
    int64_t now = clock_wall_ms();
    roll(st, now);
    bool ok = result == 0 && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 4;
    if (ok && st->taking_window != st->window) {
        ask(st); /* granted for a minute that is over: ask again for this one */
        return;
    }
    long gr = 0, gt = 0;
    if (ok) {
        gr = (long)reply->element[0]->integer;
        gt = (long)reply->element[1]->integer;
        st->lease_req += gr;
        st->lease_tok += gt;
        st->used_req = (long)reply->element[2]->integer;
        st->used_tok = (long)reply->element[3]->integer;
    }
    serve_waiters(st, ok && gr == 0 && gt == 0, !ok);
}

static void ask(struct rl_state *st)
{
    if (st->taking)
        return;
    struct ratelimit *rl = st->rl;
    if (!rl->script || !redis_client_available(rl->redis)) {
        serve_waiters(st, false, true);
        return;
    }
    long need_t = st->head ? st->head->tokens : 0;
    long want_r = st->rpm / RATELIMIT_SLICES, want_t = st->tpm / RATELIMIT_SLICES;
    if (want_r < 1)
        want_r = 1;
    if (want_t < need_t)
        want_t = need_t;
    char key[200], a[6][24];
    snprintf(key, sizeof key, REDIS_KEY_RATELIMIT_PREFIX "%s:%lld", st->key, (long long)st->window);
    snprintf(a[0], sizeof a[0], "%ld", st->rpm);
    snprintf(a[1], sizeof a[1], "%ld", st->tpm);
    snprintf(a[2], sizeof a[2], "%ld", st->rpm > 0 ? want_r : 0);
    snprintf(a[3], sizeof a[3], "%ld", st->tpm > 0 ? want_t : 0);
    snprintf(a[4], sizeof a[4], "%ld", st->tpm > 0 ? need_t : 0);
    snprintf(a[5], sizeof a[5], "%d", 2 * RATELIMIT_WINDOW_MS);
    const char *argv[] = {key, a[0], a[1], a[2], a[3], a[4], a[5]};
    size_t argvlen[7];
    for (int i = 0; i < 7; i++)
        argvlen[i] = strlen(argv[i]);
    st->taking = true;
    st->taking_window = st->window;
    if (redis_evalsha(rl->redis, rl->script, 1, 7, argv, argvlen, granted, st)) {
        st->taking = false;
        serve_waiters(st, false, true);
    }
}

enum ratelimit_result ratelimit_admit(struct ratelimit *rl, const char *key, long rpm, long tpm,
                                      long tokens, ratelimit_fn fn, void *ctx,
                                      struct ratelimit_wait **wait, struct ratelimit_view *view)
{
    int64_t now = clock_wall_ms();
    struct rl_state *st = state_for(rl, key, true);
    if (!st)
        return RATELIMIT_DENY;
    st->rpm = rpm;
    st->tpm = tpm;
    roll(st, now);
    if (!st->head && take_local(st, tokens)) {
        view_of(st, now, view);
        return RATELIMIT_ADMIT;
    }
    if (!rl->script || !redis_client_available(rl->redis)) {
        bool ok = take_alone(st, tokens);
        view_of(st, now, view);
        return ok ? RATELIMIT_ADMIT : RATELIMIT_DENY;
    }
    struct ratelimit_wait *w = calloc(1, sizeof *w);
    if (!w)
        return RATELIMIT_DENY;
    w->st = st;
    w->tokens = tokens;
    w->fn = fn;
    w->ctx = ctx;
    if (st->tail)
        st->tail->next = w;
    else
        st->head = w;
    st->tail = w;
    *wait = w;
    ask(st);
    /* ask() may have settled it at once (Redis refused the command): then fn has run. */
    return RATELIMIT_PENDING;
}

void ratelimit_cancel(struct ratelimit_wait *w)
{
    if (w)
        w->cancelled = true;
}

void ratelimit_settle(struct ratelimit *rl, const char *key, long estimated, long used)
{
    struct rl_state *st = state_for(rl, key, false);
    if (!st || st->tpm <= 0 || st->window != clock_wall_ms() / RATELIMIT_WINDOW_MS)
        return;
    /* Unused estimate goes back to this worker's lease; an overrun is taken from it. */
    st->lease_tok += estimated - used;
}

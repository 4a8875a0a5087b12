/* The response cache on the request path (this worker's store, then the shared one in Redis),
 * cached answers replayed whole or as streams, and coalescing: identical misses on any worker
 * share one upstream call. Owns r->cache. */
#include "base/clock.h"
#include "gateway/pipeline.h"
#include "redis/keyspace.h"
#include "redis/redis.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Whether Cache-Control has a directive; for max-age=N, sets *max_age_ms. */
static bool cache_control_has(const char *cc, const char *what, int64_t *max_age_ms)
{
    for (const char *p = cc; p && *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t w = strlen(what);
        if (n >= w && !strncasecmp(p, what, w)) {
            if (max_age_ms) {
                if (p[w] != '=')
                    return false;
                *max_age_ms = strtoll(p + w + 1, NULL, 10) * 1000;
            }
            return true;
        }
        p += n;
    }
    return false;
}

static void request_cache_ignored(void *ctx, int result, const redisReply *reply)
{
    (void)ctx;
    (void)result;
    (void)reply;
}

void request_cache_replay_begin(struct request *r, double saved_usd)
{
    r->relay.stream_mode = true;
    r->relay.stream_ended = true;
    sse_init(&r->relay.sse, REQUEST_STREAM_MAX_EVENT); /* freed with the request like any stream */
    r->cache.result = REQUEST_CACHE_HIT;
    r->usage.done = true;
    r->usage.cost_usd = 0;
    r->cache.saved_usd = saved_usd;
    r->state = REQUEST_STREAM;
}

/* A stored whole answer replayed to a streaming caller: per choice one event with the whole
 * message as its delta and one with the finish reason, the usage chunk when asked for, then
 * [DONE] — what the SDKs assemble into the same answer. */
static bool request_cache_hit_stream(struct request *r, const char *body, size_t len,
                                     double saved_usd)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    json_t *choices = json_object_get(doc, "choices");
    if (!json_is_array(choices)) {
        json_decref(doc);
        return false;
    }
    bool chat = r->ep->route == OPENAI_CHAT;
    const char *object = r->ep->chunk_object;
    buf_init(&r->relay.out, REQUEST_STREAM_HIGH_WATER + 2 * REQUEST_STREAM_MAX_EVENT + len * 2);
    r->relay.out_off = 0;
    int rc = 0;
    size_t i;
    json_t *c;
    json_array_foreach (choices, i, c) {
        json_t *index = json_object_get(c, "index");
        json_t *delta;
        if (chat) {
            delta = json_deep_copy(json_object_get(c, "message"));
            if (!json_is_object(delta)) {
                json_decref(delta);
                delta = json_object();
            }
            /* Streamed tool calls carry their position. */
            size_t k;
            json_t *call;
            json_array_foreach (json_object_get(delta, "tool_calls"), k, call)
                json_object_set_new(call, "index", json_integer((json_int_t)k));
        }
        json_t *first = json_pack(
            "{s:O?, s:s, s:O?, s:O?, s:[{s:O?, s:o, s:n}]}", "id", json_object_get(doc, "id"),
            "object", object, "created", json_object_get(doc, "created"), "model",
            json_object_get(doc, "model"), "choices", "index", index, chat ? "delta" : "text",
            chat ? delta : json_copy(json_object_get(c, "text")), "finish_reason");
        json_t *last = json_pack("{s:O?, s:s, s:O?, s:O?, s:[{s:O?, s:o, s:O?}]}", "id",
                                 json_object_get(doc, "id"), "object", object, "created",
                                 json_object_get(doc, "created"), "model",
                                 json_object_get(doc, "model"), "choices", "index", index,
                                 chat ? "delta" : "text", chat ? json_object() : json_string(""),
                                 "finish_reason", json_object_get(c, "finish_reason"));
        if (!first || !last)
            rc = TG_ERR_NOMEM;
        if (!rc)
            rc = request_emit_event(r, first);
        if (!rc)
            rc = request_emit_event(r, last);
        json_decref(first);
        json_decref(last);
    }
    if (!rc && r->relay.caller_usage) {
        json_t *usage = json_deep_copy(json_object_get(doc, "usage"));
        if (!json_is_object(usage)) {
            json_decref(usage);
            usage = json_object();
        }
        json_object_set_new(usage, "cost", json_real(0)); /* a hit costs nothing */
        json_t *u = json_pack("{s:O?, s:s, s:[], s:o}", "id", json_object_get(doc, "id"), "object",
                              object, "choices", "usage", usage);
        rc = u ? request_emit_usage_event(r, u) : TG_ERR_NOMEM;
        json_decref(u);
    }
    json_decref(doc);
    if (!rc)
        rc = buf_append_str(&r->relay.out, "data: [DONE]\n\n") ? TG_ERR_NOMEM : 0;
    if (rc) {
        buf_free(&r->relay.out);
        return false;
    }
    request_cache_replay_begin(r, saved_usd);
    return true;
}

bool request_cache_hit(struct request *r, const char *body, size_t len, double saved_usd)
{
    if (r->oreq.stream && r->ep->answer == ANSWER_KIND_RESPONSES)
        return request_responses_cache_stream(r, body, len, saved_usd);
    if (r->oreq.stream)
        return request_cache_hit_stream(r, body, len, saved_usd);
    char *copy = malloc(len + 1);
    if (!copy)
        return false;
    memcpy(copy, body, len);
    copy[len] = '\0';
    r->cache.result = REQUEST_CACHE_HIT;
    r->usage.done = true; /* a hit costs nothing upstream */
    r->usage.cost_usd = 0;
    r->cache.saved_usd = saved_usd;
    request_set_reply(r, 200, copy, len, "application/json");
    return true;
}

/* The shared store: HASH tg:cache:<hex> (redis/keyspace.h) {body, backend, cost, stored_at (wall
 * ms)}. */
struct request_cache_ask {
    struct request *r; /* NULL once the request is gone */
};

#define CACHE_REDIS_KEY_LEN (sizeof REDIS_KEY_CACHE_PREFIX - 1 + 64 + 1)

static void cache_redis_key(const unsigned char key[32], char out[CACHE_REDIS_KEY_LEN])
{
    memcpy(out, REDIS_KEY_CACHE_PREFIX, sizeof REDIS_KEY_CACHE_PREFIX - 1);
    buf_hex(key, 32, out + sizeof REDIS_KEY_CACHE_PREFIX - 1);
}

static void request_cache_answer(void *ctx, int result, const redisReply *reply)
{
    struct request_cache_ask *ask = ctx;
    struct request *r = ask->r;
    free(ask);
    if (!r)
        return;
    r->cache.ask = NULL;
    const char *body = NULL, *backend = "";
    size_t len = 0;
    int64_t stored = 0;
    double cost = 0;
    if (result == 0 && reply && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            const redisReply *k = reply->element[i], *v = reply->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (!strcmp(k->str, "body")) {
                body = v->str;
                len = v->len;
            } else if (!strcmp(k->str, "backend")) {
                backend = v->str;
            } else if (!strcmp(k->str, "stored_at")) {
                stored = strtoll(v->str, NULL, 10);
            } else if (!strcmp(k->str, "cost")) {
                cost = strtod(v->str, NULL);
            }
        }
    }
    int64_t age = clock_wall_ms() - stored;
    if (body && (r->cache.max_age_ms < 0 || age <= r->cache.max_age_ms)) {
        /* Kept here too, for the worker's next caller. */
        cache_put(r->w->cache, r->cache.key, body, len, backend, cost, clock_mono_ms(),
                  r->cfg->cache.ttl_s * 1000 - (age > 0 ? age : 0));
        if (request_cache_hit(r, body, len, cost)) {
            request_wake(r);
            return;
        }
    }
    r->state = REQUEST_COALESCE; /* a miss */
    request_wake(r);
}

static void request_cache_ask(struct request *r)
{
    struct request_cache_ask *ask = calloc(1, sizeof *ask);
    if (!ask)
        return;
    ask->r = r;
    char key[CACHE_REDIS_KEY_LEN];
    cache_redis_key(r->cache.key, key);
    const char *argv[] = {"HGETALL", key};
    size_t argvlen[] = {7, strlen(key)};
    if (redis_command(r->w->redis, 2, argv, argvlen, request_cache_answer, ask)) {
        free(ask);
        return;
    }
    r->cache.ask = ask;
    r->state = REQUEST_CACHE_WAIT;
}

/* Stores a complete answer in the shared store too (fire and forget). */
static void request_cache_share(struct request *r, const char *text, size_t len)
{
    static const char script[] =
        "redis.call('HSET', KEYS[1], 'body', ARGV[1], 'backend', ARGV[2], 'cost', ARGV[3], "
        "'stored_at', ARGV[4])\n"
        "redis.call('PEXPIRE', KEYS[1], ARGV[5])\n"
        "return 1\n";
    if (!r->w->redis || !redis_client_available(r->w->redis))
        return;
    const struct redis_script *s = redis_script_load(r->w->redis, script, sizeof script - 1);
    if (!s)
        return;
    char key[CACHE_REDIS_KEY_LEN], cost[40], stored[24], ttl[24];
    cache_redis_key(r->cache.key, key);
    snprintf(cost, sizeof cost, "%.10f", r->usage.cost_usd);
    snprintf(stored, sizeof stored, "%lld", (long long)clock_wall_ms());
    snprintf(ttl, sizeof ttl, "%ld", r->cfg->cache.ttl_s * 1000);
    const char *backend = r->up.target->backend->name;
    const char *argv[] = {key, text, backend, cost, stored, ttl};
    size_t argvlen[] = {strlen(key),    len,        strlen(backend), strlen(cost),
                        strlen(stored), strlen(ttl)};
    redis_evalsha(r->w->redis, s, 1, 6, argv, argvlen, request_cache_ignored, NULL);
}

/* ---- coalescing: identical misses share one upstream call -------------------------------- */

/* An answer posted by a leader (on any worker) for one of this worker's followers. */
struct worker_mail {
    uint64_t token;
    bool has_text;
    double cost_usd;
    size_t len;
    struct worker_mail *next;
    char text[];
};

/* flight_post_fn, on the leader's thread: queue it for the follower's worker. */
static void request_post(void *target, uint64_t token, const char *text, size_t len,
                         double cost_usd)
{
    struct worker *w = target;
    struct worker_mail *m = malloc(sizeof *m + (text ? len : 0));
    if (!m)
        return; /* the follower's wait ends and it goes on alone */
    *m = (struct worker_mail){
        .token = token, .has_text = text != NULL, .cost_usd = cost_usd, .len = text ? len : 0};
    if (text)
        memcpy(m->text, text, len);
    pthread_mutex_lock(&w->mail_lock);
    m->next = w->mail;
    w->mail = m;
    pthread_mutex_unlock(&w->mail_lock);
    ev_async_send(w->loop, &w->mail_async);
}

/* Takes a follower off this worker's list (and its timer off the loop). */
static void request_unlink_follower(struct request *r)
{
    list_unlink(&r->cache.follower);
    r->cache.follows = false;
    ev_timer_stop(r->w->loop, &r->cache.follow_timer);
}

/* A follower stops waiting (its time is up, or it is gone). */
void request_unfollow(struct request *r)
{
    if (!r->cache.follows)
        return;
    flight_leave(&r->cache.waiter);
    request_unlink_follower(r);
}

static void request_follow_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct request *r = t->data;
    request_unfollow(r);
    r->state = REQUEST_LIMIT; /* on its own now: it goes on as a miss */
    request_wake(r);
}

/* One delivered answer: the follower leaves the list and wakes with a hit, or without one
 * goes on as a miss. */
static void request_deliver(struct request *r, const struct worker_mail *m)
{
    request_unlink_follower(r);
    if (!m->has_text || !request_cache_hit(r, m->text, m->len, m->cost_usd))
        r->state = REQUEST_LIMIT; /* it goes on as a miss */
    request_wake(r);
}

void request_take_mail(struct worker *w)
{
    pthread_mutex_lock(&w->mail_lock);
    struct worker_mail *m = w->mail;
    w->mail = NULL;
    pthread_mutex_unlock(&w->mail_lock);
    size_t n = 0;
    for (struct worker_mail *x = m; x; x = x->next)
        n++;
    /* A herd of identical requests can leave thousands of followers and as many answers:
     * index the answers by token (open addressing) and walk the followers once. Without
     * memory for the index the answers are dropped and the followers' waits run out. */
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    struct worker_mail **slots = n ? calloc(cap, sizeof *slots) : NULL;
    if (slots) {
        for (struct worker_mail *x = m; x; x = x->next) {
            size_t i = (size_t)x->token & (cap - 1);
            while (slots[i])
                i = (i + 1) & (cap - 1);
            slots[i] = x;
        }
        struct list *node, *tmp;
        LIST_FOR_EACH_SAFE (node, tmp, &w->followers) {
            struct request *r = LIST_ENTRY(node, struct request, cache.follower);
            size_t i = (size_t)r->cache.flight_token & (cap - 1);
            while (slots[i] && slots[i]->token != r->cache.flight_token)
                i = (i + 1) & (cap - 1);
            if (slots[i])
                request_deliver(r, slots[i]);
        }
    }
    free(slots);
    for (struct worker_mail *next; m; m = next) {
        next = m->next;
        free(m);
    }
}

void request_drop_mail(struct worker *w)
{
    for (struct worker_mail *next, *m = w->mail; m; m = next) {
        next = m->next;
        free(m);
    }
    w->mail = NULL;
}

/* The longest a landed answer is kept for late identical misses. */
#define REQUEST_LINGER_MAX_MS 5000

/* How long a landed answer waits for identical misses that come just after it: as long as a
 * follower would wait, within a few seconds (it is held in memory, outside the cache). */
static int64_t request_linger_ms(const struct request *r)
{
    long wait_ms = r->cfg->cache.coalesce_wait_ms;
    return wait_ms < REQUEST_LINGER_MAX_MS ? wait_ms : REQUEST_LINGER_MAX_MS;
}

/* The leader's flight ends: with the stored answer, its followers are answered from it (a
 * hit, costing nothing); without one (the answer failed, was cut, or is not storable) they go
 * on on their own. */
void request_flight_land(struct request *r, const char *text, size_t len, double cost)
{
    if (!r->cache.leads)
        return;
    r->cache.leads = false;
    flight_land(r->cache.key, r->cache.flight_token, text, len, cost, request_post, clock_mono_ms(),
                request_linger_ms(r));
}

/* A cacheable miss: follows the flight already answering the same request, on any worker
 * (true: park until it lands or the wait ends), takes the answer such a flight landed a
 * moment ago (the reply is set), or leads a new one. */
bool request_coalesce(struct request *r)
{
    long wait_ms = r->cfg->cache.coalesce_wait_ms;
    if (r->cache.result != REQUEST_CACHE_MISS || !wait_ms)
        return false;
    r->cache.flight_token = worker_random(r->w);
    struct flight_landed landed = {0};
    switch (flight_join(r->cache.key, r->cache.flight_token, r->w, r->cache.read, r->cache.store,
                        clock_mono_ms(), &r->cache.waiter, &landed)) {
    case FLIGHT_LANDED:
        if (r->cache.max_age_ms >= 0 && clock_mono_ms() - landed.landed_ms > r->cache.max_age_ms) {
            free(landed.text); /* older than the caller accepts: a miss of its own */
            return false;
        }
        /* Kept here too, for this worker's next caller. */
        cache_put(r->w->cache, r->cache.key, landed.text, landed.len, "", landed.cost_usd,
                  clock_mono_ms(), r->cfg->cache.ttl_s * 1000);
        request_cache_hit(r, landed.text, landed.len, landed.cost_usd);
        free(landed.text);
        return false;
    case FLIGHT_LEAD:
        r->cache.leads = true;
        return false;
    case FLIGHT_FOLLOW:
        r->cache.follows = true;
        r->state = REQUEST_FOLLOW;
        list_push_head(&r->w->followers, &r->cache.follower);
        ev_timer_init(&r->cache.follow_timer, request_follow_timeout, (double)wait_ms / 1000.0, 0);
        r->cache.follow_timer.data = r;
        ev_timer_start(r->w->loop, &r->cache.follow_timer);
        return true;
    default:
        return false;
    }
}

/* Keeps a complete answer (this worker's store and the shared one) and hands it to the
 * requests waiting for it. */
void request_cache_store(struct request *r, const char *text, size_t len)
{
    if (len > r->cfg->cache.max_entry_bytes) {
        request_flight_land(r, NULL, 0, 0);
        return;
    }
    cache_put(r->w->cache, r->cache.key, text, len, r->up.target->backend->name, r->usage.cost_usd,
              clock_mono_ms(), r->cfg->cache.ttl_s * 1000);
    request_cache_share(r, text, len);
    request_flight_land(r, text, len, r->usage.cost_usd);
}

bool request_cache_lookup(struct request *r)
{
    const struct config_cache *cc = &r->cfg->cache;
    if (!r->w->cache || cc->mode == CONFIG_CACHE_OFF || r->upload)
        return false; /* an upload's key would not cover its file */
    if (cc->mode == CONFIG_CACHE_DETERMINISTIC && r->ep->generates && !cache_deterministic(r->json))
        return false;
    const char *ctl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CACHE_CONTROL);
    const char *scope = cc->global ? "" : (r->adm.key_name ? r->adm.key_name : "");
    if (cache_key(r->ep->path, r->model, scope, r->json, r->cache.key))
        return false;
    r->cache.result = REQUEST_CACHE_MISS;
    r->cache.store = !cache_control_has(ctl, "no-store", NULL);
    if (cache_control_has(ctl, "no-cache", NULL))
        return false;
    r->cache.read = true;
    int64_t max_age = -1;
    cache_control_has(ctl, "max-age", &max_age);
    r->cache.max_age_ms = max_age;
    const struct cache_entry *e = cache_get(r->w->cache, r->cache.key, clock_mono_ms(), max_age);
    if (e)
        return request_cache_hit(r, e->body, e->len, e->cost_usd);
    /* Not in this worker's store: ask the shared one, unless Redis is out of reach (then
     * the request goes on as a miss; a cache never fails a request). */
    if (r->w->redis && redis_client_available(r->w->redis))
        request_cache_ask(r);
    return false;
}

void request_cache_forget(struct request *r)
{
    request_unfollow(r);
    request_flight_land(r, NULL, 0, 0); /* followers of an unfinished leader go on alone */
    if (r->cache.capturing)
        cache_capture_free(&r->cache.capture);
    if (r->cache.ask)
        r->cache.ask->r = NULL; /* the answer, when it comes, finds nobody */
}

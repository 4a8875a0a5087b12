#include "tenancy/ledger-int.h"

#include "base/buf.h"
#include "base/clock.h"
#include "base/list.h"
#include "base/log.h"
#include "base/usd.h"
#include "redis/keyspace.h"
#include "redis/redis.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define LEDGER_FLUSH_RETRIES 3 /* ticks a flush tries again after a failed command */

/* ---- pure parts ------------------------------------------------------------------------------ */

/* src (NULL: "") into out, cut to LEDGER_FIELD_MAX bytes at a character boundary, with each
 * byte that is not part of valid UTF-8 replaced by '?'. */
static void ledger_copy_text(char out[LEDGER_FIELD_MAX + 1], const char *src)
{
    const unsigned char *p = (const unsigned char *)(src ? src : "");
    size_t n = strlen((const char *)p), o = 0, i = 0;
    while (i < n) {
        size_t len = buf_utf8_len(p + i, n - i);
        if (o + (len ? len : 1) > LEDGER_FIELD_MAX)
            break;
        if (len) {
            memcpy(out + o, p + i, len);
            o += len;
            i += len;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
}

void ledger_format_decimal(double x, char *out, size_t n)
{
    usd_format(out, n, x);
    size_t len = strlen(out);
    if (len > 2 && !strcmp(out + len - 2, ".0"))
        memset(out + len - 2, 0, 2); /* "0", "12": what the Lua script compares with '0' */
}

void ledger_record_from_entry(struct ledger_record *r, const struct ledger_entry *e,
                              const char *uid)
{
    snprintf(r->uid, sizeof r->uid, "%s", uid);
    ledger_copy_text(r->id, e->request_id);
    ledger_copy_text(r->key, e->key);
    ledger_copy_text(r->model, e->model);
    ledger_copy_text(r->backend, e->backend);
    ledger_copy_text(r->cache, e->cache);
    snprintf(r->status, sizeof r->status, "%u", e->status);
    snprintf(r->prompt_tokens, sizeof r->prompt_tokens, "%ld",
             e->prompt_tokens > 0 ? e->prompt_tokens : 0);
    snprintf(r->completion_tokens, sizeof r->completion_tokens, "%ld",
             e->completion_tokens > 0 ? e->completion_tokens : 0);
    /* Beyond 1e12 a number is a bug upstream, and would not fit the fixed-point text. */
    double cost = isfinite(e->cost_usd) && e->cost_usd > 0 && e->cost_usd < 1e12 ? e->cost_usd : 0;
    ledger_format_decimal(cost, r->cost_usd, sizeof r->cost_usd);
    double saved =
        isfinite(e->saved_usd) && e->saved_usd > 0 && e->saved_usd < 1e12 ? e->saved_usd : 0;
    ledger_format_decimal(saved, r->saved_usd, sizeof r->saved_usd);
    memcpy(r->estimated, e->estimated ? "1" : "0", 2);
    snprintf(r->cached_tokens, sizeof r->cached_tokens, "%ld",
             e->cached_tokens > 0 ? e->cached_tokens : 0);
    double lat =
        isfinite(e->latency_ms) && e->latency_ms > 0 && e->latency_ms < 1e12 ? e->latency_ms : 0;
    snprintf(r->latency_ms, sizeof r->latency_ms, "%.3f", lat);
    int64_t ts = e->ts_ms > 0 ? e->ts_ms : clock_wall_ms();
    snprintf(r->ts_ms, sizeof r->ts_ms, "%lld", (long long)ts);
}

/* The members of a spool line, in order. */
#define LEDGER_FIELDS(X)                                                                           \
    X(uid)                                                                                         \
    X(id)                                                                                          \
    X(key)                                                                                         \
    X(model)                                                                                       \
    X(backend)                                                                                     \
    X(cache) X(status) X(prompt_tokens) X(completion_tokens) X(cost_usd) X(latency_ms) X(ts_ms)

/* Appends "s" JSON-escaped (quotes included) at out[*o]; false when n is too small. */
static bool ledger_put_string(char *out, size_t n, size_t *o, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    size_t k = *o;
    if (k + 1 >= n)
        return false;
    out[k++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (k + 7 >= n)
            return false;
        if (*p == '"' || *p == '\\') {
            out[k++] = '\\';
            out[k++] = (char)*p;
        } else if (*p < 0x20) {
            memcpy(out + k, "\\u00", 4);
            out[k + 4] = hex[*p >> 4];
            out[k + 5] = hex[*p & 15];
            k += 6;
        } else {
            out[k++] = (char)*p;
        }
    }
    if (k + 1 >= n)
        return false;
    out[k++] = '"';
    *o = k;
    return true;
}

static bool ledger_put_raw(char *out, size_t n, size_t *o, const char *s)
{
    size_t len = strlen(s);
    if (*o + len >= n)
        return false;
    memcpy(out + *o, s, len);
    *o += len;
    return true;
}

int ledger_format_line(const struct ledger_record *r, char *out, size_t n)
{
    size_t o = 0;
    bool ok = ledger_put_raw(out, n, &o, "{");
    const char *sep = "";
#define LEDGER_PUT(f)                                                                              \
    ok = ok && ledger_put_raw(out, n, &o, sep) && ledger_put_raw(out, n, &o, "\"" #f "\":") &&     \
         ledger_put_string(out, n, &o, r->f);                                                      \
    sep = ",";
    LEDGER_FIELDS(LEDGER_PUT)
    LEDGER_PUT(saved_usd)
    LEDGER_PUT(estimated)
    LEDGER_PUT(cached_tokens)
#undef LEDGER_PUT
    ok = ok && ledger_put_raw(out, n, &o, "}\n");
    if (!ok || o >= n || o > LEDGER_LINE_MAX)
        return -1;
    out[o] = '\0';
    return (int)o;
}

static bool ledger_all_of(const char *s, const char *set, size_t min, size_t max)
{
    size_t n = strlen(s);
    return n >= min && n <= max && strspn(s, set) == n;
}

/* digits[.digits] */
static bool ledger_is_decimal(const char *s)
{
    size_t a = strspn(s, "0123456789");
    if (a == 0 || a > 13)
        return false;
    if (!s[a])
        return true;
    return s[a] == '.' && ledger_all_of(s + a + 1, "0123456789", 1, 12);
}

int ledger_parse_line(const char *line, size_t len, struct ledger_record *r)
{
    if (len > 0 && line[len - 1] == '\n')
        len--;
    if (len == 0 || len > LEDGER_LINE_MAX)
        return -1;
    json_t *doc = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return -1;
    }
    memset(r, 0, sizeof *r);
    bool ok = true;
#define LEDGER_GET(f)                                                                              \
    if (ok) {                                                                                      \
        const json_t *v = json_object_get(doc, #f);                                                \
        size_t vl = json_string_length(v);                                                         \
        ok = json_is_string(v) && vl < sizeof r->f && strlen(json_string_value(v)) == vl;          \
        if (ok)                                                                                    \
            memcpy(r->f, json_string_value(v), vl + 1);                                            \
    }
    LEDGER_FIELDS(LEDGER_GET)
    if (json_object_get(doc, "saved_usd")) { /* lines spooled before it existed have none */
        LEDGER_GET(saved_usd)
    } else {
        memcpy(r->saved_usd, "0", 2);
    }
    if (json_object_get(doc, "cached_tokens")) { /* nor this */
        LEDGER_GET(cached_tokens)
    } else {
        memcpy(r->cached_tokens, "0", 2);
    }
    if (json_object_get(doc, "estimated")) { /* nor this */
        LEDGER_GET(estimated)
    } else {
        memcpy(r->estimated, "0", 2);
    }
#undef LEDGER_GET
    json_decref(doc);
    static const char digits[] = "0123456789";
    if (!ok || !ledger_all_of(r->uid, "0123456789abcdef", 32, 32) ||
        !ledger_all_of(r->status, digits, 1, 10) || !ledger_all_of(r->estimated, "01", 1, 1) ||
        !ledger_all_of(r->prompt_tokens, digits, 1, 19) ||
        !ledger_all_of(r->completion_tokens, digits, 1, 19) ||
        !ledger_all_of(r->cached_tokens, digits, 1, 19) ||
        !ledger_all_of(r->ts_ms, digits, 1, 19) || !ledger_is_decimal(r->cost_usd) ||
        !ledger_is_decimal(r->latency_ms) || !ledger_is_decimal(r->saved_usd))
        return -1;
    return 0;
}

/* New records only: EXISTS first and SET last, so a script that fails half-way (a key of the
 * wrong type) leaves the record uncounted and it is tried again, rather than marked seen. */
const char ledger_lua[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], '*', 'uid', ARGV[3], 'id', ARGV[4],\n"
    "  'key', ARGV[5], 'model', ARGV[6], 'backend', ARGV[7], 'cache', ARGV[8],\n"
    "  'status', ARGV[9], 'prompt_tokens', ARGV[10], 'completion_tokens', ARGV[11],\n"
    "  'cost_usd', ARGV[12], 'latency_ms', ARGV[13], 'ts_ms', ARGV[14], 'saved_usd', ARGV[15],\n"
    "  'cached_tokens', ARGV[16], 'estimated', ARGV[17])\n"
    "local m = ARGV[6]\n"
    "redis.call('HINCRBY', KEYS[3], m .. ':requests', 1)\n"
    "redis.call('HINCRBY', KEYS[3], m .. ':prompt_tokens', ARGV[10])\n"
    "redis.call('HINCRBY', KEYS[3], m .. ':completion_tokens', ARGV[11])\n"
    "redis.call('HINCRBYFLOAT', KEYS[3], m .. ':cost_usd', ARGV[12])\n"
    "if ARGV[15] ~= '0' then redis.call('HINCRBYFLOAT', KEYS[3], m .. ':saved_usd', ARGV[15]) end\n"
    "if ARGV[16] ~= '0' then redis.call('HINCRBY', KEYS[3], m .. ':cached_tokens', ARGV[16]) end\n"
    "redis.call('SADD', KEYS[4], ARGV[5])\n"
    "redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])\n"
    "return 1\n";

void ledger_script_args(const struct ledger_record *r, struct ledger_args *out)
{
    snprintf(out->seen, sizeof out->seen, REDIS_KEY_USAGE_SEEN_PREFIX "%s", r->uid);
    snprintf(out->sum, sizeof out->sum, REDIS_KEY_USAGE_SUM_PREFIX "%s", r->key);
    snprintf(out->maxlen, sizeof out->maxlen, "%d", LEDGER_STREAM_MAXLEN);
    snprintf(out->ttl, sizeof out->ttl, "%d", LEDGER_SEEN_TTL_S);
    const char *v[LEDGER_ARGC] = {out->seen,
                                  REDIS_KEY_USAGE,
                                  out->sum,
                                  REDIS_KEY_USAGE_KEYS,
                                  out->maxlen,
                                  out->ttl,
                                  r->uid,
                                  r->id,
                                  r->key,
                                  r->model,
                                  r->backend,
                                  r->cache,
                                  r->status,
                                  r->prompt_tokens,
                                  r->completion_tokens,
                                  r->cost_usd,
                                  r->latency_ms,
                                  r->ts_ms,
                                  r->saved_usd,
                                  r->cached_tokens,
                                  r->estimated};
    for (int i = 0; i < LEDGER_ARGC; i++) {
        out->argv[i] = v[i];
        out->argvlen[i] = strlen(v[i]);
    }
}

/* ---- the write side -------------------------------------------------------------------------- */

static void ledger_link(struct ledger *l, struct ledger_slot *s)
{
    s->l = l;
    list_push_head(&l->slots, &s->link);
}

static void ledger_destroy(struct ledger *l)
{
    free(l->path);
    free(l);
}

static void ledger_replay(struct ledger *l);

/* Every answer of a replay batch is in: move on when all were acknowledged, and send the
 * next batch at once when `chain` (else the timer does). */
static void ledger_batch_done(struct ledger *l, bool chain)
{
    if (l->closing)
        return;
    if (l->batch_failed)
        return; /* the same lines again next tick; those already counted are duplicates */
    l->done = l->batch_end;
    if (l->done >= l->size) {
        if (ftruncate(l->fd, 0) == 0) {
            l->size = l->done = 0;
            if (l->spooling) {
                l->spooling = false;
                char path[512];
                log_event(LOG_INFO, "ledger_replayed", "\"spool\":\"%s\",\"replayed\":%llu",
                          log_escape(path, sizeof path, l->path),
                          (unsigned long long)atomic_load(&l->replayed));
            }
        }
    } else {
        ledger_compact(l);
    }
    ledger_publish_size(l);
    if (chain && l->size > l->done)
        ledger_replay(l);
}

static void ledger_send_held(struct ledger *l);
static void ledger_check_flush(struct ledger *l);

static void ledger_reply(void *ctx, int result, const redisReply *reply)
{
    struct ledger_slot *s = ctx;
    struct ledger *l = s->l;
    list_unlink(&s->link);
    bool ok = result == 0 && reply && reply->type == REDIS_REPLY_INTEGER;
    bool fresh = ok && reply->integer == 1;
    if (!ok)
        l->flush_failed = true;
    switch (s->origin) {
    case LEDGER_REPLAY:
        if (ok)
            ledger_count(fresh ? &l->replayed : &l->duplicates);
        else
            l->batch_failed = true;
        if (--l->batch_pending == 0)
            ledger_batch_done(l, true);
        break;
    case LEDGER_HELD:
        l->held_inflight--;
        if (ok)
            ledger_count(fresh ? &l->replayed : &l->duplicates);
        if (s->held && ok) {
            ledger_unhold(l, s->held);
            ledger_send_held(l);
        } else if (s->held) {
            /* Back to the front of the queue: the timer tries again. */
            list_unlink(&s->held->link);
            list_push_head(&l->held, &s->held->link);
        }
        break;
    case LEDGER_LIVE:
        l->live--;
        atomic_store_explicit(&l->inflight, l->live, memory_order_relaxed);
        if (ok)
            ledger_count(fresh ? &l->written : &l->duplicates);
        else if (!s->spooled)
            ledger_spool(l, &s->rec, "a Redis command failed or timed out");
        break;
    }
    free(s);
    if (l->closing) {
        if (list_empty(&l->slots))
            ledger_destroy(l);
        return;
    }
    ledger_check_flush(l);
}

static int ledger_send(struct ledger *l, struct ledger_slot *s)
{
    struct ledger_args a;
    ledger_script_args(&s->rec, &a);
    return redis_evalsha(l->redis, l->script, LEDGER_NUMKEYS, LEDGER_ARGC, a.argv, a.argvlen,
                         ledger_reply, s);
}

/* Sends held records to Redis, at most LEDGER_REPLAY_BATCH awaiting answers at a time; each
 * one acknowledged sends the next. */
static void ledger_send_held(struct ledger *l)
{
    struct list *node;
    while (!l->closing && l->held_inflight < LEDGER_REPLAY_BATCH && (node = list_first(&l->held)) &&
           redis_client_available(l->redis)) {
        struct ledger_held *h = LIST_ENTRY(node, struct ledger_held, link);
        struct ledger_slot *s = malloc(sizeof *s);
        if (!s)
            return;
        if (ledger_parse_line(h->line, h->len, &s->rec)) {
            free(s); /* cannot happen: the line was made by ledger_format_line() */
            ledger_unhold(l, h);
            ledger_drop(l, NULL, "corrupt held record");
            continue;
        }
        s->origin = LEDGER_HELD;
        s->spooled = false;
        s->held = h;
        ledger_link(l, s);
        if (ledger_send(l, s)) {
            list_unlink(&s->link);
            free(s);
            l->flush_failed = true;
            return;
        }
        list_unlink(&h->link);
        list_push_tail(&l->held_sent, &h->link);
        l->held_inflight++;
    }
}

/* Sends the next batch of spool lines, from `done`. Lines that do not parse are skipped
 * (and counted as dropped); a refused send ends the batch there. */
static void ledger_replay(struct ledger *l)
{
    if (l->closing || l->batch_pending || l->size <= l->done || !redis_client_available(l->redis))
        return;
    char *buf = malloc(LEDGER_READ_CHUNK);
    if (!buf)
        return;
    size_t want =
        (size_t)(l->size - l->done < LEDGER_READ_CHUNK ? l->size - l->done : LEDGER_READ_CHUNK);
    ssize_t got = pread(l->fd, buf, want, l->done);
    if (got <= 0) {
        free(buf);
        return;
    }
    l->batch_failed = false;
    off_t end = l->done;
    size_t at = 0;
    unsigned lines = 0;
    while (at < (size_t)got && lines < LEDGER_REPLAY_BATCH) {
        char *nl = memchr(buf + at, '\n', (size_t)got - at);
        if (!nl) {
            /* A line longer than a whole chunk cannot be a record: skip the chunk. */
            if (at == 0 && (size_t)got == LEDGER_READ_CHUNK) {
                ledger_drop(l, NULL, "corrupt spool line");
                end += got;
            }
            break;
        }
        size_t len = (size_t)(nl - (buf + at)) + 1;
        struct ledger_slot *s = malloc(sizeof *s);
        if (!s)
            break;
        if (ledger_parse_line(buf + at, len, &s->rec)) {
            free(s);
            if (len > 1)
                ledger_drop(l, NULL, "corrupt spool line");
        } else {
            s->origin = LEDGER_REPLAY;
            s->spooled = false;
            s->held = NULL;
            ledger_link(l, s);
            if (ledger_send(l, s)) {
                list_unlink(&s->link);
                free(s);
                l->flush_failed = true;
                break;
            }
            l->batch_pending++;
            lines++;
        }
        at += len;
        end += (off_t)len;
    }
    free(buf);
    l->batch_end = end;
    if (l->batch_pending == 0 && end > l->done)
        ledger_batch_done(l, false); /* only corrupt lines: skipped */
}

/* Is there nothing more to wait for? Then tell whoever asked ledger_flush(). Before that, what
 * Redis may take is sent: the spool's next batch, held records. */
static void ledger_check_flush(struct ledger *l)
{
    if (!l->flush_done || l->closing)
        return;
    if (l->live || l->batch_pending || l->held_inflight)
        return; /* an answer will call again */
    if ((l->size > l->done || l->n_held) && redis_client_available(l->redis)) {
        if (l->flush_failed && l->flush_retries < LEDGER_FLUSH_RETRIES) {
            /* A command failed (say, past its deadline on a busy Redis) while Redis is still
             * there: again at the next tick, a few times. */
            l->flush_failed = false;
            l->flush_retries++;
            return;
        }
        if (!l->flush_failed) {
            ledger_replay(l);
            ledger_send_held(l);
            if (l->batch_pending || l->held_inflight)
                return;
        }
    }
    /* Nothing left, or nothing Redis takes now: the rest stays in the spool (or memory). */
    void (*done)(void *) = l->flush_done;
    l->flush_done = NULL;
    done(l->flush_ctx);
}

static void ledger_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct ledger *l = t->data;
    ledger_spool_held(l);
    ledger_replay(l);
    ledger_send_held(l);
    ledger_check_flush(l);
}

struct ledger *ledger_new(struct ev_loop *loop, struct redis_client *redis, const char *spool_path)
{
    if (!loop || !redis || !spool_path || !*spool_path) {
        errno = EINVAL;
        return NULL;
    }
    struct ledger *l = calloc(1, sizeof *l);
    if (!l) {
        errno = ENOMEM;
        return NULL;
    }
    l->fd = -1;
    l->lock_fd = -1;
    list_init(&l->slots);
    list_init(&l->held);
    list_init(&l->held_sent);
    l->held_max = LEDGER_HOLD_DEFAULT;
    l->spool_max = LEDGER_SPOOL_MAX;
    l->loop = loop;
    l->redis = redis;
    if (!(l->path = strdup(spool_path)))
        goto err;
    if (!(l->script = redis_script_load(redis, ledger_lua, sizeof ledger_lua - 1))) {
        errno = ENOMEM;
        goto err;
    }
    if (getrandom(&l->uid_prefix, sizeof l->uid_prefix, 0) != sizeof l->uid_prefix)
        goto err;
    const char *step;
    if (ledger_open_spool(l, &step))
        ledger_no_spool(l, step, errno);
    else
        ledger_adopt(l);
    ledger_publish_size(l);
    ev_timer_init(&l->timer, ledger_timer_cb, LEDGER_REPLAY_INTERVAL_S, LEDGER_REPLAY_INTERVAL_S);
    l->timer.data = l;
    ev_timer_start(loop, &l->timer);
    if (l->size > 0) {
        l->spooling = true; /* so recovery is logged */
        char path[512];
        log_event(LOG_INFO, "ledger_spool_found", "\"spool\":\"%s\",\"bytes\":%lld",
                  log_escape(path, sizeof path, l->path), (long long)l->size);
    }
    return l;
err:;
    int saved = errno;
    if (l->fd != -1)
        close(l->fd);
    if (l->lock_fd != -1)
        close(l->lock_fd);
    ledger_destroy(l);
    errno = saved;
    return NULL;
}

void ledger_record(struct ledger *l, const struct ledger_entry *e)
{
    if (!l)
        return;
    struct ledger_slot *s = malloc(sizeof *s);
    struct ledger_record local;
    struct ledger_record *r = s ? &s->rec : &local;
    char uid[33];
    snprintf(uid, sizeof uid, "%016llx%016llx", (unsigned long long)l->uid_prefix,
             (unsigned long long)++l->uid_seq);
    ledger_record_from_entry(r, e, uid);
    const char *cause = !s                                  ? "out of memory"
                        : l->live >= LEDGER_INFLIGHT_MAX    ? "too many records await Redis"
                        : !redis_client_available(l->redis) ? "Redis unavailable"
                                                            : NULL;
    if (!cause && !l->closing) {
        s->origin = LEDGER_LIVE;
        s->spooled = false;
        s->held = NULL;
        ledger_link(l, s);
        if (ledger_send(l, s) == 0) {
            l->live++;
            atomic_store_explicit(&l->inflight, l->live, memory_order_relaxed);
            return;
        }
        list_unlink(&s->link);
        cause = "Redis refused the command";
    }
    ledger_spool(l, r, cause ? cause : "the ledger is closing");
    free(s);
}

void ledger_flush(struct ledger *l, void (*done)(void *ctx), void *ctx)
{
    if (!l || l->closing) {
        done(ctx);
        return;
    }
    l->flush_done = done;
    l->flush_ctx = ctx;
    l->flush_failed = false;
    l->flush_retries = 0;
    ledger_spool_held(l);
    ledger_check_flush(l);
}

void ledger_set_limits(struct ledger *l, size_t spool_bytes, size_t memory_bytes)
{
    if (!l)
        return;
    l->spool_max = spool_bytes < (size_t)LEDGER_SPOOL_MAX ? (off_t)spool_bytes : LEDGER_SPOOL_MAX;
    l->held_max = memory_bytes;
}

void ledger_free(struct ledger *l)
{
    if (!l || l->closing)
        return;
    l->flush_done = NULL;
    char path[512];
    log_escape(path, sizeof path, l->path);
    /* Unanswered live records may or may not be in Redis: spooled, they count once either
     * way (the uid). Held records sent and not answered yet are held again, for the spool. */
    uint64_t spooled = atomic_load_explicit(&l->spooled, memory_order_relaxed);
    unsigned unanswered = 0;
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &l->slots) {
        struct ledger_slot *s = LIST_ENTRY(node, struct ledger_slot, link);
        if (s->origin == LEDGER_LIVE && !s->spooled) {
            ledger_spool(l, &s->rec, NULL);
            s->spooled = true;
            unanswered++;
        } else if (s->origin == LEDGER_HELD && s->held) {
            list_unlink(&s->held->link);
            list_push_head(&l->held, &s->held->link);
            s->held = NULL;
        }
    }
    if (unanswered)
        log_event(LOG_WARN, "ledger_spooled_at_stop",
                  "\"spool\":\"%s\",\"records\":%u,\"spooled\":%llu,\"message\":\"usage records "
                  "Redis had not acknowledged when the worker stopped went to the spool; the "
                  "next start with this spool_dir replays them, each counted once\"",
                  path, unanswered,
                  (unsigned long long)(atomic_load_explicit(&l->spooled, memory_order_relaxed) -
                                       spooled));
    /* Held records: the spool's last chance; what it does not take now is lost. */
    ledger_spool_held(l);
    unsigned lost = 0;
    while ((node = list_first(&l->held))) {
        list_unlink(node);
        free(LIST_ENTRY(node, struct ledger_held, link));
        ledger_count(&l->dropped);
        lost++;
    }
    l->n_held = 0;
    l->held_bytes = 0;
    ledger_publish_held(l);
    if (lost)
        log_event(LOG_ERROR, "ledger_lost",
                  "\"spool\":\"%s\",\"records\":%u,\"message\":\"usage records neither Redis "
                  "nor the spool took were held in memory and are lost: the worker stopped\"",
                  path, lost);
    ev_timer_stop(l->loop, &l->timer);
    ledger_spool_close(l, path);
    l->closing = true;
    if (list_empty(&l->slots))
        ledger_destroy(l);
}

void ledger_stats(const struct ledger *l, struct ledger_stats *out)
{
    if (!l) {
        memset(out, 0, sizeof *out);
        return;
    }
    out->written = atomic_load_explicit(&l->written, memory_order_relaxed);
    out->duplicates = atomic_load_explicit(&l->duplicates, memory_order_relaxed);
    out->spooled = atomic_load_explicit(&l->spooled, memory_order_relaxed);
    out->replayed = atomic_load_explicit(&l->replayed, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&l->dropped, memory_order_relaxed);
    out->inflight = atomic_load_explicit(&l->inflight, memory_order_relaxed);
    out->spool_bytes = atomic_load_explicit(&l->spool_bytes, memory_order_relaxed);
    out->held = atomic_load_explicit(&l->held_records, memory_order_relaxed);
    out->held_bytes = atomic_load_explicit(&l->held_memory, memory_order_relaxed);
}

/* The usage ledger: exactly one record per request in a Redis stream, with running totals per
 * key and model, and a local spool file that keeps records while Redis is unreachable.
 *
 * Redis layout (the names, types and fields are in redis/keyspace.h): the stream tg:usage
 * holds one entry per request (XADD MAXLEN ~ LEDGER_STREAM_MAXLEN); tg:usage:sum:<key> sums
 * requests, tokens, cost and savings per model; tg:usage:keys names the keys that have sums;
 * tg:usage:seen:<uid> marks a record counted for LEDGER_SEEN_TTL_S. One Lua script writes
 * all of it for a record, only when tg:usage:seen:<uid> does not exist yet, so a record sent
 * twice (reply lost, then replayed from the spool) counts once.
 *
 * De-duplication is by a record id (uid: 128 bits, made by ledger_record()), not by the
 * request id: a request id may come from the client (x-request-id), and a client that reused
 * one would otherwise have its later requests dropped from the ledger. The request id is kept
 * in the entry ("id").
 *
 * The write side (struct ledger) is one per worker, on the worker's loop and thread, over the
 * worker's async Redis client (redis/redis.h). It never waits: a record is sent at once or,
 * when Redis is not available, too many records are in flight, or the command fails or times
 * out, appended to the worker's spool file as one JSON line (a local write(2) is the accepted
 * cost). A timer replays the spool in batches while Redis is available and truncates it once
 * every line read was acknowledged. When the spool cannot take a record either (its disk is
 * full or failing, or it reached its cap), the record is held in memory, up to a cap too
 * (ledger_set_limits()), and the timer hands it to whichever takes it first, the spool
 * or Redis; beyond that cap records are dropped (counted and logged). Memory is bounded by
 * LEDGER_INFLIGHT_MAX records of at most LEDGER_FIELD_MAX bytes per text field plus the held
 * records' cap; the spool by its own (at most LEDGER_SPOOL_MAX bytes).
 *
 * The read side (ledger_usage(), ledger_cli()) is the blocking client (redis/sync.h), as in
 * tenancy/keys.h: for the admin thread and the one-shot CLI, never for a worker. */
#ifndef TOLLGATE_LEDGER_H
#define TOLLGATE_LEDGER_H

#include "config/config.h"
#include "tenancy/keys.h"

#include <ev.h>
#include <stdint.h>
#include <stdio.h>

#define LEDGER_STREAM_MAXLEN 1000000 /* approximate (MAXLEN ~) */
#define LEDGER_SEEN_TTL_S 604800     /* a record replayed later than this counts again */
#define LEDGER_FIELD_MAX 256         /* longer text fields are cut (at a UTF-8 boundary) */
#define LEDGER_LINE_MAX 16384        /* longest spool line; longer lines are corrupt */
#define LEDGER_INFLIGHT_MAX 1024     /* live records awaiting Redis's answer, per worker */
#define LEDGER_REPLAY_BATCH 256      /* spool lines sent per replay round */
#define LEDGER_SPOOL_MAX (1ll << 30) /* bytes a spool may hold, at most */
#define LEDGER_REPLAY_INTERVAL_S 1.0
#define LEDGER_HOLD_DEFAULT (1u << 20) /* bytes of records held in memory, until set */
/* Spool files are named LEDGER_SPOOL_PREFIX "<port>-<worker>" LEDGER_SPOOL_SUFFIX; a ledger
 * adopts the ones in its directory that no live process holds (see ledger_new()). */
#define LEDGER_SPOOL_PREFIX "tollgate-ledger-"
#define LEDGER_SPOOL_SUFFIX ".spool"

/* What the request path knows when a request ends. Strings are copied; NULL counts as "". */
struct ledger_entry {
    const char *request_id, *key, *model, *backend, *cache;
    unsigned status;
    long prompt_tokens, completion_tokens;
    double cost_usd, latency_ms;
    double saved_usd;   /* a cache hit: what the stored answer cost when it was made */
    bool estimated;     /* billed on the gateway's estimates, not the node's usage */
    long cached_tokens; /* of prompt_tokens, those billed at the cached-input price */
    int64_t ts_ms;      /* wall clock, ms since the epoch; 0: now */
};

/* A record in text form, as it is sent and spooled. */
struct ledger_record {
    char uid[33]; /* 32 lowercase hex digits */
    char id[LEDGER_FIELD_MAX + 1], key[LEDGER_FIELD_MAX + 1], model[LEDGER_FIELD_MAX + 1],
        backend[LEDGER_FIELD_MAX + 1], cache[LEDGER_FIELD_MAX + 1];
    char status[12], prompt_tokens[24], completion_tokens[24], ts_ms[24];
    char cost_usd[40];      /* fixed point, no exponent: "0.00123" */
    char saved_usd[40];     /* the same; "0" unless a cache hit */
    char estimated[2];      /* "1": billed on the gateway's estimates; else "0" */
    char cached_tokens[24]; /* "0" unless the node reported cached prompt tokens */
    char latency_ms[40];    /* fixed point, 3 decimals */
};

/* Counters since ledger_new(). Any thread may read them (relaxed atomics). */
struct ledger_stats {
    uint64_t written;     /* acknowledged by Redis as new, live */
    uint64_t duplicates;  /* acknowledged as already counted (live or replayed) */
    uint64_t spooled;     /* appended to the spool */
    uint64_t replayed;    /* acknowledged as new from the spool or from memory */
    uint64_t dropped;     /* lost: past the memory cap, at exit, or a corrupt spool line */
    uint64_t inflight;    /* live records awaiting an answer now */
    uint64_t spool_bytes; /* not yet replayed */
    uint64_t held;        /* records held in memory now: the spool did not take them */
    uint64_t held_bytes;  /* their memory (against the cap) */
};

struct ledger;
struct redis_client;

/* ---- pure parts (no I/O; tests/unit/test_ledger.c) ----------------------------------------- */

/* Fills r from e with the given uid (32 hex digits). Text fields are cut to LEDGER_FIELD_MAX
 * bytes and invalid UTF-8 bytes become '?'. Negative token counts and non-finite or negative
 * numbers become 0. */
void ledger_record_from_entry(struct ledger_record *r, const struct ledger_entry *e,
                              const char *uid);

/* The spool line of r: one JSON object and '\n', NUL-terminated in out. Returns its length
 * (without the NUL), or -1 when it does not fit in n bytes. */
int ledger_format_line(const struct ledger_record *r, char *out, size_t n);

/* The inverse of ledger_format_line() (the '\n' is optional). 0, or -1 for a line that is
 * not a valid record. */
int ledger_parse_line(const char *line, size_t len, struct ledger_record *r);

/* x as base/usd.h prints amounts (at most 10 decimals, never an exponent, no float noise),
 * without a trailing ".0" ("0", "12.5"), into out[n]. */
void ledger_format_decimal(double x, char *out, size_t n);

/* The Lua script (EVALSHA sha 4 seen stream sum keyset  maxlen ttl uid id key model backend
 * cache status prompt completion cost latency ts); returns 1 when the record was new and is
 * now counted, 0 when it was already counted. Exposed for tests and tools. */
extern const char ledger_lua[];

/* The arguments of one script call after EVALSHA/EVAL, the script and numkeys
 * (LEDGER_NUMKEYS): the keys (seen, stream, sum, key set), then the values. argv points into
 * r and into this struct. */
#define LEDGER_NUMKEYS 4
#define LEDGER_ARGC 21
struct ledger_args {
    const char *argv[LEDGER_ARGC];
    size_t argvlen[LEDGER_ARGC];
    char seen[64], sum[LEDGER_FIELD_MAX + 32], maxlen[24], ttl[24];
};
void ledger_script_args(const struct ledger_record *r, struct ledger_args *out);

/* ---- the write side (a worker's loop) ------------------------------------------------------ */

/* A ledger on `loop` writing through `redis` (required; both must outlive every use, see
 * ledger_free()) and spooling to spool_path (created 0600 if missing; its directory must
 * exist; one file per worker: nothing else may write it). Records left in the spool by an
 * earlier run are replayed. So are those of orphaned spools: files named like spools in the
 * same directory whose lock no live process holds (a run on another port, or with more
 * workers) are appended to this spool, whole lines only, and removed; the uid keeps a record
 * counted once even if that is interrupted. A spool that cannot be used (its directory
 * missing or not writable, or its lock held by another process) is logged, and the ledger
 * works without one: what Redis does not take is held in memory. NULL with errno set
 * (EINVAL, ENOMEM) on failure. Loop thread only, like every function here but
 * ledger_stats(). */
struct ledger *ledger_new(struct ev_loop *loop, struct redis_client *redis, const char *spool_path);

/* Records one request: never waits, never fails silently (a record that can be neither sent
 * nor spooled is counted in `dropped` and logged). Call it exactly once per request. A NULL
 * ledger (no redis.url) does nothing. */
void ledger_record(struct ledger *l, const struct ledger_entry *e);

/* Caps (until set: LEDGER_SPOOL_MAX and LEDGER_HOLD_DEFAULT): the spool file's size, at most
 * LEDGER_SPOOL_MAX (spools adopted by ledger_new() may pass it: new records then wait in
 * memory until the replay makes room), and the memory of records held because the spool did
 * not take them (0: none are held, they are dropped). For the records that come next. */
void ledger_set_limits(struct ledger *l, size_t spool_bytes, size_t memory_bytes);

/* Asks the ledger to hand Redis what it can before it ends (a graceful stop): the spool is
 * replayed back to back and held records are sent. done(ctx) is called once, from the loop
 * or before this returns, as soon as no record awaits Redis's answer and nothing is left
 * that Redis takes now: the spool and memory are empty, or Redis is unavailable, or commands
 * kept failing (a failure is tried again at the next replay tick, a few times); what is left
 * stays in the spool, or in memory. Records made
 * meanwhile are waited for too. A second call replaces the first (its done is not called).
 * NULL or a closing ledger: done(ctx) at once. */
void ledger_flush(struct ledger *l, void (*done)(void *ctx), void *ctx);

/* Ends the ledger: records still awaiting Redis's answer are written to the spool (they are
 * replayed next time, and counted once thanks to the uid), and so are records held in memory
 * when the spool takes them now (the rest are lost, counted as dropped and logged); the
 * spool is closed, and removed when nothing in it waits for Redis. Every such case is logged
 * as what it is (never as Redis being unavailable). May be
 * called before or after redis_client_free() of its client (when before, the ledger's
 * memory stays until the client has answered the commands still in flight, by its command
 * deadline or at redis_client_free()). The loop must still exist. NULL is fine. */
void ledger_free(struct ledger *l);

/* Copies the counters (zeros for NULL). Any thread, while the ledger (or its memory, see
 * ledger_free()) exists. */
void ledger_stats(const struct ledger *l, struct ledger_stats *out);

/* ---- the read side (blocking: admin thread, CLI) -------------------------------------------- */

/* One key's use of one model, summed over every record. */
struct ledger_usage_row {
    char key[LEDGER_FIELD_MAX + 1];
    char model[LEDGER_FIELD_MAX + 1];
    long long requests, prompt_tokens, completion_tokens;
    char cost_usd[48]; /* as Redis holds it: a decimal string */
};

/* The totals of one key (key != NULL) or of every key, sorted by key then model, as a malloc'd
 * array (NULL when n is 0; free() it). A key without records gives no rows. Opens its own
 * blocking connection (redis/sync.h: 500 ms connect, 1 s per command) from cfg->redis_url.
 * Errors as tenancy/keys.h, whose struct keys_error the admin API maps for both
 * (KEYS_EUNAVAIL with code usage_store_unavailable: no redis.url, or Redis down, slow or
 * failing). */
int ledger_usage(const struct config *cfg, const char *key, struct ledger_usage_row **out,
                 size_t *n, struct keys_error *err);

/* {"object":"list","data":[{"key","model","requests","prompt_tokens","completion_tokens",
 * "cost_usd"}...]} as compact JSON text (cost_usd a number), malloc'd; NULL on OOM. */
char *ledger_usage_json(const struct ledger_usage_row *rows, size_t n, size_t *len);

/* `tollgate -c FILE usage [--key NAME] [--json]`: argv[0] is "usage" itself. Exit status 0 ok, 1
 * error, 2 usage. Uses getopt: call from main only. */
int ledger_cli(const struct config *cfg, int argc, char **argv);

#endif

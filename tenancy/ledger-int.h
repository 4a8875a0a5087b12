/* Internal to the ledger: its state, shared by the files that make it up (ledger.c: records,
 * Redis, the replay, the public entry points; ledger_spool.c: the spool file, adopting
 * orphaned spools, and the records held in memory when the spool cannot take them). Nothing
 * outside tenancy/ledger*.c includes this header; the API is tenancy/ledger.h.
 *
 * Everything here runs on the ledger's loop thread, except the _Atomic counters of struct
 * ledger, which any thread may read (relaxed atomics, see ledger_stats()). */
#ifndef TOLLGATE_LEDGER_INT_H
#define TOLLGATE_LEDGER_INT_H

#include "base/list.h"
#include "tenancy/ledger.h"

#include <ev.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define LEDGER_READ_CHUNK 65536 /* spool bytes read per replay round, at most */

/* A record that neither Redis nor the spool took (the spool's disk is full or failing), held
 * in memory until one of them does. */
struct ledger_held {
    struct list link; /* on l->held, or on l->held_sent while Redis is asked */
    size_t len;
    char line[]; /* its spool line, '\n' included */
};

/* Where a record awaiting Redis's answer comes from. */
enum ledger_origin {
    LEDGER_LIVE,   /* ledger_record() */
    LEDGER_REPLAY, /* a line of the spool */
    LEDGER_HELD,   /* a record held in memory */
};

/* A record awaiting Redis's answer. */
struct ledger_slot {
    struct ledger *l;
    struct list link; /* on l->slots */
    enum ledger_origin origin;
    bool spooled;             /* live, and written to the spool by ledger_free() already */
    struct ledger_held *held; /* LEDGER_HELD: its entry; NULL once ledger_free() took it back */
    struct ledger_record rec;
};

struct ledger {
    struct ev_loop *loop;
    struct redis_client *redis;
    const struct redis_script *script;
    char *path;
    int fd;          /* the spool, O_RDWR | O_APPEND; -1 once closed */
    int lock_fd;     /* <spool>.lock, flock()ed for the ledger's life: one writer a spool */
    off_t size;      /* the spool's length: this ledger is its only writer */
    off_t done;      /* bytes at its start already replayed (or skipped as corrupt) */
    off_t batch_end; /* where the replay batch in flight ends */
    unsigned batch_pending;
    bool batch_failed;
    bool closing; /* ledger_free() was called; the memory waits for the last answer */
    ev_timer timer;
    struct list slots; /* every slot awaiting an answer, the newest first */
    unsigned live;     /* live slots among them */
    uint64_t uid_prefix, uid_seq;
    double last_drop_log;
    bool spooling; /* since the last "ledger_spooling" log line */
    /* Records the spool did not take: in memory, at most held_max bytes (entry and line). */
    struct list held;      /* struct ledger_held not sent to Redis, the oldest first */
    struct list held_sent; /* those sent, awaiting the answer */
    size_t held_bytes, held_max;
    off_t spool_max;        /* the spool's own cap (ledger_set_limits()) */
    unsigned n_held;        /* entries on both lists */
    unsigned held_inflight; /* slots of held records awaiting an answer */
    bool holding;           /* since the last "ledger_holding" log line */
    /* ledger_flush(): whom to tell, and whether a command failed since it was asked. */
    void (*flush_done)(void *ctx);
    void *flush_ctx;
    bool flush_failed;
    unsigned flush_retries; /* ticks that tried again after a failure */
    char no_spool[160];     /* why the ledger has no spool (ledger_no_spool()); "" if it has */
    _Atomic uint64_t written, duplicates, spooled, replayed, dropped, inflight, spool_bytes;
    _Atomic uint64_t held_records, held_memory;
};

/* ---- shared helpers ----------------------------------------------------------------------- */

static inline void ledger_count(_Atomic uint64_t *a)
{
    atomic_fetch_add_explicit(a, 1, memory_order_relaxed);
}

static inline void ledger_publish_size(struct ledger *l)
{
    atomic_store_explicit(&l->spool_bytes, (uint64_t)(l->size - l->done), memory_order_relaxed);
}

static inline void ledger_publish_held(struct ledger *l)
{
    atomic_store_explicit(&l->held_records, l->n_held, memory_order_relaxed);
    atomic_store_explicit(&l->held_memory, l->held_bytes, memory_order_relaxed);
}

/* ---- ledger_spool.c ----------------------------------------------------------------------- */

/* Counts r (NULL: a line that is not a record) as dropped, and logs why, at most once per
 * LEDGER_DROP_LOG_INTERVAL_S. */
void ledger_drop(struct ledger *l, const struct ledger_record *r, const char *why);
/* Frees a held entry that reached the spool or Redis. */
void ledger_unhold(struct ledger *l, struct ledger_held *h);
/* Spools r: Redis did not take it (cause: why, for the log; NULL logs nothing). When the
 * spool cannot take it either, it is held in memory (or dropped past the memory cap). */
void ledger_spool(struct ledger *l, const struct ledger_record *r, const char *cause);
/* Held records go to the spool while it takes them (the disk has room again). */
void ledger_spool_held(struct ledger *l);
/* Rewrites the spool without its replayed head once that head is large and most of the file;
 * on any failure the file stays as it is. */
void ledger_compact(struct ledger *l);
/* Locks and opens l->path. 0, or -1 with errno set and *step saying which step failed. */
int ledger_open_spool(struct ledger *l, const char **step);
/* The spool cannot be used (step failed with err): the ledger goes on without one. */
void ledger_no_spool(struct ledger *l, const char *step, int err);
/* Appends the orphaned spools next to l's (no live process holds their lock) to l's spool. */
void ledger_adopt(struct ledger *l);
/* Closes the spool and its lock (ledger_free()): the file is removed when nothing in it waits
 * for Redis, else kept for the next start (logged; path is l->path escaped for the log). */
void ledger_spool_close(struct ledger *l, const char *path);

#endif

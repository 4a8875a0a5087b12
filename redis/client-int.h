/* Internal to redis/: the asynchronous client's state, shared by the files that make up the
 * client (redis.c: commands, deadlines, the breaker, the public entry points; conn.c: the two
 * connections and host lookups; script.c: EVALSHA; pubsub.c: subscriptions). Nothing outside
 * redis/ includes this header; the API is redis/redis.h.
 *
 * Everything here runs on the client's loop thread, except the counters in struct
 * redis_counters, which any thread may read (relaxed atomics). */
#ifndef TOLLGATE_REDIS_CLIENT_INT_H
#define TOLLGATE_REDIS_CLIENT_INT_H

#include "base/list.h"
#include "redis/redis.h"

#include <hiredis/async.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define REDIS_MAX_ARGS (1 << 20) /* sanity cap on one command's arguments */
#define REDIS_MAX_ADDRS 8        /* addresses of one lookup tried in turn */

/* A copy of an EVALSHA's arguments, kept for the EVAL fallback. One allocation: the pointer
 * and length arrays and the bytes follow the struct. */
struct redis_args {
    const struct redis_script *script;
    int argc;
    const char **argv; /* argv[0..2] = EVALSHA|EVAL, sha|body, numkeys */
    size_t *lens;
    char numkeys[16];
};

/* One command hiredis owes a callback for. hiredis 0.14 cannot cancel a command, so a command
 * that timed out (or whose client went away) stays here until hiredis calls back, and that
 * callback sees from fn/c that nobody is waiting any more. */
struct redis_cmd {
    struct redis_client *c; /* NULL once the client is gone: the callback just frees this */
    redis_reply_fn fn;      /* NULL once answered (timeout): a late reply is dropped */
    void *ctx;
    double deadline;         /* CLOCK_MONOTONIC seconds */
    struct list link;        /* on the client's pending or zombie list, or its pool */
    struct redis_args *args; /* EVALSHA only */
    /* After fn got REDIS_ETIMEOUT: the reply that came late after all, once (0 or
     * REDIS_EREPLY with it; REDIS_ENOTCONN without, when the connection or the client went
     * first, and then it may only free late_ctx). Never called when fn got anything else. */
    redis_reply_fn late;
    void *late_ctx;
};

enum conn_state {
    CONN_IDLE,       /* waiting for the retry timer (or not started) */
    CONN_RESOLVING,  /* host lookup running; the timer polls it */
    CONN_CONNECTING, /* hiredis connecting, then AUTH/SELECT; the timer is the deadline */
    CONN_READY,
};

/* A getaddrinfo_a() request; separate from the client because glibc's helper thread writes
 * into it until the lookup ends, which may be after the client is gone. */
struct redis_lookup {
    struct gaicb req;
    struct gaicb *list[1];
    struct addrinfo hints;
    char host[256];
    char port[8];
};

struct redis_conn {
    struct redis_client *c;
    redisAsyncContext *ac; /* NULL when not connected or connecting */
    enum conn_state state;
    bool subscriber; /* the pub/sub connection */
    bool started;
    bool up;          /* reached READY since the last failure (for logging transitions) */
    bool down_logged; /* a failure was logged since the last READY */
    unsigned attempts;
    unsigned handshake_left;     /* AUTH/SELECT/PING replies still awaited */
    ev_timer timer;              /* retry delay, lookup polling, or attempt deadline */
    double backoff;              /* next retry delay in seconds before jitter; 0 = minimum */
    double deadline;             /* CLOCK_MONOTONIC end of the current attempt */
    double poll;                 /* lookup polling interval */
    struct redis_lookup *lookup; /* a running lookup, possibly left by an earlier attempt */
    /* The last lookup's addresses, one per attempt; looked up again when used up or after
     * a connection was made (so a moved service is found). */
    char addrs[REDIS_MAX_ADDRS][INET6_ADDRSTRLEN];
    unsigned n_addrs, next_addr;
};

struct redis_script {
    char sha[41];
    char *body;
    size_t len;
    struct redis_script *next;
};

struct redis_subscriber {
    redis_message_fn fn;
    void *ctx;
    struct redis_subscriber *next;
};

/* One subscribed channel: hiredis keeps a single callback per channel name, so the channel
 * (its privdata) fans messages out to its subscribers. */
struct redis_chan {
    char *name;
    size_t len;
    struct redis_subscriber *subs, **subs_tail;
    struct redis_chan *next;
};

/* Single writer (the loop's thread), readers anywhere: relaxed loads and stores. */
struct redis_counters {
    _Atomic uint64_t commands, errors, timeouts, rejected, reconnects, breaker_opens;
    atomic_int breaker;
    atomic_bool connected;
};

struct redis_client {
    struct ev_loop *loop;
    struct redis_url url;
    bool numeric_host;
    double timeout, connect_timeout, reconnect_min, reconnect_max, cooloff_min, cooloff_max;
    unsigned breaker_failures, max_pending;

    struct redis_conn cmd, sub;

    struct list pending; /* sent, awaited; earliest deadline first */
    struct list zombies; /* timed out, hiredis still owes their callbacks */
    unsigned n_pending, n_zombies;
    ev_timer deadline_timer; /* at or before the first pending deadline */
    struct list pool;        /* records kept for reuse */
    unsigned n_pool;

    enum redis_breaker breaker;
    unsigned fails; /* consecutive, while closed */
    double cooloff; /* current open period in seconds; 0 after a close */
    bool probe_due; /* the cool-off ended while disconnected: probe once connected */
    ev_timer breaker_timer;

    struct redis_script *scripts;
    struct redis_chan *chans;

    /* Callbacks may free the client; while depth > 0 the memory stays until the outermost
     * entry from the loop unwinds. */
    unsigned depth;
    bool dead;

    uint64_t rng;
    char errstr[256];
    struct redis_counters st;
};

/* ---- shared helpers ----------------------------------------------------------------------- */

/* Single writer: a plain load and store, no read-modify-write needed. */
static inline void redis_count(_Atomic uint64_t *a)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static inline double redis_min_d(double a, double b)
{
    return a < b ? a : b;
}

/* redis.c. Every entry from the loop (a callback, a timer) into the client is bracketed by
 * enter/leave: a callback may free the client, whose memory then stays until leave. */
void redis_client_enter(struct redis_client *c);
void redis_client_leave(struct redis_client *c);
/* Counts a failure of the command connection towards opening the breaker. */
void redis_breaker_failure(struct redis_client *c);
/* Sends the breaker's PING probe (the breaker goes half-open). */
void redis_breaker_probe(struct redis_client *c);
/* The checks shared by redis_command() and redis_evalsha(); counts a refusal. */
int redis_client_gate(struct redis_client *c);
/* Sends a command whatever the breaker says. Takes `args` (freed on failure). `late`, when not
 * NULL, is redis_evalsha_late()'s (on failure, neither is called). */
int redis_client_send(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                      redis_reply_fn fn, void *ctx, struct redis_args *args, redis_reply_fn late,
                      void *late_ctx);

/* conn.c */
void redis_conn_init(struct redis_client *c, struct redis_conn *k, bool subscriber);
/* Starts a connection attempt now (a lookup first when the host is a name). */
void redis_conn_attempt(struct redis_conn *k);
/* Forgets the hiredis context (see conn.c). */
void redis_conn_drop(struct redis_conn *k);
/* The attempt failed or the connection was lost: log, count, retry after the backoff. */
void redis_conn_retry(struct redis_conn *k, const char *why);
/* Drops the connection and abandons a running lookup: the client is being freed. */
void redis_conn_close(struct redis_conn *k);

/* pubsub.c */
/* Subscribes k (the pub/sub connection, ready) to ch. */
void redis_sub_send(struct redis_conn *k, struct redis_chan *ch);
void redis_chans_free(struct redis_client *c);

/* script.c */
void redis_scripts_free(struct redis_client *c);

#endif

/* Redis client for one worker's event loop: hiredis's async API on libev, with a deadline on
 * every command, reconnection with backoff, a circuit breaker, EVALSHA with EVAL fallback and
 * a pub/sub subscriber that resubscribes by itself.
 *
 * Redis is an accelerator here (cache, shared counters), never a dependency: nothing in this
 * module waits. A command is either sent at once or refused at once (not connected, breaker
 * open, too many in flight), and every sent command is answered by its deadline.
 *
 * Threads: a client belongs to the loop it was created on and to that loop's thread; every
 * function except redis_client_stats() must be called there, and every callback runs there.
 * redis_client_stats() may be called from any thread (relaxed atomic loads).
 *
 * The process must ignore SIGPIPE (gateway/main.c does): hiredis writes with write(2).
 *
 * Host names are resolved with getaddrinfo_a(), polled from the loop, so a slow DNS server
 * never blocks it; IP addresses and unix sockets need no lookup. */
#ifndef TOLLGATE_REDIS_H
#define TOLLGATE_REDIS_H

#include <ev.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Results: 0 is success (REDIS_OK, which hiredis already defines as 0), else one of these. */
enum redis_result {
    REDIS_ENOTCONN = -1, /* no connection now, or it was lost before the reply came */
    REDIS_ETIMEOUT = -2, /* no reply within the command timeout */
    REDIS_EOPEN = -3,    /* the circuit breaker is open: not even tried */
    REDIS_EREPLY = -4,   /* Redis answered with an error reply (reply->str says which) */
    REDIS_ENOMEM = -5,
    REDIS_EBUSY = -6,  /* max_pending commands are already in flight */
    REDIS_EINVAL = -7, /* a bad argument or URL */
};

/* A short English name for a result ("timeout", ...); never NULL. */
const char *redis_strerror(int result);

/* ---- URLs --------------------------------------------------------------------------------- */

/* What a Redis URL says. Accepted forms:
 *   redis://[[user]:password@]host[:port][/db][?db=N]   host may be [ipv6]; port 6379, db 0
 *   unix:/path/to.sock[?db=N]     unix:///path?db=N     unix://[[user]:password@]/path?db=N
 * user and password may be percent-encoded (%40 for '@'); "rediss://" (TLS) is refused. */
struct redis_url {
    bool unix_socket;
    char host[256]; /* TCP: name or address, without [] */
    int port;
    char path[108];     /* unix socket path (sun_path's size) */
    char user[128];     /* empty: AUTH with the password only (or no AUTH) */
    char password[512]; /* empty: no AUTH */
    int db;
};

/* Parses `url` into out. Returns 0, or REDIS_EINVAL with a reason in err (never naming the
 * password). Pure and thread-safe: config checking uses it. */
int redis_parse_url(const char *url, struct redis_url *out, char *err, size_t n);

/* ---- the client --------------------------------------------------------------------------- */

/* Zero fields take the default in brackets. */
struct redis_options {
    const char *url;                 /* required; copied */
    unsigned command_timeout_ms;     /* [50] deadline of every command */
    unsigned connect_timeout_ms;     /* [200] lookup + connect + AUTH/SELECT/PING */
    unsigned reconnect_min_ms;       /* [100] first delay after a failure, doubling ... */
    unsigned reconnect_max_ms;       /* [5000] ... up to this; each delay has 50% jitter */
    unsigned breaker_failures;       /* [5] consecutive failures that open the breaker */
    unsigned breaker_cooloff_ms;     /* [1000] first open period, doubling ... */
    unsigned breaker_cooloff_max_ms; /* [30000] ... up to this while probes keep failing */
    unsigned max_pending;            /* [65536] commands in flight (incl. timed-out ones) */
};

/* The breaker counts consecutive failures of the command connection: timeouts, a lost
 * connection (once, not per command lost with it), failed connection attempts, and error
 * replies that mean server trouble (LOADING, BUSY, READONLY, OOM, NOAUTH, MASTERDOWN, ...);
 * any reply otherwise, error replies like WRONGTYPE included, resets the count. When it opens
 * with timed-out commands still unanswered, the connection is made anew (a stalled or
 * black-holed peer is otherwise never noticed). After the cool-off one PING probe goes out,
 * at once or as soon as the connection is back; its success closes the breaker, its failure
 * opens it again for twice as long. */
enum redis_breaker {
    REDIS_BREAKER_CLOSED = 0,    /* commands flow */
    REDIS_BREAKER_OPEN = 1,      /* cooling off: commands get REDIS_EOPEN at once */
    REDIS_BREAKER_HALF_OPEN = 2, /* one PING probe is out; commands still get REDIS_EOPEN */
};

/* Counters for /metrics, since the client was created. */
struct redis_stats {
    uint64_t commands;   /* sent to Redis (including breaker probes) */
    uint64_t errors;     /* ended in an error reply or a lost connection */
    uint64_t timeouts;   /* ended in REDIS_ETIMEOUT */
    uint64_t rejected;   /* refused at once: not connected, breaker open, too busy */
    uint64_t reconnects; /* connection attempts after the first, both connections */
    uint64_t breaker_opens;
    enum redis_breaker breaker;
    bool connected; /* the command connection is up (handshake done) */
};

struct redis_client;

/* The reply to one command. result is 0 or a negative redis_result; reply is non-NULL for 0
 * and REDIS_EREPLY (an error reply: reply->type == REDIS_REPLY_ERROR), NULL otherwise. The
 * reply belongs to hiredis and is valid only during the call. */
typedef void (*redis_reply_fn)(void *ctx, int result, const redisReply *reply);

/* Creates a client and starts connecting at once. NULL on a bad URL (redis_parse_url() says
 * why) or out of memory. The loop must outlive the client. */
struct redis_client *redis_client_new(struct ev_loop *loop, const struct redis_options *opt);

/* Ends everything: each command still in flight gets its callback once, with
 * REDIS_ENOTCONN, before this returns (commands they issue are refused); subscriptions end
 * without a call. May be called from inside any of this client's callbacks; a second call
 * (e.g. from such a callback) does nothing. free(NULL)-style: NULL is fine. */
void redis_client_free(struct redis_client *c);

/* True when a command would be sent now: connected and the breaker closed. The hot path asks
 * this first and bypasses Redis when false. */
bool redis_client_available(const struct redis_client *c);

/* Sends one command, built from arguments only (binary-safe; argvlen may be NULL when every
 * argument is a C string; the arguments are copied before this returns). Returns 0 when sent: fn is
 * then called exactly once, from the loop and never from inside this call, by the command timeout
 * at the latest (a reply that comes later is dropped). Otherwise returns a negative redis_result
 * and fn is never called. Blocking commands (BLPOP, WAIT, ...) hold up every later command: do not
 * send them. Commands that would change the connection under the client are refused (REDIS_EINVAL):
 * the (P|S)(UN)SUBSCRIBE family and MONITOR (use redis_subscribe()), SELECT and AUTH (the URL
 * says), HELLO, RESET, QUIT. */
int redis_command(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                  redis_reply_fn fn, void *ctx);

/* ---- Lua scripts -------------------------------------------------------------------------- */

struct redis_script;

/* Registers a script with the client (once; the same body gives the same handle). Its SHA1 is
 * computed locally; nothing is sent. The handle lives as long as the client. NULL on OOM. */
const struct redis_script *redis_script_load(struct redis_client *c, const char *body, size_t len);
/* The script's SHA1 as 40 lowercase hex digits. */
const char *redis_script_sha(const struct redis_script *s);

/* EVALSHA s numkeys argv... (the first numkeys arguments are keys). When Redis does not know
 * the script (NOSCRIPT: a restart, a failover, SCRIPT FLUSH) it is sent again once as EVAL,
 * which also loads it, within the same deadline. Otherwise as redis_command(). */
int redis_evalsha(struct redis_client *c, const struct redis_script *s, int numkeys, int argc,
                  const char **argv, const size_t *argvlen, redis_reply_fn fn, void *ctx);
/* The same, and when fn got REDIS_ETIMEOUT, `late` gets the reply that comes after all (0 or
 * REDIS_EREPLY with it), or REDIS_ENOTCONN without one when the connection or the client goes
 * first (then it may only free late_ctx): once, and never when fn got anything else. For a
 * script whose effect must be undone if it ran after its caller gave up on it. */
int redis_evalsha_late(struct redis_client *c, const struct redis_script *s, int numkeys, int argc,
                       const char **argv, const size_t *argvlen, redis_reply_fn fn, void *ctx,
                       redis_reply_fn late, void *late_ctx);

/* ---- pub/sub ------------------------------------------------------------------------------ */

enum redis_sub_event {
    /* The subscription is active (again). Messages published while it was not (before the
     * first READY, or between a lost connection and the next READY) were lost: resync. */
    REDIS_SUB_READY = 1,
    REDIS_SUB_MESSAGE = 2, /* msg/msg_len hold one message */
};

/* A pub/sub event for `channel`. The bytes are valid only during the call. */
typedef void (*redis_message_fn)(void *ctx, enum redis_sub_event event, const char *channel,
                                 size_t channel_len, const char *msg, size_t msg_len);

/* Subscribes fn to a channel for the client's whole life, on a second connection of the
 * client (made on the first call) that is resubscribed after every reconnect. The breaker
 * does not apply to it. Returns 0, REDIS_ENOMEM, REDIS_EINVAL, or REDIS_ENOTCONN while the
 * client is being freed. */
int redis_subscribe(struct redis_client *c, const char *channel, redis_message_fn fn, void *ctx);

/* ---- observing ---------------------------------------------------------------------------- */

/* Copies the counters. Any thread; the client must stay alive meanwhile. */
void redis_client_stats(const struct redis_client *c, struct redis_stats *out);

/* Why the last connection attempt failed or the connection was lost ("" when none since the
 * last success). Loop thread only; valid until the next call into the client. */
const char *redis_client_errstr(const struct redis_client *c);

#endif

#include "redis/redis.h"

#include "base/buf.h"
#include "base/clock.h"

#include "base/log.h"

#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>
#include <nettle/sha1.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#define REDIS_POOL_MAX 1024        /* command records kept for reuse */
#define REDIS_MAX_ARGS (1 << 20)   /* sanity cap on one command's arguments */
#define REDIS_LOOKUP_POLL_MAX 0.05 /* seconds between looks at a running host lookup */
#define REDIS_FREE_LOOKUP_WAIT 1.0 /* seconds redis_client_free() waits for a stuck lookup */
#define REDIS_MAX_ADDRS 8          /* addresses of one lookup tried in turn */

/* ---- URL parsing -------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int url_fail(char *err, size_t n, const char *fmt, ...)
{
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return REDIS_EINVAL;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into out (NUL-terminated). -1 on a bad escape, an encoded NUL or
 * when it does not fit. */
static int pct_decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= len)
                return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            ch = h * 16 + l;
            if (ch == 0)
                return -1;
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* Digits only, no sign, value <= max. */
static int parse_uint(const char *s, size_t len, long max, long *out)
{
    if (len == 0 || len > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* "user:password" → out->user, out->password. */
static int parse_userinfo(const char *s, size_t len, struct redis_url *out, char *err, size_t n)
{
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return url_fail(err, n,
                        "credentials need a ':' (redis://:password@host or "
                        "redis://user:password@host)");
    size_t ulen = (size_t)(colon - s);
    if (pct_decode(s, ulen, out->user, sizeof out->user) != 0)
        return url_fail(err, n, "bad or too long user name");
    if (pct_decode(colon + 1, len - ulen - 1, out->password, sizeof out->password) != 0)
        return url_fail(err, n, "bad percent-encoding in the password, or it is too long");
    return 0;
}

/* "db=N" pairs joined by '&'. */
static int parse_query(const char *q, size_t len, struct redis_url *out, bool have_db, char *err,
                       size_t n)
{
    const char *end = q + len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        size_t plen = (size_t)(stop - q);
        if (plen > 3 && !strncmp(q, "db=", 3)) {
            long v;
            if (have_db)
                return url_fail(err, n, "the database is given twice");
            if (parse_uint(q + 3, plen - 3, INT_MAX, &v) != 0)
                return url_fail(err, n, "db must be a number");
            out->db = (int)v;
            have_db = true;
        } else if (plen > 0) {
            return url_fail(err, n, "unknown URL parameter '%.*s' (only db=N is known)",
                            (int)(plen > 40 ? 40 : plen), q);
        }
        q = amp ? amp + 1 : end;
    }
    return 0;
}

static bool host_char_ok(int ch, bool bracketed)
{
    if (isalnum(ch) || ch == '.' || ch == '-' || ch == '_')
        return true;
    return bracketed && (ch == ':' || ch == '%');
}

static int parse_tcp(const char *rest, struct redis_url *out, char *err, size_t n)
{
    const char *at = strrchr(rest, '@');
    if (at) {
        int rc = parse_userinfo(rest, (size_t)(at - rest), out, err, n);
        if (rc)
            return rc;
        rest = at + 1;
    }
    size_t hp_len = strcspn(rest, "/?");
    const char *hp = rest, *hp_end = rest + hp_len;
    const char *port = NULL;
    if (*hp == '[') {
        const char *close = memchr(hp, ']', hp_len);
        if (!close)
            return url_fail(err, n, "missing ']' after an IPv6 address");
        size_t hl = (size_t)(close - hp - 1);
        if (hl == 0 || hl >= sizeof out->host)
            return url_fail(err, n, "bad host");
        for (size_t i = 0; i < hl; i++)
            if (!host_char_ok((unsigned char)hp[1 + i], true))
                return url_fail(err, n, "bad character in the host");
        memcpy(out->host, hp + 1, hl);
        out->host[hl] = '\0';
        if (close + 1 < hp_end) {
            if (close[1] != ':')
                return url_fail(err, n, "unexpected text after ']'");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(hp, ':', hp_len);
        size_t hl = colon ? (size_t)(colon - hp) : hp_len;
        if (colon && memchr(colon + 1, ':', (size_t)(hp_end - colon - 1)))
            return url_fail(err, n, "an IPv6 address needs brackets: redis://[::1]:6379");
        if (hl == 0)
            return url_fail(err, n, "no host");
        if (hl >= sizeof out->host)
            return url_fail(err, n, "host name too long");
        for (size_t i = 0; i < hl; i++)
            if (!host_char_ok((unsigned char)hp[i], false))
                return url_fail(err, n, "bad character in the host");
        memcpy(out->host, hp, hl);
        out->host[hl] = '\0';
        if (colon)
            port = colon + 1;
    }
    if (port) {
        long v;
        if (parse_uint(port, (size_t)(hp_end - port), 65535, &v) != 0 || v == 0)
            return url_fail(err, n, "port must be a number from 1 to 65535");
        out->port = (int)v;
    }
    const char *p = hp_end;
    bool have_db = false;
    if (*p == '/') {
        size_t dlen = strcspn(p + 1, "?");
        if (dlen > 0) {
            long v;
            if (parse_uint(p + 1, dlen, INT_MAX, &v) != 0)
                return url_fail(err, n, "the path must be a database number (/0, /1, ...)");
            out->db = (int)v;
            have_db = true;
        }
        p += 1 + dlen;
    }
    if (*p == '?')
        return parse_query(p + 1, strlen(p + 1), out, have_db, err, n);
    return 0;
}

static int parse_unix(const char *rest, struct redis_url *out, char *err, size_t n)
{
    out->unix_socket = true;
    out->port = 0;
    if (!strncmp(rest, "//", 2)) {
        rest += 2;
        if (*rest != '/') {
            /* unix://[user]:password@/path: the credentials end where the path begins. */
            const char *at = strstr(rest, "@/");
            if (!at)
                return url_fail(err, n, "expected unix:///path or unix://:password@/path");
            int rc = parse_userinfo(rest, (size_t)(at - rest), out, err, n);
            if (rc)
                return rc;
            rest = at + 1;
        }
    }
    if (*rest != '/')
        return url_fail(err, n, "the socket path must be absolute (unix:/path/to.sock)");
    size_t plen = strcspn(rest, "?");
    if (plen >= sizeof out->path)
        return url_fail(err, n, "socket path too long (at most %zu bytes)", sizeof out->path - 1);
    memcpy(out->path, rest, plen);
    out->path[plen] = '\0';
    if (rest[plen] == '?')
        return parse_query(rest + plen + 1, strlen(rest + plen + 1), out, false, err, n);
    return 0;
}

int redis_parse_url(const char *url, struct redis_url *out, char *err, size_t n)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (err && n)
        err[0] = '\0';
    if (!url || !*url)
        return url_fail(err, n, "empty Redis URL");
    int rc;
    if (!strncasecmp(url, "rediss://", 9))
        rc = url_fail(err, n, "TLS (rediss://) is not supported");
    else if (!strncasecmp(url, "redis://", 8))
        rc = parse_tcp(url + 8, out, err, n);
    else if (!strncasecmp(url, "unix:", 5))
        rc = parse_unix(url + 5, out, err, n);
    else
        rc = url_fail(err, n, "must start with redis:// or unix:");
    if (rc) {
        /* Nothing half-parsed (a password, say) is left behind for a careless caller. */
        memset(out, 0, sizeof *out);
    }
    return rc;
}

const char *redis_strerror(int result)
{
    switch (result) {
    case 0:
        return "ok";
    case REDIS_ENOTCONN:
        return "not connected";
    case REDIS_ETIMEOUT:
        return "timeout";
    case REDIS_EOPEN:
        return "circuit breaker open";
    case REDIS_EREPLY:
        return "error reply";
    case REDIS_ENOMEM:
        return "out of memory";
    case REDIS_EBUSY:
        return "too many commands in flight";
    case REDIS_EINVAL:
        return "invalid argument";
    default:
        return "unknown error";
    }
}

/* ---- the client's state ------------------------------------------------------------------- */

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
    double deadline;               /* CLOCK_MONOTONIC seconds */
    struct redis_cmd *prev, *next; /* pending list (deadline order) or zombie list */
    struct redis_args *args;       /* EVALSHA only */
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

    struct redis_cmd *pending_head, *pending_tail; /* sent, awaited; earliest deadline first */
    struct redis_cmd *zombies; /* timed out, hiredis still owes their callbacks */
    unsigned n_pending, n_zombies;
    ev_timer deadline_timer; /* at or before the first pending deadline */
    struct redis_cmd *pool;
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

static void count(_Atomic uint64_t *a)
{
    atomic_store_explicit(a, atomic_load_explicit(a, memory_order_relaxed) + 1,
                          memory_order_relaxed);
}

static double rand01(struct redis_client *c)
{
    /* xorshift64*: jitter only. */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (double)((c->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

static double min_d(double a, double b)
{
    return a < b ? a : b;
}

static void client_destroy(struct redis_client *c);

static void client_enter(struct redis_client *c)
{
    c->depth++;
}

/* The last touch of c by an entry point. */
static void client_leave(struct redis_client *c)
{
    if (--c->depth == 0 && c->dead)
        client_destroy(c);
}

static void conn_addr(const struct redis_client *c, char *out, size_t n)
{
    if (c->url.unix_socket)
        snprintf(out, n, "%s", c->url.path);
    else if (strchr(c->url.host, ':'))
        snprintf(out, n, "[%s]:%d", c->url.host, c->url.port);
    else
        snprintf(out, n, "%s:%d", c->url.host, c->url.port);
}

/* ---- command records and lists ------------------------------------------------------------ */

static struct redis_cmd *cmd_get(struct redis_client *c)
{
    struct redis_cmd *cmd = c->pool;
    if (cmd) {
        c->pool = cmd->next;
        c->n_pool--;
    } else {
        cmd = malloc(sizeof *cmd);
        if (!cmd)
            return NULL;
    }
    memset(cmd, 0, sizeof *cmd);
    cmd->c = c;
    return cmd;
}

static void cmd_put(struct redis_client *c, struct redis_cmd *cmd)
{
    free(cmd->args);
    cmd->args = NULL;
    if (c && !c->dead && c->n_pool < REDIS_POOL_MAX) {
        cmd->next = c->pool;
        c->pool = cmd;
        c->n_pool++;
    } else {
        free(cmd);
    }
}

static void pending_append(struct redis_client *c, struct redis_cmd *cmd)
{
    cmd->next = NULL;
    cmd->prev = c->pending_tail;
    if (c->pending_tail)
        c->pending_tail->next = cmd;
    else
        c->pending_head = cmd;
    c->pending_tail = cmd;
    c->n_pending++;
}

static void pending_unlink(struct redis_client *c, struct redis_cmd *cmd)
{
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        c->pending_head = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    else
        c->pending_tail = cmd->prev;
    cmd->prev = cmd->next = NULL;
    c->n_pending--;
}

static void zombie_link(struct redis_client *c, struct redis_cmd *cmd)
{
    cmd->prev = NULL;
    cmd->next = c->zombies;
    if (c->zombies)
        c->zombies->prev = cmd;
    c->zombies = cmd;
    c->n_zombies++;
}

static void zombie_unlink(struct redis_client *c, struct redis_cmd *cmd)
{
    if (cmd->prev)
        cmd->prev->next = cmd->next;
    else
        c->zombies = cmd->next;
    if (cmd->next)
        cmd->next->prev = cmd->prev;
    cmd->prev = cmd->next = NULL;
    c->n_zombies--;
}

static void deadline_arm(struct redis_client *c)
{
    ev_timer_stop(c->loop, &c->deadline_timer);
    if (!c->pending_head)
        return;
    double after = c->pending_head->deadline - clock_mono();
    ev_timer_set(&c->deadline_timer, after > 0 ? after : 0., 0.);
    ev_timer_start(c->loop, &c->deadline_timer);
}

/* ---- circuit breaker ---------------------------------------------------------------------- */

static void conn_drop(struct redis_conn *k);
static void conn_retry(struct redis_conn *k, const char *why);
static int client_send(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_fn fn, void *ctx, struct redis_args *args);

static void breaker_set(struct redis_client *c, enum redis_breaker b)
{
    c->breaker = b;
    atomic_store_explicit(&c->st.breaker, (int)b, memory_order_relaxed);
}

static void breaker_open(struct redis_client *c)
{
    c->fails = 0;
    c->cooloff = c->cooloff > 0 ? min_d(c->cooloff * 2, c->cooloff_max) : c->cooloff_min;
    c->probe_due = false;
    breaker_set(c, REDIS_BREAKER_OPEN);
    count(&c->st.breaker_opens);
    log_event(LOG_WARN, "redis_breaker_open", "\"cooloff_ms\":%.0f", c->cooloff * 1000);
    ev_timer_stop(c->loop, &c->breaker_timer);
    ev_timer_set(&c->breaker_timer, c->cooloff, 0.);
    ev_timer_start(c->loop, &c->breaker_timer);
    /* Replies to timed-out commands would only be thrown away, and a peer that went silent
     * (a failover, a black hole) is never noticed otherwise: start a fresh connection. */
    if (c->n_zombies > 0 && c->cmd.ac) {
        conn_drop(&c->cmd);
        conn_retry(&c->cmd, "commands timed out");
    }
}

static void breaker_close(struct redis_client *c)
{
    c->fails = 0;
    c->cooloff = 0;
    ev_timer_stop(c->loop, &c->breaker_timer);
    breaker_set(c, REDIS_BREAKER_CLOSED);
    log_event(LOG_INFO, "redis_breaker_closed", NULL);
}

static void breaker_success(struct redis_client *c)
{
    if (c->breaker == REDIS_BREAKER_CLOSED)
        c->fails = 0;
}

static void breaker_failure(struct redis_client *c)
{
    if (c->dead || c->breaker != REDIS_BREAKER_CLOSED)
        return;
    if (++c->fails >= c->breaker_failures)
        breaker_open(c);
}

static void probe_done(void *ctx, int result, const redisReply *reply)
{
    (void)reply;
    struct redis_client *c = ctx;
    if (c->dead || c->breaker != REDIS_BREAKER_HALF_OPEN)
        return;
    if (result == 0)
        breaker_close(c);
    else
        breaker_open(c);
}

static void probe_send(struct redis_client *c)
{
    static const char *ping[] = {"PING"};
    static const size_t ping_len[] = {4};
    c->probe_due = false;
    breaker_set(c, REDIS_BREAKER_HALF_OPEN);
    if (client_send(c, 1, ping, ping_len, probe_done, c, NULL) != 0)
        breaker_open(c);
}

static void breaker_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_client *c = w->data;
    client_enter(c);
    if (c->cmd.state == CONN_READY)
        probe_send(c);
    else
        c->probe_due = true; /* conn_ready() sends it */
    client_leave(c);
}

/* Error replies that say the server is in trouble, not that the command was wrong. */
static bool reply_is_trouble(const redisReply *r)
{
    static const char *const kinds[] = {"LOADING", "BUSY",       "MASTERDOWN",  "READONLY",
                                        "OOM",     "TRYAGAIN",   "CLUSTERDOWN", "MISCONF",
                                        "NOAUTH",  "NOREPLICAS", NULL};
    for (size_t i = 0; kinds[i]; i++) {
        size_t n = strlen(kinds[i]);
        if (r->len >= n && !strncmp(r->str, kinds[i], n) && (r->len == n || r->str[n] == ' '))
            return true;
    }
    return false;
}

/* ---- replies and deadlines ---------------------------------------------------------------- */

static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata);

/* The EVAL half of EVALSHA's fallback: same record, same deadline. */
static int script_resend(struct redis_client *c, redisAsyncContext *ac, struct redis_cmd *cmd)
{
    struct redis_args *a = cmd->args;
    a->argv[0] = "EVAL";
    a->lens[0] = 4;
    a->argv[1] = a->script->body;
    a->lens[1] = a->script->len;
    if (redisAsyncCommandArgv(ac, cmd_reply_cb, cmd, a->argc, a->argv, a->lens) != REDIS_OK)
        return REDIS_ENOTCONN;
    /* hiredis has copied the bytes; one fallback per call. */
    free(a);
    cmd->args = NULL;
    count(&c->st.commands);
    return 0;
}

/* Ends a pending command with its answer. The record is recycled before the user runs. */
static void cmd_finish(struct redis_client *c, struct redis_cmd *cmd, int result,
                       const redisReply *reply)
{
    redis_reply_fn fn = cmd->fn;
    void *ctx = cmd->ctx;
    pending_unlink(c, cmd);
    cmd_put(c, cmd);
    if (result != 0)
        count(&c->st.errors);
    client_enter(c);
    fn(ctx, result, reply);
    client_leave(c);
}

static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    struct redis_client *c = cmd->c;
    const redisReply *reply = r;
    if (!c) {
        free(cmd->args);
        free(cmd);
        return;
    }
    if (!cmd->fn) {
        zombie_unlink(c, cmd);
        cmd_put(c, cmd);
        return;
    }
    int result = 0;
    if (!reply) {
        /* hiredis is dropping the connection and failing what it still holds; the
         * disconnect callback (counted once there) follows. Refuse new commands already. */
        if (c->cmd.ac == ac && c->cmd.state == CONN_READY) {
            c->cmd.state = CONN_IDLE;
            atomic_store_explicit(&c->st.connected, false, memory_order_relaxed);
        }
        result = REDIS_ENOTCONN;
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (cmd->args && ac == c->cmd.ac && reply->len >= 8 &&
            !strncmp(reply->str, "NOSCRIPT", 8) && script_resend(c, ac, cmd) == 0)
            return;
        result = REDIS_EREPLY;
        if (reply_is_trouble(reply))
            breaker_failure(c);
        else
            breaker_success(c);
    } else {
        breaker_success(c);
    }
    cmd_finish(c, cmd, result, reply);
}

static void deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_client *c = w->data;
    client_enter(c);
    /* libev may wake a little before our monotonic deadline; the re-arm covers the rest. */
    double now = clock_mono() + 1e-4;
    struct redis_cmd *cmd;
    while (!c->dead && (cmd = c->pending_head) && cmd->deadline <= now) {
        redis_reply_fn fn = cmd->fn;
        void *ctx = cmd->ctx;
        pending_unlink(c, cmd);
        cmd->fn = NULL;
        free(cmd->args);
        cmd->args = NULL;
        zombie_link(c, cmd);
        count(&c->st.timeouts);
        fn(ctx, REDIS_ETIMEOUT, NULL);
        breaker_failure(c);
    }
    if (!c->dead)
        deadline_arm(c);
    client_leave(c);
}

/* ---- host lookup -------------------------------------------------------------------------- */

static int lookup_start(struct redis_conn *k)
{
    struct redis_client *c = k->c;
    struct redis_lookup *l = calloc(1, sizeof *l);
    if (!l)
        return REDIS_ENOMEM;
    snprintf(l->host, sizeof l->host, "%s", c->url.host);
    snprintf(l->port, sizeof l->port, "%d", c->url.port);
    l->hints.ai_family = AF_UNSPEC;
    l->hints.ai_socktype = SOCK_STREAM;
    l->req.ar_name = l->host;
    l->req.ar_service = l->port;
    l->req.ar_request = &l->hints;
    l->list[0] = &l->req;
    if (getaddrinfo_a(GAI_NOWAIT, l->list, 1, NULL) != 0) {
        free(l);
        return REDIS_ENOMEM;
    }
    k->lookup = l;
    return 0;
}

/* 1 while running; 0 with k->addrs filled; negative with the reason in why. */
static int lookup_poll(struct redis_conn *k, char *why, size_t whyn)
{
    struct redis_lookup *l = k->lookup;
    int rc = gai_error(&l->req);
    if (rc == EAI_INPROGRESS)
        return 1;
    k->lookup = NULL;
    k->n_addrs = k->next_addr = 0;
    if (rc != 0) {
        snprintf(why, whyn, "host lookup: %s", gai_strerror(rc));
    } else {
        for (struct addrinfo *ai = l->req.ar_result; ai && k->n_addrs < REDIS_MAX_ADDRS;
             ai = ai->ai_next) {
            const void *addr = NULL;
            if (ai->ai_family == AF_INET)
                addr = &((struct sockaddr_in *)(void *)ai->ai_addr)->sin_addr;
            else if (ai->ai_family == AF_INET6)
                addr = &((struct sockaddr_in6 *)(void *)ai->ai_addr)->sin6_addr;
            if (addr && inet_ntop(ai->ai_family, addr, k->addrs[k->n_addrs], sizeof k->addrs[0]))
                k->n_addrs++;
        }
        if (!k->n_addrs)
            snprintf(why, whyn, "host lookup: no usable address");
    }
    int result = k->n_addrs ? 0 : REDIS_ENOTCONN;
    if (l->req.ar_result)
        freeaddrinfo(l->req.ar_result);
    free(l);
    return result;
}

/* The client is going away: stop a lookup, or wait a little for it. A lookup glibc can
 * neither cancel nor finish in that time is left to its thread (a small, deliberate leak:
 * freeing it would let that thread write into freed memory). */
static void lookup_abandon(struct redis_lookup *l)
{
    if (!l)
        return;
    if (gai_cancel(&l->req) == EAI_NOTCANCELED) {
        double until = clock_mono() + REDIS_FREE_LOOKUP_WAIT;
        while (gai_error(&l->req) == EAI_INPROGRESS) {
            double left = until - clock_mono();
            if (left <= 0)
                return;
            struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
            const struct gaicb *wait_list[1] = {&l->req};
            gai_suspend(wait_list, 1, &ts);
        }
    }
    if (l->req.ar_result)
        freeaddrinfo(l->req.ar_result);
    free(l);
}

/* ---- connections -------------------------------------------------------------------------- */

static void conn_set_connected(struct redis_conn *k, bool up)
{
    if (!k->subscriber)
        atomic_store_explicit(&k->c->st.connected, up, memory_order_relaxed);
}

static void conn_timer(struct redis_conn *k, double after)
{
    ev_timer_stop(k->c->loop, &k->timer);
    ev_timer_set(&k->timer, after > 0 ? after : 0., 0.);
    ev_timer_start(k->c->loop, &k->timer);
}

static const char *conn_name(const struct redis_conn *k)
{
    return k->subscriber ? "pubsub" : "commands";
}

/* Forgets the hiredis context, which frees it (at once, or when the hiredis callback we are
 * in returns). Its callbacks then find nothing attached and do nothing, except the command
 * callbacks, which answer their commands with REDIS_ENOTCONN. */
static void conn_drop(struct redis_conn *k)
{
    redisAsyncContext *ac = k->ac;
    k->state = CONN_IDLE;
    conn_set_connected(k, false);
    ev_timer_stop(k->c->loop, &k->timer);
    if (!ac)
        return;
    k->ac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac);
}

/* An attempt failed or the connection was lost (k->ac is already gone): count it and try
 * again after the backoff. */
static void conn_retry(struct redis_conn *k, const char *why)
{
    struct redis_client *c = k->c;
    k->state = CONN_IDLE;
    conn_set_connected(k, false);
    if (c->dead)
        return;
    snprintf(c->errstr, sizeof c->errstr, "%s", why);
    if (k->up || !k->down_logged) {
        char addr[300], esc[600];
        conn_addr(c, addr, sizeof addr);
        log_escape(esc, sizeof esc, why);
        log_event(LOG_WARN, k->up ? "redis_disconnected" : "redis_connect_failed",
                  "\"conn\":\"%s\",\"addr\":\"%s\",\"error\":\"%s\"", conn_name(k), addr, esc);
        k->up = false;
        k->down_logged = true;
    }
    if (!k->subscriber)
        breaker_failure(c);
    if (c->dead)
        return;
    double d = k->backoff > 0 ? k->backoff : c->reconnect_min;
    k->backoff = min_d(d * 2, c->reconnect_max);
    conn_timer(k, d * (0.5 + 0.5 * rand01(c)));
}

static void sub_send(struct redis_conn *k, struct redis_chan *ch);

static void conn_ready(struct redis_conn *k)
{
    struct redis_client *c = k->c;
    ev_timer_stop(c->loop, &k->timer);
    k->state = CONN_READY;
    k->backoff = 0;
    k->n_addrs = k->next_addr = 0;
    c->errstr[0] = '\0';
    if (!k->up) {
        char addr[300];
        conn_addr(c, addr, sizeof addr);
        log_event(LOG_INFO, "redis_connected", "\"conn\":\"%s\",\"addr\":\"%s\"", conn_name(k),
                  addr);
        k->up = true;
        k->down_logged = false;
    }
    if (k->subscriber) {
        for (struct redis_chan *ch = c->chans; ch; ch = ch->next)
            sub_send(k, ch);
        return;
    }
    conn_set_connected(k, true);
    if (c->breaker == REDIS_BREAKER_CLOSED)
        c->fails = 0;
    else if (c->breaker == REDIS_BREAKER_OPEN && c->probe_due)
        probe_send(c);
}

/* Only failures matter here: when connected, the handshake replies make the connection
 * ready (never this callback, after which hiredis 0.14 goes on using the context, so nothing
 * here may free it). */
static void conn_on_connect(const redisAsyncContext *cac, int status)
{
    /* hiredis hands us its own context as const; we only detach from it. */
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct redis_conn *k = ac->data;
    if (!k || status == REDIS_OK)
        return;
    struct redis_client *c = k->c;
    client_enter(c);
    char why[200];
    snprintf(why, sizeof why, "%s", ac->errstr && *ac->errstr ? ac->errstr : "connect failed");
    /* hiredis frees ac when this returns; detached, the handshake callbacks it runs then do
     * nothing. */
    ac->data = NULL;
    k->ac = NULL;
    conn_retry(k, why);
    client_leave(c);
}

static void conn_on_disconnect(const redisAsyncContext *cac, int status)
{
    (void)status;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct redis_conn *k = ac->data;
    if (!k)
        return; /* we dropped it ourselves */
    struct redis_client *c = k->c;
    client_enter(c);
    char why[200];
    snprintf(why, sizeof why, "%s", ac->errstr && *ac->errstr ? ac->errstr : "connection closed");
    ac->data = NULL;
    k->ac = NULL;
    conn_retry(k, why);
    client_leave(c);
}

static void conn_handshake_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)privdata;
    struct redis_conn *k = ac->data;
    const redisReply *reply = r;
    if (!k || k->ac != ac || !reply)
        return;
    struct redis_client *c = k->c;
    client_enter(c);
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Redis's AUTH errors never echo the password. */
        char why[200];
        snprintf(why, sizeof why, "%s", reply->str);
        conn_drop(k);
        conn_retry(k, why);
    } else if (--k->handshake_left == 0) {
        conn_ready(k);
    }
    client_leave(c);
}

/* Starts hiredis's non-blocking connect to `host` (an address; ignored for unix sockets),
 * with the handshake (AUTH, SELECT, PING) queued to go first. */
static void conn_open(struct redis_conn *k, const char *host)
{
    struct redis_client *c = k->c;
    redisAsyncContext *ac = c->url.unix_socket ? redisAsyncConnectUnix(c->url.path)
                                               : redisAsyncConnect(host, c->url.port);
    if (!ac) {
        conn_retry(k, "out of memory");
        return;
    }
    if (ac->err) {
        char why[200];
        snprintf(why, sizeof why, "%s", ac->errstr ? ac->errstr : "connect failed");
        redisAsyncFree(ac);
        conn_retry(k, why);
        return;
    }
    if (!c->url.unix_socket)
        redisEnableKeepAlive(&ac->c);
    redisLibevAttach(c->loop, ac);
    ac->data = k;
    k->ac = ac;
    k->state = CONN_CONNECTING;
    k->handshake_left = 0;
    redisAsyncSetConnectCallback(ac, conn_on_connect);
    redisAsyncSetDisconnectCallback(ac, conn_on_disconnect);
    bool ok = true;
    if (c->url.password[0]) {
        const char *argv[3] = {"AUTH", c->url.user, c->url.password};
        size_t lens[3] = {4, strlen(c->url.user), strlen(c->url.password)};
        int argc = 3;
        if (!c->url.user[0]) {
            argv[1] = c->url.password;
            lens[1] = lens[2];
            argc = 2;
        }
        ok = redisAsyncCommandArgv(ac, conn_handshake_cb, k, argc, argv, lens) == REDIS_OK;
        k->handshake_left += ok;
    }
    if (ok && !k->subscriber && c->url.db != 0) {
        char db[16];
        int dl = snprintf(db, sizeof db, "%d", c->url.db);
        const char *argv[2] = {"SELECT", db};
        size_t lens[2] = {6, (size_t)dl};
        ok = redisAsyncCommandArgv(ac, conn_handshake_cb, k, 2, argv, lens) == REDIS_OK;
        k->handshake_left += ok;
    }
    /* Last, a PING: "ready" means Redis answers, not only that the kernel accepted (it does
     * for a server that is stopped, loading, or wants a password we lack). */
    static const char *ping[] = {"PING"};
    static const size_t ping_len[] = {4};
    ok = ok && redisAsyncCommandArgv(ac, conn_handshake_cb, k, 1, ping, ping_len) == REDIS_OK;
    k->handshake_left += ok;
    if (!ok) {
        conn_drop(k);
        conn_retry(k, "out of memory");
        return;
    }
    conn_timer(k, k->deadline - clock_mono());
}

static void conn_attempt(struct redis_conn *k)
{
    struct redis_client *c = k->c;
    if (k->attempts++ > 0)
        count(&c->st.reconnects);
    k->started = true;
    k->deadline = clock_mono() + c->connect_timeout;
    if (c->url.unix_socket || c->numeric_host) {
        conn_open(k, c->url.host);
        return;
    }
    if (k->next_addr < k->n_addrs) {
        conn_open(k, k->addrs[k->next_addr++]);
        return;
    }
    /* A lookup an earlier attempt gave up on may still be running: wait for that one. */
    if (!k->lookup && lookup_start(k) != 0) {
        conn_retry(k, "cannot start the host lookup");
        return;
    }
    k->state = CONN_RESOLVING;
    k->poll = 0.001;
    conn_timer(k, k->poll);
}

static void conn_lookup_step(struct redis_conn *k)
{
    char why[160];
    int rc = lookup_poll(k, why, sizeof why);
    if (rc > 0) {
        double left = k->deadline - clock_mono();
        if (left <= 0) {
            conn_retry(k, "host lookup timed out");
            return;
        }
        k->poll = min_d(k->poll * 2, REDIS_LOOKUP_POLL_MAX);
        conn_timer(k, min_d(k->poll, left));
    } else if (rc < 0) {
        conn_retry(k, why);
    } else {
        conn_open(k, k->addrs[k->next_addr++]);
    }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_conn *k = w->data;
    struct redis_client *c = k->c;
    client_enter(c);
    switch (k->state) {
    case CONN_IDLE:
        conn_attempt(k);
        break;
    case CONN_RESOLVING:
        conn_lookup_step(k);
        break;
    case CONN_CONNECTING:
        conn_drop(k);
        conn_retry(k, "connect timeout");
        break;
    case CONN_READY:
        break;
    }
    client_leave(c);
}

static void conn_init(struct redis_client *c, struct redis_conn *k, bool subscriber)
{
    k->c = c;
    k->subscriber = subscriber;
    k->state = CONN_IDLE;
    ev_timer_init(&k->timer, conn_timer_cb, 0., 0.);
    k->timer.data = k;
}

/* ---- the public client -------------------------------------------------------------------- */

static double ms_or(unsigned ms, unsigned dflt)
{
    return (double)(ms ? ms : dflt) / 1000.0;
}

struct redis_client *redis_client_new(struct ev_loop *loop, const struct redis_options *opt)
{
    if (!loop || !opt)
        return NULL;
    struct redis_client *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    char err[160];
    if (redis_parse_url(opt->url, &c->url, err, sizeof err) != 0) {
        free(c);
        return NULL;
    }
    c->loop = loop;
    struct in_addr a4;
    struct in6_addr a6;
    c->numeric_host = !c->url.unix_socket && (inet_pton(AF_INET, c->url.host, &a4) == 1 ||
                                              inet_pton(AF_INET6, c->url.host, &a6) == 1);
    c->timeout = ms_or(opt->command_timeout_ms, 50);
    c->connect_timeout = ms_or(opt->connect_timeout_ms, 200);
    c->reconnect_min = ms_or(opt->reconnect_min_ms, 100);
    c->reconnect_max = ms_or(opt->reconnect_max_ms, 5000);
    if (c->reconnect_max < c->reconnect_min)
        c->reconnect_max = c->reconnect_min;
    c->cooloff_min = ms_or(opt->breaker_cooloff_ms, 1000);
    c->cooloff_max = ms_or(opt->breaker_cooloff_max_ms, 30000);
    if (c->cooloff_max < c->cooloff_min)
        c->cooloff_max = c->cooloff_min;
    c->breaker_failures = opt->breaker_failures ? opt->breaker_failures : 5;
    c->max_pending = opt->max_pending ? opt->max_pending : 65536;
    if (getrandom(&c->rng, sizeof c->rng, GRND_NONBLOCK) != (ssize_t)sizeof c->rng)
        c->rng = (uint64_t)(uintptr_t)c ^ (uint64_t)(clock_mono() * 1e9);
    c->rng |= 1;
    ev_timer_init(&c->deadline_timer, deadline_cb, 0., 0.);
    c->deadline_timer.data = c;
    ev_timer_init(&c->breaker_timer, breaker_timer_cb, 0., 0.);
    c->breaker_timer.data = c;
    conn_init(c, &c->cmd, false);
    conn_init(c, &c->sub, true);
    breaker_set(c, REDIS_BREAKER_CLOSED);
    /* The loop's clock may be stale (created long ago, not run yet); timers start from it. */
    ev_now_update(loop);
    conn_attempt(&c->cmd);
    return c;
}

static void client_destroy(struct redis_client *c)
{
    ev_timer_stop(c->loop, &c->deadline_timer);
    ev_timer_stop(c->loop, &c->breaker_timer);
    ev_timer_stop(c->loop, &c->cmd.timer);
    ev_timer_stop(c->loop, &c->sub.timer);
    while (c->pool) {
        struct redis_cmd *cmd = c->pool;
        c->pool = cmd->next;
        free(cmd);
    }
    while (c->scripts) {
        struct redis_script *s = c->scripts;
        c->scripts = s->next;
        free(s->body);
        free(s);
    }
    while (c->chans) {
        struct redis_chan *ch = c->chans;
        c->chans = ch->next;
        while (ch->subs) {
            struct redis_subscriber *s = ch->subs;
            ch->subs = s->next;
            free(s);
        }
        free(ch->name);
        free(ch);
    }
    /* The password never outlives the client in freed memory. */
    memset(&c->url, 0, sizeof c->url);
    free(c);
}

static void conn_close(struct redis_conn *k)
{
    conn_drop(k);
    lookup_abandon(k->lookup);
    k->lookup = NULL;
}

void redis_client_free(struct redis_client *c)
{
    if (!c || c->dead)
        return;
    c->dead = true;
    client_enter(c);
    ev_timer_stop(c->loop, &c->deadline_timer);
    ev_timer_stop(c->loop, &c->breaker_timer);
    /* Answer every command now. hiredis still holds their records: cut them loose from the
     * client so the callbacks it runs when its context goes just free them. */
    struct redis_cmd *cmd;
    while ((cmd = c->pending_head)) {
        redis_reply_fn fn = cmd->fn;
        void *ctx = cmd->ctx;
        pending_unlink(c, cmd);
        cmd->fn = NULL;
        cmd->c = NULL;
        fn(ctx, REDIS_ENOTCONN, NULL);
    }
    while ((cmd = c->zombies)) {
        zombie_unlink(c, cmd);
        cmd->c = NULL;
    }
    conn_close(&c->cmd);
    conn_close(&c->sub);
    atomic_store_explicit(&c->st.connected, false, memory_order_relaxed);
    client_leave(c);
}

bool redis_client_available(const struct redis_client *c)
{
    return c && !c->dead && c->cmd.state == CONN_READY && c->breaker == REDIS_BREAKER_CLOSED;
}

static int client_can_send(const struct redis_client *c)
{
    if (c->dead || c->cmd.state != CONN_READY || !c->cmd.ac)
        return REDIS_ENOTCONN;
    if (c->n_pending + c->n_zombies >= c->max_pending)
        return REDIS_EBUSY;
    return 0;
}

/* Sends a command whatever the breaker says. Takes `args` (freed on failure). */
static int client_send(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                       redis_reply_fn fn, void *ctx, struct redis_args *args)
{
    int rc = client_can_send(c);
    if (rc) {
        free(args);
        return rc;
    }
    struct redis_cmd *cmd = cmd_get(c);
    if (!cmd) {
        free(args);
        return REDIS_ENOMEM;
    }
    cmd->fn = fn;
    cmd->ctx = ctx;
    cmd->args = args;
    cmd->deadline = clock_mono() + c->timeout;
    redisAsyncContext *ac = c->cmd.ac;
    if (redisAsyncCommandArgv(ac, cmd_reply_cb, cmd, argc, argv, argvlen) != REDIS_OK) {
        cmd_put(c, cmd);
        return ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING) ? REDIS_ENOTCONN : REDIS_ENOMEM;
    }
    pending_append(c, cmd);
    count(&c->st.commands);
    /* New commands have the latest deadline: a running timer is early enough already. */
    if (!ev_is_active(&c->deadline_timer))
        deadline_arm(c);
    return 0;
}

/* Commands that would change the connection under the client (its db, its credentials, its
 * protocol, its reply stream). */
static bool command_refused(const char *name, size_t len)
{
    static const char *const refused[] = {
        "SUBSCRIBE",    "PSUBSCRIBE", "SSUBSCRIBE", "UNSUBSCRIBE", "PUNSUBSCRIBE",
        "SUNSUBSCRIBE", "MONITOR",    "SELECT",     "AUTH",        "HELLO",
        "RESET",        "QUIT",       NULL};
    if (len < 4 || len > 12)
        return false;
    for (size_t i = 0; refused[i]; i++)
        if (strlen(refused[i]) == len && !strncasecmp(name, refused[i], len))
            return true;
    return false;
}

/* Checks shared by redis_command() and redis_evalsha(); counts a refusal. */
static int client_gate(struct redis_client *c)
{
    int rc = 0;
    if (c->dead)
        rc = REDIS_ENOTCONN;
    else if (c->breaker != REDIS_BREAKER_CLOSED)
        rc = REDIS_EOPEN;
    else
        rc = client_can_send(c);
    if (rc)
        count(&c->st.rejected);
    return rc;
}

int redis_command(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                  redis_reply_fn fn, void *ctx)
{
    if (!c || argc <= 0 || argc > REDIS_MAX_ARGS || !argv || !argv[0] || !fn)
        return REDIS_EINVAL;
    if (command_refused(argv[0], argvlen ? argvlen[0] : strlen(argv[0])))
        return REDIS_EINVAL;
    int rc = client_gate(c);
    if (rc)
        return rc;
    rc = client_send(c, argc, argv, argvlen, fn, ctx, NULL);
    if (rc)
        count(&c->st.rejected);
    return rc;
}

/* ---- scripts ------------------------------------------------------------------------------ */

const struct redis_script *redis_script_load(struct redis_client *c, const char *body, size_t len)
{
    if (!c || (!body && len))
        return NULL;
    /* EVALSHA names a script by the SHA-1 of its body. */
    struct sha1_ctx ctx;
    unsigned char md[SHA1_DIGEST_SIZE];
    sha1_init(&ctx);
    sha1_update(&ctx, len, (const uint8_t *)(len ? body : ""));
    sha1_digest(&ctx, sizeof md, md);
    char sha[2 * SHA1_DIGEST_SIZE + 1];
    buf_hex(md, sizeof md, sha);
    for (struct redis_script *s = c->scripts; s; s = s->next)
        if (!strcmp(s->sha, sha) && s->len == len && (!len || !memcmp(s->body, body, len)))
            return s;
    struct redis_script *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->body = malloc(len + 1);
    if (!s->body) {
        free(s);
        return NULL;
    }
    if (len)
        memcpy(s->body, body, len);
    s->body[len] = '\0';
    s->len = len;
    memcpy(s->sha, sha, sizeof sha);
    s->next = c->scripts;
    c->scripts = s;
    return s;
}

const char *redis_script_sha(const struct redis_script *s)
{
    return s->sha;
}

static struct redis_args *args_copy(const struct redis_script *s, int numkeys, int argc,
                                    const char **argv, const size_t *argvlen)
{
    size_t n = (size_t)argc + 3, bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen ? argvlen[i] : strlen(argv[i]);
    struct redis_args *a =
        malloc(sizeof *a + n * sizeof(const char *) + n * sizeof(size_t) + bytes);
    if (!a)
        return NULL;
    a->script = s;
    a->argc = (int)n;
    a->argv = (const char **)(void *)(a + 1);
    a->lens = (size_t *)(void *)(a->argv + n);
    char *p = (char *)(a->lens + n);
    int kl = snprintf(a->numkeys, sizeof a->numkeys, "%d", numkeys);
    a->argv[0] = "EVALSHA";
    a->lens[0] = 7;
    a->argv[1] = s->sha;
    a->lens[1] = 40;
    a->argv[2] = a->numkeys;
    a->lens[2] = (size_t)kl;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        if (len)
            memcpy(p, argv[i], len);
        a->argv[3 + i] = p;
        a->lens[3 + i] = len;
        p += len;
    }
    return a;
}

int redis_evalsha(struct redis_client *c, const struct redis_script *s, int numkeys, int argc,
                  const char **argv, const size_t *argvlen, redis_reply_fn fn, void *ctx)
{
    if (!c || !s || !fn || numkeys < 0 || argc < numkeys || argc > REDIS_MAX_ARGS ||
        (argc > 0 && !argv))
        return REDIS_EINVAL;
    int rc = client_gate(c);
    if (rc)
        return rc;
    struct redis_args *a = args_copy(s, numkeys, argc, argv, argvlen);
    if (!a) {
        count(&c->st.rejected);
        return REDIS_ENOMEM;
    }
    rc = client_send(c, a->argc, a->argv, a->lens, fn, ctx, a);
    if (rc)
        count(&c->st.rejected);
    return rc;
}

/* ---- pub/sub ------------------------------------------------------------------------------ */

static void sub_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    /* A NULL reply: the context is going away, maybe with the client (and the channel). */
    if (!reply)
        return;
    struct redis_conn *k = ac->data;
    if (!k || k->ac != ac)
        return;
    struct redis_chan *ch = privdata;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    enum redis_sub_event event;
    const char *msg = NULL;
    size_t msg_len = 0;
    if (!strcasecmp(kind, "message") && reply->element[2]->type == REDIS_REPLY_STRING) {
        event = REDIS_SUB_MESSAGE;
        msg = reply->element[2]->str;
        msg_len = reply->element[2]->len;
    } else if (!strcasecmp(kind, "subscribe")) {
        event = REDIS_SUB_READY;
    } else {
        return;
    }
    struct redis_client *c = k->c;
    client_enter(c);
    for (struct redis_subscriber *s = ch->subs; s && !c->dead; s = s->next)
        s->fn(s->ctx, event, ch->name, ch->len, msg, msg_len);
    client_leave(c);
}

static void sub_send(struct redis_conn *k, struct redis_chan *ch)
{
    const char *argv[2] = {"SUBSCRIBE", ch->name};
    size_t lens[2] = {9, ch->len};
    /* On failure the context is going away; the next connection subscribes again. */
    redisAsyncCommandArgv(k->ac, sub_cb, ch, 2, argv, lens);
}

int redis_subscribe(struct redis_client *c, const char *channel, redis_message_fn fn, void *ctx)
{
    if (!c || !channel || !fn)
        return REDIS_EINVAL;
    if (c->dead)
        return REDIS_ENOTCONN;
    size_t len = strlen(channel);
    struct redis_chan *ch = c->chans;
    while (ch && (ch->len != len || memcmp(ch->name, channel, len)))
        ch = ch->next;
    struct redis_subscriber *s = calloc(1, sizeof *s);
    if (!s)
        return REDIS_ENOMEM;
    s->fn = fn;
    s->ctx = ctx;
    if (!ch) {
        ch = calloc(1, sizeof *ch);
        if (!ch || !(ch->name = malloc(len + 1))) {
            free(ch);
            free(s);
            return REDIS_ENOMEM;
        }
        memcpy(ch->name, channel, len + 1);
        ch->len = len;
        ch->subs_tail = &ch->subs;
        ch->next = c->chans;
        c->chans = ch;
    }
    *ch->subs_tail = s;
    ch->subs_tail = &s->next;
    if (!c->sub.started)
        conn_attempt(&c->sub);
    else if (c->sub.state == CONN_READY)
        sub_send(&c->sub, ch); /* its confirmation is READY for every subscriber */
    return 0;
}

/* ---- observing ---------------------------------------------------------------------------- */

void redis_client_stats(const struct redis_client *c, struct redis_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!c)
        return;
    /* The counters are atomics so that another thread may read them; const is the caller's
     * promise not to change the client, which atomic_load does not. */
    struct redis_counters *st = (struct redis_counters *)&c->st;
    out->commands = atomic_load_explicit(&st->commands, memory_order_relaxed);
    out->errors = atomic_load_explicit(&st->errors, memory_order_relaxed);
    out->timeouts = atomic_load_explicit(&st->timeouts, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&st->rejected, memory_order_relaxed);
    out->reconnects = atomic_load_explicit(&st->reconnects, memory_order_relaxed);
    out->breaker_opens = atomic_load_explicit(&st->breaker_opens, memory_order_relaxed);
    out->breaker = (enum redis_breaker)atomic_load_explicit(&st->breaker, memory_order_relaxed);
    out->connected = atomic_load_explicit(&st->connected, memory_order_relaxed);
}

const char *redis_client_errstr(const struct redis_client *c)
{
    return c ? c->errstr : "";
}

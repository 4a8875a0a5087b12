/* The asynchronous client (redis.h): the public entry points, command records and their
 * deadlines, replies, and the circuit breaker. The connections are in conn.c, scripts in
 * script.c, pub/sub in pubsub.c, URLs in url.c; the state they share is client-int.h. */
#include "redis/client-int.h"

#include "base/clock.h"
#include "base/log.h"

#include <hiredis/async.h>

#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>

#define REDIS_POOL_MAX 1024 /* command records kept for reuse */

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

/* ---- entering and leaving the client ------------------------------------------------------ */

static void client_destroy(struct redis_client *c);

void redis_client_enter(struct redis_client *c)
{
    c->depth++;
}

/* The last touch of c by an entry point. */
void redis_client_leave(struct redis_client *c)
{
    if (--c->depth == 0 && c->dead)
        client_destroy(c);
}

/* ---- command records and lists ------------------------------------------------------------ */

static struct redis_cmd *cmd_get(struct redis_client *c)
{
    struct list *n = list_first(&c->pool);
    struct redis_cmd *cmd;
    if (n) {
        list_unlink(n);
        c->n_pool--;
        cmd = LIST_ENTRY(n, struct redis_cmd, link);
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
        list_push_head(&c->pool, &cmd->link);
        c->n_pool++;
    } else {
        free(cmd);
    }
}

/* The command at the head of a list of them, or NULL. */
static struct redis_cmd *cmd_first(const struct list *l)
{
    struct list *n = list_first(l);
    return n ? LIST_ENTRY(n, struct redis_cmd, link) : NULL;
}

static void pending_append(struct redis_client *c, struct redis_cmd *cmd)
{
    list_push_tail(&c->pending, &cmd->link);
    c->n_pending++;
}

static void pending_unlink(struct redis_client *c, struct redis_cmd *cmd)
{
    list_unlink(&cmd->link);
    c->n_pending--;
}

static void zombie_link(struct redis_client *c, struct redis_cmd *cmd)
{
    list_push_head(&c->zombies, &cmd->link);
    c->n_zombies++;
}

static void zombie_unlink(struct redis_client *c, struct redis_cmd *cmd)
{
    list_unlink(&cmd->link);
    c->n_zombies--;
}

static void deadline_arm(struct redis_client *c)
{
    ev_timer_stop(c->loop, &c->deadline_timer);
    const struct redis_cmd *first = cmd_first(&c->pending);
    if (!first)
        return;
    double after = first->deadline - clock_mono();
    ev_timer_set(&c->deadline_timer, after > 0 ? after : 0., 0.);
    ev_timer_start(c->loop, &c->deadline_timer);
}

/* ---- circuit breaker ---------------------------------------------------------------------- */

static void breaker_set(struct redis_client *c, enum redis_breaker b)
{
    c->breaker = b;
    atomic_store_explicit(&c->st.breaker, (int)b, memory_order_relaxed);
}

static void breaker_open(struct redis_client *c)
{
    c->fails = 0;
    c->cooloff = c->cooloff > 0 ? redis_min_d(c->cooloff * 2, c->cooloff_max) : c->cooloff_min;
    c->probe_due = false;
    breaker_set(c, REDIS_BREAKER_OPEN);
    redis_count(&c->st.breaker_opens);
    log_event(LOG_WARN, "redis_breaker_open", "\"cooloff_ms\":%.0f", c->cooloff * 1000);
    ev_timer_stop(c->loop, &c->breaker_timer);
    ev_timer_set(&c->breaker_timer, c->cooloff, 0.);
    ev_timer_start(c->loop, &c->breaker_timer);
    /* Replies to timed-out commands would only be thrown away, and a peer that went silent
     * (a failover, a black hole) is never noticed otherwise: start a fresh connection. */
    if (c->n_zombies > 0 && c->cmd.ac) {
        redis_conn_drop(&c->cmd);
        redis_conn_retry(&c->cmd, "commands timed out");
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

void redis_breaker_failure(struct redis_client *c)
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

void redis_breaker_probe(struct redis_client *c)
{
    static const char *ping[] = {"PING"};
    static const size_t ping_len[] = {4};
    c->probe_due = false;
    breaker_set(c, REDIS_BREAKER_HALF_OPEN);
    if (redis_client_send(c, 1, ping, ping_len, probe_done, c, NULL, NULL, NULL) != 0)
        breaker_open(c);
}

static void breaker_timer_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
    (void)loop;
    (void)revents;
    struct redis_client *c = w->data;
    redis_client_enter(c);
    if (c->cmd.state == CONN_READY)
        redis_breaker_probe(c);
    else
        c->probe_due = true; /* conn_ready() sends it */
    redis_client_leave(c);
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
    redis_count(&c->st.commands);
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
        redis_count(&c->st.errors);
    redis_client_enter(c);
    fn(ctx, result, reply);
    redis_client_leave(c);
}

static void cmd_reply_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    struct redis_cmd *cmd = privdata;
    struct redis_client *c = cmd->c;
    const redisReply *reply = r;
    if (!c) {
        if (cmd->late)
            cmd->late(cmd->late_ctx, REDIS_ENOTCONN, NULL);
        free(cmd->args);
        free(cmd);
        return;
    }
    if (!cmd->fn) {
        redis_reply_fn late = cmd->late;
        void *late_ctx = cmd->late_ctx;
        zombie_unlink(c, cmd);
        cmd_put(c, cmd);
        if (late) {
            redis_client_enter(c);
            late(late_ctx,
                 !reply                             ? REDIS_ENOTCONN
                 : reply->type == REDIS_REPLY_ERROR ? REDIS_EREPLY
                                                    : 0,
                 reply);
            redis_client_leave(c);
        }
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
            redis_breaker_failure(c);
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
    redis_client_enter(c);
    /* libev may wake a little before our monotonic deadline; the re-arm covers the rest. */
    double now = clock_mono() + 1e-4;
    struct redis_cmd *cmd;
    while (!c->dead && (cmd = cmd_first(&c->pending)) && cmd->deadline <= now) {
        redis_reply_fn fn = cmd->fn;
        void *ctx = cmd->ctx;
        pending_unlink(c, cmd);
        cmd->fn = NULL;
        free(cmd->args);
        cmd->args = NULL;
        zombie_link(c, cmd);
        redis_count(&c->st.timeouts);
        fn(ctx, REDIS_ETIMEOUT, NULL);
        redis_breaker_failure(c);
    }
    if (!c->dead)
        deadline_arm(c);
    redis_client_leave(c);
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
    list_init(&c->pending);
    list_init(&c->zombies);
    list_init(&c->pool);
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
    redis_conn_init(c, &c->cmd, false);
    redis_conn_init(c, &c->sub, true);
    breaker_set(c, REDIS_BREAKER_CLOSED);
    /* The loop's clock may be stale (created long ago, not run yet); timers start from it. */
    ev_now_update(loop);
    redis_conn_attempt(&c->cmd);
    return c;
}

static void client_destroy(struct redis_client *c)
{
    ev_timer_stop(c->loop, &c->deadline_timer);
    ev_timer_stop(c->loop, &c->breaker_timer);
    ev_timer_stop(c->loop, &c->cmd.timer);
    ev_timer_stop(c->loop, &c->sub.timer);
    struct list *n;
    while ((n = list_first(&c->pool))) {
        list_unlink(n);
        free(LIST_ENTRY(n, struct redis_cmd, link));
    }
    redis_scripts_free(c);
    redis_chans_free(c);
    /* The password never outlives the client in freed memory. */
    memset(&c->url, 0, sizeof c->url);
    free(c);
}

void redis_client_free(struct redis_client *c)
{
    if (!c || c->dead)
        return;
    c->dead = true;
    redis_client_enter(c);
    ev_timer_stop(c->loop, &c->deadline_timer);
    ev_timer_stop(c->loop, &c->breaker_timer);
    /* Answer every command now. hiredis still holds their records: cut them loose from the
     * client so the callbacks it runs when its context goes just free them. */
    struct redis_cmd *cmd;
    while ((cmd = cmd_first(&c->pending))) {
        redis_reply_fn fn = cmd->fn;
        void *ctx = cmd->ctx;
        pending_unlink(c, cmd);
        cmd->fn = NULL;
        cmd->c = NULL;
        cmd->late = NULL; /* fn hears of it, not with a timeout: late is never called */
        fn(ctx, REDIS_ENOTCONN, NULL);
    }
    while ((cmd = cmd_first(&c->zombies))) {
        zombie_unlink(c, cmd);
        cmd->c = NULL;
    }
    redis_conn_close(&c->cmd);
    redis_conn_close(&c->sub);
    atomic_store_explicit(&c->st.connected, false, memory_order_relaxed);
    redis_client_leave(c);
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
int redis_client_send(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                      redis_reply_fn fn, void *ctx, struct redis_args *args, redis_reply_fn late,
                      void *late_ctx)
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
    cmd->late = late;
    cmd->late_ctx = late_ctx;
    cmd->deadline = clock_mono() + c->timeout;
    redisAsyncContext *ac = c->cmd.ac;
    if (redisAsyncCommandArgv(ac, cmd_reply_cb, cmd, argc, argv, argvlen) != REDIS_OK) {
        cmd_put(c, cmd);
        return ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING) ? REDIS_ENOTCONN : REDIS_ENOMEM;
    }
    pending_append(c, cmd);
    redis_count(&c->st.commands);
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
int redis_client_gate(struct redis_client *c)
{
    int rc = 0;
    if (c->dead)
        rc = REDIS_ENOTCONN;
    else if (c->breaker != REDIS_BREAKER_CLOSED)
        rc = REDIS_EOPEN;
    else
        rc = client_can_send(c);
    if (rc)
        redis_count(&c->st.rejected);
    return rc;
}

int redis_command(struct redis_client *c, int argc, const char **argv, const size_t *argvlen,
                  redis_reply_fn fn, void *ctx)
{
    if (!c || argc <= 0 || argc > REDIS_MAX_ARGS || !argv || !argv[0] || !fn)
        return REDIS_EINVAL;
    if (command_refused(argv[0], argvlen ? argvlen[0] : strlen(argv[0])))
        return REDIS_EINVAL;
    int rc = redis_client_gate(c);
    if (rc)
        return rc;
    rc = redis_client_send(c, argc, argv, argvlen, fn, ctx, NULL, NULL, NULL);
    if (rc)
        redis_count(&c->st.rejected);
    return rc;
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

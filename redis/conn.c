/* The client's two connections (commands, pub/sub): host lookup without blocking the loop,
 * connecting with the AUTH/SELECT/PING handshake, reconnecting with backoff. See redis.h for
 * the contract and client-int.h for the state. */
#include "redis/client-int.h"

#include "base/clock.h"
#include "base/log.h"

#include <hiredis/adapters/libev.h>
#include <hiredis/async.h>

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define REDIS_LOOKUP_POLL_MAX 0.05 /* seconds between looks at a running host lookup */
#define REDIS_FREE_LOOKUP_WAIT 1.0 /* seconds redis_client_free() waits for a stuck lookup */

static double rand01(struct redis_client *c)
{
    /* xorshift64*: jitter only. */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return (double)((c->rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
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
void redis_conn_drop(struct redis_conn *k)
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
void redis_conn_retry(struct redis_conn *k, const char *why)
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
        redis_breaker_failure(c);
    if (c->dead)
        return;
    double d = k->backoff > 0 ? k->backoff : c->reconnect_min;
    k->backoff = redis_min_d(d * 2, c->reconnect_max);
    conn_timer(k, d * (0.5 + 0.5 * rand01(c)));
}

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
            redis_sub_send(k, ch);
        return;
    }
    conn_set_connected(k, true);
    if (c->breaker == REDIS_BREAKER_CLOSED)
        c->fails = 0;
    else if (c->breaker == REDIS_BREAKER_OPEN && c->probe_due)
        redis_breaker_probe(c);
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
    redis_client_enter(c);
    char why[200];
    snprintf(why, sizeof why, "%s", ac->errstr && *ac->errstr ? ac->errstr : "connect failed");
    /* hiredis frees ac when this returns; detached, the handshake callbacks it runs then do
     * nothing. */
    ac->data = NULL;
    k->ac = NULL;
    redis_conn_retry(k, why);
    redis_client_leave(c);
}

static void conn_on_disconnect(const redisAsyncContext *cac, int status)
{
    (void)status;
    redisAsyncContext *ac = (redisAsyncContext *)cac;
    struct redis_conn *k = ac->data;
    if (!k)
        return; /* we dropped it ourselves */
    struct redis_client *c = k->c;
    redis_client_enter(c);
    char why[200];
    snprintf(why, sizeof why, "%s", ac->errstr && *ac->errstr ? ac->errstr : "connection closed");
    ac->data = NULL;
    k->ac = NULL;
    redis_conn_retry(k, why);
    redis_client_leave(c);
}

static void conn_handshake_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    (void)privdata;
    struct redis_conn *k = ac->data;
    const redisReply *reply = r;
    if (!k || k->ac != ac || !reply)
        return;
    struct redis_client *c = k->c;
    redis_client_enter(c);
    if (reply->type == REDIS_REPLY_ERROR) {
        /* Redis's AUTH errors never echo the password. */
        char why[200];
        snprintf(why, sizeof why, "%s", reply->str);
        redis_conn_drop(k);
        redis_conn_retry(k, why);
    } else if (--k->handshake_left == 0) {
        conn_ready(k);
    }
    redis_client_leave(c);
}

/* Starts hiredis's non-blocking connect to `host` (an address; ignored for unix sockets),
 * with the handshake (AUTH, SELECT, PING) queued to go first. */
static void conn_open(struct redis_conn *k, const char *host)
{
    struct redis_client *c = k->c;
    redisAsyncContext *ac = c->url.unix_socket ? redisAsyncConnectUnix(c->url.path)
                                               : redisAsyncConnect(host, c->url.port);
    if (!ac) {
        redis_conn_retry(k, "out of memory");
        return;
    }
    if (ac->err) {
        char why[200];
        snprintf(why, sizeof why, "%s", ac->errstr ? ac->errstr : "connect failed");
        redisAsyncFree(ac);
        redis_conn_retry(k, why);
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
        redis_conn_drop(k);
        redis_conn_retry(k, "out of memory");
        return;
    }
    conn_timer(k, k->deadline - clock_mono());
}

void redis_conn_attempt(struct redis_conn *k)
{
    struct redis_client *c = k->c;
    if (k->attempts++ > 0)
        redis_count(&c->st.reconnects);
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
        redis_conn_retry(k, "cannot start the host lookup");
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
            redis_conn_retry(k, "host lookup timed out");
            return;
        }
        k->poll = redis_min_d(k->poll * 2, REDIS_LOOKUP_POLL_MAX);
        conn_timer(k, redis_min_d(k->poll, left));
    } else if (rc < 0) {
        redis_conn_retry(k, why);
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
    redis_client_enter(c);
    switch (k->state) {
    case CONN_IDLE:
        redis_conn_attempt(k);
        break;
    case CONN_RESOLVING:
        conn_lookup_step(k);
        break;
    case CONN_CONNECTING:
        redis_conn_drop(k);
        redis_conn_retry(k, "connect timeout");
        break;
    case CONN_READY:
        break;
    }
    redis_client_leave(c);
}

void redis_conn_init(struct redis_client *c, struct redis_conn *k, bool subscriber)
{
    k->c = c;
    k->subscriber = subscriber;
    k->state = CONN_IDLE;
    ev_timer_init(&k->timer, conn_timer_cb, 0., 0.);
    k->timer.data = k;
}

void redis_conn_close(struct redis_conn *k)
{
    redis_conn_drop(k);
    lookup_abandon(k->lookup);
    k->lookup = NULL;
}

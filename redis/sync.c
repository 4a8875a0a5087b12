/* The blocking Redis client: see sync.h. */
#include "redis/sync.h"

#include "redis/redis.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct timeval redis_sync_connect_timeout = {0, REDIS_SYNC_CONNECT_TIMEOUT_MS * 1000};
static const struct timeval redis_sync_command_timeout = {REDIS_SYNC_COMMAND_TIMEOUT_S, 0};

static void redis_sync_fail(struct redis_sync_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void redis_sync_fail(struct redis_sync_error *err, int code, const char *fmt, ...)
{
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

redisReply *redis_sync_check(redisContext *c, redisReply *reply, const char *what,
                             struct redis_sync_error *err)
{
    if (!reply) {
        /* hiredis reports a socket timeout as EAGAIN. */
        if (c->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK))
            redis_sync_fail(err, REDIS_SYNC_ETIMEOUT, "The %s (Redis) did not answer within %ld s.",
                            what, (long)redis_sync_command_timeout.tv_sec);
        else
            redis_sync_fail(err, REDIS_SYNC_EIO, "The %s (Redis) did not answer: %s.", what,
                            c->errstr[0] ? c->errstr : "no reply");
        return NULL;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        redis_sync_fail(err, REDIS_SYNC_EREPLY, "The %s (Redis) failed: %.160s", what, reply->str);
        freeReplyObject(reply);
        return NULL;
    }
    return reply;
}

redisReply *redis_sync_command(redisContext *c, int argc, const char **argv, const size_t *argvlen,
                               const char *what, struct redis_sync_error *err)
{
    return redis_sync_check(c, redisCommandArgv(c, argc, argv, argvlen), what, err);
}

redisContext *redis_sync_connect(const char *url, const char *what, struct redis_sync_error *err)
{
    if (!url) {
        redis_sync_fail(err, REDIS_SYNC_ENOURL, "No %s: redis.url is not configured.", what);
        return NULL;
    }
    /* On the heap: it holds the password, wiped before it is freed. */
    struct redis_url *u = calloc(1, sizeof *u);
    char why[256];
    if (!u) {
        redis_sync_fail(err, REDIS_SYNC_ENOMEM, "out of memory");
        return NULL;
    }
    if (redis_parse_url(url, u, why, sizeof why)) {
        redis_sync_fail(err, REDIS_SYNC_EURL, "redis.url: %s", why);
        free(u);
        return NULL;
    }
    redisContext *c = u->unix_socket
                          ? redisConnectUnixWithTimeout(u->path, redis_sync_connect_timeout)
                          : redisConnectWithTimeout(u->host, u->port, redis_sync_connect_timeout);
    if (!c || c->err) {
        redis_sync_fail(err, REDIS_SYNC_EUNREACHABLE, "The %s (Redis) is unreachable: %s.", what,
                        c ? c->errstr : "out of memory");
        goto fail;
    }
    if (redisSetTimeout(c, redis_sync_command_timeout) != REDIS_OK) {
        redis_sync_fail(err, REDIS_SYNC_EUNREACHABLE, "The %s (Redis) is unreachable: %s.", what,
                        c->errstr);
        goto fail;
    }
    redisReply *reply;
    if (u->password[0]) {
        const char *argv[3] = {"AUTH", u->user, u->password};
        int argc = 3;
        if (!u->user[0]) {
            argv[1] = u->password;
            argc = 2;
        }
        reply = redisCommandArgv(c, argc, argv, NULL);
        if (reply && reply->type == REDIS_REPLY_ERROR) {
            /* Redis's AUTH errors never echo the password, but say nothing of it anyway. */
            redis_sync_fail(err, REDIS_SYNC_EAUTH, "The %s (Redis) refused the credentials.", what);
            freeReplyObject(reply);
            goto fail;
        }
        if (!redis_sync_check(c, reply, what, err))
            goto fail;
        freeReplyObject(reply);
    }
    if (u->db != 0) {
        char db[16];
        snprintf(db, sizeof db, "%d", u->db);
        const char *argv[2] = {"SELECT", db};
        if (!(reply = redis_sync_command(c, 2, argv, NULL, what, err)))
            goto fail;
        freeReplyObject(reply);
    }
    explicit_bzero(u, sizeof *u);
    free(u);
    return c;
fail:
    explicit_bzero(u, sizeof *u);
    free(u);
    if (c)
        redisFree(c);
    return NULL;
}

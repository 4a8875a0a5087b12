/* The blocking Redis client: hiredis's synchronous API behind a URL, for the admin listener's
 * thread and the one-shot CLI (key management, usage queries), never for a worker's loop
 * (that is redis/redis.h, which never waits).
 *
 * A connection is opened per operation, authenticated and on its db as the URL says, with a
 * REDIS_SYNC_CONNECT_TIMEOUT_MS connect and a REDIS_SYNC_COMMAND_TIMEOUT_S timeout on every
 * command; the caller closes it with redisFree(). Thread-safe: no shared state.
 *
 * Errors are a struct redis_sync_error: a code that says what went wrong whatever the caller
 * makes of it (a 503 for the admin API, exit status 1 for the CLI), and a message for people
 * that names the store the caller asked about (`what`, e.g. "key store" gives "The key store
 * (Redis) did not answer within 1 s."). Messages never hold a password. */
#ifndef TOLLGATE_REDIS_SYNC_H
#define TOLLGATE_REDIS_SYNC_H

#include <hiredis/hiredis.h>
#include <stddef.h>

#define REDIS_SYNC_CONNECT_TIMEOUT_MS 500
#define REDIS_SYNC_COMMAND_TIMEOUT_S 1

enum redis_sync_code {
    REDIS_SYNC_OK = 0,
    REDIS_SYNC_ENOURL = -1,       /* no URL: redis.url is not configured */
    REDIS_SYNC_EURL = -2,         /* the URL does not parse */
    REDIS_SYNC_EUNREACHABLE = -3, /* no connection (refused, no route, unknown host, ...) */
    REDIS_SYNC_EAUTH = -4,        /* the credentials were refused */
    REDIS_SYNC_ETIMEOUT = -5,     /* no answer within REDIS_SYNC_COMMAND_TIMEOUT_S */
    REDIS_SYNC_EIO = -6,          /* the connection failed or closed: no answer */
    REDIS_SYNC_EREPLY = -7,       /* Redis answered with an error (WRONGTYPE, NOSCRIPT, ...) */
    REDIS_SYNC_ENOMEM = -8,
};

struct redis_sync_error {
    int code;          /* enum redis_sync_code */
    char message[256]; /* for people; the "out of memory" of ENOMEM names no store */
};

/* A connection to url (redis://[[user]:password@]host[:port][/db] or unix:PATH[?db=N], see
 * redis_parse_url()), authenticated and on its db; NULL (url may be) gives ENOURL. NULL with
 * err filled on failure. */
redisContext *redis_sync_connect(const char *url, const char *what, struct redis_sync_error *err);

/* Checks the answer to a command sent on c: returns reply, or NULL with err filled when there
 * is none (the connection failed or timed out) or when Redis answered with an error (the
 * reply is freed then). Also takes redisGetReply()'s answers to pipelined commands. */
redisReply *redis_sync_check(redisContext *c, redisReply *reply, const char *what,
                             struct redis_sync_error *err);

/* redisCommandArgv() (argvlen may be NULL for C strings) then redis_sync_check(). */
redisReply *redis_sync_command(redisContext *c, int argc, const char **argv, const size_t *argvlen,
                               const char *what, struct redis_sync_error *err);

#endif

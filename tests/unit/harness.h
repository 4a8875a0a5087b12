/* A shared harness for the unit tests (linked into every tests/unit/test_*.c binary):
 *
 *  - a throwaway redis-server on a free loopback port in its own temporary directory, with an
 *    optional password and unix socket; it can be killed and restarted on the same port, and
 *    teardown kills it and removes the directory (as hiredis's test.sh does);
 *  - blocking side connections to check that server from outside the code under test;
 *  - a world with an event loop and a tick timer, and harness_run_until(), which runs the loop
 *    in bounded steps under an overall deadline so that no test can hang.
 *
 *  - for tests of the asynchronous client (redis/redis.h) and what is built on it: an
 *    environment of a world, a server and its URL; a connected client; replies recorded by a
 *    callback; a command sent and awaited.
 *
 * redis-server missing is a failure (a message on stderr and -1), never a skip. The calls
 * return errors and the tests assert on them, except harness_client_new() and
 * harness_command(), which fail the running cmocka test themselves. Not thread-safe: one
 * test thread. */
#ifndef TOLLGATE_TESTS_HARNESS_H
#define TOLLGATE_TESTS_HARNESS_H

#include "redis/redis.h"

#include <ev.h>
#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <sys/types.h>

/* A redis-server child process. Fill pass and with_unix (after harness_redis_init, before
 * harness_redis_start); the rest is the harness's. */
struct harness_redis {
    pid_t pid; /* 0 when not running */
    int port;
    char dir[64];     /* the temporary directory: log, unix socket, anything the test puts */
    char sock[128];   /* <dir>/redis.sock, served when with_unix */
    const char *pass; /* requirepass, or NULL */
    bool with_unix;
};

/* The test's world: one loop, and a timer that wakes EVRUN_ONCE so deadlines are checked. */
struct harness_world {
    struct ev_loop *loop;
    ev_timer tick;
};

/* CLOCK_MONOTONIC in seconds. */
double harness_now_s(void);

/* A loopback TCP port that was free a moment ago, or -1. */
int harness_free_port(void);

/* Makes the temporary directory /tmp/tg-<name>-XXXXXX and picks a free port; does not start
 * the server. Returns 0, or -1 (the directory may then exist: call harness_redis_cleanup). */
int harness_redis_init(struct harness_redis *s, const char *name);

/* Starts redis-server (no persistence, DEBUG enabled) on s->port and waits up to 10 s for it
 * to answer PING. Also restarts a killed server on the same port. 0, or -1 with a message. */
int harness_redis_start(struct harness_redis *s);

/* SIGKILLs the server and reaps it; a no-op when it is not running. */
void harness_redis_kill(struct harness_redis *s);

/* Kills the server and removes its directory with the files in it. */
void harness_redis_cleanup(struct harness_redis *s);

/* "redis://127.0.0.1:<port>" into url. */
void harness_redis_url(const struct harness_redis *s, char *url, size_t size);

/* A blocking hiredis connection to the server (authenticated when s->pass), or NULL. The
 * caller frees it with redisFree(). */
redisContext *harness_redis_connect(const struct harness_redis *s);

/* One command on a fresh side connection: the reply (freeReplyObject() it), or NULL. */
redisReply *harness_redis_command(const struct harness_redis *s, int argc, const char **argv);

/* Argument count and vector of a literal list, for harness_redis_command() and the like:
 * harness_redis_command(s, HARNESS_ARGV("GET", "k")). */
#define HARNESS_ARGV(...)                                                                          \
    (int)(sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)),                           \
        ((const char *[]){__VA_ARGS__})

/* Creates the loop; 0 or -1. */
int harness_world_init(struct harness_world *w);

/* Destroys the loop; safe on a zeroed or half-initialised world. */
void harness_world_fini(struct harness_world *w);

/* Runs the loop until pred(arg) or max_s seconds; returns pred's last answer. pred is asked
 * before the first step, so an already-true condition returns at once. */
bool harness_run_until(struct harness_world *w, bool (*pred)(void *), void *arg, double max_s);

/* A predicate that is never true, to run the loop for a fixed time. */
bool harness_never(void *arg);

/* Runs the loop for s seconds. */
void harness_run_for(struct harness_world *w, double s);

/* ---- the asynchronous client -------------------------------------------------------------- */

/* A world, a server and its URL: what a test of the client starts from. */
struct harness_env {
    struct harness_world h;
    struct harness_redis srv;
    char url[256];
    struct redis_client *c; /* harness_env_setup()'s client, or NULL; harness_env_free() frees it */
};

/* Allocates an env, makes its directory (/tmp/tg-<name>-XXXXXX) and loop, and starts its
 * server with the given password (or NULL) and a unix socket when with_unix. *out is set even
 * when this fails, for harness_env_free(). 0 or -1. */
int harness_env_new(struct harness_env **out, const char *name, const char *pass, bool with_unix);

/* Kills the server, removes its directory, destroys the loop, frees e. NULL is fine. */
void harness_env_free(struct harness_env *e);

/* cmocka fixtures for tests of what is built on the client (rate limits, budgets, ...): *state
 * becomes an env (no password, no unix socket) with a client connected by harness_client_new()
 * with opt in its `c`; the teardown frees it all. */
int harness_env_setup(void **state, const char *name, const struct redis_options *opt);
int harness_env_teardown(void **state);

/* One reply as a redis_reply_fn saw it (strings cut to 511 bytes). */
struct harness_reply {
    int calls;  /* how many times the callback ran: exactly 1 is the contract */
    int result; /* 0 or a negative redis_result */
    int type;   /* reply->type, or -1 without a reply */
    long long integer;
    char str[512];
    size_t len;
    double at; /* harness_now_s() of the (last) call */
};

/* A redis_reply_fn recording into the struct harness_reply ctx. */
void harness_on_reply(void *ctx, int result, const redisReply *reply);

/* Predicates for harness_run_until(): a struct harness_reply was called; a struct
 * redis_client is available. */
bool harness_reply_done(void *arg);
bool harness_client_available(void *arg);

/* A client for e with opt (opt->url NULL: e's URL) that is available within 5 s; fails the
 * test otherwise. */
struct redis_client *harness_client_new(struct harness_env *e, const struct redis_options *opt);

/* Sends a command on c and waits up to 5 s for its answer, which it returns; fails the test
 * when the command is refused or unanswered, or answered more than once. */
struct harness_reply harness_command(struct harness_env *e, struct redis_client *c, int argc,
                                     const char **argv, const size_t *lens);

/* harness_command() with a literal list of C strings: HARNESS_CMD(e, c, "GET", "k"). */
#define HARNESS_CMD(e, c, ...) harness_command((e), (c), HARNESS_ARGV(__VA_ARGS__), NULL)

#endif

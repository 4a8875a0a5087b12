/* The unit tests' shared harness: see harness.h. */
#include "tests/unit/harness.h"

/* cmocka wants these before it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The test binary's name, for the messages (glibc's, as _GNU_SOURCE is set). */
#define HARNESS_WHO program_invocation_short_name

double harness_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int harness_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (fd == -1 || bind(fd, (struct sockaddr *)&a, sizeof a) == -1 ||
        getsockname(fd, (struct sockaddr *)&a, &len) == -1) {
        if (fd != -1)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- a throwaway redis-server ------------------------------------------------------------- */

static bool redis_server_installed(void)
{
    const char *path = getenv("PATH");
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", path ? path : "/usr/bin:/bin");
    for (char *save = NULL, *dir = strtok_r(buf, ":", &save); dir;
         dir = strtok_r(NULL, ":", &save)) {
        char full[4200];
        snprintf(full, sizeof full, "%s/redis-server", dir);
        if (access(full, X_OK) == 0)
            return true;
    }
    return false;
}

int harness_redis_init(struct harness_redis *s, const char *name)
{
    s->pid = 0;
    snprintf(s->dir, sizeof s->dir, "/tmp/tg-%s-XXXXXX", name);
    if (!mkdtemp(s->dir)) {
        s->dir[0] = '\0';
        return -1;
    }
    snprintf(s->sock, sizeof s->sock, "%s/redis.sock", s->dir);
    s->port = harness_free_port();
    return s->port > 0 ? 0 : -1;
}

void harness_redis_url(const struct harness_redis *s, char *url, size_t size)
{
    snprintf(url, size, "redis://127.0.0.1:%d", s->port);
}

redisContext *harness_redis_connect(const struct harness_redis *s)
{
    struct timeval tv = {0, 500000};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", s->port, tv);
    if (!rc || rc->err) {
        if (rc)
            redisFree(rc);
        return NULL;
    }
    if (s->pass) {
        const char *argv[2] = {"AUTH", s->pass};
        redisReply *r = redisCommandArgv(rc, 2, argv, NULL);
        bool ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
        if (!ok) {
            redisFree(rc);
            return NULL;
        }
    }
    return rc;
}

redisReply *harness_redis_command(const struct harness_redis *s, int argc, const char **argv)
{
    redisContext *rc = harness_redis_connect(s);
    if (!rc)
        return NULL;
    redisReply *r = redisCommandArgv(rc, argc, argv, NULL);
    redisFree(rc);
    return r;
}

static bool answers_ping(const struct harness_redis *s)
{
    redisContext *rc = harness_redis_connect(s);
    if (!rc)
        return false;
    redisReply *r = redisCommand(rc, "PING");
    bool ok = r && r->type == REDIS_REPLY_STATUS;
    if (r)
        freeReplyObject(r);
    redisFree(rc);
    return ok;
}

int harness_redis_start(struct harness_redis *s)
{
    if (!redis_server_installed()) {
        fprintf(stderr,
                "\n*** %s: redis-server is not installed (apt-get install redis-server, or "
                "`make deps`). These tests need a real Redis. ***\n\n",
                HARNESS_WHO);
        return -1;
    }
    char port[16], logpath[128];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(logpath, sizeof logpath, "%s/redis.log", s->dir);
    const char *argv[32];
    int n = 0;
    argv[n++] = "redis-server";
    argv[n++] = "--port";
    argv[n++] = port;
    argv[n++] = "--bind";
    argv[n++] = "127.0.0.1";
    argv[n++] = "--save";
    argv[n++] = "";
    argv[n++] = "--appendonly";
    argv[n++] = "no";
    argv[n++] = "--dir";
    argv[n++] = s->dir;
    argv[n++] = "--logfile";
    argv[n++] = logpath;
    argv[n++] = "--enable-debug-command";
    argv[n++] = "yes";
    if (s->pass) {
        argv[n++] = "--requirepass";
        argv[n++] = s->pass;
    }
    if (s->with_unix) {
        argv[n++] = "--unixsocket";
        argv[n++] = s->sock;
        argv[n++] = "--unixsocketperm";
        argv[n++] = "700";
    }
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid == -1)
        return -1;
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        if (fd != -1) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execvp("redis-server", (char *const *)argv);
        _exit(127);
    }
    s->pid = pid;
    double until = harness_now_s() + 10;
    while (harness_now_s() < until) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "\n*** %s: redis-server exited at start (status %d); see %s ***\n\n",
                    HARNESS_WHO, status, logpath);
            s->pid = 0;
            return -1;
        }
        if (answers_ping(s))
            return 0;
        usleep(10000);
    }
    fprintf(stderr, "\n*** %s: redis-server did not answer within 10 s ***\n\n", HARNESS_WHO);
    return -1;
}

void harness_redis_kill(struct harness_redis *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

void harness_redis_cleanup(struct harness_redis *s)
{
    harness_redis_kill(s);
    if (!s->dir[0])
        return;
    DIR *d = opendir(s->dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                continue;
            char p[512];
            snprintf(p, sizeof p, "%s/%s", s->dir, e->d_name);
            unlink(p);
        }
        closedir(d);
        rmdir(s->dir);
    }
    s->dir[0] = '\0';
}

/* ---- running the loop --------------------------------------------------------------------- */

int harness_world_init(struct harness_world *w)
{
    w->loop = ev_loop_new(EVFLAG_AUTO);
    return w->loop ? 0 : -1;
}

void harness_world_fini(struct harness_world *w)
{
    if (w->loop)
        ev_loop_destroy(w->loop);
    w->loop = NULL;
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
}

bool harness_run_until(struct harness_world *w, bool (*pred)(void *), void *arg, double max_s)
{
    ev_timer_init(&w->tick, tick_cb, 0.005, 0.005);
    ev_timer_start(w->loop, &w->tick);
    double until = harness_now_s() + max_s;
    bool ok = pred(arg);
    while (!ok && harness_now_s() < until) {
        ev_run(w->loop, EVRUN_ONCE);
        ok = pred(arg);
    }
    ev_timer_stop(w->loop, &w->tick);
    return ok;
}

bool harness_never(void *arg)
{
    (void)arg;
    return false;
}

void harness_run_for(struct harness_world *w, double s)
{
    harness_run_until(w, harness_never, NULL, s);
}

/* ---- the asynchronous client -------------------------------------------------------------- */

int harness_env_new(struct harness_env **out, const char *name, const char *pass, bool with_unix)
{
    struct harness_env *e = calloc(1, sizeof *e);
    *out = e;
    if (!e)
        return -1;
    e->srv.pass = pass;
    e->srv.with_unix = with_unix;
    if (harness_redis_init(&e->srv, name) == -1 || harness_world_init(&e->h) == -1)
        return -1;
    harness_redis_url(&e->srv, e->url, sizeof e->url);
    return harness_redis_start(&e->srv);
}

void harness_env_free(struct harness_env *e)
{
    if (!e)
        return;
    redis_client_free(e->c); /* while its loop exists */
    harness_redis_cleanup(&e->srv);
    harness_world_fini(&e->h);
    free(e);
}

void harness_on_reply(void *ctx, int result, const redisReply *reply)
{
    struct harness_reply *r = ctx;
    r->calls++;
    r->result = result;
    r->at = harness_now_s();
    r->type = reply ? reply->type : -1;
    r->len = 0;
    if (reply) {
        r->integer = reply->integer;
        if (reply->str) {
            r->len = reply->len < sizeof r->str ? reply->len : sizeof r->str - 1;
            memcpy(r->str, reply->str, r->len);
            r->str[r->len] = '\0';
        }
    }
}

bool harness_reply_done(void *arg)
{
    return ((struct harness_reply *)arg)->calls > 0;
}

int harness_env_setup(void **state, const char *name, const struct redis_options *opt)
{
    struct harness_env *e;
    int rc = harness_env_new(&e, name, NULL, false);
    *state = e;
    if (rc == 0)
        e->c = harness_client_new(e, opt);
    return rc;
}

int harness_env_teardown(void **state)
{
    harness_env_free(*state);
    return 0;
}

bool harness_client_available(void *arg)
{
    return redis_client_available(arg);
}

struct redis_client *harness_client_new(struct harness_env *e, const struct redis_options *o)
{
    struct redis_options opt = *o;
    if (!opt.url)
        opt.url = e->url;
    struct redis_client *c = redis_client_new(e->h.loop, &opt);
    assert_non_null(c);
    if (!harness_run_until(&e->h, harness_client_available, c, 5))
        fail_msg("client did not connect: %s", redis_client_errstr(c));
    return c;
}

struct harness_reply harness_command(struct harness_env *e, struct redis_client *c, int argc,
                                     const char **argv, const size_t *lens)
{
    struct harness_reply r = {0};
    int rc = redis_command(c, argc, argv, lens, harness_on_reply, &r);
    if (rc != 0)
        fail_msg("redis_command(%s) refused: %s", argv[0], redis_strerror(rc));
    if (!harness_run_until(&e->h, harness_reply_done, &r, 5))
        fail_msg("no answer to %s", argv[0]);
    assert_int_equal(r.calls, 1);
    return r;
}

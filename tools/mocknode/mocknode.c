/*
 * mocknode: a simulated OpenAI-compatible inference node for Tollgate's tests
 * and benchmarks. This file starts it and stops it; README.md tours the rest.
 *
 * Threads: MHD runs an epoll thread pool; one wake thread (wake.c) resumes
 * connections parked for delays and hangs, so no MHD thread ever sleeps. The
 * main thread only starts things and waits for SIGTERM/SIGINT.
 *
 * Shared state: node identity and cached responses are read-only after start;
 * the runtime config sits under runtime.c's lock; counters are atomics; the
 * "last request" snapshot sits under stats.c's lock.
 */
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "answer.h"
#include "cli.h"
#include "http.h"
#include "node.h"
#include "stats.h"
#include "wake.h"

#define CONNECTION_LIMIT 10000u

/* Lets the node hold CONNECTION_LIMIT sockets even where the soft fd limit is 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return;
    rlim_t want = CONNECTION_LIMIT + 256;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fatal(const char *fmt, ...)
{
    va_list ap;

    fputs("mocknode: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int main(int argc, char **argv)
{
    struct cli_options o = cli_parse(argc, argv);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai;
    char port_str[8];
    sigset_t sigs;
    int sig;

    snprintf(port_str, sizeof(port_str), "%u", o.port);
    int rc = getaddrinfo(o.host, port_str, &hints, &ai);
    if (rc != 0)
        cli_die_usage("cannot resolve --host '%s': %s", o.host, gai_strerror(rc));

    node_started_at = (long long)time(NULL);
    /* jansson seeds its hash function lazily; do it before threads can race on it. */
    json_object_seed(0);
    if (answer_init(node_name) == -1 || http_init() == -1)
        fatal("cannot build responses (--name and --models must be UTF-8)");
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    /* Block before any thread starts so only sigwait() below sees these. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (!node_quiet)
        flags |= MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* Before the daemon: its threads kick the wake thread's eventfd from the first request. */
    if (wake_start() == -1)
        fatal("cannot start the wake thread: %s", strerror(errno));
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)o.port, NULL, NULL, http_on_request, NULL, MHD_OPTION_SOCK_ADDR,
        ai->ai_addr, MHD_OPTION_THREAD_POOL_SIZE, o.threads, MHD_OPTION_CONNECTION_LIMIT,
        CONNECTION_LIMIT, MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
        MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d)
        fatal("cannot listen on %s:%u", o.host, o.port);

    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = di && di->port ? di->port : o.port;
    bool v6 = strchr(o.host, ':') != NULL;
    printf("mocknode %s listening on %s%s%s:%u\n", node_name, v6 ? "[" : "", o.host, v6 ? "]" : "",
           port);
    fflush(stdout);

    do {
        if (sigwait(&sigs, &sig) != 0)
            sig = 0;
    } while (sig != SIGINT && sig != SIGTERM);

    /* MHD must not be stopped with suspended connections, so release them all first. */
    wake_stop();
    MHD_stop_daemon(d);
    http_free();
    stats_free();
    if (!node_quiet)
        fprintf(stderr, "mocknode %s stopped\n", node_name);
    return 0;
}

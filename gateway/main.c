/* tollgate: an OpenAI-compatible inference gateway. Entry point: options, config, signals. */
#include "base/buf.h"
#include "base/listen.h"
#include "base/log.h"
#include "config/config.h"
#include "gateway/admin.h"
#include "gateway/server.h"
#include "routing/backend.h"
#include "routing/health.h"
#include "tenancy/keys.h"
#include "tenancy/ledger.h"

#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <libssh2.h>
#include <malloc.h>
#include <netdb.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void usage(FILE *out)
{
    fprintf(out,
            "usage: tollgate [-c FILE] [--check-config] [--version] [--help]\n"
            "       tollgate -c FILE keys create NAME [--models a,b] [--rpm N] [--tpm N]\n"
            "                             [--budget-usd X] [--expires-at UNIX] [--json]\n"
            "       tollgate -c FILE keys list | show NAME | revoke NAME   [--json]\n"
            "       tollgate -c FILE usage [--key NAME] [--json]\n"
            "\n"
            "  -c, --config FILE   configuration, YAML or JSON (default: $TOLLGATE_CONFIG)\n"
            "      --check-config  validate the configuration, print every problem, exit\n"
            "      --healthcheck   GET /healthz on the configured listen address; exit 0 if 200\n"
            "  -v, --version       print the version\n"
            "  -h, --help          this text\n"
            "  keys ...            manage the API keys held in Redis (redis.url); create prints\n"
            "                      the new key once, only its SHA-256 is stored\n"
            "  usage ...           requests, tokens and spend per key and model (usage ledger)\n"
            "\n"
            "environment: TOLLGATE_CONFIG (config file), TOLLGATE_LISTEN (overrides listen);\n"
            "${VAR} in the config is replaced from the environment.\n"
            "signals: SIGTERM/SIGINT drain and exit, SIGHUP reloads the config.\n");
}

/* For container HEALTHCHECKs: one plain HTTP/1.0 GET of /healthz on the listen address
 * (0.0.0.0 and :: mean this host), with a two-second limit. */
static int healthcheck(const struct config *cfg)
{
    struct listen_addr addr;
    char err[512];
    if (listen_parse(&addr, "listen", cfg->listen, err, sizeof err))
        return 1;
    listen_loopback(&addr);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(addr.host, addr.port, &hints, &res))
        return 1;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {2, 0};
    int ok = 0;
    if (fd != -1) {
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        static const char req[] = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
        char buf[64] = {0};
        if (connect(fd, res->ai_addr, res->ai_addrlen) == 0 &&
            write(fd, req, sizeof req - 1) == (ssize_t)(sizeof req - 1) &&
            read(fd, buf, sizeof buf - 1) > 12)
            ok = !strncmp(buf, "HTTP/1.1 200", 12) || !strncmp(buf, "HTTP/1.0 200", 12);
        close(fd);
    }
    freeaddrinfo(res);
    return ok ? 0 : 1;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* glibc gives the free top of each worker's heap back to the kernel once it passes the trim
 * threshold, 128 KiB at first; a request's transient buffers (curl's 16 KiB receive buffer
 * among them) then cross it again and again: a madvise, a TLB shootdown and fresh page
 * faults every few requests, 4-12% of a request's CPU in paired runs. Up to 4 MiB of free
 * top now stays. Fixing the trim threshold also fixes the mmap threshold (glibc otherwise
 * raises both as large blocks come and go), so that is set too: bodies and answers up to
 * 1 MiB come from the heap, larger ones get their own mapping, returned when freed. */
static void tune_malloc(void)
{
    mallopt(M_MMAP_THRESHOLD, 1 << 20);
    mallopt(M_TRIM_THRESHOLD, 4 << 20);
}

/* The problems of a config that failed to load ("path: problem" lines), as the members of a
 * JSON log line: a "problems" array of every line that fits in one log line (PIPE_BUF), and
 * "problems_omitted" when some did not. */
static void log_reload_failed(const char *errors)
{
    json_t *list = json_array();
    size_t used = 0, omitted = 0;
    for (const char *p = errors ? errors : "out of memory"; *p;) {
        size_t n = strcspn(p, "\n");
        /* A problem may quote the file, which need not be UTF-8: other bytes become '?'. */
        char line[512];
        size_t o = 0;
        for (size_t i = 0; i < n && o + 4 < sizeof line;) {
            size_t len = buf_utf8_len((const unsigned char *)p + i, n - i);
            if (len)
                memcpy(line + o, p + i, len);
            else
                line[o] = '?';
            o += len ? len : 1;
            i += len ? len : 1;
        }
        json_t *s = n ? json_stringn(line, o) : NULL;
        char *text = s ? json_dumps(s, JSON_ENCODE_ANY) : NULL;
        if (text && used + strlen(text) < 2048 && !json_array_append(list, s))
            used += strlen(text) + 1;
        else if (n)
            omitted++;
        free(text);
        json_decref(s);
        p += n + (p[n] == '\n');
    }
    char *problems = json_dumps(list, JSON_COMPACT);
    log_event(LOG_ERROR, "reload_failed",
              "\"message\":\"the new config is invalid; keeping the old one\","
              "\"problems\":%s,\"problems_omitted\":%zu",
              problems ? problems : "[]", omitted);
    free(problems);
    json_decref(list);
}

/* `reloading`: the problems of an invalid config are logged as one JSON line (the old config
 * stays); at start they go to stderr, where whoever started the process looks. */
static struct config *load(const char *path, bool reloading)
{
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    if (!cfg) {
        if (reloading)
            log_reload_failed(errors);
        else
            fprintf(stderr, "%s", errors ? errors : "out of memory\n");
        free(errors);
        return NULL;
    }
    if (backend_attach(cfg)) {
        if (reloading)
            log_reload_failed(NULL);
        else
            fprintf(stderr, "out of memory\n");
        config_unref(cfg);
        return NULL;
    }
    return cfg;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"check-config", no_argument, NULL, 'C'},
        {"version", no_argument, NULL, 'v'},      {"help", no_argument, NULL, 'h'},
        {"healthcheck", no_argument, NULL, 'H'},  {NULL, 0, NULL, 0}};
    const char *path = getenv("TOLLGATE_CONFIG");
    int check_only = 0, health_only = 0, c;
    /* '+': stop at the first non-option, so a sub-command's own options stay its own. */
    while ((c = getopt_long(argc, argv, "+c:vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            path = optarg;
            break;
        case 'C':
            check_only = 1;
            break;
        case 'H':
            health_only = 1;
            break;
        case 'v':
            printf("tollgate %s\n", TOLLGATE_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    bool keys_cmd = optind < argc && !strcmp(argv[optind], "keys");
    bool usage_cmd = optind < argc && !strcmp(argv[optind], "usage");
    if ((optind < argc && !keys_cmd && !usage_cmd) || !path || !*path) {
        usage(stderr);
        return 2;
    }
    /* curl_global_init also initialises libssh2, and Debian's libssh2 then sets up OpenSSL's
     * engines and algorithm tables: 1.4 MiB of library pages touched for a protocol the
     * gateway never speaks (backends are http or https, CURLOPT_PROTOCOLS_STR; TLS is
     * GnuTLS's, already loaded by libmicrohttpd). Initialised first without its crypto,
     * curl's call only counts a reference. Nothing to undo at exit. */
    libssh2_init(LIBSSH2_INIT_NO_CRYPTO);
    if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
        fprintf(stderr, "cannot initialise libcurl\n");
        return 1;
    }
    struct config *cfg = load(path, false);
    if (!cfg)
        return 1;
    if (keys_cmd) {
        int rc = keys_cli(cfg, argc - optind - 1, argv + optind + 1);
        config_unref(cfg);
        curl_global_cleanup();
        return rc;
    }
    if (usage_cmd) {
        int rc = ledger_cli(cfg, argc - optind, argv + optind);
        config_unref(cfg);
        curl_global_cleanup();
        return rc;
    }
    if (health_only) {
        int rc = healthcheck(cfg);
        config_unref(cfg);
        return rc;
    }
    if (check_only) {
        printf("config ok: %zu backends, %zu models, %zu keys\n", cfg->n_backends, cfg->n_routes,
               cfg->n_keys);
        config_unref(cfg);
        return 0;
    }
    log_set_level(cfg->log_level);
    raise_nofile();
    tune_malloc();
    if (cfg->n_keys == 0 && !cfg->redis_url)
        log_event(LOG_WARN, "auth_disabled",
                  "\"message\":\"no keys configured: /v1 endpoints are open to anyone\"");

    /* Workers inherit this mask; only this thread takes signals, via sigwait(). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    struct server *server = server_start(cfg, err, sizeof err);
    if (!server) {
        log_event(LOG_ERROR, "start_failed", "\"message\":\"%s\"", err);
        fprintf(stderr, "tollgate: %s\n", err);
        config_unref(cfg);
        return 1;
    }
    struct health *health = health_start(cfg);
    if (!health) {
        fprintf(stderr, "tollgate: cannot start the health checker\n");
        return 1;
    }
    struct admin *admin = NULL;
    if (cfg->admin_listen) {
        admin = admin_start(cfg, server, err, sizeof err);
        if (!admin) {
            log_event(LOG_ERROR, "start_failed", "\"message\":\"%s\"", err);
            fprintf(stderr, "tollgate: %s\n", err);
            return 1;
        }
    }
    log_event(LOG_INFO, "started",
              "\"version\":\"%s\",\"backends\":%zu,\"models\":%zu,\"keys\":%zu", TOLLGATE_VERSION,
              cfg->n_backends, cfg->n_routes, cfg->n_keys);
    char *listen = strdup(cfg->listen);
    unsigned workers = cfg->workers;
    bool redis_configured = cfg->redis_url != NULL;
    config_unref(cfg);

    for (;;) {
        int sig;
        if (sigwait(&set, &sig))
            continue;
        if (sig == SIGHUP) {
            struct config *next = load(path, true);
            if (!next)
                continue; /* logged by load() */
            if (strcmp(next->listen, listen) || next->workers != workers ||
                (next->redis_url != NULL) != redis_configured)
                log_event(LOG_WARN, "reload_partial",
                          "\"message\":\"listen, workers and redis change only on restart\"");
            log_set_level(next->log_level);
            server_reload(server, next);
            health_reload(health, next);
            if (admin)
                admin_reload(admin, next);
            else if (next->admin_listen)
                log_event(LOG_WARN, "reload_partial",
                          "\"message\":\"admin_listen takes effect on restart\"");
            log_event(LOG_INFO, "reloaded", "\"backends\":%zu,\"models\":%zu", next->n_backends,
                      next->n_routes);
            config_unref(next);
            continue;
        }
        log_event(LOG_INFO, "draining", "\"signal\":\"%s\"", sig == SIGINT ? "SIGINT" : "SIGTERM");
        server_drain(server);
        break;
    }
    /* A second SIGTERM/SIGINT while draining cuts the drain short. */
    sigset_t again;
    sigemptyset(&again);
    sigaddset(&again, SIGTERM);
    sigaddset(&again, SIGINT);
    struct timespec poll_ts = {0, 100 * 1000 * 1000};
    for (;;) {
        int sig = sigtimedwait(&again, NULL, &poll_ts);
        if (sig > 0) {
            server_drain(server);
            continue;
        }
        if (server_stopped(server))
            break;
    }
    server_wait(server);
    admin_stop(admin);
    health_stop(health);
    free(listen);
    log_event(LOG_INFO, "stopped", NULL);
    curl_global_cleanup();
    return 0;
}

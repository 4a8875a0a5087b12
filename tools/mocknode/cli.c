#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "node.h"
#include "runtime.h"

#define MAX_THREADS 256u

void cli_die_usage(const char *fmt, ...)
{
    va_list ap;

    fputs("mocknode: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\ntry 'mocknode --help'\n", stderr);
    exit(2);
}

static void usage(FILE *f)
{
    fputs("usage: mocknode --port P --name NAME --models M1,M2 [--host 127.0.0.1]\n"
          "                [--ttfb-ms 0] [--token-ms 0] [--tokens 16] [--fault MODE]\n"
          "                [--fault-rate 1.0] [--retry-after 1] [--threads 2] [--quiet]\n"
          "A simulated OpenAI-compatible inference node.\n"
          "fault modes: none 500 429 hang close-mid-stream invalid-json inflate-usage\n"
          "--port 0 binds an ephemeral port; the listening line shows the real one.\n",
          f);
}

static unsigned parse_uint(const char *opt, const char *s, unsigned max)
{
    char *end;

    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno == ERANGE || v > max)
        cli_die_usage("%s wants an integer from 0 to %u, got '%s'", opt, max, s);
    return (unsigned)v;
}

static void parse_models(const char *list)
{
    char *copy = strdup(list);

    if (!copy)
        cli_die_usage("out of memory");
    size_t n = 1;
    for (const char *p = copy; *p; p++)
        n += *p == ',';
    node_models = calloc(n, sizeof(*node_models));
    if (!node_models)
        cli_die_usage("out of memory");
    char *save = copy;
    for (size_t i = 0; i < n; i++) {
        char *comma = strchr(save, ',');
        if (comma)
            *comma = '\0';
        if (*save == '\0')
            cli_die_usage("--models has an empty name in '%s'", list);
        node_models[node_model_count++] = save;
        save = comma ? comma + 1 : save;
    }
}

struct cli_options cli_parse(int argc, char **argv)
{
    enum { O_HOST = 256, O_TTFB, O_TOKEN_MS, O_TOKENS, O_FAULT, O_RATE, O_RETRY, O_THREADS };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, O_HOST},
        {"name", required_argument, NULL, 'n'},
        {"models", required_argument, NULL, 'm'},
        {"ttfb-ms", required_argument, NULL, O_TTFB},
        {"token-ms", required_argument, NULL, O_TOKEN_MS},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"fault", required_argument, NULL, O_FAULT},
        {"fault-rate", required_argument, NULL, O_RATE},
        {"retry-after", required_argument, NULL, O_RETRY},
        {"threads", required_argument, NULL, O_THREADS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct cli_options o = {.host = "127.0.0.1", .threads = 2};
    struct runtime rt = runtime_get();
    bool have_port = false;
    const char *model_list = NULL;
    int c, f;
    char *end;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":p:n:m:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            o.port = parse_uint("--port", optarg, 65535);
            have_port = true;
            break;
        case O_HOST:
            o.host = optarg;
            break;
        case 'n':
            node_name = optarg;
            break;
        case 'm':
            model_list = optarg;
            break;
        case O_TTFB:
            rt.ttfb_ms = parse_uint("--ttfb-ms", optarg, RUNTIME_MAX_DELAY_MS);
            break;
        case O_TOKEN_MS:
            rt.token_ms = parse_uint("--token-ms", optarg, RUNTIME_MAX_DELAY_MS);
            break;
        case O_TOKENS:
            rt.tokens = parse_uint("--tokens", optarg, RUNTIME_MAX_TOKENS);
            break;
        case O_FAULT:
            f = fault_parse(optarg);
            if (f < 0)
                cli_die_usage("unknown --fault '%s' (none, 500, 429, hang, close-mid-stream, "
                              "invalid-json, inflate-usage)",
                              optarg);
            rt.fault = (enum fault)f;
            break;
        case O_RATE:
            errno = 0;
            rt.fault_rate = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || errno == ERANGE || !isfinite(rt.fault_rate) ||
                rt.fault_rate < 0.0 || rt.fault_rate > 1.0)
                cli_die_usage("--fault-rate wants a number from 0 to 1, got '%s'", optarg);
            break;
        case O_RETRY:
            rt.retry_after_s = parse_uint("--retry-after", optarg, RUNTIME_MAX_RETRY_AFTER);
            break;
        case O_THREADS:
            o.threads = parse_uint("--threads", optarg, MAX_THREADS);
            if (o.threads == 0)
                cli_die_usage("--threads must be at least 1");
            break;
        case 'q':
            node_quiet = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            cli_die_usage("%s needs a value", argv[optind - 1]);
        default:
            cli_die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        cli_die_usage("unexpected argument '%s'", argv[optind]);
    if (!have_port)
        cli_die_usage("--port is required");
    if (!node_name || !*node_name)
        cli_die_usage("--name is required");
    if (!model_list)
        cli_die_usage("--models is required");
    parse_models(model_list);
    runtime_set(&rt);
    return o;
}

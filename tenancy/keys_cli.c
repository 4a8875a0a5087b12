/* `tollgate keys ...`: the command line over tenancy/keys.h's operations (see keys_cli()). */
#include "tenancy/keys.h"

#include "base/usd.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- CLI ---------------------------------------------------------------------------------- */

static void keys_cli_usage(FILE *out)
{
    fprintf(out,
            "usage: tollgate -c FILE keys create NAME [--models a,b] [--rpm N] [--tpm N]\n"
            "                                  [--budget-usd X] [--expires-at UNIX] [--json]\n"
            "       tollgate -c FILE keys list [--json]\n"
            "       tollgate -c FILE keys show NAME [--json]\n"
            "       tollgate -c FILE keys revoke NAME [--json]\n"
            "\n"
            "Manages the API keys held in Redis (redis.url of the config). create prints the\n"
            "new key once on stdout (with --json, one JSON line holding it); only its SHA-256\n"
            "is stored. Exit status: 0 ok, 1 error, 2 usage.\n");
}

static int keys_cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static int keys_cli_usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "tollgate keys: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    keys_cli_usage(stderr);
    return 2;
}

static int keys_cli_fail(const struct keys_error *err)
{
    fprintf(stderr, "tollgate keys: %s\n", err->message);
    return 1;
}

static int keys_cli_print_json(json_t *doc)
{
    char *text = doc ? usd_json_dumps(doc, JSON_COMPACT) : NULL; /* budget_usd */
    json_decref(doc);
    if (!text) {
        fprintf(stderr, "tollgate keys: out of memory\n");
        return 1;
    }
    printf("%s\n", text);
    free(text);
    return 0;
}

/* A whole decimal number, else -1 (a usage error). */
static int keys_cli_ll(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = n;
    return 0;
}

/* "a,b" as a JSON array; empty items stay (the validator names them). */
static json_t *keys_cli_models(const char *list)
{
    json_t *arr = json_array();
    const char *p = list;
    while (arr && *list) {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        if (json_array_append_new(arr, json_stringn(p, n))) {
            json_decref(arr);
            return NULL;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return arr;
}

static void keys_cli_time(long long t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;
    if (!gmtime_r(&tt, &tm) || !strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, n, "%lld", t);
}

static void keys_cli_describe(const struct keys_record *r, bool table)
{
    char rpm[24] = "-", tpm[24] = "-", expires[32] = "never", created[32];
    if (r->rpm)
        snprintf(rpm, sizeof rpm, "%lld", r->rpm);
    if (r->tpm)
        snprintf(tpm, sizeof tpm, "%lld", r->tpm);
    if (r->expires_at)
        keys_cli_time(r->expires_at, expires, sizeof expires);
    keys_cli_time(r->created_at, created, sizeof created);
    const char *models = r->models ? r->models : "*";
    const char *budget = r->budget_usd[0] ? r->budget_usd : "-";
    if (table) {
        printf("%-24s %-8.8s %-10s %-10s %-12s %-20s %-20s %s\n", r->name, r->sha256, rpm, tpm,
               budget, expires, created, models);
        return;
    }
    printf("name:          %s\n"
           "sha256_prefix: %.8s\n"
           "models:        %s\n"
           "rpm:           %s\n"
           "tpm:           %s\n"
           "budget_usd:    %s\n"
           "expires_at:    %s\n"
           "created_at:    %s\n",
           r->name, r->sha256, models, rpm, tpm, budget, expires, created);
}

static int keys_cli_create(const struct config *cfg, json_t *body, bool as_json)
{
    struct keys_record r;
    struct keys_error err;
    char key[KEYS_KEY_LEN + 1];
    if (keys_parse_request(body, (int64_t)time(NULL), &r, &err))
        return keys_cli_fail(&err);
    if (keys_create(cfg, &r, key, &err)) {
        keys_record_clear(&r);
        return keys_cli_fail(&err);
    }
    int rc = 0;
    if (as_json) {
        rc = keys_cli_print_json(keys_created_json(&r, key));
    } else {
        printf("%s\n", key);
        fprintf(stderr,
                "created key '%s' (sha256 %.8s...); it is shown only this once: keep it now\n",
                r.name, r.sha256);
    }
    fflush(stdout);
    explicit_bzero(key, sizeof key);
    keys_record_clear(&r);
    return rc;
}

int keys_cli(const struct config *cfg, int argc, char **argv)
{
    enum { OPT_MODELS = 256, OPT_RPM, OPT_TPM, OPT_BUDGET, OPT_EXPIRES, OPT_JSON, OPT_HELP };
    static const struct option opts[] = {{"models", required_argument, NULL, OPT_MODELS},
                                         {"rpm", required_argument, NULL, OPT_RPM},
                                         {"tpm", required_argument, NULL, OPT_TPM},
                                         {"budget-usd", required_argument, NULL, OPT_BUDGET},
                                         {"expires-at", required_argument, NULL, OPT_EXPIRES},
                                         {"json", no_argument, NULL, OPT_JSON},
                                         {"help", no_argument, NULL, OPT_HELP},
                                         {NULL, 0, NULL, 0}};
    if (argc < 1)
        return keys_cli_usage_error("%s", "a sub-command is required");
    const char *cmd = argv[0];
    bool create = !strcmp(cmd, "create");
    if (!create && strcmp(cmd, "list") && strcmp(cmd, "show") && strcmp(cmd, "revoke"))
        return keys_cli_usage_error("unknown sub-command '%s'", cmd);
    json_t *body = json_object();
    if (!body) {
        fprintf(stderr, "tollgate keys: out of memory\n");
        return 1;
    }
    bool as_json = false;
    int c, rc = 2;
    /* argv[0] (the sub-command) stands where getopt expects the program name; optind = 0
     * makes glibc's getopt start afresh after main's pass. */
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1 || optind < argc) {
        if (c == -1) {
            /* A positional argument: keep it for later, go on with the options after it. */
            if (json_object_get(body, "name")) {
                keys_cli_usage_error("unexpected argument '%s'", argv[optind]);
                goto out;
            }
            json_object_set_new(body, "name", json_string(argv[optind]));
            if (!json_object_get(body, "name")) {
                fprintf(stderr, "tollgate keys: the name must be valid UTF-8\n");
                rc = 1;
                goto out;
            }
            optind++;
            continue;
        }
        long long n;
        char *end;
        json_t *v = NULL;
        const char *field = NULL;
        switch (c) {
        case OPT_MODELS:
            field = "models";
            v = keys_cli_models(optarg);
            break;
        case OPT_RPM:
        case OPT_TPM:
        case OPT_EXPIRES:
            field = c == OPT_RPM ? "rpm" : c == OPT_TPM ? "tpm" : "expires_at";
            if (keys_cli_ll(optarg, &n)) {
                keys_cli_usage_error("not a whole number: '%s'", optarg);
                goto out;
            }
            v = json_integer(n);
            break;
        case OPT_BUDGET: {
            errno = 0;
            double x = strtod(optarg, &end);
            if (errno || end == optarg || *end || !isfinite(x)) {
                keys_cli_usage_error("not a number: '%s'", optarg);
                goto out;
            }
            field = "budget_usd";
            v = json_real(x);
            break;
        }
        case OPT_JSON:
            as_json = true;
            continue;
        case OPT_HELP:
        case 'h':
            keys_cli_usage(stdout);
            rc = 0;
            goto out;
        default:
            keys_cli_usage_error("bad option '%s'", argv[optind - 1]);
            goto out;
        }
        if (!create) {
            keys_cli_usage_error("'%s' takes no options but --json", cmd);
            json_decref(v);
            goto out;
        }
        if (!v || json_object_set_new(body, field, v)) {
            fprintf(stderr, "tollgate keys: out of memory or invalid UTF-8\n");
            rc = 1;
            goto out;
        }
    }
    json_t *name = json_object_get(body, "name");
    if (!strcmp(cmd, "list")) {
        if (name) {
            keys_cli_usage_error("unexpected argument '%s'", json_string_value(name));
            goto out;
        }
    } else if (!name) {
        keys_cli_usage_error("%s needs a NAME", cmd);
        goto out;
    }

    struct keys_error err;
    if (create) {
        rc = keys_cli_create(cfg, body, as_json);
    } else if (!strcmp(cmd, "list")) {
        struct keys_record *list;
        size_t n;
        if (keys_list(cfg, NULL, 0, &list, &n, NULL, &err)) {
            rc = keys_cli_fail(&err);
            goto out;
        }
        if (as_json) {
            rc = keys_cli_print_json(keys_list_json(list, n, false));
        } else {
            printf("%-24s %-8s %-10s %-10s %-12s %-20s %-20s %s\n", "NAME", "SHA256", "RPM", "TPM",
                   "BUDGET_USD", "EXPIRES_AT", "CREATED_AT", "MODELS");
            for (size_t i = 0; i < n; i++)
                keys_cli_describe(&list[i], true);
            rc = 0;
        }
        keys_records_free(list, n);
    } else if (!strcmp(cmd, "show")) {
        struct keys_record r = {0};
        if (keys_show(cfg, json_string_value(name), &r, &err)) {
            rc = keys_cli_fail(&err);
            goto out;
        }
        if (as_json) {
            rc = keys_cli_print_json(keys_record_json(&r));
        } else {
            keys_cli_describe(&r, false);
            rc = 0;
        }
        keys_record_clear(&r);
    } else {
        const char *n = json_string_value(name);
        if (keys_revoke(cfg, n, &err)) {
            rc = keys_cli_fail(&err);
            goto out;
        }
        if (as_json)
            rc = keys_cli_print_json(json_pack("{s:s, s:b}", "name", n, "revoked", 1));
        else
            printf("revoked %s\n", n);
        if (!as_json)
            rc = 0;
    }
out:
    json_decref(body);
    return rc;
}

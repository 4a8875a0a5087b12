/* The ledger's read side: usage totals for the admin API (ledger_usage(), ledger_usage_json())
 * and `tollgate usage` (ledger_cli()), over the blocking client (redis/sync.h). The write
 * side is ledger.c. */
#include "tenancy/ledger.h"

#include "base/usd.h"
#include "redis/keyspace.h"
#include "redis/sync.h"

#include <getopt.h>
#include <hiredis/hiredis.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEDGER_USAGE_ROWS_MAX 100000 /* rows one usage query may return */
#define LEDGER_USAGE_PIPELINE 128    /* HGETALLs sent before their replies are read */

/* ---- the read side --------------------------------------------------------------------------- */

#define LEDGER_STORE "usage store" /* names the store in messages */

static int ledger_fail(struct keys_error *err, int result, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int ledger_fail(struct keys_error *err, int result, const char *code, const char *fmt, ...)
{
    err->result = result;
    err->code = code;
    err->param[0] = '\0';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return result;
}

#define ledger_unavailable(err, ...)                                                               \
    ledger_fail(err, KEYS_EUNAVAIL, "usage_store_unavailable", __VA_ARGS__)

/* A blocking client's error as the usage store's: 503 usage_store_unavailable, or 500. */
static int ledger_from_sync(const struct redis_sync_error *se, struct keys_error *err)
{
    if (se->code == REDIS_SYNC_ENOMEM)
        return ledger_fail(err, KEYS_ENOMEM, "internal_error", "out of memory");
    return ledger_unavailable(err, "%s", se->message);
}

static redisReply *ledger_check(redisContext *c, redisReply *reply, struct keys_error *err)
{
    struct redis_sync_error se;
    if (!(reply = redis_sync_check(c, reply, LEDGER_STORE, &se)))
        ledger_from_sync(&se, err);
    return reply;
}

static redisContext *ledger_connect(const struct config *cfg, struct keys_error *err)
{
    struct redis_sync_error se;
    redisContext *c = redis_sync_connect(cfg->redis_url, LEDGER_STORE, &se);
    if (!c)
        ledger_from_sync(&se, err);
    return c;
}

static int ledger_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int ledger_cmp_row(const void *a, const void *b)
{
    const struct ledger_usage_row *x = a, *y = b;
    int c = strcmp(x->key, y->key);
    return c ? c : strcmp(x->model, y->model);
}

/* Rows being collected: a growing array under LEDGER_USAGE_ROWS_MAX. */
struct ledger_rows {
    struct ledger_usage_row *v;
    size_t n, cap;
};

static struct ledger_usage_row *ledger_row(struct ledger_rows *rows, size_t from, const char *key,
                                           const char *model, size_t model_len)
{
    for (size_t i = from; i < rows->n; i++)
        if (strlen(rows->v[i].model) == model_len && !memcmp(rows->v[i].model, model, model_len))
            return &rows->v[i];
    if (rows->n == rows->cap) {
        size_t cap = rows->cap ? rows->cap * 2 : 16;
        struct ledger_usage_row *v = realloc(rows->v, cap * sizeof *v);
        if (!v)
            return NULL;
        rows->v = v;
        rows->cap = cap;
    }
    struct ledger_usage_row *r = &rows->v[rows->n++];
    memset(r, 0, sizeof *r);
    snprintf(r->key, sizeof r->key, "%s", key);
    memcpy(r->model, model, model_len);
    r->model[model_len] = '\0';
    snprintf(r->cost_usd, sizeof r->cost_usd, "0");
    return r;
}

/* One key's sum hash (HGETALL's reply) into rows. Unknown or malformed fields are ignored. */
static int ledger_add_hash(struct ledger_rows *rows, const char *key, const redisReply *h,
                           struct keys_error *err)
{
    size_t from = rows->n;
    for (size_t i = 0; i + 1 < h->elements; i += 2) {
        const redisReply *f = h->element[i], *v = h->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        /* Model names may hold ':' ("llama3:8b"); the metric after the last one has none. */
        const char *colon = NULL;
        for (size_t k = 0; k < f->len; k++)
            if (f->str[k] == ':')
                colon = f->str + k;
        if (!colon || (size_t)(colon - f->str) > LEDGER_FIELD_MAX)
            continue;
        const char *metric = colon + 1;
        size_t mlen = (size_t)(colon - f->str);
        long long *num = NULL;
        bool cost = !strcmp(metric, "cost_usd");
        if (rows->n >= LEDGER_USAGE_ROWS_MAX)
            return ledger_fail(err, KEYS_EUNAVAIL, "usage_too_large",
                               "More than %d rows of usage; ask for one key at a time.",
                               LEDGER_USAGE_ROWS_MAX);
        if (!cost && strcmp(metric, "requests") && strcmp(metric, "prompt_tokens") &&
            strcmp(metric, "completion_tokens"))
            continue;
        struct ledger_usage_row *r = ledger_row(rows, from, key, f->str, mlen);
        if (!r)
            return ledger_fail(err, KEYS_ENOMEM, "internal_error", "out of memory");
        if (cost) {
            char *end;
            double x = strtod(v->str, &end);
            if (end != v->str && !*end && isfinite(x) && v->len < sizeof r->cost_usd)
                memcpy(r->cost_usd, v->str, v->len + 1);
            continue;
        }
        num = !strcmp(metric, "requests")        ? &r->requests
              : !strcmp(metric, "prompt_tokens") ? &r->prompt_tokens
                                                 : &r->completion_tokens;
        *num = strtoll(v->str, NULL, 10);
    }
    return 0;
}

int ledger_usage(const struct config *cfg, const char *key, struct ledger_usage_row **out,
                 size_t *n, struct keys_error *err)
{
    *out = NULL;
    *n = 0;
    if (key && strlen(key) > LEDGER_FIELD_MAX)
        return 0; /* no record carries a key that long */
    redisContext *c = ledger_connect(cfg, err);
    if (!c)
        return err->result;
    redisReply *members = NULL;
    const char **names = NULL;
    size_t count = 0;
    struct ledger_rows rows = {0};
    int rc = 0;
    if (key) {
        names = malloc(sizeof *names);
        if (!names) {
            rc = ledger_fail(err, KEYS_ENOMEM, "internal_error", "out of memory");
            goto out;
        }
        names[0] = key;
        count = 1;
    } else {
        const char *argv[2] = {"SMEMBERS", REDIS_KEY_USAGE_KEYS};
        if (!(members = ledger_check(c, redisCommandArgv(c, 2, argv, NULL), err))) {
            rc = err->result;
            goto out;
        }
        if (members->type != REDIS_REPLY_ARRAY) {
            rc = ledger_unavailable(err, "%s", "The usage store (Redis) gave an unexpected reply.");
            goto out;
        }
        names = calloc(members->elements + 1, sizeof *names);
        if (!names) {
            rc = ledger_fail(err, KEYS_ENOMEM, "internal_error", "out of memory");
            goto out;
        }
        for (size_t i = 0; i < members->elements; i++) {
            const redisReply *m = members->element[i];
            if (m->type == REDIS_REPLY_STRING && strlen(m->str) == m->len &&
                m->len <= LEDGER_FIELD_MAX)
                names[count++] = m->str;
        }
        qsort(names, count, sizeof *names, ledger_cmp_str);
    }
    for (size_t base = 0; base < count && !rc; base += LEDGER_USAGE_PIPELINE) {
        size_t batch = count - base < LEDGER_USAGE_PIPELINE ? count - base : LEDGER_USAGE_PIPELINE;
        for (size_t i = 0; i < batch; i++) {
            char sum[LEDGER_FIELD_MAX + 32];
            snprintf(sum, sizeof sum, REDIS_KEY_USAGE_SUM_PREFIX "%s", names[base + i]);
            const char *argv[2] = {"HGETALL", sum};
            if (redisAppendCommandArgv(c, 2, argv, NULL) != REDIS_OK) {
                rc = ledger_fail(err, KEYS_ENOMEM, "internal_error", "out of memory");
                goto out;
            }
        }
        for (size_t i = 0; i < batch; i++) {
            void *p = NULL;
            if (redisGetReply(c, &p) != REDIS_OK || !ledger_check(c, p, err)) {
                rc = err->result;
                goto out; /* the connection is dropped with the replies still owed */
            }
            const redisReply *h = p;
            if (!rc && h->type == REDIS_REPLY_ARRAY)
                rc = ledger_add_hash(&rows, names[base + i], h, err);
            freeReplyObject(p);
        }
    }
out:
    if (!rc && rows.n) {
        qsort(rows.v, rows.n, sizeof *rows.v, ledger_cmp_row);
        *out = rows.v;
        *n = rows.n;
    } else {
        free(rows.v);
    }
    free(names);
    freeReplyObject(members);
    redisFree(c);
    return rc;
}

char *ledger_usage_json(const struct ledger_usage_row *rows, size_t n, size_t *len)
{
    json_t *data = json_array();
    json_t *doc = json_pack("{s:s, s:o}", "object", "list", "data", data);
    if (!doc)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const struct ledger_usage_row *r = &rows[i];
        /* Names that are not UTF-8 (none are written so) are left out rather than failing. */
        json_t *row =
            json_pack("{s:s, s:s, s:I, s:I, s:I, s:f}", "key", r->key, "model", r->model,
                      "requests", (json_int_t)r->requests, "prompt_tokens",
                      (json_int_t)r->prompt_tokens, "completion_tokens",
                      (json_int_t)r->completion_tokens, "cost_usd", strtod(r->cost_usd, NULL));
        if (row && json_array_append_new(data, row)) {
            json_decref(doc);
            return NULL;
        }
    }
    /* As every amount is printed (base/usd.h): a sum of cents is 0.3, not 0.30000000000000004. */
    char *text = usd_json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (text && len)
        *len = strlen(text);
    return text;
}

/* ---- CLI ------------------------------------------------------------------------------------- */

static void ledger_cli_usage(FILE *out)
{
    fprintf(out, "usage: tollgate -c FILE usage [--key NAME] [--json]\n"
                 "\n"
                 "Prints requests, tokens and spend per API key and model, summed over every\n"
                 "request recorded in the usage ledger (Redis, redis.url of the config).\n"
                 "Exit status: 0 ok, 1 error, 2 usage.\n");
}

int ledger_cli(const struct config *cfg, int argc, char **argv)
{
    enum { OPT_KEY = 256, OPT_JSON, OPT_HELP };
    static const struct option opts[] = {{"key", required_argument, NULL, OPT_KEY},
                                         {"json", no_argument, NULL, OPT_JSON},
                                         {"help", no_argument, NULL, OPT_HELP},
                                         {NULL, 0, NULL, 0}};
    const char *key = NULL;
    bool as_json = false;
    int c;
    /* argv[0] ("usage") stands where getopt expects the program name; optind = 0 makes
     * glibc's getopt start afresh after main's pass. */
    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_KEY:
            key = optarg;
            break;
        case OPT_JSON:
            as_json = true;
            break;
        case OPT_HELP:
        case 'h':
            ledger_cli_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "tollgate usage: bad option '%s'\n", argv[optind - 1]);
            ledger_cli_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "tollgate usage: unexpected argument '%s'\n", argv[optind]);
        ledger_cli_usage(stderr);
        return 2;
    }
    if (key && !*key) {
        fprintf(stderr, "tollgate usage: --key needs a name\n");
        return 2;
    }
    struct ledger_usage_row *rows;
    size_t n;
    struct keys_error err;
    if (ledger_usage(cfg, key, &rows, &n, &err)) {
        fprintf(stderr, "tollgate usage: %s\n", err.message);
        return 1;
    }
    int rc = 0;
    if (as_json) {
        char *text = ledger_usage_json(rows, n, NULL);
        if (text)
            printf("%s\n", text);
        else
            fprintf(stderr, "tollgate usage: out of memory\n");
        rc = text ? 0 : 1;
        free(text);
    } else {
        printf("%-24s %-32s %10s %14s %18s %14s\n", "KEY", "MODEL", "REQUESTS", "PROMPT_TOKENS",
               "COMPLETION_TOKENS", "COST_USD");
        for (size_t i = 0; i < n; i++) {
            /* Redis sums in long double and prints 17 decimals; 10 are plenty for dollars. */
            char cost[64];
            ledger_format_decimal(strtod(rows[i].cost_usd, NULL), cost, sizeof cost);
            printf("%-24s %-32s %10lld %14lld %18lld %14s\n", rows[i].key[0] ? rows[i].key : "-",
                   rows[i].model[0] ? rows[i].model : "-", rows[i].requests, rows[i].prompt_tokens,
                   rows[i].completion_tokens, cost);
        }
    }
    free(rows);
    return rc;
}

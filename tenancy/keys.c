#include "tenancy/keys.h"

#include "base/buf.h"
#include "base/digest.h"
#include "base/error.h"
#include "redis/keyspace.h"
#include "redis/sync.h"

#include <errno.h>
#include <hiredis/hiredis.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

/* ---- errors ------------------------------------------------------------------------------- */

static int keys_fail(struct keys_error *err, int result, const char *code, const char *param,
                     const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int keys_fail(struct keys_error *err, int result, const char *code, const char *param,
                     const char *fmt, ...)
{
    err->result = result;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
    return result;
}

static int keys_nomem(struct keys_error *err)
{
    return keys_fail(err, KEYS_ENOMEM, "internal_error", NULL, "out of memory");
}

unsigned keys_error_status(const struct keys_error *e)
{
    switch (e->result) {
    case KEYS_EINVAL:
        return 400;
    case KEYS_ENOENT:
        return 404;
    case KEYS_EEXIST:
        return 409;
    case KEYS_EUNAVAIL:
        return 503;
    default:
        return 500;
    }
}

char *keys_error_body(const struct keys_error *e, size_t *len)
{
    /* error.c's table has no 409 and no key codes; borrow a code of the same OpenAI type
     * and override the code string. */
    enum tg_error kind;
    switch (e->result) {
    case KEYS_EINVAL:
    case KEYS_EEXIST:
        kind = TG_ERR_INVALID_VALUE;
        break;
    case KEYS_ENOENT:
        kind = TG_ERR_UNKNOWN_URL;
        break;
    case KEYS_EUNAVAIL:
        kind = TG_ERR_NO_BACKEND;
        break;
    default:
        kind = TG_ERR_INTERNAL;
        break;
    }
    return error_body(kind, e->message, e->param[0] ? e->param : NULL, e->code, len);
}

/* ---- records ------------------------------------------------------------------------------ */

void keys_record_clear(struct keys_record *r)
{
    free(r->models);
    memset(r, 0, sizeof *r);
}

void keys_records_free(struct keys_record *list, size_t n)
{
    for (size_t i = 0; list && i < n; i++)
        keys_record_clear(&list[i]);
    free(list);
}

int keys_valid_name(const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n > KEYS_NAME_MAX || !strcmp(name, ".") || !strcmp(name, ".."))
        return 0;
    return strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

/* The shortest fixed-point text that reads back as x (up to 12 decimals; below that a
 * dollar amount means nothing): never an exponent, so any consumer can parse it. */
static void keys_format_budget(double x, char out[32])
{
    if (x == 0)
        x = 0; /* -0 prints as "-0" */
    for (int d = 0; d <= 12; d++) {
        snprintf(out, 32, "%.*f", d, x);
        if (strtod(out, NULL) == x)
            return;
    }
    char *dot = strchr(out, '.');
    size_t n = strlen(out);
    while (dot && n > 0 && out[n - 1] == '0')
        out[--n] = '\0';
    if (n > 0 && out[n - 1] == '.')
        out[--n] = '\0';
}

/* A JSON integer in [min, max] at `field`, or an error naming it. */
static int keys_get_int(const json_t *v, const char *field, long long min, long long max,
                        long long *out, struct keys_error *err)
{
    if (!json_is_integer(v))
        return keys_fail(err, KEYS_EINVAL, "invalid_type", field, "'%s' must be an integer", field);
    long long n = json_integer_value(v);
    if (n < min || n > max)
        return keys_fail(err, KEYS_EINVAL, "invalid_value", field,
                         "'%s' must be between %lld and %lld", field, min, max);
    *out = n;
    return 0;
}

static int keys_get_models(const json_t *v, struct keys_record *r, struct keys_error *err)
{
    if (!json_is_array(v))
        return keys_fail(err, KEYS_EINVAL, "invalid_type", "models",
                         "'models' must be an array of model names");
    size_t n = json_array_size(v);
    if (n == 0)
        return keys_fail(err, KEYS_EINVAL, "invalid_value", "models",
                         "'models' must name at least one model; leave it out to allow every "
                         "model");
    if (n > KEYS_MODELS_MAX)
        return keys_fail(err, KEYS_EINVAL, "invalid_value", "models",
                         "'models' may list at most %d models", KEYS_MODELS_MAX);
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(v, i);
        if (!json_is_string(m))
            return keys_fail(err, KEYS_EINVAL, "invalid_type", "models",
                             "'models' must be an array of strings (item %zu is not)", i);
        size_t len = json_string_length(m);
        /* No NUL inside: the hot path keeps the list NUL-separated. */
        if (len == 0 || len > KEYS_MODEL_NAME_MAX || strlen(json_string_value(m)) != len)
            return keys_fail(err, KEYS_EINVAL, "invalid_value", "models",
                             "'models' item %zu must be 1 to %d bytes long", i,
                             KEYS_MODEL_NAME_MAX);
    }
    r->models = json_dumps(v, JSON_COMPACT);
    return r->models ? 0 : keys_nomem(err);
}

static int keys_parse_fields(const json_t *body, int64_t now, struct keys_record *r,
                             struct keys_error *err)
{
    static const char *const allowed[] = {"name",       "models",     "rpm", "tpm",
                                          "budget_usd", "expires_at", NULL};
    if (!json_is_object(body))
        return keys_fail(err, KEYS_EINVAL, "invalid_json", NULL, "The body must be a JSON object.");
    const char *field;
    const json_t *v;
    json_object_foreach ((json_t *)body, field, v) {
        const char *const *a = allowed;
        while (*a && strcmp(*a, field))
            a++;
        if (!*a)
            return keys_fail(err, KEYS_EINVAL, "unknown_parameter", field,
                             "Unrecognized field '%.64s'.", field);
    }

    v = json_object_get(body, "name");
    if (!v || json_is_null(v))
        return keys_fail(err, KEYS_EINVAL, "missing_required_parameter", "name",
                         "'name' is required");
    if (!json_is_string(v))
        return keys_fail(err, KEYS_EINVAL, "invalid_type", "name", "'name' must be a string");
    if (!keys_valid_name(json_string_value(v)) ||
        strlen(json_string_value(v)) != json_string_length(v))
        return keys_fail(err, KEYS_EINVAL, "invalid_value", "name",
                         "'name' must be 1 to %d characters of A-Z a-z 0-9 . _ - (not \".\" "
                         "or \"..\")",
                         KEYS_NAME_MAX);
    snprintf(r->name, sizeof r->name, "%s", json_string_value(v));

    v = json_object_get(body, "models");
    if (v && !json_is_null(v) && keys_get_models(v, r, err))
        return err->result;
    v = json_object_get(body, "rpm");
    if (v && !json_is_null(v) && keys_get_int(v, "rpm", 1, KEYS_LIMIT_MAX, &r->rpm, err))
        return err->result;
    v = json_object_get(body, "tpm");
    if (v && !json_is_null(v) && keys_get_int(v, "tpm", 1, KEYS_LIMIT_MAX, &r->tpm, err))
        return err->result;

    v = json_object_get(body, "budget_usd");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v))
            return keys_fail(err, KEYS_EINVAL, "invalid_type", "budget_usd",
                             "'budget_usd' must be a number");
        double x = json_number_value(v);
        if (!isfinite(x) || x < 0 || x > KEYS_BUDGET_MAX)
            return keys_fail(err, KEYS_EINVAL, "invalid_value", "budget_usd",
                             "'budget_usd' must be between 0 and %.0f", KEYS_BUDGET_MAX);
        keys_format_budget(x, r->budget_usd);
    }

    v = json_object_get(body, "expires_at");
    if (v && !json_is_null(v)) {
        if (keys_get_int(v, "expires_at", 0, KEYS_EXPIRES_MAX, &r->expires_at, err))
            return err->result;
        if (r->expires_at <= now)
            return keys_fail(err, KEYS_EINVAL, "invalid_value", "expires_at",
                             "'expires_at' (unix seconds) must be in the future; now is %lld",
                             (long long)now);
    }
    return 0;
}

int keys_parse_request(const json_t *body, int64_t now, struct keys_record *r,
                       struct keys_error *err)
{
    memset(r, 0, sizeof *r);
    int rc = keys_parse_fields(body, now, r, err);
    if (rc)
        keys_record_clear(r);
    return rc;
}

static json_t *keys_models_json(const char *models)
{
    if (!models || !*models)
        return json_null();
    json_t *m = json_loads(models, 0, NULL);
    if (json_is_array(m))
        return m;
    json_decref(m);
    return json_null();
}

static json_t *keys_limit_json(long long n)
{
    return n > 0 ? json_integer(n) : json_null();
}

static json_t *keys_budget_json(const char *budget)
{
    return budget[0] ? json_real(strtod(budget, NULL)) : json_null();
}

json_t *keys_record_json(const struct keys_record *r)
{
    return json_pack("{s:s, s:s#, s:o, s:o, s:o, s:o, s:o, s:I}", "name", r->name, "sha256_prefix",
                     r->sha256, (int)strnlen(r->sha256, 8), "models", keys_models_json(r->models),
                     "rpm", keys_limit_json(r->rpm), "tpm", keys_limit_json(r->tpm), "budget_usd",
                     keys_budget_json(r->budget_usd), "expires_at", keys_limit_json(r->expires_at),
                     "created_at", (json_int_t)r->created_at);
}

json_t *keys_created_json(const struct keys_record *r, const char *key)
{
    return json_pack("{s:s, s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:I}", "name", r->name, "key", key,
                     "sha256", r->sha256, "models", keys_models_json(r->models), "rpm",
                     keys_limit_json(r->rpm), "tpm", keys_limit_json(r->tpm), "budget_usd",
                     keys_budget_json(r->budget_usd), "expires_at", keys_limit_json(r->expires_at),
                     "created_at", (json_int_t)r->created_at);
}

json_t *keys_list_json(const struct keys_record *list, size_t n, bool has_more)
{
    json_t *data = json_array();
    if (!data)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(data, keys_record_json(&list[i]))) {
            json_decref(data);
            return NULL;
        }
    }
    return json_pack("{s:s, s:o, s:b, s:s?, s:s?}", "object", "list", "data", data, "has_more",
                     has_more, "first_id", n ? list[0].name : NULL, "last_id",
                     n ? list[n - 1].name : NULL);
}

static void keys_field(struct keys_fields *f, const char *name, const char *value)
{
    f->argv[f->argc] = name;
    f->argvlen[f->argc++] = strlen(name);
    f->argv[f->argc] = value;
    f->argvlen[f->argc++] = strlen(value);
}

void keys_record_fields(const struct keys_record *r, struct keys_fields *out)
{
    out->argc = 0;
    keys_field(out, "name", r->name);
    if (r->models)
        keys_field(out, "models", r->models);
    if (r->rpm > 0) {
        snprintf(out->num[0], sizeof out->num[0], "%lld", r->rpm);
        keys_field(out, "rpm", out->num[0]);
    }
    if (r->tpm > 0) {
        snprintf(out->num[1], sizeof out->num[1], "%lld", r->tpm);
        keys_field(out, "tpm", out->num[1]);
    }
    if (r->budget_usd[0])
        keys_field(out, "budget_usd", r->budget_usd);
    if (r->expires_at > 0) {
        snprintf(out->num[2], sizeof out->num[2], "%lld", r->expires_at);
        keys_field(out, "expires_at", out->num[2]);
    }
    snprintf(out->num[3], sizeof out->num[3], "%lld", r->created_at);
    keys_field(out, "created_at", out->num[3]);
}

/* A whole decimal string as a non-negative integer, else 0 (absent). */
static long long keys_parse_ll(const char *s)
{
    char *end;
    errno = 0;
    long long n = strtoll(s, &end, 10);
    if (errno || end == s || *end || n < 0)
        return 0;
    return n;
}

int keys_record_from_fields(struct keys_record *r, size_t n, const char *const *fv)
{
    for (size_t i = 0; i < n; i++) {
        const char *f = fv[2 * i], *v = fv[2 * i + 1];
        if (!strcmp(f, "name")) {
            if (strlen(v) <= KEYS_NAME_MAX)
                snprintf(r->name, sizeof r->name, "%s", v);
        } else if (!strcmp(f, "models")) {
            free(r->models);
            r->models = NULL;
            if (*v && !(r->models = strdup(v)))
                return KEYS_ENOMEM;
        } else if (!strcmp(f, "rpm")) {
            r->rpm = keys_parse_ll(v);
        } else if (!strcmp(f, "tpm")) {
            r->tpm = keys_parse_ll(v);
        } else if (!strcmp(f, "expires_at")) {
            r->expires_at = keys_parse_ll(v);
        } else if (!strcmp(f, "created_at")) {
            r->created_at = keys_parse_ll(v);
        } else if (!strcmp(f, "budget_usd")) {
            char *end;
            double x = strtod(v, &end);
            r->budget_usd[0] = '\0';
            if (end != v && !*end && isfinite(x) && x >= 0 && strlen(v) < sizeof r->budget_usd)
                snprintf(r->budget_usd, sizeof r->budget_usd, "%s", v);
        }
    }
    return 0;
}

/* ---- Redis -------------------------------------------------------------------------------- */

#define KEYS_STORE "key store" /* names the store in messages */
#define KEYS_UNAVAILABLE "key_store_unavailable"

#define keys_unavailable(err, ...)                                                                 \
    keys_fail(err, KEYS_EUNAVAIL, KEYS_UNAVAILABLE, NULL, __VA_ARGS__)

/* A blocking client's error as the key store's: 503 key_store_unavailable, or 500. */
static int keys_from_sync(const struct redis_sync_error *se, struct keys_error *err)
{
    if (se->code == REDIS_SYNC_ENOMEM)
        return keys_nomem(err);
    return keys_unavailable(err, "%s", se->message);
}

static redisReply *keys_check(redisContext *c, redisReply *reply, struct keys_error *err)
{
    struct redis_sync_error se;
    if (!(reply = redis_sync_check(c, reply, KEYS_STORE, &se)))
        keys_from_sync(&se, err);
    return reply;
}

static redisReply *keys_command(redisContext *c, int argc, const char **argv, const size_t *argvlen,
                                struct keys_error *err)
{
    return keys_check(c, redisCommandArgv(c, argc, argv, argvlen), err);
}

static redisContext *keys_connect(const struct config *cfg, struct keys_error *err)
{
    struct redis_sync_error se;
    redisContext *c = redis_sync_connect(cfg->redis_url, KEYS_STORE, &se);
    if (!c)
        keys_from_sync(&se, err);
    return c;
}

/* All-or-nothing creation. The EXISTS check comes before any write, so a refused name
 * leaves nothing behind. KEYS: name index, hash, set. ARGV: name, hex, field/value pairs. */
static const char keys_create_lua[] = "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
                                      "redis.call('SET', KEYS[1], ARGV[2])\n"
                                      "redis.call('HSET', KEYS[2], unpack(ARGV, 3))\n"
                                      "redis.call('SADD', KEYS[3], ARGV[1])\n"
                                      "return 1\n";

/* Revocation of the hash the name pointed to when we looked; 0 when the name has moved on
 * since (revoked, or revoked and re-created). KEYS: name index, hash, set. ARGV: name, hex. */
static const char keys_revoke_lua[] =
    "if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end\n"
    "redis.call('DEL', KEYS[2])\n"
    "redis.call('DEL', KEYS[1])\n"
    "redis.call('SREM', KEYS[3], ARGV[1])\n"
    "redis.call('PUBLISH', '" REDIS_CHANNEL_KEYS_REVOKED "', ARGV[2])\n"
    "return 1\n";

static int keys_static_name(const struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_keys; i++)
        if (cfg->keys[i].name && !strcmp(cfg->keys[i].name, name))
            return 1;
    return 0;
}

int keys_create(const struct config *cfg, struct keys_record *r, char key[KEYS_KEY_LEN + 1],
                struct keys_error *err)
{
    key[0] = '\0';
    if (keys_static_name(cfg, r->name))
        return keys_fail(err, KEYS_EEXIST, "key_exists", "name",
                         "A key named '%s' already exists (in the config).", r->name);
    unsigned char raw[16], digest[32];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        return keys_fail(err, KEYS_ENOMEM, "internal_error", NULL, "getrandom() failed");
    memcpy(key, "tg-", 3);
    buf_hex(raw, sizeof raw, key + 3);
    explicit_bzero(raw, sizeof raw);
    digest_sha256(key, KEYS_KEY_LEN, digest);
    buf_hex(digest, sizeof digest, r->sha256);
    r->created_at = (long long)time(NULL);

    int rc = KEYS_OK;
    redisContext *c = keys_connect(cfg, err);
    if (!c) {
        rc = err->result;
        goto out;
    }
    char name_key[sizeof REDIS_KEY_KEYNAME_PREFIX + KEYS_NAME_MAX],
        hash_key[sizeof REDIS_KEY_KEY_PREFIX + 64];
    snprintf(name_key, sizeof name_key, REDIS_KEY_KEYNAME_PREFIX "%s", r->name);
    snprintf(hash_key, sizeof hash_key, REDIS_KEY_KEY_PREFIX "%s", r->sha256);
    struct keys_fields f;
    keys_record_fields(r, &f);
    const char *argv[8 + 14] = {"EVAL",   keys_create_lua, "3",     name_key,
                                hash_key, REDIS_KEY_KEYS,  r->name, r->sha256};
    size_t argvlen[8 + 14];
    for (int i = 0; i < 8; i++)
        argvlen[i] = strlen(argv[i]);
    memcpy(argv + 8, f.argv, (size_t)f.argc * sizeof *argv);
    memcpy(argvlen + 8, f.argvlen, (size_t)f.argc * sizeof *argvlen);
    redisReply *reply = keys_command(c, 8 + f.argc, argv, argvlen, err);
    if (!reply) {
        rc = err->result;
    } else if (reply->type != REDIS_REPLY_INTEGER) {
        rc = keys_unavailable(err, "%s", "The key store (Redis) gave an unexpected reply.");
    } else if (reply->integer != 1) {
        rc = keys_fail(err, KEYS_EEXIST, "key_exists", "name", "A key named '%s' already exists.",
                       r->name);
    }
    freeReplyObject(reply);
    redisFree(c);
out:
    if (rc) {
        explicit_bzero(key, KEYS_KEY_LEN + 1);
        r->sha256[0] = '\0';
    }
    return rc;
}

/* The hex a name points to, into hex[65]: 0, KEYS_ENOENT (not set or malformed), or an
 * error in err. */
static int keys_lookup(redisContext *c, const char *name, char hex[65], struct keys_error *err)
{
    char name_key[sizeof REDIS_KEY_KEYNAME_PREFIX + KEYS_NAME_MAX];
    snprintf(name_key, sizeof name_key, REDIS_KEY_KEYNAME_PREFIX "%s", name);
    const char *argv[2] = {"GET", name_key};
    redisReply *reply = keys_command(c, 2, argv, NULL, err);
    if (!reply)
        return err->result;
    int rc = KEYS_OK;
    if (reply->type != REDIS_REPLY_STRING || reply->len != 64 ||
        strspn(reply->str, "0123456789abcdef") != 64)
        rc = keys_fail(err, KEYS_ENOENT, "key_not_found", NULL, "No key named '%s'.", name);
    else
        memcpy(hex, reply->str, 65);
    freeReplyObject(reply);
    return rc;
}

/* Fills r from an HGETALL reply; KEYS_ENOENT when the hash is empty (missing). */
static int keys_from_reply(const redisReply *reply, struct keys_record *r, const char *hex)
{
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements == 0 || reply->elements % 2)
        return KEYS_ENOENT;
    const char *fv[64];
    size_t n = 0;
    for (size_t i = 0; i + 1 < reply->elements && n < sizeof fv / sizeof fv[0] / 2; i += 2) {
        const redisReply *f = reply->element[i], *v = reply->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        fv[2 * n] = f->str;
        fv[2 * n + 1] = v->str;
        n++;
    }
    if (keys_record_from_fields(r, n, fv))
        return KEYS_ENOMEM;
    snprintf(r->sha256, sizeof r->sha256, "%s", hex);
    return 0;
}

static int keys_hgetall(redisContext *c, const char *name, const char *hex, struct keys_record *r,
                        struct keys_error *err)
{
    char hash_key[sizeof REDIS_KEY_KEY_PREFIX + 64];
    snprintf(hash_key, sizeof hash_key, REDIS_KEY_KEY_PREFIX "%s", hex);
    const char *argv[2] = {"HGETALL", hash_key};
    redisReply *reply = keys_command(c, 2, argv, NULL, err);
    if (!reply)
        return err->result;
    int rc = keys_from_reply(reply, r, hex);
    freeReplyObject(reply);
    if (rc == KEYS_ENOENT)
        return keys_fail(err, KEYS_ENOENT, "key_not_found", NULL, "No key named '%s'.", name);
    if (rc)
        return keys_nomem(err);
    snprintf(r->name, sizeof r->name, "%s", name);
    return 0;
}

int keys_show(const struct config *cfg, const char *name, struct keys_record *r,
              struct keys_error *err)
{
    if (!keys_valid_name(name))
        return keys_fail(err, KEYS_ENOENT, "key_not_found", NULL, "No key named '%.64s'.", name);
    redisContext *c = keys_connect(cfg, err);
    if (!c)
        return err->result;
    char hex[65];
    int rc = keys_lookup(c, name, hex, err);
    if (!rc)
        rc = keys_hgetall(c, name, hex, r, err);
    redisFree(c);
    return rc;
}

static int keys_cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* With the names of tg:keys (sorted): one MGET for their hashes, then every HGETALL
 * pipelined. Names whose index or hash is gone (revoked meanwhile) are skipped. */
static int keys_fetch(redisContext *c, char **names, size_t n, struct keys_record *list,
                      size_t *found, struct keys_error *err)
{
    const char **argv = calloc(n + 1, sizeof *argv);
    char(*keys)[sizeof REDIS_KEY_KEYNAME_PREFIX + KEYS_NAME_MAX] = calloc(n, sizeof *keys);
    char(*hexes)[65] = calloc(n, sizeof *hexes);
    redisReply *mget = NULL;
    int rc = KEYS_OK;
    if (!argv || !keys || !hexes) {
        rc = keys_nomem(err);
        goto out;
    }
    argv[0] = "MGET";
    for (size_t i = 0; i < n; i++) {
        snprintf(keys[i], sizeof keys[i], REDIS_KEY_KEYNAME_PREFIX "%s", names[i]);
        argv[i + 1] = keys[i];
    }
    if (!(mget = keys_command(c, (int)n + 1, argv, NULL, err))) {
        rc = err->result;
        goto out;
    }
    if (mget->type != REDIS_REPLY_ARRAY || mget->elements != n) {
        rc = keys_unavailable(err, "%s", "The key store (Redis) gave an unexpected reply.");
        goto out;
    }
    size_t sent = 0;
    for (size_t i = 0; i < n; i++) {
        const redisReply *h = mget->element[i];
        if (h->type != REDIS_REPLY_STRING || h->len != 64 ||
            strspn(h->str, "0123456789abcdef") != 64)
            continue;
        memcpy(hexes[i], h->str, 65);
        char hash_key[sizeof REDIS_KEY_KEY_PREFIX + 64];
        snprintf(hash_key, sizeof hash_key, REDIS_KEY_KEY_PREFIX "%s", hexes[i]);
        const char *hargv[2] = {"HGETALL", hash_key};
        if (redisAppendCommandArgv(c, 2, hargv, NULL) != REDIS_OK) {
            rc = keys_nomem(err);
            goto out;
        }
        sent++;
    }
    *found = 0;
    for (size_t i = 0; i < n && sent > 0; i++) {
        if (!hexes[i][0])
            continue;
        void *p = NULL;
        sent--;
        if (redisGetReply(c, &p) != REDIS_OK || !keys_check(c, p, err)) {
            rc = err->result;
            goto out;
        }
        struct keys_record *r = &list[*found];
        int got = keys_from_reply(p, r, hexes[i]);
        freeReplyObject(p);
        if (got == KEYS_ENOMEM) {
            rc = keys_nomem(err);
            goto out;
        }
        if (got == 0) {
            snprintf(r->name, sizeof r->name, "%s", names[i]);
            (*found)++;
        }
    }
out:
    freeReplyObject(mget);
    free(argv);
    free(keys);
    free(hexes);
    return rc;
}

int keys_list(const struct config *cfg, const char *after, size_t limit, struct keys_record **out,
              size_t *n, bool *has_more, struct keys_error *err)
{
    *out = NULL;
    *n = 0;
    if (has_more)
        *has_more = false;
    redisContext *c = keys_connect(cfg, err);
    if (!c)
        return err->result;
    const char *argv[2] = {"SMEMBERS", REDIS_KEY_KEYS};
    redisReply *members = keys_command(c, 2, argv, NULL, err);
    char **names = NULL;
    struct keys_record *list = NULL;
    size_t count = 0, found = 0;
    int rc = KEYS_OK;
    if (!members) {
        rc = err->result;
        goto out;
    }
    if (members->type != REDIS_REPLY_ARRAY) {
        rc = keys_unavailable(err, "%s", "The key store (Redis) gave an unexpected reply.");
        goto out;
    }
    names = calloc(members->elements + 1, sizeof *names);
    if (!names) {
        rc = keys_nomem(err);
        goto out;
    }
    for (size_t i = 0; i < members->elements; i++) {
        const redisReply *m = members->element[i];
        if (m->type == REDIS_REPLY_STRING && strlen(m->str) == m->len && keys_valid_name(m->str))
            names[count++] = m->str;
    }
    if (count == 0)
        goto out;
    qsort(names, count, sizeof *names, keys_cmp_name);
    /* The page: names after `after`, at most `limit`. */
    size_t first = 0;
    while (after && first < count && strcmp(names[first], after) <= 0)
        first++;
    count -= first;
    if (limit && count > limit) {
        count = limit;
        if (has_more)
            *has_more = true;
    }
    memmove(names, names + first, count * sizeof *names);
    if (count == 0)
        goto out;
    list = calloc(count, sizeof *list);
    if (!list) {
        rc = keys_nomem(err);
        goto out;
    }
    rc = keys_fetch(c, names, count, list, &found, err);
    if (rc) {
        keys_records_free(list, count);
        list = NULL;
        found = 0;
    }
out:
    free(names);
    freeReplyObject(members);
    redisFree(c);
    if (!rc && found == 0) {
        free(list);
        list = NULL;
    }
    *out = list;
    *n = found;
    return rc;
}

int keys_revoke(const struct config *cfg, const char *name, struct keys_error *err)
{
    if (!keys_valid_name(name))
        return keys_fail(err, KEYS_ENOENT, "key_not_found", NULL, "No key named '%.64s'.", name);
    redisContext *c = keys_connect(cfg, err);
    if (!c)
        return err->result;
    char name_key[sizeof REDIS_KEY_KEYNAME_PREFIX + KEYS_NAME_MAX],
        hash_key[sizeof REDIS_KEY_KEY_PREFIX + 64];
    snprintf(name_key, sizeof name_key, REDIS_KEY_KEYNAME_PREFIX "%s", name);
    int rc = KEYS_OK;
    /* Look up, then delete only if the name still points there: a concurrent re-creation
     * under the same name is never revoked by mistake. Retried a few times on a race. */
    for (int attempt = 0; attempt < 3; attempt++) {
        char hex[65];
        if ((rc = keys_lookup(c, name, hex, err)))
            break;
        snprintf(hash_key, sizeof hash_key, REDIS_KEY_KEY_PREFIX "%s", hex);
        const char *argv[] = {"EVAL",   keys_revoke_lua, "3",  name_key,
                              hash_key, REDIS_KEY_KEYS,  name, hex};
        redisReply *reply = keys_command(c, 8, argv, NULL, err);
        if (!reply) {
            rc = err->result;
            break;
        }
        bool done = reply->type == REDIS_REPLY_INTEGER && reply->integer == 1;
        freeReplyObject(reply);
        if (done)
            break;
        rc = keys_unavailable(err, "%s", "The key changed while being revoked; try again.");
    }
    redisFree(c);
    return rc;
}

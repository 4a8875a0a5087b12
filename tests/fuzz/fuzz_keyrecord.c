/* Fuzz target: a key record as Redis returns it (HGETALL tg:key:<sha256>), read the two ways
 * the gateway reads one: by the request path (tenancy/keyauth.c: the entry for the worker's
 * key cache, its `models` field made a NUL-separated list) and by the admin API and the CLI
 * (tenancy/keys.c: keys_record_from_fields() and the record's JSON view). Also a revocation
 * message (keyauth_revoked()).
 *
 * keyauth.c's parsers are static, so this file includes keyauth.c itself (its definitions
 * then come from here and the library's keyauth.o is never linked in).
 *
 * Input: the reply's elements, one per line (LF); a line starting with ':' is an integer
 * reply and "$-1" a nil one (not strings: both are skipped by the readers), every other line
 * a string, NUL and CR bytes included. At most 64 elements; a field named twice keeps its first
 * value (a Redis hash holds each field once).
 *
 * Checks: a cached entry keeps its name and models; a model is allowed only if the record's
 * list names it (and every name of a list of non-empty names is allowed); a record written
 * back as hash fields reads back the same. */
#include "tests/fuzz/fuzz.h"

#include "tenancy/keyauth.c"
#include "tenancy/keys.h"

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#define MAX_ELEMENTS 64

static const char *const probes[] = {"llama-3.1-8b", "big", "small", "", "a", "big\x01"};

/* An element: a copy of the line with its own NUL. */
static redisReply *element(const uint8_t *p, size_t n)
{
    redisReply *e = calloc(1, sizeof *e);
    FUZZ_CHECK(e);
    if (n == 3 && !memcmp(p, "$-1", 3)) {
        e->type = REDIS_REPLY_NIL;
        return e;
    }
    e->str = fuzz_cstr(p, n);
    e->len = n;
    e->type = REDIS_REPLY_STRING;
    if (n && p[0] == ':') {
        e->type = REDIS_REPLY_INTEGER;
        e->integer = strtoll(e->str + 1, NULL, 10);
        free(e->str);
        e->str = NULL;
        e->len = 0;
    }
    return e;
}

/* Whether field i (an even index) repeats an earlier field, as the readers compare names. */
static bool repeated(const redisReply *r, size_t i)
{
    const redisReply *k = r->element[i];
    for (size_t j = 0; k->type == REDIS_REPLY_STRING && j < i; j += 2)
        if (r->element[j]->type == REDIS_REPLY_STRING && !strcmp(r->element[j]->str, k->str))
            return true;
    return false;
}

/* Bytes of a NUL-separated list, its final empty name included. */
static size_t list_len(const char *m)
{
    const char *p = m;
    while (*p)
        p += strlen(p) + 1;
    return (size_t)(p - m) + 1;
}

static redisReply *reply_of(const uint8_t *data, size_t size)
{
    redisReply *r = calloc(1, sizeof *r);
    FUZZ_CHECK(r);
    r->type = REDIS_REPLY_ARRAY;
    r->element = calloc(MAX_ELEMENTS, sizeof *r->element);
    FUZZ_CHECK(r->element);
    const uint8_t *p = data, *end = data + size;
    while (p < end && r->elements < MAX_ELEMENTS) {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        r->element[r->elements++] = element(p, n);
        p += n + 1;
        /* A hash has each field once: a repeated one (and its value) is dropped. */
        if (r->elements % 2 == 0 && repeated(r, r->elements - 2)) {
            for (size_t i = r->elements - 2; i < r->elements; i++) {
                free(r->element[i]->str);
                free(r->element[i]);
            }
            r->elements -= 2;
        }
    }
    return r;
}

static void reply_free(redisReply *r)
{
    for (size_t i = 0; i < r->elements; i++) {
        free(r->element[i]->str);
        free(r->element[i]);
    }
    free(r->element);
    free(r);
}

/* The record's models field as the request path reads it: the last string one, or NULL. */
static const redisReply *models_field(const redisReply *r)
{
    const redisReply *found = NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *k = r->element[i], *v = r->element[i + 1];
        if (k->type == REDIS_REPLY_STRING && v->type == REDIS_REPLY_STRING &&
            !strcmp(k->str, "models"))
            found = v;
    }
    return found;
}

/* Whether the list may allow `model`, and whether it must: per the JSON the record holds. */
static void check_allows(const redisReply *field, const char *models, const char *model)
{
    bool allowed = keycache_allows(models, model);
    if (!field || field->len == 0) {
        FUZZ_CHECK(allowed);
        return;
    }
    json_t *arr = json_loadb(field->str, field->len, 0, NULL);
    if (!json_is_array(arr)) {
        FUZZ_CHECK(!allowed); /* an unreadable list allows nothing */
        json_decref(arr);
        return;
    }
    bool listed = json_array_size(arr) == 0, all_named = true;
    size_t i;
    json_t *m;
    json_array_foreach (arr, i, m) {
        if (json_is_string(m) && !strcmp(json_string_value(m), model))
            listed = true;
        if (json_is_string(m) && json_string_length(m) == 0)
            all_named = false;
    }
    json_decref(arr);
    FUZZ_CHECK(!allowed || listed);
    if (all_named)
        FUZZ_CHECK(allowed == listed);
}

static void request_path(struct keycache *cache, const redisReply *reply)
{
    struct keycache_entry e = {0};
    memset(e.digest, 0xab, sizeof e.digest);
    e.fetched_ms = 1;
    entry_from_reply(&e, reply);
    FUZZ_CHECK(keycache_put(cache, &e) == 0);
    const struct keycache_entry *stored = keycache_get(cache, e.digest, 1, true);
    FUZZ_CHECK(stored && stored->known == e.known && !strcmp(stored->name, e.name));
    FUZZ_CHECK(!stored->models == !e.models);
    if (e.models)
        FUZZ_CHECK(!memcmp(stored->models, e.models, list_len(e.models)));
    const redisReply *field = models_field(reply);
    for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++)
        check_allows(field, stored->models, probes[i]);
    if (e.models)
        for (const char *m = e.models; *m; m += strlen(m) + 1)
            check_allows(field, stored->models, m);
    free(e.models);
}

/* As keys_from_reply() (tenancy/keys.c) reads an HGETALL reply. */
static void admin_path(const redisReply *reply)
{
    if (reply->elements == 0 || reply->elements % 2)
        return;
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
    struct keys_record r = {0};
    FUZZ_CHECK(keys_record_from_fields(&r, n, fv) == 0);
    snprintf(r.sha256, sizeof r.sha256, "%064d", 0);

    json_t *view = keys_record_json(&r);
    if (view) {
        char *text = json_dumps(view, JSON_COMPACT);
        FUZZ_CHECK(text);
        free(text);
        json_decref(view);
    }

    /* Written back as the fields keys_create() stores, it reads back the same. */
    struct keys_fields f;
    keys_record_fields(&r, &f);
    struct keys_record back = {0};
    FUZZ_CHECK(keys_record_from_fields(&back, (size_t)f.argc / 2, f.argv) == 0);
    FUZZ_CHECK(!strcmp(back.name, r.name) && back.rpm == r.rpm && back.tpm == r.tpm);
    FUZZ_CHECK(!strcmp(back.budget_usd, r.budget_usd) && back.expires_at == r.expires_at &&
               back.created_at == r.created_at);
    FUZZ_CHECK(!back.models == !r.models && (!r.models || !strcmp(back.models, r.models)));
    keys_record_clear(&back);
    keys_record_clear(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    redisReply *reply = reply_of(data, size);
    struct keycache *cache = keycache_new(4, 60000, 5000);
    FUZZ_CHECK(cache);
    request_path(cache, reply);
    admin_path(reply);

    /* The first line as a revocation message: a known digest goes, nothing else does. */
    char *msg =
        fuzz_cstr(data, reply->elements && reply->element[0]->str ? reply->element[0]->len : 0);
    unsigned char d[32];
    memset(d, 0xab, sizeof d);
    keyauth_revoked(cache, msg, strlen(msg));
    char hex[65];
    buf_hex(d, 32, hex);
    FUZZ_CHECK(!keycache_get(cache, d, 1, true) == !strcasecmp(msg, hex));
    free(msg);

    keycache_free(cache);
    reply_free(reply);
    return 0;
}

/* Redis-held API keys, the management side: the key record, validation of a creation
 * request, its JSON forms, and the blocking operations behind the admin API
 * (/admin/keys, gateway/admin.c) and the CLI (`tollgate keys ...`).
 *
 * Redis layout (names, types and fields in redis/keyspace.h): the hash tg:key:<sha256hex>
 * holds the record; tg:keyname:<name> points at the hash (SET NX at creation: names are
 * unique); the set tg:keys holds the names. Revocation deletes all three and publishes the
 * hash on tg:keys:revoked.
 *
 * A key is "tg-" + 32 lowercase hex digits from getrandom(); it is returned once by
 * keys_create() and never stored, logged or returned again: Redis holds only its SHA-256.
 *
 * Each operation opens its own blocking connection from cfg->redis_url (redis/sync.h: AUTH
 * and SELECT as the URL says, a 500 ms connect and a 1 s command timeout) and closes it
 * before returning: meant for the admin thread and the one-shot CLI, never for a worker's
 * loop (the hot path uses redis/redis.h). Thread-safe: no shared state.
 *
 * Errors: every function returns 0 or a negative enum keys_result and, when it fails, fills
 * the caller's struct keys_error; keys_error_status() and keys_error_body() turn that into
 * the HTTP status and the OpenAI error body. */
#ifndef TOLLGATE_KEYS_H
#define TOLLGATE_KEYS_H

#include "config/config.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KEYS_NAME_MAX 64    /* a name is 1..64 of [A-Za-z0-9._-] */
#define KEYS_KEY_LEN 35     /* "tg-" + 32 hex */
#define KEYS_BODY_MAX 65536 /* largest POST /admin/keys body */
#define KEYS_MODELS_MAX 1024
#define KEYS_MODEL_NAME_MAX 256
#define KEYS_LIMIT_MAX 1000000000000LL  /* rpm, tpm (exact in a double, for Lua) */
#define KEYS_BUDGET_MAX 1e12            /* USD */
#define KEYS_EXPIRES_MAX 253402300799LL /* 9999-12-31T23:59:59Z */

enum keys_result {
    KEYS_OK = 0,
    KEYS_EINVAL = -1,   /* 400: bad input; param names the field */
    KEYS_EEXIST = -2,   /* 409 key_exists */
    KEYS_ENOENT = -3,   /* 404 key_not_found */
    KEYS_EUNAVAIL = -4, /* 503 key_store_unavailable: no redis.url, Redis down, slow, failing */
    KEYS_ENOMEM = -5,   /* 500 */
};

struct keys_error {
    int result;        /* enum keys_result */
    const char *code;  /* OpenAI error code: "invalid_value", "key_exists", ... */
    char param[72];    /* the offending request field; "" for none */
    char message[256]; /* for people; never holds a key or a password */
};

/* HTTP status for e->result: 400, 404, 409, 503 or 500. */
unsigned keys_error_status(const struct keys_error *e);
/* {"error":{"message","type","param","code"}}, malloc'd; NULL on OOM. */
char *keys_error_body(const struct keys_error *e, size_t *len);

/* One key as Redis holds it. Zero/empty fields mean "absent". */
struct keys_record {
    char name[KEYS_NAME_MAX + 1];
    char sha256[65];      /* lowercase hex of the key's SHA-256 */
    char *models;         /* compact JSON array of names (malloc'd), or NULL: every model */
    long long rpm, tpm;   /* 0: unlimited */
    char budget_usd[32];  /* decimal string without exponent; "": unlimited */
    long long expires_at; /* unix seconds; 0: never */
    long long created_at;
};

/* Frees what a record owns (models) and zeroes it. A zeroed record needs no clear. */
void keys_record_clear(struct keys_record *r);
void keys_records_free(struct keys_record *list, size_t n);

/* ---- pure parts (no I/O; tested in tests/unit/test_keys.c) -------------------------------- */

/* 1 when name is 1..KEYS_NAME_MAX of [A-Za-z0-9._-] and is not "." or ".." (which a URL
 * path cannot carry), else 0. */
int keys_valid_name(const char *name);

/* Validates a creation request {"name", "models"?, "rpm"?, "tpm"?, "budget_usd"?,
 * "expires_at"?} (null counts as absent; other fields are refused) and fills r (name and
 * limits; sha256 and created_at are left empty). expires_at must be later than now.
 * On KEYS_EINVAL err says which field and why; r is then cleared. */
int keys_parse_request(const json_t *body, int64_t now, struct keys_record *r,
                       struct keys_error *err);

/* The public view {name, sha256_prefix, models, rpm, tpm, budget_usd, expires_at, created_at}
 * (absent limits are null). NULL on OOM. */
json_t *keys_record_json(const struct keys_record *r);
/* The creation answer {name, key, sha256, models, rpm, tpm, budget_usd, expires_at,
 * created_at}. The only JSON that ever holds a key. NULL on OOM. */
json_t *keys_created_json(const struct keys_record *r, const char *key);
/* {"object":"list","data":[keys_record_json()...],"has_more","first_id","last_id"} (the ids
 * are key names, null for an empty page). NULL on OOM. */
json_t *keys_list_json(const struct keys_record *list, size_t n, bool has_more);

/* The hash fields of a record as Redis command arguments. */
struct keys_fields {
    const char *argv[14]; /* field, value, field, value, ...; point into r or num */
    size_t argvlen[14];
    int argc;
    char num[5][24];
};
void keys_record_fields(const struct keys_record *r, struct keys_fields *out);
/* The inverse, from HGETALL's field/value pairs (fv[0..2n)); sha256 is not among them and is
 * left as is. Unknown fields are ignored; malformed values count as absent. KEYS_ENOMEM, or 0. */
int keys_record_from_fields(struct keys_record *r, size_t n, const char *const *fv);

/* ---- operations on Redis (blocking) ------------------------------------------------------- */

/* Creates a key for a record from keys_parse_request(): fills r->sha256 and r->created_at
 * and writes the new key (NUL-terminated) to key; the caller shows it once and wipes it.
 * Atomic (one Lua script): either the hash, the name and the set entry all exist, or none.
 * KEYS_EEXIST when the name is taken in Redis or by a static key of cfg. */
int keys_create(const struct config *cfg, struct keys_record *r, char key[KEYS_KEY_LEN + 1],
                struct keys_error *err);
/* Keys sorted by name, as a malloc'd array (keys_records_free() it; NULL when n is 0): those
 * after the name `after` (NULL: from the first), at most `limit` of them (0: all). Only the
 * page's records are fetched. *has_more (may be NULL) says whether more follow. */
int keys_list(const struct config *cfg, const char *after, size_t limit, struct keys_record **out,
              size_t *n, bool *has_more, struct keys_error *err);
/* One key by name; KEYS_ENOENT when unknown. r must be zeroed or cleared. */
int keys_show(const struct config *cfg, const char *name, struct keys_record *r,
              struct keys_error *err);
/* Deletes the hash, the name and the set entry at once and publishes the hash on
 * tg:keys:revoked. KEYS_ENOENT when unknown. */
int keys_revoke(const struct config *cfg, const char *name, struct keys_error *err);

/* `tollgate -c FILE keys ARGS...`: argv[0] is the sub-command (create, list, show, revoke).
 * Prints results on stdout and problems on stderr. Returns the exit status: 0 ok, 1 error,
 * 2 usage. Uses getopt (not reentrant): call from main only. */
int keys_cli(const struct config *cfg, int argc, char **argv);

#endif

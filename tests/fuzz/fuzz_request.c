/* Fuzz target: a caller's request body, as gateway/phase_admit.c and phase_cache.c read it.
 *
 * The bytes are parsed (openai_parse_body: values and depth counted, duplicate keys refused),
 * validated for each inference route (openai_validate), and for each route they pass, turned
 * into a cache key (cache_key) with cache_deterministic() asked; every refusal is made into
 * the OpenAI error body the caller would get. Twice: once with jansson on malloc
 * (AddressSanitizer sees each piece) and once in a request arena (base/arena.h), as the
 * gateway does.
 *
 * Checks: both passes agree; a body taken is what jansson reads, one refused is not JSON, has
 * a duplicate key or is too deep; a body that passes names a non-empty model, 1 to 128
 * choices, a max_tokens of -1 or more, a completion cap that does not wrap and a bounded
 * estimate; its key is the same after the body is written out and read back and with
 * `stream`, `stream_options` and `user` changed; every error body is JSON. */
#include "tests/fuzz/fuzz.h"

#include "base/arena.h"
#include "base/error.h"
#include "base/log.h"
#include "cache/cache.h"
#include "openai/bignum.h"
#include "openai/openai.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    enum openai_route route;
    const char *path;
} routes[] = {
    {OPENAI_CHAT, "/v1/chat/completions"},
    {OPENAI_COMPLETIONS, "/v1/completions"},
    {OPENAI_EMBEDDINGS, "/v1/embeddings"},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

#define GATEWAY_MAX_BODY (8u << 20) /* max_body_bytes' default */

struct outcome {
    int rc[N_ROUTES];
    unsigned char key[N_ROUTES][32];
    bool deterministic;
};

/* An error body as the caller would see it: it must be a JSON object. */
static void check_error_body(int err, const char *msg, const char *param)
{
    size_t len = 0;
    char *body = error_body(err, msg, param, NULL, &len);
    FUZZ_CHECK(body);
    json_t *doc = json_loadb(body, len, 0, NULL);
    FUZZ_CHECK(json_is_object(json_object_get(doc, "error")));
    json_decref(doc);
    free(body);
}

static void key_of(const char *path, const char *model, json_t *body, unsigned char out[32])
{
    FUZZ_CHECK(cache_key(path, model, "fuzz-key", body, out) == 0);
}

/* Validates body for every route; fills o. */
static void validate_all(json_t *body, struct outcome *o, bool checks)
{
    o->deterministic = cache_deterministic(body);
    for (size_t i = 0; i < N_ROUTES; i++) {
        struct openai_request req;
        const char *param;
        char msg[256];
        o->rc[i] = openai_validate(routes[i].route, body, &req, &param, msg, sizeof msg);
        memset(o->key[i], 0, 32);
        if (o->rc[i]) {
            if (checks)
                check_error_body(o->rc[i], msg, param);
            continue;
        }
        FUZZ_CHECK(req.model && req.model[0]);
        FUZZ_CHECK(req.n_choices >= 1 && req.n_choices <= 128);
        FUZZ_CHECK(req.max_tokens >= -1);
        long long cap = openai_completion_cap(&req);
        FUZZ_CHECK(req.max_tokens < 0 ? cap == -1 : cap >= req.max_tokens);
        size_t est = openai_output_estimate(routes[i].route, &req, 256);
        FUZZ_CHECK(est <= (size_t)OPENAI_MAX_TOKENS_ESTIMATE * OPENAI_MAX_CHOICES);
        FUZZ_CHECK(routes[i].route != OPENAI_EMBEDDINGS || est == 0);
        key_of(routes[i].path, req.model, body, o->key[i]);
        if (!checks)
            continue;
        char esc[200], text[300];
        snprintf(text, sizeof text, "The model '%s' does not exist or no backend serves it.",
                 log_escape(esc, sizeof esc, req.model));
        check_error_body(TG_ERR_MODEL_NOT_FOUND, text, "model");
    }
}

/* The key must not change when the body is written out and read back, nor with the delivery
 * fields (stream, stream_options, user) changed. */
static void check_canonical(json_t *body, const struct outcome *o)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
    FUZZ_CHECK(text);
    /* JSON_ALLOW_NUL: a big integer is held as a marked string that starts with a NUL. */
    json_t *again = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    free(text);
    FUZZ_CHECK(again);
    json_t *other = json_deep_copy(body);
    FUZZ_CHECK(other);
    json_object_set_new(other, "stream",
                        json_boolean(!json_is_true(json_object_get(body, "stream"))));
    json_object_set_new(other, "stream_options", json_pack("{s:b}", "include_usage", 1));
    json_object_set_new(other, "user", json_string("someone-else"));
    for (size_t i = 0; i < N_ROUTES; i++) {
        if (o->rc[i])
            continue;
        const char *model = json_string_value(json_object_get(body, "model"));
        unsigned char k[32];
        key_of(routes[i].path, model, again, k);
        FUZZ_CHECK(!memcmp(k, o->key[i], 32));
        key_of(routes[i].path, model, other, k);
        FUZZ_CHECK(!memcmp(k, o->key[i], 32));
    }
    json_decref(again);
    json_decref(other);
}

/* Nesting depth of a tree (a scalar is 0). */
static unsigned depth_of(json_t *v)
{
    unsigned d = 0, sub;
    size_t i;
    const char *k;
    json_t *e;
    if (json_is_array(v)) {
        json_array_foreach (v, i, e)
            if ((sub = depth_of(e)) > d)
                d = sub;
        return d + 1;
    }
    if (json_is_object(v)) {
        json_object_foreach (v, k, e)
            if ((sub = depth_of(e)) > d)
                d = sub;
        return d + 1;
    }
    return 0;
}

/* What openai_parse_body() decided, against jansson on its own: a body it takes is what
 * jansson reads, or, where jansson refuses an integer beyond 64 bits (openai/bignum.h), a tree
 * that is written back and read again unchanged; one it refuses has a duplicate key, is too
 * deep or is not JSON. */
static void check_parse(const char *text, size_t size, int rc, json_t *body)
{
    json_t *strict = json_loadb(text, size, JSON_REJECT_DUPLICATES, NULL);
    if (!rc && !strict) {
        char *dump = openai_dump_body(body);
        FUZZ_CHECK(dump != NULL);
        json_t *again = NULL;
        char where[256], msg[400];
        int rc_again = openai_parse_body(dump, strlen(dump), 8 * GATEWAY_MAX_BODY, &again, where,
                                         sizeof where, msg, sizeof msg);
        FUZZ_CHECK(rc_again == 0 && json_equal(again, body));
        json_decref(again);
        free(dump);
    } else if (!rc)
        FUZZ_CHECK(json_equal(strict, body));
    else if (strict)
        FUZZ_CHECK(rc == TG_ERR_INVALID_JSON && depth_of(strict) > OPENAI_BODY_MAX_DEPTH);
    json_decref(strict);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = size ? (const char *)data : "";
    char where[256], msg[400];

    /* jansson on malloc. */
    json_t *body = NULL;
    int rc = openai_parse_body(text, size, GATEWAY_MAX_BODY, &body, where, sizeof where, msg,
                               sizeof msg);
    FUZZ_CHECK(!rc == !!body);
    check_parse(text, size, rc, body);
    struct outcome plain = {0};
    if (rc) {
        check_error_body(rc, msg, where[0] ? where : NULL);
    } else {
        validate_all(body, &plain, true);
        check_canonical(body, &plain);
    }

    /* In a request's arena, as the gateway parses bodies: the tree goes before the arena. */
    struct arena arena = {0};
    json_t *in_arena = NULL;
    arena_enter(&arena);
    int rc_arena = openai_parse_body(text, size, GATEWAY_MAX_BODY, &in_arena, where, sizeof where,
                                     msg, sizeof msg);
    arena_leave();
    FUZZ_CHECK(rc_arena == rc);
    if (in_arena) {
        struct outcome pooled = {0};
        validate_all(in_arena, &pooled, false);
        FUZZ_CHECK(pooled.deterministic == plain.deterministic);
        for (size_t i = 0; i < N_ROUTES; i++)
            FUZZ_CHECK(pooled.rc[i] == plain.rc[i] && !memcmp(pooled.key[i], plain.key[i], 32));
    }
    json_decref(in_arena);
    arena_release(&arena);
    json_decref(body);
    return 0;
}

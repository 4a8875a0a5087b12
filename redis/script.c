/* Lua scripts: EVALSHA by a locally computed SHA-1, with the EVAL fallback on NOSCRIPT (which
 * redis.c's reply handling does, from the copy of the arguments made here). */
#include "redis/client-int.h"

#include "base/buf.h"

#include <nettle/sha1.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- scripts ------------------------------------------------------------------------------ */

const struct redis_script *redis_script_load(struct redis_client *c, const char *body, size_t len)
{
    if (!c || (!body && len))
        return NULL;
    /* EVALSHA names a script by the SHA-1 of its body. */
    struct sha1_ctx ctx;
    unsigned char md[SHA1_DIGEST_SIZE];
    sha1_init(&ctx);
    sha1_update(&ctx, len, (const uint8_t *)(len ? body : ""));
    sha1_digest(&ctx, sizeof md, md);
    char sha[2 * SHA1_DIGEST_SIZE + 1];
    buf_hex(md, sizeof md, sha);
    for (struct redis_script *s = c->scripts; s; s = s->next)
        if (!strcmp(s->sha, sha) && s->len == len && (!len || !memcmp(s->body, body, len)))
            return s;
    struct redis_script *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->body = malloc(len + 1);
    if (!s->body) {
        free(s);
        return NULL;
    }
    if (len)
        memcpy(s->body, body, len);
    s->body[len] = '\0';
    s->len = len;
    memcpy(s->sha, sha, sizeof sha);
    s->next = c->scripts;
    c->scripts = s;
    return s;
}

const char *redis_script_sha(const struct redis_script *s)
{
    return s->sha;
}

static struct redis_args *args_copy(const struct redis_script *s, int numkeys, int argc,
                                    const char **argv, const size_t *argvlen)
{
    size_t n = (size_t)argc + 3, bytes = 0;
    for (int i = 0; i < argc; i++)
        bytes += argvlen ? argvlen[i] : strlen(argv[i]);
    struct redis_args *a =
        malloc(sizeof *a + n * sizeof(const char *) + n * sizeof(size_t) + bytes);
    if (!a)
        return NULL;
    a->script = s;
    a->argc = (int)n;
    a->argv = (const char **)(void *)(a + 1);
    a->lens = (size_t *)(void *)(a->argv + n);
    char *p = (char *)(a->lens + n);
    int kl = snprintf(a->numkeys, sizeof a->numkeys, "%d", numkeys);
    a->argv[0] = "EVALSHA";
    a->lens[0] = 7;
    a->argv[1] = s->sha;
    a->lens[1] = 40;
    a->argv[2] = a->numkeys;
    a->lens[2] = (size_t)kl;
    for (int i = 0; i < argc; i++) {
        size_t len = argvlen ? argvlen[i] : strlen(argv[i]);
        if (len)
            memcpy(p, argv[i], len);
        a->argv[3 + i] = p;
        a->lens[3 + i] = len;
        p += len;
    }
    return a;
}

int redis_evalsha(struct redis_client *c, const struct redis_script *s, int numkeys, int argc,
                  const char **argv, const size_t *argvlen, redis_reply_fn fn, void *ctx)
{
    return redis_evalsha_late(c, s, numkeys, argc, argv, argvlen, fn, ctx, NULL, NULL);
}

int redis_evalsha_late(struct redis_client *c, const struct redis_script *s, int numkeys, int argc,
                       const char **argv, const size_t *argvlen, redis_reply_fn fn, void *ctx,
                       redis_reply_fn late, void *late_ctx)
{
    if (!c || !s || !fn || numkeys < 0 || argc < numkeys || argc > REDIS_MAX_ARGS ||
        (argc > 0 && !argv))
        return REDIS_EINVAL;
    int rc = redis_client_gate(c);
    if (rc)
        return rc;
    struct redis_args *a = args_copy(s, numkeys, argc, argv, argvlen);
    if (!a) {
        redis_count(&c->st.rejected);
        return REDIS_ENOMEM;
    }
    rc = redis_client_send(c, a->argc, a->argv, a->lens, fn, ctx, a, late, late_ctx);
    if (rc)
        redis_count(&c->st.rejected);
    return rc;
}

void redis_scripts_free(struct redis_client *c)
{
    while (c->scripts) {
        struct redis_script *s = c->scripts;
        c->scripts = s->next;
        free(s->body);
        free(s);
    }
}

#include "tenancy/auth.h"

#include "base/digest.h"

#include <string.h>
#include <strings.h>

const char *auth_bearer(const char *authorization, size_t *len)
{
    if (!authorization)
        return NULL;
    const char *p = authorization;
    while (*p == ' ')
        p++;
    if (strncasecmp(p, "Bearer ", 7))
        return NULL;
    p += 7;
    while (*p == ' ')
        p++;
    size_t n = strlen(p);
    while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n == 0)
        return NULL;
    *len = n;
    return p;
}

enum auth_result auth_check(const struct config *cfg, const char *authorization,
                            struct auth_identity *who)
{
    who->key_name = NULL;
    who->metric_key = 0;
    if (cfg->n_keys == 0 && !cfg->redis_url)
        return AUTH_OPEN;
    size_t n;
    const char *key = auth_bearer(authorization, &n);
    if (!key)
        return AUTH_MISSING;
    unsigned char *digest = who->digest;
    digest_sha256(key, n, digest);
    /* Visit every key whatever matches, so timing says nothing about which one did. */
    const struct config_key *found = NULL;
    for (size_t i = 0; i < cfg->n_keys; i++) {
        bool same = digest_equal(digest, cfg->keys[i].sha256, DIGEST_SHA256_LEN);
        if (same && !found)
            found = &cfg->keys[i];
    }
    if (!found)
        return AUTH_INVALID;
    who->key_name = found->name;
    who->metric_key = found->metric_key;
    return AUTH_OK;
}

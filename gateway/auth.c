#include "gateway/auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <openssl/sha.h>
#include <string.h>
#include <strings.h>

/* OpenSSL 3's one-shot SHA256() looks the algorithm up in the provider tables on every
 * call; fetched once, the digest costs only the hashing. */
static EVP_MD *auth_md;
static pthread_once_t auth_md_once = PTHREAD_ONCE_INIT;

static void auth_md_fetch(void)
{
    auth_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

void auth_sha256(const void *data, size_t len, unsigned char out[32])
{
    pthread_once(&auth_md_once, auth_md_fetch);
    unsigned int n = 0;
    if (!auth_md || !EVP_Digest(data, len, out, &n, auth_md, NULL))
        SHA256(data, len, out);
}

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
    auth_sha256(key, n, digest);
    /* Visit every key whatever matches, so timing says nothing about which one did. */
    const struct config_key *found = NULL;
    for (size_t i = 0; i < cfg->n_keys; i++) {
        int differs = CRYPTO_memcmp(digest, cfg->keys[i].sha256, SHA256_DIGEST_LENGTH);
        if (!differs && !found)
            found = &cfg->keys[i];
    }
    if (!found)
        return AUTH_INVALID;
    who->key_name = found->name;
    who->metric_key = found->metric_key;
    return AUTH_OK;
}

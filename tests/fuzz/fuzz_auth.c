/* Fuzz target: a caller's Authorization header value (tenancy/auth.c auth_bearer and
 * auth_check), as libmicrohttpd hands it over: a C string, so the input up to its first NUL.
 *
 * Checked against three configs loaded once (and kept: they are read-only): two static keys;
 * no static key but Redis (every well-formed key goes on to Redis); no key at all (open).
 *
 * Checks: a key found lies inside the header, is not empty and has no space at either end
 * (nor a tab at its end); a key is found exactly when "Bearer " (any case) follows the
 * leading spaces and something other than blanks follows it; only the exact text of a
 * configured key is accepted, with that key's name; the digest is the SHA-256 of what was
 * found. */
#include "tests/fuzz/fuzz.h"

#include "base/digest.h"
#include "config/config.h"
#include "tenancy/auth.h"

#include <stdbool.h>
#include <string.h>
#include <strings.h>

#define KEY_A "sk-fuzz-static-key-a"
#define KEY_B "sk-fuzz-static-key-b"

/* One backend, which every config needs. */
#define BACKENDS                                                                                   \
    "backends:\n"                                                                                  \
    "  - name: b\n"                                                                                \
    "    url: http://127.0.0.1:9000/v1\n"                                                          \
    "    models: [{name: m, input_usd_per_mtok: 1, output_usd_per_mtok: 1}]\n"

static const char keys_yaml[] = "keys:\n"
                                "  - name: team-a\n"
                                "    key: " KEY_A "\n"
                                "  - name: team-b\n"
                                "    key: " KEY_B "\n" BACKENDS;
static const char redis_yaml[] = "redis: {url: \"redis://127.0.0.1:6379/0\"}\n" BACKENDS;
static const char open_yaml[] = BACKENDS;

static struct config *load(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "fuzz-auth.yaml", &errors);
    if (!cfg) {
        fprintf(stderr, "fuzz_auth: config: %s", errors ? errors : "out of memory\n");
        abort();
    }
    return cfg;
}

/* What auth_bearer() should find, written independently. */
static bool expect_key(const char *h, const char **key, size_t *len)
{
    while (*h == ' ')
        h++;
    if (strncasecmp(h, "Bearer ", 7))
        return false;
    h += 7;
    while (*h == ' ')
        h++;
    size_t n = strlen(h);
    while (n && (h[n - 1] == ' ' || h[n - 1] == '\t'))
        n--;
    *key = h;
    *len = n;
    return n > 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct config *with_keys, *with_redis, *no_keys;
    if (!with_keys) {
        with_keys = load(keys_yaml);
        with_redis = load(redis_yaml);
        no_keys = load(open_yaml);
    }
    char *header = fuzz_cstr(data, size);
    size_t hlen = strlen(header);

    size_t len = 0, want_len = 0;
    const char *key = auth_bearer(header, &len), *want = NULL;
    bool expected = expect_key(header, &want, &want_len);
    FUZZ_CHECK(!key == !expected);
    if (key) {
        FUZZ_CHECK(key == want && len == want_len);
        FUZZ_CHECK(key >= header && len > 0 && key + len <= header + hlen);
        FUZZ_CHECK(key[0] != ' ' && key[len - 1] != ' ' && key[len - 1] != '\t');
    }

    struct auth_identity who;
    enum auth_result a = auth_check(with_keys, header, &who);
    bool is_a = key && len == strlen(KEY_A) && !memcmp(key, KEY_A, len);
    bool is_b = key && len == strlen(KEY_B) && !memcmp(key, KEY_B, len);
    FUZZ_CHECK(a == (!key ? AUTH_MISSING : is_a || is_b ? AUTH_OK : AUTH_INVALID));
    FUZZ_CHECK(!who.key_name == (a != AUTH_OK));
    FUZZ_CHECK(a != AUTH_OK || !strcmp(who.key_name, is_a ? "team-a" : "team-b"));
    if (key) {
        unsigned char d[DIGEST_SHA256_LEN];
        digest_sha256(key, len, d);
        FUZZ_CHECK(!memcmp(d, who.digest, sizeof d));
    }

    a = auth_check(with_redis, header, &who);
    FUZZ_CHECK(a == (key ? AUTH_INVALID : AUTH_MISSING) && !who.key_name);
    FUZZ_CHECK(auth_check(no_keys, header, &who) == AUTH_OPEN && !who.key_name);
    free(header);
    return 0;
}

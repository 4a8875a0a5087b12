/* Unit tests for gateway/auth: Authorization header parsing and key checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/digest.h"
#include "tenancy/auth.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- auth_bearer ------------------------------------------------------------------------- */

static void expect_bearer(const char *header, const char *key)
{
    size_t len = 12345;
    const char *k = auth_bearer(header, &len);
    if (!k)
        fail_msg("\"%s\": no key found, expected \"%s\"", header, key);
    assert_int_equal(len, strlen(key));
    assert_memory_equal(k, key, len);
    /* The key points into the header, nothing is copied. */
    assert_true(k >= header && k + len <= header + strlen(header));
}

static void expect_no_bearer(const char *header)
{
    size_t len = 0;
    const char *k = auth_bearer(header, &len);
    if (k)
        fail_msg("\"%s\": expected no key, got \"%.*s\"", header ? header : "(null)", (int)len, k);
}

static void test_bearer_parsing(void **state)
{
    (void)state;
    expect_bearer("Bearer sk-abc123", "sk-abc123");
    expect_bearer("bearer sk-abc123", "sk-abc123");
    expect_bearer("BEARER sk-abc123", "sk-abc123");
    expect_bearer("BeArEr sk-abc123", "sk-abc123");
    expect_bearer("Bearer    sk-abc123", "sk-abc123");
    expect_bearer("  Bearer sk-abc123", "sk-abc123");
    expect_bearer("Bearer sk-abc123   ", "sk-abc123");
    expect_bearer("Bearer sk-abc123\t", "sk-abc123");
    expect_bearer("Bearer x", "x");
    expect_bearer("Bearer sk-proj-AbC_dEf-123/+=", "sk-proj-AbC_dEf-123/+=");
}

static void test_bearer_rejects(void **state)
{
    (void)state;
    expect_no_bearer(NULL);
    expect_no_bearer("");
    expect_no_bearer("   ");
    expect_no_bearer("Bearer");
    expect_no_bearer("Bearer ");
    expect_no_bearer("Bearer     ");
    expect_no_bearer("Bearer \t ");
    expect_no_bearer("Basic dXNlcjpwYXNz");
    expect_no_bearer("Token sk-abc123");
    expect_no_bearer("Digest username=\"a\"");
    expect_no_bearer("sk-abc123");
    expect_no_bearer("Bearersk-abc123");
    expect_no_bearer("Bearer-sk-abc123");
}

/* ---- auth_check -------------------------------------------------------------------------- */

static const char backends_yaml[] = "backends:\n"
                                    "  - name: b\n"
                                    "    url: http://127.0.0.1:9000/v1\n"
                                    "    models:\n"
                                    "      - name: m\n"
                                    "        input_usd_per_mtok: 1\n"
                                    "        output_usd_per_mtok: 1\n";

static struct config *load_cfg(const char *keys_yaml)
{
    char text[2048];
    snprintf(text, sizeof text, "%s%s", keys_yaml, backends_yaml);
    char *errors = NULL;
    struct config *cfg = config_load_string(text, strlen(text), "auth.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    return cfg;
}

static void hex_upper(const unsigned char *d, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        sprintf(out + 2 * i, "%02X", d[i]);
}

static struct config *keyed_config(void)
{
    /* bob's key is configured only as its digest (upper-case hex, to check case). */
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)"sk-bob-secret", strlen("sk-bob-secret"), d);
    char hex[2 * SHA256_DIGEST_LENGTH + 1];
    hex_upper(d, sizeof d, hex);
    char keys[512];
    snprintf(keys, sizeof keys,
             "keys:\n"
             "  - name: alice\n"
             "    key: sk-alice-secret\n"
             "  - name: bob\n"
             "    sha256: %s\n"
             "  - name: carol\n"
             "    key: sk-carol-secret\n",
             hex);
    struct config *cfg = load_cfg(keys);
    assert_int_equal(cfg->n_keys, 3);
    return cfg;
}

static void test_check_right_key(void **state)
{
    (void)state;
    struct config *cfg = keyed_config();
    struct auth_identity who = {.key_name = "garbage"};
    assert_int_equal(auth_check(cfg, "Bearer sk-alice-secret", &who), AUTH_OK);
    assert_non_null(who.key_name);
    assert_string_equal(who.key_name, "alice");
    assert_int_equal(auth_check(cfg, "bearer   sk-carol-secret  ", &who), AUTH_OK);
    assert_string_equal(who.key_name, "carol");
    config_unref(cfg);
}

static void test_check_sha256_key(void **state)
{
    (void)state;
    struct config *cfg = keyed_config();
    struct auth_identity who;
    assert_int_equal(auth_check(cfg, "Bearer sk-bob-secret", &who), AUTH_OK);
    assert_string_equal(who.key_name, "bob");
    /* The digest itself is not a key. */
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)"sk-bob-secret", strlen("sk-bob-secret"), d);
    char hex[2 * SHA256_DIGEST_LENGTH + 1], header[128];
    hex_upper(d, sizeof d, hex);
    snprintf(header, sizeof header, "Bearer %s", hex);
    assert_int_equal(auth_check(cfg, header, &who), AUTH_INVALID);
    config_unref(cfg);
}

static void test_check_wrong_key(void **state)
{
    (void)state;
    struct config *cfg = keyed_config();
    static const char *const wrong[] = {
        "Bearer sk-alice-secreT", "Bearer sk-alice-secret2",
        "Bearer sk-alice-secre",  "Bearer SK-ALICE-SECRET",
        "Bearer alice",           "Bearer sk-alice-secret sk",
        "Bearer sk-bob",          "Bearer x",
    };
    for (size_t i = 0; i < sizeof wrong / sizeof wrong[0]; i++) {
        struct auth_identity who = {.key_name = "garbage"};
        if (auth_check(cfg, wrong[i], &who) != AUTH_INVALID)
            fail_msg("\"%s\" should be AUTH_INVALID", wrong[i]);
        assert_null(who.key_name);
    }
    config_unref(cfg);
}

static void test_check_missing_key(void **state)
{
    (void)state;
    struct config *cfg = keyed_config();
    static const char *const missing[] = {"", "Bearer ", "Basic c2stYWxpY2Utc2VjcmV0",
                                          "sk-alice-secret", "Token sk-alice-secret"};
    struct auth_identity who = {.key_name = "garbage"};
    assert_int_equal(auth_check(cfg, NULL, &who), AUTH_MISSING);
    assert_null(who.key_name);
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        who.key_name = "garbage";
        if (auth_check(cfg, missing[i], &who) != AUTH_MISSING)
            fail_msg("\"%s\" should be AUTH_MISSING", missing[i]);
        assert_null(who.key_name);
    }
    config_unref(cfg);
}

static void test_check_open_without_keys(void **state)
{
    (void)state;
    struct config *cfg = load_cfg("");
    assert_int_equal(cfg->n_keys, 0);
    struct auth_identity who = {.key_name = "garbage"};
    assert_int_equal(auth_check(cfg, NULL, &who), AUTH_OPEN);
    assert_null(who.key_name);
    assert_int_equal(auth_check(cfg, "Bearer anything", &who), AUTH_OPEN);
    assert_null(who.key_name);
    assert_int_equal(auth_check(cfg, "Basic xyz", &who), AUTH_OPEN);
    config_unref(cfg);

    /* An explicitly empty list is open too. */
    cfg = load_cfg("keys: []\n");
    assert_int_equal(auth_check(cfg, NULL, &who), AUTH_OPEN);
    config_unref(cfg);
}

/* ---- digest_sha256, digest_equal ------------------------------------------------------------- */

/* Nettle's SHA-256 agrees with OpenSSL's at every length around SHA-256's 64-byte block and
 * its 56-byte padding boundary, and with the FIPS 180-2 vector for "abc". */
static void test_sha256_matches_openssl(void **state)
{
    (void)state;
    unsigned char data[300];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (unsigned char)(i * 131 + 7);
    for (size_t len = 0; len <= sizeof data; len++) {
        unsigned char got[32], want[SHA256_DIGEST_LENGTH];
        digest_sha256(data, len, got);
        SHA256(data, len, want);
        if (memcmp(got, want, sizeof got))
            fail_msg("SHA-256 of %zu bytes differs from OpenSSL's", len);
    }
    static const unsigned char abc[32] = {0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea,
                                          0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
                                          0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c,
                                          0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    unsigned char got[32];
    digest_sha256("abc", 3, got);
    assert_memory_equal(got, abc, sizeof abc);
}

static void test_equal(void **state)
{
    (void)state;
    unsigned char a[32], b[32];
    digest_sha256("one", 3, a);
    memcpy(b, a, sizeof a);
    assert_true(digest_equal(a, b, sizeof a));
    for (size_t i = 0; i < sizeof a; i++) {
        b[i] ^= 0x80;
        assert_false(digest_equal(a, b, sizeof a));
        b[i] ^= 0x80;
    }
    assert_true(digest_equal(a, b, 0));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bearer_parsing),
        cmocka_unit_test(test_bearer_rejects),
        cmocka_unit_test(test_check_right_key),
        cmocka_unit_test(test_check_sha256_key),
        cmocka_unit_test(test_check_wrong_key),
        cmocka_unit_test(test_check_missing_key),
        cmocka_unit_test(test_check_open_without_keys),
        cmocka_unit_test(test_sha256_matches_openssl),
        cmocka_unit_test(test_equal),
    };
    return cmocka_run_group_tests_name("auth", tests, NULL, NULL);
}

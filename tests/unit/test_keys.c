/* Unit tests for tenancy/keys, the parts without I/O: name rules, validation of a creation
 * request, the record's Redis fields and JSON forms, and the error mapping. The operations
 * against Redis are covered by tests/integration/keys-admin.test.mjs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "tenancy/keys.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOW 1800000000LL

static json_t *parse(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, JSON_DECODE_ANY | JSON_ALLOW_NUL, &e);
    if (!v)
        fail_msg("bad test JSON %s: %s", text, e.text);
    return v;
}

/* ---- names -------------------------------------------------------------------------------- */

static void test_names(void **state)
{
    (void)state;
    static const char *const good[] = {"a",   "alice", "team-1.prod_2", "A.B-c_9",
                                       "...", "-",     "a..b",          NULL};
    static const char *const bad[] = {"",  ".",    "..",      "a b",   "a/b", "a:b",
                                      "ü", "a\tb", "tg:keys", "a%20b", NULL};
    for (const char *const *n = good; *n; n++)
        if (!keys_valid_name(*n))
            fail_msg("\"%s\" should be a valid name", *n);
    for (const char *const *n = bad; *n; n++)
        if (keys_valid_name(*n))
            fail_msg("\"%s\" should be refused", *n);
    char name[KEYS_NAME_MAX + 2];
    memset(name, 'x', sizeof name);
    name[KEYS_NAME_MAX] = '\0';
    assert_true(keys_valid_name(name));
    name[KEYS_NAME_MAX] = 'x';
    name[KEYS_NAME_MAX + 1] = '\0';
    assert_false(keys_valid_name(name));
}

/* ---- keys_parse_request ------------------------------------------------------------------- */

static void test_parse_full(void **state)
{
    (void)state;
    json_t *body = parse("{\"name\":\"alice\",\"models\":[\"m1\", \"m 2\"],\"rpm\":60,"
                         "\"tpm\":100000,\"budget_usd\":12.5,\"expires_at\":1800003600}");
    struct keys_record r;
    struct keys_error err;
    assert_int_equal(keys_parse_request(body, NOW, &r, &err), KEYS_OK);
    assert_string_equal(r.name, "alice");
    assert_string_equal(r.models, "[\"m1\",\"m 2\"]");
    assert_int_equal(r.rpm, 60);
    assert_int_equal(r.tpm, 100000);
    assert_string_equal(r.budget_usd, "12.5");
    assert_int_equal(r.expires_at, 1800003600LL);
    assert_int_equal(r.created_at, 0);
    assert_string_equal(r.sha256, "");
    keys_record_clear(&r);
    json_decref(body);
}

static void test_parse_minimal_and_nulls(void **state)
{
    (void)state;
    static const char *const bodies[] = {
        "{\"name\":\"bob\"}",
        "{\"name\":\"bob\",\"models\":null,\"rpm\":null,\"tpm\":null,\"budget_usd\":null,"
        "\"expires_at\":null}",
    };
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        json_t *body = parse(bodies[i]);
        struct keys_record r;
        struct keys_error err;
        assert_int_equal(keys_parse_request(body, NOW, &r, &err), KEYS_OK);
        assert_string_equal(r.name, "bob");
        assert_null(r.models);
        assert_int_equal(r.rpm, 0);
        assert_int_equal(r.tpm, 0);
        assert_string_equal(r.budget_usd, "");
        assert_int_equal(r.expires_at, 0);
        keys_record_clear(&r);
        json_decref(body);
    }
}

static void expect_budget(const char *json_value, const char *stored)
{
    char text[128];
    snprintf(text, sizeof text, "{\"name\":\"b\",\"budget_usd\":%s}", json_value);
    json_t *body = parse(text);
    struct keys_record r;
    struct keys_error err;
    if (keys_parse_request(body, NOW, &r, &err))
        fail_msg("%s refused: %s", json_value, err.message);
    if (strcmp(r.budget_usd, stored))
        fail_msg("budget %s stored as \"%s\", expected \"%s\"", json_value, r.budget_usd, stored);
    keys_record_clear(&r);
    json_decref(body);
}

static void test_budget_text(void **state)
{
    (void)state;
    /* Fixed-point, shortest that reads back, never an exponent. */
    expect_budget("0", "0");
    expect_budget("0.0", "0");
    expect_budget("-0.0", "0");
    expect_budget("5", "5");
    expect_budget("12.5", "12.5");
    expect_budget("0.1", "0.1");
    expect_budget("0.30000000000000004", "0.3");
    expect_budget("1e9", "1000000000");
    expect_budget("1000000000000", "1000000000000");
    expect_budget("0.000001", "0.000001");
    expect_budget("123.456789", "123.456789");
    expect_budget("1e-13", "0");
}

struct bad_case {
    const char *body;
    const char *code;
    const char *param; /* "" for none */
};

static void test_parse_rejects(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"[]", "invalid_json", ""},
        {"\"alice\"", "invalid_json", ""},
        {"{}", "missing_required_parameter", "name"},
        {"{\"name\":null}", "missing_required_parameter", "name"},
        {"{\"name\":5}", "invalid_type", "name"},
        {"{\"name\":\"\"}", "invalid_value", "name"},
        {"{\"name\":\"a b\"}", "invalid_value", "name"},
        {"{\"name\":\"a\\u0000b\"}", "invalid_value", "name"},
        {"{\"name\":\"..\"}", "invalid_value", "name"},
        {"{\"name\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
         "invalid_value", "name"},
        {"{\"name\":\"a\",\"models\":\"m1\"}", "invalid_type", "models"},
        {"{\"name\":\"a\",\"models\":{}}", "invalid_type", "models"},
        {"{\"name\":\"a\",\"models\":[]}", "invalid_value", "models"},
        {"{\"name\":\"a\",\"models\":[\"m1\",null]}", "invalid_type", "models"},
        {"{\"name\":\"a\",\"models\":[[\"m1\"]]}", "invalid_type", "models"},
        {"{\"name\":\"a\",\"models\":[\"\"]}", "invalid_value", "models"},
        {"{\"name\":\"a\",\"models\":[\"m\\u0000x\"]}", "invalid_value", "models"},
        {"{\"name\":\"a\",\"rpm\":0}", "invalid_value", "rpm"},
        {"{\"name\":\"a\",\"rpm\":-1}", "invalid_value", "rpm"},
        {"{\"name\":\"a\",\"rpm\":1000000000001}", "invalid_value", "rpm"},
        {"{\"name\":\"a\",\"rpm\":2.5}", "invalid_type", "rpm"},
        {"{\"name\":\"a\",\"rpm\":\"10\"}", "invalid_type", "rpm"},
        {"{\"name\":\"a\",\"rpm\":true}", "invalid_type", "rpm"},
        {"{\"name\":\"a\",\"tpm\":0}", "invalid_value", "tpm"},
        {"{\"name\":\"a\",\"tpm\":[1]}", "invalid_type", "tpm"},
        {"{\"name\":\"a\",\"budget_usd\":-0.01}", "invalid_value", "budget_usd"},
        {"{\"name\":\"a\",\"budget_usd\":1e13}", "invalid_value", "budget_usd"},
        {"{\"name\":\"a\",\"budget_usd\":\"5\"}", "invalid_type", "budget_usd"},
        {"{\"name\":\"a\",\"budget_usd\":false}", "invalid_type", "budget_usd"},
        {"{\"name\":\"a\",\"expires_at\":1800000000}", "invalid_value", "expires_at"},
        {"{\"name\":\"a\",\"expires_at\":0}", "invalid_value", "expires_at"},
        {"{\"name\":\"a\",\"expires_at\":-5}", "invalid_value", "expires_at"},
        {"{\"name\":\"a\",\"expires_at\":253402300800}", "invalid_value", "expires_at"},
        {"{\"name\":\"a\",\"expires_at\":1800000100.5}", "invalid_type", "expires_at"},
        {"{\"name\":\"a\",\"expires_at\":\"tomorrow\"}", "invalid_type", "expires_at"},
        {"{\"name\":\"a\",\"key\":\"tg-0123\"}", "unknown_parameter", "key"},
        {"{\"name\":\"a\",\"sha256\":\"00\"}", "unknown_parameter", "sha256"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        json_t *body = parse(cases[i].body);
        struct keys_record r;
        struct keys_error err;
        memset(&err, 0, sizeof err);
        int rc = keys_parse_request(body, NOW, &r, &err);
        if (rc != KEYS_EINVAL)
            fail_msg("%s: result %d, expected KEYS_EINVAL", cases[i].body, rc);
        if (strcmp(err.code, cases[i].code) || strcmp(err.param, cases[i].param))
            fail_msg("%s: code %s param \"%s\", expected %s \"%s\"", cases[i].body, err.code,
                     err.param, cases[i].code, cases[i].param);
        assert_true(err.message[0] != '\0');
        assert_int_equal(keys_error_status(&err), 400);
        /* A refused request leaves nothing to free. */
        assert_null(r.models);
        assert_string_equal(r.name, "");
        json_decref(body);
    }
}

static void test_parse_boundaries(void **state)
{
    (void)state;
    /* One second from now is the future; a 64-character name and the largest limits pass. */
    json_t *body =
        parse("{\"name\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
              "xx\",\"expires_at\":1800000001,\"rpm\":1000000000000,\"tpm\":1,"
              "\"budget_usd\":1e12}");
    struct keys_record r;
    struct keys_error err;
    if (keys_parse_request(body, NOW, &r, &err))
        fail_msg("refused: %s", err.message);
    assert_int_equal(strlen(r.name), 64);
    assert_int_equal(r.expires_at, NOW + 1);
    keys_record_clear(&r);
    json_decref(body);

    /* KEYS_MODELS_MAX models pass, one more does not. */
    json_t *many = json_array();
    for (int i = 0; i < KEYS_MODELS_MAX; i++)
        json_array_append_new(many, json_string("m"));
    body = json_pack("{s:s, s:O}", "name", "many", "models", many);
    assert_int_equal(keys_parse_request(body, NOW, &r, &err), KEYS_OK);
    keys_record_clear(&r);
    json_decref(body);
    json_array_append_new(many, json_string("m"));
    body = json_pack("{s:s, s:O}", "name", "many", "models", many);
    assert_int_equal(keys_parse_request(body, NOW, &r, &err), KEYS_EINVAL);
    assert_string_equal(err.param, "models");
    json_decref(body);
    json_decref(many);
}

/* ---- record <-> Redis fields -------------------------------------------------------------- */

static struct keys_record sample(void)
{
    struct keys_record r = {0};
    strcpy(r.name, "alice");
    strcpy(r.sha256, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
    r.models = strdup("[\"m1\",\"m2\"]");
    r.rpm = 60;
    r.tpm = 100000;
    strcpy(r.budget_usd, "12.5");
    r.expires_at = 1800003600;
    r.created_at = 1799999999;
    return r;
}

static void test_fields_round_trip(void **state)
{
    (void)state;
    struct keys_record r = sample();
    struct keys_fields f;
    keys_record_fields(&r, &f);
    assert_int_equal(f.argc, 14);
    const char *expect[] = {"name",       "alice",      "models",     "[\"m1\",\"m2\"]", "rpm",
                            "60",         "tpm",        "100000",     "budget_usd",      "12.5",
                            "expires_at", "1800003600", "created_at", "1799999999"};
    for (int i = 0; i < f.argc; i++) {
        assert_string_equal(f.argv[i], expect[i]);
        assert_int_equal(f.argvlen[i], strlen(expect[i]));
    }
    struct keys_record back = {0};
    assert_int_equal(keys_record_from_fields(&back, (size_t)f.argc / 2, f.argv), 0);
    strcpy(back.sha256, r.sha256);
    assert_string_equal(back.name, r.name);
    assert_string_equal(back.models, r.models);
    assert_int_equal(back.rpm, r.rpm);
    assert_int_equal(back.tpm, r.tpm);
    assert_string_equal(back.budget_usd, r.budget_usd);
    assert_int_equal(back.expires_at, r.expires_at);
    assert_int_equal(back.created_at, r.created_at);
    keys_record_clear(&back);
    keys_record_clear(&r);

    /* Absent limits are absent fields: only name and created_at. */
    struct keys_record m = {0};
    strcpy(m.name, "min");
    m.created_at = 5;
    keys_record_fields(&m, &f);
    assert_int_equal(f.argc, 4);
    assert_string_equal(f.argv[0], "name");
    assert_string_equal(f.argv[2], "created_at");
    assert_string_equal(f.argv[3], "5");
}

static void test_fields_malformed(void **state)
{
    (void)state;
    /* Hand-edited or foreign values count as absent; unknown fields are ignored. */
    const char *fv[] = {"name",       "carol", "rpm",        "ten",       "tpm",    "-5",
                        "budget_usd", "1e",    "expires_at", "12x",       "colour", "blue",
                        "models",     "",      "created_at", "1700000000"};
    struct keys_record r = {0};
    assert_int_equal(keys_record_from_fields(&r, sizeof fv / sizeof fv[0] / 2, fv), 0);
    assert_string_equal(r.name, "carol");
    assert_int_equal(r.rpm, 0);
    assert_int_equal(r.tpm, 0);
    assert_string_equal(r.budget_usd, "");
    assert_int_equal(r.expires_at, 0);
    assert_null(r.models);
    assert_int_equal(r.created_at, 1700000000);
    keys_record_clear(&r);
}

/* ---- JSON forms --------------------------------------------------------------------------- */

static char *dump(json_t *doc)
{
    assert_non_null(doc);
    char *s = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(doc);
    return s;
}

static void test_record_json(void **state)
{
    (void)state;
    struct keys_record r = sample();
    char *s = dump(keys_record_json(&r));
    assert_string_equal(s, "{\"budget_usd\":12.5,\"created_at\":1799999999,\"expires_at\":"
                           "1800003600,\"models\":[\"m1\",\"m2\"],\"name\":\"alice\",\"rpm\":60,"
                           "\"sha256_prefix\":\"01234567\",\"tpm\":100000}");
    free(s);

    s = dump(keys_created_json(&r, "tg-00112233445566778899aabbccddeeff"));
    assert_string_equal(s, "{\"budget_usd\":12.5,\"created_at\":1799999999,\"expires_at\":"
                           "1800003600,\"key\":\"tg-00112233445566778899aabbccddeeff\","
                           "\"models\":[\"m1\",\"m2\"],\"name\":\"alice\",\"rpm\":60,\"sha256\":"
                           "\"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\","
                           "\"tpm\":100000}");
    free(s);
    keys_record_clear(&r);

    struct keys_record m = {0};
    strcpy(m.name, "min");
    strcpy(m.sha256, "ffffffffeeeeeeee");
    m.created_at = 7;
    s = dump(keys_record_json(&m));
    assert_string_equal(s, "{\"budget_usd\":null,\"created_at\":7,\"expires_at\":null,"
                           "\"models\":null,\"name\":\"min\",\"rpm\":null,\"sha256_prefix\":"
                           "\"ffffffff\",\"tpm\":null}");
    free(s);
    /* A stored models value that is not a JSON array shows as null. */
    m.models = strdup("not json");
    s = dump(keys_record_json(&m));
    assert_non_null(strstr(s, "\"models\":null"));
    free(s);
    keys_record_clear(&m);
}

static void test_list_json(void **state)
{
    (void)state;
    char *s = dump(keys_list_json(NULL, 0, false));
    assert_string_equal(s, "{\"data\":[],\"first_id\":null,\"has_more\":false,"
                           "\"last_id\":null,\"object\":\"list\"}");
    free(s);
    struct keys_record *list = calloc(2, sizeof *list);
    list[0] = sample();
    strcpy(list[1].name, "zed");
    s = dump(keys_list_json(list, 2, true));
    json_t *doc = parse(s);
    assert_int_equal(json_array_size(json_object_get(doc, "data")), 2);
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(doc, "data"), 1), "name")),
        "zed");
    assert_true(json_is_true(json_object_get(doc, "has_more")));
    assert_string_equal(json_string_value(json_object_get(doc, "first_id")), list[0].name);
    assert_string_equal(json_string_value(json_object_get(doc, "last_id")), "zed");
    json_decref(doc);
    free(s);
    keys_records_free(list, 2);
}

/* ---- errors ------------------------------------------------------------------------------- */

static void test_error_mapping(void **state)
{
    (void)state;
    static const struct {
        int result;
        const char *code;
        unsigned status;
        const char *type;
    } cases[] = {
        {KEYS_EINVAL, "invalid_value", 400, "invalid_request_error"},
        {KEYS_ENOENT, "key_not_found", 404, "invalid_request_error"},
        {KEYS_EEXIST, "key_exists", 409, "invalid_request_error"},
        {KEYS_EUNAVAIL, "key_store_unavailable", 503, "api_error"},
        {KEYS_ENOMEM, "internal_error", 500, "server_error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct keys_error e = {.result = cases[i].result, .code = cases[i].code};
        strcpy(e.message, "something");
        if (cases[i].result == KEYS_EINVAL)
            strcpy(e.param, "rpm");
        assert_int_equal(keys_error_status(&e), cases[i].status);
        size_t len = 0;
        char *body = keys_error_body(&e, &len);
        assert_non_null(body);
        assert_int_equal(len, strlen(body));
        json_t *doc = parse(body);
        json_t *inner = json_object_get(doc, "error");
        assert_int_equal(json_object_size(doc), 1);
        assert_int_equal(json_object_size(inner), 4);
        assert_string_equal(json_string_value(json_object_get(inner, "code")), cases[i].code);
        assert_string_equal(json_string_value(json_object_get(inner, "type")), cases[i].type);
        assert_string_equal(json_string_value(json_object_get(inner, "message")), "something");
        if (cases[i].result == KEYS_EINVAL)
            assert_string_equal(json_string_value(json_object_get(inner, "param")), "rpm");
        else
            assert_true(json_is_null(json_object_get(inner, "param")));
        json_decref(doc);
        free(body);
    }
}

/* Operations that fail before any I/O: no redis.url, a name that cannot exist. */
static void test_no_store(void **state)
{
    (void)state;
    struct config cfg;
    memset(&cfg, 0, sizeof cfg);
    struct config_key statics[1] = {{.name = "static-one"}};
    cfg.keys = statics;
    cfg.n_keys = 1;
    struct keys_record r = {0};
    struct keys_error err;
    char key[KEYS_KEY_LEN + 1] = "x";

    strcpy(r.name, "someone");
    assert_int_equal(keys_create(&cfg, &r, key, &err), KEYS_EUNAVAIL);
    assert_string_equal(err.code, "key_store_unavailable");
    assert_int_equal(keys_error_status(&err), 503);
    assert_string_equal(key, "");
    assert_string_equal(r.sha256, "");

    strcpy(r.name, "static-one");
    assert_int_equal(keys_create(&cfg, &r, key, &err), KEYS_EEXIST);
    assert_string_equal(err.param, "name");

    struct keys_record *list = (void *)1;
    size_t n = 9;
    assert_int_equal(keys_list(&cfg, NULL, 0, &list, &n, NULL, &err), KEYS_EUNAVAIL);
    assert_null(list);
    assert_int_equal(n, 0);
    assert_int_equal(keys_show(&cfg, "someone", &r, &err), KEYS_EUNAVAIL);
    assert_int_equal(keys_revoke(&cfg, "someone", &err), KEYS_EUNAVAIL);
    assert_int_equal(keys_show(&cfg, "no such", &r, &err), KEYS_ENOENT);
    assert_int_equal(keys_revoke(&cfg, "..", &err), KEYS_ENOENT);
    assert_string_equal(err.code, "key_not_found");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_parse_full),
        cmocka_unit_test(test_parse_minimal_and_nulls),
        cmocka_unit_test(test_budget_text),
        cmocka_unit_test(test_parse_rejects),
        cmocka_unit_test(test_parse_boundaries),
        cmocka_unit_test(test_fields_round_trip),
        cmocka_unit_test(test_fields_malformed),
        cmocka_unit_test(test_record_json),
        cmocka_unit_test(test_list_json),
        cmocka_unit_test(test_error_mapping),
        cmocka_unit_test(test_no_store),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

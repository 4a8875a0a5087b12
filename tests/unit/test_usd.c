/* Unit tests for base/usd: amounts printed with at most 10 decimals and no float noise, and
 * JSON documents whose amounts (cost, *usd* members) are written that way, nothing else. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/usd.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *fmt(double v)
{
    static char out[USD_TEXT_MAX];
    usd_format(out, sizeof out, v);
    return out;
}

static void test_format(void **state)
{
    (void)state;
    /* What the prices of the tests produce: 63 tokens at $0.1/Mtok, 3 at $2/Mtok, cents. */
    assert_string_equal(fmt(63 * 0.1 / 1e6), "0.0000063");
    assert_string_equal(fmt(6.0000000000000002e-6), "0.000006");
    assert_string_equal(fmt(0.029999999999999999), "0.03");
    assert_string_equal(fmt(0.1 + 0.2), "0.3");
    assert_string_equal(fmt(3), "3.0");
    assert_string_equal(fmt(12.5), "12.5");
    assert_string_equal(fmt(0), "0.0");
    assert_string_equal(fmt(-0.0), "0.0");
    assert_string_equal(fmt(0.4e-10), "0.0"); /* under half the last decimal */
    assert_string_equal(fmt(0.6e-10), "0.0000000001");
    assert_string_equal(fmt(0.00123456789012), "0.0012345679"); /* 10 decimals, rounded */
    assert_string_equal(fmt(99999.99999999999), "100000.0");
    assert_string_equal(fmt(-0.25), "-0.25");
    assert_string_equal(fmt(-6.0000000000000002e-6), "-0.000006");
    /* Above 1e5, 15 significant digits (a double holds 15 exactly). */
    assert_string_equal(fmt(123456.789), "123456.789");
    assert_string_equal(fmt(12345678.9), "12345678.9");
    assert_string_equal(fmt(1e20), "100000000000000000000.0");
    assert_string_equal(fmt(NAN), "0.0");
    assert_string_equal(fmt(INFINITY), "0.0");
    /* Never an exponent, and what is printed reads back within half the last decimal. */
    for (double v = 1e-9; v < 1e4; v *= 1.37) {
        const char *s = fmt(v);
        assert_null(strpbrk(s, "eE"));
        assert_true(fabs(strtod(s, NULL) - v) <= 0.5e-10 + v * 1e-15);
    }
    /* A short buffer truncates, NUL-terminated. */
    char small[5];
    usd_format(small, sizeof small, 0.0000063);
    assert_string_equal(small, "0.00");
}

static void test_json_dumps(void **state)
{
    (void)state;
    json_t *doc = json_pack("{s:i, s:f, s:s, s:[f, f, I], s:{s:f, s:f, s:f}, s:b, s:n, s:f, s:f}",
                            "prompt_tokens", 63, "cost", 63 * 0.1 / 1e6, "note",
                            "1.5e-6 \"cost\":2.25 \\ 0.1", "list", 0.029999999999999999, -2.5,
                            (json_int_t)-7, "o", "budget_usd", 0.029999999999999999,
                            "input_usd_per_mtok", 0.1 + 0.2, "logprob", -1.2345678901234567e-7, "t",
                            1, "z", "temperature", 0.7, "spend_usd", 1e-12);
    assert_non_null(doc);
    char *text = usd_json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(text);
    /* Amounts (cost, *usd*) as usd_format() writes them; every other number and every string
     * as jansson does. */
    char *plain = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(strstr(text, "\"cost\":0.0000063,"));
    assert_non_null(strstr(text, "\"budget_usd\":0.03,"));
    assert_non_null(strstr(text, "\"input_usd_per_mtok\":0.3,"));
    assert_non_null(strstr(text, "\"spend_usd\":0.0,"));
    assert_non_null(strstr(text, "\"note\":\"1.5e-6 \\\"cost\\\":2.25 \\\\ 0.1\""));
    assert_non_null(strstr(plain, "\"list\":[0.029999999999999999,-2.5,-7]"));
    assert_non_null(strstr(text, "\"list\":[0.029999999999999999,-2.5,-7]"));
    for (size_t i = 0; i < 2; i++) { /* a node's numbers keep jansson's digits */
        const char *member = i ? "\"temperature\":" : "\"logprob\":";
        const char *a = strstr(text, member), *b = strstr(plain, member);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(strcspn(a, ","), strcspn(b, ","));
        assert_memory_equal(a, b, strcspn(b, ","));
    }
    assert_non_null(strstr(text, "\"prompt_tokens\":63,"));
    assert_non_null(strstr(text, "\"t\":true,"));
    /* Still JSON, and the amounts read back as numbers. */
    json_t *back = json_loads(text, 0, NULL);
    assert_non_null(back);
    assert_true(json_is_real(json_object_get(back, "cost")));
    assert_true(json_real_value(json_object_get(back, "cost")) == 0.0000063);
    assert_true(json_is_integer(json_object_get(back, "prompt_tokens")));
    json_decref(back);
    free(text);
    free(plain);
    /* Indented output works the same way; a bare real has no member name: untouched. */
    text = usd_json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
    assert_non_null(strstr(text, "\"cost\": 0.0000063"));
    free(text);
    json_decref(doc);
    json_t *bare = json_real(0.5);
    text = usd_json_dumps(bare, JSON_ENCODE_ANY);
    assert_string_equal(text, "0.5");
    free(text);
    json_decref(bare);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format),
        cmocka_unit_test(test_json_dumps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for net/httpd: the path decoder (httpd_unescape), tokens. The daemon itself
 * (accepting, deadlines, shedding, lingering closes, the HTTP edges) is tested with real sockets in
 * tests/integration/hardening-abuse.test.mjs and http-edges.test.mjs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "net/httpd.h"

#include <string.h>

static void check(const char *raw, const char *want)
{
    char out[128];
    long n = httpd_unescape(raw, out, sizeof out);
    assert_int_equal(n, (long)strlen(want));
    assert_string_equal(out, want);
}

static void test_decodes_escapes(void **state)
{
    (void)state;
    check("/v1/models", "/v1/models");
    check("/v1/models/org%2Fmodel", "/v1/models/org/model");
    check("/v1/models/org%2fmodel", "/v1/models/org/model");
    check("%41%62%7e", "Ab~");
    check("", "");
}

static void test_keeps_what_is_not_an_escape(void **state)
{
    (void)state;
    check("100%", "100%");
    check("%4", "%4");
    check("%zz%4g", "%zz%4g");
    check("a+b", "a+b");
    check("%%41", "%A");
}

static void test_refuses_nul(void **state)
{
    (void)state;
    char out[64];
    assert_int_equal(httpd_unescape("/v1/models/m1%00junk", out, sizeof out), -1);
    assert_int_equal(httpd_unescape("%00", out, sizeof out), -1);
}

static void test_output_bounds(void **state)
{
    (void)state;
    char out[4];
    assert_int_equal(httpd_unescape("abc", out, sizeof out), 3);
    assert_int_equal(httpd_unescape("abcd", out, sizeof out), -1);
    assert_int_equal(httpd_unescape("%41%42%43", out, sizeof out), 3); /* decoded size counts */
    assert_int_equal(httpd_unescape("", out, 0), -1);
}

static void test_in_place(void **state)
{
    (void)state;
    char s[] = "/v1/models/a%2Fb%20c";
    assert_int_equal(httpd_unescape(s, s, sizeof s), 16);
    assert_string_equal(s, "/v1/models/a/b c");
}

static void test_token(void **state)
{
    (void)state;
    assert_true(httpd_is_token("GET"));
    assert_true(httpd_is_token("x-request-id"));
    assert_true(httpd_is_token("A!#$%&'*+-.^_`|~9"));
    assert_false(httpd_is_token(""));
    assert_false(httpd_is_token(NULL));
    assert_false(httpd_is_token("GE\"T"));
    assert_false(httpd_is_token("Content-Length "));
    assert_false(httpd_is_token("a\tb"));
    assert_false(httpd_is_token("a:b"));
    assert_false(httpd_is_token("caf\xc3\xa9"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_decodes_escapes), cmocka_unit_test(test_keeps_what_is_not_an_escape),
        cmocka_unit_test(test_refuses_nul),     cmocka_unit_test(test_output_bounds),
        cmocka_unit_test(test_in_place),        cmocka_unit_test(test_token),
    };
    return cmocka_run_group_tests_name("httpd", tests, NULL, NULL);
}

/* Unit tests for gateway/buf: the capped growable buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/buf.h"

#include <stdlib.h>
#include <string.h>

static void test_append_and_nul(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 1024);
    assert_int_equal(b.len, 0);
    assert_null(b.data);
    assert_int_equal(buf_append(&b, "hello", 5), BUF_OK);
    assert_int_equal(buf_append_str(&b, ", world"), BUF_OK);
    assert_int_equal(b.len, 12);
    assert_string_equal(b.data, "hello, world");
    /* Binary data with embedded NULs is kept byte for byte. */
    assert_int_equal(buf_append(&b, "a\0b", 3), BUF_OK);
    assert_int_equal(b.len, 15);
    assert_memory_equal(b.data, "hello, worlda\0b", 15);
    assert_int_equal(b.data[15], '\0');
    buf_free(&b);
    assert_null(b.data);
    assert_int_equal(b.len, 0);
}

static void test_append_zero_bytes(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 16);
    assert_int_equal(buf_append(&b, "", 0), BUF_OK);
    assert_int_equal(b.len, 0);
    assert_int_equal(buf_append_str(&b, "abc"), BUF_OK);
    assert_int_equal(buf_append(&b, "zzz", 0), BUF_OK);
    assert_int_equal(b.len, 3);
    assert_string_equal(b.data, "abc");
    buf_free(&b);
}

/* Many small appends grow the storage past its first allocation without losing bytes. */
static void test_growth_keeps_content(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 100000);
    for (int i = 0; i < 10000; i++) {
        char c = (char)('a' + i % 26);
        assert_int_equal(buf_append(&b, &c, 1), BUF_OK);
    }
    assert_int_equal(b.len, 10000);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(b.data[i], 'a' + i % 26);
    assert_int_equal(b.data[10000], '\0');
    buf_free(&b);
}

static void test_printf(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 4096);
    assert_int_equal(buf_printf(&b, "%s=%d", "answer", 42), BUF_OK);
    assert_int_equal(buf_printf(&b, ";%05.1f", 3.14159), BUF_OK);
    assert_string_equal(b.data, "answer=42;003.1");
    assert_int_equal(b.len, strlen("answer=42;003.1"));

    /* Longer than the 256-byte stack scratch: the second formatting path. */
    char big[1000];
    memset(big, 'q', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    buf_reset(&b);
    assert_int_equal(buf_printf(&b, "<%s>", big), BUF_OK);
    assert_int_equal(b.len, 1001);
    assert_int_equal(b.data[0], '<');
    assert_int_equal(b.data[1], 'q');
    assert_int_equal(b.data[999], 'q');
    assert_int_equal(b.data[1000], '>');
    assert_int_equal(b.data[1001], '\0');
    /* And appending after it continues at the right place. */
    assert_int_equal(buf_printf(&b, "%d", 7), BUF_OK);
    assert_int_equal(b.len, 1002);
    assert_string_equal(b.data + 1000, ">7");
    buf_free(&b);
}

static void test_consume(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(buf_append_str(&b, "0123456789"), BUF_OK);
    buf_consume(&b, 0);
    assert_string_equal(b.data, "0123456789");
    buf_consume(&b, 3);
    assert_int_equal(b.len, 7);
    assert_string_equal(b.data, "3456789");
    buf_consume(&b, 6);
    assert_int_equal(b.len, 1);
    assert_string_equal(b.data, "9");
    buf_consume(&b, 1);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    /* Consuming frees room under the cap. */
    char fill[64];
    memset(fill, 'f', sizeof fill);
    assert_int_equal(buf_append(&b, fill, 64), BUF_OK);
    assert_int_equal(buf_append(&b, "x", 1), BUF_ETOOBIG);
    buf_consume(&b, 10);
    assert_int_equal(buf_append(&b, "0123456789", 10), BUF_OK);
    assert_int_equal(b.len, 64);
    assert_memory_equal(b.data + 54, "0123456789", 10);
    buf_free(&b);
}

static void test_consume_empty(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 8);
    buf_consume(&b, 0); /* on a never-allocated buffer */
    assert_int_equal(b.len, 0);
    buf_reset(&b);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

static void test_steal(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 64);
    assert_int_equal(buf_append_str(&b, "payload"), BUF_OK);
    size_t len = 0;
    char *p = buf_steal(&b, &len);
    assert_non_null(p);
    assert_int_equal(len, 7);
    assert_string_equal(p, "payload");
    assert_null(b.data);
    assert_int_equal(b.len, 0);
    assert_int_equal(b.cap, 0);
    assert_int_equal(b.max, 64);
    /* The buffer is reusable and independent of the stolen storage. */
    assert_int_equal(buf_append_str(&b, "again"), BUF_OK);
    assert_string_equal(b.data, "again");
    assert_string_equal(p, "payload");
    free(p);
    buf_free(&b);

    buf_init(&b, 8);
    assert_null(buf_steal(&b, &len));
    assert_int_equal(len, 0);
    assert_null(buf_steal(&b, NULL));
}

static void test_cap_leaves_content(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 10);
    assert_int_equal(buf_append_str(&b, "abcdef"), BUF_OK);
    assert_int_equal(buf_append_str(&b, "ghijk"), BUF_ETOOBIG);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abcdef");
    assert_int_equal(buf_printf(&b, "%s", "12345"), BUF_ETOOBIG);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abcdef");
    /* Huge n must not wrap around the length check. */
    assert_int_equal(buf_append(&b, "x", SIZE_MAX), BUF_ETOOBIG);
    assert_int_equal(b.len, 6);
    assert_string_equal(b.data, "abcdef");
    buf_free(&b);
}

static void test_cap_large_printf_leaves_content(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 300);
    assert_int_equal(buf_append_str(&b, "head"), BUF_OK);
    char big[400];
    memset(big, 'z', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_printf(&b, "%s", big), BUF_ETOOBIG);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.data, "head");
    buf_free(&b);
}

static void test_exact_cap(void **state)
{
    (void)state;
    struct buf b;
    buf_init(&b, 10);
    assert_int_equal(buf_append(&b, "0123456789", 10), BUF_OK);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "0123456789");
    assert_int_equal(buf_append(&b, "", 0), BUF_OK);
    assert_int_equal(buf_append(&b, "x", 1), BUF_ETOOBIG);
    assert_int_equal(buf_printf(&b, "%c", 'x'), BUF_ETOOBIG);
    assert_string_equal(b.data, "0123456789");
    buf_free(&b);

    /* Reaching the cap in steps. */
    buf_init(&b, 10);
    assert_int_equal(buf_append(&b, "01234", 5), BUF_OK);
    assert_int_equal(buf_printf(&b, "%s", "56789"), BUF_OK);
    assert_int_equal(b.len, 10);
    assert_string_equal(b.data, "0123456789");
    assert_int_equal(buf_append(&b, "a", 1), BUF_ETOOBIG);
    buf_free(&b);

    /* Exactly at the cap through the long printf path. */
    char big[301];
    memset(big, 'y', 300);
    big[300] = '\0';
    buf_init(&b, 300);
    assert_int_equal(buf_printf(&b, "%s", big), BUF_OK);
    assert_int_equal(b.len, 300);
    assert_string_equal(b.data, big);
    assert_int_equal(buf_append(&b, "a", 1), BUF_ETOOBIG);
    buf_free(&b);

    /* One byte over in a single printf. */
    char over[302];
    memset(over, 'y', 301);
    over[301] = '\0';
    buf_init(&b, 300);
    assert_int_equal(buf_printf(&b, "%s", over), BUF_ETOOBIG);
    assert_int_equal(b.len, 0);
    buf_free(&b);

    /* A zero cap holds nothing. */
    buf_init(&b, 0);
    assert_int_equal(buf_append(&b, "a", 1), BUF_ETOOBIG);
    assert_int_equal(b.len, 0);
    buf_free(&b);
}

/* Around the 256-byte scratch buffer buf_printf formats into first. */
static void test_printf_scratch_boundary(void **state)
{
    (void)state;
    for (size_t n = 250; n <= 262; n++) {
        char s[300];
        memset(s, 'a', n);
        s[n] = '\0';
        s[0] = '<';
        s[n - 1] = '>';
        struct buf b;
        buf_init(&b, 1000);
        assert_int_equal(buf_append_str(&b, "xy"), BUF_OK);
        assert_int_equal(buf_printf(&b, "%s", s), BUF_OK);
        assert_int_equal(b.len, n + 2);
        assert_int_equal(b.data[n + 2], '\0');
        assert_memory_equal(b.data, "xy", 2);
        assert_string_equal(b.data + 2, s);
        buf_free(&b);
        /* And against a cap just below and exactly at the result. */
        buf_init(&b, n - 1);
        assert_int_equal(buf_printf(&b, "%s", s), BUF_ETOOBIG);
        assert_int_equal(b.len, 0);
        buf_free(&b);
        buf_init(&b, n);
        assert_int_equal(buf_printf(&b, "%s", s), BUF_OK);
        assert_string_equal(b.data, s);
        buf_free(&b);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_nul),
        cmocka_unit_test(test_append_zero_bytes),
        cmocka_unit_test(test_growth_keeps_content),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_consume),
        cmocka_unit_test(test_consume_empty),
        cmocka_unit_test(test_steal),
        cmocka_unit_test(test_cap_leaves_content),
        cmocka_unit_test(test_cap_large_printf_leaves_content),
        cmocka_unit_test(test_exact_cap),
        cmocka_unit_test(test_printf_scratch_boundary),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}

/* Unit tests for base/spool: the upload spool, in memory up to a bound and in an unlinked
 * temporary file beyond it. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/spool.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char byte_at(size_t i)
{
    return (unsigned char)((i * 131u + (i >> 8)) & 0xff);
}

/* Entries in a directory besides . and .. */
static int dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static void test_memory_only(void **state)
{
    (void)state;
    struct spool s;
    spool_init(&s, 64, 1000);
    assert_int_equal(spool_write(&s, "hello ", 6), SPOOL_OK);
    assert_int_equal(spool_write(&s, "world", 5), SPOOL_OK);
    assert_false(spool_on_disk(&s));
    char out[32] = {0};
    assert_int_equal(spool_read(&s, 0, out, sizeof out), 11);
    assert_memory_equal(out, "hello world", 11);
    assert_int_equal(spool_read(&s, 6, out, 3), 3);
    assert_memory_equal(out, "wor", 3);
    assert_int_equal(spool_read(&s, 11, out, 3), 0);
    spool_free(&s);
    spool_free(&s);
}

/* Written in uneven pieces across the memory bound, read back at every offset in uneven
 * pieces: the same bytes; no file is left with a name in $TMPDIR. */
static void test_spills_to_unlinked_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/tollgate-spool-test-XXXXXX";
    assert_non_null(mkdtemp(dir));
    setenv("TMPDIR", dir, 1);
    enum { TOTAL = 50000, MEM = 4096 };
    unsigned char *src = malloc(TOTAL);
    for (size_t i = 0; i < TOTAL; i++)
        src[i] = byte_at(i);
    struct spool s;
    spool_init(&s, MEM, TOTAL);
    for (size_t at = 0, step = 1; at < TOTAL; step = step * 7 % 3001 + 1) {
        size_t n = step < TOTAL - at ? step : TOTAL - at;
        assert_int_equal(spool_write(&s, src + at, n), SPOOL_OK);
        at += n;
    }
    assert_true(spool_on_disk(&s));
    assert_int_equal(s.len, TOTAL);
    assert_true(s.mem.cap <= MEM + 1);
    assert_int_equal(dir_entries(dir), 0);
    unsigned char *back = malloc(TOTAL);
    for (size_t piece = 1; piece < 9000; piece = piece * 3 + 1) {
        memset(back, 0, TOTAL);
        size_t at = 0;
        for (;;) {
            ssize_t n = spool_read(&s, at, back + at, piece);
            assert_true(n >= 0);
            if (n == 0)
                break;
            at += (size_t)n;
        }
        assert_int_equal(at, TOTAL);
        assert_memory_equal(back, src, TOTAL);
    }
    /* Across the bound in one read. */
    assert_int_equal(spool_read(&s, MEM - 3, back, 6), 6);
    assert_memory_equal(back, src + MEM - 3, 6);
    /* Full: nothing more goes in, and what is there stays. */
    assert_int_equal(spool_write(&s, "x", 1), SPOOL_ETOOBIG);
    assert_int_equal(s.len, TOTAL);
    spool_free(&s);
    assert_int_equal(dir_entries(dir), 0);
    free(src);
    free(back);
    rmdir(dir);
    unsetenv("TMPDIR");
}

static void test_cap(void **state)
{
    (void)state;
    struct spool s;
    spool_init(&s, 8, 10);
    assert_int_equal(spool_write(&s, "0123456", 7), SPOOL_OK);
    assert_int_equal(spool_write(&s, "abcd", 4), SPOOL_ETOOBIG);
    assert_int_equal(s.len, 7);
    assert_int_equal(spool_write(&s, "abc", 3), SPOOL_OK);
    char out[10];
    assert_int_equal(spool_read(&s, 0, out, 10), 10);
    assert_memory_equal(out, "0123456abc", 10);
    spool_free(&s);
}

/* A $TMPDIR that cannot take files: the write fails as SPOOL_EIO and keeps nothing of it. */
static void test_unwritable_dir(void **state)
{
    (void)state;
    setenv("TMPDIR", "/nonexistent-tollgate-dir", 1);
    struct spool s;
    spool_init(&s, 4, 100);
    assert_int_equal(spool_write(&s, "ab", 2), SPOOL_OK);
    assert_int_equal(spool_write(&s, "cdefgh", 6), SPOOL_EIO);
    assert_int_equal(s.len, 2);
    assert_int_equal(s.mem.len, 2);
    spool_free(&s);
    unsetenv("TMPDIR");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory_only),
        cmocka_unit_test(test_spills_to_unlinked_file),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_unwritable_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

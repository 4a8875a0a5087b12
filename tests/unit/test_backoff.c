/* Unit tests for routing/backoff: the jittered waits of same-node retries (full jitter under a
 * doubling ceiling and a cap) and the Retry-After values that allow one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "routing/backoff.h"

#define TOP UINT64_MAX /* the largest draw: the wait's ceiling, less a rounding step */

/* Each retry's ceiling doubles from the base up to the cap; the draw spans [0, ceiling). */
static void test_ceiling_doubles_to_the_cap(void **state)
{
    (void)state;
    assert_float_equal(backoff_delay(1, 0.05, 1.0, TOP), 0.05, 1e-9);
    assert_float_equal(backoff_delay(2, 0.05, 1.0, TOP), 0.10, 1e-9);
    assert_float_equal(backoff_delay(3, 0.05, 1.0, TOP), 0.20, 1e-9);
    assert_float_equal(backoff_delay(5, 0.05, 1.0, TOP), 0.80, 1e-9);
    assert_float_equal(backoff_delay(6, 0.05, 1.0, TOP), 1.00, 1e-9);
    assert_float_equal(backoff_delay(1000, 0.05, 1.0, TOP), 1.00, 1e-9);
    assert_float_equal(backoff_delay(0, 0.05, 1.0, TOP), 0.05, 1e-9); /* 0 counts as 1 */
    /* Full jitter: the smallest draw waits nothing, the middle one half the ceiling. */
    assert_float_equal(backoff_delay(3, 0.05, 1.0, 0), 0, 0);
    assert_float_equal(backoff_delay(3, 0.05, 1.0, 1ull << 63), 0.10, 1e-12);
    /* Nothing to wait with a zero base or cap. */
    assert_float_equal(backoff_delay(3, 0, 1.0, TOP), 0, 0);
    assert_float_equal(backoff_delay(3, 0.05, 0, TOP), 0, 0);
}

/* Spread: draws of a simple generator fill the range, never past it. */
static void test_draws_stay_in_range(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    double lo = 1, hi = 0;
    for (int i = 0; i < 10000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d = backoff_delay(2, 0.05, 1.0, x);
        assert_true(d >= 0 && d < 0.1);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    assert_true(lo < 0.01);
    assert_true(hi > 0.09);
}

static void test_retry_after_values(void **state)
{
    (void)state;
    assert_int_equal(backoff_retry_after_ms("0", false), 0);
    assert_int_equal(backoff_retry_after_ms("1", false), 1000);
    assert_int_equal(backoff_retry_after_ms(" 30 ", false), 30000);
    assert_int_equal(backoff_retry_after_ms("1500", true), 1500);
    assert_int_equal(backoff_retry_after_ms("12.5", true), 13);
    assert_int_equal(backoff_retry_after_ms("0.5", false), 500);
    /* A date, garbage, a sign, trailing text, nothing: not soon. */
    assert_int_equal(backoff_retry_after_ms("Wed, 21 Oct 2015 07:28:00 GMT", false),
                     BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms("soon", false), BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms("-1", false), BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms("2s", false), BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms("", false), BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms(NULL, false), BACKOFF_NOT_SOON_MS);
    /* Huge values do not overflow. */
    assert_int_equal(backoff_retry_after_ms("99999999999999999999", false), BACKOFF_NOT_SOON_MS);
    assert_int_equal(backoff_retry_after_ms("1e308", true), BACKOFF_NOT_SOON_MS);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ceiling_doubles_to_the_cap),
        cmocka_unit_test(test_draws_stay_in_range),
        cmocka_unit_test(test_retry_after_values),
    };
    return cmocka_run_group_tests_name("backoff", tests, NULL, NULL);
}

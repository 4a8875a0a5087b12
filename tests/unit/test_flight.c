/* Unit tests for gateway/flight: the process-wide table of misses being answered. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cache/flight.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* What the fake post saw. */
struct posted {
    int n;
    uint64_t tokens[64];
    void *targets[64];
    char texts[64][32];
    int with_text;
    double cost;
};

/* Where a late joiner's copy would go; no test here lingers unless it says so. */
static __thread struct flight_landed landed;

static struct posted seen;

static void post(void *target, uint64_t token, const char *text, size_t len, double cost)
{
    int i = seen.n++;
    seen.tokens[i] = token;
    seen.targets[i] = target;
    if (text) {
        seen.with_text++;
        snprintf(seen.texts[i], sizeof seen.texts[i], "%.*s", (int)len, text);
    }
    seen.cost = cost;
}

static void key_of(unsigned char key[32], int n)
{
    memset(key, 0, 32);
    key[0] = (unsigned char)n;
    key[31] = (unsigned char)(n >> 8);
    key[5] = 0xa5;
}

static int setup(void **state)
{
    (void)state;
    memset(&seen, 0, sizeof seen);
    return 0;
}

static void test_lead_follow_land(void **state)
{
    (void)state;
    unsigned char k[32];
    key_of(k, 1);
    int w1, w2;
    struct flight_waiter a, b, c;
    assert_int_equal(flight_join(k, 100, &w1, true, true, 0, &a, &landed), FLIGHT_LEAD);
    assert_int_equal(flight_join(k, 101, &w1, true, true, 0, &b, &landed), FLIGHT_FOLLOW);
    assert_int_equal(flight_join(k, 102, &w2, true, true, 0, &c, &landed), FLIGHT_FOLLOW);
    assert_int_equal(flight_waiting(), 2);
    /* Landing with someone else's token does nothing. */
    flight_land(k, 101, "x", 1, 0, post, 0, 0);
    assert_int_equal(seen.n, 0);
    flight_land(k, 100, "answer", 6, 0.25, post, 0, 0);
    assert_int_equal(seen.n, 2);
    assert_int_equal(seen.with_text, 2);
    assert_string_equal(seen.texts[0], "answer");
    assert_float_equal(seen.cost, 0.25, 0);
    /* Each follower's answer went where it asked (its worker). */
    for (int i = 0; i < 2; i++)
        assert_ptr_equal(seen.targets[i], seen.tokens[i] == 101 ? (void *)&w1 : (void *)&w2);
    assert_int_equal(flight_waiting(), 0);
    assert_null(b.flight); /* the table no longer refers to the followers' nodes */
    assert_null(c.flight);
    /* Landed: the next one leads a new flight. */
    assert_int_equal(flight_join(k, 103, &w1, true, true, 0, &a, &landed), FLIGHT_LEAD);
    flight_land(k, 103, NULL, 0, 0, post, 0, 0);
}

static void test_leave_and_failed_leader(void **state)
{
    (void)state;
    unsigned char k[32];
    key_of(k, 2);
    int w;
    struct flight_waiter lead, first, second, third;
    assert_int_equal(flight_join(k, 200, &w, true, true, 0, &lead, &landed), FLIGHT_LEAD);
    assert_int_equal(flight_join(k, 201, &w, true, true, 0, &first, &landed), FLIGHT_FOLLOW);
    assert_int_equal(flight_join(k, 202, &w, true, true, 0, &second, &landed), FLIGHT_FOLLOW);
    assert_int_equal(flight_join(k, 203, &w, true, true, 0, &third, &landed), FLIGHT_FOLLOW);
    /* Leaving from the middle, the head and twice keeps the list whole. */
    flight_leave(&second);
    flight_leave(&third);
    flight_leave(&third); /* twice: harmless */
    assert_int_equal(flight_waiting(), 1);
    flight_land(k, 200, NULL, 0, 0, post, 0, 0); /* the leader failed */
    assert_int_equal(seen.n, 1);
    assert_int_equal(seen.tokens[0], 201);
    assert_int_equal(seen.with_text, 0);
    /* Leaving after the landing is harmless too. */
    flight_leave(&first);
    assert_int_equal(flight_waiting(), 0);
}

static void test_who_may_lead_or_follow(void **state)
{
    (void)state;
    unsigned char k[32], other[32];
    key_of(k, 3);
    key_of(other, 3 + 256); /* same stripe, another key */
    int w;
    struct flight_waiter x;
    /* no-store cannot lead; no-cache cannot follow */
    assert_int_equal(flight_join(k, 300, &w, true, false, 0, &x, &landed), FLIGHT_ALONE);
    assert_int_equal(flight_join(k, 301, &w, true, true, 0, &x, &landed), FLIGHT_LEAD);
    assert_int_equal(flight_join(k, 302, &w, false, true, 0, &x, &landed), FLIGHT_ALONE);
    /* Another key in the same stripe is another flight. */
    assert_int_equal(flight_join(other, 303, &w, true, true, 0, &x, &landed), FLIGHT_LEAD);
    flight_land(k, 301, "a", 1, 0, post, 0, 0);
    assert_int_equal(seen.n, 0);
    flight_land(other, 303, "b", 1, 0, post, 0, 0);
    assert_int_equal(seen.n, 0);
}

/* Many threads joining, leaving and landing the same keys: every follower is posted at most
 * once, and none is left waiting once every flight landed. */
struct racer {
    int id;
};

static _Atomic int race_posts;

static void race_post(void *target, uint64_t token, const char *text, size_t len, double cost)
{
    (void)target;
    (void)token;
    (void)text;
    (void)len;
    (void)cost;
    race_posts++;
}

static void *racer(void *arg)
{
    struct racer *r = arg;
    for (int i = 0; i < 2000; i++) {
        unsigned char k[32];
        key_of(k, 1000 + i % 7);
        uint64_t token = ((uint64_t)r->id << 32) | (uint64_t)i;
        struct flight_waiter w;
        enum flight_role role = flight_join(k, token, r, true, true, 0, &w, &landed);
        if (role == FLIGHT_LEAD)
            flight_land(k, token, "t", 1, 0, race_post, 0, 0);
        else if (role == FLIGHT_FOLLOW)
            flight_leave(&w); /* its node goes out of scope: it must be out of the table */
    }
    return NULL;
}

static void test_threads(void **state)
{
    (void)state;
    pthread_t t[4];
    struct racer r[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct racer){.id = i + 1};
        assert_int_equal(pthread_create(&t[i], NULL, racer, &r[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    /* Flights whose leader is done are gone; stragglers of the last ones: land them. */
    for (int i = 0; i < 7; i++) {
        unsigned char k[32];
        key_of(k, 1000 + i);
        struct flight_waiter w;
        if (flight_join(k, 1, NULL, false, true, 0, &w, &landed) == FLIGHT_LEAD)
            flight_land(k, 1, NULL, 0, 0, race_post, 0, 0);
    }
    assert_int_equal(flight_waiting(), 0);
}

static void test_landed_answer_lingers(void **state)
{
    (void)state;
    unsigned char k[32];
    key_of(k, 9);
    int w;
    struct flight_waiter a, b;
    struct flight_landed got = {0};
    assert_int_equal(flight_join(k, 900, &w, true, true, 1000, &a, &got), FLIGHT_LEAD);
    flight_land(k, 900, "the answer", 10, 0.5, post, 1000, 200);
    assert_int_equal(seen.n, 0); /* nobody was waiting */
    /* Just after the landing, an identical miss gets a copy instead of leading again. */
    assert_int_equal(flight_join(k, 901, &w, true, true, 1100, &b, &got), FLIGHT_LANDED);
    assert_int_equal(got.len, 10);
    assert_memory_equal(got.text, "the answer", 10);
    assert_float_equal(got.cost_usd, 0.5, 0);
    assert_int_equal(got.landed_ms, 1000);
    free(got.text);
    got.text = NULL;
    /* One that may not be answered from the cache (no-cache) neither gets it nor leads. */
    assert_int_equal(flight_join(k, 902, &w, false, true, 1150, &b, &got), FLIGHT_ALONE);
    assert_null(got.text);
    /* A late leader's landing cannot replace it (it leads nothing). */
    flight_land(k, 902, "other", 5, 0, post, 1150, 200);
    assert_int_equal(flight_join(k, 903, &w, true, true, 1199, &b, &got), FLIGHT_LANDED);
    assert_memory_equal(got.text, "the answer", 10);
    free(got.text);
    got.text = NULL;
    /* Its time is up: the next miss leads a new flight. */
    assert_int_equal(flight_join(k, 904, &w, true, true, 1200, &b, &got), FLIGHT_LEAD);
    flight_land(k, 904, NULL, 0, 0, post, 1200, 200); /* failed: nothing lingers */
    assert_int_equal(flight_join(k, 905, &w, true, true, 1201, &b, &got), FLIGHT_LEAD);
    flight_land(k, 905, NULL, 0, 0, post, 1201, 0);
}

static void test_linger_is_bounded(void **state)
{
    (void)state;
    unsigned char k1[32], k2[32];
    key_of(k1, 10);
    key_of(k2, 11);
    int w;
    struct flight_waiter a;
    struct flight_landed got = {0};
    size_t big = FLIGHT_LINGER_MAX_BYTES / 2 + 1;
    char *text = calloc(1, big);
    assert_non_null(text);
    assert_int_equal(flight_join(k1, 1000, &w, true, true, 0, &a, &got), FLIGHT_LEAD);
    flight_land(k1, 1000, text, big, 0, post, 0, 1000);
    assert_int_equal(flight_join(k2, 1001, &w, true, true, 0, &a, &got), FLIGHT_LEAD);
    flight_land(k2, 1001, text, big, 0, post, 0, 1000);
    /* The first fits and lingers; the second would pass the cap and does not. */
    assert_int_equal(flight_join(k1, 1002, &w, true, true, 1, &a, &got), FLIGHT_LANDED);
    free(got.text);
    assert_int_equal(flight_join(k2, 1003, &w, true, true, 1, &a, &got), FLIGHT_LEAD);
    flight_land(k2, 1003, NULL, 0, 0, post, 1, 0);
    /* Expired entries are freed when their stripe is next used. */
    assert_int_equal(flight_join(k1, 1004, &w, true, true, 5000, &a, &got), FLIGHT_LEAD);
    flight_land(k1, 1004, NULL, 0, 0, post, 5000, 0);
    free(text);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_lead_follow_land, setup),
        cmocka_unit_test_setup(test_landed_answer_lingers, setup),
        cmocka_unit_test_setup(test_linger_is_bounded, setup),
        cmocka_unit_test_setup(test_leave_and_failed_leader, setup),
        cmocka_unit_test_setup(test_who_may_lead_or_follow, setup),
        cmocka_unit_test_setup(test_threads, setup),
    };
    return cmocka_run_group_tests_name("flight", tests, NULL, NULL);
}

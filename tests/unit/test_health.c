/* Unit tests for backend health (routing/backend.c's record functions and routing/health.c):
 * passive ejection after consecutive failures, a cooldown that doubles on each repeat up to
 * its cap, rate-limit pauses, probes that take a node down and a good probe that readmits an
 * unreachable one, the live price document, and the health thread itself probing a real
 * HTTP server (libmicrohttpd) on a free loopback port.
 *
 * The arithmetic tests use a backend_state of their own (not the process-wide registry) and
 * a fixed `now`, so nothing depends on the clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "config/config.h"
#include "routing/backend.h"
#include "routing/health.h"
#include "tests/unit/harness.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T0 1000000 /* a fixed "now" (ms) for the arithmetic tests */

static const struct config_health health3 = {
    .interval_ms = 1000,
    .timeout_ms = 500,
    .eject_after_failures = 3,
    .cooldown_ms = 1000,
    .max_cooldown_ms = 8000,
};

/* Routing's settings as the config's defaults set them. */
static const struct config_routing routing = {
    .limit_initial = 8,
    .limit_max = 1000,
    .limit_backoff = 0.9,
    .limit_latency_factor = 3,
    .rate_limit_pause_ms = 5000,
    .honesty_tolerance = 1.5,
    .honesty_min_samples = 5,
};

static struct backend_state *state_new(void)
{
    struct backend_state *s = calloc(1, sizeof *s);
    assert_non_null(s);
    return s;
}

static int64_t until_of(struct backend_state *s)
{
    return atomic_load(&s->ejected_until_ms);
}

static int reason_of(struct backend_state *s)
{
    return atomic_load(&s->eject_reason);
}

/* `n` failures at `now`. */
static void fail_n(struct backend_state *s, const struct config_health *h, int n, bool unreachable,
                   int64_t now)
{
    for (int i = 0; i < n; i++)
        backend_record_failure(s, h, unreachable, now);
}

/* ---- passive ejection ----------------------------------------------------------------------- */

static void test_eject_after_failures(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    int64_t back = -1;
    fail_n(s, &health3, 2, false, T0);
    assert_true(backend_available(s, T0, &back));
    assert_int_equal(back, 0);
    assert_int_equal(atomic_load(&s->consecutive_failures), 2);
    assert_int_equal(atomic_load(&s->failures), 2);
    assert_int_equal(atomic_load(&s->ejections), 0);
    assert_string_equal(backend_health_name(s, T0), "up");

    backend_record_failure(s, &health3, false, T0);
    assert_false(backend_available(s, T0, &back));
    assert_int_equal(back, T0 + 1000);
    assert_int_equal(until_of(s), T0 + 1000);
    assert_int_equal(reason_of(s), BACKEND_EJECT_FAILING);
    assert_int_equal(atomic_load(&s->ejections), 1);
    assert_int_equal(atomic_load(&s->eject_streak), 1);
    assert_int_equal(atomic_load(&s->consecutive_failures), 0);
    assert_string_equal(backend_health_name(s, T0), "ejected");
    /* Out until the cooldown's last millisecond, back on it. */
    assert_false(backend_available(s, T0 + 999, NULL));
    assert_true(backend_available(s, T0 + 1000, NULL));
    assert_string_equal(backend_health_name(s, T0 + 1000), "up");

    /* Connect errors and timeouts eject for being unreachable. */
    struct backend_state *u = state_new();
    fail_n(u, &health3, 3, true, T0);
    assert_int_equal(reason_of(u), BACKEND_EJECT_UNREACHABLE);
    assert_int_equal(until_of(u), T0 + 1000);
    free(u);
    free(s);
}

/* Failures of requests sent before the ejection neither extend it nor count towards the next. */
static void test_late_failures_do_not_extend(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    fail_n(s, &health3, 3, false, T0);
    assert_int_equal(until_of(s), T0 + 1000);
    fail_n(s, &health3, 5, false, T0 + 500);
    assert_int_equal(until_of(s), T0 + 1000);
    assert_int_equal(atomic_load(&s->failures), 8);
    assert_int_equal(atomic_load(&s->consecutive_failures), 0);
    assert_int_equal(atomic_load(&s->ejections), 1);
    assert_int_equal(atomic_load(&s->eject_streak), 1);
    free(s);
}

/* Back from an ejection and failing again: out at once (one failure is enough), for twice as
 * long each time, up to max_cooldown_ms. */
static void test_cooldown_doubles_on_repeat(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    fail_n(s, &health3, 3, false, T0);
    int64_t now = T0 + 1000;
    static const long want[] = {2000, 4000, 8000, 8000, 8000};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        assert_true(backend_available(s, now, NULL));
        backend_record_failure(s, &health3, i % 2 == 0, now);
        assert_false(backend_available(s, now, NULL));
        assert_int_equal(until_of(s), now + want[i]);
        assert_int_equal(reason_of(s),
                         i % 2 == 0 ? BACKEND_EJECT_UNREACHABLE : BACKEND_EJECT_FAILING);
        assert_int_equal(atomic_load(&s->ejections), i + 2);
        assert_int_equal(atomic_load(&s->eject_streak), i + 2);
        now += want[i];
    }
    free(s);

    /* A cap that is not a power-of-two multiple of the first cooldown is still the cap. */
    struct config_health h = health3;
    h.cooldown_ms = 3000;
    h.max_cooldown_ms = 10000;
    s = state_new();
    fail_n(s, &h, 3, false, T0);
    assert_int_equal(until_of(s), T0 + 3000);
    backend_record_failure(s, &h, false, T0 + 3000);
    assert_int_equal(until_of(s), T0 + 3000 + 6000);
    backend_record_failure(s, &h, false, T0 + 9000);
    assert_int_equal(until_of(s), T0 + 9000 + 10000);
    free(s);
}

/* A success ends the streak: the next ejection needs eject_after_failures again and lasts the
 * first cooldown. A success between failures restarts their count. */
static void test_success_resets(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    fail_n(s, &health3, 3, false, T0);
    backend_record_failure(s, &health3, false, T0 + 1000); /* on trial: 2000 */
    assert_int_equal(until_of(s), T0 + 3000);
    backend_record_success(s, 0.1, 0.2);
    assert_int_equal(atomic_load(&s->eject_streak), 0);
    fail_n(s, &health3, 2, false, T0 + 3000);
    assert_true(backend_available(s, T0 + 3000, NULL));
    backend_record_failure(s, &health3, false, T0 + 3000);
    assert_int_equal(until_of(s), T0 + 3000 + 1000);
    free(s);

    s = state_new();
    fail_n(s, &health3, 2, false, T0);
    backend_record_success(s, 0, 0);
    assert_int_equal(atomic_load(&s->consecutive_failures), 0);
    fail_n(s, &health3, 2, false, T0);
    assert_true(backend_available(s, T0, NULL));
    assert_int_equal(atomic_load(&s->ejections), 0);
    free(s);
}

/* ---- rate limits ------------------------------------------------------------------------------
 */

static void test_rate_limited_pause(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    /* At least a second, whatever retry-after said. */
    backend_record_rate_limited(s, &routing, 500, (int64_t)(T0)*1000, T0);
    assert_int_equal(until_of(s), T0 + 1000);
    backend_record_rate_limited(s, &routing, 0, (int64_t)(T0 + 1) * 1000, T0 + 1);
    assert_int_equal(until_of(s), T0 + 1001);
    assert_int_equal(reason_of(s), BACKEND_EJECT_RATE_LIMITED);
    assert_string_equal(backend_health_name(s, T0), "rate_limited");
    int64_t back = 0;
    assert_false(backend_available(s, T0 + 1000, &back));
    assert_int_equal(back, T0 + 1001);
    /* A pause is not an ejection: no count, no streak. */
    assert_int_equal(atomic_load(&s->ejections), 0);
    assert_int_equal(atomic_load(&s->eject_streak), 0);
    /* A longer retry-after extends it; a shorter one later does not shorten it. */
    backend_record_rate_limited(s, &routing, 30000, (int64_t)(T0)*1000, T0);
    assert_int_equal(until_of(s), T0 + 30000);
    backend_record_rate_limited(s, &routing, 5000, (int64_t)(T0 + 10) * 1000, T0 + 10);
    assert_int_equal(until_of(s), T0 + 30000);
    /* Failures during the pause do not count towards an ejection. */
    fail_n(s, &health3, 5, false, T0 + 20);
    assert_int_equal(atomic_load(&s->consecutive_failures), 0);
    assert_int_equal(reason_of(s), BACKEND_EJECT_RATE_LIMITED);
    assert_true(backend_available(s, T0 + 30000, NULL));
    free(s);

    /* During a longer ejection a 429 changes nothing; past its end it becomes a pause. */
    s = state_new();
    fail_n(s, &health3, 3, false, T0);
    backend_record_rate_limited(s, &routing, 1000, (int64_t)(T0)*1000, T0);
    assert_int_equal(until_of(s), T0 + 1000);
    assert_int_equal(reason_of(s), BACKEND_EJECT_FAILING);
    backend_record_rate_limited(s, &routing, 5000, (int64_t)(T0)*1000, T0);
    assert_int_equal(until_of(s), T0 + 5000);
    assert_int_equal(reason_of(s), BACKEND_EJECT_RATE_LIMITED);
    free(s);
}

/* ---- active probes --------------------------------------------------------------------------- */

static void test_probes_take_down_and_bring_back(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    backend_record_probe(s, &health3, false, T0, T0);
    backend_record_probe(s, &health3, false, T0 + 1, T0 + 1);
    assert_false(atomic_load(&s->probe_down));
    assert_true(backend_available(s, T0 + 1, NULL));
    backend_record_probe(s, &health3, false, T0 + 2, T0 + 2);
    assert_true(atomic_load(&s->probe_down));
    assert_int_equal(atomic_load(&s->last_probe_ms), T0 + 2);
    /* Down has no known end: back_ms 0, and no ejection behind it. */
    int64_t back = -1;
    assert_false(backend_available(s, T0 + 2, &back));
    assert_int_equal(back, 0);
    assert_int_equal(until_of(s), 0);
    assert_string_equal(backend_health_name(s, T0 + 2), "down");
    /* Probe failures are not request failures. */
    assert_int_equal(atomic_load(&s->consecutive_failures), 0);
    assert_int_equal(atomic_load(&s->ejections), 0);
    /* One good probe brings it back and restarts the count. */
    backend_record_probe(s, &health3, true, T0 + 3, T0 + 3);
    assert_false(atomic_load(&s->probe_down));
    assert_int_equal(atomic_load(&s->probe_failures), 0);
    assert_true(backend_available(s, T0 + 3, NULL));
    backend_record_probe(s, &health3, false, T0 + 4, T0 + 4);
    assert_false(atomic_load(&s->probe_down));
    free(s);
}

/* A good probe ends an ejection for being unreachable at once, one for failing answers when
 * its probes failed during it (now they answer again: news) and the node is not a repeat
 * offender, never a rate-limit pause. The streak stays: the next failure ejects at once. */
static void test_good_probe_readmits_unreachable(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    fail_n(s, &health3, 3, true, T0);
    assert_false(backend_available(s, T0 + 10, NULL));
    backend_record_probe(s, &health3, true, T0 + 10, T0 + 10);
    assert_true(backend_available(s, T0 + 10, NULL));
    assert_int_equal(until_of(s), 0);
    assert_int_equal(reason_of(s), BACKEND_EJECT_NONE);
    assert_int_equal(atomic_load(&s->eject_streak), 1);
    backend_record_failure(s, &health3, true, T0 + 20);
    assert_int_equal(until_of(s), T0 + 20 + 2000);
    free(s);

    /* Failing answers while the probes answer all along: a good probe is no news. */
    s = state_new();
    fail_n(s, &health3, 3, false, T0);
    backend_record_probe(s, &health3, true, T0 + 10, T0 + 10);
    assert_int_equal(until_of(s), T0 + 1000);
    assert_int_equal(reason_of(s), BACKEND_EJECT_FAILING);
    assert_false(backend_available(s, T0 + 10, NULL));
    /* Its probes fail too, then answer again: a good probe sent after the ejection ends it. */
    backend_record_probe(s, &health3, false, T0 + 20, T0 + 20);
    backend_record_probe(s, &health3, true, T0 + 21, T0 + 25);
    assert_true(backend_available(s, T0 + 25, NULL));
    assert_int_equal(reason_of(s), BACKEND_EJECT_NONE);
    assert_int_equal(atomic_load(&s->limit.ramp_from_ms), T0 + 25);
    /* On trial: failing again ejects at once (streak 2), and a probe may end that too, once
     * its probes failed and came back... */
    backend_record_failure(s, &health3, false, T0 + 30);
    assert_int_equal(atomic_load(&s->eject_streak), 2);
    backend_record_probe(s, &health3, true, T0 + 40, T0 + 40);
    assert_false(backend_available(s, T0 + 40, NULL));
    backend_record_probe(s, &health3, false, T0 + 45, T0 + 45);
    backend_record_probe(s, &health3, true, T0 + 46, T0 + 46);
    assert_true(backend_available(s, T0 + 46, NULL));
    /* ... but not the third time in a row: its cooldown runs its course. */
    backend_record_failure(s, &health3, false, T0 + 50);
    assert_int_equal(atomic_load(&s->eject_streak), 3);
    backend_record_probe(s, &health3, false, T0 + 55, T0 + 55);
    backend_record_probe(s, &health3, true, T0 + 60, T0 + 60);
    assert_false(backend_available(s, T0 + 60, NULL));
    assert_int_equal(until_of(s), T0 + 50 + 4000);
    free(s);

    /* A good probe sent before the ejection began says nothing either. */
    s = state_new();
    fail_n(s, &health3, 3, false, T0);
    backend_record_probe(s, &health3, false, T0 + 5, T0 + 5);
    backend_record_probe(s, &health3, true, T0 - 5, T0 + 10);
    assert_false(backend_available(s, T0 + 10, NULL));
    free(s);

    s = state_new();
    backend_record_rate_limited(s, &routing, 4000, (int64_t)(T0)*1000, T0);
    backend_record_probe(s, &health3, true, T0 + 10, T0 + 10);
    assert_int_equal(until_of(s), T0 + 4000);
    assert_false(backend_available(s, T0 + 10, NULL));
    free(s);

    /* An unreachable ejection already over is left as it was. */
    s = state_new();
    fail_n(s, &health3, 3, true, T0);
    backend_record_probe(s, &health3, true, T0 + 1000, T0 + 1000);
    assert_int_equal(until_of(s), T0 + 1000);
    assert_int_equal(reason_of(s), BACKEND_EJECT_UNREACHABLE);
    free(s);
}

/* Recent latency: the first sample as it is, then (4 x old + new) / 5. */
static void test_latency_average(void **state)
{
    (void)state;
    struct backend_state *s = state_new();
    backend_record_success(s, 0.1, 0.2);
    assert_int_equal(atomic_load(&s->ttfb_ewma_us), 100000);
    assert_int_equal(atomic_load(&s->duration_ewma_us), 200000);
    backend_record_success(s, 0.2, 0);
    assert_int_equal(atomic_load(&s->ttfb_ewma_us), 120000);
    assert_int_equal(atomic_load(&s->duration_ewma_us), 200000); /* 0: not measured */
    backend_record_success(s, 0, 0.7);
    assert_int_equal(atomic_load(&s->ttfb_ewma_us), 120000);
    assert_int_equal(atomic_load(&s->duration_ewma_us), 300000);
    free(s);
}

/* ---- live prices --------------------------------------------------------------------------- */

static struct config *load(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "health.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    return cfg;
}

static void test_apply_prices(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n"
             "  - name: hp-feed\n"
             "    url: http://127.0.0.1:9/v1\n"
             "    models:\n"
             "      - {name: hp-a, upstream: vendor/a, input_usd_per_mtok: 1,"
             " output_usd_per_mtok: 1}\n"
             "      - {name: hp-b, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n"
             "      - {name: hp-c, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n"
             "      - {name: hp-d, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n"
             "      - {name: hp-e, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n");
    const struct config_backend *b = &cfg->backends[0];
    const char *doc_text =
        "{\"data\": ["
        /* hp-a is asked for by its upstream name, so its own name is not a match. */
        "{\"id\": \"hp-a\", \"pricing\": {\"prompt\": \"0.5\", \"completion\": \"0.5\"}},"
        "{\"id\": \"vendor/a\", \"pricing\": {\"prompt\": \"0.000002\", \"completion\": 8e-6}},"
        "{\"id\": \"hp-b\", \"pricing\": {\"prompt\": \"-0.000001\", \"completion\": \"0\"}},"
        "{\"id\": \"hp-c\", \"pricing\": {\"prompt\": \"0.000001x\", \"completion\": \"0\"}},"
        "{\"id\": \"hp-d\", \"pricing\": {\"prompt\": \"0\", \"completion\": \"0\"}},"
        "{\"id\": \"hp-e\", \"pricing\": {\"prompt\": \"1.5\", \"completion\": \"0\"}}]}";
    json_t *doc = json_loads(doc_text, 0, NULL);
    assert_non_null(doc);
    assert_int_equal(health_apply_prices(b, doc, 42), 2);
    json_decref(doc);
    assert_float_equal(backend_input_price(&b->models[0]), 2.0, 1e-9);
    assert_float_equal(backend_output_price(&b->models[0]), 8.0, 1e-9);
    assert_int_equal(atomic_load(&b->models[0].price->updated_ms), 42);
    /* Negative, not a number, above a dollar a token: the config's prices stay. */
    static const int refused[] = {1, 2, 4};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const struct config_model *m = &b->models[refused[i]];
        assert_false(atomic_load(&m->price->live));
        assert_float_equal(backend_input_price(m), 1, 0);
        assert_float_equal(backend_output_price(m), 1, 0);
    }
    /* A free model is a price. */
    assert_true(atomic_load(&b->models[3].price->live));
    assert_float_equal(backend_input_price(&b->models[3]), 0, 0);
    assert_float_equal(backend_output_price(&b->models[3]), 0, 0);
    /* A document without data prices nothing. */
    doc = json_loads("{\"models\": []}", 0, NULL);
    assert_int_equal(health_apply_prices(b, doc, 43), 0);
    json_decref(doc);
    config_unref(cfg);
}

/* ---- the health thread against a real server ------------------------------------------------ */

struct node {
    struct MHD_Daemon *d;
    atomic_int models_gets; /* GET <base>/models */
    atomic_int others;
};

static enum MHD_Result node_answer(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_data_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    struct node *n = cls;
    bool models = !strcmp(method, "GET") && !strcmp(url, "/v1/models");
    atomic_fetch_add(models ? &n->models_gets : &n->others, 1);
    static const char body[] = "{\"object\":\"list\",\"data\":[]}";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(sizeof body - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, models ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, r);
    MHD_destroy_response(r);
    return ret;
}

static bool wait_for(bool (*pred)(void *), void *arg, double max_s)
{
    double end = harness_now_s() + max_s;
    while (!pred(arg)) {
        if (harness_now_s() > end)
            return false;
        nanosleep(&(struct timespec){0, 5 * 1000 * 1000}, NULL);
    }
    return true;
}

static bool is_down(void *arg)
{
    return atomic_load(&((struct backend_state *)arg)->probe_down);
}

static bool is_available(void *arg)
{
    return backend_available(arg, clock_mono_ms(), NULL);
}

static void test_health_thread_probes(void **state)
{
    (void)state;
    int port = harness_free_port();
    assert_true(port > 0);
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "health: {interval_ms: 50, timeout_ms: 300, eject_after_failures: 2,"
             " cooldown_ms: 600000, max_cooldown_ms: 600000}\n"
             "backends:\n"
             "  - name: ht-node\n"
             "    url: http://127.0.0.1:%d/v1\n"
             "    models:\n"
             "      - {name: ht-m, input_usd_per_mtok: 1, output_usd_per_mtok: 1}\n",
             port);
    struct config *cfg = load(yaml);
    struct backend_state *s = cfg->backends[0].state;
    atomic_store(&s->probe_down, false);
    atomic_store(&s->probe_failures, 0);

    /* Nothing listens: two failed probes take it down. */
    struct health *h = health_start(cfg);
    assert_non_null(h);
    assert_true(wait_for(is_down, s, 10));
    assert_false(backend_available(s, clock_mono_ms(), NULL));
    assert_string_equal(backend_health_name(s, clock_mono_ms()), "down");

    /* Requests found it unreachable too: ejected for ten minutes... */
    fail_n(s, &cfg->health, 2, true, clock_mono_ms());
    assert_int_equal(reason_of(s), BACKEND_EJECT_UNREACHABLE);

    /* ... until the node answers: the next good probe brings it back, ejection and all. */
    struct node n = {0};
    n.d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, (uint16_t)port,
                           NULL, NULL, node_answer, &n, MHD_OPTION_END);
    assert_non_null(n.d);
    assert_true(wait_for(is_available, s, 10));
    assert_false(atomic_load(&s->probe_down));
    assert_int_equal(reason_of(s), BACKEND_EJECT_NONE);
    assert_true(atomic_load(&n.models_gets) >= 1);
    assert_int_equal(atomic_load(&n.others), 0);
    assert_true(atomic_load(&s->last_probe_ms) > 0);

    health_stop(h);
    MHD_stop_daemon(n.d);
    config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_eject_after_failures),
        cmocka_unit_test(test_late_failures_do_not_extend),
        cmocka_unit_test(test_cooldown_doubles_on_repeat),
        cmocka_unit_test(test_success_resets),
        cmocka_unit_test(test_rate_limited_pause),
        cmocka_unit_test(test_probes_take_down_and_bring_back),
        cmocka_unit_test(test_good_probe_readmits_unreachable),
        cmocka_unit_test(test_latency_average),
        cmocka_unit_test(test_apply_prices),
        cmocka_unit_test(test_health_thread_probes),
    };
    return cmocka_run_group_tests_name("health", tests, NULL, NULL);
}

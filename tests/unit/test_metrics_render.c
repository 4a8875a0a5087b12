/* Unit tests for the rest of a /metrics scrape: the counters rendered even when zero (cache,
 * savings) or only with Redis (Redis, ledger), the backends' gauges (routing/backend.c), buffer
 * caps, and the whole text as /metrics serves it. Shards, labels and histograms are in
 * test_metrics.c; reading the text back is tests/unit/scrape.h.
 *
 * Label tables and backend states are process-wide: every test uses names of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "config/config.h"
#include "metrics/metrics.h"
#include "routing/backend.h"
#include "tests/unit/scrape.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* What /metrics appends after the shards: build info, then the backends' gauges. */
static int render_backends(struct buf *out, const struct config *cfg)
{
    if (metrics_render_build_info(out))
        return -1;
    return backend_render_metrics(out, cfg);
}

static char *render_cfg(const struct config *cfg)
{
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(render_backends(&out, cfg), 0);
    assert_non_null(out.data);
    char *text = buf_steal(&out, NULL);
    scrape_assert_valid(text);
    return text;
}

static void test_cache_and_savings(void **state)
{
    (void)state;
    struct metrics_shard *s[3] = {scrape_shard(), scrape_shard(), scrape_shard()};
    char *text = scrape_render(s, 3);
    /* Always rendered, zero when nothing happened. */
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"hit\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"miss\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"bypass\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_cache_savings_usd_total"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_routing_savings_usd_total"), 0);
    free(text);
    METRICS_ADD(s[0]->cache[METRICS_CACHE_HIT], 3);
    METRICS_ADD(s[2]->cache[METRICS_CACHE_HIT], 1);
    METRICS_ADD(s[1]->cache[METRICS_CACHE_MISS], 7);
    METRICS_ADD(s[0]->cache[METRICS_CACHE_BYPASS], 2);
    METRICS_ADD(s[2]->cache[METRICS_CACHE_BYPASS], 5);
    METRICS_ADD(s[0]->cache_savings, 0.5);
    METRICS_ADD(s[1]->cache_savings, 0.25);
    METRICS_ADD(s[2]->routing_savings, 1.5);
    METRICS_ADD(s[0]->routing_savings, 0.001);
    text = scrape_render(s, 3);
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"hit\"}"), 4);
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"miss\"}"), 7);
    assert_int_equal(scrape_sample(text, "tollgate_cache_requests_total{result=\"bypass\"}"), 7);
    assert_float_equal(scrape_sample(text, "tollgate_cache_savings_usd_total"), 0.75, 1e-12);
    assert_float_equal(scrape_sample(text, "tollgate_routing_savings_usd_total"), 1.501, 1e-12);
    assert_non_null(strstr(text, "# TYPE tollgate_cache_requests_total counter\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_cache_savings_usd_total counter\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_routing_savings_usd_total counter\n"));
    free(text);
    for (int i = 0; i < 3; i++)
        metrics_shard_free(s[i]);
}

static void test_redis_and_ledger(void **state)
{
    (void)state;
    struct metrics_shard *s[3] = {scrape_shard(), scrape_shard(), scrape_shard()};
    char *text = scrape_render(s, 3);
    /* No Redis configured: no Redis or ledger series at all. */
    assert_null(strstr(text, "tollgate_redis_"));
    assert_null(strstr(text, "tollgate_ledger_"));
    free(text);
    atomic_store(&s[0]->redis_up, 1);
    atomic_store(&s[1]->redis_up, 0);
    METRICS_ADD(s[0]->redis_errors, 2);
    METRICS_ADD(s[1]->redis_errors, 3);
    METRICS_ADD(s[1]->redis_timeouts, 1);
    METRICS_ADD(s[0]->redis_reconnects, 4);
    METRICS_ADD(s[0]->ledger_written, 10);
    METRICS_ADD(s[1]->ledger_written, 5);
    METRICS_ADD(s[1]->ledger_spooled, 2);
    METRICS_ADD(s[0]->ledger_replayed, 1);
    METRICS_ADD(s[1]->ledger_dropped, 1);
    METRICS_ADD(s[1]->ledger_spool_bytes, 4096);
    METRICS_ADD(s[0]->ledger_held, 3);
    METRICS_ADD(s[1]->ledger_held, 4);
    METRICS_ADD(s[1]->ledger_held_bytes, 2800);
    text = scrape_render(s, 3);
    assert_int_equal(scrape_sample(text, "tollgate_redis_errors_total"), 5);
    assert_int_equal(scrape_sample(text, "tollgate_redis_timeouts_total"), 1);
    assert_int_equal(scrape_sample(text, "tollgate_redis_reconnects_total"), 4);
    assert_float_equal(scrape_sample(text, "tollgate_redis_up"), 0.5, 1e-12);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_records_total{outcome=\"written\"}"), 15);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_records_total{outcome=\"spooled\"}"), 2);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_records_total{outcome=\"replayed\"}"), 1);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_records_total{outcome=\"dropped\"}"), 1);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_spool_bytes"), 4096);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_held_records"), 7);
    assert_int_equal(scrape_sample(text, "tollgate_ledger_held_bytes"), 2800);
    free(text);
    for (int i = 0; i < 3; i++)
        metrics_shard_free(s[i]);
}

static struct config *load_config(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "metrics.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    return cfg;
}

static struct config_backend *backend_named(struct config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_backends; i++)
        if (!strcmp(cfg->backends[i].name, name))
            return &cfg->backends[i];
    fail_msg("no backend %s", name);
    return NULL;
}

static void test_render_backends(void **state)
{
    (void)state;
    struct config *cfg = load_config("backends:\n"
                                     "  - name: rb-alpha\n"
                                     "    url: http://127.0.0.1:9000/a\n"
                                     "    models:\n"
                                     "      - name: rb-m\n"
                                     "        input_usd_per_mtok: 2.5\n"
                                     "        output_usd_per_mtok: 10\n"
                                     "      - name: \"rb-\\\"odd\\\\model\\n\"\n"
                                     "        input_usd_per_mtok: 0.125\n"
                                     "        output_usd_per_mtok: 0\n"
                                     "  - name: rb-beta\n"
                                     "    url: http://127.0.0.1:9000/b\n"
                                     "    models:\n"
                                     "      - name: rb-m\n"
                                     "        input_usd_per_mtok: 3\n"
                                     "        output_usd_per_mtok: 1.75\n");
    struct config_backend *a = backend_named(cfg, "rb-alpha");
    struct config_backend *b = backend_named(cfg, "rb-beta");
    assert_string_equal(a->models[1].name, "rb-\"odd\\model\n");
    /* Backend states are process-wide, by name: set them to what this test expects. */
    int64_t now = clock_mono_ms();
    atomic_store(&a->state->inflight, 3);
    atomic_store(&a->state->ejections, 0);
    atomic_store(&a->state->ejected_until_ms, 0);
    atomic_store(&a->state->probe_down, false);
    atomic_store(&b->state->inflight, 0);
    atomic_store(&b->state->ejections, 2);
    atomic_store(&b->state->ejected_until_ms, now + 600000);
    atomic_store(&b->state->probe_down, false);

    char *text = render_cfg(cfg);
    const char *info = strstr(text, "\ntollgate_build_info{version=\"");
    assert_non_null(info);
    const char *v = info + strlen("\ntollgate_build_info{version=\"");
    assert_true(*v && *v != '"');
    assert_non_null(strstr(v, "\"} 1\n"));
    assert_int_equal(scrape_sample(text, "tollgate_backend_up{backend=\"rb-alpha\"}"), 1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_up{backend=\"rb-beta\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_backend_inflight{backend=\"rb-alpha\"}"), 3);
    assert_int_equal(scrape_sample(text, "tollgate_backend_inflight{backend=\"rb-beta\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_backend_ejections_total{backend=\"rb-alpha\"}"),
                     0);
    assert_int_equal(scrape_sample(text, "tollgate_backend_ejections_total{backend=\"rb-beta\"}"),
                     2);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-m\",type=\"input\"}"),
                       2.5, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-m\",type=\"output\"}"),
                       10, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-\\\"odd\\\\model\\n\",type=\"input\"}"),
                       0.125, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-\\\"odd\\\\model\\n\",type=\"output\"}"),
                       0, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-beta\","
                                     "model=\"rb-m\",type=\"input\"}"),
                       3, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-beta\","
                                     "model=\"rb-m\",type=\"output\"}"),
                       1.75, 1e-12);
    assert_non_null(strstr(text, "# TYPE tollgate_backend_up gauge\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_backend_ejections_total counter\n"));
    free(text);

    /* Live prices override the config's; probes failing take a backend down. */
    backend_set_price(a->models[0].price, 1.5, 6, now);
    atomic_store(&a->state->probe_down, true);
    atomic_store(&b->state->ejected_until_ms, 0);
    text = render_cfg(cfg);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-m\",type=\"input\"}"),
                       1.5, 1e-12);
    assert_float_equal(scrape_sample(text,
                                     "tollgate_backend_price_usd_per_mtok{backend=\"rb-alpha\","
                                     "model=\"rb-m\",type=\"output\"}"),
                       6, 1e-12);
    assert_int_equal(scrape_sample(text, "tollgate_backend_up{backend=\"rb-alpha\"}"), 0);
    assert_int_equal(scrape_sample(text, "tollgate_backend_up{backend=\"rb-beta\"}"), 1);
    free(text);
    atomic_store(&a->state->probe_down, false);
    atomic_store(&a->state->inflight, 0);

    /* backend_attach() gave the config's names their labels: the pairs render by name. */
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_attempt(s[0], a->state->metric_backend, a->models[1].price->metric_pair,
                            METRICS_OUTCOME_BROKEN, 0.2);
    const struct config_route *r = config_find_route(cfg, "rb-m");
    assert_non_null(r);
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, r->metric_model, 200, 0.2);
    text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"rb-alpha\","
                                         "model=\"rb-\\\"odd\\\\model\\n\",outcome=\"broken\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_duration_seconds_count{"
                                         "backend=\"rb-alpha\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                         "model=\"rb-m\",status=\"200\"}"),
                     1);
    free(text);
    metrics_shard_free(s[0]);
    config_unref(cfg);
}

/* Rendering appends; a buffer too small for the text is an error, never an overflow. */
static void test_render_into_small_buffer(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "small-model", NULL);
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "small-b", "small-model");
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, m, 200, 0.2);
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, p, 0, 10, 10, 0.1);
    char *full = scrape_render(s, 1);
    size_t len = strlen(full);
    static const size_t fractions[] = {0, 1, 2, 3, 5, 10, 50, 90, 99};
    for (size_t i = 0; i < N(fractions); i++) {
        size_t max = len * fractions[i] / 100;
        struct buf out;
        buf_init(&out, max);
        assert_int_equal(metrics_render(&out, s, 1), -1);
        assert_true(out.len <= max);
        if (out.data)
            assert_int_equal(strlen(out.data), out.len);
        buf_free(&out);
    }
    struct buf out;
    buf_init(&out, len - 1);
    assert_int_equal(metrics_render(&out, s, 1), -1);
    assert_true(out.len <= len - 1);
    buf_free(&out);
    /* Exactly enough is enough. */
    buf_init(&out, len);
    assert_int_equal(metrics_render(&out, s, 1), 0);
    assert_int_equal(out.len, len);
    assert_string_equal(out.data, full);
    buf_free(&out);
    /* Appends after what the buffer holds. */
    buf_init(&out, 1 << 20);
    assert_int_equal(buf_append_str(&out, "# prefix\n"), BUF_OK);
    assert_int_equal(metrics_render(&out, s, 1), 0);
    assert_int_equal(strncmp(out.data, "# prefix\n", 9), 0);
    assert_string_equal(out.data + 9, full);
    buf_free(&out);
    free(full);

    /* The backends' gauges too. */
    struct config *cfg = load_config("backends:\n"
                                     "  - name: small-b\n"
                                     "    url: http://127.0.0.1:9000/s\n"
                                     "    models:\n"
                                     "      - name: small-model\n"
                                     "        input_usd_per_mtok: 1\n"
                                     "        output_usd_per_mtok: 2\n");
    full = render_cfg(cfg);
    len = strlen(full);
    for (size_t max = 0; max < len; max += len / 17 + 1) {
        buf_init(&out, max);
        assert_int_equal(render_backends(&out, cfg), -1);
        assert_true(out.len <= max);
        buf_free(&out);
    }
    buf_init(&out, len);
    assert_int_equal(render_backends(&out, cfg), 0);
    assert_string_equal(out.data, full);
    buf_free(&out);
    free(full);
    config_unref(cfg);
    metrics_shard_free(s[0]);
}

/* Everything at once, as /metrics serves it: a well-formed text promtool accepts. */
static void test_whole_scrape(void **state)
{
    (void)state;
    struct config *cfg = load_config("backends:\n"
                                     "  - name: whole-b\n"
                                     "    url: http://127.0.0.1:9000/w\n"
                                     "    models:\n"
                                     "      - name: whole-m\n"
                                     "        input_usd_per_mtok: 1\n"
                                     "        output_usd_per_mtok: 2\n"
                                     "keys:\n"
                                     "  - name: whole-key\n"
                                     "    key: sk-whole-secret\n");
    const struct config_route *r = config_find_route(cfg, "whole-m");
    assert_non_null(r);
    struct config_backend *b = backend_named(cfg, "whole-b");
    unsigned m = r->metric_model, pair = b->models[0].price->metric_pair;
    unsigned be = b->state->metric_backend, key = cfg->keys[0].metric_key;
    assert_true(m && pair && be && key);
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    for (int i = 0; i < 2; i++) {
        metrics_observe_request(s[i], METRICS_ROUTE_CHAT, m, 200, 0.4);
        metrics_observe_request(s[i], METRICS_ROUTE_EMBEDDINGS, m, 418, 0.01);
        metrics_observe_request(s[i], METRICS_ROUTE_OTHER, 0, 404, 0.001);
        metrics_observe_ttft(s[i], METRICS_ROUTE_CHAT, m, 0.1, 1);
        metrics_observe_overhead(s[i], 0.00003);
        metrics_observe_attempt(s[i], be, pair, METRICS_OUTCOME_SUCCESS, 0.3);
        metrics_observe_usage(s[i], METRICS_ROUTE_CHAT, m, pair, key, 1000, 100, 0.0012);
        metrics_observe_usage(s[i], METRICS_ROUTE_EMBEDDINGS, m, pair, key, 50, 0, 0.00005);
        METRICS_ADD(s[i]->cache[METRICS_CACHE_MISS], 1);
        atomic_store(&s[i]->redis_up, 1);
    }
    struct buf out;
    buf_init(&out, 16 << 20);
    assert_int_equal(metrics_render(&out, s, 2), 0);
    assert_int_equal(render_backends(&out, cfg), 0);
    char *text = buf_steal(&out, NULL);
    scrape_assert_valid(text);
    assert_float_equal(scrape_sample(text, "tollgate_key_cost_usd_total{key=\"whole-key\"}"),
                       2 * (0.0012 + 0.00005), 1e-12);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"embeddings\","
                                         "model=\"whole-m\",status=\"4xx\"}"),
                     2);
    if (!scrape_promtool(text))
        fprintf(stderr, "promtool not found: skipped its check\n");
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
    config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cache_and_savings), cmocka_unit_test(test_redis_and_ledger),
        cmocka_unit_test(test_render_backends),   cmocka_unit_test(test_render_into_small_buffer),
        cmocka_unit_test(test_whole_scrape),
    };
    return cmocka_run_group_tests_name("metrics_render", tests, NULL, NULL);
}

/* Unit tests for gateway/status.c: the page's Content-Security-Policy names the SHA-256 of its
 * inline script and style (checked against OpenSSL), /admin/status sums the shards per backend
 * and per key, and the health reasons say why.
 *
 * Label tables and backend states are process-wide: every test uses names of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "config/config.h"
#include "gateway/status.h"
#include "metrics/metrics.h"
#include "routing/backend.h"

#include <openssl/evp.h>
#include <openssl/sha.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The 'sha256-…' source of the text between <tag> and </tag> (the first of them). */
static void expected_hash(const char *tag, char *out, size_t cap)
{
    char open[16], close[16];
    snprintf(open, sizeof open, "<%s>", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    char *page = strndup((const char *)status_html, status_html_len);
    assert_non_null(page);
    char *s = strstr(page, open);
    assert_non_null(s);
    s += strlen(open);
    char *e = strstr(s, close);
    assert_non_null(e);
    unsigned char sum[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)s, (size_t)(e - s), sum);
    unsigned char b64[64];
    EVP_EncodeBlock(b64, sum, sizeof sum);
    snprintf(out, cap, "'sha256-%s'", b64);
    assert_null(strstr(e + strlen(close), open)); /* one of each: the policy names them all */
    free(page);
}

static void test_csp(void **state)
{
    (void)state;
    const char *csp = status_csp();
    assert_non_null(csp);
    char want[128];
    expected_hash("script", want, sizeof want);
    char *script_src = strstr(csp, "script-src ");
    assert_non_null(script_src);
    assert_memory_equal(script_src + strlen("script-src "), want, strlen(want));
    expected_hash("style", want, sizeof want);
    char *style_src = strstr(csp, "style-src ");
    assert_non_null(style_src);
    assert_memory_equal(style_src + strlen("style-src "), want, strlen(want));
    assert_non_null(strstr(csp, "default-src 'none'"));
    assert_non_null(strstr(csp, "connect-src 'self'"));
    assert_non_null(strstr(csp, "frame-ancestors 'none'"));
    assert_null(strstr(csp, "unsafe"));
    assert_ptr_equal(status_csp(), csp); /* computed once */
}

static struct config *load_config(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "status.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    return cfg;
}

static const char *const two_backends = "listen: 127.0.0.1:0\n"
                                        "backends:\n"
                                        "  - name: st-cheap\n"
                                        "    url: http://127.0.0.1:9000/a\n"
                                        "    models:\n"
                                        "      - name: st-m\n"
                                        "        input_usd_per_mtok: 1\n"
                                        "        output_usd_per_mtok: 2\n"
                                        "      - name: st-e\n"
                                        "        input_usd_per_mtok: 0.5\n"
                                        "        output_usd_per_mtok: 0\n"
                                        "  - name: st-dear\n"
                                        "    url: http://127.0.0.1:9000/b\n"
                                        "    models:\n"
                                        "      - name: st-m\n"
                                        "        input_usd_per_mtok: 3\n"
                                        "        output_usd_per_mtok: 4\n";

static json_t *backend_in(json_t *doc, const char *name)
{
    json_t *b;
    size_t i;
    json_array_foreach (json_object_get(doc, "backends"), i, b) {
        if (!strcmp(json_string_value(json_object_get(b, "name")), name))
            return b;
    }
    fail_msg("no backend %s in /admin/status", name);
    return NULL;
}

static double num(json_t *o, const char *k)
{
    json_t *v = json_object_get(o, k);
    assert_non_null(v);
    return json_number_value(v);
}

static void test_sums(void **state)
{
    (void)state;
    struct config *cfg = load_config(two_backends);
    const struct config_backend *cheap = &cfg->backends[0], *dear = &cfg->backends[1];
    unsigned ab = cheap->state->metric_backend, bb = dear->state->metric_backend;
    unsigned am = cheap->models[0].price->metric_pair, ae = cheap->models[1].price->metric_pair;
    unsigned bm = dear->models[0].price->metric_pair;
    unsigned model = metrics_label(METRICS_LABEL_MODEL, "st-m", NULL);
    unsigned k1 = metrics_label(METRICS_LABEL_KEY, "st-key-small", NULL);
    unsigned k2 = metrics_label(METRICS_LABEL_KEY, "st-key \"big\"\n", NULL);
    struct metrics_shard *s[2] = {metrics_shard_new(), metrics_shard_new()};
    assert_non_null(s[0]);
    assert_non_null(s[1]);

    /* The cheap node: 3 answers on two workers, one 5xx, one 400 the caller caused. */
    metrics_observe_attempt(s[0], ab, am, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[1], ab, am, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[1], ab, ae, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[0], ab, am, METRICS_OUTCOME_SERVER_ERROR, 0.1);
    metrics_observe_attempt(s[0], ab, am, METRICS_OUTCOME_CLIENT_ERROR, 0.1);
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, model, am, k1, 100, 50, 0.25);
    metrics_observe_usage(s[1], METRICS_ROUTE_CHAT, model, am, k2, 10, 5, 1.5);
    metrics_observe_usage(s[1], METRICS_ROUTE_EMBEDDINGS, model, ae, k2, 7, 0, 0.125);
    /* The dear one: a 429 and a timeout. */
    metrics_observe_attempt(s[1], bb, bm, METRICS_OUTCOME_RATE_LIMITED, 0.1);
    metrics_observe_attempt(s[1], bb, bm, METRICS_OUTCOME_TIMEOUT, 0.1);
    for (int i = 0; i < 3; i++)
        metrics_observe_request(s[i % 2], METRICS_ROUTE_CHAT, model, 200, 0.1);
    metrics_observe_request(s[1], METRICS_ROUTE_CHAT, model, 502, 0.1);
    METRICS_ADD(s[0]->routing_savings, 0.75);
    METRICS_ADD(s[0]->cache[METRICS_CACHE_HIT], 2);
    METRICS_ADD(s[1]->cache[METRICS_CACHE_HIT], 1);
    METRICS_ADD(s[1]->cache[METRICS_CACHE_MISS], 4);

    json_t *doc = status_json(cfg, s, 2);
    assert_non_null(doc);
    json_t *t = json_object_get(doc, "totals");
    assert_int_equal(num(t, "requests"), 4);
    assert_float_equal(num(t, "spend_usd"), 1.875, 1e-12);
    assert_float_equal(num(t, "routing_savings_usd"), 0.75, 1e-12);
    assert_int_equal(num(t, "cache_hits"), 3);
    assert_int_equal(num(t, "cache_misses"), 4);
    assert_int_equal(num(t, "input_tokens"), 117);
    assert_int_equal(num(t, "output_tokens"), 55);

    json_t *a = backend_in(doc, "st-cheap");
    assert_int_equal(num(a, "attempts"), 5);
    assert_int_equal(num(a, "failed"), 1); /* the 400 was the caller's */
    assert_int_equal(num(a, "rate_limited"), 0);
    assert_float_equal(num(a, "spend_usd"), 1.875, 1e-12);
    json_t *b = backend_in(doc, "st-dear");
    assert_int_equal(num(b, "attempts"), 2);
    assert_int_equal(num(b, "failed"), 1);
    assert_int_equal(num(b, "rate_limited"), 1);
    assert_float_equal(num(b, "spend_usd"), 0, 0);

    /* Dearest first, by name as written (the exposition escapes undone). */
    json_t *keys = json_object_get(doc, "top_keys");
    assert_int_equal(json_array_size(keys), 2);
    assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "name")),
                        "st-key \"big\"\n");
    assert_float_equal(num(json_array_get(keys, 0), "spend_usd"), 1.625, 1e-12);
    assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 1), "name")),
                        "st-key-small");
    json_decref(doc);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
    config_unref(cfg);
}

static void test_top_keys_capped(void **state)
{
    (void)state;
    struct config *cfg = load_config(two_backends);
    struct metrics_shard *s = metrics_shard_new();
    assert_non_null(s);
    unsigned pair = cfg->backends[0].models[0].price->metric_pair;
    for (int i = 0; i < STATUS_TOP_KEYS + 5; i++) {
        char name[32];
        snprintf(name, sizeof name, "st-many-%02d", i);
        unsigned k = metrics_label(METRICS_LABEL_KEY, name, NULL);
        metrics_observe_usage(s, METRICS_ROUTE_CHAT, 0, pair, k, 1, 1, 0.001 * (i + 1));
    }
    json_t *doc = status_json(cfg, &s, 1);
    json_t *keys = json_object_get(doc, "top_keys");
    assert_int_equal(json_array_size(keys), STATUS_TOP_KEYS);
    assert_string_equal(json_string_value(json_object_get(json_array_get(keys, 0), "name")),
                        "st-many-14");
    for (size_t i = 1; i < STATUS_TOP_KEYS; i++)
        assert_true(num(json_array_get(keys, i - 1), "spend_usd") >=
                    num(json_array_get(keys, i), "spend_usd"));
    json_decref(doc);
    metrics_shard_free(s);
    config_unref(cfg);
}

static void test_health_reasons(void **state)
{
    (void)state;
    struct config *cfg = load_config("listen: 127.0.0.1:0\n"
                                     "health: {eject_after_failures: 2, cooldown_ms: 30000}\n"
                                     "backends:\n"
                                     "  - name: st-reason\n"
                                     "    url: http://127.0.0.1:9000/r\n"
                                     "    models:\n"
                                     "      - name: st-r\n"
                                     "        input_usd_per_mtok: 1\n"
                                     "        output_usd_per_mtok: 1\n");
    const struct config_backend *b = &cfg->backends[0];
    struct backend_state *s = b->state;
    char why[256];
    int64_t now = clock_mono_ms();
    backend_record_success(s, 0.01, 0.02);
    status_health_reason(cfg, b, now, why, sizeof why);
    assert_string_equal(backend_health_name(s, now), "up");
    assert_non_null(strstr(why, "serving"));

    backend_record_failure(s, &cfg->health, false, now);
    status_health_reason(cfg, b, now, why, sizeof why);
    assert_string_equal(why, "serving; 1 failure in a row");

    backend_record_failure(s, &cfg->health, false, now);
    assert_string_equal(backend_health_name(s, now), "ejected");
    status_health_reason(cfg, b, now, why, sizeof why);
    assert_non_null(strstr(why, "failing (5xx, timeouts or bad answers)"));
    assert_non_null(strstr(why, "back in 30 s"));

    for (int i = 0; i < 5; i++)
        backend_record_probe(s, &cfg->health, false, now, now);
    assert_string_equal(backend_health_name(s, now), "down");
    status_health_reason(cfg, b, now, why, sizeof why);
    assert_non_null(strstr(why, "health probes failing"));

    /* A short buffer is cut, never overrun. */
    char small[8];
    status_health_reason(cfg, b, now, small, sizeof small);
    assert_int_equal(strlen(small), sizeof small - 1);
    config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_csp),
        cmocka_unit_test(test_sums),
        cmocka_unit_test(test_top_keys_capped),
        cmocka_unit_test(test_health_reasons),
    };
    return cmocka_run_group_tests_name("status", tests, NULL, NULL);
}

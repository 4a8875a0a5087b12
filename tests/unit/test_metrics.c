/* Unit tests for metrics/metrics: per-worker shards summed into the Prometheus text, interned
 * label tables, histograms, token usage and backend attempts. The rest of a scrape (fixed
 * counters, the backends' gauges, buffer caps, the whole text) is in test_metrics_render.c;
 * reading the text back is tests/unit/scrape.h.
 *
 * The label tables are process-wide and only ever grow, so every test interns names of its
 * own (prefixed with the test's name) and makes no assumption about which indexes earlier
 * tests took. The cap test fills the tables in a forked child so the parent's stay usable. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "metrics/metrics.h"
#include "tests/unit/scrape.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* Bucket bounds as metrics.c declares them. */
static const double duration_le[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                     0.25,   0.5,   1,      2.5,   5,    10,    30,   60};
static const double overhead_le[] = {5e-06, 1e-05,  2.5e-05, 5e-05, 0.0001, 0.00025, 0.0005,
                                     0.001, 0.0025, 0.005,   0.01,  0.025,  0.1};
static const double genai_tokens_le[] = {
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
#define N(a) (sizeof(a) / sizeof((a)[0]))

static const unsigned named_statuses[] = {200, 201, 204, 206, 301, 302, 304, 400,
                                          401, 403, 404, 405, 408, 409, 413, 415,
                                          422, 429, 499, 500, 501, 502, 503, 504};

static void test_shards_summed(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "sum-model", NULL);
    struct metrics_shard *s[3] = {scrape_shard(), scrape_shard(), scrape_shard()};
    /* Three workers answer the same kind of request. */
    for (int w = 0; w < 3; w++)
        for (int i = 0; i <= w; i++)
            metrics_observe_request(s[w], METRICS_ROUTE_CHAT, m, 200, 0.003);
    metrics_observe_request(s[1], METRICS_ROUTE_CHAT, m, 503, 1.5);
    metrics_observe_request(s[2], METRICS_ROUTE_EMBEDDINGS, m, 200, 0.07);
    METRICS_ADD(s[0]->upstream_errors, 2);
    METRICS_ADD(s[2]->upstream_errors, 1);
    METRICS_ADD(s[0]->retries, 4);
    METRICS_ADD(s[1]->retries, 1);
    METRICS_ADD(s[0]->streams, 5);
    METRICS_ADD(s[1]->streams, 1);
    METRICS_ADD(s[0]->inflight, 3);
    METRICS_ADD(s[1]->inflight, 4);
    METRICS_ADD(s[1]->inflight, -2);
    METRICS_ADD(s[2]->inflight, 1);

    char *text = scrape_render(s, 3);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                         "model=\"sum-model\",status=\"200\"}"),
                     6);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                         "model=\"sum-model\",status=\"503\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"embeddings\","
                                         "model=\"sum-model\",status=\"200\"}"),
                     1);
    /* Series nobody observed are left out. */
    assert_false(scrape_has(text, "tollgate_requests_total{route=\"completions\","
                                  "model=\"sum-model\",status=\"200\"}"));
    assert_false(scrape_has(text, "tollgate_requests_total{route=\"embeddings\","
                                  "model=\"sum-model\",status=\"503\"}"));
    assert_int_equal(scrape_sample(text, "tollgate_request_duration_seconds_count"
                                         "{route=\"chat_completions\"}"),
                     7);
    assert_float_equal(scrape_sample(text, "tollgate_request_duration_seconds_sum"
                                           "{route=\"chat_completions\"}"),
                       6 * 0.003 + 1.5, 1e-12);
    assert_int_equal(scrape_sample(text, "tollgate_upstream_errors_total"), 3);
    assert_int_equal(scrape_sample(text, "tollgate_retries_total"), 5);
    assert_int_equal(scrape_sample(text, "tollgate_streams_total"), 6);
    assert_int_equal(scrape_sample(text, "tollgate_inflight_requests"), 6);
    /* One shard alone counts only its own. */
    char *one = scrape_render(s, 1);
    assert_int_equal(scrape_sample(one, "tollgate_requests_total{route=\"chat_completions\","
                                        "model=\"sum-model\",status=\"200\"}"),
                     1);
    assert_int_equal(scrape_sample(one, "tollgate_inflight_requests"), 3);
    /* Families are declared once, before their samples. */
    assert_non_null(strstr(text, "# TYPE tollgate_requests_total counter\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_request_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_inflight_requests gauge\n"));
    assert_true(strstr(text, "# TYPE tollgate_requests_total") <
                strstr(text, "tollgate_requests_total{"));
    free(one);
    free(text);
    for (int w = 0; w < 3; w++)
        metrics_shard_free(s[w]);
}

static void test_status_labels(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "status-model", NULL);
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    /* Every named code counts under its own label, summed over shards. */
    for (size_t i = 0; i < N(named_statuses); i++)
        for (size_t k = 0; k <= i % 3; k++)
            metrics_observe_request(s[k % 2], METRICS_ROUTE_OTHER, m, named_statuses[i], 0.001);
    /* Others by class. */
    static const struct {
        unsigned code;
        const char *cls;
    } others[] = {{101, "1xx"}, {207, "2xx"}, {299, "2xx"}, {303, "3xx"}, {418, "4xx"},
                  {451, "4xx"}, {402, "4xx"}, {505, "5xx"}, {599, "5xx"}};
    for (size_t i = 0; i < N(others); i++)
        metrics_observe_request(s[i % 2], METRICS_ROUTE_MODELS, m, others[i].code, 0.001);
    char *text = scrape_render(s, 2);
    for (size_t i = 0; i < N(named_statuses); i++) {
        char series[200];
        snprintf(series, sizeof series,
                 "tollgate_requests_total{route=\"other\",model=\"status-model\",status=\"%u\"}",
                 named_statuses[i]);
        assert_int_equal(scrape_sample(text, series), i % 3 + 1);
    }
    /* A named code does not also count in its class. */
    for (const char *c = "12345"; *c; c++) {
        char series[200];
        snprintf(series, sizeof series,
                 "tollgate_requests_total{route=\"other\",model=\"status-model\",status=\"%cxx\"}",
                 *c);
        assert_false(scrape_has(text, series));
    }
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"models\","
                                         "model=\"status-model\",status=\"1xx\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"models\","
                                         "model=\"status-model\",status=\"2xx\"}"),
                     2);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"models\","
                                         "model=\"status-model\",status=\"3xx\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"models\","
                                         "model=\"status-model\",status=\"4xx\"}"),
                     3);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"models\","
                                         "model=\"status-model\",status=\"5xx\"}"),
                     2);
    assert_false(scrape_has(text, "tollgate_requests_total{route=\"models\","
                                  "model=\"status-model\",status=\"418\"}"));
    /* 24 named + 5 classes were all used: 29 series for this model. */
    assert_int_equal(scrape_count(text, "model=\"status-model\",status="), N(named_statuses) + 5);
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

static void test_model_labels(void **state)
{
    (void)state;
    unsigned a = scrape_label(METRICS_LABEL_MODEL, "model-a", NULL);
    unsigned b = scrape_label(METRICS_LABEL_MODEL, "model-b", NULL);
    assert_int_not_equal(a, b);
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, a, 200, 0.01);
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, b, 200, 0.01);
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, b, 200, 0.01);
    /* Index 0, and an index past the table, both count as "other". */
    metrics_observe_request(s[0], METRICS_ROUTE_COMPLETIONS, 0, 200, 0.01);
    metrics_observe_request(s[0], METRICS_ROUTE_COMPLETIONS, METRICS_MAX_MODELS + 7, 200, 0.01);
    char *text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                         "model=\"model-a\",status=\"200\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                         "model=\"model-b\",status=\"200\"}"),
                     2);
    assert_int_equal(scrape_sample(text, "tollgate_requests_total{route=\"completions\","
                                         "model=\"other\",status=\"200\"}"),
                     2);
    free(text);
    metrics_shard_free(s[0]);
}

static void test_request_duration_histogram(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "duration-model", NULL);
    struct metrics_shard *s[3] = {scrape_shard(), scrape_shard(), scrape_shard()};
    /* Every bound, values between, below the first and past the last; an observation equal
     * to a bound belongs to that bucket. */
    double obs[64];
    size_t n = 0;
    for (size_t i = 0; i < N(duration_le); i++) {
        obs[n++] = duration_le[i];
        obs[n++] = duration_le[i] * 1.5;
    }
    obs[n++] = 0;
    obs[n++] = 0.0001;
    obs[n++] = 3600;
    for (size_t i = 0; i < n; i++)
        metrics_observe_request(s[i % 3], METRICS_ROUTE_COMPLETIONS, m, 200, obs[i]);
    char *text = scrape_render(s, 3);
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"completions\"",
                      duration_le, N(duration_le), obs, n);
    /* Inference routes and models always have a histogram, empty ones included; other only
     * when used. */
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"chat_completions\"",
                      duration_le, N(duration_le), NULL, 0);
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"embeddings\"",
                      duration_le, N(duration_le), NULL, 0);
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"models\"", duration_le,
                      N(duration_le), NULL, 0);
    assert_false(scrape_has_line(text, "tollgate_request_duration_seconds_bucket{route=\"other\""));
    free(text);

    /* The models route and other: their own duration series. */
    struct metrics_shard *t[1] = {scrape_shard()};
    metrics_observe_request(t[0], METRICS_ROUTE_MODELS, m, 200, 0.2);
    metrics_observe_request(t[0], METRICS_ROUTE_OTHER, m, 404, 0.3);
    text = scrape_render(t, 1);
    double one = 0.2, other = 0.3;
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"models\"", duration_le,
                      N(duration_le), &one, 1);
    scrape_check_hist(text, "tollgate_request_duration_seconds", "route=\"other\"", duration_le,
                      N(duration_le), &other, 1);
    assert_false(scrape_has_line(text, "gen_ai_client_operation_duration_seconds_bucket"));
    free(text);
    for (int i = 0; i < 3; i++)
        metrics_shard_free(s[i]);
    metrics_shard_free(t[0]);
}

/* Every le label reads back as exactly its bound: no bound is rounded when printed. */
static void test_le_labels_exact(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "le-model", NULL);
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, m, 200, 1);
    metrics_observe_ttft(s[0], METRICS_ROUTE_CHAT, m, 1, 1);
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, 0, 0, 1, 1, 0);
    char *text = scrape_render(s, 1);
    static const struct {
        const char *name, *labels;
        const double *le;
        size_t n;
    } hists[] = {
        {"tollgate_request_duration_seconds", "route=\"chat_completions\"", duration_le,
         N(duration_le)},
        {"tollgate_time_to_first_token_seconds", "model=\"le-model\"", duration_le, N(duration_le)},
        {"tollgate_overhead_seconds", "", overhead_le, N(overhead_le)},
    };
    for (size_t i = 0; i < N(hists); i++) {
        struct scrape_hist h;
        if (!scrape_read_hist(text, hists[i].name, hists[i].labels, &h))
            fail_msg("no histogram %s{%s}", hists[i].name, hists[i].labels);
        assert_int_equal(h.n, hists[i].n + 1);
        for (size_t b = 0; b < hists[i].n; b++)
            if (h.le[b] != hists[i].le[b])
                fail_msg("%s: le label reads %.17g, the bound is %.17g", hists[i].name, h.le[b],
                         hists[i].le[b]);
    }
    free(text);
    metrics_shard_free(s[0]);
}

static void test_overhead_histogram(void **state)
{
    (void)state;
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    char *text = scrape_render(s, 2);
    /* Always there, even empty. */
    scrape_check_hist(text, "tollgate_overhead_seconds", "", overhead_le, N(overhead_le), NULL, 0);
    free(text);
    double obs[40];
    size_t n = 0;
    for (size_t i = 0; i < N(overhead_le); i++) {
        obs[n++] = overhead_le[i];
        obs[n++] = overhead_le[i] * 0.7;
    }
    obs[n++] = 0;
    obs[n++] = 0.5;
    obs[n++] = 2;
    for (size_t i = 0; i < n; i++)
        metrics_observe_overhead(s[i % 2], obs[i]);
    /* A negative overhead (clock skew between the two readings) counts as 0. */
    metrics_observe_overhead(s[0], -0.25);
    obs[n++] = 0;
    text = scrape_render(s, 2);
    scrape_check_hist(text, "tollgate_overhead_seconds", "", overhead_le, N(overhead_le), obs, n);
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

static void test_ttft(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "ttft-model", NULL);
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    double streamed[] = {0.001, 0.05, 0.3, 12};
    double plain[] = {0.02, 2};
    for (size_t i = 0; i < N(streamed); i++)
        metrics_observe_ttft(s[i % 2], METRICS_ROUTE_CHAT, m, streamed[i], 1);
    for (size_t i = 0; i < N(plain); i++)
        metrics_observe_ttft(s[i % 2], METRICS_ROUTE_CHAT, m, plain[i], 0);
    char *text = scrape_render(s, 2);
    double all[] = {0.001, 0.05, 0.3, 12, 0.02, 2};
    scrape_check_hist(text, "tollgate_time_to_first_token_seconds", "model=\"ttft-model\"",
                      duration_le, N(duration_le), all, N(all));
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

static void test_label_interning(void **state)
{
    (void)state;
    unsigned a = scrape_label(METRICS_LABEL_MODEL, "intern-a", NULL);
    assert_true(a < METRICS_MAX_MODELS);
    assert_int_equal(metrics_label(METRICS_LABEL_MODEL, "intern-a", NULL), a);
    /* A name2 means nothing outside pairs. */
    assert_int_equal(metrics_label(METRICS_LABEL_MODEL, "intern-a", "ignored"), a);
    unsigned b = scrape_label(METRICS_LABEL_MODEL, "intern-b", NULL);
    assert_int_not_equal(a, b);
    assert_int_equal(metrics_label(METRICS_LABEL_MODEL, "intern-a", NULL), a);
    /* Kinds are separate tables: the same name may be a model, a backend and a key. */
    unsigned kb = scrape_label(METRICS_LABEL_BACKEND, "intern-a", NULL);
    unsigned kk = scrape_label(METRICS_LABEL_KEY, "intern-a", NULL);
    assert_true(kb < METRICS_MAX_BACKENDS);
    assert_true(kk < METRICS_MAX_KEYS);
    assert_int_equal(metrics_label(METRICS_LABEL_BACKEND, "intern-a", NULL), kb);
    assert_int_equal(metrics_label(METRICS_LABEL_KEY, "intern-a", NULL), kk);
    /* Pairs: both halves count, and the split between them too. */
    unsigned p1 = scrape_label(METRICS_LABEL_PAIR, "intern-b1", "intern-m1");
    unsigned p2 = scrape_label(METRICS_LABEL_PAIR, "intern-b1", "intern-m2");
    unsigned p3 = scrape_label(METRICS_LABEL_PAIR, "intern-b2", "intern-m1");
    unsigned p4 = scrape_label(METRICS_LABEL_PAIR, "intern-b1i", "ntern-m1");
    unsigned p5 = scrape_label(METRICS_LABEL_PAIR, "intern-b1", "");
    assert_true(p1 < METRICS_MAX_PAIRS);
    assert_int_not_equal(p1, p2);
    assert_int_not_equal(p1, p3);
    assert_int_not_equal(p2, p3);
    assert_int_not_equal(p1, p4);
    assert_int_not_equal(p1, p5);
    assert_int_equal(metrics_label(METRICS_LABEL_PAIR, "intern-b1", "intern-m1"), p1);
    assert_int_equal(metrics_label(METRICS_LABEL_PAIR, "intern-b1", "intern-m2"), p2);
    assert_int_equal(metrics_label(METRICS_LABEL_PAIR, "intern-b1", ""), p5);
    /* Nothing to intern. */
    assert_int_equal(metrics_label(METRICS_LABEL_PAIR, "intern-b1", NULL), 0);
    assert_int_equal(metrics_label(METRICS_LABEL_MODEL, NULL, NULL), 0);
    assert_int_equal(metrics_label(METRICS_LABEL_KINDS, "intern-a", NULL), 0);
    assert_int_equal(metrics_label((enum metrics_label_kind)99, "intern-a", NULL), 0);

    /* Pairs render backend and model; index 0 renders other for both. */
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_attempt(s[0], kb, p1, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[0], kb, p3, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[0], kb, p4, METRICS_OUTCOME_SUCCESS, 0.1);
    metrics_observe_attempt(s[0], 0, 0, METRICS_OUTCOME_SUCCESS, 0.1);
    char *text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"intern-b1\","
                                         "model=\"intern-m1\",outcome=\"success\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"intern-b2\","
                                         "model=\"intern-m1\",outcome=\"success\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"intern-b1i\","
                                         "model=\"ntern-m1\",outcome=\"success\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"other\","
                                         "model=\"other\",outcome=\"success\"}"),
                     1);
    assert_int_equal(
        scrape_sample(text, "tollgate_backend_duration_seconds_count{backend=\"intern-a\"}"), 3);
    assert_int_equal(
        scrape_sample(text, "tollgate_backend_duration_seconds_count{backend=\"other\"}"), 1);
    free(text);
    metrics_shard_free(s[0]);
}

static void test_label_escaping(void **state)
{
    (void)state;
    /* Backslash, double quote and line feed are escaped; anything else is kept as is. */
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "esc-\"q\"\\b\\\nl\tx/é", NULL);
    unsigned b = scrape_label(METRICS_LABEL_BACKEND, "esc-\\back", NULL);
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "esc-b\"1", "esc-m\n1");
    unsigned k = scrape_label(METRICS_LABEL_KEY, "esc-key \"team\"\n", NULL);
    /* Interning compares the raw names. */
    assert_int_equal(metrics_label(METRICS_LABEL_MODEL, "esc-\"q\"\\b\\\nl\tx/é", NULL), m);
    assert_int_not_equal(scrape_label(METRICS_LABEL_MODEL, "esc-\\\"q\\\"\\\\b\\\\\\nl\tx/é", NULL),
                         m);
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_request(s[0], METRICS_ROUTE_CHAT, m, 200, 0.01);
    metrics_observe_ttft(s[0], METRICS_ROUTE_CHAT, m, 0.01, 1);
    metrics_observe_attempt(s[0], b, p, METRICS_OUTCOME_TIMEOUT, 0.5);
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, p, k, 10, 5, 0.25);
    char *text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text,
                                   "tollgate_requests_total{route=\"chat_completions\","
                                   "model=\"esc-\\\"q\\\"\\\\b\\\\\\nl\tx/é\",status=\"200\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_time_to_first_token_seconds_count{"
                                         "model=\"esc-\\\"q\\\"\\\\b\\\\\\nl\tx/é\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_duration_seconds_count{"
                                         "backend=\"esc-\\\\back\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"esc-b\\\"1\","
                                         "model=\"esc-m\\n1\",outcome=\"timeout\"}"),
                     1);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"esc-b\\\"1\","
                                         "model=\"esc-m\\n1\",type=\"input\"}"),
                     10);
    assert_float_equal(
        scrape_sample(text, "tollgate_key_cost_usd_total{key=\"esc-key \\\"team\\\"\\n\"}"), 0.25,
        1e-12);
    free(text);
    metrics_shard_free(s[0]);
}

/* Label values of any length keep the text well formed. Runs in a child process: the long
 * names must not reach the parent's tables (and so every later render). */
static void test_long_label_values(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        char name[401];
        memset(name, 'L', 400);
        name[400] = '\0';
        memcpy(name, "long-", 5);
        char quoted[201];
        memset(quoted, '"', 200);
        quoted[200] = '\0';
        memcpy(quoted, "long-", 5);
        /* Past METRICS_LABEL_MAX escaped bytes a name counts as "other". */
        if (metrics_label(METRICS_LABEL_MODEL, name, NULL) ||
            metrics_label(METRICS_LABEL_MODEL, quoted, NULL) ||
            metrics_label(METRICS_LABEL_PAIR, "b", name)) {
            fprintf(stderr, "long labels: a name past the limit got its own label\n");
            _exit(1);
        }
        /* At the limit exactly, with escapes: kept, and every line stays well formed. */
        char edge[METRICS_LABEL_MAX + 1];
        memset(edge, 'E', METRICS_LABEL_MAX);
        edge[METRICS_LABEL_MAX] = '\0';
        memcpy(edge, "edge-\"\\", 7); /* two characters that escape to two bytes each */
        edge[METRICS_LABEL_MAX - 2] = '\0';
        unsigned m = metrics_label(METRICS_LABEL_MODEL, edge, NULL);
        unsigned q = metrics_label(METRICS_LABEL_MODEL, "edge-other", NULL);
        unsigned b = metrics_label(METRICS_LABEL_BACKEND, edge, NULL);
        unsigned p = metrics_label(METRICS_LABEL_PAIR, edge, edge);
        struct metrics_shard *s = metrics_shard_new();
        if (!m || !q || !b || !p || !s) {
            fprintf(stderr, "long labels: no label index or shard\n");
            _exit(1);
        }
        metrics_observe_request(s, METRICS_ROUTE_CHAT, m, 200, 0.01);
        metrics_observe_ttft(s, METRICS_ROUTE_CHAT, m, 0.01, 1);
        metrics_observe_attempt(s, b, p, METRICS_OUTCOME_SUCCESS, 0.5);
        metrics_observe_usage(s, METRICS_ROUTE_COMPLETIONS, q, p, 0, 10, 5, 0.25);
        struct buf out;
        buf_init(&out, 16 << 20);
        int bad = metrics_render(&out, (struct metrics_shard *const[]){s}, 1) != 0;
        const char *where = "";
        const char *why = out.data ? scrape_problem(out.data, &where) : "no text";
        if (why) {
            const char *nl = strchr(where, '\n');
            fprintf(stderr, "long labels: malformed exposition (%s) at line: %.*s\n", why,
                    nl ? (int)(nl - where) : (int)strlen(where), where);
            bad = 1;
        }
        fflush(stderr);
        _exit(bad);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_label_cap(void **state)
{
    (void)state;
    /* Fills every table in a child process: the parent's tables stay as they were. */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        static const enum metrics_label_kind kinds[] = {METRICS_LABEL_MODEL, METRICS_LABEL_BACKEND,
                                                        METRICS_LABEL_PAIR, METRICS_LABEL_KEY};
        static const unsigned caps[] = {METRICS_MAX_MODELS, METRICS_MAX_BACKENDS, METRICS_MAX_PAIRS,
                                        METRICS_MAX_KEYS};
        int bad = 0;
#define CHILD_CHECK(c)                                                                             \
    do {                                                                                           \
        if (!(c)) {                                                                                \
            fprintf(stderr, "cap test: %s failed (line %d)\n", #c, __LINE__);                      \
            bad = 1;                                                                               \
        }                                                                                          \
    } while (0)
        unsigned first[4] = {0}, last[4] = {0};
        for (size_t k = 0; k < 4; k++) {
            unsigned prev = 0;
            bool full = false;
            for (unsigned i = 0; i < caps[k] + 20; i++) {
                char n1[64], n2[64];
                snprintf(n1, sizeof n1, "cap-%zu-%u", k, i);
                snprintf(n2, sizeof n2, "cap-model-%u", i);
                unsigned got = metrics_label(kinds[k], n1, n2);
                if (!got) {
                    full = true;
                    continue;
                }
                /* Past the cap, never a real index again; before it, consecutive. */
                CHILD_CHECK(!full);
                CHILD_CHECK(got < caps[k]);
                CHILD_CHECK(!prev || got == prev + 1);
                if (!first[k])
                    first[k] = got;
                prev = last[k] = got;
            }
            CHILD_CHECK(full);
            CHILD_CHECK(last[k] == caps[k] - 1);
            /* Names interned before the cap keep their index; new ones still get 0. */
            char n1[64], n2[64];
            snprintf(n1, sizeof n1, "cap-%zu-%u", k, 0u);
            snprintf(n2, sizeof n2, "cap-model-%u", 0u);
            CHILD_CHECK(metrics_label(kinds[k], n1, n2) == first[k]);
            CHILD_CHECK(metrics_label(kinds[k], "cap-one-more", "x") == 0);
        }
        /* A full table renders, and what is past the cap counts as other. */
        struct metrics_shard *s = metrics_shard_new();
        CHILD_CHECK(s != NULL);
        if (s) {
            unsigned model_over = metrics_label(METRICS_LABEL_MODEL, "cap-over", NULL);
            unsigned key_over = metrics_label(METRICS_LABEL_KEY, "cap-over", NULL);
            unsigned pair_over = metrics_label(METRICS_LABEL_PAIR, "cap-over", "cap-over");
            CHILD_CHECK(model_over == 0 && key_over == 0 && pair_over == 0);
            for (unsigned i = 0; i < METRICS_MAX_PAIRS; i++)
                metrics_observe_usage(s, METRICS_ROUTE_CHAT, i % METRICS_MAX_MODELS, i,
                                      i % METRICS_MAX_KEYS, 1, 1, 0.5);
            metrics_observe_usage(s, METRICS_ROUTE_CHAT, model_over, pair_over, key_over, 1, 1,
                                  0.5);
            struct buf out;
            buf_init(&out, 64 << 20);
            CHILD_CHECK(metrics_render(&out, (struct metrics_shard *const[]){s}, 1) == 0);
            const char *where = "";
            const char *why = out.data ? scrape_problem(out.data, &where) : "no text";
            if (why) {
                fprintf(stderr, "cap test: %s at %.200s\n", why, where);
                bad = 1;
            }
            if (out.data) {
                /* Key 0 got one usage from the loop's i % 256 == 0 rows, plus the one past
                 * the cap. */
                const char *line =
                    scrape_find(out.data, "tollgate_key_cost_usd_total{key=\"other\"}");
                CHILD_CHECK(line != NULL);
                if (line)
                    CHILD_CHECK(strtod(strchr(line, ' ') + 1, NULL) ==
                                0.5 * (METRICS_MAX_PAIRS / METRICS_MAX_KEYS) + 0.5);
                char series[128];
                snprintf(series, sizeof series, "tollgate_key_cost_usd_total{key=\"cap-3-%u\"}",
                         METRICS_MAX_KEYS - 1 - first[3]);
                CHILD_CHECK(scrape_find(out.data, series) != NULL);
                CHILD_CHECK(scrape_find(out.data, "tollgate_tokens_total{backend=\"other\","
                                                  "model=\"other\",type=\"input\"}") != NULL);
            }
            buf_free(&out);
            metrics_shard_free(s);
        }
        fflush(stderr);
        _exit(bad);
#undef CHILD_CHECK
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void test_usage(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "usage-model", NULL);
    unsigned e = scrape_label(METRICS_LABEL_MODEL, "usage-embed", NULL);
    unsigned p1 = scrape_label(METRICS_LABEL_PAIR, "usage-b1", "usage-model");
    unsigned p2 = scrape_label(METRICS_LABEL_PAIR, "usage-b2", "usage-model");
    unsigned pe = scrape_label(METRICS_LABEL_PAIR, "usage-b1", "usage-embed");
    unsigned k1 = scrape_label(METRICS_LABEL_KEY, "usage-key-1", NULL);
    unsigned k2 = scrape_label(METRICS_LABEL_KEY, "usage-key-2", NULL);
    metrics_pair_describe(p1, "openai", "http://10.0.0.1:8001/v1", "up-1");
    metrics_pair_describe(p2, "openai", "http://10.0.0.1:8002/v1", "up-2");
    metrics_pair_describe(pe, "openai", "http://10.0.0.1:8001/v1", "up-e");
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, p1, k1, 100, 20, 0.5);
    metrics_observe_usage(s[1], METRICS_ROUTE_CHAT, m, p1, k2, 3000, 700, 1.25);
    metrics_observe_usage(s[1], METRICS_ROUTE_CHAT, m, p2, k1, 4, 1, 0.125);
    metrics_observe_usage(s[0], METRICS_ROUTE_EMBEDDINGS, e, pe, k1, 64, 0, 0.0625);
    metrics_observe_usage(s[1], METRICS_ROUTE_COMPLETIONS, m, p2, k2, 16, 65, 0.25);
    /* The models route has no gen_ai operation; its usage still counts. */
    metrics_observe_usage(s[0], METRICS_ROUTE_MODELS, m, p2, k2, 1, 1, 0.5);
    char *text = scrape_render(s, 2);

    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"usage-b1\","
                                         "model=\"usage-model\",type=\"input\"}"),
                     3100);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"usage-b1\","
                                         "model=\"usage-model\",type=\"output\"}"),
                     720);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"usage-b2\","
                                         "model=\"usage-model\",type=\"input\"}"),
                     21);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"usage-b2\","
                                         "model=\"usage-model\",type=\"output\"}"),
                     67);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"usage-b1\","
                                         "model=\"usage-embed\",type=\"input\"}"),
                     64);
    assert_float_equal(scrape_sample(text, "tollgate_cost_usd_total{backend=\"usage-b1\","
                                           "model=\"usage-model\"}"),
                       1.75, 1e-12);
    assert_float_equal(scrape_sample(text, "tollgate_cost_usd_total{backend=\"usage-b2\","
                                           "model=\"usage-model\"}"),
                       0.875, 1e-12);
    assert_float_equal(scrape_sample(text, "tollgate_cost_usd_total{backend=\"usage-b1\","
                                           "model=\"usage-embed\"}"),
                       0.0625, 1e-12);
    assert_float_equal(scrape_sample(text, "tollgate_key_cost_usd_total{key=\"usage-key-1\"}"),
                       0.5 + 0.125 + 0.0625, 1e-12);
    assert_float_equal(scrape_sample(text, "tollgate_key_cost_usd_total{key=\"usage-key-2\"}"),
                       1.25 + 0.25 + 0.5, 1e-12);

    /* gen_ai token usage: one observation per request and type, by operation and the pair
     * (its GenAI attributes are metrics/genai.c's, test_metrics_genai.c). */
#define USAGE_PAIR(b, up, port)                                                                    \
    "gen_ai_provider_name=\"openai\",gen_ai_request_model=\"usage-model\","                        \
    "gen_ai_response_model=\"" up "\",server_address=\"10.0.0.1\",server_port=\"" port "\","       \
    "tollgate_backend=\"" b "\""
    scrape_check_hist(text, "gen_ai_client_token_usage",
                      "gen_ai_operation_name=\"chat\"," USAGE_PAIR(
                          "usage-b1", "up-1", "8001") ",gen_ai_token_type=\"input\"",
                      genai_tokens_le, N(genai_tokens_le), (double[]){100, 3000}, 2);
    scrape_check_hist(text, "gen_ai_client_token_usage",
                      "gen_ai_operation_name=\"chat\"," USAGE_PAIR(
                          "usage-b1", "up-1", "8001") ",gen_ai_token_type=\"output\"",
                      genai_tokens_le, N(genai_tokens_le), (double[]){20, 700}, 2);
    scrape_check_hist(text, "gen_ai_client_token_usage",
                      "gen_ai_operation_name=\"chat\"," USAGE_PAIR(
                          "usage-b2", "up-2", "8002") ",gen_ai_token_type=\"output\"",
                      genai_tokens_le, N(genai_tokens_le), (double[]){1}, 1);
    scrape_check_hist(text, "gen_ai_client_token_usage",
                      "gen_ai_operation_name=\"text_completion\"," USAGE_PAIR(
                          "usage-b2", "up-2", "8002") ",gen_ai_token_type=\"output\"",
                      genai_tokens_le, N(genai_tokens_le), (double[]){65}, 1);
    const char *embed = "gen_ai_operation_name=\"embeddings\",gen_ai_provider_name=\"openai\","
                        "gen_ai_request_model=\"usage-embed\",gen_ai_response_model=\"up-e\","
                        "server_address=\"10.0.0.1\",server_port=\"8001\","
                        "tollgate_backend=\"usage-b1\"";
    char labels[512];
    snprintf(labels, sizeof labels, "%s,gen_ai_token_type=\"input\"", embed);
    scrape_check_hist(text, "gen_ai_client_token_usage", labels, genai_tokens_le,
                      N(genai_tokens_le), (double[]){64}, 1);
    /* Embeddings have no output series; the models route none at all. */
    snprintf(labels, sizeof labels,
             "gen_ai_client_token_usage_count{%s,gen_ai_token_type=\"output\"}", embed);
    assert_false(scrape_has_line(text, labels));
    assert_false(
        scrape_has_line(text, "gen_ai_client_token_usage_count{gen_ai_operation_name=\"models\""));
#undef USAGE_PAIR
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

/* Usage with unknown (negative) counts adds no tokens. */
static void test_usage_negative_counts(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "neg-model", NULL);
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "neg-b", "neg-model");
    unsigned k = scrape_label(METRICS_LABEL_KEY, "neg-key", NULL);
    struct metrics_shard *s[1] = {scrape_shard()};
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, p, k, -1, -5, 0.5);
    metrics_observe_usage(s[0], METRICS_ROUTE_CHAT, m, p, k, 10, 2, 0.5);
    char *text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"neg-b\","
                                         "model=\"neg-model\",type=\"input\"}"),
                     10);
    assert_int_equal(scrape_sample(text, "tollgate_tokens_total{backend=\"neg-b\","
                                         "model=\"neg-model\",type=\"output\"}"),
                     2);
    assert_float_equal(scrape_sample(text, "tollgate_key_cost_usd_total{key=\"neg-key\"}"), 1.0,
                       1e-12);
    free(text);
    metrics_shard_free(s[0]);
}

static void test_attempts(void **state)
{
    (void)state;
    static const char *const outcomes[METRICS_OUTCOME_COUNT] = {
        "success", "client_error", "rate_limited", "server_error",
        "timeout", "unreachable",  "broken"};
    unsigned b1 = scrape_label(METRICS_LABEL_BACKEND, "att-b1", NULL);
    unsigned b2 = scrape_label(METRICS_LABEL_BACKEND, "att-b2", NULL);
    unsigned p1 = scrape_label(METRICS_LABEL_PAIR, "att-b1", "att-m");
    unsigned p2 = scrape_label(METRICS_LABEL_PAIR, "att-b2", "att-m");
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    double d1[64], d2[64];
    size_t n1 = 0, n2 = 0;
    for (int o = 0; o < METRICS_OUTCOME_COUNT; o++)
        for (int i = 0; i <= o; i++) {
            double d = 0.001 * (o + 1) * (i + 1);
            metrics_observe_attempt(s[i % 2], b1, p1, (enum metrics_outcome)o, d);
            d1[n1++] = d;
        }
    metrics_observe_attempt(s[1], b2, p2, METRICS_OUTCOME_RATE_LIMITED, 45);
    d2[n2++] = 45;
    char *text = scrape_render(s, 2);
    for (int o = 0; o < METRICS_OUTCOME_COUNT; o++) {
        char series[256];
        snprintf(series, sizeof series,
                 "tollgate_backend_requests_total{backend=\"att-b1\",model=\"att-m\","
                 "outcome=\"%s\"}",
                 outcomes[o]);
        assert_int_equal(scrape_sample(text, series), o + 1);
    }
    assert_int_equal(scrape_sample(text, "tollgate_backend_requests_total{backend=\"att-b2\","
                                         "model=\"att-m\",outcome=\"rate_limited\"}"),
                     1);
    assert_false(scrape_has(text, "tollgate_backend_requests_total{backend=\"att-b2\","
                                  "model=\"att-m\",outcome=\"success\"}"));
    scrape_check_hist(text, "tollgate_backend_duration_seconds", "backend=\"att-b1\"", duration_le,
                      N(duration_le), d1, n1);
    scrape_check_hist(text, "tollgate_backend_duration_seconds", "backend=\"att-b2\"", duration_le,
                      N(duration_le), d2, n2);
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shards_summed),
        cmocka_unit_test(test_status_labels),
        cmocka_unit_test(test_model_labels),
        cmocka_unit_test(test_request_duration_histogram),
        cmocka_unit_test(test_le_labels_exact),
        cmocka_unit_test(test_overhead_histogram),
        cmocka_unit_test(test_ttft),
        cmocka_unit_test(test_label_interning),
        cmocka_unit_test(test_label_escaping),
        cmocka_unit_test(test_long_label_values),
        cmocka_unit_test(test_label_cap),
        cmocka_unit_test(test_usage),
        cmocka_unit_test(test_usage_negative_counts),
        cmocka_unit_test(test_attempts),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}

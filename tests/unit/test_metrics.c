/* Unit tests for metrics/metrics: per-worker shards summed into the Prometheus text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "metrics/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const le_values[METRICS_DURATION_BUCKETS + 1] = {
    "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25",   "0.5",   "1",      "2.5",   "5",    "10",    "+Inf"};

/* The value of the sample whose name and labels are exactly `series`; fails when absent. */
static double sample(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, series, n) && line[n] == ' ') {
            char *end;
            double v = strtod(line + n + 1, &end);
            assert_true(end > line + n + 1);
            assert_true(*end == '\n' || *end == '\0');
            return v;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    fail_msg("no sample \"%s\" in:\n%s", series, text);
    return -1;
}

static int has_series(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *line = text; line && *line;) {
        if (!strncmp(line, series, n) && line[n] == ' ')
            return 1;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

static double bucket(const char *text, const char *route, int b)
{
    char series[160];
    snprintf(series, sizeof series,
             "tollgate_request_duration_seconds_bucket{route=\"%s\",le=\"%s\"}", route,
             le_values[b]);
    return sample(text, series);
}

static double route_sample(const char *text, const char *metric, const char *route)
{
    char series[160];
    snprintf(series, sizeof series, "%s{route=\"%s\"}", metric, route);
    return sample(text, series);
}

static char *render(struct metrics_shard *const *shards, size_t n)
{
    struct buf out;
    buf_init(&out, 1 << 20);
    assert_int_equal(metrics_render(&out, shards, n), 0);
    assert_non_null(out.data);
    assert_true(out.len > 0);
    assert_int_equal(out.data[out.len - 1], '\n');
    return buf_steal(&out, NULL);
}

static void test_render_sums_shards(void **state)
{
    (void)state;
    struct metrics_shard *a = metrics_shard_new(), *b = metrics_shard_new();
    assert_non_null(a);
    assert_non_null(b);
    /* Worker A */
    metrics_observe_request(a, METRICS_ROUTE_CHAT, 200, 0.0004);
    metrics_observe_request(a, METRICS_ROUTE_CHAT, 200, 0.003);
    metrics_observe_request(a, METRICS_ROUTE_CHAT, 503, 1.5);
    metrics_observe_request(a, METRICS_ROUTE_EMBEDDINGS, 200, 0.07);
    METRICS_ADD(a->upstream_errors, 2);
    METRICS_ADD(a->streams, 5);
    METRICS_ADD(a->inflight, 3);
    /* Worker B */
    metrics_observe_request(b, METRICS_ROUTE_CHAT, 200, 0.003);
    metrics_observe_request(b, METRICS_ROUTE_CHAT, 404, 20);
    metrics_observe_request(b, METRICS_ROUTE_CHAT, 429, 0.02);
    metrics_observe_request(b, METRICS_ROUTE_MODELS, 200, 0.0001);
    METRICS_ADD(b->upstream_errors, 1);
    METRICS_ADD(b->streams, 1);
    METRICS_ADD(b->inflight, 4);
    METRICS_ADD(b->inflight, -2);

    struct metrics_shard *const shards[] = {a, b};
    char *text = render(shards, 2);

    assert_int_equal(sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                  "status=\"2xx\"}"),
                     3);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                  "status=\"4xx\"}"),
                     2);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"chat_completions\","
                                  "status=\"5xx\"}"),
                     1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"embeddings\",status=\"2xx\"}"),
                     1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"models\",status=\"2xx\"}"), 1);
    /* Series nobody observed are left out. */
    assert_false(has_series(text, "tollgate_requests_total{route=\"completions\",status=\"2xx\"}"));
    assert_false(has_series(text, "tollgate_requests_total{route=\"embeddings\",status=\"5xx\"}"));

    assert_int_equal(
        route_sample(text, "tollgate_request_duration_seconds_count", "chat_completions"), 6);
    assert_int_equal(route_sample(text, "tollgate_request_duration_seconds_count", "embeddings"),
                     1);
    assert_int_equal(route_sample(text, "tollgate_request_duration_seconds_count", "completions"),
                     0);
    assert_float_equal(
        route_sample(text, "tollgate_request_duration_seconds_sum", "chat_completions"),
        0.0004 + 0.003 + 1.5 + 0.003 + 20 + 0.02, 1e-5);
    assert_float_equal(route_sample(text, "tollgate_request_duration_seconds_sum", "embeddings"),
                       0.07, 1e-5);

    assert_int_equal(sample(text, "tollgate_upstream_errors_total"), 3);
    assert_int_equal(sample(text, "tollgate_streams_total"), 6);
    assert_int_equal(sample(text, "tollgate_inflight_requests"), 5);

    /* Each metric family is declared once, before its samples. */
    assert_non_null(strstr(text, "# TYPE tollgate_requests_total counter\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_request_duration_seconds histogram\n"));
    assert_non_null(strstr(text, "# TYPE tollgate_inflight_requests gauge\n"));
    const char *type = strstr(text, "# TYPE tollgate_requests_total");
    assert_ptr_equal(strstr(type + 1, "# TYPE tollgate_requests_total"), NULL);
    assert_true(type < strstr(text, "tollgate_requests_total{"));

    free(text);
    metrics_shard_free(a);
    metrics_shard_free(b);
}

static void test_histogram_cumulative(void **state)
{
    (void)state;
    struct metrics_shard *a = metrics_shard_new(), *b = metrics_shard_new();
    assert_non_null(a);
    assert_non_null(b);
    /* One observation per bucket boundary and a few between, spread over two shards. An
     * observation equal to a bound belongs to that bucket (le = less or equal). */
    static const double obs[] = {0.0001, 0.0005, 0.0007, 0.001, 0.003, 0.1,  0.1,
                                 0.3,    0.9999, 1,      2.5,   7,     10.5, 3600};
    size_t n_obs = sizeof obs / sizeof obs[0];
    for (size_t i = 0; i < n_obs; i++)
        metrics_observe_request(i % 2 ? a : b, METRICS_ROUTE_COMPLETIONS, 200, obs[i]);

    struct metrics_shard *const shards[] = {a, b};
    char *text = render(shards, 2);

    /* Expected cumulative counts: observations <= each bound. */
    static const double bounds[METRICS_DURATION_BUCKETS] = {
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    double prev = 0;
    for (int bk = 0; bk <= METRICS_DURATION_BUCKETS; bk++) {
        size_t want = 0;
        for (size_t i = 0; i < n_obs; i++)
            if (bk == METRICS_DURATION_BUCKETS || obs[i] <= bounds[bk])
                want++;
        double got = bucket(text, "completions", bk);
        if (got != (double)want)
            fail_msg("le=%s: got %g, want %zu\n%s", le_values[bk], got, want, text);
        assert_true(got >= prev);
        prev = got;
    }
    assert_int_equal(bucket(text, "completions", 0), 2);
    assert_int_equal(bucket(text, "completions", 1), 4);
    assert_int_equal(bucket(text, "completions", 7), 7); /* le=0.1 holds both 0.1s */
    assert_int_equal(bucket(text, "completions", 10), 10);
    assert_int_equal(bucket(text, "completions", METRICS_DURATION_BUCKETS), n_obs);
    assert_int_equal(route_sample(text, "tollgate_request_duration_seconds_count", "completions"),
                     n_obs);

    /* Every route has a full, monotonic histogram whose +Inf bucket equals its count. */
    static const char *const routes[] = {"chat_completions", "completions", "embeddings", "models",
                                         "other"};
    for (size_t r = 0; r < sizeof routes / sizeof routes[0]; r++) {
        double last = 0;
        for (int bk = 0; bk <= METRICS_DURATION_BUCKETS; bk++) {
            double v = bucket(text, routes[r], bk);
            assert_true(v >= last);
            last = v;
        }
        assert_true(last ==
                    route_sample(text, "tollgate_request_duration_seconds_count", routes[r]));
    }
    free(text);
    metrics_shard_free(a);
    metrics_shard_free(b);
}

static void test_status_classes(void **state)
{
    (void)state;
    struct metrics_shard *a = metrics_shard_new();
    assert_non_null(a);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 101, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 204, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 299, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 301, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 499, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 500, 0.001);
    metrics_observe_request(a, METRICS_ROUTE_OTHER, 599, 0.001);
    struct metrics_shard *const shards[] = {a};
    char *text = render(shards, 1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"other\",status=\"1xx\"}"), 1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"other\",status=\"2xx\"}"), 2);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"other\",status=\"3xx\"}"), 1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"other\",status=\"4xx\"}"), 1);
    assert_int_equal(sample(text, "tollgate_requests_total{route=\"other\",status=\"5xx\"}"), 2);
    free(text);
    metrics_shard_free(a);
}

/* Nothing observed: the families are there with zero counts, and the text is well formed. */
static void test_render_empty(void **state)
{
    (void)state;
    struct metrics_shard *a = metrics_shard_new();
    assert_non_null(a);
    struct metrics_shard *const shards[] = {a};
    char *text = render(shards, 1);
    assert_false(has_series(text, "tollgate_requests_total{route=\"chat_completions\","
                                  "status=\"2xx\"}"));
    assert_int_equal(
        route_sample(text, "tollgate_request_duration_seconds_count", "chat_completions"), 0);
    assert_int_equal(bucket(text, "chat_completions", METRICS_DURATION_BUCKETS), 0);
    assert_int_equal(sample(text, "tollgate_inflight_requests"), 0);
    /* Every line is a comment or "name[{labels}] value". */
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        assert_non_null(nl);
        if (*line != '#') {
            const char *sp = memchr(line, ' ', (size_t)(nl - line));
            assert_non_null(sp);
            assert_ptr_equal(memchr(sp + 1, ' ', (size_t)(nl - sp - 1)), NULL);
            assert_true(strncmp(line, "tollgate_", 9) == 0);
        }
        line = nl + 1;
    }
    free(text);
    metrics_shard_free(a);
}

/* Rendering appends; a buffer too small for the text is an error, not a crash. */
static void test_render_into_small_buffer(void **state)
{
    (void)state;
    struct metrics_shard *a = metrics_shard_new();
    assert_non_null(a);
    metrics_observe_request(a, METRICS_ROUTE_CHAT, 200, 0.2);
    struct metrics_shard *const shards[] = {a};
    struct buf out;
    buf_init(&out, 256);
    assert_int_equal(metrics_render(&out, shards, 1), -1);
    assert_true(out.len <= 256);
    buf_free(&out);

    buf_init(&out, 1 << 20);
    assert_int_equal(buf_append_str(&out, "# prefix\n"), BUF_OK);
    assert_int_equal(metrics_render(&out, shards, 1), 0);
    assert_int_equal(strncmp(out.data, "# prefix\n# HELP", 15), 0);
    buf_free(&out);
    metrics_shard_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render_sums_shards),
        cmocka_unit_test(test_histogram_cumulative),
        cmocka_unit_test(test_status_classes),
        cmocka_unit_test(test_render_empty),
        cmocka_unit_test(test_render_into_small_buffer),
    };
    return cmocka_run_group_tests_name("metrics", tests, NULL, NULL);
}

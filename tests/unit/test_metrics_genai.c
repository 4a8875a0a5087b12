/* Unit tests for metrics/genai: the OpenTelemetry GenAI series. A request a backend answered
 * counts under its (backend, model) pair with the pair's provider, server address and port
 * and response model; one answered without a backend or that failed, under the model asked
 * and its error type; the client's time to first chunk and the server's time to first token
 * by pair, streams only; every label value bounded. Label tables only grow, so every test
 * interns names of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/error.h"
#include "metrics/metrics.h"
#include "tests/unit/scrape.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* The semantic conventions' advised bounds, as genai.c declares them. */
static const double duration_le[] = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                     1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double ttft_le[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                 0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};

static struct metrics_genai_obs obs(enum metrics_route route, unsigned model, unsigned pair,
                                    unsigned error, double seconds)
{
    return (struct metrics_genai_obs){.route = route,
                                      .model = model,
                                      .pair = pair,
                                      .error = error,
                                      .seconds = seconds,
                                      .first_token = -1,
                                      .first_chunk = -1};
}

static void test_served_by_pair(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "pair-model", NULL);
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "pair-b", "pair-model");
    unsigned q = scrape_label(METRICS_LABEL_PAIR, "pair-c", "pair-model");
    metrics_pair_describe(p, "vllm", "https://user@node.example:8443/v1", "org/Pair-8B");
    metrics_pair_describe(q, NULL, "https://[2001:db8::1]/v1", NULL); /* defaults */
    struct metrics_shard *s[2] = {scrape_shard(), scrape_shard()};
    double served[] = {0.05, 0.7, 3};
    for (size_t i = 0; i < N(served); i++) {
        struct metrics_genai_obs o = obs(METRICS_ROUTE_CHAT, m, p, 0, served[i]);
        o.first_token = served[i] / 10;
        o.first_chunk = i ? served[i] / 5 : -1; /* the first one was not streamed */
        metrics_observe_genai(s[i % 2], &o);
    }
    struct metrics_genai_obs o = obs(METRICS_ROUTE_COMPLETIONS, m, q, 0, 0.2);
    metrics_observe_genai(s[0], &o);
    char *text = scrape_render(s, 2);
    const char *pl = "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"vllm\","
                     "gen_ai_request_model=\"pair-model\",gen_ai_response_model=\"org/Pair-8B\","
                     "server_address=\"node.example\",server_port=\"8443\","
                     "tollgate_backend=\"pair-b\"";
    scrape_check_hist(text, "gen_ai_client_operation_duration_seconds", pl, duration_le,
                      N(duration_le), served, N(served));
    scrape_check_hist(text, "gen_ai_server_time_to_first_token_seconds", pl, ttft_le, N(ttft_le),
                      (double[]){0.005, 0.07, 0.3}, 3);
    scrape_check_hist(text, "gen_ai_client_operation_time_to_first_chunk_seconds", pl, duration_le,
                      N(duration_le), (double[]){0.14, 0.6}, 2);
    /* Defaults: provider openai (every node speaks OpenAI's API), the https port, an IPv6
     * address without brackets, the model's own name. */
    scrape_check_hist(text, "gen_ai_client_operation_duration_seconds",
                      "gen_ai_operation_name=\"text_completion\",gen_ai_provider_name=\"openai\","
                      "gen_ai_request_model=\"pair-model\",gen_ai_response_model=\"\","
                      "server_address=\"2001:db8::1\",server_port=\"443\","
                      "tollgate_backend=\"pair-c\"",
                      duration_le, N(duration_le), (double[]){0.2}, 1);
    /* Nothing under the model alone: it was served. */
    assert_false(scrape_has_line(text, "gen_ai_client_operation_duration_seconds_count{"
                                       "gen_ai_operation_name=\"chat\","
                                       "gen_ai_request_model=\"pair-model\"}"));
    free(text);
    metrics_shard_free(s[0]);
    metrics_shard_free(s[1]);
}

static void test_failed_by_model_and_error(void **state)
{
    (void)state;
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "fail-model", NULL);
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "fail-b", "fail-model");
    metrics_pair_describe(p, "openai", "http://fail-node/v1", "fail-up");
    struct metrics_shard *s[1] = {scrape_shard()};
    unsigned timeout = metrics_genai_error(TG_ERR_BACKEND_TIMEOUT, 504);
    unsigned stream = metrics_genai_error(TG_ERR_STREAM, 200);
    struct metrics_genai_obs o = obs(METRICS_ROUTE_CHAT, m, 0, timeout, 1.5);
    metrics_observe_genai(s[0], &o);
    o = obs(METRICS_ROUTE_CHAT, m, p, stream, 2.5); /* a stream that broke: not a success */
    o.first_chunk = 0.3;
    metrics_observe_genai(s[0], &o);
    o = obs(METRICS_ROUTE_CHAT, m, 0, metrics_genai_error(0, 418), 0.01);
    metrics_observe_genai(s[0], &o);
    o = obs(METRICS_ROUTE_CHAT, m, 0, 0, 0.02); /* answered without a backend (the cache) */
    metrics_observe_genai(s[0], &o);
    o = obs(METRICS_ROUTE_EMBEDDINGS, 0, 0, metrics_genai_error(TG_ERR_MODEL_NOT_FOUND, 404),
            0.001);
    metrics_observe_genai(s[0], &o);
    /* Routes that are no GenAI operation count nowhere here. */
    o = obs(METRICS_ROUTE_MODELS, m, 0, 0, 0.1);
    metrics_observe_genai(s[0], &o);
    char *text = scrape_render(s, 1);
    const char *base = "gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="
                       "\"chat\",gen_ai_request_model=\"fail-model\"";
    char series[512];
    snprintf(series, sizeof series, "%s,error_type=\"backend_timeout\"}", base);
    assert_int_equal(scrape_sample(text, series), 1);
    snprintf(series, sizeof series, "%s,error_type=\"backend_stream_error\"}", base);
    assert_int_equal(scrape_sample(text, series), 1);
    snprintf(series, sizeof series, "%s,error_type=\"_OTHER\"}", base);
    assert_int_equal(scrape_sample(text, series), 1);
    snprintf(series, sizeof series, "%s}", base);
    assert_int_equal(scrape_sample(text, series), 1);
    assert_int_equal(scrape_sample(text, "gen_ai_client_operation_duration_seconds_count{"
                                         "gen_ai_operation_name=\"embeddings\","
                                         "gen_ai_request_model=\"other\","
                                         "error_type=\"model_not_found\"}"),
                     1);
    /* The broken stream's first chunk still counts by the pair that sent it. */
    assert_int_equal(scrape_sample(text,
                                   "gen_ai_client_operation_time_to_first_chunk_seconds_count{"
                                   "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\","
                                   "gen_ai_request_model=\"fail-model\","
                                   "gen_ai_response_model=\"fail-up\",server_address=\"fail-node\","
                                   "server_port=\"80\",tollgate_backend=\"fail-b\"}"),
                     1);
    assert_false(scrape_has_line(text, "gen_ai_client_operation_duration_seconds_count{"
                                       "gen_ai_operation_name=\"chat\",gen_ai_provider_name"));
    assert_int_equal(scrape_count(text, "gen_ai_operation_name=\"models\""), 0);
    free(text);
    metrics_shard_free(s[0]);
}

static void test_error_types(void **state)
{
    (void)state;
    assert_int_equal(metrics_genai_error(0, 200), 0);
    assert_int_equal(metrics_genai_error(0, 399), 0);
    unsigned other = metrics_genai_error(0, 500);
    assert_int_equal(other, METRICS_GENAI_ERRORS - 1);
    assert_int_equal(metrics_genai_error(-1000, 500), other); /* past the table */
    /* Out of memory and an internal error share a name, so a series. */
    assert_int_equal(metrics_genai_error(TG_ERR_NOMEM, 500),
                     metrics_genai_error(TG_ERR_INTERNAL, 500));
    /* Every code the gateway has: a series of its own name, all distinct otherwise. */
    for (int a = -1; a > -(int)METRICS_GENAI_ERRORS + 1; a--)
        for (int b = a - 1; b > -(int)METRICS_GENAI_ERRORS + 1; b--)
            if (strcmp(error_code((enum tg_error)a), error_code((enum tg_error)b)))
                assert_int_not_equal(metrics_genai_error(a, 400), metrics_genai_error(b, 400));
    /* So the exposition never holds two series with the same labels. */
    unsigned m = scrape_label(METRICS_LABEL_MODEL, "every-error", NULL);
    struct metrics_shard *s[1] = {scrape_shard()};
    for (int e = 0; e > -(int)METRICS_GENAI_ERRORS - 5; e--) {
        struct metrics_genai_obs o = obs(METRICS_ROUTE_CHAT, m, 0, metrics_genai_error(e, 500), 1);
        metrics_observe_genai(s[0], &o);
    }
    char *text = scrape_render(s, 1);
    scrape_promtool(text); /* duplicate series fail it */
    free(text);
    metrics_shard_free(s[0]);
}

/* Names past a table's cap count as other: the label values stay bounded. */
static void test_attribute_caps(void **state)
{
    (void)state;
    unsigned p = scrape_label(METRICS_LABEL_PAIR, "caps-b", "caps-model");
    char name[300];
    memset(name, 'x', sizeof name - 1);
    name[sizeof name - 1] = '\0';
    metrics_pair_describe(p, name, "http://caps-node:1/v1", name); /* over METRICS_LABEL_MAX */
    metrics_pair_describe(0, "ignored", "http://ignored/", "ignored");
    metrics_pair_describe(METRICS_MAX_PAIRS + 3, "ignored", "http://ignored/", "ignored");
    struct metrics_shard *s[1] = {scrape_shard()};
    struct metrics_genai_obs o = obs(METRICS_ROUTE_CHAT, 0, p, 0, 1);
    metrics_observe_genai(s[0], &o);
    char *text = scrape_render(s, 1);
    assert_int_equal(scrape_sample(text, "gen_ai_client_operation_duration_seconds_count{"
                                         "gen_ai_operation_name=\"chat\","
                                         "gen_ai_provider_name=\"other\","
                                         "gen_ai_request_model=\"caps-model\","
                                         "gen_ai_response_model=\"other\","
                                         "server_address=\"caps-node\",server_port=\"1\","
                                         "tollgate_backend=\"caps-b\"}"),
                     1);
    assert_int_equal(scrape_count(text, "ignored"), 0);
    free(text);
    metrics_shard_free(s[0]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_served_by_pair),
        cmocka_unit_test(test_failed_by_model_and_error),
        cmocka_unit_test(test_error_types),
        cmocka_unit_test(test_attribute_caps),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for routing/honesty: the usage a node reports against the gateway's own
 * estimate, judged against its peers serving the same model: who is flagged and when (enough
 * samples, or at once for a claim no answer could justify), the peer-calibrated bill, the
 * price factor routing applies, and the way back for a node that turns honest. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "routing/backend.h"
#include "routing/honesty.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define NODE(name)                                                                                 \
    "  - name: " name "\n"                                                                         \
    "    url: http://127.0.0.1:9000/" name "\n"                                                    \
    "    models:\n"                                                                                \
    "      - {name: m, input_usd_per_mtok: 1, output_usd_per_mtok: 2}\n"

/* A config of fresh nodes (state is process-wide by name: each test uses its own names). */
static struct config *load(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "honesty.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    return cfg;
}

static const struct config_model *model_of(const struct config *cfg, size_t backend)
{
    return &cfg->backends[backend].models[0];
}

static const struct honesty *h_of(const struct config *cfg, size_t backend)
{
    return &model_of(cfg, backend)->price->honesty;
}

/* One answer of `prompt` + `completion` true tokens reported × factor (prompt and completion
 * both), the gateway's estimate exact. */
static struct honesty_verdict answer(const struct config *cfg, size_t backend, double factor,
                                     long prompt, long completion, bool impossible)
{
    struct honesty_sample s = {
        .rep_prompt = (long)llround((double)prompt * factor),
        .rep_completion = (long)llround((double)completion * factor),
        .est_prompt = prompt,
        .est_completion = completion,
        .impossible = impossible,
    };
    struct honesty_verdict v;
    honesty_observe(config_find_route(cfg, "m"), model_of(cfg, backend), &cfg->routing, &s, &v);
    return v;
}

/* Honest nodes, with the ordinary spread of a tokenizer against a byte estimate: none flagged,
 * prices as listed. */
static void test_honest_peers(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" NODE("ho-a") NODE("ho-b") NODE("ho-c"));
    for (int i = 0; i < 20; i++) {
        struct honesty_verdict v = answer(cfg, (size_t)i % 3, 1.0 + 0.1 * (i % 3), 300, 100, false);
        assert_false(v.flagged);
        assert_false(v.changed);
    }
    for (size_t b = 0; b < 3; b++) {
        assert_false(honesty_flagged(h_of(cfg, b)));
        assert_float_equal(honesty_price_factor(h_of(cfg, b), false), 1, 0);
        assert_float_equal(honesty_price_factor(h_of(cfg, b), true), 1, 0);
        assert_int_equal(atomic_load(&h_of(cfg, b)->samples), b == 2 ? 6 : 7);
    }
    assert_float_equal(honesty_ratio(h_of(cfg, 1), false), 1.1, 1e-6);
    config_unref(cfg);
}

/* A claim beyond what the answer could hold (clamped) is evidence enough: flagged on its first
 * answer, billed at the estimate (no peer yet: ratio 1), routed at 100 x its price. */
static void test_impossible_claim_flags_at_once(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" NODE("hi-liar") NODE("hi-b"));
    struct honesty_verdict v = answer(cfg, 0, 100, 300, 100, true);
    assert_true(v.flagged);
    assert_true(v.changed);
    assert_float_equal(v.inflation, 100, 1e-6);
    assert_int_equal(v.bill_prompt, 300);
    assert_int_equal(v.bill_completion, 100);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), false), 100, 1e-6);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), true), 100, 1e-6);
    /* Once honest peers have samples, its bill is at their rate. */
    for (int i = 0; i < 5; i++)
        answer(cfg, 1, 1.2, 300, 100, false);
    v = answer(cfg, 0, 100, 300, 100, true);
    assert_true(v.flagged);
    assert_false(v.changed);
    assert_int_equal(v.bill_prompt, 360);
    assert_int_equal(v.bill_completion, 120);
    assert_float_equal(v.inflation, 100 / 1.2, 1e-6);
    config_unref(cfg);
}

/* A modest liar (x2, nothing impossible) is flagged once it has honesty_min_samples answers
 * and honest peers to compare with; x1.3 stays under the tolerance (1.5). Without peers the
 * bar is twice as high. */
static void test_modest_liar_against_peers(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n" NODE("hm-liar") NODE("hm-b") NODE("hm-c") NODE("hm-near"));
    /* No peers yet: x2 against the estimate is under 2 x 1.5. */
    for (int i = 0; i < 6; i++)
        assert_false(answer(cfg, 0, 2, 300, 100, false).flagged);
    for (int i = 0; i < 5; i++) {
        answer(cfg, 1, 0.9, 300, 100, false);
        answer(cfg, 2, 1.1, 300, 100, false);
    }
    /* The median of 0.9 and 1.1 is 1.0: x2 is over 1.5. */
    struct honesty_verdict v = answer(cfg, 0, 2, 300, 100, false);
    assert_true(v.flagged);
    assert_true(v.changed);
    assert_float_equal(v.inflation, 2, 1e-3);
    assert_float_equal(v.ref_prompt, 1.0, 1e-6);
    assert_int_equal(v.bill_prompt, 300);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), false), 2, 1e-3);
    /* x1.3 is tolerated. */
    for (int i = 0; i < 10; i++)
        assert_false(answer(cfg, 3, 1.3, 300, 100, false).flagged);
    /* A flagged node is no reference for others: the near one's reference is still ~1. */
    v = answer(cfg, 3, 1.3, 300, 100, false);
    assert_float_equal(v.ref_prompt, 1.0, 1e-6);
    config_unref(cfg);
}

/* A node that inflates only completions is priced up on output only; one that under-reports
 * is never flagged. */
static void test_per_token_type(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" NODE("ht-out") NODE("ht-b") NODE("ht-under"));
    for (int i = 0; i < 5; i++)
        answer(cfg, 1, 1, 300, 100, false);
    struct honesty_sample s = {
        .rep_prompt = 300, .rep_completion = 400, .est_prompt = 300, .est_completion = 100};
    struct honesty_verdict v;
    for (int i = 0; i < 5; i++)
        honesty_observe(config_find_route(cfg, "m"), model_of(cfg, 0), &cfg->routing, &s, &v);
    assert_true(v.flagged);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), false), 1, 1e-6);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), true), 4, 1e-6);
    assert_int_equal(v.bill_prompt, 300);
    assert_int_equal(v.bill_completion, 100);
    for (int i = 0; i < 10; i++)
        assert_false(answer(cfg, 2, 0.2, 300, 100, false).flagged);
    assert_float_equal(honesty_price_factor(h_of(cfg, 2), true), 1, 0);
    config_unref(cfg);
}

/* A flagged node that turns honest is cleared once its recent ratio is back under the
 * tolerance / 1.2 (its sums decay over about 64 answers): not after a handful. */
static void test_way_back(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" NODE("hw-x") NODE("hw-b"));
    for (int i = 0; i < 5; i++)
        answer(cfg, 1, 1, 300, 100, false);
    for (int i = 0; i < 5; i++)
        answer(cfg, 0, 3, 300, 100, false);
    assert_true(honesty_flagged(h_of(cfg, 0)));
    for (int i = 0; i < 5; i++)
        assert_true(answer(cfg, 0, 1, 300, 100, false).flagged);
    int cleared = -1;
    for (int i = 0; i < 400 && cleared < 0; i++)
        if (answer(cfg, 0, 1, 300, 100, false).changed)
            cleared = i;
    assert_true(cleared > 5);
    assert_false(honesty_flagged(h_of(cfg, 0)));
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), false), 1, 0);
    assert_true(honesty_inflation(h_of(cfg, 0)) < 1.5 / 1.2);
    config_unref(cfg);
}

/* Samples without a completion estimate (embeddings) judge the prompt alone. */
static void test_prompt_only(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" NODE("hp-x"));
    struct honesty_sample s = {
        .rep_prompt = 1000, .rep_completion = -1, .est_prompt = 100, .est_completion = 0};
    struct honesty_verdict v;
    for (int i = 0; i < 5; i++)
        honesty_observe(config_find_route(cfg, "m"), model_of(cfg, 0), &cfg->routing, &s, &v);
    assert_true(v.flagged);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), false), 10, 1e-6);
    assert_float_equal(honesty_price_factor(h_of(cfg, 0), true), 1, 1e-6);
    assert_float_equal(honesty_ratio(h_of(cfg, 0), true), 1, 0);
    config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_honest_peers),
        cmocka_unit_test(test_impossible_claim_flags_at_once),
        cmocka_unit_test(test_modest_liar_against_peers),
        cmocka_unit_test(test_per_token_type),
        cmocka_unit_test(test_way_back),
        cmocka_unit_test(test_prompt_only),
    };
    return cmocka_run_group_tests_name("honesty", tests, NULL, NULL);
}

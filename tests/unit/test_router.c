/* Unit tests for routing/router: which (backend, model) pair serves a request, by each
 * strategy of config_strategy, with its ties and the candidates every strategy skips. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "routing/backend.h"
#include "routing/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Loads a config, attaches backend state and clears it (states are process-wide, by name). */
static struct config *load(const char *yaml)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "router.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct backend_state *s = cfg->backends[i].state;
        assert_non_null(s);
        atomic_store(&s->inflight, 0);
        atomic_store(&s->ejected_until_ms, 0);
        atomic_store(&s->eject_reason, BACKEND_EJECT_NONE);
        atomic_store(&s->probe_down, false);
        atomic_store(&s->ttfb_ewma_us, 0);
        memset(&s->limit, 0, sizeof s->limit);
        memset(&s->stuck, 0, sizeof s->stuck);
        for (size_t j = 0; j < cfg->backends[i].n_models; j++)
            memset(&cfg->backends[i].models[j].price->honesty, 0,
                   sizeof cfg->backends[i].models[j].price->honesty);
    }
    return cfg;
}

static const struct config_route *route(const struct config *cfg, const char *model)
{
    const struct config_route *r = config_find_route(cfg, model);
    assert_non_null(r);
    return r;
}

static struct router_request req(size_t prompt_tokens, size_t output_tokens)
{
    return (struct router_request){
        .prompt_tokens = prompt_tokens,
        .output_tokens = output_tokens,
        .strategy = CONFIG_STRATEGY_CHEAPEST,
        .max_price_usd = -1,
        .tie_tolerance = 0,
        .now_ms = clock_mono_ms(),
        .random = 0,
    };
}

static const char *picked(const struct config_route *r, const struct router_request *q,
                          const bool *skip)
{
    const struct config_target *t = router_pick(r, q, skip, NULL);
    return t ? t->backend->name : NULL;
}

static void set_inflight(struct config *cfg, const char *backend, int n)
{
    for (size_t i = 0; i < cfg->n_backends; i++)
        if (!strcmp(cfg->backends[i].name, backend)) {
            atomic_store(&cfg->backends[i].state->inflight, n);
            return;
        }
    fail_msg("no backend %s", backend);
}

static struct backend_state *state_of(struct config *cfg, const char *backend)
{
    for (size_t i = 0; i < cfg->n_backends; i++)
        if (!strcmp(cfg->backends[i].name, backend))
            return cfg->backends[i].state;
    fail_msg("no backend %s", backend);
    return NULL;
}

#define BACKEND(name, in, out)                                                                     \
    "  - name: " name "\n"                                                                         \
    "    url: http://127.0.0.1:9000/" name "\n"                                                    \
    "    models:\n"                                                                                \
    "      - name: m\n"                                                                            \
    "        input_usd_per_mtok: " #in "\n"                                                        \
    "        output_usd_per_mtok: " #out "\n"

static void test_estimate(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("est-a", 2.5, 10));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000000, 0);
    assert_float_equal(router_estimate(&r->targets[0], &q), 2.5, 1e-12);
    q = req(0, 1000000);
    assert_float_equal(router_estimate(&r->targets[0], &q), 10, 1e-12);
    q = req(1000, 500);
    assert_float_equal(router_estimate(&r->targets[0], &q), (1000 * 2.5 + 500 * 10) / 1e6, 1e-15);
    config_unref(cfg);
}

static void test_cheapest_wins(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("cw-mid", 2, 2) BACKEND("cw-cheap", 1, 1)
                                  BACKEND("cw-dear", 3, 3));
    const struct config_route *r = route(cfg, "m");
    assert_int_equal(r->n_targets, 3);
    struct router_request q = req(1000, 200);
    assert_string_equal(picked(r, &q, NULL), "cw-cheap");
    /* Whatever the request's size. */
    q = req(1, 1);
    assert_string_equal(picked(r, &q, NULL), "cw-cheap");
    q = req(100000, 0);
    assert_string_equal(picked(r, &q, NULL), "cw-cheap");
    /* Even when it is busier: with no tolerance, price decides first. */
    set_inflight(cfg, "cw-cheap", 50);
    q = req(1000, 200);
    assert_string_equal(picked(r, &q, NULL), "cw-cheap");
    config_unref(cfg);
}

/* One backend is cheap to read and dear to write, the other the reverse: a long prompt and a
 * long answer go to different places. */
static void test_prompt_vs_answer_mix(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n" BACKEND("mix-reader", 0.5, 10) BACKEND("mix-writer", 5, 1));
    const struct config_route *r = route(cfg, "m");
    struct router_request long_prompt = req(20000, 100);
    struct router_request long_answer = req(100, 4000);
    assert_string_equal(picked(r, &long_prompt, NULL), "mix-reader");
    assert_string_equal(picked(r, &long_answer, NULL), "mix-writer");
    /* The estimates agree with the choice. */
    assert_true(router_estimate(&r->targets[0], &long_prompt) <
                router_estimate(&r->targets[1], &long_prompt));
    assert_true(router_estimate(&r->targets[1], &long_answer) <
                router_estimate(&r->targets[0], &long_answer));
    config_unref(cfg);
}

static void test_skip_flags(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n" BACKEND("sk-a", 1, 1) BACKEND("sk-b", 2, 2) BACKEND("sk-c", 3, 3));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    bool skip[3] = {false, false, false};
    assert_string_equal(picked(r, &q, skip), "sk-a");
    skip[0] = true;
    assert_string_equal(picked(r, &q, skip), "sk-b");
    skip[1] = true;
    assert_string_equal(picked(r, &q, skip), "sk-c");
    skip[0] = false;
    assert_string_equal(picked(r, &q, skip), "sk-a");
    skip[0] = true;
    skip[2] = true;
    struct router_outcome why;
    memset(&why, 0xff, sizeof why);
    assert_null(router_pick(r, &q, skip, &why));
    /* Skipped targets are not "unavailable": the caller chose to skip them. */
    assert_int_equal(why.unavailable, 0);
    assert_int_equal(why.saturated, 0);
    assert_int_equal(why.over_price, 0);
    config_unref(cfg);
}

static void test_tie_fewer_inflight(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n" BACKEND("tie-a", 1, 2) BACKEND("tie-b", 1, 2) BACKEND("tie-c", 1, 2));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    set_inflight(cfg, "tie-a", 5);
    set_inflight(cfg, "tie-b", 2);
    set_inflight(cfg, "tie-c", 3);
    assert_string_equal(picked(r, &q, NULL), "tie-b");
    set_inflight(cfg, "tie-b", 9);
    assert_string_equal(picked(r, &q, NULL), "tie-c");
    set_inflight(cfg, "tie-a", 0);
    assert_string_equal(picked(r, &q, NULL), "tie-a");
    /* A dearer backend is not a tie, however idle. */
    struct config *cfg2 = load("backends:\n" BACKEND("tie-d", 1, 2) BACKEND("tie-e", 1.5, 2));
    r = route(cfg2, "m");
    set_inflight(cfg2, "tie-d", 100);
    assert_string_equal(picked(r, &q, NULL), "tie-d");
    config_unref(cfg2);
    config_unref(cfg);
}

/* Within tie_tolerance of the cheapest, estimates are a tie and load decides. */
static void test_tie_tolerance(void **state)
{
    (void)state;
    struct config *cfg =
        load("backends:\n" BACKEND("tol-a", 1.000, 1.000) BACKEND("tol-b", 1.005, 1.005));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    set_inflight(cfg, "tol-a", 4);
    set_inflight(cfg, "tol-b", 1);
    q.tie_tolerance = 0;
    assert_string_equal(picked(r, &q, NULL), "tol-a");
    q.tie_tolerance = 0.01; /* 0.5% apart: a tie */
    assert_string_equal(picked(r, &q, NULL), "tol-b");
    q.tie_tolerance = 0.001; /* 0.1%: not a tie */
    assert_string_equal(picked(r, &q, NULL), "tol-a");
    config_unref(cfg);
}

static void test_unavailable_and_saturated(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND(
        "av-cheap", 1, 1) "  - name: av-capped\n"
                          "    url: http://127.0.0.1:9000/capped\n"
                          "    max_inflight: 2\n"
                          "    models:\n"
                          "      - name: m\n"
                          "        input_usd_per_mtok: 2\n"
                          "        output_usd_per_mtok: 2\n" BACKEND("av-dear", 9, 9));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    int64_t now = q.now_ms;
    atomic_store(&state_of(cfg, "av-cheap")->ejected_until_ms, now + 5000);
    assert_string_equal(picked(r, &q, NULL), "av-capped");
    set_inflight(cfg, "av-capped", 2);
    struct router_outcome why;
    const struct config_target *t = router_pick(r, &q, NULL, &why);
    assert_non_null(t);
    assert_string_equal(t->backend->name, "av-dear");
    assert_int_equal(why.unavailable, 1);
    assert_int_equal(why.saturated, 1);
    assert_int_equal(why.back_ms, now + 5000);
    /* Nobody left. */
    atomic_store(&state_of(cfg, "av-dear")->probe_down, true);
    assert_null(router_pick(r, &q, NULL, &why));
    assert_int_equal(why.unavailable, 2);
    assert_int_equal(why.saturated, 1);
    /* Back once the ejection is over. */
    q.now_ms = now + 5001;
    assert_string_equal(picked(r, &q, NULL), "av-cheap");
    set_inflight(cfg, "av-capped", 1);
    atomic_store(&state_of(cfg, "av-cheap")->ejected_until_ms, now + 60000);
    assert_string_equal(picked(r, &q, NULL), "av-capped");
    config_unref(cfg);
}

static void test_price_ceiling(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("pc-a", 2, 4) BACKEND("pc-b", 3, 6));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 1000); /* a: 0.006 USD, b: 0.009 USD */
    q.max_price_usd = 0.01;
    assert_string_equal(picked(r, &q, NULL), "pc-a");
    q.max_price_usd = 0.006;
    assert_string_equal(picked(r, &q, NULL), "pc-a");
    q.max_price_usd = 0.005;
    struct router_outcome why;
    assert_null(router_pick(r, &q, NULL, &why));
    assert_int_equal(why.over_price, 2);
    assert_float_equal(why.cheapest_usd, 0.006, 1e-12);
    /* Zero is a ceiling too (only free models), not "no ceiling". */
    q.max_price_usd = 0;
    assert_null(router_pick(r, &q, NULL, NULL));
    config_unref(cfg);
}

/* A live price from a price feed overrides the configured one. */
static void test_live_prices(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("lp-a", 1, 1) BACKEND("lp-b", 2, 2));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    assert_string_equal(picked(r, &q, NULL), "lp-a");
    assert_non_null(r->targets[0].model->price);
    backend_set_price(r->targets[0].model->price, 5, 5, q.now_ms);
    assert_string_equal(picked(r, &q, NULL), "lp-b");
    assert_float_equal(router_estimate(&r->targets[0], &q), (1000 * 5 + 100 * 5) / 1e6, 1e-15);
    backend_set_price(r->targets[0].model->price, 1, 1, q.now_ms);
    assert_string_equal(picked(r, &q, NULL), "lp-a");
    config_unref(cfg);
}

static void test_latency_strategy(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("lat-cheap", 1, 1) BACKEND("lat-fast", 5, 5));
    const struct config_route *r = route(cfg, "m");
    atomic_store(&state_of(cfg, "lat-cheap")->ttfb_ewma_us, 900000);
    atomic_store(&state_of(cfg, "lat-fast")->ttfb_ewma_us, 80000);
    struct router_request q = req(1000, 100);
    assert_string_equal(picked(r, &q, NULL), "lat-cheap");
    q.strategy = CONFIG_STRATEGY_LATENCY;
    assert_string_equal(picked(r, &q, NULL), "lat-fast");
    config_unref(cfg);
}

/* Price-weighted: cost 1 vs cost 2 gives weights 1 : 1/4, so the cheap node takes ~80%. */
static void test_price_weighted_spread(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("pw-cheap", 1, 1) BACKEND("pw-dear", 2, 2));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 1000);
    q.strategy = CONFIG_STRATEGY_PRICE_WEIGHTED;
    uint64_t x = 0x9E3779B97F4A7C15ull;
    int cheap = 0, n = 20000;
    for (int i = 0; i < n; i++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        q.random = x;
        const char *name = picked(r, &q, NULL);
        assert_non_null(name);
        cheap += !strcmp(name, "pw-cheap");
    }
    assert_in_range(cheap, (int)(n * 0.77), (int)(n * 0.83));
    config_unref(cfg);
}

/* Backend state is found by name, so it survives a reload of the config. */
static void test_state_survives_reload(void **state)
{
    (void)state;
    struct config *a = load("backends:\n" BACKEND("rl-x", 1, 1));
    struct backend_state *s = a->backends[0].state;
    struct config *b = NULL;
    char *errors = NULL;
    const char *yaml = "backends:\n" BACKEND("rl-x", 3, 3);
    b = config_load_string(yaml, strlen(yaml), "reload.yaml", &errors);
    assert_non_null(b);
    assert_int_equal(backend_attach(b), 0);
    assert_ptr_equal(b->backends[0].state, s);
    config_unref(a);
    config_unref(b);
}

/* ---- strategies: ties, filters, the weighted draw ---------------------------------------------
 */

static void set_ttfb(struct config *cfg, const char *backend, uint64_t us)
{
    atomic_store(&state_of(cfg, backend)->ttfb_ewma_us, us);
}

/* The three names config accepts are the three strategies, in enum order. */
static void test_strategy_names(void **state)
{
    (void)state;
    enum config_strategy s = CONFIG_STRATEGY_LATENCY;
    assert_int_equal(config_parse_strategy("cheapest", &s), 0);
    assert_int_equal(s, CONFIG_STRATEGY_CHEAPEST);
    assert_int_equal(config_parse_strategy("price-weighted", &s), 0);
    assert_int_equal(s, CONFIG_STRATEGY_PRICE_WEIGHTED);
    assert_int_equal(config_parse_strategy("latency", &s), 0);
    assert_int_equal(s, CONFIG_STRATEGY_LATENCY);
    assert_int_equal(config_parse_strategy("fastest", &s), -1);
    assert_int_equal(s, CONFIG_STRATEGY_LATENCY);
}

/* Cheapest, among a tie: fewer in flight, then lower time to first byte (unmeasured counts as
 * 0), then the lower estimate, then the first listed. */
static void test_cheapest_tie_breaks(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("ctb-a", 1.004, 1.004)
                                  BACKEND("ctb-b", 1.002, 1.002) BACKEND("ctb-c", 1, 1));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    q.tie_tolerance = 0.01;
    set_ttfb(cfg, "ctb-a", 300000);
    set_ttfb(cfg, "ctb-b", 200000);
    set_ttfb(cfg, "ctb-c", 400000);
    assert_string_equal(picked(r, &q, NULL), "ctb-b");
    /* Load comes before latency. */
    set_inflight(cfg, "ctb-b", 1);
    assert_string_equal(picked(r, &q, NULL), "ctb-a");
    /* Same load and latency: the lower estimate. */
    set_inflight(cfg, "ctb-b", 0);
    set_ttfb(cfg, "ctb-a", 200000);
    set_ttfb(cfg, "ctb-c", 200000);
    assert_string_equal(picked(r, &q, NULL), "ctb-c");
    /* A node not measured yet counts as the fastest. */
    set_ttfb(cfg, "ctb-a", 0);
    assert_string_equal(picked(r, &q, NULL), "ctb-a");
    /* Outside the tolerance none of this matters: the cheapest, however loaded and slow. */
    q.tie_tolerance = 0;
    set_inflight(cfg, "ctb-c", 40);
    set_ttfb(cfg, "ctb-c", 9000000);
    assert_string_equal(picked(r, &q, NULL), "ctb-c");
    config_unref(cfg);

    /* Everything equal: the first listed. */
    cfg = load("backends:\n" BACKEND("cte-x", 2, 2) BACKEND("cte-y", 2, 2));
    r = route(cfg, "m");
    assert_string_equal(picked(r, &q, NULL), "cte-x");
    config_unref(cfg);
}

/* Latency: lowest time to first byte whatever the load; a tie goes to the lower estimate; the
 * unavailable, the full and the over-priced are skipped as for any strategy. */
static void test_latency_ties_and_filters(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("ltf-dear", 4, 4)
                                  BACKEND("ltf-mid", 2, 2) "  - name: ltf-capped\n"
                                                           "    url: http://127.0.0.1:9000/capped\n"
                                                           "    max_inflight: 1\n"
                                                           "    models:\n"
                                                           "      - name: m\n"
                                                           "        input_usd_per_mtok: 3\n"
                                                           "        output_usd_per_mtok: 3\n");
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    q.strategy = CONFIG_STRATEGY_LATENCY;
    set_ttfb(cfg, "ltf-dear", 100000);
    set_ttfb(cfg, "ltf-mid", 100000);
    set_ttfb(cfg, "ltf-capped", 50000);
    assert_string_equal(picked(r, &q, NULL), "ltf-capped");
    set_inflight(cfg, "ltf-dear", 30); /* load does not count */
    set_inflight(cfg, "ltf-capped", 1);
    assert_string_equal(picked(r, &q, NULL), "ltf-mid"); /* tie with ltf-dear: cheaper */
    set_ttfb(cfg, "ltf-dear", 99999);
    assert_string_equal(picked(r, &q, NULL), "ltf-dear");
    atomic_store(&state_of(cfg, "ltf-dear")->ejected_until_ms, q.now_ms + 1);
    assert_string_equal(picked(r, &q, NULL), "ltf-mid");
    q.max_price_usd = router_estimate(&r->targets[1], &q) / 2;
    struct router_outcome why;
    assert_null(router_pick(r, &q, NULL, &why));
    assert_int_equal(why.unavailable, 1);
    assert_int_equal(why.saturated, 1);
    assert_int_equal(why.over_price, 1);
    /* Unmeasured is the fastest of all. */
    q.max_price_usd = -1;
    set_inflight(cfg, "ltf-capped", 0);
    set_ttfb(cfg, "ltf-capped", 0);
    assert_string_equal(picked(r, &q, NULL), "ltf-capped");
    config_unref(cfg);
}

/* The random number of a draw that lands at fraction f of the total weight. */
static uint64_t draw_at(double f)
{
    return (uint64_t)(f * 9007199254740992.0) << 11; /* f x 2^53, into the top 53 bits */
}

/* Price-weighted: weights 1/estimate^2 in target order, one draw of req->random. */
static void test_price_weighted_draw(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("pwd-cheap", 1, 1) BACKEND("pwd-dear", 2, 2)
                                  BACKEND("pwd-gone", 0.5, 0.5));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 1000);
    q.strategy = CONFIG_STRATEGY_PRICE_WEIGHTED;
    /* pwd-gone is ejected: the draw is over 1 : 1/4, so cheap holds the first 80%. */
    atomic_store(&state_of(cfg, "pwd-gone")->ejected_until_ms, q.now_ms + 60000);
    q.random = 0;
    assert_string_equal(picked(r, &q, NULL), "pwd-cheap");
    q.random = draw_at(0.79);
    assert_string_equal(picked(r, &q, NULL), "pwd-cheap");
    q.random = draw_at(0.81);
    assert_string_equal(picked(r, &q, NULL), "pwd-dear");
    q.random = UINT64_MAX;
    assert_string_equal(picked(r, &q, NULL), "pwd-dear");
    /* Back, it takes the last 4 / 5.25 of the draw (weights 1, 1/4, 4 in target order). */
    atomic_store(&state_of(cfg, "pwd-gone")->ejected_until_ms, 0);
    q.random = draw_at(0.18);
    assert_string_equal(picked(r, &q, NULL), "pwd-cheap");
    q.random = draw_at(0.20);
    assert_string_equal(picked(r, &q, NULL), "pwd-dear");
    q.random = draw_at(0.24);
    assert_string_equal(picked(r, &q, NULL), "pwd-gone");
    q.random = draw_at(0.76);
    assert_string_equal(picked(r, &q, NULL), "pwd-gone");
    config_unref(cfg);

    /* Target order is config order: here the dear one comes first. */
    cfg = load("backends:\n" BACKEND("pwo-dear", 2, 2) BACKEND("pwo-cheap", 1, 1));
    r = route(cfg, "m");
    q.random = draw_at(0.19);
    assert_string_equal(picked(r, &q, NULL), "pwo-dear");
    q.random = draw_at(0.21);
    assert_string_equal(picked(r, &q, NULL), "pwo-cheap");
    /* A full node is not drawn at all. */
    struct config *capped = load("backends:\n"
                                 "  - name: pwc-full\n"
                                 "    url: http://127.0.0.1:9000/full\n"
                                 "    max_inflight: 3\n"
                                 "    models:\n"
                                 "      - name: m\n"
                                 "        input_usd_per_mtok: 0.1\n"
                                 "        output_usd_per_mtok: 0.1\n" BACKEND("pwc-open", 5, 5));
    const struct config_route *rc = route(capped, "m");
    set_inflight(capped, "pwc-full", 3);
    for (int i = 0; i <= 10; i++) {
        q.random = draw_at(i / 10.0 * 0.999999);
        assert_string_equal(picked(rc, &q, NULL), "pwc-open");
    }
    config_unref(capped);
    config_unref(cfg);

    /* A free node's weight is 1e24 (cost floored at 1e-12): against 2.5e5 for a 0.002 USD
     * estimate, it takes even the last draw; the paid node listed before it keeps only the
     * draws that round to its sliver (here, a draw of exactly 0). */
    cfg = load("backends:\n" BACKEND("pwf-paid", 1, 1) BACKEND("pwf-free", 0, 0));
    r = route(cfg, "m");
    q.random = UINT64_MAX;
    assert_string_equal(picked(r, &q, NULL), "pwf-free");
    q.random = 0;
    assert_string_equal(picked(r, &q, NULL), "pwf-paid");
    q.random = draw_at(1e-12);
    assert_string_equal(picked(r, &q, NULL), "pwf-free");
    config_unref(cfg);
}

/* Why nothing was picked: back_ms is the soonest known return; a node whose probes fail has
 * no known return and does not hide the others'. */
static void test_outcome_back_ms(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("ob-a", 1, 1) BACKEND("ob-b", 1, 1)
                                  BACKEND("ob-c", 1, 1) BACKEND("ob-d", 1, 1));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    int64_t now = q.now_ms;
    atomic_store(&state_of(cfg, "ob-a")->ejected_until_ms, now + 9000);
    atomic_store(&state_of(cfg, "ob-b")->probe_down, true);
    backend_record_rate_limited(state_of(cfg, "ob-c"), &cfg->routing, 4000, now * 1000, now);
    atomic_store(&state_of(cfg, "ob-d")->ejected_until_ms, now + 7000);
    static const enum config_strategy all[] = {
        CONFIG_STRATEGY_CHEAPEST, CONFIG_STRATEGY_PRICE_WEIGHTED, CONFIG_STRATEGY_LATENCY};
    for (size_t i = 0; i < 3; i++) {
        q.strategy = all[i];
        struct router_outcome why;
        assert_null(router_pick(r, &q, NULL, &why));
        assert_int_equal(why.unavailable, 4);
        assert_int_equal(why.back_ms, now + 4000);
        assert_int_equal(why.saturated, 0);
        assert_int_equal(why.over_price, 0);
    }
    /* The pause over, the rate-limited node is the one left. */
    q.now_ms = now + 4000;
    q.strategy = CONFIG_STRATEGY_CHEAPEST;
    assert_string_equal(picked(r, &q, NULL), "ob-c");
    /* Only the probed-down one: nothing known. */
    q.now_ms = now + 9000;
    bool skip[4] = {true, false, true, true};
    struct router_outcome why;
    assert_null(router_pick(r, &q, skip, &why));
    assert_int_equal(why.unavailable, 1);
    assert_int_equal(why.back_ms, 0);
    atomic_store(&state_of(cfg, "ob-b")->probe_down, false);
    atomic_store(&state_of(cfg, "ob-c")->ejected_until_ms, 0);
    config_unref(cfg);
}

/* Learned limits: a node at its learned limit spills to the next cheapest; when every node is
 * at its limit the request goes to the one least over it (it may take it, or say 429), never
 * to none; max_inflight stays a hard cap; a node in slow start takes a share of its limit. */
static void test_learned_limits(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("ll-cheap", 1, 1)
                                  BACKEND("ll-mid", 2, 2) "  - name: ll-capped\n"
                                                          "    url: http://127.0.0.1:9000/capped\n"
                                                          "    max_inflight: 2\n"
                                                          "    models:\n"
                                                          "      - name: m\n"
                                                          "        input_usd_per_mtok: 3\n"
                                                          "        output_usd_per_mtok: 3\n");
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    q.cfg = cfg;
    /* A node that never answered is on probation: one request at a time. */
    assert_int_equal(backend_limit(cfg, &cfg->backends[0], q.now_ms), 1);
    set_inflight(cfg, "ll-cheap", 1);
    assert_string_equal(picked(r, &q, NULL), "ll-mid");
    /* Once each has answered: routing.limit_initial (8); twice that while it never refused. */
    for (size_t i = 0; i < 3; i++)
        atomic_store(&cfg->backends[i].state->limit.successes, 1);
    assert_int_equal(backend_limit(cfg, &cfg->backends[0], q.now_ms), 16);
    atomic_store(&state_of(cfg, "ll-cheap")->limit.phase, LIMITER_STEADY);
    atomic_store(&state_of(cfg, "ll-mid")->limit.phase, LIMITER_STEADY);
    assert_int_equal(backend_limit(cfg, &cfg->backends[0], q.now_ms), 8);
    set_inflight(cfg, "ll-cheap", 7);
    assert_string_equal(picked(r, &q, NULL), "ll-cheap");
    set_inflight(cfg, "ll-cheap", 8);
    struct router_outcome why;
    assert_string_equal(router_pick(r, &q, NULL, &why)->backend->name, "ll-mid");
    assert_int_equal(why.full, 1);
    /* A 429 with 3 others in flight: the limit comes down to 3. */
    set_inflight(cfg, "ll-cheap", 4);
    assert_false(backend_record_rate_limited(state_of(cfg, "ll-cheap"), &cfg->routing, 0,
                                             q.now_ms * 1000, q.now_ms));
    assert_true(backend_available(state_of(cfg, "ll-cheap"), q.now_ms, NULL));
    assert_int_equal(backend_limit(cfg, &cfg->backends[0], q.now_ms), 3);
    set_inflight(cfg, "ll-cheap", 3);
    assert_string_equal(picked(r, &q, NULL), "ll-mid");
    /* Everyone at the limit (the capped one at its hard cap): the least over its own limit
     * (cheap 4/3, mid 9/8), never "no backend". */
    set_inflight(cfg, "ll-mid", 8);
    set_inflight(cfg, "ll-capped", 2);
    assert_string_equal(router_pick(r, &q, NULL, &why)->backend->name, "ll-mid");
    assert_int_equal(why.full, 2);
    assert_int_equal(why.saturated, 1);
    set_inflight(cfg, "ll-mid", 12);
    assert_string_equal(picked(r, &q, NULL), "ll-cheap");
    /* Waiting for a slot is the caller's choice: with free_only, nothing rather than a node
     * at its limit. */
    q.free_only = true;
    assert_null(router_pick(r, &q, NULL, &why));
    assert_int_equal(why.full, 2);
    q.free_only = false;
    /* Without learned limits (no config in the request), only the hard cap counts. */
    q.cfg = NULL;
    assert_string_equal(picked(r, &q, NULL), "ll-cheap");
    q.cfg = cfg;
    /* Slow start: back in service now, the mid node (limit 8) takes 10% of it: one. */
    set_inflight(cfg, "ll-cheap", 3);
    set_inflight(cfg, "ll-mid", 0);
    limiter_ramp(&state_of(cfg, "ll-mid")->limit, q.now_ms);
    assert_int_equal(backend_limit(cfg, &cfg->backends[1], q.now_ms), 1);
    assert_string_equal(picked(r, &q, NULL), "ll-mid");
    set_inflight(cfg, "ll-mid", 1);
    set_inflight(cfg, "ll-capped", 0);
    assert_string_equal(picked(r, &q, NULL), "ll-capped");
    q.now_ms += cfg->health.slow_start_ms;
    assert_int_equal(backend_limit(cfg, &cfg->backends[1], q.now_ms), 8);
    assert_string_equal(picked(r, &q, NULL), "ll-mid");
    config_unref(cfg);
}

/* A node at its learned limit is still tried before a free one that costs more than
 * ROUTER_OVERFLOW_FACTOR times as much (its limit is a guess; a 429 costs a round trip). */
static void test_overflow_to_much_cheaper(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("of-cheap", 1, 1) BACKEND("of-dear", 5, 5)
                                  BACKEND("of-mid", 3, 3));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    q.cfg = cfg;
    /* Never answered: on probation, its one request is all it gets while the request may
     * wait; a node under 4x it is taken instead... */
    set_inflight(cfg, "of-cheap", 1);
    q.free_only = true;
    assert_string_equal(picked(r, &q, NULL), "of-mid");
    /* ... one dearer is not: the request waits for a slot (briefly, as wait_probation says,
     * for one dearer than 1.25x)... */
    atomic_store(&state_of(cfg, "of-mid")->ejected_until_ms, q.now_ms + 10000);
    assert_null(picked(r, &q, NULL));
    q.free_only = false;
    assert_string_equal(picked(r, &q, NULL), "of-cheap"); /* ... until it may wait no longer */
    atomic_store(&state_of(cfg, "of-mid")->ejected_until_ms, 0);
    q.wait_probation = q.free_only = true;
    assert_null(picked(r, &q, NULL)); /* mid is 3x */
    q.wait_probation = q.free_only = false;
    for (size_t i = 0; i < 3; i++) {
        atomic_store(&cfg->backends[i].state->limit.successes, 1);
        atomic_store(&cfg->backends[i].state->limit.phase, LIMITER_STEADY);
    }
    set_inflight(cfg, "of-cheap", 8);
    assert_string_equal(picked(r, &q, NULL), "of-mid"); /* 3 < 4 x 1 */
    atomic_store(&state_of(cfg, "of-mid")->ejected_until_ms, q.now_ms + 10000);
    assert_string_equal(picked(r, &q, NULL), "of-cheap"); /* 5 > 4 x 1 */
    q.strategy = CONFIG_STRATEGY_LATENCY;                 /* cost is not what latency is about */
    assert_string_equal(picked(r, &q, NULL), "of-dear");
    q.strategy = CONFIG_STRATEGY_CHEAPEST;
    bool skip[3] = {true, false, false};
    assert_string_equal(picked(r, &q, skip), "of-dear");
    config_unref(cfg);
}

/* A node flagged for over-reporting usage is ranked at its listed price x its inflation: it
 * wins only where it is cheapest at what it claims. The price ceiling is on the listed
 * estimate (what the caller is billed). */
static void test_effective_price(void **state)
{
    (void)state;
    struct config *cfg = load("backends:\n" BACKEND("ep-liar", 1, 1) BACKEND("ep-honest", 2, 2)
                                  BACKEND("ep-dear", 5, 5));
    const struct config_route *r = route(cfg, "m");
    struct router_request q = req(1000, 100);
    assert_string_equal(picked(r, &q, NULL), "ep-liar");
    /* Four times the usage the gateway estimates, with no peer to compare with. */
    struct honesty_sample s = {
        .rep_prompt = 4000, .rep_completion = 400, .est_prompt = 1000, .est_completion = 100};
    struct honesty_verdict v;
    for (int i = 0; i < 5; i++)
        honesty_observe(r, &cfg->backends[0].models[0], &cfg->routing, &s, &v);
    assert_true(v.flagged);
    assert_float_equal(router_effective_estimate(&r->targets[0], &q),
                       4 * router_estimate(&r->targets[0], &q), 1e-12);
    assert_string_equal(picked(r, &q, NULL), "ep-honest");
    /* Still the pick where it is cheapest even at x4. */
    set_inflight(cfg, "ep-honest", 0);
    atomic_store(&state_of(cfg, "ep-honest")->ejected_until_ms, q.now_ms + 10000);
    assert_string_equal(picked(r, &q, NULL), "ep-liar");
    q.max_price_usd = router_estimate(&r->targets[0], &q);
    assert_string_equal(picked(r, &q, NULL), "ep-liar");
    config_unref(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_estimate),
        cmocka_unit_test(test_cheapest_wins),
        cmocka_unit_test(test_prompt_vs_answer_mix),
        cmocka_unit_test(test_skip_flags),
        cmocka_unit_test(test_tie_fewer_inflight),
        cmocka_unit_test(test_tie_tolerance),
        cmocka_unit_test(test_unavailable_and_saturated),
        cmocka_unit_test(test_price_ceiling),
        cmocka_unit_test(test_live_prices),
        cmocka_unit_test(test_latency_strategy),
        cmocka_unit_test(test_price_weighted_spread),
        cmocka_unit_test(test_state_survives_reload),
        cmocka_unit_test(test_strategy_names),
        cmocka_unit_test(test_cheapest_tie_breaks),
        cmocka_unit_test(test_latency_ties_and_filters),
        cmocka_unit_test(test_price_weighted_draw),
        cmocka_unit_test(test_outcome_back_ms),
        cmocka_unit_test(test_learned_limits),
        cmocka_unit_test(test_overflow_to_much_cheaper),
        cmocka_unit_test(test_effective_price),
    };
    return cmocka_run_group_tests_name("router", tests, NULL, NULL);
}

/* Unit tests for config/groups, routing/capability and openai/bignum: a model group's route
 * and its tiers, a request's own chain, the router taking a chain tier by tier and skipping
 * targets without a capability or context, and integers beyond 64 bits kept through a parse
 * and a dump. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/clock.h"
#include "base/error.h"
#include "config/caps.h"
#include "config/groups.h"
#include "openai/bignum.h"
#include "openai/needs.h"
#include "openai/openai.h"
#include "routing/backend.h"
#include "routing/capability.h"
#include "routing/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char yaml[] =
    "listen: 127.0.0.1:1\n"
    "backends:\n"
    "  - name: ga\n"
    "    url: http://127.0.0.1:1/v1\n"
    "    models:\n"
    "      - {name: first, input_usd_per_mtok: 1, output_usd_per_mtok: 1,\n"
    "         capabilities: [tools], context_length: 1000}\n"
    "  - name: gb\n"
    "    url: http://127.0.0.1:2/v1\n"
    "    models:\n"
    "      - {name: second, input_usd_per_mtok: 50, output_usd_per_mtok: 50,\n"
    "         capabilities: {vision: true}}\n"
    "      - {name: first, input_usd_per_mtok: 9, output_usd_per_mtok: 9,\n"
    "         cached_input_usd_per_mtok: 0.5}\n"
    "model_groups:\n"
    "  chain: [first, second]\n";

static struct config *load(void)
{
    char *errors = NULL;
    struct config *cfg = config_load_string(yaml, strlen(yaml), "groups.yaml", &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "");
    assert_int_equal(backend_attach(cfg), 0);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        struct backend_state *s = cfg->backends[i].state;
        atomic_store(&s->inflight, 0);
        atomic_store(&s->ejected_until_ms, 0);
        atomic_store(&s->eject_reason, BACKEND_EJECT_NONE);
        atomic_store(&s->probe_down, false);
        memset(&s->limit, 0, sizeof s->limit);
        memset(&s->stuck, 0, sizeof s->stuck);
    }
    return cfg;
}

static struct router_request req(size_t prompt_tokens)
{
    return (struct router_request){
        .prompt_tokens = prompt_tokens,
        .output_tokens = 10,
        .strategy = CONFIG_STRATEGY_CHEAPEST,
        .max_price_usd = -1,
        .now_ms = clock_mono_ms(),
    };
}

static void test_group_route(void **state)
{
    (void)state;
    struct config *cfg = load();
    const struct config_route *g = config_find_route(cfg, "chain");
    assert_non_null(g);
    assert_int_equal(g->n_tiers, 2);
    assert_int_equal(g->n_targets, 3);
    /* In chain order: first's two targets (tier 0), then second's (tier 1). */
    assert_string_equal(g->targets[0].model->name, "first");
    assert_int_equal(g->targets[0].tier, 0);
    assert_string_equal(g->targets[1].model->name, "first");
    assert_string_equal(g->targets[2].model->name, "second");
    assert_int_equal(g->targets[2].tier, 1);
    /* Each target knows its model's own route. */
    assert_ptr_equal(g->targets[2].origin, config_find_route(cfg, "second"));
    assert_ptr_equal(config_find_route(cfg, "first")->targets[0].origin,
                     config_find_route(cfg, "first"));
    config_unref(cfg);
}

static void test_router_tiers(void **state)
{
    (void)state;
    struct config *cfg = load();
    const struct config_route *g = config_find_route(cfg, "chain");
    struct router_request q = req(10);
    /* The cheapest of the first model, never the second while the first has a node. */
    const struct config_target *t = router_pick(g, &q, NULL, NULL);
    assert_non_null(t);
    assert_string_equal(t->backend->name, "ga");
    bool skip[3] = {true, true, false};
    t = router_pick(g, &q, skip, NULL);
    assert_string_equal(t->model->name, "second");
    /* Over the ceiling at ga (and gb's first, dearer): the second model's... also dearer. */
    q.max_price_usd = 0.0000001;
    struct router_outcome why;
    assert_null(router_pick(g, &q, NULL, &why));
    assert_int_equal(why.over_price, 3);
    config_unref(cfg);
}

static void test_router_capabilities(void **state)
{
    (void)state;
    struct config *cfg = load();
    const struct config_route *first = config_find_route(cfg, "first");
    struct router_request q = req(10);
    /* Tools: ga declares them; gb's first says nothing (supported unless required). */
    q.caps_needed = CONFIG_CAP_TOOLS;
    assert_string_equal(router_pick(first, &q, NULL, NULL)->backend->name, "ga");
    /* Logprobs: ga's list leaves them out (unsupported); gb's first is unknown. */
    q.caps_needed = CONFIG_CAP_LOGPROBS;
    assert_string_equal(router_pick(first, &q, NULL, NULL)->backend->name, "gb");
    q.caps_declared = true;
    struct router_outcome why;
    assert_null(router_pick(first, &q, NULL, &why));
    assert_int_equal(why.incapable, 2);
    assert_int_equal(why.lacking, CONFIG_CAP_LOGPROBS);
    /* A prompt over ga's 1000 tokens goes to gb. */
    q = req(5000);
    assert_string_equal(router_pick(first, &q, NULL, NULL)->backend->name, "gb");
    /* Cached price: the config's, else the input price given. */
    assert_true(capability_cached_price(first->targets[1].model, 9) == 0.5);
    assert_true(capability_cached_price(first->targets[0].model, 1) == 1);
    config_unref(cfg);
}

static void test_request_chain(void **state)
{
    (void)state;
    struct config *cfg = load();
    const char *names[] = {"second", "chain", "second"};
    struct config_route r;
    const char *unknown = NULL;
    assert_int_equal(config_chain_route(cfg, names, 3, &r, &unknown), 0);
    /* second (tier 0), then the group's chain: first (1), second again is a repeat. */
    assert_int_equal(r.n_tiers, 3);
    assert_int_equal(r.n_targets, 4);
    assert_string_equal(r.targets[0].model->name, "second");
    assert_string_equal(r.targets[1].model->name, "first");
    assert_int_equal(r.targets[1].tier, 1);
    assert_int_equal(r.targets[3].tier, 2);
    free(r.targets);
    const char *bad[] = {"second", "nope"};
    assert_int_equal(config_chain_route(cfg, bad, 2, &r, &unknown), 1);
    assert_string_equal(unknown, "nope");
    config_unref(cfg);
}

static void test_group_problems(void **state)
{
    (void)state;
    static const char *const cases[][2] = {
        {"  g: [first, nope]\n", "model_groups.g: no backend serves the model \"nope\""},
        {"  first: [second]\n", "model_groups.first: a backend serves a model of this name"},
        {"  g: []\n", "model_groups.g: must list 1 to 16 model names"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[2048];
        snprintf(text, sizeof text, "%.*smodel_groups:\n%s",
                 (int)(strstr(yaml, "model_groups:") - yaml), yaml, cases[i][0]);
        char *errors = NULL;
        struct config *cfg = config_load_string(text, strlen(text), "g.yaml", &errors);
        assert_null(cfg);
        assert_non_null(errors);
        if (!strstr(errors, cases[i][1]))
            fail_msg("case %zu: %s", i, errors);
        free(errors);
    }
}

static void test_needed_caps(void **state)
{
    (void)state;
    json_t *b = json_loads("{\"tools\":[{\"type\":\"function\"}],\"response_format\":{\"type\":"
                           "\"json_schema\"},\"logprobs\":true,\"messages\":[{\"role\":\"user\","
                           "\"content\":[{\"type\":\"image_url\"},{\"type\":\"input_audio\"}]}]}",
                           0, NULL);
    assert_int_equal(openai_needed_caps(OPENAI_CHAT, b), CONFIG_CAP_ALL);
    json_decref(b);
    b = json_loads("{\"tools\":[],\"logprobs\":false,\"messages\":[{\"role\":\"user\","
                   "\"content\":\"hi\"}]}",
                   0, NULL);
    assert_int_equal(openai_needed_caps(OPENAI_CHAT, b), 0);
    json_decref(b);
}

static void test_bignums(void **state)
{
    (void)state;
    const char text[] = "{\"a\":12345678901234567890,\"b\":[-9223372036854775809,"
                        "9223372036854775807,2.5],\"c\":\"x\"}";
    json_t *doc = NULL;
    char msg[256];
    /* jansson alone refuses it... */
    assert_null(json_loads(text, 0, NULL));
    /* ...parsed with the big ones held, written back with their digits. */
    assert_int_equal(openai_parse_bignums(text, strlen(text), &doc, msg, sizeof msg), 0);
    assert_true(json_is_string(json_object_get(doc, "a")));
    assert_true(json_is_integer(json_array_get(json_object_get(doc, "b"), 1)));
    char *out = openai_dump_body(doc);
    assert_non_null(out);
    assert_string_equal(out, "{\"a\":12345678901234567890,\"b\":[-9223372036854775809,"
                             "9223372036854775807,2.5],\"c\":\"x\"}");
    free(out);
    json_decref(doc);
    /* A caller's string shaped like the marker is refused. */
    const char forged[] = "{\"s\":\"\\u0000tollgate-bignum:1\",\"n\":99999999999999999999}";
    assert_int_equal(openai_parse_bignums(forged, strlen(forged), &doc, msg, sizeof msg),
                     TG_ERR_INVALID_VALUE);
    assert_null(doc);
    /* Through the body parser, as the gateway reads a request. */
    char param[64];
    assert_int_equal(
        openai_parse_body(text, strlen(text), 1 << 20, &doc, param, sizeof param, msg, sizeof msg),
        0);
    json_decref(doc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_route),
        cmocka_unit_test(test_router_tiers),
        cmocka_unit_test(test_router_capabilities),
        cmocka_unit_test(test_request_chain),
        cmocka_unit_test(test_group_problems),
        cmocka_unit_test(test_needed_caps),
        cmocka_unit_test(test_bignums),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

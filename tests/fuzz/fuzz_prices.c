/* Fuzz target: a price feed (a backend's prices_url document), as routing/health.c reads it:
 * jansson parses the body and health_apply_prices() prices a backend's models from it.
 *
 * The backend is built here, not from a config: three models (one with an upstream name that
 * differs, one with no live price slot), their slots reset before each run.
 *
 * Checks: no more models priced than the backend has; a live price is a number of USD per
 * million tokens from 0 to 10^6 (a dollar a token); a model priced is one whose slot went
 * live, and nothing else changed. */
#include "tests/fuzz/fuzz.h"

#include "config/config.h"
#include "routing/backend.h"
#include "routing/health.h"

#include <jansson.h>
#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define N_MODELS 3

static struct backend_price slots[N_MODELS];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct config_model models[N_MODELS] = {
        {.name = "llama-3.1-8b", .input_usd_per_mtok = 0.1, .output_usd_per_mtok = 0.2},
        {.name = "gpt-x",
         .upstream = "openai/gpt-x",
         .input_usd_per_mtok = 1,
         .output_usd_per_mtok = 2},
        {.name = "unpriced", .input_usd_per_mtok = 3, .output_usd_per_mtok = 4},
    };
    /* Fresh slots every run: no price, no history (this thread is their only user). */
    memset(slots, 0, sizeof slots);
    for (size_t i = 0; i < N_MODELS - 1; i++)
        models[i].price = &slots[i];
    struct config_backend b = {.name = "fuzz", .models = models, .n_models = N_MODELS};

    /* As check_on_done() does with a 200 answer's body. */
    json_t *doc = json_loadb(size ? (const char *)data : "", size, 0, NULL);
    if (!doc)
        return 0;
    int priced = health_apply_prices(&b, doc, 1000);
    json_decref(doc);

    FUZZ_CHECK(priced >= 0 && priced <= N_MODELS);
    int live = 0;
    for (size_t i = 0; i < N_MODELS; i++) {
        double in = backend_input_price(&models[i]), out = backend_output_price(&models[i]);
        if (!models[i].price || !atomic_load(&slots[i].live)) {
            FUZZ_CHECK(in == models[i].input_usd_per_mtok && out == models[i].output_usd_per_mtok);
            continue;
        }
        live++;
        FUZZ_CHECK(atomic_load(&slots[i].version) % 2 == 0); /* no write left half done */
        FUZZ_CHECK(isfinite(in) && in >= 0 && in <= 1e6);
        FUZZ_CHECK(isfinite(out) && out >= 0 && out <= 1e6);
    }
    /* The model without a slot is counted but has nothing to set. */
    FUZZ_CHECK(live <= priced && priced <= live + 1);
    return 0;
}

/* Capability-aware routing: whether a backend model can take a request that needs some
 * capabilities (config/caps.h) and has a prompt of some length, from what the config declares
 * and, where the config is silent, what the node's price feed says (OpenRouter's
 * `supported_parameters`, `architecture.input_modalities`, `context_length`,
 * `pricing.input_cache_read`). Undeclared means supported, unless the request demands that
 * every capability it uses be declared (x-tollgate-require-parameters: true, OpenRouter's
 * require_parameters).
 *
 * The feed's part lives in the model's price slot (routing/backend.h): written by the health
 * thread, read by workers, each field an atomic. */
#ifndef TOLLGATE_CAPABILITY_H
#define TOLLGATE_CAPABILITY_H

#include "config/config.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What a price feed declares of one model; zero = nothing. */
struct capability_feed {
    atomic_uint known;     /* CONFIG_CAP_* bits the feed declares */
    atomic_uint supported; /* of those, the supported ones */
    _Atomic uint64_t context_length;
    _Atomic uint64_t cached_bits; /* USD per million cached input tokens, as a double's bits */
    atomic_bool cached_live;
};

/* Takes what one item of a /models feed (`data[i]`) says; the rest stays as it was. */
void capability_apply_feed(struct capability_feed *f, json_t *item);

enum capability_verdict {
    CAPABILITY_OK = 0,
    CAPABILITY_LACKS,    /* a needed capability is unsupported (or undeclared, if demanded) */
    CAPABILITY_TOO_LONG, /* the estimated prompt is over the context length */
};

/* Whether the model can take a request needing `needed` with a prompt of about
 * prompt_tokens; *lacking (may be NULL) gets the missing bits, *context the context length
 * that was too short. */
enum capability_verdict capability_check(const struct config_model *m, unsigned needed,
                                         bool declared_only, size_t prompt_tokens,
                                         unsigned *lacking, unsigned long *context);

/* The model's declared capabilities (config first, then the feed): known bits, and in
 * *supported those supported. */
unsigned capability_known(const struct config_model *m, unsigned *supported);
/* Its context length in tokens; 0 when unknown. */
unsigned long capability_context_length(const struct config_model *m);
/* USD per million cached input tokens: the config's, else the feed's, else `input`. */
double capability_cached_price(const struct config_model *m, double input);

#endif

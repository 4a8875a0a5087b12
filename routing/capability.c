#include "routing/capability.h"

#include "config/caps.h"
#include "routing/backend.h"

#include <stdlib.h>
#include <string.h>

#define RELAXED memory_order_relaxed

/* OpenRouter's parameter names for the capabilities routing knows. */
static unsigned param_bit(const char *name)
{
    if (!strcmp(name, "tools") || !strcmp(name, "tool_choice"))
        return CONFIG_CAP_TOOLS;
    if (!strcmp(name, "structured_outputs"))
        return CONFIG_CAP_JSON_SCHEMA;
    if (!strcmp(name, "logprobs") || !strcmp(name, "top_logprobs"))
        return CONFIG_CAP_LOGPROBS;
    return 0;
}

static int feed_number(json_t *v, double *out)
{
    if (json_is_number(v)) {
        *out = json_number_value(v);
        return 0;
    }
    if (json_is_string(v)) {
        char *end;
        const char *s = json_string_value(v);
        *out = strtod(s, &end);
        return end == s || *end ? -1 : 0;
    }
    return -1;
}

void capability_apply_feed(struct capability_feed *f, json_t *item)
{
    unsigned known = 0, supported = 0;
    json_t *params = json_object_get(item, "supported_parameters");
    if (json_is_array(params)) {
        known |= CONFIG_CAP_TOOLS | CONFIG_CAP_JSON_SCHEMA | CONFIG_CAP_LOGPROBS;
        size_t i;
        json_t *p;
        json_array_foreach (params, i, p)
            if (json_is_string(p))
                supported |= param_bit(json_string_value(p));
    }
    json_t *inputs = json_object_get(json_object_get(item, "architecture"), "input_modalities");
    if (json_is_array(inputs)) {
        known |= CONFIG_CAP_VISION | CONFIG_CAP_AUDIO;
        size_t i;
        json_t *p;
        json_array_foreach (inputs, i, p) {
            const char *s = json_string_value(p);
            if (s && !strcmp(s, "image"))
                supported |= CONFIG_CAP_VISION;
            else if (s && !strcmp(s, "audio"))
                supported |= CONFIG_CAP_AUDIO;
        }
    }
    if (known) {
        atomic_store_explicit(&f->supported, supported, RELAXED);
        atomic_store_explicit(&f->known, known, RELAXED);
    }
    double ctx;
    json_t *cl = json_object_get(item, "context_length");
    if (!cl)
        cl = json_object_get(json_object_get(item, "top_provider"), "context_length");
    if (!feed_number(cl, &ctx) && ctx >= 1 && ctx <= 1e9)
        atomic_store_explicit(&f->context_length, (uint64_t)ctx, RELAXED);
    double cached;
    if (!feed_number(json_object_get(json_object_get(item, "pricing"), "input_cache_read"),
                     &cached) &&
        cached >= 0 && cached <= 1) {
        double mtok = cached * 1e6;
        uint64_t bits;
        memcpy(&bits, &mtok, sizeof bits);
        atomic_store_explicit(&f->cached_bits, bits, RELAXED);
        atomic_store_explicit(&f->cached_live, true, RELAXED);
    }
}

unsigned capability_known(const struct config_model *m, unsigned *supported)
{
    unsigned known = m->caps.known, sup = m->caps.supported & m->caps.known;
    if (m->price) {
        const struct capability_feed *f = &m->price->feed;
        unsigned fk = atomic_load_explicit(&f->known, RELAXED) & ~known;
        sup |= atomic_load_explicit(&f->supported, RELAXED) & fk;
        known |= fk;
    }
    *supported = sup;
    return known;
}

unsigned long capability_context_length(const struct config_model *m)
{
    if (m->caps.context_length)
        return m->caps.context_length;
    return m->price ? (unsigned long)atomic_load_explicit(&m->price->feed.context_length, RELAXED)
                    : 0;
}

double capability_cached_price(const struct config_model *m, double input)
{
    if (m->cached_input_usd_per_mtok >= 0)
        return m->cached_input_usd_per_mtok;
    if (m->price && atomic_load_explicit(&m->price->feed.cached_live, RELAXED)) {
        uint64_t bits = atomic_load_explicit(&m->price->feed.cached_bits, RELAXED);
        double d;
        memcpy(&d, &bits, sizeof d);
        return d;
    }
    return input;
}

enum capability_verdict capability_check(const struct config_model *m, unsigned needed,
                                         bool declared_only, size_t prompt_tokens,
                                         unsigned *lacking, unsigned long *context)
{
    if (needed) {
        unsigned supported;
        unsigned known = capability_known(m, &supported);
        /* Unsupported where declared so; undeclared too when every one must be declared. */
        unsigned missing = needed & known & ~supported;
        if (declared_only)
            missing |= needed & ~known;
        if (missing) {
            if (lacking)
                *lacking = missing;
            return CAPABILITY_LACKS;
        }
    }
    unsigned long ctx = capability_context_length(m);
    if (ctx && prompt_tokens > ctx) {
        if (context)
            *context = ctx;
        return CAPABILITY_TOO_LONG;
    }
    return CAPABILITY_OK;
}

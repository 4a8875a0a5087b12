#include "config/caps.h"

#include "config/schema.h"

#include <stdio.h>
#include <string.h>

static const char *const cap_names[CONFIG_CAP_COUNT] = {"tools", "json_schema", "vision", "audio",
                                                        "logprobs"};

const char *config_cap_name(unsigned bit)
{
    for (unsigned i = 0; i < CONFIG_CAP_COUNT; i++)
        if (bit == 1u << i)
            return cap_names[i];
    return NULL;
}

unsigned config_cap_bit(const char *name)
{
    for (unsigned i = 0; i < CONFIG_CAP_COUNT; i++)
        if (!strcmp(name, cap_names[i]))
            return 1u << i;
    return 0;
}

void config_cap_names(unsigned caps, char *out, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    for (unsigned i = 0; i < CONFIG_CAP_COUNT && used < n; i++)
        if (caps & (1u << i)) {
            int w = snprintf(out + used, n - used, "%s%s", used ? ", " : "", cap_names[i]);
            if (w < 0)
                break;
            used += (size_t)w;
        }
}

/* `capabilities` is a list (it names every supported one: the others are declared
 * unsupported) or a mapping of names to true or false (the others stay unknown). */
static void parse_caps(struct config_problems *ctx, struct config_caps *caps, json_t *v,
                       const char *path)
{
    if (json_is_array(v)) {
        caps->known = CONFIG_CAP_ALL;
        size_t i;
        json_t *item;
        json_array_foreach (v, i, item) {
            unsigned bit = json_is_string(item) ? config_cap_bit(json_string_value(item)) : 0;
            if (!bit) {
                char p[260];
                snprintf(p, sizeof p, "%.200s[%zu]", path, i);
                config_problem(ctx, p,
                               "must be one of tools, json_schema, vision, audio, logprobs");
                continue;
            }
            caps->supported |= bit;
        }
        return;
    }
    if (json_is_object(v)) {
        const char *key;
        json_t *item;
        json_object_foreach (v, key, item) {
            unsigned bit = config_cap_bit(key);
            char p[220];
            config_path_join(p, sizeof p, path, key);
            if (!bit) {
                config_problem(ctx, p,
                               "unknown capability (tools, json_schema, vision, "
                               "audio, logprobs)");
                continue;
            }
            if (!json_is_boolean(item)) {
                config_problem(ctx, p, "must be true or false");
                continue;
            }
            caps->known |= bit;
            if (json_is_true(item))
                caps->supported |= bit;
        }
        return;
    }
    if (!json_is_null(v))
        config_problem(ctx, path,
                       "must be a list of capabilities or a mapping of them to "
                       "true or false");
}

void config_parse_model_extras(struct config_problems *ctx, struct config_model *cm, json_t *m,
                               const char *mpath)
{
    cm->cached_input_usd_per_mtok =
        config_get_num(ctx, m, "cached_input_usd_per_mtok", mpath, 0, 1e15, -1, false, false);
    cm->caps.context_length =
        (unsigned long)config_get_num(ctx, m, "context_length", mpath, 1, 1e9, 0, false, true);
    json_t *v = json_object_get(m, "capabilities");
    if (v) {
        char p[200];
        config_path_join(p, sizeof p, mpath, "capabilities");
        parse_caps(ctx, &cm->caps, v, p);
    }
}

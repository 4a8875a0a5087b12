/* What a backend model can do: the request features that not every model or node supports
 * (tools, JSON-schema output, image and audio input, log probabilities) and its context
 * length, as the config declares them per backend model. A price feed may declare them too
 * (routing/capability.h); the router sends a request needing a feature only where it is not
 * declared unsupported. Read-only; thread-safe. */
#ifndef TOLLGATE_CONFIG_CAPS_H
#define TOLLGATE_CONFIG_CAPS_H

#include "config/config.h"

#include <stdbool.h>

enum config_cap {
    CONFIG_CAP_TOOLS = 1u << 0,       /* tools / functions */
    CONFIG_CAP_JSON_SCHEMA = 1u << 1, /* response_format json_schema (structured outputs) */
    CONFIG_CAP_VISION = 1u << 2,      /* image input */
    CONFIG_CAP_AUDIO = 1u << 3,       /* audio input or output */
    CONFIG_CAP_LOGPROBS = 1u << 4,    /* logprobs, top_logprobs */
};
#define CONFIG_CAP_ALL 0x1fu
#define CONFIG_CAP_COUNT 5

/* "tools", "json_schema", "vision", "audio", "logprobs" for one bit; NULL for another. */
const char *config_cap_name(unsigned bit);
/* The bit of a capability name, or 0. */
unsigned config_cap_bit(const char *name);
/* The names of the bits in `caps`, comma-separated ("tools, vision"), into out. */
void config_cap_names(unsigned caps, char *out, size_t n);

#endif

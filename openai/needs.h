/* The capabilities a request body uses (config/caps.h), so the router sends it only where
 * they are supported: tools (`tools`, `functions`), JSON-schema output (`response_format`
 * of type json_schema), image input (image parts in messages or input), audio (audio parts,
 * the `audio` output option, an "audio" modality) and log probabilities (`logprobs`,
 * `top_logprobs`). No state; thread-safe. */
#ifndef TOLLGATE_NEEDS_H
#define TOLLGATE_NEEDS_H

#include "openai/openai.h"

#include <jansson.h>

/* CONFIG_CAP_* bits the body uses. */
unsigned openai_needed_caps(enum openai_route route, json_t *body);

#endif

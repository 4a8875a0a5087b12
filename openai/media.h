/* The metered pass-through endpoints: POST /v1/images/generations, /v1/audio/speech and
 * /v1/moderations. The gateway checks what it needs to route and bill (the model, what is
 * asked for) and passes the rest through to a node that lists the model. No I/O;
 * thread-safe. */
#ifndef TOLLGATE_MEDIA_H
#define TOLLGATE_MEDIA_H

#include "openai/openai.h"

#include <jansson.h>

/* The most images one request may ask for (OpenAI's own limit). */
#define MEDIA_MAX_IMAGES 10
/* The most characters one speech request may carry (OpenAI's own limit). */
#define MEDIA_MAX_SPEECH_CHARS 4096

/* openai_validate_fn for OPENAI_IMAGES (model, prompt a non-empty string, n 1 to
 * MEDIA_MAX_IMAGES: units = n), OPENAI_SPEECH (model, input a string of 1 to
 * MEDIA_MAX_SPEECH_CHARS characters: units = its characters, voice a string) and
 * OPENAI_MODERATIONS (model, input a string or an array: billed as input tokens). None
 * streams; none has output tokens. */
int media_validate(enum openai_route route, json_t *body, struct openai_request *out,
                   const char **param, char *msg, size_t msg_len);

#endif

/* What the request validators of openai/ share (openai.c, responses.c, media.c); internal to
 * the folder. Each validator returns 0 or a tg_error with the offending parameter in *param
 * (NULL for the body as a whole) and an OpenAI-style message in msg[n]. */
#ifndef TOLLGATE_OPENAI_VALIDATE_INT_H
#define TOLLGATE_OPENAI_VALIDATE_INT_H

#include "openai/openai.h"

#include <jansson.h>
#include <stddef.h>

/* Set *param and msg, and return err: `return openai_fail(...)` ends a validator. */
int openai_fail(const char **param, const char *name, char *msg, size_t n, int err,
                const char *text);

/* The first checks of every body: a JSON object with a non-empty string `model`, which is
 * borrowed into out->model. 0, or the error as openai_fail gives it. */
int openai_require_model(json_t *body, struct openai_request *out, const char **param, char *msg,
                         size_t n);

#endif

#include "openai/media.h"

#include "base/error.h"
#include "openai/validate-int.h"

#include <stdio.h>
#include <string.h>

/* Code points of a UTF-8 string (jansson checked it is UTF-8). */
static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

int media_validate(enum openai_route route, json_t *body, struct openai_request *out,
                   const char **param, char *msg, size_t n)
{
    /* max_tokens 0: no output tokens in any estimate. */
    *out = (struct openai_request){.max_tokens = 0, .n_choices = 1};
    *param = NULL;
    int err = openai_require_model(body, out, param, msg, n);
    if (err)
        return err;
    json_t *stream = json_object_get(body, "stream");
    if (json_is_true(stream))
        return openai_fail(param, "stream", msg, n, TG_ERR_INVALID_VALUE,
                           "This endpoint is not streamed through the gateway.");

    switch (route) {
    case OPENAI_IMAGES: {
        json_t *prompt = json_object_get(body, "prompt");
        if (!prompt || json_is_null(prompt))
            return openai_fail(param, "prompt", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide a prompt parameter.");
        if (!json_is_string(prompt) || json_string_length(prompt) == 0)
            return openai_fail(param, "prompt", msg, n, TG_ERR_INVALID_TYPE,
                               "'prompt' must be a non-empty string.");
        json_t *nv = json_object_get(body, "n");
        out->units = 1;
        if (nv && !json_is_null(nv)) {
            if (!json_is_integer(nv) || json_integer_value(nv) < 1 ||
                json_integer_value(nv) > MEDIA_MAX_IMAGES)
                return openai_fail(param, "n", msg, n, TG_ERR_INVALID_VALUE,
                                   "'n' must be an integer between 1 and 10.");
            out->units = (size_t)json_integer_value(nv);
        }
        out->prompt_bytes = json_string_length(prompt);
        out->n_items = 1;
        break;
    }
    case OPENAI_SPEECH: {
        json_t *input = json_object_get(body, "input");
        if (!input || json_is_null(input))
            return openai_fail(param, "input", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide an input parameter.");
        if (!json_is_string(input) || json_string_length(input) == 0)
            return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE,
                               "'input' must be a non-empty string.");
        out->units = utf8_chars(json_string_value(input), json_string_length(input));
        if (out->units > MEDIA_MAX_SPEECH_CHARS)
            return openai_fail(param, "input", msg, n, TG_ERR_INVALID_VALUE,
                               "'input' must be at most 4096 characters.");
        json_t *voice = json_object_get(body, "voice");
        if (voice && !json_is_null(voice) && !json_is_string(voice) && !json_is_object(voice))
            return openai_fail(param, "voice", msg, n, TG_ERR_INVALID_TYPE,
                               "'voice' must be a string.");
        out->prompt_bytes = json_string_length(input);
        out->n_items = 1;
        break;
    }
    case OPENAI_MODERATIONS: {
        json_t *input = json_object_get(body, "input");
        if (!input || json_is_null(input))
            return openai_fail(param, "input", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide an input parameter.");
        if (!json_is_string(input) && !json_is_array(input))
            return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE,
                               "'input' must be a string or an array.");
        if (json_is_string(input)) {
            out->prompt_bytes = json_string_length(input);
            out->n_items = 1;
            break;
        }
        size_t i;
        json_t *item;
        json_array_foreach (input, i, item) {
            json_t *text = json_is_string(item) ? item : json_object_get(item, "text");
            if (json_is_string(text))
                out->prompt_bytes += json_string_length(text);
            else
                out->has_media = true; /* an image_url part */
            out->n_items++;
        }
        break;
    }
    default:
        return openai_fail(param, NULL, msg, n, TG_ERR_INTERNAL, "not a metered endpoint");
    }
    out->prompt_tokens_est = (out->prompt_bytes + 3) / 4;
    return 0;
}

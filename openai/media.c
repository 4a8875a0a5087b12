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

size_t media_audio_max_seconds(size_t file_bytes)
{
    size_t s = file_bytes / MEDIA_AUDIO_MIN_BYTES_PER_SECOND;
    return s ? s : 1;
}

/* An upload's fields: the file, and the formats OpenAI answers in. */
static int media_validate_upload(enum openai_route route, json_t *body, struct openai_request *out,
                                 const char **param, char *msg, size_t n)
{
    json_t *file = json_object_get(body, "file");
    if (!json_is_object(file))
        return openai_fail(param, "file", msg, n, TG_ERR_MISSING_PARAM,
                           "You must provide a file parameter (a multipart file part).");
    json_int_t bytes = json_integer_value(json_object_get(file, "bytes"));
    if (bytes <= 0)
        return openai_fail(param, "file", msg, n, TG_ERR_INVALID_VALUE, "'file' is empty.");
    json_t *format = json_object_get(body, "response_format");
    if (format) {
        static const char *const formats[] = {"json",         "text", "srt",
                                              "verbose_json", "vtt",  "diarized_json"};
        const char *f = json_string_value(format);
        bool known = false;
        for (size_t i = 0; f && i < sizeof formats / sizeof formats[0]; i++)
            known |= !strcmp(f, formats[i]);
        if (!known)
            return openai_fail(param, "response_format", msg, n, TG_ERR_INVALID_VALUE,
                               "'response_format' must be one of json, text, srt, verbose_json, "
                               "vtt, diarized_json.");
    }
    (void)route;
    out->upload_bytes = (size_t)bytes;
    out->units = media_audio_max_seconds(out->upload_bytes);
    size_t est_seconds = out->upload_bytes / MEDIA_AUDIO_EST_BYTES_PER_SECOND + 1;
    out->prompt_tokens_est = est_seconds * MEDIA_AUDIO_EST_TOKENS_PER_SECOND;
    out->has_media = true;
    out->n_items = 1;
    return 0;
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
    if (stream && !json_is_boolean(stream))
        return openai_fail(param, "stream", msg, n, TG_ERR_INVALID_TYPE,
                           "'stream' must be a boolean.");
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
    case OPENAI_TRANSCRIPTIONS:
    case OPENAI_TRANSLATIONS:
        return media_validate_upload(route, body, out, param, msg, n);
    default:
        return openai_fail(param, NULL, msg, n, TG_ERR_INTERNAL, "not a metered endpoint");
    }
    out->prompt_tokens_est = (out->prompt_bytes + 3) / 4;
    return 0;
}

#include "openai/needs.h"

#include "config/caps.h"

#include <string.h>

static bool nonempty_array(json_t *v)
{
    return json_is_array(v) && json_array_size(v) > 0;
}

/* The kinds of content parts in one message's (or input item's) content. */
static unsigned part_caps(json_t *content)
{
    unsigned caps = 0;
    size_t i;
    json_t *part;
    if (!json_is_array(content))
        return 0;
    json_array_foreach (content, i, part) {
        const char *type = json_string_value(json_object_get(part, "type"));
        if (!type)
            continue;
        if (!strcmp(type, "image_url") || !strcmp(type, "input_image") || !strcmp(type, "image"))
            caps |= CONFIG_CAP_VISION;
        else if (!strcmp(type, "input_audio") || !strcmp(type, "audio"))
            caps |= CONFIG_CAP_AUDIO;
    }
    return caps;
}

unsigned openai_needed_caps(enum openai_route route, json_t *body)
{
    unsigned caps = 0;
    if (nonempty_array(json_object_get(body, "tools")) ||
        nonempty_array(json_object_get(body, "functions")))
        caps |= CONFIG_CAP_TOOLS;
    const char *format =
        json_string_value(json_object_get(json_object_get(body, "response_format"), "type"));
    if (format && !strcmp(format, "json_schema"))
        caps |= CONFIG_CAP_JSON_SCHEMA;
    json_t *lp = json_object_get(body, "logprobs");
    json_t *top = json_object_get(body, "top_logprobs");
    if (json_is_true(lp) || (route == OPENAI_COMPLETIONS && json_is_integer(lp)) ||
        (json_is_integer(top) && json_integer_value(top) > 0))
        caps |= CONFIG_CAP_LOGPROBS;
    if (json_is_object(json_object_get(body, "audio")))
        caps |= CONFIG_CAP_AUDIO;
    json_t *modalities = json_object_get(body, "modalities");
    size_t i;
    json_t *item;
    json_array_foreach (modalities, i, item) {
        const char *m = json_string_value(item);
        if (m && !strcmp(m, "audio"))
            caps |= CONFIG_CAP_AUDIO;
    }
    json_t *messages = json_object_get(body, "messages");
    json_array_foreach (messages, i, item)
        caps |= part_caps(json_object_get(item, "content"));
    json_t *input = json_object_get(body, "input");
    json_array_foreach (input, i, item)
        caps |= part_caps(json_object_get(item, "content"));
    return caps;
}

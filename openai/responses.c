#include "openai/responses.h"

#include "base/error.h"
#include "openai/validate-int.h"

#include <stdio.h>
#include <string.h>

/* ---- validating a request -------------------------------------------------------------------- */

bool responses_id_ok(const char *id, size_t len)
{
    if (!id || len == 0 || len > RESPONSES_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return false;
    }
    return true;
}

const char *responses_previous_id(json_t *body)
{
    return json_string_value(json_object_get(body, "previous_response_id"));
}

/* Bytes of a JSON value as the model reads it: strings as they are, the rest serialised. */
static size_t json_text_bytes(json_t *v)
{
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v))
        return json_string_length(v);
    return json_dumpb(v, NULL, 0, JSON_COMPACT);
}

struct prompt_count {
    size_t bytes, items;
    bool media;
};

/* A message's content: a string, or parts (input_text / output_text carry "text"; images,
 * files and audio are media, whose tokens their bytes do not bound). */
static void count_content(json_t *content, struct prompt_count *pc)
{
    if (json_is_string(content)) {
        pc->bytes += json_string_length(content);
        return;
    }
    size_t i;
    json_t *part;
    json_array_foreach (content, i, part) {
        json_t *text = json_object_get(part, "text");
        if (json_is_string(text))
            pc->bytes += json_string_length(text);
        else if (json_is_object(part))
            pc->media = true;
    }
}

static void count_input(json_t *input, struct prompt_count *pc)
{
    if (json_is_string(input)) {
        pc->bytes += json_string_length(input);
        pc->items++;
        return;
    }
    size_t i;
    json_t *item;
    json_array_foreach (input, i, item) {
        pc->items++;
        if (json_is_string(item)) {
            pc->bytes += json_string_length(item);
            continue;
        }
        json_t *content = json_object_get(item, "content");
        if (content) {
            count_content(content, pc);
            continue;
        }
        /* function_call (name, arguments), function_call_output (output), reasoning ... */
        pc->bytes += json_text_bytes(json_object_get(item, "name"));
        pc->bytes += json_text_bytes(json_object_get(item, "arguments"));
        pc->bytes += json_text_bytes(json_object_get(item, "output"));
        json_t *summary = json_object_get(item, "summary");
        if (json_is_array(summary))
            count_content(summary, pc);
    }
}

int responses_validate(enum openai_route route, json_t *body, struct openai_request *out,
                       const char **param, char *msg, size_t n)
{
    (void)route;
    *out = (struct openai_request){.max_tokens = -1, .n_choices = 1};
    *param = NULL;
    int err = openai_require_model(body, out, param, msg, n);
    if (err)
        return err;

    json_t *prev = json_object_get(body, "previous_response_id");
    bool has_prev = prev && !json_is_null(prev);
    if (has_prev && !json_is_string(prev))
        return openai_fail(param, "previous_response_id", msg, n, TG_ERR_INVALID_TYPE,
                           "'previous_response_id' must be a string.");
    if (has_prev && !responses_id_ok(json_string_value(prev), json_string_length(prev)))
        return openai_fail(param, "previous_response_id", msg, n, TG_ERR_INVALID_VALUE,
                           "'previous_response_id' is not a valid response id.");

    json_t *input = json_object_get(body, "input");
    json_t *prompt = json_object_get(body, "prompt");
    bool has_input = input && !json_is_null(input);
    if (!has_input && !has_prev && (!prompt || json_is_null(prompt)))
        return openai_fail(param, "input", msg, n, TG_ERR_MISSING_PARAM,
                           "You must provide an input parameter.");
    if (has_input && !json_is_string(input) && !json_is_array(input))
        return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE,
                           "'input' must be a string or an array of input items.");
    if (json_is_array(input)) {
        size_t i;
        json_t *item;
        json_array_foreach (input, i, item) {
            if (!json_is_object(item)) {
                char text[96];
                snprintf(text, sizeof text, "'input[%zu]' must be an object.", i);
                return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE, text);
            }
            json_t *content = json_object_get(item, "content");
            if (content && !json_is_null(content) && !json_is_string(content) &&
                !json_is_array(content)) {
                char text[120];
                snprintf(text, sizeof text,
                         "'input[%zu].content' must be a string or an array of parts.", i);
                return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE, text);
            }
        }
    }
    json_t *instructions = json_object_get(body, "instructions");
    if (instructions && !json_is_null(instructions) && !json_is_string(instructions))
        return openai_fail(param, "instructions", msg, n, TG_ERR_INVALID_TYPE,
                           "'instructions' must be a string.");
    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_null(stream)) {
        if (!json_is_boolean(stream))
            return openai_fail(param, "stream", msg, n, TG_ERR_INVALID_TYPE,
                               "'stream' must be a boolean.");
        out->stream = json_is_true(stream);
    }
    out->include_usage = true; /* the terminal event always carries it */
    json_t *mt = json_object_get(body, "max_output_tokens");
    if (mt && !json_is_null(mt)) {
        if (!json_is_integer(mt) || json_integer_value(mt) < 0)
            return openai_fail(param, "max_output_tokens", msg, n, TG_ERR_INVALID_TYPE,
                               "'max_output_tokens' must be a non-negative integer.");
        out->max_tokens = json_integer_value(mt);
    }
    json_t *tools = json_object_get(body, "tools");
    if (tools && !json_is_null(tools) && !json_is_array(tools))
        return openai_fail(param, "tools", msg, n, TG_ERR_INVALID_TYPE,
                           "'tools' must be an array.");

    struct prompt_count pc = {0};
    if (has_input)
        count_input(input, &pc);
    pc.bytes += json_text_bytes(instructions);
    pc.bytes += json_text_bytes(tools);
    pc.bytes += json_text_bytes(json_object_get(json_object_get(body, "text"), "format"));
    out->prompt_bytes = pc.bytes;
    out->n_items = pc.items;
    /* Earlier turns (previous_response_id) and prompt templates live on the node: their
     * tokens are not bounded by the bytes sent. */
    out->has_media = pc.media || has_prev || (prompt && !json_is_null(prompt));
    out->prompt_tokens_est = (pc.bytes + 3) / 4 + 4 * pc.items + 3;
    return 0;
}

/* ---- the scanner's rules ------------------------------------------------------------------- */

static bool key_is(const struct answer_scan *s, int level, const char *key)
{
    return level >= 0 && level < s->depth && level < ANSWER_MAX_DEPTH && s->frames[level].is_map &&
           s->frames[level].key[0] == key[0] && !strcmp(s->frames[level].key, key);
}

static bool array_at(const struct answer_scan *s, int level)
{
    return level < s->depth && level < ANSWER_MAX_DEPTH && !s->frames[level].is_map;
}

/* Where the response object lies: the document itself (a whole answer, 0), or its
 * "response" member (a stream event that carries it, 1). */
static int base(const struct answer_scan *s)
{
    return key_is(s, 0, "response") ? 1 : 0;
}

void responses_scan_open(struct answer_scan *s, bool is_map)
{
    int b = base(s);
    if (s->depth == b + 1 && !is_map && key_is(s, b, "output"))
        s->has_choices = true;
}

void responses_scan_close(struct answer_scan *s)
{
    int b = base(s);
    if (s->depth == b + 2 && array_at(s, b + 1) && key_is(s, b, "output")) {
        s->choices_len = s->frames[b + 1].count;
        if (s->choices_len && !s->n_choices)
            s->n_choices = 1;
        if (s->finished)
            s->finished = s->choices_len; /* a completed response finished every item */
    }
}

static void copy_string(char *dst, size_t cap, const unsigned char *str, size_t len)
{
    if (len >= cap)
        len = 0; /* too long to be one we look for */
    memcpy(dst, str, len);
    dst[len] = '\0';
}

void responses_scan_string(struct answer_scan *s, const unsigned char *str, size_t len)
{
    int b = base(s);
    bool text = false;
    if (s->depth == 1) {
        if (key_is(s, 0, "type"))
            copy_string(s->event_type, sizeof s->event_type, str, len);
        else if (key_is(s, 0, "delta") && strcmp(s->event_type, "response.audio.delta"))
            text = true; /* a stream's piece of text, arguments or reasoning */
    }
    if (s->depth == b + 1 && key_is(s, b, "id"))
        copy_string(s->response_id, sizeof s->response_id, str, len);
    if (s->depth == b + 1 && key_is(s, b, "status") && len == 9 && !memcmp(str, "completed", 9))
        s->finished = s->choices_len ? s->choices_len : 1;
    /* Output text of a whole answer (in a stream, the deltas counted it already). */
    if (b == 0 && key_is(s, 0, "output") && array_at(s, 1)) {
        if (s->depth == 3)
            text = key_is(s, 2, "arguments") || key_is(s, 2, "name");
        else if (s->depth == 5 && array_at(s, 3))
            text = (key_is(s, 2, "content") || key_is(s, 2, "summary")) &&
                   (key_is(s, 4, "text") || key_is(s, 4, "refusal"));
    }
    if (text) {
        s->delivered += len;
        if (!s->n_choices)
            s->n_choices = 1;
    }
}

void responses_scan_integer(struct answer_scan *s, long long v)
{
    int b = base(s);
    if (!key_is(s, b, "usage"))
        return;
    if (s->depth == b + 2 && s->frames[b + 1].is_map) {
        if (key_is(s, b + 1, "input_tokens")) {
            s->prompt_tokens = v;
            s->has_usage = true;
        } else if (key_is(s, b + 1, "output_tokens")) {
            s->completion_tokens = v;
        }
    } else if (s->depth == b + 3 && key_is(s, b + 1, "input_tokens_details") &&
               key_is(s, b + 2, "cached_tokens")) {
        s->cached_tokens = v;
    }
}

enum responses_event responses_event_kind(const struct answer_scan *s)
{
    const char *t = s->event_type;
    if (!strcmp(t, "response.created"))
        return RESPONSES_EVENT_CREATED;
    if (!strcmp(t, "response.completed") || !strcmp(t, "response.incomplete"))
        return RESPONSES_EVENT_DONE;
    if (!strcmp(t, "response.failed") || !strcmp(t, "error"))
        return RESPONSES_EVENT_FAILED;
    return RESPONSES_EVENT_OTHER;
}

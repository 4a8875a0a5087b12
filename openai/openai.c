#include "openai/openai.h"

#include "base/error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct openai_endpoint openai_endpoints[] = {
    {OPENAI_CHAT, "/v1/chat/completions", "POST", "/chat/completions", true, true,
     METRICS_ROUTE_CHAT},
    {OPENAI_COMPLETIONS, "/v1/completions", "POST", "/completions", true, true,
     METRICS_ROUTE_COMPLETIONS},
    {OPENAI_EMBEDDINGS, "/v1/embeddings", "POST", "/embeddings", false, true,
     METRICS_ROUTE_EMBEDDINGS},
    {OPENAI_MODELS, "/v1/models", "GET", NULL, false, true, METRICS_ROUTE_MODELS},
    {OPENAI_MODEL, "/v1/models/", "GET", NULL, false, true, METRICS_ROUTE_MODELS},
    {OPENAI_HEALTHZ, "/healthz", "GET", NULL, false, false, METRICS_ROUTE_OTHER},
    {OPENAI_READYZ, "/readyz", "GET", NULL, false, false, METRICS_ROUTE_OTHER},
    {OPENAI_METRICS, "/metrics", "GET", NULL, false, false, METRICS_ROUTE_OTHER},
};

int openai_match(const char *method, const char *url, const struct openai_endpoint **ep)
{
    size_t n = sizeof openai_endpoints / sizeof openai_endpoints[0];
    for (size_t i = 0; i < n; i++) {
        const struct openai_endpoint *e = &openai_endpoints[i];
        bool hit = e->route == OPENAI_MODEL
                       ? !strncmp(url, e->path, strlen(e->path)) && url[strlen(e->path)]
                       : !strcmp(url, e->path);
        if (!hit)
            continue;
        *ep = e;
        /* HEAD is answered like GET by HTTP/1.1 servers (no body is sent). */
        if (!strcmp(method, e->method) || (!strcmp(e->method, "GET") && !strcmp(method, "HEAD")))
            return 0;
        return TG_ERR_METHOD;
    }
    *ep = NULL;
    return TG_ERR_UNKNOWN_URL;
}

struct prompt_count {
    size_t bytes;
    bool media;
};

/* Text bytes of a content value: a string, or an array of parts. */
static void count_content(json_t *v, struct prompt_count *pc)
{
    if (json_is_string(v)) {
        pc->bytes += json_string_length(v);
        return;
    }
    if (!json_is_array(v))
        return;
    size_t i;
    json_t *item;
    json_array_foreach (v, i, item) {
        if (json_is_string(item)) {
            pc->bytes += json_string_length(item);
        } else if (json_is_integer(item)) {
            pc->bytes += 4; /* a pre-tokenised input: one token an element */
        } else if (json_is_array(item)) {
            count_content(item, pc);
        } else if (json_is_object(item)) {
            json_t *text = json_object_get(item, "text");
            if (json_is_string(text))
                pc->bytes += json_string_length(text);
            else
                pc->media = true; /* image_url, input_audio, file ... */
        }
    }
}

/* Bytes of a JSON value as serialised: tool definitions and call arguments are sent to the
 * model as text, so their size is what counts. */
static size_t json_bytes(json_t *v)
{
    if (!v || json_is_null(v))
        return 0;
    if (json_is_string(v))
        return json_string_length(v);
    char *text = json_dumps(v, JSON_COMPACT);
    size_t n = text ? strlen(text) : 0;
    free(text);
    return n;
}

void openai_estimate_prompt(enum openai_route route, json_t *body, struct openai_request *out)
{
    struct prompt_count pc = {0};
    size_t overhead = 0, items = 0;
    if (route == OPENAI_CHAT) {
        json_t *messages = json_object_get(body, "messages");
        size_t i;
        json_t *m;
        json_array_foreach (messages, i, m) {
            count_content(json_object_get(m, "content"), &pc);
            pc.bytes += json_bytes(json_object_get(m, "name"));
            pc.bytes += json_bytes(json_object_get(m, "tool_calls"));
            pc.bytes += json_bytes(json_object_get(m, "function_call"));
            overhead += 4; /* role and message framing */
            items++;
        }
        overhead += 3; /* the assistant's reply primer */
        pc.bytes += json_bytes(json_object_get(body, "tools"));
        pc.bytes += json_bytes(json_object_get(body, "functions"));
        pc.bytes += json_bytes(json_object_get(body, "response_format"));
    } else if (route == OPENAI_COMPLETIONS || route == OPENAI_EMBEDDINGS) {
        json_t *in = json_object_get(body, route == OPENAI_COMPLETIONS ? "prompt" : "input");
        count_content(in, &pc);
        items = json_is_array(in) ? json_array_size(in) : 1;
    }
    out->prompt_bytes = pc.bytes;
    out->has_media = pc.media;
    out->n_items = items;
    out->prompt_tokens_est = (pc.bytes + 3) / 4 + overhead;
}

static int fail(const char **param, const char *name, char *msg, size_t n, int err,
                const char *text)
{
    *param = name;
    snprintf(msg, n, "%s", text);
    return err;
}

int openai_validate(enum openai_route route, json_t *body, struct openai_request *out,
                    const char **param, char *msg, size_t n)
{
    *out = (struct openai_request){.max_tokens = -1};
    *param = NULL;
    if (!json_is_object(body))
        return fail(param, NULL, msg, n, TG_ERR_INVALID_JSON,
                    "The request body must be a JSON object.");
    json_t *model = json_object_get(body, "model");
    if (!model || json_is_null(model))
        return fail(param, "model", msg, n, TG_ERR_MISSING_PARAM,
                    "You must provide a model parameter.");
    if (!json_is_string(model))
        return fail(param, "model", msg, n, TG_ERR_INVALID_TYPE, "'model' must be a string.");
    if (json_string_length(model) == 0)
        return fail(param, "model", msg, n, TG_ERR_INVALID_VALUE, "'model' must not be empty.");
    out->model = json_string_value(model);

    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_null(stream)) {
        if (!json_is_boolean(stream))
            return fail(param, "stream", msg, n, TG_ERR_INVALID_TYPE,
                        "'stream' must be a boolean.");
        out->stream = json_is_true(stream);
        if (out->stream && route == OPENAI_EMBEDDINGS)
            return fail(param, "stream", msg, n, TG_ERR_INVALID_VALUE,
                        "Embeddings cannot be streamed.");
    }
    json_t *so = json_object_get(body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return fail(param, "stream_options", msg, n, TG_ERR_INVALID_TYPE,
                        "'stream_options' must be an object.");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return fail(param, "stream_options.include_usage", msg, n, TG_ERR_INVALID_TYPE,
                        "'stream_options.include_usage' must be a boolean.");
        out->include_usage = json_is_true(iu);
    }
    static const char *const max_names[] = {"max_completion_tokens", "max_tokens"};
    for (int i = 0; i < 2; i++) {
        json_t *mt = json_object_get(body, max_names[i]);
        if (!mt || json_is_null(mt))
            continue;
        if (!json_is_integer(mt) || json_integer_value(mt) < 0) {
            char text[96];
            snprintf(text, sizeof text, "'%s' must be a non-negative integer.", max_names[i]);
            return fail(param, max_names[i], msg, n, TG_ERR_INVALID_TYPE, text);
        }
        if (out->max_tokens < 0)
            out->max_tokens = json_integer_value(mt);
    }

    switch (route) {
    case OPENAI_CHAT: {
        json_t *messages = json_object_get(body, "messages");
        if (!messages || json_is_null(messages))
            return fail(param, "messages", msg, n, TG_ERR_MISSING_PARAM,
                        "You must provide a messages parameter.");
        if (!json_is_array(messages))
            return fail(param, "messages", msg, n, TG_ERR_INVALID_TYPE,
                        "'messages' must be an array.");
        if (json_array_size(messages) == 0)
            return fail(param, "messages", msg, n, TG_ERR_INVALID_VALUE,
                        "'messages' must contain at least one message.");
        size_t i;
        json_t *m;
        json_array_foreach (messages, i, m) {
            if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
                char text[96];
                snprintf(text, sizeof text, "'messages[%zu]' must be an object with a role.", i);
                return fail(param, "messages", msg, n, TG_ERR_INVALID_TYPE, text);
            }
        }
        break;
    }
    case OPENAI_COMPLETIONS: {
        json_t *prompt = json_object_get(body, "prompt");
        if (!prompt || json_is_null(prompt))
            return fail(param, "prompt", msg, n, TG_ERR_MISSING_PARAM,
                        "You must provide a prompt parameter.");
        if (!json_is_string(prompt) && !json_is_array(prompt))
            return fail(param, "prompt", msg, n, TG_ERR_INVALID_TYPE,
                        "'prompt' must be a string or an array.");
        break;
    }
    case OPENAI_EMBEDDINGS: {
        json_t *input = json_object_get(body, "input");
        if (!input || json_is_null(input))
            return fail(param, "input", msg, n, TG_ERR_MISSING_PARAM,
                        "You must provide an input parameter.");
        if (!json_is_string(input) && !json_is_array(input))
            return fail(param, "input", msg, n, TG_ERR_INVALID_TYPE,
                        "'input' must be a string or an array.");
        break;
    }
    default:
        break;
    }
    json_t *nv = json_object_get(body, "n");
    out->n_choices = 1;
    if (nv && !json_is_null(nv)) {
        if (!json_is_integer(nv) || json_integer_value(nv) < 1 || json_integer_value(nv) > 128)
            return fail(param, "n", msg, n, TG_ERR_INVALID_VALUE,
                        "'n' must be an integer between 1 and 128.");
        out->n_choices = (unsigned)json_integer_value(nv);
    }
    openai_estimate_prompt(route, body, out);
    return 0;
}

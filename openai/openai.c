#include "openai/openai.h"

#include "base/error.h"
#include "openai/bignum.h"
#include "openai/media.h"
#include "openai/responses.h"
#include "openai/validate-int.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_parse.h>

static const struct openai_endpoint openai_endpoints[] = {
    {.route = OPENAI_CHAT,
     .path = "/v1/chat/completions",
     .method = "POST",
     .upstream_path = "/chat/completions",
     .can_stream = true,
     .needs_auth = true,
     .metric = METRICS_ROUTE_CHAT,
     .validate = openai_validate,
     .answer = ANSWER_KIND_CHOICES,
     .generates = true,
     .chunk_object = "chat.completion.chunk"},
    {.route = OPENAI_COMPLETIONS,
     .path = "/v1/completions",
     .method = "POST",
     .upstream_path = "/completions",
     .can_stream = true,
     .needs_auth = true,
     .metric = METRICS_ROUTE_COMPLETIONS,
     .validate = openai_validate,
     .answer = ANSWER_KIND_CHOICES,
     .generates = true,
     .chunk_object = "text_completion"},
    {.route = OPENAI_EMBEDDINGS,
     .path = "/v1/embeddings",
     .method = "POST",
     .upstream_path = "/embeddings",
     .needs_auth = true,
     .metric = METRICS_ROUTE_EMBEDDINGS,
     .validate = openai_validate,
     .answer = ANSWER_KIND_CHOICES},
    {.route = OPENAI_RESPONSES,
     .path = "/v1/responses",
     .method = "POST",
     .upstream_path = "/responses",
     .can_stream = true,
     .needs_auth = true,
     .metric = METRICS_ROUTE_RESPONSES,
     .validate = responses_validate,
     .answer = ANSWER_KIND_RESPONSES,
     .generates = true,
     .chunk_object = "response"},
    /* A stored response, its input items, its deletion: at the node that holds it, unbilled
     * (gateway/responses.c). */
    {.route = OPENAI_RESPONSE,
     .path = "/v1/responses/",
     .method = "GET",
     .upstream_path = "/responses/",
     .needs_auth = true,
     .metric = METRICS_ROUTE_RESPONSES,
     .answer = ANSWER_KIND_RESPONSES},
    {.route = OPENAI_RESPONSE,
     .path = "/v1/responses/",
     .method = "DELETE",
     .upstream_path = "/responses/",
     .needs_auth = true,
     .metric = METRICS_ROUTE_RESPONSES,
     .answer = ANSWER_KIND_RESPONSES},
    /* Metered pass-through (openai/media.h): billed per image, per character, per token. */
    {.route = OPENAI_IMAGES,
     .path = "/v1/images/generations",
     .method = "POST",
     .upstream_path = "/images/generations",
     .needs_auth = true,
     .metric = METRICS_ROUTE_IMAGES,
     .validate = media_validate,
     .answer = ANSWER_KIND_DATA,
     .generates = true,
     .meter = OPENAI_METER_IMAGES},
    {.route = OPENAI_SPEECH,
     .path = "/v1/audio/speech",
     .method = "POST",
     .upstream_path = "/audio/speech",
     .needs_auth = true,
     .metric = METRICS_ROUTE_AUDIO_SPEECH,
     .validate = media_validate,
     .answer = ANSWER_KIND_NONE,
     .generates = true,
     .meter = OPENAI_METER_CHARACTERS},
    {.route = OPENAI_MODERATIONS,
     .path = "/v1/moderations",
     .method = "POST",
     .upstream_path = "/moderations",
     .needs_auth = true,
     .metric = METRICS_ROUTE_MODERATIONS,
     .validate = media_validate,
     .answer = ANSWER_KIND_CHOICES},
    /* Uploads: read into a spool, scanned for their fields, sent on from the spool. */
    {.route = OPENAI_TRANSCRIPTIONS,
     .path = "/v1/audio/transcriptions",
     .method = "POST",
     .upstream_path = "/audio/transcriptions",
     .needs_auth = true,
     .metric = METRICS_ROUTE_AUDIO_TRANSCRIPTIONS,
     .validate = media_validate,
     .answer = ANSWER_KIND_NONE,
     .generates = true,
     .meter = OPENAI_METER_AUDIO_SECONDS,
     .multipart = true},
    {.route = OPENAI_TRANSLATIONS,
     .path = "/v1/audio/translations",
     .method = "POST",
     .upstream_path = "/audio/translations",
     .needs_auth = true,
     .metric = METRICS_ROUTE_AUDIO_TRANSCRIPTIONS,
     .validate = media_validate,
     .answer = ANSWER_KIND_NONE,
     .generates = true,
     .meter = OPENAI_METER_AUDIO_SECONDS,
     .multipart = true},
    {.route = OPENAI_MODELS,
     .path = "/v1/models",
     .method = "GET",
     .needs_auth = true,
     .metric = METRICS_ROUTE_MODELS},
    {.route = OPENAI_MODEL,
     .path = "/v1/models/",
     .method = "GET",
     .needs_auth = true,
     .metric = METRICS_ROUTE_MODELS},
    {.route = OPENAI_HEALTHZ, .path = "/healthz", .method = "GET", .metric = METRICS_ROUTE_OTHER},
    {.route = OPENAI_READYZ, .path = "/readyz", .method = "GET", .metric = METRICS_ROUTE_OTHER},
    {.route = OPENAI_METRICS, .path = "/metrics", .method = "GET", .metric = METRICS_ROUTE_OTHER},
};

int openai_match(const char *method, const char *url, const struct openai_endpoint **ep)
{
    size_t n = sizeof openai_endpoints / sizeof openai_endpoints[0];
    const struct openai_endpoint *other = NULL; /* the path's, for another method */
    for (size_t i = 0; i < n; i++) {
        const struct openai_endpoint *e = &openai_endpoints[i];
        bool prefix = e->route == OPENAI_MODEL || e->route == OPENAI_RESPONSE;
        bool hit = prefix ? !strncmp(url, e->path, strlen(e->path)) && url[strlen(e->path)]
                          : !strcmp(url, e->path);
        if (!hit)
            continue;
        /* HEAD is answered like GET by HTTP/1.1 servers (no body is sent). */
        if (!strcmp(method, e->method) || (!strcmp(e->method, "GET") && !strcmp(method, "HEAD"))) {
            *ep = e;
            return 0;
        }
        if (!other)
            other = e;
    }
    *ep = other;
    return other ? TG_ERR_METHOD : TG_ERR_UNKNOWN_URL;
}

/* ---- parsing a body: a count first, then the tree ------------------------------------------ */

size_t openai_body_max_values(size_t max_body_bytes)
{
    size_t n = max_body_bytes / OPENAI_BODY_BYTES_PER_VALUE;
    return n < OPENAI_BODY_MIN_VALUES ? OPENAI_BODY_MIN_VALUES : n;
}

struct body_count {
    size_t values, max_values;
    unsigned depth;
    bool too_many, too_deep;
};

static int count_value(void *ctx)
{
    struct body_count *c = ctx;
    if (++c->values > c->max_values) {
        c->too_many = true;
        return 0;
    }
    return 1;
}

static int count_bool(void *ctx, int v)
{
    (void)v;
    return count_value(ctx);
}

static int count_number(void *ctx, const char *v, size_t len)
{
    (void)v;
    (void)len;
    return count_value(ctx);
}

static int count_string(void *ctx, const unsigned char *v, size_t len)
{
    (void)v;
    (void)len;
    return count_value(ctx);
}

static int count_open(void *ctx)
{
    struct body_count *c = ctx;
    if (++c->depth > OPENAI_BODY_MAX_DEPTH) {
        c->too_deep = true;
        return 0;
    }
    return count_value(ctx);
}

static int count_key(void *ctx, const unsigned char *key, size_t len)
{
    (void)ctx;
    (void)key;
    (void)len;
    return 1;
}

static int count_close(void *ctx)
{
    ((struct body_count *)ctx)->depth--;
    return 1;
}

/* Numbers are taken as text (.yajl_number): nothing is converted, nothing can overflow. */
static const yajl_callbacks count_callbacks = {
    .yajl_null = count_value,
    .yajl_boolean = count_bool,
    .yajl_number = count_number,
    .yajl_string = count_string,
    .yajl_start_map = count_open,
    .yajl_map_key = count_key,
    .yajl_end_map = count_close,
    .yajl_start_array = count_open,
    .yajl_end_array = count_close,
};

/* Counts values and depth with nothing built, stopping as soon as a limit is passed. A body
 * yajl finds malformed is left to jansson, whose message says where: both stop there. */
static int count_body(const char *data, size_t len, struct body_count *c)
{
    yajl_handle h = yajl_alloc(&count_callbacks, NULL, c);
    if (!h)
        return TG_ERR_NOMEM;
    yajl_config(h, yajl_dont_validate_strings, 1); /* jansson checks UTF-8 next */
    if (yajl_parse(h, (const unsigned char *)data, len) == yajl_status_ok)
        yajl_complete_parse(h);
    yajl_free(h);
    return 0;
}

/* Where a duplicate key is: the path to the key that ends the bytes fed (jansson reports a
 * duplicate right after reading the key). Arrays as ".[i]", as OpenAI writes params. */
struct key_path {
    struct key_frame {
        bool map;
        size_t next;  /* an array's next element's index */
        size_t cur;   /* the index of the element being read */
        char key[72]; /* a map's current key (cut if longer) */
    } frames[OPENAI_BODY_MAX_DEPTH];
    unsigned depth;
};

static int path_value(void *ctx)
{
    struct key_path *p = ctx;
    if (p->depth && !p->frames[p->depth - 1].map)
        p->frames[p->depth - 1].cur = p->frames[p->depth - 1].next++;
    return 1;
}

static int path_bool(void *ctx, int v)
{
    (void)v;
    return path_value(ctx);
}

static int path_number(void *ctx, const char *v, size_t len)
{
    (void)v;
    (void)len;
    return path_value(ctx);
}

static int path_string(void *ctx, const unsigned char *v, size_t len)
{
    (void)v;
    (void)len;
    return path_value(ctx);
}

static int path_open(void *ctx, bool map)
{
    struct key_path *p = ctx;
    path_value(ctx);
    if (p->depth == OPENAI_BODY_MAX_DEPTH)
        return 0; /* the count refused deeper bodies already */
    p->frames[p->depth++] = (struct key_frame){.map = map};
    return 1;
}

static int path_open_map(void *ctx)
{
    return path_open(ctx, true);
}

static int path_open_array(void *ctx)
{
    return path_open(ctx, false);
}

static int path_key(void *ctx, const unsigned char *key, size_t len)
{
    struct key_path *p = ctx;
    if (p->depth) {
        struct key_frame *f = &p->frames[p->depth - 1];
        snprintf(f->key, sizeof f->key, "%.*s", (int)(len < sizeof f->key ? len : sizeof f->key),
                 (const char *)key);
    }
    return 1;
}

static int path_close(void *ctx)
{
    struct key_path *p = ctx;
    if (p->depth)
        p->depth--;
    return 1;
}

static const yajl_callbacks path_callbacks = {
    .yajl_null = path_value,
    .yajl_boolean = path_bool,
    .yajl_number = path_number,
    .yajl_string = path_string,
    .yajl_start_map = path_open_map,
    .yajl_map_key = path_key,
    .yajl_end_map = path_close,
    .yajl_start_array = path_open_array,
    .yajl_end_array = path_close,
};

/* The path of the key that ends data[0..len) into out, and the key itself into key; false
 * when it cannot be told. */
static bool duplicate_path(const char *data, size_t len, char *out, size_t n, char *key,
                           size_t key_n)
{
    struct key_path *p = calloc(1, sizeof *p);
    if (!p)
        return false;
    yajl_handle h = yajl_alloc(&path_callbacks, NULL, p);
    bool found = false;
    if (h) {
        yajl_config(h, yajl_dont_validate_strings, 1);
        found = yajl_parse(h, (const unsigned char *)data, len) == yajl_status_ok && p->depth &&
                p->frames[p->depth - 1].map;
        yajl_free(h);
    }
    if (found) {
        size_t o = 0;
        out[0] = '\0';
        for (unsigned i = 0; i < p->depth && o < n; i++) {
            const struct key_frame *f = &p->frames[i];
            int w = f->map ? snprintf(out + o, n - o, "%s%s", i ? "." : "", f->key)
                           : snprintf(out + o, n - o, "%s[%zu]", i ? "." : "", f->cur);
            o += w > 0 ? (size_t)w : 0;
        }
        snprintf(key, key_n, "%s", p->frames[p->depth - 1].key);
    }
    free(p);
    return found;
}

int openai_parse_body(const char *data, size_t len, size_t max_body_bytes, json_t **out,
                      char *param, size_t param_len, char *msg, size_t msg_len)
{
    *out = NULL;
    param[0] = '\0';
    struct body_count c = {.max_values = openai_body_max_values(max_body_bytes)};
    if (count_body(len ? data : "", len, &c)) {
        snprintf(msg, msg_len, "out of memory");
        return TG_ERR_NOMEM;
    }
    if (c.too_many) {
        snprintf(msg, msg_len,
                 "The request body holds more than %zu JSON values (one per %d bytes of the "
                 "gateway's body size limit); send fewer.",
                 c.max_values, OPENAI_BODY_BYTES_PER_VALUE);
        return TG_ERR_TOO_LARGE;
    }
    if (c.too_deep) {
        snprintf(msg, msg_len,
                 "The request body nests arrays and objects more than %d levels deep.",
                 OPENAI_BODY_MAX_DEPTH);
        return TG_ERR_INVALID_JSON;
    }
    json_error_t jerr;
    *out = json_loadb(len ? data : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (*out)
        return 0;
    if (json_error_code(&jerr) == json_error_numeric_overflow)
        return openai_parse_bignums(data, len, out, msg, msg_len); /* openai/bignum.h */
    char key[72];
    if (json_error_code(&jerr) == json_error_duplicate_key && jerr.position > 0 &&
        (size_t)jerr.position <= len &&
        duplicate_path(data, (size_t)jerr.position, param, param_len, key, sizeof key)) {
        snprintf(msg, msg_len,
                 "The request body has the key '%s' twice in one object (at '%s'); each key "
                 "may appear only once.",
                 key, param);
        return TG_ERR_INVALID_JSON;
    }
    snprintf(msg, msg_len,
             "We could not parse the JSON body of your request: %s (line %d, column %d).",
             jerr.text, jerr.line, jerr.column);
    return TG_ERR_INVALID_JSON;
}

/* ---- what a body asks for ------------------------------------------------------------------ */

long long openai_completion_cap(const struct openai_request *req)
{
    if (req->max_tokens < 0)
        return -1;
    long long n = req->n_choices ? (long long)req->n_choices : 1;
    return req->max_tokens > LLONG_MAX / n ? LLONG_MAX : req->max_tokens * n;
}

size_t openai_output_estimate(enum openai_route route, const struct openai_request *req,
                              size_t default_tokens)
{
    if (route == OPENAI_EMBEDDINGS)
        return 0;
    const size_t cap = (size_t)OPENAI_MAX_TOKENS_ESTIMATE;
    size_t per_choice = req->max_tokens < 0                ? default_tokens
                        : req->max_tokens > (long long)cap ? cap
                                                           : (size_t)req->max_tokens;
    if (per_choice > cap)
        per_choice = cap;
    unsigned n = req->n_choices ? req->n_choices : 1;
    if (n > OPENAI_MAX_CHOICES)
        n = OPENAI_MAX_CHOICES;
    return per_choice * n;
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

int openai_fail(const char **param, const char *name, char *msg, size_t n, int err,
                const char *text)
{
    *param = name;
    snprintf(msg, n, "%s", text);
    return err;
}

int openai_require_model(json_t *body, struct openai_request *out, const char **param, char *msg,
                         size_t n)
{
    if (!json_is_object(body))
        return openai_fail(param, NULL, msg, n, TG_ERR_INVALID_JSON,
                           "The request body must be a JSON object.");
    json_t *model = json_object_get(body, "model");
    if (!model || json_is_null(model))
        return openai_fail(param, "model", msg, n, TG_ERR_MISSING_PARAM,
                           "You must provide a model parameter.");
    if (!json_is_string(model))
        return openai_fail(param, "model", msg, n, TG_ERR_INVALID_TYPE,
                           "'model' must be a string.");
    if (json_string_length(model) == 0)
        return openai_fail(param, "model", msg, n, TG_ERR_INVALID_VALUE,
                           "'model' must not be empty.");
    out->model = json_string_value(model);
    return 0;
}

int openai_validate(enum openai_route route, json_t *body, struct openai_request *out,
                    const char **param, char *msg, size_t n)
{
    *out = (struct openai_request){.max_tokens = -1};
    *param = NULL;
    int err = openai_require_model(body, out, param, msg, n);
    if (err)
        return err;

    json_t *stream = json_object_get(body, "stream");
    if (stream && !json_is_null(stream)) {
        if (!json_is_boolean(stream))
            return openai_fail(param, "stream", msg, n, TG_ERR_INVALID_TYPE,
                               "'stream' must be a boolean.");
        out->stream = json_is_true(stream);
        if (out->stream && route == OPENAI_EMBEDDINGS)
            return openai_fail(param, "stream", msg, n, TG_ERR_INVALID_VALUE,
                               "Embeddings cannot be streamed.");
    }
    json_t *so = json_object_get(body, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so))
            return openai_fail(param, "stream_options", msg, n, TG_ERR_INVALID_TYPE,
                               "'stream_options' must be an object.");
        json_t *iu = json_object_get(so, "include_usage");
        if (iu && !json_is_null(iu) && !json_is_boolean(iu))
            return openai_fail(param, "stream_options.include_usage", msg, n, TG_ERR_INVALID_TYPE,
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
            return openai_fail(param, max_names[i], msg, n, TG_ERR_INVALID_TYPE, text);
        }
        if (out->max_tokens < 0)
            out->max_tokens = json_integer_value(mt);
    }

    switch (route) {
    case OPENAI_CHAT: {
        json_t *messages = json_object_get(body, "messages");
        if (!messages || json_is_null(messages))
            return openai_fail(param, "messages", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide a messages parameter.");
        if (!json_is_array(messages))
            return openai_fail(param, "messages", msg, n, TG_ERR_INVALID_TYPE,
                               "'messages' must be an array.");
        if (json_array_size(messages) == 0)
            return openai_fail(param, "messages", msg, n, TG_ERR_INVALID_VALUE,
                               "'messages' must contain at least one message.");
        size_t i;
        json_t *m;
        json_array_foreach (messages, i, m) {
            if (!json_is_object(m) || !json_is_string(json_object_get(m, "role"))) {
                char text[96];
                snprintf(text, sizeof text, "'messages[%zu]' must be an object with a role.", i);
                return openai_fail(param, "messages", msg, n, TG_ERR_INVALID_TYPE, text);
            }
        }
        break;
    }
    case OPENAI_COMPLETIONS: {
        json_t *prompt = json_object_get(body, "prompt");
        if (!prompt || json_is_null(prompt))
            return openai_fail(param, "prompt", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide a prompt parameter.");
        if (!json_is_string(prompt) && !json_is_array(prompt))
            return openai_fail(param, "prompt", msg, n, TG_ERR_INVALID_TYPE,
                               "'prompt' must be a string or an array.");
        break;
    }
    case OPENAI_EMBEDDINGS: {
        json_t *input = json_object_get(body, "input");
        if (!input || json_is_null(input))
            return openai_fail(param, "input", msg, n, TG_ERR_MISSING_PARAM,
                               "You must provide an input parameter.");
        if (!json_is_string(input) && !json_is_array(input))
            return openai_fail(param, "input", msg, n, TG_ERR_INVALID_TYPE,
                               "'input' must be a string or an array.");
        break;
    }
    default:
        break;
    }
    json_t *nv = json_object_get(body, "n");
    out->n_choices = 1;
    if (nv && !json_is_null(nv)) {
        if (!json_is_integer(nv) || json_integer_value(nv) < 1 ||
            json_integer_value(nv) > OPENAI_MAX_CHOICES)
            return openai_fail(param, "n", msg, n, TG_ERR_INVALID_VALUE,
                               "'n' must be an integer between 1 and 128.");
        out->n_choices = (unsigned)json_integer_value(nv);
    }
    openai_estimate_prompt(route, body, out);
    return 0;
}

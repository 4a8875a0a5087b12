#include "responses.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "buf.h"
#include "fault.h"
#include "node.h"
#include "reply.h"
#include "req.h"
#include "rng.h"
#include "runtime.h"
#include "wake.h"

#define STREAM_BLOCK 16384
/* Responses a node remembers; the oldest is forgotten first. */
#define STORE_MAX 4096

/* ---- the store ---- */

struct stored {
    char id[48];
    char *response; /* the response object, compact JSON */
    char *input;    /* its input items, a JSON array */
};

static struct stored store[STORE_MAX];
static size_t store_next;
static pthread_mutex_t store_lock = PTHREAD_MUTEX_INITIALIZER;

static void store_put(const char *id, json_t *response, json_t *input)
{
    char *r = json_dumps(response, JSON_COMPACT);
    char *in = json_dumps(input, JSON_COMPACT);

    pthread_mutex_lock(&store_lock);
    struct stored *s = &store[store_next++ % STORE_MAX];
    free(s->response);
    free(s->input);
    snprintf(s->id, sizeof(s->id), "%s", id);
    s->response = r;
    s->input = in;
    pthread_mutex_unlock(&store_lock);
}

/* Copies what the store holds for id (the caller frees both); false when it holds nothing. */
static bool store_get(const char *id, char **response, char **input, bool remove)
{
    bool found = false;

    pthread_mutex_lock(&store_lock);
    for (size_t i = 0; i < STORE_MAX && !found; i++) {
        struct stored *s = &store[i];
        if (!s->response || strcmp(s->id, id))
            continue;
        found = true;
        if (response)
            *response = strdup(s->response);
        if (input)
            *input = strdup(s->input ? s->input : "[]");
        if (remove) {
            free(s->response);
            free(s->input);
            s->response = s->input = NULL;
            s->id[0] = '\0';
        }
    }
    pthread_mutex_unlock(&store_lock);
    return found;
}

/* ---- the plan: every event (or the whole body) built before the first byte ---- */

struct resp_plan {
    struct buf events; /* the stream, or the whole body */
    size_t *ends;      /* where each event ends */
    bool *paced;       /* the event is a delta: it waits token_ms after the previous one */
    size_t n_events, cap_events;
    size_t sent_events; /* events handed to MHD */
    size_t off;         /* bytes of events sent */
    size_t cut_at;      /* close-mid-stream: stop here */
    unsigned token_ms;
    uint64_t next_due_ns;
    bool garbage;
};

static const char *const words[] = {
    " lorem",  " ipsum", " dolor",  " sit",     " amet",   " consectetur", " adipiscing",
    " elit",   " sed",   " do",     " eiusmod", " tempor", " incididunt",  " ut",
    " labore", " et",    " dolore", " magna",   " aliqua",
};
#define WORD_COUNT (sizeof(words) / sizeof(words[0]))

static void make_id(char *out, size_t n, const char *prefix)
{
    uint64_t a = rng_next(), b = rng_next();

    snprintf(out, n, "%s%016llx%08llx", prefix, (unsigned long long)a,
             (unsigned long long)(b >> 32));
}

/* Appends one typed event; `paced` events are sent token_ms apart. */
static void add_event(struct resp_plan *p, json_t *ev, unsigned *seq, bool paced)
{
    json_object_set_new(ev, "sequence_number", json_integer((*seq)++));
    char *text = json_dumps(ev, JSON_COMPACT);
    const char *type = json_string_value(json_object_get(ev, "type"));

    if (!text || p->events.failed) {
        free(text);
        p->events.failed = true;
        json_decref(ev);
        return;
    }
    if (p->n_events == p->cap_events) {
        size_t cap = p->cap_events ? 2 * p->cap_events : 64;
        size_t *e = realloc(p->ends, cap * sizeof(*e));
        bool *q = e ? realloc(p->paced, cap * sizeof(*q)) : NULL;
        if (e)
            p->ends = e;
        if (q)
            p->paced = q;
        if (!e || !q) {
            free(text);
            json_decref(ev);
            p->events.failed = true;
            return;
        }
        p->cap_events = cap;
    }
    buf_printf(&p->events, "event: %s\ndata: %s\n\n", type ? type : "message", text);
    p->ends[p->n_events] = p->events.len;
    p->paced[p->n_events] = paced;
    p->n_events++;
    free(text);
    json_decref(ev);
}

static size_t chars_of(json_t *v)
{
    size_t n = 0;

    if (json_is_string(v))
        return json_string_length(v);
    if (json_is_array(v) || json_is_object(v)) {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        n = s ? strlen(s) : 0;
        free(s);
    }
    return n;
}

/* Arguments a function tool accepts: every property of its schema with a plain value. */
static json_t *tool_arguments(json_t *tool)
{
    json_t *args = json_object();
    json_t *props = json_object_get(json_object_get(tool, "parameters"), "properties");
    const char *k;
    json_t *schema;

    json_object_foreach (props, k, schema) {
        const char *t = json_string_value(json_object_get(schema, "type"));
        json_t *v = !t                      ? json_null()
                    : !strcmp(t, "string")  ? json_string("test")
                    : !strcmp(t, "number")  ? json_real(1)
                    : !strcmp(t, "integer") ? json_integer(1)
                    : !strcmp(t, "boolean") ? json_true()
                    : !strcmp(t, "array")   ? json_array()
                    : !strcmp(t, "object")  ? json_object()
                                            : json_null();
        json_object_set_new(args, k, v);
    }
    return args;
}

/* The first function tool, when the input does not already answer a call. */
static json_t *pick_tool(json_t *root)
{
    json_t *input = json_object_get(root, "input");
    size_t i;
    json_t *item;

    json_array_foreach (input, i, item) {
        const char *t = json_string_value(json_object_get(item, "type"));
        if (t && !strcmp(t, "function_call_output"))
            return NULL;
    }
    json_array_foreach (json_object_get(root, "tools"), i, item) {
        const char *t = json_string_value(json_object_get(item, "type"));
        if (t && !strcmp(t, "function") && json_is_string(json_object_get(item, "name")))
            return item;
    }
    return NULL;
}

static json_t *usage_json(unsigned prompt, unsigned completion, unsigned mult)
{
    return json_pack("{s:I, s:{s:I}, s:I, s:{s:I}, s:I}", "input_tokens", (json_int_t)prompt * mult,
                     "input_tokens_details", "cached_tokens", (json_int_t)0, "output_tokens",
                     (json_int_t)completion * mult, "output_tokens_details", "reasoning_tokens",
                     (json_int_t)0, "total_tokens", (json_int_t)(prompt + completion) * mult);
}

static json_t *response_json(const char *id, long long created, const char *model,
                             const char *status, json_t *root)
{
    json_t *prev = json_object_get(root, "previous_response_id");
    json_t *instr = json_object_get(root, "instructions");
    json_t *mot = json_object_get(root, "max_output_tokens");
    return json_pack("{s:s, s:s, s:I, s:s, s:n, s:n, s:O?, s:O?, s:s, s:[], s:b, s:O?, s:n, "
                     "s:b, s:s, s:[], s:n}",
                     "id", id, "object", "response", "created_at", (json_int_t)created, "status",
                     status, "error", "incomplete_details", "instructions", instr,
                     "max_output_tokens", mot, "model", model, "output", "parallel_tool_calls", 1,
                     "previous_response_id", prev, "reasoning", "store", 1, "tool_choice", "auto",
                     "tools", "usage");
}

/* Validates like OpenAI and plans the answer; false with *err set on a refusal. */
struct refusal {
    unsigned status;
    const char *param, *code;
    char text[256];
};

static bool refuse(struct refusal *r, unsigned status, const char *param, const char *code,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static bool refuse(struct refusal *r, unsigned status, const char *param, const char *code,
                   const char *fmt, ...)
{
    va_list ap;

    r->status = status;
    r->param = param;
    r->code = code;
    va_start(ap, fmt);
    vsnprintf(r->text, sizeof(r->text), fmt, ap);
    va_end(ap);
    return false;
}

static unsigned prompt_tokens(json_t *root)
{
    size_t chars = chars_of(json_object_get(root, "instructions"));
    json_t *input = json_object_get(root, "input");
    size_t items = 1;

    if (json_is_string(input)) {
        chars += json_string_length(input);
    } else {
        size_t i;
        json_t *item;
        items = json_array_size(input);
        json_array_foreach (input, i, item) {
            json_t *c = json_object_get(item, "content");
            if (json_is_array(c)) {
                size_t j;
                json_t *part;
                json_array_foreach (c, j, part)
                    chars += chars_of(json_object_get(part, "text"));
            } else {
                chars += chars_of(c) + chars_of(json_object_get(item, "output")) +
                         chars_of(json_object_get(item, "arguments"));
            }
        }
    }
    size_t p = (chars + 3) / 4 + 3 * items;
    return p < 1 ? 1 : p > UINT_MAX / 200 ? UINT_MAX / 200 : (unsigned)p;
}

static bool plan(struct mock_req *req, json_t *root, const struct runtime *cfg, struct refusal *why)
{
    if (!json_is_object(root))
        return refuse(why, MHD_HTTP_BAD_REQUEST, NULL, "invalid_json",
                      "We could not parse the JSON body of your request.");
    json_t *model = json_object_get(root, "model");
    if (!json_is_string(model))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "model",
                      model ? "invalid_type" : "missing_required_parameter",
                      "you must provide a model parameter");
    json_t *input = json_object_get(root, "input");
    json_t *prev = json_object_get(root, "previous_response_id");
    if (input && !json_is_string(input) && !json_is_array(input))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "input", "invalid_type",
                      "input must be a string or an array");
    if (!input && !json_is_string(prev))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "input", "missing_required_parameter",
                      "you must provide an input parameter");
    if (!node_model_known(json_string_value(model)))
        return refuse(why, MHD_HTTP_NOT_FOUND, "model", "model_not_found",
                      "The model '%.180s' does not exist", json_string_value(model));
    if (json_is_string(prev) && !store_get(json_string_value(prev), NULL, NULL, false))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "previous_response_id",
                      "previous_response_not_found",
                      "Previous response with id '%.100s' not found.", json_string_value(prev));
    json_t *stream = json_object_get(root, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "stream", "invalid_type",
                      "stream must be a boolean");
    req->stream = json_is_true(stream);
    unsigned completion = cfg->tokens;
    bool capped = false;
    json_t *cap = json_object_get(root, "max_output_tokens");
    if (cap && !json_is_null(cap)) {
        if (!json_is_integer(cap) || json_integer_value(cap) < 0)
            return refuse(why, MHD_HTTP_BAD_REQUEST, "max_output_tokens", "invalid_value",
                          "max_output_tokens must be a non-negative integer");
        if (json_integer_value(cap) < (json_int_t)completion) {
            completion = (unsigned)json_integer_value(cap);
            capped = true;
        }
    }

    struct resp_plan *p = calloc(1, sizeof(*p));
    if (!p)
        return refuse(why, 500, NULL, NULL, "out of memory");
    req->resp = p;
    buf_init(&p->events, REQ_MAX_ANSWER);
    p->token_ms = cfg->token_ms;
    unsigned mult = req->fault == FAULT_INFLATE ? 100 : 1;
    unsigned prompt = prompt_tokens(root);
    char id[48], item_id[48], call_id[48];
    make_id(id, sizeof(id), "resp_");
    long long created = (long long)time(NULL);
    const char *status = capped ? "incomplete" : "completed";
    json_t *tool = pick_tool(root);
    json_t *resp = response_json(id, created, json_string_value(model), "in_progress", root);
    unsigned seq = 0;

    if (req->stream) {
        add_event(p, json_pack("{s:s, s:O}", "type", "response.created", "response", resp), &seq,
                  false);
        add_event(p, json_pack("{s:s, s:O}", "type", "response.in_progress", "response", resp),
                  &seq, false);
    }
    json_t *item;
    if (tool) {
        make_id(item_id, sizeof(item_id), "fc_");
        make_id(call_id, sizeof(call_id), "call_");
        json_t *args = tool_arguments(tool);
        char *a = json_dumps(args, JSON_COMPACT);
        json_decref(args);
        const char *name = json_string_value(json_object_get(tool, "name"));
        item = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "function_call", "id", item_id,
                         "call_id", call_id, "name", name, "arguments", a ? a : "{}", "status",
                         "completed");
        if (req->stream) {
            add_event(p,
                      json_pack("{s:s, s:i, s:{s:s, s:s, s:s, s:s, s:s, s:s}}", "type",
                                "response.output_item.added", "output_index", 0, "item", "type",
                                "function_call", "id", item_id, "call_id", call_id, "name", name,
                                "arguments", "", "status", "in_progress"),
                      &seq, false);
            add_event(p,
                      json_pack("{s:s, s:s, s:i, s:s}", "type",
                                "response.function_call_arguments.delta", "item_id", item_id,
                                "output_index", 0, "delta", a ? a : "{}"),
                      &seq, true);
            add_event(p,
                      json_pack("{s:s, s:s, s:i, s:s}", "type",
                                "response.function_call_arguments.done", "item_id", item_id,
                                "output_index", 0, "arguments", a ? a : "{}"),
                      &seq, false);
        }
        completion = (unsigned)((a ? strlen(a) : 2) + 3) / 4;
        free(a);
    } else {
        make_id(item_id, sizeof(item_id), "msg_");
        struct buf text;
        buf_init(&text, REQ_MAX_ANSWER);
        if (req->stream) {
            add_event(p,
                      json_pack("{s:s, s:i, s:{s:s, s:s, s:s, s:s, s:[]}}", "type",
                                "response.output_item.added", "output_index", 0, "item", "type",
                                "message", "id", item_id, "status", "in_progress", "role",
                                "assistant", "content"),
                      &seq, false);
            add_event(p,
                      json_pack("{s:s, s:s, s:i, s:i, s:{s:s, s:s, s:[]}}", "type",
                                "response.content_part.added", "item_id", item_id, "output_index",
                                0, "content_index", 0, "part", "type", "output_text", "text", "",
                                "annotations"),
                      &seq, false);
        }
        for (unsigned i = 0; i < completion; i++) {
            char tok[200];
            if (i == 0)
                snprintf(tok, sizeof(tok), "[%s]", node_name);
            else
                snprintf(tok, sizeof(tok), "%s", words[(i - 1) % WORD_COUNT]);
            buf_adds(&text, tok);
            if (req->stream)
                add_event(p,
                          json_pack("{s:s, s:s, s:i, s:i, s:s, s:[]}", "type",
                                    "response.output_text.delta", "item_id", item_id,
                                    "output_index", 0, "content_index", 0, "delta", tok,
                                    "logprobs"),
                          &seq, true);
        }
        buf_add(&text, "", 1);
        const char *t = text.failed ? "" : text.data;
        json_t *part =
            json_pack("{s:s, s:s, s:[]}", "type", "output_text", "text", t, "annotations");
        if (req->stream) {
            add_event(p,
                      json_pack("{s:s, s:s, s:i, s:i, s:s, s:[]}", "type",
                                "response.output_text.done", "item_id", item_id, "output_index", 0,
                                "content_index", 0, "text", t, "logprobs"),
                      &seq, false);
            add_event(p,
                      json_pack("{s:s, s:s, s:i, s:i, s:O}", "type", "response.content_part.done",
                                "item_id", item_id, "output_index", 0, "content_index", 0, "part",
                                part),
                      &seq, false);
        }
        item = json_pack("{s:s, s:s, s:s, s:s, s:[o]}", "type", "message", "id", item_id, "status",
                         "completed", "role", "assistant", "content", part);
        buf_free(&text);
    }
    if (req->stream)
        add_event(p,
                  json_pack("{s:s, s:i, s:O}", "type", "response.output_item.done", "output_index",
                            0, "item", item),
                  &seq, false);
    json_object_set_new(resp, "status", json_string(status));
    json_array_append_new(json_object_get(resp, "output"), item);
    json_object_set_new(resp, "usage", usage_json(prompt, completion, mult));
    if (capped)
        json_object_set_new(resp, "incomplete_details",
                            json_pack("{s:s}", "reason", "max_output_tokens"));
    json_t *in = json_is_array(input) ? json_incref(input)
                                      : json_pack("[{s:s, s:s, s:O?}]", "type", "message", "role",
                                                  "user", "content", input);
    store_put(id, resp, in);
    json_decref(in);
    if (req->stream) {
        add_event(p,
                  json_pack("{s:s, s:O}", "type",
                            capped ? "response.incomplete" : "response.completed", "response",
                            resp),
                  &seq, false);
    } else if (req->fault == FAULT_INVALID_JSON) {
        buf_adds(&p->events, "{\"object\": this is not json");
    } else {
        char *body = json_dumps(resp, JSON_COMPACT);
        if (body)
            buf_adds(&p->events, body);
        else
            p->events.failed = true;
        free(body);
    }
    json_decref(resp);
    if (req->stream && req->fault == FAULT_INVALID_JSON) {
        buf_reset(&p->events);
        buf_adds(&p->events, "data: {garbage\n\n");
        p->n_events = 0;
        p->garbage = true;
    }
    p->cut_at = SIZE_MAX;
    if (req->fault == FAULT_CLOSE)
        p->cut_at = req->stream && p->n_events ? p->ends[p->n_events / 2 - 1] : p->events.len / 2;
    if (p->events.failed)
        return refuse(why, 500, NULL, NULL, "answer too large");
    return true;
}

/* ---- sending ---- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct mock_req *req = cls;
    struct resp_plan *p = req->resp;
    size_t done = 0;

    (void)pos;
    while (done < max) {
        size_t end = p->garbage                     ? p->events.len
                     : p->sent_events < p->n_events ? p->ends[p->sent_events]
                                                    : p->events.len;
        if (p->off >= p->cut_at)
            return done ? (ssize_t)done : MHD_CONTENT_READER_END_WITH_ERROR;
        if (p->off == p->events.len)
            return done ? (ssize_t)done : MHD_CONTENT_READER_END_OF_STREAM;
        if (p->off == end) {
            p->sent_events++;
            continue;
        }
        bool event_start =
            p->garbage || p->sent_events == 0 || p->off == p->ends[p->sent_events - 1];
        if (event_start && !p->garbage && p->paced[p->sent_events] && p->token_ms) {
            uint64_t now = wake_now_ns();
            if (now < p->next_due_ns) {
                if (done)
                    return (ssize_t)done;
                return wake_suspend_until(req->conn, p->next_due_ns) == 0
                           ? 0
                           : MHD_CONTENT_READER_END_WITH_ERROR;
            }
            p->next_due_ns =
                (p->next_due_ns ? p->next_due_ns : now) + (uint64_t)p->token_ms * 1000000u;
        }
        size_t stop = end < p->cut_at ? end : p->cut_at;
        size_t n = stop - p->off;
        if (n > max - done)
            n = max - done;
        memcpy(dst + done, p->events.data + p->off, n);
        p->off += n;
        done += n;
    }
    return (ssize_t)done;
}

static ssize_t cut_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct resp_plan *p = ((struct mock_req *)cls)->resp;

    if (pos >= p->cut_at)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = p->cut_at - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(dst, p->events.data + pos, n);
    return (ssize_t)n;
}

enum MHD_Result responses_send(struct mock_req *req)
{
    struct resp_plan *p = req->resp;
    struct MHD_Response *r;
    const char *ctype = req->stream ? "text/event-stream" : "application/json";

    req->phase = PHASE_SENDING;
    if (req->stream) {
        p->next_due_ns = 0;
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, req,
                                              NULL);
    } else if (req->fault == FAULT_CLOSE) {
        r = MHD_create_response_from_callback(p->events.len, STREAM_BLOCK, cut_reader, req, NULL);
    } else {
        return reply_buf(req->conn, MHD_HTTP_OK, ctype, &p->events, NULL, NULL);
    }
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_NO;
    if (reply_add_headers(r, ctype))
        ret = MHD_queue_response(req->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result responses_reply(struct mock_req *req)
{
    struct refusal why;
    struct runtime cfg = runtime_get();
    json_t *root = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    enum MHD_Result ret;

    req->fault = fault_draw(cfg.fault, cfg.fault_rate);
    if (!plan(req, root, &cfg, &why)) {
        ret = reply_error(req->conn, why.status, why.text, why.param, why.code);
        goto out;
    }
    if (fault_reply(req, cfg.retry_after_s, &ret))
        goto out;
    if (cfg.ttfb_ms == 0) {
        ret = responses_send(req);
        goto out;
    }
    req->phase = PHASE_DELAY;
    uint64_t due = wake_now_ns() + (uint64_t)cfg.ttfb_ms * 1000000u;
    ret = wake_suspend_until(req->conn, due) == 0 ? MHD_YES : MHD_NO;
out:
    json_decref(root);
    return ret;
}

enum MHD_Result responses_by_id(struct mock_req *req, const char *method, const char *url)
{
    char id[64];
    const char *rest = url + strlen("/v1/responses/");
    size_t n = strcspn(rest, "/");
    bool items = !strcmp(rest + n, "/input_items");

    if (n >= sizeof(id) || (rest[n] && !items) || (items && strcmp(method, "GET")))
        return reply_error(req->conn, MHD_HTTP_NOT_FOUND, "unknown url", NULL, "unknown_url");
    memcpy(id, rest, n);
    id[n] = '\0';
    char *resp = NULL, *input = NULL;
    bool del = !strcmp(method, "DELETE");
    if (!store_get(id, &resp, &input, del)) {
        char msg[160];
        snprintf(msg, sizeof(msg), "Response with id '%.64s' not found.", id);
        return reply_error(req->conn, MHD_HTTP_NOT_FOUND, msg, NULL, NULL);
    }
    json_t *out;
    if (del)
        out = json_pack("{s:s, s:s, s:b}", "id", id, "object", "response", "deleted", 1);
    else if (items)
        out = json_pack("{s:s, s:o, s:n, s:n, s:b}", "object", "list", "data",
                        json_loads(input ? input : "[]", 0, NULL), "first_id", "last_id",
                        "has_more", 0);
    else
        out = json_loads(resp ? resp : "null", 0, NULL);
    free(resp);
    free(input);
    return reply_json(req->conn, MHD_HTTP_OK, out);
}

void responses_free(struct mock_req *req)
{
    struct resp_plan *p = req->resp;

    if (!p)
        return;
    buf_free(&p->events);
    free(p->ends);
    free(p->paced);
    free(p);
    req->resp = NULL;
}

/*
 * mocknode: a simulated OpenAI-compatible inference node for Tollgate's tests
 * and benchmarks.
 *
 * Threads: MHD runs an epoll thread pool; one wake thread (wake.c) resumes
 * connections parked for delays and hangs, so no MHD thread ever sleeps. The
 * main thread only starts things and waits for SIGTERM/SIGINT.
 *
 * Shared state: node identity and cached responses are read-only after start;
 * the runtime config sits under rt_lock; counters are atomics; the "last
 * request" snapshot sits under last_lock.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "answer.h"
#include "buf.h"
#include "wake.h"

#define MAX_BODY (16u << 20)
#define MAX_RECORDED_BODY (64u << 10)
#define MAX_ANSWER (64u << 20)
#define MAX_TOKENS 100000u
#define MAX_DELAY_MS 3600000u
#define MAX_RETRY_AFTER 86400u
#define MAX_THREADS 256u
#define CONNECTION_LIMIT 10000u
#define STREAM_BLOCK 16384

enum fault {
    FAULT_NONE,
    FAULT_500,
    FAULT_429,
    FAULT_HANG,
    FAULT_CLOSE,
    FAULT_INVALID_JSON,
    FAULT_INFLATE,
    FAULT_COUNT,
};

static const char *const fault_names[FAULT_COUNT] = {
    "none", "500", "429", "hang", "close-mid-stream", "invalid-json", "inflate-usage",
};

/* Endpoints; the /v1 ones come first so they double as stats indexes. */
enum ep {
    EP_CHAT,
    EP_COMPLETIONS,
    EP_EMBEDDINGS,
    EP_MODELS,
    EP_MODEL,
    EP_V1_OTHER,
    EP_HEALTHZ,
    EP_CONFIG,
    EP_STATS,
    EP_RESET,
    EP_OTHER,
};
#define V1_EP_COUNT (EP_V1_OTHER + 1)

static const char *const v1_stat_keys[V1_EP_COUNT] = {
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
    "/v1/models",           "/v1/models/{id}", "other",
};

/* What POST /_mock/config can change; copied whole into each request. */
struct runtime {
    enum fault fault;
    double fault_rate;
    unsigned ttfb_ms;
    unsigned token_ms;
    unsigned tokens;
    unsigned retry_after_s;
};

enum phase {
    PHASE_BODY,    /* reading the request */
    PHASE_DELAY,   /* parked for ttfb; the answer goes out on resume */
    PHASE_HANG,    /* parked until the client leaves or the node stops */
    PHASE_SENDING, /* a response is queued */
};

enum stage {
    STAGE_TOKENS,
    STAGE_USAGE,
    STAGE_DONE,
    STAGE_GARBAGE,
    STAGE_END,
    STAGE_ABORT, /* close-mid-stream cut or a failed build: drop the connection */
};

/* One HTTP request; created on the first access-handler call, freed on completion. */
struct mock_req {
    struct MHD_Connection *conn;
    enum ep ep;
    enum phase phase;
    bool too_large;
    struct buf body;

    enum fault fault;
    bool stream;
    bool include_usage;
    char id[40];
    char *model;
    struct answer_gen gen;

    /* Non-stream: the whole answer. Streams: the event being sent. */
    struct buf out;
    size_t out_off;
    size_t cut_at; /* non-stream close-mid-stream: bytes sent before the cut */

    struct buf prefix;
    enum stage stage;
    unsigned next_token;
    unsigned cut_after; /* close-mid-stream: tokens sent before the cut */
    unsigned token_ms;
    uint64_t next_due_ns;

    struct wake_hang hang;
};

/* The "last" request snapshot: one allocation holding every string. */
struct last_req {
    const char *method;
    const char *path;
    const char *authorization;
    const char *x_request_id;
    const char *body; /* NULL when absent or over MAX_RECORDED_BODY */
    size_t body_len;
    char data[];
};

/* Read-only after main() starts the daemon. */
static const char *node_name;
static char **models;
static size_t model_count;
static bool quiet;
static long long started_at;
static struct MHD_Response *healthz_resp;
static struct MHD_Response *models_resp;

static pthread_mutex_t rt_lock = PTHREAD_MUTEX_INITIALIZER;
static struct runtime rt = {
    .fault = FAULT_NONE,
    .fault_rate = 1.0,
    .tokens = 16,
    .retry_after_s = 1,
};

static atomic_ullong stat_requests;
static atomic_ullong stat_by_path[V1_EP_COUNT];
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static struct last_req *last;

static _Thread_local uint64_t rng_state;

/* xorshift64*, seeded per thread so threads never share or lock PRNG state. */
static uint64_t rng_next(void)
{
    uint64_t x = rng_state;

    if (x == 0) {
        x = wake_now_ns() ^ ((uint64_t)(uintptr_t)&rng_state * 0x9e3779b97f4a7c15ull);
        if (x == 0)
            x = 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

static double rng_unit(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

static struct runtime runtime_get(void)
{
    pthread_mutex_lock(&rt_lock);
    struct runtime r = rt;
    pthread_mutex_unlock(&rt_lock);
    return r;
}

static bool model_known(const char *name)
{
    for (size_t i = 0; i < model_count; i++)
        if (strcmp(models[i], name) == 0)
            return true;
    return false;
}

/* ---- replies ---- */

static bool add_headers(struct MHD_Response *r, const char *content_type)
{
    return MHD_add_response_header(r, "x-mocknode", node_name) == MHD_YES &&
           (!content_type ||
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES);
}

/* Queues malloc'd `data` as the body (taking it) with an optional extra header. */
static enum MHD_Result reply_raw(struct MHD_Connection *conn, unsigned status,
                                 const char *content_type, char *data, size_t len,
                                 const char *hname, const char *hvalue)
{
    if (!data)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_NO;
    if (add_headers(r, content_type) &&
        (!hname || MHD_add_response_header(r, hname, hvalue) == MHD_YES))
        ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result reply_buf(struct MHD_Connection *conn, unsigned status,
                                 const char *content_type, struct buf *b, const char *hname,
                                 const char *hvalue)
{
    size_t len = 0;
    char *data = buf_steal(b, &len);

    return reply_raw(conn, status, content_type, data, len, hname, hvalue);
}

/* Takes the reference to `v`; jansson allocates with malloc, so MHD can free the text. */
static enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);

    json_decref(v);
    return reply_raw(conn, status, "application/json", text, text ? strlen(text) : 0, NULL, NULL);
}

static enum MHD_Result reply_error_hdr(struct MHD_Connection *conn, unsigned status,
                                       const char *message, const char *type, const char *param,
                                       const char *code, const char *hname, const char *hvalue)
{
    struct buf b;

    buf_init(&b, 1 << 20);
    answer_error(&b, message, type, param, code);
    return reply_buf(conn, status, "application/json", &b, hname, hvalue);
}

static enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status,
                                   const char *message, const char *param, const char *code)
{
    return reply_error_hdr(conn, status, message, "invalid_request_error", param, code, NULL, NULL);
}

static enum MHD_Result reply_cached(struct MHD_Connection *conn, struct MHD_Response *r)
{
    return MHD_queue_response(conn, MHD_HTTP_OK, r);
}

/* ---- stats ---- */

static void record_last(struct mock_req *req, const char *method, const char *url)
{
    const char *auth =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *xrid = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "x-request-id");
    size_t body_len = 0;

    if (!req->too_large && req->body.len > 0 && req->body.len <= MAX_RECORDED_BODY)
        body_len = req->body.len;
    size_t ml = strlen(method) + 1;
    size_t pl = strlen(url) + 1;
    size_t al = auth ? strlen(auth) + 1 : 0;
    size_t xl = xrid ? strlen(xrid) + 1 : 0;
    struct last_req *n = malloc(sizeof(*n) + ml + pl + al + xl + body_len);
    if (!n)
        return;
    char *p = n->data;
    n->method = memcpy(p, method, ml);
    p += ml;
    n->path = memcpy(p, url, pl);
    p += pl;
    n->authorization = al ? memcpy(p, auth, al) : NULL;
    p += al;
    n->x_request_id = xl ? memcpy(p, xrid, xl) : NULL;
    p += xl;
    n->body = body_len ? memcpy(p, req->body.data, body_len) : NULL;
    n->body_len = body_len;

    pthread_mutex_lock(&last_lock);
    struct last_req *old = last;
    last = n;
    pthread_mutex_unlock(&last_lock);
    free(old);
}

static void count_request(struct mock_req *req, const char *method, const char *url)
{
    atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&stat_by_path[req->ep], 1, memory_order_relaxed);
    record_last(req, method, url);
}

/* Header bytes need not be UTF-8; jansson refuses those, and null beats a missing key. */
static json_t *str_or_null(const char *s)
{
    json_t *v = s ? json_string(s) : NULL;

    return v ? v : json_null();
}

static enum MHD_Result handle_stats(struct MHD_Connection *conn)
{
    json_t *by_path = json_object();
    for (int i = 0; i < V1_EP_COUNT; i++) {
        unsigned long long n = atomic_load_explicit(&stat_by_path[i], memory_order_relaxed);
        if (n)
            json_object_set_new(by_path, v1_stat_keys[i], json_integer((json_int_t)n));
    }
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(node_name));
    json_object_set_new(
        o, "requests",
        json_integer((json_int_t)atomic_load_explicit(&stat_requests, memory_order_relaxed)));
    json_object_set_new(o, "by_path", by_path);

    json_t *l = json_null();
    pthread_mutex_lock(&last_lock);
    if (last) {
        json_t *body = last->body ? json_loadb(last->body, last->body_len, 0, NULL) : NULL;
        l = json_object();
        json_object_set_new(l, "method", json_string(last->method));
        json_object_set_new(l, "path", json_string(last->path));
        json_object_set_new(l, "authorization", str_or_null(last->authorization));
        json_object_set_new(l, "x_request_id", str_or_null(last->x_request_id));
        json_object_set_new(l, "body", body ? body : json_null());
    }
    pthread_mutex_unlock(&last_lock);
    json_object_set_new(o, "last", l);
    return reply_json(conn, MHD_HTTP_OK, o);
}

static enum MHD_Result handle_reset(struct MHD_Connection *conn)
{
    atomic_store(&stat_requests, 0);
    for (int i = 0; i < V1_EP_COUNT; i++)
        atomic_store(&stat_by_path[i], 0);
    pthread_mutex_lock(&last_lock);
    struct last_req *old = last;
    last = NULL;
    pthread_mutex_unlock(&last_lock);
    free(old);
    return reply_json(conn, MHD_HTTP_OK, json_pack("{s:b}", "ok", 1));
}

/* ---- runtime config ---- */

static json_t *runtime_json(const struct runtime *r)
{
    return json_pack("{s:s, s:f, s:I, s:I, s:I, s:I}", "fault", fault_names[r->fault], "fault_rate",
                     r->fault_rate, "ttfb_ms", (json_int_t)r->ttfb_ms, "token_ms",
                     (json_int_t)r->token_ms, "tokens", (json_int_t)r->tokens, "retry_after_s",
                     (json_int_t)r->retry_after_s);
}

static int fault_parse(const char *s)
{
    for (int i = 0; i < FAULT_COUNT; i++)
        if (strcmp(s, fault_names[i]) == 0)
            return i;
    return -1;
}

/* Reads an integer field into *out; returns false when it is not an integer in [0, max]. */
static bool json_uint(json_t *v, unsigned max, unsigned *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max)
        return false;
    *out = (unsigned)json_integer_value(v);
    return true;
}

/* Applies the fields of `o` to *r; on error leaves a message in `msg` and returns false. */
static bool runtime_apply(json_t *o, struct runtime *r, char *msg, size_t msg_size)
{
    for (void *it = json_object_iter(o); it; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        bool ok;
        if (strcmp(key, "fault") == 0) {
            int f = -1;
            /* Also take the bare numbers, the likeliest typo for "500" and "429". */
            if (json_is_string(v))
                f = fault_parse(json_string_value(v));
            else if (json_is_integer(v) && json_integer_value(v) == 500)
                f = FAULT_500;
            else if (json_is_integer(v) && json_integer_value(v) == 429)
                f = FAULT_429;
            ok = f >= 0;
            if (ok)
                r->fault = (enum fault)f;
        } else if (strcmp(key, "fault_rate") == 0) {
            double d = json_number_value(v);
            ok = json_is_number(v) && d >= 0.0 && d <= 1.0;
            if (ok)
                r->fault_rate = d;
        } else if (strcmp(key, "ttfb_ms") == 0) {
            ok = json_uint(v, MAX_DELAY_MS, &r->ttfb_ms);
        } else if (strcmp(key, "token_ms") == 0) {
            ok = json_uint(v, MAX_DELAY_MS, &r->token_ms);
        } else if (strcmp(key, "tokens") == 0) {
            ok = json_uint(v, MAX_TOKENS, &r->tokens);
        } else if (strcmp(key, "retry_after_s") == 0) {
            ok = json_uint(v, MAX_RETRY_AFTER, &r->retry_after_s);
        } else {
            snprintf(msg, msg_size, "unknown config key '%s'", key);
            return false;
        }
        if (!ok) {
            snprintf(msg, msg_size, "invalid value for '%s'", key);
            return false;
        }
    }
    return true;
}

static enum MHD_Result handle_config(struct mock_req *req, const char *method)
{
    char msg[256];

    if (strcmp(method, "GET") == 0) {
        struct runtime r = runtime_get();
        return reply_json(req->conn, MHD_HTTP_OK, runtime_json(&r));
    }
    json_t *o = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    if (!json_is_object(o)) {
        json_decref(o);
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, "config body must be a JSON object",
                           NULL, "invalid_json");
    }
    pthread_mutex_lock(&rt_lock);
    struct runtime r = rt;
    bool ok = runtime_apply(o, &r, msg, sizeof(msg));
    if (ok)
        rt = r;
    pthread_mutex_unlock(&rt_lock);
    json_decref(o);
    if (!ok)
        return reply_error(req->conn, MHD_HTTP_BAD_REQUEST, msg, NULL, "invalid_value");
    return reply_json(req->conn, MHD_HTTP_OK, runtime_json(&r));
}

/* ---- request parsing ---- */

/* Code points, not bytes, so non-ASCII prompts count like the spec's "chars". */
static size_t utf8_chars(const char *s, size_t n)
{
    size_t c = 0;

    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xc0) != 0x80;
    return c;
}

static size_t json_str_chars(json_t *v)
{
    return utf8_chars(json_string_value(v), json_string_length(v));
}

static bool is_token_array(json_t *v)
{
    if (!json_is_array(v))
        return false;
    for (size_t i = 0; i < json_array_size(v); i++)
        if (!json_is_integer(json_array_get(v, i)))
            return false;
    return true;
}

/*
 * Sizes a prompt/input: a string, an array of token ids, or an array of
 * strings and token-id arrays. Adds to *chars and *tokens; false if malformed.
 */
static bool measure_text(json_t *v, size_t *chars, size_t *tokens)
{
    if (json_is_string(v)) {
        *chars += json_str_chars(v);
    } else if (is_token_array(v) && json_array_size(v) > 0) {
        *tokens += json_array_size(v);
    } else if (json_is_array(v) && json_array_size(v) > 0) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            json_t *e = json_array_get(v, i);
            if (json_is_string(e))
                *chars += json_str_chars(e);
            else if (is_token_array(e))
                *tokens += json_array_size(e);
            else
                return false;
        }
    } else {
        return false;
    }
    return true;
}

static unsigned prompt_tokens(size_t chars, size_t tokens, size_t messages)
{
    size_t p = (chars + 3) / 4 + tokens + 3 * messages;

    if (p < 1)
        p = 1;
    return p > UINT_MAX / 100 ? UINT_MAX / 100 : (unsigned)p;
}

static unsigned chat_prompt_tokens(json_t *messages)
{
    size_t chars = 0;

    for (size_t i = 0; i < json_array_size(messages); i++) {
        json_t *content = json_object_get(json_array_get(messages, i), "content");
        if (json_is_string(content)) {
            chars += json_str_chars(content);
        } else if (json_is_array(content)) {
            for (size_t j = 0; j < json_array_size(content); j++) {
                json_t *text = json_object_get(json_array_get(content, j), "text");
                if (json_is_string(text))
                    chars += json_str_chars(text);
            }
        }
    }
    return prompt_tokens(chars, 0, json_array_size(messages));
}

/* Why a request is refused: the status and the OpenAI error fields to answer with. */
struct refusal {
    unsigned status;
    const char *param;
    const char *code;
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

/* Validates `root` like an OpenAI server would and fills the answer plan in `req`. */
static bool parse_inference(struct mock_req *req, json_t *root, const struct runtime *cfg,
                            struct refusal *why)
{
    size_t chars = 0, tokens = 0;

    if (!json_is_object(root))
        return refuse(why, MHD_HTTP_BAD_REQUEST, NULL, "invalid_json",
                      "We could not parse the JSON body of your request.");
    json_t *model = json_object_get(root, "model");
    if (!model)
        return refuse(why, MHD_HTTP_BAD_REQUEST, "model", "missing_required_parameter",
                      "you must provide a model parameter");
    if (!json_is_string(model))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "model", "invalid_type", "model must be a string");

    if (req->ep == EP_CHAT) {
        json_t *messages = json_object_get(root, "messages");
        if (!json_is_array(messages))
            return refuse(why, MHD_HTTP_BAD_REQUEST, "messages",
                          messages ? "invalid_type" : "missing_required_parameter",
                          "messages must be an array");
        req->gen.prompt_tokens = chat_prompt_tokens(messages);
    } else {
        const char *field = req->ep == EP_COMPLETIONS ? "prompt" : "input";
        json_t *v = json_object_get(root, field);
        if (!v)
            return refuse(why, MHD_HTTP_BAD_REQUEST, field, "missing_required_parameter",
                          "you must provide %s", field);
        if (!measure_text(v, &chars, &tokens))
            return refuse(why, MHD_HTTP_BAD_REQUEST, field, "invalid_type",
                          "%s must be a string or an array of strings or token ids", field);
        req->gen.prompt_tokens = prompt_tokens(chars, tokens, 0);
    }

    json_t *stream = json_object_get(root, "stream");
    if (stream && !json_is_boolean(stream) && !json_is_null(stream))
        return refuse(why, MHD_HTTP_BAD_REQUEST, "stream", "invalid_type",
                      "stream must be a boolean");
    req->stream = req->ep != EP_EMBEDDINGS && json_is_true(stream);
    json_t *opts = json_object_get(root, "stream_options");
    req->include_usage = json_is_true(json_object_get(opts, "include_usage"));

    /* The newer name wins when a client sends both. */
    const char *cap_name = "max_completion_tokens";
    json_t *cap = json_object_get(root, cap_name);
    if (!cap || json_is_null(cap)) {
        cap_name = "max_tokens";
        cap = json_object_get(root, cap_name);
    }
    unsigned completion = cfg->tokens;
    if (cap && !json_is_null(cap)) {
        if (!json_is_integer(cap) || json_integer_value(cap) < 0)
            return refuse(why, MHD_HTTP_BAD_REQUEST, cap_name, "invalid_value",
                          "%s must be a non-negative integer", cap_name);
        if (json_integer_value(cap) < (json_int_t)completion) {
            completion = (unsigned)json_integer_value(cap);
            req->gen.capped = true;
        }
    }
    req->gen.completion_tokens = completion;

    if (!model_known(json_string_value(model)))
        return refuse(why, MHD_HTTP_NOT_FOUND, "model", "model_not_found",
                      "The model '%.180s' does not exist", json_string_value(model));
    req->model = strdup(json_string_value(model));
    if (!req->model)
        return refuse(why, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL, NULL, "out of memory");
    req->gen.model = req->model;
    req->gen.model_len = strlen(req->model);
    return true;
}

/* FNV-1a over the input's JSON text: the same input always gets the same vector. */
static uint64_t input_seed(json_t *v)
{
    uint64_t h = 0xcbf29ce484222325ull;
    char *s = json_is_string(v) ? NULL : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    const char *p = s ? s : json_string_value(v);
    size_t n = s ? strlen(s) : json_string_length(v);

    for (size_t i = 0; p && i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    free(s);
    return h;
}

static void build_embeddings(struct mock_req *req, json_t *root)
{
    struct buf *b = &req->out;
    json_t *input = json_object_get(root, "input");
    unsigned mult = req->gen.usage_mult;

    buf_adds(b, "{\"object\":\"list\",\"data\":[");
    if (json_is_string(input) || is_token_array(input)) {
        answer_embedding(b, 0, input_seed(input));
    } else {
        for (size_t i = 0; i < json_array_size(input); i++) {
            if (i)
                buf_adds(b, ",");
            answer_embedding(b, (unsigned)i, input_seed(json_array_get(input, i)));
        }
    }
    buf_adds(b, "],\"model\":");
    buf_add_json_str(b, req->gen.model, req->gen.model_len);
    buf_adds(b, ",\"usage\":");
    answer_usage(b, req->gen.prompt_tokens, 0, false, mult);
    buf_adds(b, "}");
}

/* ---- answering ---- */

/*
 * Builds the next stream event into req->out. Returns its size, 0 when the
 * next token is not due yet (the connection is parked only if `may_park`), or
 * an MHD end code, which repeats on every later call.
 */
static ssize_t next_event(struct mock_req *req, bool may_park)
{
    struct buf *b = &req->out;

    buf_reset(b);
    req->out_off = 0;
    switch (req->stage) {
    case STAGE_TOKENS:
        if (req->next_token == req->cut_after) {
            req->stage = STAGE_ABORT;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (req->next_token >= req->gen.completion_tokens) {
            answer_event_finish(b, &req->gen, &req->prefix);
            req->stage = req->include_usage ? STAGE_USAGE : STAGE_DONE;
            break;
        }
        if (req->token_ms && req->next_token > 0 && wake_now_ns() < req->next_due_ns) {
            if (!may_park)
                return 0;
            if (wake_suspend_until(req->conn, req->next_due_ns) == 0)
                return 0;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        answer_event_token(b, &req->gen, &req->prefix, req->next_token);
        req->next_token++;
        /* A fixed grid from the first token, so wake-up lateness does not add up. */
        req->next_due_ns += (uint64_t)req->token_ms * 1000000u;
        break;
    case STAGE_USAGE:
        answer_event_usage(b, &req->gen, &req->prefix);
        req->stage = STAGE_DONE;
        break;
    case STAGE_DONE:
        buf_adds(b, "data: [DONE]\n\n");
        req->stage = STAGE_END;
        break;
    case STAGE_GARBAGE:
        buf_adds(b, "data: {garbage\n\n");
        req->stage = STAGE_END;
        break;
    case STAGE_END:
        return MHD_CONTENT_READER_END_OF_STREAM;
    case STAGE_ABORT:
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    if (b->failed) {
        req->stage = STAGE_ABORT;
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    return (ssize_t)b->len;
}

/*
 * Fills `dst` with as many events as are due, so an unpaced stream goes out in
 * a few large chunks. Parks or ends only when nothing was copied: returning 0
 * is legal only after suspending, and data must go out before the end code.
 */
static ssize_t stream_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct mock_req *req = cls;
    size_t done = 0;

    (void)pos;
    while (done < max) {
        if (req->out_off == req->out.len) {
            ssize_t r = next_event(req, done == 0);
            if (r <= 0)
                return done > 0 ? (ssize_t)done : r;
        }
        size_t n = req->out.len - req->out_off;
        if (n > max - done)
            n = max - done;
        memcpy(dst + done, req->out.data + req->out_off, n);
        req->out_off += n;
        done += n;
    }
    return (ssize_t)done;
}

/* Serves the first cut_at bytes of a body announced at full length, then drops the connection. */
static ssize_t cut_reader(void *cls, uint64_t pos, char *dst, size_t max)
{
    struct mock_req *req = cls;

    if (pos >= req->cut_at)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = req->cut_at - (size_t)pos;
    if (n > max)
        n = max;
    memcpy(dst, req->out.data + pos, n);
    return (ssize_t)n;
}

static enum MHD_Result send_answer(struct mock_req *req)
{
    struct MHD_Response *r;
    const char *ctype = "application/json";

    req->phase = PHASE_SENDING;
    if (req->stream) {
        ctype = "text/event-stream";
        req->next_due_ns = wake_now_ns();
        r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_reader, req,
                                              NULL);
    } else if (req->fault == FAULT_CLOSE) {
        req->cut_at = req->out.len / 2;
        r = MHD_create_response_from_callback(req->out.len, STREAM_BLOCK, cut_reader, req, NULL);
    } else {
        return reply_buf(req->conn, MHD_HTTP_OK, ctype, &req->out, NULL, NULL);
    }
    if (!r)
        return MHD_NO;
    enum MHD_Result ret = MHD_NO;
    if (add_headers(r, ctype) &&
        (!req->stream ||
         MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") == MHD_YES))
        ret = MHD_queue_response(req->conn, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ret;
}

static void make_id(struct mock_req *req, const char *prefix)
{
    uint64_t a = rng_next(), b = rng_next();

    snprintf(req->id, sizeof(req->id), "%s%016llx%08llx", prefix, (unsigned long long)a,
             (unsigned long long)(b >> 32));
}

/* Prepares what send_answer() will send: the whole body, or the stream's chunk prefix. */
static bool plan_answer(struct mock_req *req, json_t *root)
{
    req->gen.kind = req->ep == EP_CHAT ? ANSWER_CHAT : ANSWER_COMPLETION;
    req->gen.created = (long long)time(NULL);
    req->gen.usage_mult = req->fault == FAULT_INFLATE ? 100 : 1;
    if (req->ep != EP_EMBEDDINGS)
        make_id(req, req->ep == EP_CHAT ? "chatcmpl-" : "cmpl-");
    req->gen.id = req->id;

    if (req->stream) {
        answer_chunk_prefix(&req->prefix, &req->gen);
        req->stage = req->fault == FAULT_INVALID_JSON ? STAGE_GARBAGE : STAGE_TOKENS;
        req->cut_after = UINT_MAX;
        if (req->fault == FAULT_CLOSE) {
            unsigned c = req->gen.completion_tokens;
            req->cut_after = c >= 2 ? c / 2 : c;
        }
        return !req->prefix.failed;
    }
    if (req->fault == FAULT_INVALID_JSON)
        buf_adds(&req->out, "{\"object\": this is not json");
    else if (req->ep == EP_EMBEDDINGS)
        build_embeddings(req, root);
    else
        answer_body(&req->out, &req->gen);
    return !req->out.failed;
}

static enum MHD_Result handle_inference(struct mock_req *req)
{
    struct refusal why;
    struct runtime cfg = runtime_get();
    json_t *root = req->body.len ? json_loadb(req->body.data, req->body.len, 0, NULL) : NULL;
    enum MHD_Result ret;

    if (!parse_inference(req, root, &cfg, &why)) {
        ret = reply_error(req->conn, why.status, why.text, why.param, why.code);
        goto out;
    }
    req->fault = cfg.fault;
    if (req->fault != FAULT_NONE && cfg.fault_rate < 1.0 && !(rng_unit() < cfg.fault_rate))
        req->fault = FAULT_NONE;
    req->token_ms = cfg.token_ms;

    char msg[300];
    switch (req->fault) {
    case FAULT_500:
        snprintf(msg, sizeof(msg), "mocknode %s: injected failure", node_name);
        ret = reply_error_hdr(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, msg, "server_error", NULL,
                              NULL, NULL, NULL);
        goto out;
    case FAULT_429: {
        char secs[16];
        snprintf(msg, sizeof(msg), "mocknode %s: rate limit reached", node_name);
        snprintf(secs, sizeof(secs), "%u", cfg.retry_after_s);
        ret = reply_error_hdr(req->conn, MHD_HTTP_TOO_MANY_REQUESTS, msg, "requests", NULL,
                              "rate_limit_exceeded", MHD_HTTP_HEADER_RETRY_AFTER, secs);
        goto out;
    }
    case FAULT_HANG: {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        req->phase = PHASE_HANG;
        ret =
            ci && wake_suspend_hang(&req->hang, req->conn, ci->connect_fd) == 0 ? MHD_YES : MHD_NO;
        goto out;
    }
    default:
        break;
    }

    if (!plan_answer(req, root)) {
        ret = reply_error_hdr(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "answer too large",
                              "server_error", NULL, NULL, NULL, NULL);
        goto out;
    }
    if (cfg.ttfb_ms == 0) {
        ret = send_answer(req);
        goto out;
    }
    req->phase = PHASE_DELAY;
    uint64_t due = wake_now_ns() + (uint64_t)cfg.ttfb_ms * 1000000u;
    ret = wake_suspend_until(req->conn, due) == 0 ? MHD_YES : MHD_NO;
out:
    json_decref(root);
    return ret;
}

static enum MHD_Result handle_model(struct MHD_Connection *conn, const char *url)
{
    const char *id = url + strlen("/v1/models/");

    if (!model_known(id)) {
        char msg[256];
        snprintf(msg, sizeof(msg), "The model '%.180s' does not exist", id);
        return reply_error(conn, MHD_HTTP_NOT_FOUND, msg, "model", "model_not_found");
    }
    return reply_json(conn, MHD_HTTP_OK,
                      json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model", "created",
                                (json_int_t)started_at, "owned_by", node_name));
}

/* ---- dispatch ---- */

static enum ep classify(const char *url)
{
    if (strncmp(url, "/v1/", 4) == 0) {
        if (strcmp(url, "/v1/chat/completions") == 0)
            return EP_CHAT;
        if (strcmp(url, "/v1/completions") == 0)
            return EP_COMPLETIONS;
        if (strcmp(url, "/v1/embeddings") == 0)
            return EP_EMBEDDINGS;
        if (strcmp(url, "/v1/models") == 0)
            return EP_MODELS;
        if (strncmp(url, "/v1/models/", 11) == 0 && url[11] != '\0')
            return EP_MODEL;
        return EP_V1_OTHER;
    }
    if (strcmp(url, "/healthz") == 0)
        return EP_HEALTHZ;
    if (strcmp(url, "/_mock/config") == 0)
        return EP_CONFIG;
    if (strcmp(url, "/_mock/stats") == 0)
        return EP_STATS;
    if (strcmp(url, "/_mock/reset") == 0)
        return EP_RESET;
    return EP_OTHER;
}

/* The Allow header value for an endpoint; NULL for unknown paths. */
static const char *allowed_methods(enum ep ep)
{
    switch (ep) {
    case EP_CHAT:
    case EP_COMPLETIONS:
    case EP_EMBEDDINGS:
    case EP_RESET:
        return "POST";
    case EP_MODELS:
    case EP_MODEL:
    case EP_HEALTHZ:
    case EP_STATS:
        return "GET";
    case EP_CONFIG:
        return "GET, POST";
    default:
        return NULL;
    }
}

static bool method_allowed(const char *allow, const char *method)
{
    size_t n = strlen(method);

    for (const char *p = allow; (p = strstr(p, method)); p += n)
        if ((p == allow || p[-1] == ' ') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

/* Runs once the whole request (or an oversized announcement) is in. */
static enum MHD_Result dispatch(struct mock_req *req, const char *method, const char *url)
{
    struct MHD_Connection *conn = req->conn;

    req->phase = PHASE_SENDING;
    if (req->ep < V1_EP_COUNT)
        count_request(req, method, url);
    if (req->too_large)
        return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large", NULL,
                           "request_too_large");
    const char *allow = allowed_methods(req->ep);
    if (!allow)
        return reply_error(conn, MHD_HTTP_NOT_FOUND, "unknown url", NULL, "unknown_url");
    if (!method_allowed(allow, method))
        return reply_error_hdr(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
                               "invalid_request_error", NULL, "method_not_allowed",
                               MHD_HTTP_HEADER_ALLOW, allow);
    switch (req->ep) {
    case EP_CHAT:
    case EP_COMPLETIONS:
    case EP_EMBEDDINGS:
        return handle_inference(req);
    case EP_MODELS:
        return reply_cached(conn, models_resp);
    case EP_MODEL:
        return handle_model(conn, url);
    case EP_HEALTHZ:
        return reply_cached(conn, healthz_resp);
    case EP_CONFIG:
        return handle_config(req, method);
    case EP_STATS:
        return handle_stats(conn);
    case EP_RESET:
        return handle_reset(conn);
    default:
        return MHD_NO;
    }
}

static bool content_length_too_big(struct MHD_Connection *conn)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    char *end;

    if (!cl)
        return false;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    return end != cl && (errno == ERANGE || n > MAX_BODY);
}

static void req_free(struct mock_req *req)
{
    buf_free(&req->body);
    buf_free(&req->out);
    buf_free(&req->prefix);
    free(req->model);
    free(req);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    struct mock_req *req = *con_cls;

    (void)cls;
    (void)version;
    if (!req) {
        req = calloc(1, sizeof(*req));
        if (!req)
            return MHD_NO;
        req->conn = conn;
        req->ep = classify(url);
        req->phase = PHASE_BODY;
        buf_init(&req->body, MAX_BODY);
        buf_init(&req->out, MAX_ANSWER);
        buf_init(&req->prefix, 1 << 20);
        *con_cls = req;
        /* Refuse from the announced length, before reading a byte of the body. */
        if (content_length_too_big(conn)) {
            req->too_large = true;
            return dispatch(req, method, url);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (req->phase == PHASE_BODY && !req->too_large) {
            buf_add(&req->body, upload_data, *upload_data_size);
            req->too_large = req->body.failed;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    switch (req->phase) {
    case PHASE_BODY:
        return dispatch(req, method, url);
    case PHASE_DELAY:
        return send_answer(req);
    case PHASE_HANG:
        /* Resumed because the client left or the node stops: drop the connection. */
        return MHD_NO;
    case PHASE_SENDING:
        break;
    }
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    if (*con_cls) {
        req_free(*con_cls);
        *con_cls = NULL;
    }
}

/* ---- startup ---- */

static void die_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die_usage(const char *fmt, ...)
{
    va_list ap;

    fputs("mocknode: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputs("\ntry 'mocknode --help'\n", stderr);
    exit(2);
}

static void usage(FILE *f)
{
    fputs("usage: mocknode --port P --name NAME --models M1,M2 [--host 127.0.0.1]\n"
          "                [--ttfb-ms 0] [--token-ms 0] [--tokens 16] [--fault MODE]\n"
          "                [--fault-rate 1.0] [--retry-after 1] [--threads 2] [--quiet]\n"
          "A simulated OpenAI-compatible inference node.\n"
          "fault modes: none 500 429 hang close-mid-stream invalid-json inflate-usage\n"
          "--port 0 binds an ephemeral port; the listening line shows the real one.\n",
          f);
}

static unsigned parse_uint(const char *opt, const char *s, unsigned max)
{
    char *end;

    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end != '\0' || errno == ERANGE || v > max)
        die_usage("%s wants an integer from 0 to %u, got '%s'", opt, max, s);
    return (unsigned)v;
}

static void parse_models(const char *list)
{
    char *copy = strdup(list);

    if (!copy)
        die_usage("out of memory");
    size_t n = 1;
    for (const char *p = copy; *p; p++)
        n += *p == ',';
    models = calloc(n, sizeof(*models));
    if (!models)
        die_usage("out of memory");
    char *save = copy;
    for (size_t i = 0; i < n; i++) {
        char *comma = strchr(save, ',');
        if (comma)
            *comma = '\0';
        if (*save == '\0')
            die_usage("--models has an empty name in '%s'", list);
        models[model_count++] = save;
        save = comma ? comma + 1 : save;
    }
}

struct options {
    const char *host;
    unsigned port;
    unsigned threads;
};

static struct options parse_args(int argc, char **argv)
{
    enum { O_HOST = 256, O_TTFB, O_TOKEN_MS, O_TOKENS, O_FAULT, O_RATE, O_RETRY, O_THREADS };
    static const struct option longopts[] = {
        {"port", required_argument, NULL, 'p'},
        {"host", required_argument, NULL, O_HOST},
        {"name", required_argument, NULL, 'n'},
        {"models", required_argument, NULL, 'm'},
        {"ttfb-ms", required_argument, NULL, O_TTFB},
        {"token-ms", required_argument, NULL, O_TOKEN_MS},
        {"tokens", required_argument, NULL, O_TOKENS},
        {"fault", required_argument, NULL, O_FAULT},
        {"fault-rate", required_argument, NULL, O_RATE},
        {"retry-after", required_argument, NULL, O_RETRY},
        {"threads", required_argument, NULL, O_THREADS},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct options o = {.host = "127.0.0.1", .threads = 2};
    bool have_port = false;
    const char *model_list = NULL;
    int c, f;
    char *end;

    opterr = 0;
    while ((c = getopt_long(argc, argv, ":p:n:m:qh", longopts, NULL)) != -1) {
        switch (c) {
        case 'p':
            o.port = parse_uint("--port", optarg, 65535);
            have_port = true;
            break;
        case O_HOST:
            o.host = optarg;
            break;
        case 'n':
            node_name = optarg;
            break;
        case 'm':
            model_list = optarg;
            break;
        case O_TTFB:
            rt.ttfb_ms = parse_uint("--ttfb-ms", optarg, MAX_DELAY_MS);
            break;
        case O_TOKEN_MS:
            rt.token_ms = parse_uint("--token-ms", optarg, MAX_DELAY_MS);
            break;
        case O_TOKENS:
            rt.tokens = parse_uint("--tokens", optarg, MAX_TOKENS);
            break;
        case O_FAULT:
            f = fault_parse(optarg);
            if (f < 0)
                die_usage("unknown --fault '%s' (none, 500, 429, hang, close-mid-stream, "
                          "invalid-json, inflate-usage)",
                          optarg);
            rt.fault = (enum fault)f;
            break;
        case O_RATE:
            errno = 0;
            rt.fault_rate = strtod(optarg, &end);
            if (end == optarg || *end != '\0' || errno == ERANGE || !isfinite(rt.fault_rate) ||
                rt.fault_rate < 0.0 || rt.fault_rate > 1.0)
                die_usage("--fault-rate wants a number from 0 to 1, got '%s'", optarg);
            break;
        case O_RETRY:
            rt.retry_after_s = parse_uint("--retry-after", optarg, MAX_RETRY_AFTER);
            break;
        case O_THREADS:
            o.threads = parse_uint("--threads", optarg, MAX_THREADS);
            if (o.threads == 0)
                die_usage("--threads must be at least 1");
            break;
        case 'q':
            quiet = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        case ':':
            die_usage("%s needs a value", argv[optind - 1]);
        default:
            die_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind < argc)
        die_usage("unexpected argument '%s'", argv[optind]);
    if (!have_port)
        die_usage("--port is required");
    if (!node_name || !*node_name)
        die_usage("--name is required");
    if (!model_list)
        die_usage("--models is required");
    parse_models(model_list);
    return o;
}

static struct MHD_Response *static_json(json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    struct MHD_Response *r = NULL;

    json_decref(v);
    if (text)
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_COPY);
    free(text);
    if (r && !add_headers(r, "application/json")) {
        MHD_destroy_response(r);
        r = NULL;
    }
    return r;
}

static int build_static_responses(void)
{
    json_t *data = json_array();

    for (size_t i = 0; i < model_count; i++)
        json_array_append_new(data,
                              json_pack("{s:s, s:s, s:I, s:s}", "id", models[i], "object", "model",
                                        "created", (json_int_t)started_at, "owned_by", node_name));
    models_resp = static_json(json_pack("{s:s, s:o}", "object", "list", "data", data));
    healthz_resp = static_json(json_pack("{s:s}", "status", "ok"));
    return models_resp && healthz_resp ? 0 : -1;
}

/* Lets the node hold CONNECTION_LIMIT sockets even where the soft fd limit is 1024. */
static void raise_fd_limit(void)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
        return;
    rlim_t want = CONNECTION_LIMIT + 256;
    if (rl.rlim_cur >= want)
        return;
    rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fatal(const char *fmt, ...)
{
    va_list ap;

    fputs("mocknode: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

int main(int argc, char **argv)
{
    struct options o = parse_args(argc, argv);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *ai;
    char port_str[8];
    sigset_t sigs;
    int sig;

    snprintf(port_str, sizeof(port_str), "%u", o.port);
    int rc = getaddrinfo(o.host, port_str, &hints, &ai);
    if (rc != 0)
        die_usage("cannot resolve --host '%s': %s", o.host, gai_strerror(rc));

    started_at = (long long)time(NULL);
    /* jansson seeds its hash function lazily; do it before threads can race on it. */
    json_object_seed(0);
    if (answer_init(node_name) == -1 || build_static_responses() == -1)
        fatal("cannot build responses (--name and --models must be UTF-8)");
    raise_fd_limit();
    signal(SIGPIPE, SIG_IGN);
    /* Block before any thread starts so only sigwait() below sees these. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);

    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (!quiet)
        flags |= MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, (uint16_t)o.port, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_THREAD_POOL_SIZE, o.threads, MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 4096u, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!d)
        fatal("cannot listen on %s:%u", o.host, o.port);
    if (wake_start() == -1)
        fatal("cannot start the wake thread: %s", strerror(errno));

    const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    unsigned port = di && di->port ? di->port : o.port;
    bool v6 = strchr(o.host, ':') != NULL;
    printf("mocknode %s listening on %s%s%s:%u\n", node_name, v6 ? "[" : "", o.host, v6 ? "]" : "",
           port);
    fflush(stdout);

    do {
        if (sigwait(&sigs, &sig) != 0)
            sig = 0;
    } while (sig != SIGINT && sig != SIGTERM);

    /* MHD must not be stopped with suspended connections, so release them all first. */
    wake_stop();
    MHD_stop_daemon(d);
    MHD_destroy_response(models_resp);
    MHD_destroy_response(healthz_resp);
    pthread_mutex_lock(&last_lock);
    free(last);
    last = NULL;
    pthread_mutex_unlock(&last_lock);
    if (!quiet)
        fprintf(stderr, "mocknode %s stopped\n", node_name);
    return 0;
}

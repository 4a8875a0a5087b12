/* The OpenAI-compatible surface: which endpoint a method and path name, and what a valid
 * request body looks like. No I/O; thread-safe. */
#ifndef TOLLGATE_OPENAI_H
#define TOLLGATE_OPENAI_H

#include "metrics/metrics.h"
#include "openai/answer.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

enum openai_route {
    OPENAI_CHAT = 0,
    OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS,
    OPENAI_RESPONSES, /* POST /v1/responses (openai/responses.h) */
    OPENAI_RESPONSE,  /* GET, DELETE /v1/responses/{id}[/input_items]: the node that holds it */
    /* Metered pass-through (openai/media.h): /v1/images/generations, /v1/audio/speech and
     * /v1/moderations. */
    OPENAI_IMAGES,
    OPENAI_SPEECH,
    OPENAI_MODERATIONS,
    OPENAI_TRANSCRIPTIONS, /* multipart uploads (openai/multipart.h) */
    OPENAI_TRANSLATIONS,
    OPENAI_MODELS,
    OPENAI_MODEL, /* /v1/models/{id} */
    OPENAI_HEALTHZ,
    OPENAI_READYZ,
    OPENAI_METRICS,
};

struct openai_request;

/* What an endpoint's answers are billed by: tokens at the model's token prices, or units at
 * its unit prices (config_model.usd_per_image, usd_per_mchar). */
enum openai_meter {
    OPENAI_METER_TOKENS = 0,
    OPENAI_METER_IMAGES,        /* images in the answer, at most `n` */
    OPENAI_METER_CHARACTERS,    /* characters of the input spoken */
    OPENAI_METER_AUDIO_SECONDS, /* seconds of audio transcribed or translated */
};

/* Checks a parsed body for an endpoint and fills *out (see openai_validate). */
typedef int (*openai_validate_fn)(enum openai_route route, json_t *body, struct openai_request *out,
                                  const char **param, char *msg, size_t msg_len);

/* One endpoint of the surface. The inference endpoints (upstream_path set) also say how the
 * pipeline treats their exchange, so a new API is a row here and its wire format in a file of
 * its own, not a copy of the pipeline. */
struct openai_endpoint {
    enum openai_route route;
    const char *path;          /* exact path, or prefix for OPENAI_MODEL */
    const char *method;        /* the one method it answers */
    const char *upstream_path; /* appended to a backend's base URL; NULL = local */
    bool can_stream;
    bool needs_auth;
    enum metrics_route metric;
    /* ---- inference endpoints only ---- */
    openai_validate_fn validate; /* the body's checks, estimates included */
    enum answer_kind answer;     /* how answers and stream events are scanned (answer.h) */
    bool generates;              /* answers carry generated output: billed output tokens, and a 2xx
                                    answer without any is broken (false for embeddings) */
    const char *chunk_object;    /* "object" of the stream chunks the gateway writes itself */
    enum openai_meter meter;     /* what it is billed by */
    bool multipart;              /* a multipart/form-data upload, spooled (gateway/upload.c) */
};

/* Finds the endpoint for a request. Returns 0 and sets *ep, or TG_ERR_UNKNOWN_URL, or
 * TG_ERR_METHOD with *ep set to the endpoint (for the Allow header). */
int openai_match(const char *method, const char *url, const struct openai_endpoint **ep);

/* ---- parsing a body ------------------------------------------------------------------------ */

/* A parsed body costs memory per JSON value (tens of bytes each, whatever the value's own
 * size), so the count of values is capped as well as the bytes: one value per this many bytes
 * of max_body_bytes (8 MiB: 524,288 values, room for 300k pre-tokenised ids), and never
 * fewer than OPENAI_BODY_MIN_VALUES. */
#define OPENAI_BODY_BYTES_PER_VALUE 16
#define OPENAI_BODY_MIN_VALUES 4096
/* Arrays and objects nested deeper than this are refused (JSON schemas need a few dozen). */
#define OPENAI_BODY_MAX_DEPTH 128

/* The most JSON values a body may hold under a max_body_bytes cap. */
size_t openai_body_max_values(size_t max_body_bytes);

/* Parses a request body into a tree (jansson; its allocator is whatever the caller made
 * current, see base/arena.h). First a cheap scan (yajl, nothing built) refuses a body with
 * more than openai_body_max_values(max_body_bytes) values, TG_ERR_TOO_LARGE, or nested deeper
 * than OPENAI_BODY_MAX_DEPTH, TG_ERR_INVALID_JSON; so the memory a body can cost is bounded
 * by the config. Then an object with the same key twice, at any depth, is refused
 * (TG_ERR_INVALID_JSON with param the key's path, e.g. "messages.[0].role"): a backend may
 * read the other value than the gateway did (the model, a cache key's parts). Returns 0
 * with *out set (the caller's to json_decref), or a tg_error with a message in msg and a
 * param in param ("" when none). */
int openai_parse_body(const char *data, size_t len, size_t max_body_bytes, json_t **out,
                      char *param, size_t param_len, char *msg, size_t msg_len);

/* ---- validating a body --------------------------------------------------------------------- */

/* The largest max_tokens taken at its word in estimates (routing, rate limits, budget
 * reservations): no model writes more, and max_tokens × n must never wrap. */
#define OPENAI_MAX_TOKENS_ESTIMATE (1LL << 20)
/* The largest `n` accepted. */
#define OPENAI_MAX_CHOICES 128

/* What the gateway needs to know of a request body. Pointers point into the JSON. */
struct openai_request {
    const char *model;
    bool stream;
    bool include_usage;       /* stream_options.include_usage */
    long long max_tokens;     /* max_completion_tokens or max_tokens; -1 when absent */
    size_t prompt_tokens_est; /* rough estimate from the text */
    size_t prompt_bytes;      /* bytes of input text (messages, tools, prompt, input) */
    size_t n_items;           /* messages, prompts or inputs */
    bool has_media;           /* non-text input (images, audio): tokens not bounded by bytes */
    unsigned n_choices;       /* `n`, 1 to OPENAI_MAX_CHOICES */
    size_t units;             /* metered endpoints: images asked for, characters to speak,
                                 the most seconds of audio an upload can hold */
    size_t upload_bytes;      /* an upload's file bytes */
};

/* Validates a parsed body for a route. Returns 0, or a tg_error with *param naming the
 * offending field (or NULL) and a message in msg. */
int openai_validate(enum openai_route route, json_t *body, struct openai_request *out,
                    const char **param, char *msg, size_t msg_len);

/* The most completion tokens a request allows over all its choices, max_tokens × n,
 * saturated at LLONG_MAX (never wraps, never negative); -1 when it sets no max. */
long long openai_completion_cap(const struct openai_request *req);

/* The completion tokens to expect over all choices, for estimates: max_tokens (at most
 * OPENAI_MAX_TOKENS_ESTIMATE), or default_tokens when the request sets none, × n; 0 for
 * embeddings. At most OPENAI_MAX_TOKENS_ESTIMATE × 128. */
size_t openai_output_estimate(enum openai_route route, const struct openai_request *req,
                              size_t default_tokens);

/* Rough token count of a request's input: about four bytes a token over message contents,
 * names, tool calls and tool definitions, plus a few tokens per chat message for the role
 * and framing. Fills prompt_tokens_est, prompt_bytes, n_items and has_media of *out. */
void openai_estimate_prompt(enum openai_route route, json_t *body, struct openai_request *out);

#endif

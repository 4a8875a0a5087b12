/* The OpenAI-compatible surface: which endpoint a method and path name, and what a valid
 * request body looks like. No I/O; thread-safe. */
#ifndef TOLLGATE_OPENAI_H
#define TOLLGATE_OPENAI_H

#include "metrics/metrics.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

enum openai_route {
    OPENAI_CHAT = 0,
    OPENAI_COMPLETIONS,
    OPENAI_EMBEDDINGS,
    OPENAI_MODELS,
    OPENAI_MODEL, /* /v1/models/{id} */
    OPENAI_HEALTHZ,
    OPENAI_READYZ,
    OPENAI_METRICS,
};

struct openai_endpoint {
    enum openai_route route;
    const char *path;          /* exact path, or prefix for OPENAI_MODEL */
    const char *method;        /* the one method it answers */
    const char *upstream_path; /* appended to a backend's base URL; NULL = local */
    bool can_stream;
    bool needs_auth;
    enum metrics_route metric;
};

/* Finds the endpoint for a request. Returns 0 and sets *ep, or TG_ERR_UNKNOWN_URL, or
 * TG_ERR_METHOD with *ep set to the endpoint (for the Allow header). */
int openai_match(const char *method, const char *url, const struct openai_endpoint **ep);

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
    unsigned n_choices;       /* `n`, at least 1 */
};

/* Validates a parsed body for a route. Returns 0, or a tg_error with *param naming the
 * offending field (or NULL) and a message in msg. */
int openai_validate(enum openai_route route, json_t *body, struct openai_request *out,
                    const char **param, char *msg, size_t msg_len);

/* Rough token count of a request's input: about four bytes a token over message contents,
 * names, tool calls and tool definitions, plus a few tokens per chat message for the role
 * and framing. Fills prompt_tokens_est, prompt_bytes, n_items and has_media of *out. */
void openai_estimate_prompt(enum openai_route route, json_t *body, struct openai_request *out);

#endif

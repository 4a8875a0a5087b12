/* Internal error codes and their one mapping to HTTP status and OpenAI's error shape.
 *
 * Functions across the gateway return 0 or a negative `enum tg_error`; the request layer
 * turns one into a response with error_status() and error_body(). Thread-safe: pure. */
#ifndef TOLLGATE_ERROR_H
#define TOLLGATE_ERROR_H

#include <stddef.h>

enum tg_error {
    TG_OK = 0,
    TG_ERR_NOMEM = -1,
    TG_ERR_INTERNAL = -2,
    TG_ERR_INVALID_JSON = -3,          /* 400 body is not a JSON object */
    TG_ERR_MISSING_PARAM = -4,         /* 400 a required field is absent */
    TG_ERR_INVALID_TYPE = -5,          /* 400 a field has the wrong type */
    TG_ERR_INVALID_VALUE = -6,         /* 400 a field has a bad value */
    TG_ERR_AUTH = -7,                  /* 401 no or unknown API key */
    TG_ERR_FORBIDDEN = -8,             /* 403 */
    TG_ERR_UNKNOWN_URL = -9,           /* 404 no such endpoint */
    TG_ERR_MODEL_NOT_FOUND = -10,      /* 404 no backend serves the model */
    TG_ERR_METHOD = -11,               /* 405 */
    TG_ERR_TOO_LARGE = -12,            /* 413 body over max_body_bytes */
    TG_ERR_RATE_LIMITED = -13,         /* 429 */
    TG_ERR_BACKEND_UNREACHABLE = -14,  /* 502 connect failed / connection refused */
    TG_ERR_BAD_BACKEND_RESPONSE = -15, /* 502 truncated, malformed, oversized, 5xx */
    TG_ERR_NO_BACKEND = -16,           /* 503 no healthy backend */
    TG_ERR_SHUTTING_DOWN = -17,        /* 503 the gateway is draining */
    TG_ERR_BACKEND_TIMEOUT = -18,      /* 504 */
    TG_ERR_STREAM = -19,               /* a stream broke after it started (SSE error event) */
    TG_ERR_PRICE_CEILING = -20,        /* 400 nothing under the caller's max price */
    TG_ERR_BACKEND_RATE_LIMITED = -21, /* 503 every backend tried answered 429 */
    TG_ERR_MODEL_NOT_ALLOWED = -22,    /* 403 the key may not use the model */
    TG_ERR_INSUFFICIENT_QUOTA = -23,   /* 429 the key's budget is spent */
    TG_ERR_KEY_UNAVAILABLE = -24,      /* 503 the key cannot be checked now (Redis is out) */
    TG_ERR_CAPABILITY = -30,           /* 400 no model serving it supports what it uses */
    TG_ERR_CONTEXT_LENGTH = -31,       /* 400 the prompt is longer than any model's context */
    TG_ERR_BACKEND_UNTRUSTED = -32,    /* 502 as unreachable: its TLS certificate did not verify */
};

/* HTTP status for an error (500 for unknown codes). */
unsigned error_status(enum tg_error err);
/* OpenAI `type` and `code` strings for an error; code may be NULL. */
const char *error_type(enum tg_error err);
const char *error_code(enum tg_error err);

/* The JSON body {"error":{"message","type","param","code"}}, malloc'd, NUL-terminated.
 * `param` may be NULL; `code` overrides error_code() when not NULL. Returns NULL on OOM. */
char *error_body(enum tg_error err, const char *message, const char *param, const char *code,
                 size_t *len);

#endif

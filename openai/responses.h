/* The Responses API's wire format (POST /v1/responses): what a valid request body looks like,
 * what it is estimated to cost, and the rules answer_scan (answer.h) follows to read a whole
 * response object or one of its stream events. No I/O; thread-safe.
 *
 * A whole answer is a response object: "output" items (messages whose "content" parts hold
 * "text", function calls with "name" and "arguments", reasoning "summary" parts), "status",
 * and "usage" {input_tokens, input_tokens_details.cached_tokens, output_tokens}. A stream is
 * typed SSE events, each a JSON object with a "type": "response.created" (the response, its
 * "id"), "response.output_text.delta" (a "delta" of text), ..., and one terminal event,
 * "response.completed" or "response.incomplete" (the whole response, usage included) or
 * "response.failed"; an "error" event reports a failure. */
#ifndef TOLLGATE_RESPONSES_H
#define TOLLGATE_RESPONSES_H

#include "openai/answer.h"
#include "openai/openai.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* The longest response id the gateway keeps track of (OpenAI's are about 50 bytes). */
#define RESPONSES_ID_MAX 120

/* openai_validate_fn for OPENAI_RESPONSES: model; input (a string, or an array of items),
 * required unless previous_response_id or a prompt template names what to answer;
 * instructions (a string); max_output_tokens (an integer >= 0, kept as max_tokens); stream
 * (a boolean); previous_response_id (a response id: letters, digits, '_' and '-'). Fills the
 * estimates like openai_validate. A stream's usage always comes in its terminal event, so
 * include_usage is set. */
int responses_validate(enum openai_route route, json_t *body, struct openai_request *out,
                       const char **param, char *msg, size_t msg_len);

/* Whether id is a well-formed response id (non-empty, at most RESPONSES_ID_MAX bytes of
 * letters, digits, '_' and '-'): safe in a URL path and a Redis key as it is. */
bool responses_id_ok(const char *id, size_t len);

/* The request's previous_response_id, or NULL (validated by responses_validate). */
const char *responses_previous_id(json_t *body);

/* ---- the scanner's rules (called by answer.c for ANSWER_KIND_RESPONSES) -------------------- */

/* A container opens at s->depth (before it is pushed) / closes (before it is popped). */
void responses_scan_open(struct answer_scan *s, bool is_map);
void responses_scan_close(struct answer_scan *s);
void responses_scan_string(struct answer_scan *s, const unsigned char *str, size_t len);
void responses_scan_integer(struct answer_scan *s, long long v);

/* What kind of event a scanned stream event was. */
enum responses_event {
    RESPONSES_EVENT_OTHER = 0,
    RESPONSES_EVENT_CREATED, /* response.created: the response's id is known */
    RESPONSES_EVENT_DONE,    /* response.completed or response.incomplete: usage, the end */
    RESPONSES_EVENT_FAILED,  /* response.failed or an "error" event */
};
enum responses_event responses_event_kind(const struct answer_scan *s);

#endif

/*
 * responses: the Responses API - POST /v1/responses (whole and streamed as
 * typed SSE events), GET and DELETE /v1/responses/{id} and GET
 * /v1/responses/{id}/input_items.
 *
 * Each node keeps the responses it made (a bounded store: the oldest goes
 * first), so a previous_response_id or a GET/DELETE sent to another node fails
 * there with OpenAI's errors, as it would on a real node. The faults apply like
 * on chat: 500, 429 and hang answer at once; close-mid-stream cuts the stream
 * (or the body) halfway; invalid-json sends garbage; inflate-usage multiplies
 * the usage by 100. Runs on the MHD thread of the request's connection; the
 * store is behind one lock.
 */
#ifndef MOCKNODE_RESPONSES_H
#define MOCKNODE_RESPONSES_H

#include <microhttpd.h>

struct mock_req;

/* EP_RESPONSES, once the body is in. With a ttfb the request is left in
 * PHASE_DELAY and the caller must call responses_send() on the resume. */
enum MHD_Result responses_reply(struct mock_req *req);

/* Sends the planned answer (after the ttfb). */
enum MHD_Result responses_send(struct mock_req *req);

/* EP_RESPONSE_ID: GET or DELETE a stored response, or its input items. */
enum MHD_Result responses_by_id(struct mock_req *req, const char *method, const char *url);

/* Frees what the request planned. */
void responses_free(struct mock_req *req);

#endif

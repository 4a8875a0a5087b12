/*
 * inference: the three POST inference endpoints - chat completions,
 * completions and embeddings.
 *
 * Validates the body like an OpenAI server would, draws the request's fault,
 * then answers at once (an error or a fault that replaces the answer), parks
 * the connection for the ttfb, or hands the planned answer to send.c. Runs on
 * the MHD thread of the request's connection; shared state is only read
 * (node.h) or snapshotted (runtime.h).
 */
#ifndef MOCKNODE_INFERENCE_H
#define MOCKNODE_INFERENCE_H

#include <microhttpd.h>

struct mock_req;

/*
 * Answers `req` (EP_CHAT, EP_COMPLETIONS or EP_EMBEDDINGS) once its body is
 * in. With a ttfb the request is left in PHASE_DELAY and the caller must call
 * send_answer() when MHD calls back after the resume.
 */
enum MHD_Result inference_reply(struct mock_req *req);

#endif

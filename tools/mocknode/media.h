/*
 * media: the metered endpoints - POST /v1/images/generations (n images, as
 * b64_json or url), /v1/audio/speech (audio bytes, 8 per input character,
 * Content-Type audio/mpeg) and /v1/moderations (one result per input).
 *
 * Validated like OpenAI; the faults 500, 429 and hang answer at once, and
 * inflate-usage makes an image answer hold three times the images asked for.
 * Runs on the MHD thread of the request's connection; no shared state.
 */
#ifndef MOCKNODE_MEDIA_H
#define MOCKNODE_MEDIA_H

#include <microhttpd.h>

struct mock_req;

/* Answers EP_IMAGES, EP_SPEECH or EP_MODERATIONS once the body is in. */
enum MHD_Result media_reply(struct mock_req *req);

#endif

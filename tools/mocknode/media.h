/*
 * media: the metered endpoints - POST /v1/images/generations (n images, as
 * b64_json or url), /v1/audio/speech (audio bytes, 8 per input character,
 * Content-Type audio/mpeg), /v1/moderations (one result per input) and the multipart
 * uploads /v1/audio/transcriptions and /v1/audio/translations (a fixed transcript; the file
 * heard as 16,000 bytes a second, reported as usage {"type":"duration","seconds":S}, or as
 * tokens for a model named like gpt-4o-transcribe; json, verbose_json, text, srt, vtt).
 *
 * Validated like OpenAI; the faults 500, 429 and hang answer at once, and
 * inflate-usage makes an image answer hold three times the images asked for, and a
 * transcription report 1,000 times the seconds its file holds.
 * Runs on the MHD thread of the request's connection; no shared state.
 */
#ifndef MOCKNODE_MEDIA_H
#define MOCKNODE_MEDIA_H

#include <microhttpd.h>

struct mock_req;

/* Answers EP_IMAGES, EP_SPEECH, EP_MODERATIONS, EP_TRANSCRIPTIONS or EP_TRANSLATIONS once
 * the body is in. */
enum MHD_Result media_reply(struct mock_req *req);

#endif

/* The metered pass-through endpoints: POST /v1/images/generations, /v1/audio/speech and
 * /v1/moderations. The gateway checks what it needs to route and bill (the model, what is
 * asked for) and passes the rest through to a node that lists the model. No I/O;
 * thread-safe. */
#ifndef TOLLGATE_MEDIA_H
#define TOLLGATE_MEDIA_H

#include "openai/openai.h"

#include <jansson.h>

/* The most images one request may ask for (OpenAI's own limit). */
#define MEDIA_MAX_IMAGES 10
/* The most characters one speech request may carry (OpenAI's own limit). */
#define MEDIA_MAX_SPEECH_CHARS 4096

/* Audio uploads (OPENAI_TRANSCRIPTIONS, OPENAI_TRANSLATIONS) are billed per second of audio,
 * as the node reports it; nodes are untrusted, so the seconds are at most the upload's file
 * bytes / MEDIA_AUDIO_MIN_BYTES_PER_SECOND (no audio codec in use goes below about 4 kbit/s;
 * at least one second), and audio input tokens at most MEDIA_AUDIO_MAX_TOKENS_PER_SECOND times
 * those seconds. A node that reports nothing is billed file bytes /
 * MEDIA_AUDIO_EST_BYTES_PER_SECOND seconds (128 kbit/s, a common MP3 rate), as an estimate. */
#define MEDIA_AUDIO_MIN_BYTES_PER_SECOND 500
#define MEDIA_AUDIO_EST_BYTES_PER_SECOND 16000
#define MEDIA_AUDIO_MAX_TOKENS_PER_SECOND 50
/* Audio input tokens a second, for estimates (routing, budget reservations) of a model billed
 * in tokens: about what OpenAI's audio models count. */
#define MEDIA_AUDIO_EST_TOKENS_PER_SECOND 10

/* The most seconds of audio `file_bytes` can hold (the bound above). */
size_t media_audio_max_seconds(size_t file_bytes);

/* openai_validate_fn for OPENAI_IMAGES (model, prompt a non-empty string, n 1 to
 * MEDIA_MAX_IMAGES: units = n), OPENAI_SPEECH (model, input a string of 1 to
 * MEDIA_MAX_SPEECH_CHARS characters: units = its characters, voice a string) and
 * OPENAI_MODERATIONS (model, input a string or an array: billed as input tokens), and
 * OPENAI_TRANSCRIPTIONS and OPENAI_TRANSLATIONS, whose body is what gateway/upload.c wrote of
 * the multipart fields: {"model", "file": {"bytes": N} when a file came, "response_format",
 * "stream", "language"} (units = media_audio_max_seconds(N)). None streams; none has output
 * tokens. */
int media_validate(enum openai_route route, json_t *body, struct openai_request *out,
                   const char **param, char *msg, size_t msg_len);

#endif

/*
 * req: the state of one HTTP request, shared by the modules that answer it.
 *
 * A type header with no functions. http.c creates a request on the first
 * access-handler call and frees it when MHD completes it; in between, only
 * the MHD thread serving the connection touches it (wake.c resumes the
 * connection but never reads the request).
 */
#ifndef MOCKNODE_REQ_H
#define MOCKNODE_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <microhttpd.h>

#include "answer.h"
#include "buf.h"
#include "fault.h"
#include "wake.h"

#define REQ_MAX_BODY (32u << 20) /* an upload of 25 MiB (OpenAI's cap) and its framing */
#define REQ_MAX_ANSWER (64u << 20)

/* Endpoints; the /v1 ones come first so they double as stats indexes. */
enum ep {
    EP_CHAT,
    EP_COMPLETIONS,
    EP_EMBEDDINGS,
    EP_RESPONSES,      /* POST /v1/responses (responses.c) */
    EP_RESPONSE_ID,    /* GET, DELETE /v1/responses/{id}[/input_items] */
    EP_IMAGES,         /* POST /v1/images/generations (media.c) */
    EP_SPEECH,         /* POST /v1/audio/speech */
    EP_MODERATIONS,    /* POST /v1/moderations */
    EP_TRANSCRIPTIONS, /* POST /v1/audio/transcriptions (multipart) */
    EP_TRANSLATIONS,   /* POST /v1/audio/translations (multipart) */
    EP_MODELS,
    EP_MODEL,
    EP_V1_OTHER,
    EP_HEALTHZ,
    EP_CONFIG,
    EP_STATS,
    EP_RESET,
    EP_OTHER,
};
#define EP_V1_COUNT (EP_V1_OTHER + 1)

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
    struct resp_plan *resp; /* EP_RESPONSES: the planned answer (responses.c) */
};

#endif

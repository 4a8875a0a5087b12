/*
 * answer: builds the OpenAI-shaped bodies and SSE events mocknode sends.
 *
 * Pure formatting into a struct buf; no I/O and no shared mutable state after
 * answer_init(), so every function is safe from any thread. Failures (cap or
 * memory) show up as the buffer's `failed` flag.
 */
#ifndef MOCKNODE_ANSWER_H
#define MOCKNODE_ANSWER_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

enum answer_kind {
    ANSWER_CHAT,
    ANSWER_COMPLETION,
};

/* What one generated answer looks like; filled by the caller per request. */
struct answer_gen {
    enum answer_kind kind;
    const char *id; /* "chatcmpl-..." or "cmpl-..." */
    long long created;
    const char *model;
    size_t model_len;
    unsigned prompt_tokens;
    unsigned completion_tokens;
    bool capped;         /* finish_reason "length" instead of "stop" */
    unsigned usage_mult; /* 1, or 100 to make usage lie */
};

/* Sets the node name used as token 0 ("[NAME]"). Call once before any thread starts. */
int answer_init(const char *name);

/* The non-stream chat.completion or text_completion body. */
void answer_body(struct buf *b, const struct answer_gen *g);

/*
 * The part every stream chunk shares, up to and including `"choices":`.
 * Built once per request and passed back to the event builders.
 */
void answer_chunk_prefix(struct buf *b, const struct answer_gen *g);

/* One `data: {chunk}\n\n` event carrying token `i`. */
void answer_event_token(struct buf *b, const struct answer_gen *g, const struct buf *prefix,
                        unsigned i);

/* The event with an empty delta (or text) and the finish_reason. */
void answer_event_finish(struct buf *b, const struct answer_gen *g, const struct buf *prefix);

/* The stream_options.include_usage event: "choices":[] and "usage". */
void answer_event_usage(struct buf *b, const struct answer_gen *g, const struct buf *prefix);

/* {"prompt_tokens":P,"completion_tokens":C,"total_tokens":P+C}, or without completion. */
void answer_usage(struct buf *b, unsigned prompt, unsigned completion, bool with_completion,
                  unsigned mult);

/* {"object":"embedding","index":i,"embedding":[16 floats]} derived from `seed`. */
void answer_embedding(struct buf *b, unsigned index, uint64_t seed);

/* {"error":{"message":..,"type":..,"param":..,"code":..}}; NULL param/code become null. */
void answer_error(struct buf *b, const char *message, const char *type, const char *param,
                  const char *code);

#endif

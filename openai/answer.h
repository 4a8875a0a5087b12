/* Accounting for a backend's JSON answer (a whole chat/completion/embedding answer, or one
 * stream chunk) without building a tree: a streaming parse (yajl) that checks the bytes are
 * well-formed JSON and picks out what billing needs: the usage numbers, the bytes of text the
 * caller received (content, reasoning, refusals, tool calls, completion text), how many
 * choices there were, and whether the node reported an error.
 *
 * Bytes may be fed in pieces as they arrive, split anywhere, at a cost linear in the bytes
 * however they are split (yajl alone re-reads a token cut across pieces from its start on every
 * piece, so one 32 MiB string fed in 16 KiB pieces cost seconds). A token cut at the end of a
 * piece is held back until the piece that ends it, or until it has grown to twice what yajl
 * already holds of it, so malformed bytes are still found early (at the latest when the token
 * that holds them has doubled, or at finish).
 *
 * Not thread-safe: one scan per answer. */
#ifndef TOLLGATE_ANSWER_H
#define TOLLGATE_ANSWER_H

#include "base/arena.h"
#include "base/buf.h"

#include <stdbool.h>
#include <stddef.h>

#define ANSWER_MAX_DEPTH 16

/* Which API's answers a scan reads. */
enum answer_kind {
    ANSWER_KIND_CHOICES = 0, /* chat completions, completions, embeddings: choices[], usage */
    ANSWER_KIND_RESPONSES,   /* the Responses API: output[], status, usage (responses.h) */
    ANSWER_KIND_DATA,        /* a list answer: data[] counted as choices (images) */
    ANSWER_KIND_NONE,        /* not JSON (audio): not scanned at all */
};

struct answer_frame {
    bool is_map;
    char key[24]; /* the current key in a map (longer keys never match anything we need) */
    size_t count; /* values seen in an array */
};

struct answer_scan {
    void *handle; /* yajl */
    enum answer_kind kind;
    int depth; /* containers open */
    struct answer_frame frames[ANSWER_MAX_DEPTH];
    bool object;    /* the document is a JSON object */
    bool has_error; /* it has a top-level "error" object */
    bool has_usage; /* usage.prompt_tokens was an integer (saturated at the long long ends) */
    long long prompt_tokens;
    long long completion_tokens;
    size_t delivered;   /* bytes of generated text */
    unsigned n_choices; /* highest choices[].index + 1, or the number of choices */
    bool has_choices;   /* a top-level "choices" array */
    size_t choices_len; /* its length */
    size_t finished;    /* choices with a finish_reason string */
    /* Where the top-level "usage" object lies in the bytes fed ([usage_start, usage_end)), so
     * it can be rewritten without parsing the whole answer again; usage_end is 0 when there
     * is none. Set for any usage object, has_usage or not (its numbers may be garbage); a
     * later top-level "usage" key replaces an earlier one (as JSON parsers read them). */
    size_t usage_start, usage_end;
    /* ANSWER_KIND_RESPONSES only (choices_len counts output items, all of them finished when
     * the status is "completed"): */
    /* usage.prompt_tokens_details.cached_tokens (the Responses API's: input_tokens_details) */
    long long cached_tokens;
    char event_type[48];   /* a stream event's "type" */
    char response_id[128]; /* the response's "id" (a whole answer's, or an event's response) */

    /* Internal: the token cut at the end of what was fed (see above). */
    struct buf held; /* bytes not handed to yajl yet */
    size_t fed;      /* bytes handed to yajl so far */
    size_t open;     /* bytes of the unfinished token yajl holds */
    bool in_string;  /* the bytes so far end inside a string */
    bool escaped;    /* ... right after a backslash */
};

/* 0, or -1 on OOM. The scanner's memory comes from arena a (NULL: from malloc), which must
 * outlive it. */
int answer_scan_init(struct answer_scan *s, struct arena *a);
/* The same for another API's answers. */
int answer_scan_init_kind(struct answer_scan *s, struct arena *a, enum answer_kind kind);
/* 0 while the bytes are well-formed so far (as far as they were read: see above), -1 once
 * they are not; -1 also when memory runs out. */
int answer_scan_feed(struct answer_scan *s, const char *p, size_t n);
/* 0 when the whole document was well-formed, -1 otherwise. */
int answer_scan_finish(struct answer_scan *s);
void answer_scan_free(struct answer_scan *s);

/* The scan's rules as the callbacks yajl calls, for another parser of the same JSON
 * (openai/event_scan.h): ctx is the scan; strings and keys decoded, numbers as their text;
 * each returns 1. Such a parser leaves s->handle NULL and sets s->fed to the offset just past
 * the byte it last read before each call (where the usage object starts and ends). */
struct answer_rules {
    int (*on_null)(void *ctx);
    int (*on_bool)(void *ctx, int b);
    int (*on_number)(void *ctx, const char *num, size_t len);
    int (*on_string)(void *ctx, const unsigned char *str, size_t len);
    int (*on_start_map)(void *ctx);
    int (*on_key)(void *ctx, const unsigned char *key, size_t len);
    int (*on_end_map)(void *ctx);
    int (*on_start_array)(void *ctx);
    int (*on_end_array)(void *ctx);
};
extern const struct answer_rules answer_rules;

#endif

/* The request pipeline's shared state: one `struct request` per HTTP request, and the entry
 * points of its phases. Internal to gateway/: request.c is the driver (MHD's callbacks and
 * the order of the phases), and each phase lives in a file of its own and owns its sub-struct:
 *
 *   phase_admit.c     route match, key, body validation, rate limits, budget  (r->adm)
 *   phase_cache.c     the response cache and request coalescing               (r->cache)
 *   phase_upstream.c  backend attempts and failover                           (r->up)
 *   phase_relay.c     the answer: collected whole, or relayed as a stream     (r->relay)
 *   phase_settle.c    usage, cost, metrics, the log line and the ledger       (r->usage)
 *   reply.c           suspending the connection, ids, headers, replies        (r->reply)
 *
 * The files call downwards only: request.c calls the phases; phase_upstream.c calls
 * phase_relay.c, which calls phase_cache.c and phase_settle.c; every one of them may call
 * reply.c, which calls none of them.
 *
 * Everything runs on the owning worker's thread. Where a request is in the pipeline is
 * r->state, and only that: a phase that waits on Redis parks the request in its *_WAIT state
 * and the answer's callback moves it on (to the next phase, or to REQUEST_REPLY). */
#ifndef TOLLGATE_PIPELINE_H
#define TOLLGATE_PIPELINE_H

#include "base/arena.h"
#include "base/buf.h"
#include "base/error.h"
#include "base/list.h"
#include "cache/cache.h"
#include "cache/flight.h"
#include "gateway/tracing.h"
#include "gateway/worker.h"
#include "openai/answer.h"
#include "openai/openai.h"
#include "openai/responses.h"
#include "openai/sse.h"
#include "routing/affinity.h"
#include "routing/backend.h"
#include "routing/router.h"
#include "tenancy/budget.h"
#include "tenancy/keyauth.h"
#include "tenancy/ratelimit.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

/* Above this many unsent stream bytes the upstream transfer is paused (slow client). */
#define REQUEST_STREAM_HIGH_WATER (256u << 10)
/* The largest single SSE event a backend may send. */
#define REQUEST_STREAM_MAX_EVENT (1u << 20)
/* Error answers from a backend are kept up to this size (enough for any real message). */
#define REQUEST_ERROR_BODY_MAX (64u << 10)

/* Where a request is. The admission states run in this order; each *_WAIT state means the
 * request is parked until Redis (or another request's flight) answers. */
enum request_state {
    REQUEST_BODY,        /* reading the body; a key lookup may run alongside (adm.key_pending) */
    REQUEST_KEY_WAIT,    /* the body is in, the key lookup is not */
    REQUEST_PIN_WAIT,    /* the node holding a response is looked up (responses.c) */
    REQUEST_CACHE,       /* next: look in the cache */
    REQUEST_CACHE_WAIT,  /* the shared store (Redis) is asked */
    REQUEST_COALESCE,    /* next: join or lead the flight of identical requests */
    REQUEST_FOLLOW,      /* waiting for an identical request's answer */
    REQUEST_LIMIT,       /* next: the key's rate limits */
    REQUEST_LIMIT_WAIT,  /* the limiter (Redis) is asked */
    REQUEST_BUDGET,      /* next: the key's budget */
    REQUEST_BUDGET_WAIT, /* the budget (Redis) is asked */
    REQUEST_ROUTE,       /* next: pick a backend and start */
    REQUEST_UPSTREAM,    /* suspended while a backend works; nothing sent yet (failover) */
    REQUEST_REPLY,       /* a whole answer or an error is ready to queue */
    REQUEST_STREAM,      /* the backend's stream started: queue the streaming response */
    REQUEST_SENT,        /* a response is queued */
};

enum request_cache_result { REQUEST_CACHE_BYPASS = 0, REQUEST_CACHE_MISS, REQUEST_CACHE_HIT };

/* Admission (phase_admit.c): who the caller is, and what its key allows. */
struct request_admission {
    const char *key_name; /* the static key's name (config), or key_name_buf */
    char key_name_buf[72];
    unsigned metric_key;           /* the key name's metric label index */
    char *key_models;              /* a Redis key's allowed models (keycache format); NULL = all */
    struct keyauth_lookup *lookup; /* a Redis key lookup in flight */
    bool key_pending;              /* the key is being looked up (alongside the body) */
    enum keyauth_result key_result;
    bool authenticated;    /* the caller's key checked out (or the gateway is open) */
    char *local_url;       /* the path of a local endpoint answered after the lookup */
    long key_rpm, key_tpm; /* the key's per-minute limits, 0 = none */
    struct ratelimit_wait *limit_wait;
    bool limited; /* the key has limits: send x-ratelimit-*, settle at the end */
    enum ratelimit_result limit_result;
    struct ratelimit_view limit_view;
    long limit_tokens; /* tokens admitted on the estimate */
    double key_budget; /* USD, 0 = none */
    struct budget_wait *budget_wait;
    bool budget_asked;    /* a reservation was asked for: settle it at the end */
    bool budget_in_redis; /* the reservation is held in Redis */
    enum budget_result budget_result;
    double budget_reserved; /* the estimate reserved */
};

/* The response cache and coalescing (phase_cache.c). */
struct request_caching {
    enum request_cache_result result;
    bool store; /* a complete answer may be stored */
    bool read;  /* may be answered from the cache (no Cache-Control: no-cache) */
    int64_t max_age_ms;
    unsigned char key[32];
    struct request_cache_ask *ask; /* a shared-store lookup in flight */
    double saved_usd;              /* a hit: what the stored answer cost when it was made */
    /* The first cacheable miss for a key leads a flight; identical ones that come while it
     * is answered follow it (parked) and get its answer. */
    bool leads, follows;
    uint64_t flight_token;
    struct flight_waiter waiter; /* its place in the flight it follows */
    struct list follower;        /* on the worker's followers */
    ev_timer follow_timer;
    /* A streamed miss assembled into a whole answer for the cache. */
    bool capturing;
    struct cache_capture capture;
};

/* Caller headers passed on to the node (forward.c): its own header nodes, linked in front
 * of the backend's shared list. */
#define REQUEST_FORWARD_NODES 16
#define REQUEST_FORWARD_UA_MAX 512
#define REQUEST_FORWARD_ID_MAX 128
struct request_forward {
    struct curl_slist nodes[REQUEST_FORWARD_NODES];
    unsigned n_nodes;
    char ua[REQUEST_FORWARD_UA_MAX + 64];
    char org[REQUEST_FORWARD_ID_MAX + 32];
    char proj[REQUEST_FORWARD_ID_MAX + 32];
};

/* Backend attempts (phase_upstream.c). */
struct request_attempts {
    const struct config_target *target; /* the current (or last) backend */
    bool *skip;                         /* per route target: already failed for this request */
    struct router_request rreq;
    unsigned attempts;
    double deadline;  /* no new attempt after this (clock_mono) */
    double t_attempt; /* when the current attempt started */
    double ttfb;      /* its time to the first body byte */
    double wait;      /* seconds spent waiting on backends before the answer was queued */
    enum tg_error last_err;
    char last_msg[400];
    long rate_limit_wait_s; /* the soonest a rate-limiting backend takes requests again */
    char *body;             /* the body sent upstream when it differs from the caller's */
    char url[1024];
    struct upstream_xfer *xfer;
    bool got_headers;
    long status;
    char fail_detail[160]; /* why the data callback aborted the transfer */
    /* Routing's view of the current attempt (routing/limiter.h, stuck.h). */
    unsigned rate_limited;              /* attempts answered 429: moves that use up no retry */
    int inflight_at_send;               /* the backend's in-flight count with this attempt */
    int64_t started_us;                 /* t_attempt in µs */
    bool waiting;                       /* counted as waiting for the first byte */
    struct backend_price_capture price; /* the price in force when it was sent */
    double stuck_after;   /* seconds before a missing first byte is overdue; 0 unknown */
    double stuck_least;   /* the same for a stream: the least wait before giving up */
    ev_timer stuck_timer; /* checks on a first byte that is late */
    double queued_at;     /* waiting for a free slot since (clock_mono); 0 = not */
    ev_timer queue_timer; /* looks for a free slot again */
    /* Same-node retries (backoff.c): the failed attempt's Retry-After in ms (-1 none), how
     * many the request made, and the wait before the next one. */
    long retry_after_ms;
    unsigned same_node;
    ev_timer backoff_timer;
};

/* The answer on its way to the caller (phase_relay.c). */
struct request_relay {
    /* A whole answer (or a backend's error) being collected, and scanned as it arrives. */
    struct buf resp;
    struct answer_scan scan;
    bool scanning;
    /* Stream relay: events from the backend, waiting to be sent. */
    bool stream_mode;
    struct sse_parser sse;
    struct buf out;
    size_t out_off;
    bool saw_done;
    bool stream_ended;   /* nothing more will be added to `out` */
    bool reader_waiting; /* the content reader suspended the connection */
    bool up_paused;
    bool caller_usage;    /* the caller asked for the usage chunk */
    double t_first_event; /* when the node's first stream event was ready (clock_mono); 0 none */
    double t_first_out;   /* when the stream's first bytes went to the caller; 0 none */
};

/* What the backend delivered and what it is billed for (phase_settle.c). */
struct request_usage {
    size_t delivered;   /* bytes of generated text (content, reasoning, tool calls) */
    unsigned n_choices; /* choices seen in the answer */
    bool reported;      /* the backend sent usage */
    long rep_prompt, rep_completion;
    long rep_cached;    /* the node's cached prompt tokens (prompt_tokens_details) */
    long cached_tokens; /* of prompt_tokens, billed at the cached-input price (clamped) */
    bool done;
    bool estimated; /* billed on the gateway's estimates, not the node's usage */
    long prompt_tokens, completion_tokens;
    bool clamped;
    double cost_usd;
    double routing_saved_usd; /* the priciest healthy alternative's cost minus ours */
};

/* The Responses API (responses.c): a follow-up pinned to the node that holds its response. */
struct request_responses {
    char id[RESPONSES_ID_MAX + 1];        /* the response a follow-up names */
    char path[5 * RESPONSES_ID_MAX + 96]; /* by id: "/responses/{id}[/input_items?...]" */
    struct affinity_ask *ask;             /* a Redis lookup in flight */
    bool pinned;                          /* only the node that holds it may serve the request */
    unsigned events;                      /* stream events relayed: the next sequence_number */
};

/* The reply to queue when MHD calls back (reply.c). */
struct request_reply {
    unsigned status;
    char *body;
    size_t len;
    char ctype[96];
    const char *allow;  /* Allow header for 405 */
    bool no_retry;      /* send x-should-retry: false */
    long retry_after_s; /* send retry-after when > 0 */
    enum tg_error err;  /* the error answered (TG_ERR_STREAM: a stream broke); 0 none */
};

struct request {
    struct worker *w;
    struct MHD_Connection *conn;
    struct config *cfg; /* the snapshot this request started with (referenced) */
    const struct openai_endpoint *ep;
    enum request_state state;
    bool first_call; /* inside MHD's first call for this request */
    bool parked;     /* suspended in a *_WAIT state until an answer comes */
    bool suspended;
    char id[132];
    char method[8];
    struct list live; /* on the worker's live requests */
    double t_start;
    double t_queued; /* when the answer (or the stream's first event) was queued */
    unsigned status; /* what was sent, for the log and metrics */

    struct buf body;
    json_t *json;
    struct openai_request oreq;
    const struct config_route *route;
    const char *model;  /* the route's model name (config-owned) */
    struct arena arena; /* the parsed body's nodes and the scans' state (base/arena.h) */

    struct config_route chain;  /* a request's own `models` chain (chain.c); targets malloc'd */
    struct request_forward fwd; /* caller headers passed on to the node (forward.c) */

    struct request_admission adm;
    struct request_caching cache;
    struct request_attempts up;
    struct request_relay relay;
    struct request_usage usage;
    struct request_reply reply;
    struct request_tracing trace; /* spans and trace context (tracing.c) */
    struct request_responses resp;
    struct request_upload *upload; /* a multipart upload being spooled (upload.c), or NULL */
};

/* ---- the driver (request.c) ---- */
/* Runs the admission phases from r->state on; MHD's result for the current call. */
enum MHD_Result request_proceed(struct request *r);

/* ---- the connection and replies (reply.c) ---- */
void request_suspend(struct request *r);
void request_resume(struct request *r);
/* Parks the request in its *_WAIT state; request_wake() is the answer. */
enum MHD_Result request_park(struct request *r);
/* An answer came: a parked request goes on through MHD's next call for it; one that is not
 * parked (the answer came before it had to wait) reads the result when it gets there. */
void request_wake(struct request *r);
/* Gives the backend's in-flight slot back. */
void request_release_backend(struct request *r);
void request_set_id(struct request *r);
/* USD as a plain decimal, never in exponent form ("0.0000125", "3.0"). */
void request_format_usd(char *out, size_t n, double usd);
void request_headers(struct request *r, struct MHD_Response *resp);
enum MHD_Result request_queue_reply(struct request *r);
void request_set_reply(struct request *r, unsigned status, char *body, size_t len,
                       const char *ctype);
void request_set_error(struct request *r, enum tg_error err, const char *param, const char *fmt,
                       ...) __attribute__((format(printf, 4, 5)));
/* A reply decided on MHD's first call waits for the next one unless a body is coming. */
enum MHD_Result request_reply_early(struct request *r);
enum MHD_Result request_reply_json(struct request *r, unsigned status, json_t *doc);
/* Appends one SSE data event to the stream buffer. 0 or TG_ERR_NOMEM. */
int request_emit_event(struct request *r, json_t *chunk);
/* The same for a chunk the gateway wrote (usage and cost): reals as base/usd.h prints them. */
int request_emit_usage_event(struct request *r, json_t *chunk);
/* Scan one stream event of `kind` whole into *out (its by-value facts stay readable): 0, or
 * TG_ERR_BAD_BACKEND_RESPONSE with r->up.fail_detail set when the event is not a JSON object. */
int request_scan_stream_event(struct request *r, const struct sse_event *ev, enum answer_kind kind,
                              struct answer_scan *out);

/* From inside MHD's handler: answer with an error now (or on the next call, see above). */
#define REQUEST_FAIL_NOW(r, err, param, ...)                                                       \
    (request_set_error((r), (err), (param), __VA_ARGS__), request_reply_early(r))

/* ---- admission (phase_admit.c) ---- */
/* MHD's first call: the route, the key, the size limit. */
enum MHD_Result request_begin(struct request *r, const char *url, const char *method);
/* The whole body is in: key errors, local endpoints, validation, the route. Returns true
 * with *res set when the request is answered (or parked); false to go on with the cache. */
bool request_admit_body(struct request *r, enum MHD_Result *res);
/* REQUEST_LIMIT: asks the key's rate limiter; moves to REQUEST_LIMIT_WAIT or REQUEST_BUDGET. */
void request_admit_limit(struct request *r);
/* REQUEST_BUDGET: a denied rate limit answers; else reserves the key's budget and moves to
 * REQUEST_BUDGET_WAIT or REQUEST_ROUTE. True with *res set when answered. */
bool request_admit_budget(struct request *r, enum MHD_Result *res);
/* REQUEST_ROUTE: an exhausted budget or a forced drain answers. True with *res set. */
bool request_admit_refused(struct request *r, enum MHD_Result *res);

/* ---- the cache and coalescing (phase_cache.c) ---- */
/* REQUEST_CACHE: true when a hit set the reply (REQUEST_REPLY or REQUEST_STREAM); else the
 * request is a miss or a bypass, and in REQUEST_CACHE_WAIT when the shared store was asked. */
bool request_cache_lookup(struct request *r);
/* REQUEST_COALESCE: true when the request follows another's flight (REQUEST_FOLLOW). */
bool request_coalesce(struct request *r);
/* A stored answer becomes the reply: false when it cannot be used. */
bool request_cache_hit(struct request *r, const char *body, size_t len, double saved_usd);
/* A stored answer's replay is in r->relay.out whole: the request becomes a stream that has
 * ended (a hit that cost nothing, `saved_usd` saved), and is relayed from there. */
void request_cache_replay_begin(struct request *r, double saved_usd);
/* Keeps a complete answer and hands it to the requests waiting for it. */
void request_cache_store(struct request *r, const char *text, size_t len);
/* The leader's flight ends; text NULL: its followers go on on their own. */
void request_flight_land(struct request *r, const char *text, size_t len, double cost);
/* A follower stops waiting (its time is up, or it is gone). */
void request_unfollow(struct request *r);
/* The request ends: nothing of the cache phase may refer to it any more. */
void request_cache_forget(struct request *r);

/* ---- backend attempts (phase_upstream.c) ---- */
/* REQUEST_ROUTE: picks a backend and starts; MHD's result for the current call. */
enum MHD_Result request_route(struct request *r);
/* Cancels the transfer in flight, if any, and gives its slot back. */
void request_cancel_attempt(struct request *r);

/* ---- the answer (phase_relay.c) ---- */
/* upstream_ops.on_data: collects a whole answer or relays a stream. */
int request_relay_data(void *ctx, const char *data, size_t len);
void request_stream_error(struct request *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The same when the stream's time is up while the caller lags: its unsent backlog goes. */
void request_stream_late(struct request *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A whole 2xx answer: settle usage, store it if it may be, and set the reply. */
void request_whole_answer(struct request *r);
enum MHD_Result request_queue_stream(struct request *r);

/* ---- the Responses API (responses.c) ---- */
/* MHD's first call for /v1/responses/{id}[/input_items]: keeps the id; true with the error
 * set when the path is not one. */
bool request_responses_begin(struct request *r, const char *url);
/* The body is in: a follow-up (previous_response_id, or a request by id) is pinned to the
 * node that holds its response, looked up first if need be (REQUEST_PIN_WAIT). True with *res
 * set when answered or parked; false to go on with the cache. */
bool request_responses_admit(struct request *r, enum MHD_Result *res);
/* The request ends: its lookup, if any, answers nobody. */
void request_responses_forget(struct request *r);
/* request_on_event for a Responses stream. */
int request_responses_event(struct request *r, const struct sse_event *ev);
/* The stream breaks after its first byte: OpenAI's "error" event. */
void request_responses_error_event(struct request *r, const char *msg);
/* A whole 2xx answer: remembers its node (a request by id is passed through, unbilled). */
void request_responses_whole(struct request *r);
/* Settled usage in the Responses API's names. */
void request_responses_write_usage(struct request *r, json_t *usage, bool with_cost);
/* A cached response replayed to a streaming caller as typed events. */
bool request_responses_cache_stream(struct request *r, const char *body, size_t len,
                                    double saved_usd);

/* ---- metered pass-through: images, speech (media.c) ---- */
/* A whole 2xx answer passed through as the node sent it, billed by the unit. */
void request_media_whole(struct request *r);
/* The cost of its units (from request_settle_usage). */
void request_media_settle(struct request *r);

/* ---- model chains and capabilities (chain.c) ---- */
/* A body's `models` list (OpenRouter's fallback models): r->route becomes the chain of
 * `model` then those. True with *res set when the list is refused. */
bool request_chain_admit(struct request *r, enum MHD_Result *res);
/* The capabilities the body uses, and x-tollgate-require-parameters. True with *res set when
 * the header is refused. */
bool request_caps_admit(struct request *r, enum MHD_Result *res);
/* No target at all can take what the request uses: sets that 400 and returns true. */
bool request_no_capable_target(struct request *r, const struct router_outcome *why);
/* The backend's 4xx says the prompt is over its context, and another target may take it. */
bool request_context_retry(struct request *r);
/* The model that served the request (a chain's member), else the one it asked for; its route
 * (metrics, honesty) and that route's metric label. */
const char *request_served_model(const struct request *r);
const struct config_route *request_served_route(const struct request *r);
/* The body for a backend as JSON text (malloc'd; NULL on OOM): without a `models` list,
 * integers of any size as they came. */
char *request_dump_upstream(struct request *r);

/* ---- same-node retries (backoff.c) ---- */
/* After a failed attempt (its target marked in r->up.skip, r->up.last_err set): the seconds to
 * wait before asking the same node again (routing/backoff.h), or -1 to move on at once as
 * before: another node of the same model can take the request, the failure is not worth
 * repeating (!retryable), or the retries (one kept for a chain's next model), the deadline, the
 * node's Retry-After or its health do not allow it. */
double request_same_node_delay(struct request *r, bool retryable);
/* The attempt's answer began (r->up.status set, the transfer still held): a 429's or 5xx's
 * Retry-After (or retry-after-ms) into r->up.retry_after_ms, read once for the decision above,
 * the node's 429 pause and the caller's retry-after. */
void request_note_retry_after(struct request *r);

/* ---- caller headers for the node (forward.c) ---- */
/* The header list for an attempt: the caller's User-Agent (with the gateway's as a suffix),
 * OpenAI-Organization and OpenAI-Project in front of `base`; `base` when there are none.
 * Valid until the next call. */
struct curl_slist *request_forward_headers(struct request *r, struct curl_slist *base);

/* ---- usage, cost and records (phase_settle.c) ---- */
void request_note_scan(struct request *r, const struct answer_scan *sc);
void request_settle_usage(struct request *r);
void request_write_usage(struct request *r, json_t *usage, bool with_cost);
/* The request is over: limits and budget settled, metrics, the log line, the ledger. */
void request_settle(struct request *r, double seconds);

#endif

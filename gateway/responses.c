/* The Responses API's part of the pipeline: follow-ups that must reach the node holding a
 * response (previous_response_id, GET and DELETE /v1/responses/{id}) are pinned to it through
 * routing/affinity.h; the typed stream events are relayed (usage settled from the terminal
 * event, a failure after the first byte reported as an "error" event); a response's node is
 * remembered when it is answered; a cached response is replayed as the event sequence a node
 * sends. The wire format itself is openai/responses.h. Owns r->resp. */
#include "openai/responses.h"
#include "base/log.h"
#include "base/usd.h"
#include "gateway/pipeline.h"
#include "openai/answer_event.h"
#include "redis/redis.h"
#include "routing/affinity.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- follow-ups: the node that holds the response --------------------------------------- */

bool request_responses_begin(struct request *r, const char *url)
{
    const char *rest = url + strlen(r->ep->path);
    size_t n = strcspn(rest, "/");
    bool items = !strcmp(rest + n, "/input_items");
    if ((rest[n] && !items) || (items && strcmp(r->method, "GET") && strcmp(r->method, "HEAD")) ||
        !responses_id_ok(rest, n)) {
        char esc[300];
        request_set_error(r, TG_ERR_UNKNOWN_URL, NULL, "Invalid URL (%s %s)", r->method,
                          log_escape(esc, sizeof esc, url));
        return true;
    }
    memcpy(r->resp.id, rest, n);
    r->resp.id[n] = '\0';
    int len = snprintf(r->resp.path, sizeof r->resp.path, "/responses/%s%s", r->resp.id,
                       items ? "/input_items" : "");
    /* input_items' paging goes to the node as sent: values of ids, numbers and asc/desc
     * only, so nothing needs escaping and the path stays within its size. */
    static const char *const paging[] = {"limit", "order", "after", "before"};
    for (size_t i = 0; items && i < sizeof paging / sizeof paging[0]; i++) {
        const char *v = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, paging[i]);
        if (!v)
            continue;
        if (!responses_id_ok(v, strlen(v))) {
            request_set_error(r, TG_ERR_INVALID_VALUE, paging[i],
                              "'%s' must be letters, digits, '_' or '-'.", paging[i]);
            return true;
        }
        len += snprintf(r->resp.path + len, sizeof r->resp.path - (size_t)len, "%s%s=%s",
                        len && strchr(r->resp.path, '?') ? "&" : "?", paging[i], v);
    }
    return false;
}

/* The request may go only to the pinned node. False with the error set when it cannot. */
static bool request_responses_pin(struct request *r, const struct affinity_hit *hit)
{
    bool by_id = r->ep->route == OPENAI_RESPONSE;
    if (by_id) {
        r->route = config_find_route(r->cfg, hit->model);
        if (r->route && !keycache_allows(r->adm.key_models, r->route->model)) {
            request_set_error(r, TG_ERR_MODEL_NOT_ALLOWED, NULL,
                              "This API key may not use the model '%s' of response '%s'.",
                              r->route->model, r->resp.id);
            return false;
        }
        if (r->route) {
            r->model = r->route->model;
            r->up.skip = calloc(r->route->n_targets, sizeof *r->up.skip);
            if (!r->up.skip) {
                request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
                return false;
            }
            r->up.rreq = (struct router_request){
                .strategy = r->cfg->routing.strategy,
                .max_price_usd = -1,
                .tie_tolerance = r->cfg->routing.tie_tolerance,
            };
            r->up.deadline = r->t_start + (double)r->cfg->routing.deadline_ms / 1000.0;
        }
    }
    bool found = false;
    for (size_t i = 0; r->route && i < r->route->n_targets; i++) {
        bool it = !strcmp(r->route->targets[i].backend->name, hit->backend);
        r->up.skip[i] = !it;
        found = found || it;
    }
    if (!found) {
        r->reply.retry_after_s = 0;
        request_set_error(r, TG_ERR_NO_BACKEND, by_id ? NULL : "previous_response_id",
                          "Response '%s' is held by backend '%s', which no longer serves '%s'; "
                          "it cannot be reached through this gateway.",
                          r->resp.id, hit->backend, by_id ? hit->model : r->model);
        r->reply.no_retry = true;
        return false;
    }
    r->resp.pinned = true;
    return true;
}

static void request_responses_unknown(struct request *r, bool unavailable)
{
    if (unavailable) {
        r->reply.retry_after_s = 1;
        request_set_error(r, TG_ERR_KEY_UNAVAILABLE, NULL,
                          "The node holding response '%s' cannot be looked up right now (the "
                          "shared store is unavailable). Retry shortly.",
                          r->resp.id);
        return;
    }
    size_t len = 0;
    char msg[300];
    bool by_id = r->ep->route == OPENAI_RESPONSE;
    snprintf(msg, sizeof msg,
             by_id ? "Response with id '%s' not found."
                   : "Previous response with id '%s' not found.",
             r->resp.id);
    char *body = error_body(by_id ? TG_ERR_UNKNOWN_URL : TG_ERR_INVALID_VALUE, msg,
                            by_id ? NULL : "previous_response_id",
                            by_id ? "response_not_found" : "previous_response_not_found", &len);
    if (!body) {
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        return;
    }
    request_set_reply(r, by_id ? 404 : 400, body, len, "application/json");
}

/* The state the request goes on in once pinned. */
static enum request_state request_responses_next(const struct request *r)
{
    return r->ep->route == OPENAI_RESPONSE ? REQUEST_ROUTE : REQUEST_CACHE;
}

static void request_responses_found(void *ctx, bool found, bool unavailable,
                                    const struct affinity_hit *hit)
{
    struct request *r = ctx;
    r->resp.ask = NULL;
    if (!found)
        request_responses_unknown(r, unavailable);
    else if (request_responses_pin(r, hit))
        r->state = request_responses_next(r);
    request_wake(r);
}

bool request_responses_admit(struct request *r, enum MHD_Result *res)
{
    if (r->ep->route == OPENAI_RESPONSE) {
        if (r->body.len) {
            *res = REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, NULL,
                                    "%s /v1/responses/{id} takes no request body.", r->method);
            return true;
        }
    } else {
        const char *prev = responses_previous_id(r->json);
        if (!prev)
            return false;
        snprintf(r->resp.id, sizeof r->resp.id, "%s", prev);
    }
    struct affinity_hit hit;
    int rc =
        affinity_lookup(r->w->redis, r->resp.id, &hit, request_responses_found, r, &r->resp.ask);
    if (rc == 2) {
        r->state = REQUEST_PIN_WAIT;
        *res = request_park(r); /* request_responses_found moves it on */
        return true;
    }
    if (rc < 0) {
        *res = REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
        return true;
    }
    bool unavailable = rc == 0 && r->w->redis && !redis_client_available(r->w->redis);
    if (rc == 0 || !request_responses_pin(r, &hit)) {
        if (rc == 0)
            request_responses_unknown(r, unavailable);
        *res = request_reply_early(r);
        return true;
    }
    if (r->ep->route != OPENAI_RESPONSE)
        return false; /* on to the cache, limits and budget like any request */
    r->state = REQUEST_ROUTE;
    *res = request_proceed(r);
    return true;
}

void request_responses_forget(struct request *r)
{
    affinity_cancel(r->resp.ask);
    r->resp.ask = NULL;
}

/* ---- answers: remembering the node ------------------------------------------------------- */

static void request_responses_remember(struct request *r, const char *id)
{
    if (!responses_id_ok(id, strlen(id)) || !r->up.target)
        return;
    affinity_remember(r->w->redis, id, r->up.target->backend->name, request_served_model(r));
}

void request_responses_whole(struct request *r)
{
    if (r->ep->route == OPENAI_RESPONSE) {
        /* A lookup or a deletion: passed through as the node said, never billed. */
        r->usage.done = true;
        r->usage.prompt_tokens = r->usage.completion_tokens = 0;
        r->usage.cost_usd = 0;
        if (!strcmp(r->method, "DELETE") && r->up.status / 100 == 2)
            affinity_forget(r->w->redis, r->resp.id);
        size_t len;
        char *text = buf_steal(&r->relay.resp, &len);
        if (!text)
            request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        else
            request_set_reply(r, (unsigned)r->up.status, text, len, "application/json");
        return;
    }
    if (r->up.status / 100 == 2)
        request_responses_remember(r, r->relay.scan.response_id);
}

void request_responses_write_usage(struct request *r, json_t *usage, bool with_cost)
{
    json_object_set_new(usage, "input_tokens", json_integer(r->usage.prompt_tokens));
    json_object_set_new(usage, "output_tokens", json_integer(r->usage.completion_tokens));
    json_object_set_new(usage, "total_tokens",
                        json_integer(r->usage.prompt_tokens + r->usage.completion_tokens));
    json_t *details = json_object_get(usage, "input_tokens_details");
    json_t *cached = json_object_get(details, "cached_tokens");
    if (json_is_integer(cached) && json_integer_value(cached) > r->usage.prompt_tokens)
        json_object_set_new(details, "cached_tokens", json_integer(r->usage.prompt_tokens));
    if (with_cost)
        json_object_set_new(usage, "cost", json_real(r->usage.cost_usd));
}

/* ---- the stream --------------------------------------------------------------------------- */

/* One typed event into the stream buffer: "event: TYPE" and its data. */
static int request_responses_emit(struct request *r, json_t *ev)
{
    const char *type = json_string_value(json_object_get(ev, "type"));
    char *text = usd_json_dumps(ev, JSON_COMPACT); /* usage.cost as every amount is printed */
    if (!text)
        return TG_ERR_NOMEM;
    int rc = buf_printf(&r->relay.out, "event: %s\ndata: %s\n\n", type ? type : "message", text);
    free(text);
    r->resp.events++;
    return rc ? TG_ERR_NOMEM : 0;
}

/* The terminal event with the settled usage in its response (the node's claim was clamped, or
 * it sent none), and the response kept for the cache. */
static int request_responses_done(struct request *r, const struct sse_event *ev)
{
    bool rewrite = r->usage.clamped || !r->usage.reported;
    json_t *doc =
        (rewrite || r->cache.capturing) ? json_loadb(ev->data, ev->data_len, 0, NULL) : NULL;
    json_t *response = json_object_get(doc, "response");
    if (r->cache.capturing) {
        cache_capture_free(&r->cache.capture);
        r->cache.capturing = false;
        char *text = NULL;
        if (json_is_object(response) && r->usage.done) {
            json_t *copy = json_deep_copy(response);
            json_t *usage = json_object_get(copy, "usage");
            if (!json_is_object(usage)) {
                usage = json_object();
                json_object_set_new(copy, "usage", usage);
            }
            request_responses_write_usage(r, usage, false);
            const char *status = json_string_value(json_object_get(copy, "status"));
            if (status && !strcmp(status, "completed"))
                text = json_dumps(copy, JSON_COMPACT);
            json_decref(copy);
        }
        if (text)
            request_cache_store(r, text, strlen(text));
        else
            request_flight_land(r, NULL, 0, 0);
        free(text);
    }
    int rc;
    if (rewrite && json_is_object(response)) {
        json_t *usage = json_object_get(response, "usage");
        if (!json_is_object(usage)) {
            usage = json_object();
            json_object_set_new(response, "usage", usage);
        }
        request_responses_write_usage(r, usage, false);
        r->resp.events--; /* the node's own event, rewritten: its number stays */
        rc = request_responses_emit(r, doc);
    } else {
        r->resp.events++;
        rc = buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    json_decref(doc);
    return rc;
}

int request_responses_event(struct request *r, const struct sse_event *ev)
{
    if (r->relay.saw_done)
        return 0; /* nothing after the terminal event is relayed */
    if (!ev->has_data) {
        /* A comment before the first event reaches nobody (see request_on_event). */
        if (r->state == REQUEST_UPSTREAM && r->relay.out.len == r->relay.out_off)
            return 0;
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    struct answer_scan sc;
    int scan_rc = request_scan_stream_event(r, ev, ANSWER_KIND_RESPONSES, &sc);
    if (scan_rc)
        return scan_rc;
    enum responses_event kind = responses_event_kind(&sc);
    if (kind == RESPONSES_EVENT_FAILED || sc.has_error) {
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail, "the node sent %s event",
                 sc.event_type[0] ? sc.event_type : "an error");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    request_note_scan(r, &sc);
    if (kind == RESPONSES_EVENT_CREATED)
        request_responses_remember(r, sc.response_id);
    if (kind != RESPONSES_EVENT_DONE) {
        r->resp.events++;
        return buf_append(&r->relay.out, ev->raw, ev->raw_len) ? TG_ERR_NOMEM : 0;
    }
    if (!r->usage.n_choices) {
        snprintf(r->up.fail_detail, sizeof r->up.fail_detail,
                 "a stream that ended without any output");
        return TG_ERR_BAD_BACKEND_RESPONSE;
    }
    if (sc.response_id[0])
        request_responses_remember(r, sc.response_id);
    r->relay.saw_done = true;
    request_settle_usage(r);
    return request_responses_done(r, ev);
}

void request_responses_error_event(struct request *r, const char *msg)
{
    /* OpenAI's "error" event, with the error object the chat streams carry as well, so
     * every SDK reads it as a failure. */
    json_t *ev =
        json_pack("{s:s, s:s, s:s, s:n, s:i, s:{s:s, s:s, s:n, s:s}}", "type", "error", "code",
                  "stream_error", "message", msg, "param", "sequence_number", (int)r->resp.events,
                  "error", "message", msg, "type", "server_error", "param", "code", "stream_error");
    char *text = ev ? json_dumps(ev, JSON_COMPACT) : NULL;
    json_decref(ev);
    if (!text)
        return;
    /* The error event must get out even when the buffer is at its cap. */
    r->relay.out.max = r->relay.out.len + strlen(text) + 32;
    buf_printf(&r->relay.out, "event: error\ndata: %s\n\n", text);
    free(text);
}

/* ---- a cached response replayed as a stream ------------------------------------------------ */

/* The events a node sends for `response`: created, in_progress, each output item added, its
 * content (one delta holding the whole text), done, and the terminal event. */
static int request_responses_replay(struct request *r, json_t *response)
{
    json_t *shell = json_deep_copy(response);
    if (!shell)
        return TG_ERR_NOMEM;
    json_object_set_new(shell, "status", json_string("in_progress"));
    json_object_set_new(shell, "output", json_array());
    json_object_set_new(shell, "usage", json_null());
    int seq = 0, rc = 0;
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        json_t *ev_ = json_pack(__VA_ARGS__);                                                      \
        if (!ev_)                                                                                  \
            rc = TG_ERR_NOMEM;                                                                     \
        if (!rc) {                                                                                 \
            json_object_set_new(ev_, "sequence_number", json_integer(seq++));                      \
            rc = request_responses_emit(r, ev_);                                                   \
        }                                                                                          \
        json_decref(ev_);                                                                          \
    } while (0)
    EMIT("{s:s, s:O}", "type", "response.created", "response", shell);
    EMIT("{s:s, s:O}", "type", "response.in_progress", "response", shell);
    json_decref(shell);
    size_t i;
    json_t *item;
    json_array_foreach (json_object_get(response, "output"), i, item) {
        if (rc)
            break;
        const char *type = json_string_value(json_object_get(item, "type"));
        json_t *id = json_object_get(item, "id");
        json_t *added = json_deep_copy(item);
        if (!added) {
            rc = TG_ERR_NOMEM;
            break;
        }
        json_object_set_new(added, "status", json_string("in_progress"));
        bool message = type && !strcmp(type, "message");
        bool call = type && !strcmp(type, "function_call");
        if (message)
            json_object_set_new(added, "content", json_array());
        if (call)
            json_object_set_new(added, "arguments", json_string(""));
        EMIT("{s:s, s:I, s:o}", "type", "response.output_item.added", "output_index", (json_int_t)i,
             "item", added);
        size_t k;
        json_t *part;
        json_array_foreach (message ? json_object_get(item, "content") : NULL, k, part) {
            json_t *text = json_object_get(part, "text");
            json_t *empty = json_deep_copy(part);
            if (empty && json_is_string(text))
                json_object_set_new(empty, "text", json_string(""));
            EMIT("{s:s, s:O?, s:I, s:I, s:o?}", "type", "response.content_part.added", "item_id",
                 id, "output_index", (json_int_t)i, "content_index", (json_int_t)k, "part", empty);
            if (json_is_string(text)) {
                EMIT("{s:s, s:O?, s:I, s:I, s:O, s:[]}", "type", "response.output_text.delta",
                     "item_id", id, "output_index", (json_int_t)i, "content_index", (json_int_t)k,
                     "delta", text, "logprobs");
                EMIT("{s:s, s:O?, s:I, s:I, s:O, s:[]}", "type", "response.output_text.done",
                     "item_id", id, "output_index", (json_int_t)i, "content_index", (json_int_t)k,
                     "text", text, "logprobs");
            }
            EMIT("{s:s, s:O?, s:I, s:I, s:O}", "type", "response.content_part.done", "item_id", id,
                 "output_index", (json_int_t)i, "content_index", (json_int_t)k, "part", part);
        }
        json_t *args = json_object_get(item, "arguments");
        if (call && json_is_string(args)) {
            EMIT("{s:s, s:O?, s:I, s:O}", "type", "response.function_call_arguments.delta",
                 "item_id", id, "output_index", (json_int_t)i, "delta", args);
            EMIT("{s:s, s:O?, s:I, s:O}", "type", "response.function_call_arguments.done",
                 "item_id", id, "output_index", (json_int_t)i, "arguments", args);
        }
        EMIT("{s:s, s:I, s:O}", "type", "response.output_item.done", "output_index", (json_int_t)i,
             "item", item);
    }
    if (!rc)
        EMIT("{s:s, s:O}", "type", "response.completed", "response", response);
#undef EMIT
    return rc;
}

bool request_responses_cache_stream(struct request *r, const char *body, size_t len,
                                    double saved_usd)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    if (!json_is_object(doc) || !json_is_array(json_object_get(doc, "output"))) {
        json_decref(doc);
        return false;
    }
    buf_init(&r->relay.out, REQUEST_STREAM_HIGH_WATER + 2 * REQUEST_STREAM_MAX_EVENT + len * 4);
    r->relay.out_off = 0;
    int rc = request_responses_replay(r, doc);
    json_decref(doc);
    if (rc) {
        buf_free(&r->relay.out);
        return false;
    }
    request_cache_replay_begin(r, saved_usd);
    return true;
}

/* Backend attempts: the router picks the cheapest eligible backend, the body goes out
 * (renamed for the backend's model, asking for the usage chunk of a stream), and an attempt
 * that fails before the caller got a byte moves on to the next backend at once while the
 * retries and the deadline allow, or, when no other node of the model can take it, asks the
 * same node again after a short jittered wait (backoff.c). Owns r->up. */
#include "base/clock.h"
#include "base/log.h"
#include "gateway/pipeline.h"
#include "gateway/upload.h"
#include "net/upstream.h"
#include "routing/backend.h"
#include "routing/backoff.h"
#include "routing/demand.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- upstream: attempts and failover ------------------------------------------------------ */

static const struct upstream_ops request_upstream_ops;

/* Forgets what an earlier attempt received, before the next backend is tried. */
static void request_reset_attempt(struct request *r)
{
    if (r->relay.scanning)
        answer_scan_free(&r->relay.scan);
    r->relay.scanning = false;
    buf_free(&r->relay.resp);
    buf_free(&r->relay.out);
    if (r->relay.stream_mode)
        sse_free(&r->relay.sse);
    if (r->cache.capturing)
        cache_capture_free(&r->cache.capture);
    r->cache.capturing = false;
    r->relay.stream_mode = false;
    r->relay.out_off = 0;
    r->relay.saw_done = false;
    r->up.got_headers = false;
    r->up.status = 0;
    r->relay.up_paused = false;
    r->up.fail_detail[0] = '\0';
    r->up.retry_after_ms = -1;
    r->usage.delivered = 0;
    r->usage.n_choices = 0;
    r->usage.reported = false;
    r->usage.done = false;
}

/* The body for a target: the caller's bytes when nothing changes, else a rewrite with the
 * backend's model name and, for streams, a request for the usage chunk (which is how the
 * gateway learns what a stream cost; it is dropped again if the caller did not ask). */
static int request_upstream_body(struct request *r, const struct config_target *t,
                                 const char **body, size_t *len)
{
    if (!r->json || r->upload) { /* by id (GET, DELETE): none; an upload: upload.c */
        *body = NULL;
        *len = 0;
        return 0;
    }
    const char *want = t->model->upstream ? t->model->upstream : t->model->name;
    const char *sent = json_string_value(json_object_get(r->json, "model"));
    bool rename = !sent || strcmp(want, sent);
    bool ask_usage = r->oreq.stream && !r->relay.caller_usage;
    if (!rename && !ask_usage && !r->up.body) {
        *body = r->body.data;
        *len = r->body.len;
        return 0;
    }
    if (rename || ask_usage || !r->up.body) {
        if (rename)
            json_object_set_new(r->json, "model", json_string(want));
        if (ask_usage) {
            json_t *so = json_object_get(r->json, "stream_options");
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(r->json, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
        }
        free(r->up.body);
        r->up.body = request_dump_upstream(r); /* chain.c: big integers kept */
        if (!r->up.body)
            return TG_ERR_NOMEM;
    }
    *body = r->up.body;
    *len = strlen(r->up.body);
    return 0;
}

/* Sets the reply for "no backend can take this request" from the router's reasons. */
static void request_no_target(struct request *r, const struct router_outcome *why)
{
    if (request_no_capable_target(r, why))
        return;
    if (why->over_price) {
        char max[48], cheapest[48];
        request_format_usd(max, sizeof max, r->up.rreq.max_price_usd);
        request_format_usd(cheapest, sizeof cheapest, why->cheapest_usd);
        request_set_error(r, TG_ERR_PRICE_CEILING, "x-tollgate-max-price-usd",
                          "No healthy backend serves '%s' for at most $%s (estimated); the "
                          "cheapest estimate is $%s.",
                          r->model, max, cheapest);
        r->reply.no_retry = true;
        return;
    }
    long wait_s = 1;
    if (why->back_ms > r->up.rreq.now_ms)
        wait_s = (long)((why->back_ms - r->up.rreq.now_ms + 999) / 1000);
    else if (!why->saturated)
        wait_s = (r->cfg->health.interval_ms + 999) / 1000;
    r->reply.retry_after_s = wait_s;
    if (why->saturated && !why->unavailable)
        request_set_error(r, TG_ERR_NO_BACKEND, NULL,
                          "Every backend serving '%s' is at its concurrency limit; retry in "
                          "%ld s.",
                          r->model, wait_s);
    else
        request_set_error(r, TG_ERR_NO_BACKEND, NULL,
                          "No healthy backend serves '%s' right now; retry in %ld s.", r->model,
                          wait_s);
}

static void request_stuck_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void request_enqueue(struct request *r);
static void request_retries_exhausted(struct request *r);

/* The attempt no longer waits for its first byte (it came, or the attempt ended). */
static void request_end_wait(struct request *r, bool answered)
{
    ev_timer_stop(r->w->loop, &r->up.stuck_timer);
    if (!r->up.waiting)
        return;
    r->up.waiting = false;
    struct backend_state *s = r->up.target->backend->state;
    if (!answered) {
        backend_attempt_end(s);
        return;
    }
    bool stream = r->relay.stream_mode && r->up.status == 200;
    bool was = stuck_suspected(&s->stuck);
    backend_first_byte(s, r->up.started_us, clock_mono() - r->up.t_attempt, stream,
                       clock_mono_ms());
    if (was && !stuck_suspected(&s->stuck))
        log_event(LOG_INFO, "backend_unsuspected",
                  "\"backend\":\"%s\",\"detail\":\"a request was answered\"",
                  r->up.target->backend->name);
}

/* When the attempt's first byte is overdue, and the least it waits on a suspected node. */
static void request_stuck_estimate(struct request *r)
{
    const struct config_health *h = &r->cfg->health;
    long out = (long)r->up.rreq.output_tokens;
    r->up.stuck_after = stuck_after_target(r->route, r->up.target, h, r->oreq.stream, out);
    r->up.stuck_least =
        r->oreq.stream ? r->up.stuck_after : stuck_after_target(r->route, r->up.target, h, true, 0);
}

/* How often a waiting attempt looks at its node: often enough to leave a stuck node soon
 * after it is suspected, rarely enough to cost nothing (seconds). */
static double request_stuck_period(double after)
{
    double p = after > 0 ? after / 4 : 0.25;
    return p < 0.05 ? 0.05 : p > 0.5 ? 0.5 : p;
}

/* How often a request waiting for a free slot looks again (seconds). */
#define REQUEST_QUEUE_POLL 0.01

/* Picks the next backend and starts the transfer: 0 when started, 1 when no backend is
 * eligible (*why says why), 2 when every one is at its learned limit and the request may
 * wait for a slot (routing.queue_ms, within its deadline), or a negative tg_error. */
static int request_start_attempt(struct request *r, struct router_outcome *why)
{
    double now = clock_mono();
    long queue_ms = r->cfg->routing.queue_ms;
    r->up.rreq.now_ms = clock_mono_ms();
    r->up.rreq.random = worker_random(r->w);
    r->up.rreq.cfg = r->cfg;
    r->up.rreq.output_fill = demand_output_fill(r->route->demand);
    double waited = r->up.queued_at ? now - r->up.queued_at : 0;
    r->up.rreq.free_only = queue_ms > 0 && now < r->up.deadline && !worker_draining(r->w) &&
                           waited < (double)queue_ms / 1000.0;
    r->up.rreq.wait_probation = r->up.rreq.free_only && waited < ROUTER_PROBATION_WAIT_S;
    const struct config_target *t = router_pick(r->route, &r->up.rreq, r->up.skip, why);
    if (!t)
        return r->up.rreq.free_only && why->full ? 2 : 1;
    r->up.queued_at = 0;
    const char *body;
    size_t body_len;
    int rc = request_upstream_body(r, t, &body, &body_len);
    if (rc)
        return rc;
    request_reset_attempt(r);
    r->up.target = t;
    r->up.attempts++;
    r->up.t_attempt = clock_mono();
    const struct config_backend *b = t->backend;
    snprintf(r->up.url, sizeof r->up.url, "%s%s", b->url,
             r->resp.path[0] ? r->resp.path : r->ep->upstream_path);
    const struct config_upstream *uc = &r->cfg->upstream;
    struct upstream_req req = {
        .url = r->up.url,
        .body = body,
        .body_len = body_len,
        .method = !strcmp(r->method, "DELETE") ? "DELETE" : NULL,
        .headers = tracing_attempt_headers(
            r, request_forward_headers(r, request_upload_headers(r, b->headers))),
        .ca_file = b->ca_file,
        .request_id = r->id,
        .connect_timeout_ms = uc->connect_timeout_ms,
        .first_byte_timeout_ms = uc->first_byte_timeout_ms,
        .idle_timeout_ms = uc->idle_timeout_ms,
        .total_timeout_ms = uc->total_timeout_ms,
    };
    if (r->upload && request_upload_attach(r, t, &req)) /* upload.c: from the spool */
        return TG_ERR_NOMEM;
    r->up.xfer = upstream_start(r->w->upstream, &req, &request_upstream_ops, r);
    if (!r->up.xfer)
        return TG_ERR_NOMEM;
    /* Billed at the price in force now, whatever the feed says by the time it ends. */
    backend_capture_price(t->model, clock_mono_ms(), &r->up.price);
    r->up.inflight_at_send = backend_attempt_begin(b->state);
    r->up.started_us = (int64_t)(r->up.t_attempt * 1e6);
    r->up.waiting = true;
    request_stuck_estimate(r);
    double period = request_stuck_period(r->up.stuck_after);
    ev_timer_init(&r->up.stuck_timer, request_stuck_cb, period, period);
    r->up.stuck_timer.data = r;
    ev_timer_start(r->w->loop, &r->up.stuck_timer);
    r->state = REQUEST_UPSTREAM;
    return 0;
}

static void request_backoff(struct request *r, double delay);

/* Another try now: true when one is under way or waits for a free slot (still suspended). */
static bool request_try_again(struct request *r)
{
    struct router_outcome why;
    int rc = request_start_attempt(r, &why);
    if (rc == 0 && r->cfg->metrics_enabled)
        METRICS_ADD(r->w->metrics->retries, 1);
    if (rc == 2)
        request_enqueue(r);
    return rc == 0 || rc == 2;
}

/* This attempt failed before the caller got a byte: note it against the backend when the
 * backend is to blame, and move on to the next cheapest one while retries and the deadline
 * allow, or (`again`: a failure worth repeating) ask the same node again after a backoff when
 * no other node of the model can take it. The error set here is what the caller sees if
 * nothing else works. */
static void request_attempt_failed(struct request *r, enum tg_error err, bool blame,
                                   bool unreachable, bool again, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void request_attempt_failed(struct request *r, enum tg_error err, bool blame,
                                   bool unreachable, bool again, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->up.last_msg, sizeof r->up.last_msg, fmt, ap);
    va_end(ap);
    r->up.last_err = err;
    struct backend_state *s = r->up.target->backend->state;
    if (blame)
        backend_record_failure(s, &r->cfg->health, unreachable, clock_mono_ms());
    r->up.skip[r->up.target - r->route->targets] = true;
    if (r->cfg->metrics_enabled)
        METRICS_ADD(r->w->metrics->upstream_errors, 1);
    if (log_enabled(LOG_WARN)) {
        char esc[500];
        log_event(LOG_WARN, "upstream_failed",
                  "\"request_id\":\"%s\",\"backend\":\"%s\",\"attempt\":%u,\"message\":\"%s\"",
                  r->id, r->up.target->backend->name, r->up.attempts,
                  log_escape(esc, sizeof esc, r->up.last_msg));
    }
    /* A 429 is a full node, not a failure: moving on from it uses up no retry (each node is
     * still tried at most once). */
    if (r->up.attempts - r->up.rate_limited <= r->cfg->routing.retries &&
        clock_mono() < r->up.deadline && !worker_draining(r->w)) {
        double delay = request_same_node_delay(r, again);
        if (delay >= 0) {
            request_backoff(r, delay);
            return; /* still suspended; the same node is asked again after the wait */
        }
        if (request_try_again(r))
            return; /* the next backend is working, or a free slot is awaited */
    }
    request_retries_exhausted(r);
}

/* Nothing more to try after a failed attempt: the caller gets the last failure. */
static void request_retries_exhausted(struct request *r)
{
    request_set_error(r, r->up.last_err, NULL, "%s", r->up.last_msg);
    if (r->up.last_err == TG_ERR_BACKEND_RATE_LIMITED)
        r->reply.retry_after_s = r->up.rate_limit_wait_s;
    r->reply.no_retry = true; /* the gateway already retried: the SDK should not multiply it */
    request_resume(r);
}

/* A request waiting for a free slot looks again. */
static void request_queue_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct request *r = t->data;
    if (worker_draining(r->w)) {
        ev_timer_stop(loop, t);
        request_set_error(r, TG_ERR_SHUTTING_DOWN, NULL,
                          "The gateway is shutting down; retry the request.");
        request_resume(r);
        return;
    }
    struct router_outcome why;
    int rc = request_start_attempt(r, &why);
    if (rc == 2)
        return; /* still every node at its limit */
    ev_timer_stop(loop, t);
    r->up.queued_at = 0;
    if (rc == 0) {
        if (r->up.attempts > 1 && r->cfg->metrics_enabled)
            METRICS_ADD(r->w->metrics->retries, 1);
        return;
    }
    if (rc == 1 && r->up.attempts) {
        request_retries_exhausted(r);
        return;
    }
    if (rc == 1)
        request_no_target(r, &why);
    else
        request_set_error(r, rc, NULL, "cannot start the upstream transfer");
    request_resume(r);
}

static void request_enqueue(struct request *r)
{
    if (!r->up.queued_at)
        r->up.queued_at = clock_mono();
    r->state = REQUEST_UPSTREAM; /* suspended, nothing sent: as while a backend works */
    ev_timer_init(&r->up.queue_timer, request_queue_cb, REQUEST_QUEUE_POLL, REQUEST_QUEUE_POLL);
    r->up.queue_timer.data = r;
    ev_timer_start(r->w->loop, &r->up.queue_timer);
}

/* The wait before a same-node retry is over: the node is asked again (or, if it went out of
 * service meanwhile, whatever the router finds; a draining gateway tries nothing new). */
static void request_backoff_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct request *r = t->data;
    if (worker_draining(r->w)) {
        request_retries_exhausted(r);
        return;
    }
    r->up.skip[r->up.target - r->route->targets] = false;
    if (!request_try_again(r))
        request_retries_exhausted(r);
}

static void request_backoff(struct request *r, double delay)
{
    /* Asking the node that answered 429 again is a retry, not a move to another node. */
    if (r->up.last_err == TG_ERR_BACKEND_RATE_LIMITED && r->up.rate_limited)
        r->up.rate_limited--;
    r->up.same_node++;
    log_event(LOG_DEBUG, "upstream_backoff",
              "\"request_id\":\"%s\",\"backend\":\"%s\",\"attempt\":%u,\"wait_ms\":%.1f", r->id,
              r->up.target->backend->name, r->up.attempts, delay * 1000);
    ev_now_update(r->w->loop); /* from now, not from the loop's wakeup: never before a pause */
    ev_timer_init(&r->up.backoff_timer, request_backoff_cb, delay, 0.);
    r->up.backoff_timer.data = r;
    ev_timer_start(r->w->loop, &r->up.backoff_timer);
}

static const char *request_upstream_message(const struct request *r, char *out, size_t n)
{
    out[0] = '\0';
    json_t *doc =
        r->relay.resp.len ? json_loadb(r->relay.resp.data, r->relay.resp.len, 0, NULL) : NULL;
    const char *m = json_string_value(json_object_get(json_object_get(doc, "error"), "message"));
    if (m)
        snprintf(out, n, ": %.200s", m);
    json_decref(doc);
    return out;
}

/* One upstream attempt ended: counted by backend, model and outcome. */
static void request_note_attempt(struct request *r, enum metrics_outcome outcome, double now)
{
    tracing_attempt_end(r, outcome, now);
    if (!r->cfg->metrics_enabled)
        return;
    const struct config_target *t = r->up.target;
    metrics_observe_attempt(r->w->metrics, t->backend->state->metric_backend,
                            t->model->price ? t->model->price->metric_pair : 0, outcome,
                            now - r->up.t_attempt);
}

/* A waiting attempt's check: when its node is suspected stuck (by this attempt being
 * overdue, or by another one) and nothing sent since this attempt began was answered, the
 * attempt gives up and the request moves on. */
static void request_stuck_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    struct request *r = t->data;
    if (!r->up.xfer || !r->up.waiting || r->state != REQUEST_UPSTREAM) {
        ev_timer_stop(loop, t);
        return;
    }
    const struct config_backend *b = r->up.target->backend;
    struct backend_state *s = b->state;
    if (r->up.stuck_after <= 0) /* the node's latency may be known by now */
        request_stuck_estimate(r);
    double now = clock_mono();
    double waited = now - r->up.t_attempt;
    bool suspected_now;
    enum stuck_verdict v =
        stuck_check(&s->stuck, r->up.started_us, waited, r->up.stuck_after, r->up.stuck_least,
                    stuck_world_answered_us(), clock_mono_ms(), &suspected_now);
    if (suspected_now)
        log_event(LOG_WARN, "backend_suspected",
                  "\"backend\":\"%s\",\"request_id\":\"%s\",\"waited_ms\":%.0f,"
                  "\"expected_ms\":%.0f,\"waiting\":%d",
                  b->name, r->id, waited * 1000, r->up.stuck_after * 1000,
                  atomic_load_explicit(&s->stuck.waiting, memory_order_relaxed));
    if (v != STUCK_GIVE_UP)
        return;
    request_cancel_attempt(r);
    r->up.wait += now - r->up.t_attempt;
    request_note_attempt(r, METRICS_OUTCOME_TIMEOUT, now);
    request_attempt_failed(r, TG_ERR_BACKEND_TIMEOUT, false, false, false,
                           "Backend %s is suspected stuck: no first byte in %.0f ms", b->name,
                           waited * 1000);
}

/* upstream_ops.on_data: the relay takes the bytes; the first answer (a whole answer's first
 * byte, a stream's first event, an error status) ends the wait for it. */
static int request_upstream_data(void *ctx, const char *data, size_t len)
{
    struct request *r = ctx;
    int rc = request_relay_data(ctx, data, len);
    if (r->up.waiting && r->up.got_headers &&
        (!r->relay.stream_mode || r->state != REQUEST_UPSTREAM))
        request_end_wait(r, true);
    return rc;
}

static void request_on_done(void *ctx, int result, long status, const char *detail)
{
    struct request *r = ctx;
    if (!r->up.got_headers)
        r->up.status = status; /* an answer with no body */
    const char *backend = r->up.target->backend->name;
    struct backend_state *bs = r->up.target->backend->state;
    /* An answer with no body (or only a stream's pings) still says the node answers. */
    request_end_wait(r, status > 0 && !(r->relay.stream_mode && r->state == REQUEST_UPSTREAM));
    r->up.xfer = NULL;
    request_release_backend(r);
    if (result && r->up.fail_detail[0])
        detail = r->up.fail_detail;
    double now = clock_mono();
    if (r->state == REQUEST_UPSTREAM)
        r->up.wait += now - r->up.t_attempt; /* (a stream's first event counted its own) */

    if (r->relay.stream_mode && r->state != REQUEST_UPSTREAM) {
        /* The caller has bytes already: no failover, an honest end. */
        if (!result && !r->relay.saw_done)
            request_stream_error(r, "backend %s ended the stream without [DONE]", backend);
        else if (result == TG_ERR_BACKEND_TIMEOUT && r->relay.up_paused)
            request_stream_late(r, "backend %s timed out: %s", backend, detail);
        else if (result == TG_ERR_BACKEND_TIMEOUT)
            request_stream_error(r, "backend %s timed out: %s", backend, detail);
        else if (result)
            request_stream_error(r, "backend %s broke the stream: %s", backend, detail);
        bool ok = !result && r->relay.saw_done;
        /* Out of time while a slow reader held the transfer paused: not the node's fault. */
        bool reader = result == TG_ERR_BACKEND_TIMEOUT && r->relay.up_paused;
        if (!ok && !reader)
            backend_record_failure(bs, &r->cfg->health, false, clock_mono_ms());
        else {
            backend_record_served(bs, &r->cfg->routing, r->up.inflight_at_send, r->up.ttfb,
                                  now - r->up.t_attempt, (long)((r->usage.delivered + 3) / 4),
                                  clock_mono_ms());
            demand_note_output(r->route->demand, (long)r->up.rreq.output_tokens,
                               (long)((r->usage.delivered + 3) / 4));
        }
        request_note_attempt(r, ok ? METRICS_OUTCOME_SUCCESS : METRICS_OUTCOME_BROKEN, now);
        r->relay.stream_ended = true;
        if (r->relay.reader_waiting)
            request_resume(r);
        return;
    }

    if (result == TG_ERR_BACKEND_UNREACHABLE || result == TG_ERR_BACKEND_UNTRUSTED) {
        request_note_attempt(r, METRICS_OUTCOME_UNREACHABLE, now);
        /* A certificate the gateway could not verify is not asked again after a backoff. */
        request_attempt_failed(r, TG_ERR_BACKEND_UNREACHABLE, true, true,
                               result == TG_ERR_BACKEND_UNREACHABLE,
                               "Backend %s is unreachable: %s", backend, detail);
    } else if (result == TG_ERR_BACKEND_TIMEOUT) {
        /* Connected but silent: out for the cooldown, whatever the probes say. */
        request_note_attempt(r, METRICS_OUTCOME_TIMEOUT, now);
        request_attempt_failed(r, result, true, false, true, "Backend %s timed out: %s", backend,
                               detail);
    } else if (result) {
        /* A connection that died before any byte of an answer (the node crashed or was
         * killed) is a reachability failure: its next good probe readmits it. */
        request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, status == 0, status == 0,
                               "Backend %s sent a broken answer: %s", backend, detail);
    } else if (r->relay.stream_mode) {
        request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false, false,
                               "Backend %s ended the stream before sending any event", backend);
    } else if (r->up.status == 429) {
        char m[300];
        r->up.rate_limited++;
        request_note_attempt(r, METRICS_OUTCOME_RATE_LIMITED, now);
        long ms = r->up.retry_after_ms; /* whole seconds for the caller, at least 1 */
        long secs = ms > 0 && ms < BACKOFF_NOT_SOON_MS ? (ms + 999) / 1000 : 1;
        if (!r->up.rate_limit_wait_s || secs < r->up.rate_limit_wait_s)
            r->up.rate_limit_wait_s = secs;
        request_attempt_failed(r, TG_ERR_BACKEND_RATE_LIMITED, false, false, true,
                               "Backend %s is rate limiting%s", backend,
                               request_upstream_message(r, m, sizeof m));
    } else if (r->up.status / 100 == 2) {
        bool json_ok =
            r->ep->answer == ANSWER_KIND_NONE || /* audio: not JSON */
            (r->relay.scanning && answer_scan_finish(&r->relay.scan) == 0 && r->relay.scan.object);
        /* Chat and completions answers carry what was generated in choices: none is a broken
         * answer, never relayed (or billed) as a success. */
        bool no_choice = r->ep->generates && r->relay.scan.choices_len == 0 &&
                         (r->ep->answer != ANSWER_KIND_NONE || !r->relay.resp.len);
        if (json_ok && !r->relay.scan.has_error && no_choice && !r->oreq.stream) {
            request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
            request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false, false,
                                   "Backend %s answered without any choice", backend);
        } else if (!json_ok || r->relay.scan.has_error) {
            request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
            request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false, false,
                                   json_ok ? "Backend %s answered 2xx with an error object"
                                           : "Backend %s sent an answer that is not a JSON object",
                                   backend);
        } else if (r->oreq.stream) {
            request_note_attempt(r, METRICS_OUTCOME_BROKEN, now);
            request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false, false,
                                   "Backend %s answered a streaming request without a stream",
                                   backend);
        } else {
            request_note_attempt(r, METRICS_OUTCOME_SUCCESS, now);
            if (r->cfg->metrics_enabled)
                metrics_observe_ttft(r->w->metrics, r->ep->metric, r->route->metric_model,
                                     now - r->t_start, 0);
            request_whole_answer(r);
            /* After the answer's scan: what it delivered is known now. */
            backend_record_served(bs, &r->cfg->routing, r->up.inflight_at_send, 0,
                                  now - r->up.t_attempt, (long)((r->usage.delivered + 3) / 4),
                                  clock_mono_ms());
            demand_note_output(r->route->demand, (long)r->up.rreq.output_tokens,
                               (long)((r->usage.delivered + 3) / 4));
            request_resume(r);
        }
    } else if (r->up.status >= 500 || r->up.status < 400) {
        char m[300];
        request_note_attempt(r, METRICS_OUTCOME_SERVER_ERROR, now);
        request_attempt_failed(r, TG_ERR_BAD_BACKEND_RESPONSE, true, false, r->up.status >= 500,
                               "Backend %s answered HTTP %ld%s", backend, r->up.status,
                               request_upstream_message(r, m, sizeof m));
    } else if (request_context_retry(r)) {
        /* Over this model's context: another (a chain's next model) may take it. */
        char m[300];
        request_note_attempt(r, METRICS_OUTCOME_CLIENT_ERROR, now);
        request_attempt_failed(r, TG_ERR_CONTEXT_LENGTH, false, false, false,
                               "Backend %s: the prompt is over its context length%s", backend,
                               request_upstream_message(r, m, sizeof m));
    } else {
        /* A client error the backend found in the request: the caller sees it as is, and it
         * never counts against the backend. */
        request_note_attempt(r, METRICS_OUTCOME_CLIENT_ERROR, now);
        json_t *doc =
            json_loadb(r->relay.resp.data ? r->relay.resp.data : "", r->relay.resp.len, 0, NULL);
        if (json_is_object(json_object_get(doc, "error"))) {
            size_t len;
            char *text = buf_steal(&r->relay.resp, &len);
            request_set_reply(r, (unsigned)r->up.status, text, len, "application/json");
        } else {
            request_set_error(
                r, r->up.status == 404 ? TG_ERR_MODEL_NOT_FOUND : TG_ERR_INVALID_VALUE, NULL,
                "Backend %s rejected the request with HTTP %ld", backend, r->up.status);
            r->reply.status = (unsigned)r->up.status;
        }
        json_decref(doc);
        request_resume(r);
    }
}

static const struct upstream_ops request_upstream_ops = {
    .on_data = request_upstream_data,
    .on_done = request_on_done,
};

enum MHD_Result request_route(struct request *r)
{
    struct router_outcome why;
    int rc = request_start_attempt(r, &why);
    if (rc == 1) {
        request_no_target(r, &why);
        return request_queue_reply(r);
    }
    if (rc == 2)
        request_enqueue(r);
    else if (rc)
        return REQUEST_FAIL_NOW(r, rc, NULL, "cannot start the upstream transfer");
    request_suspend(r);
    return MHD_YES;
}

void request_cancel_attempt(struct request *r)
{
    ev_timer_stop(r->w->loop, &r->up.queue_timer);
    ev_timer_stop(r->w->loop, &r->up.backoff_timer);
    if (!r->up.xfer)
        return;
    request_end_wait(r, false);
    upstream_cancel(r->up.xfer);
    r->up.xfer = NULL;
    request_release_backend(r);
}

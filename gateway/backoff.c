/* Same-node retries: when an attempt fails before the caller got a byte and no other node of
 * the model can take the request, the node that failed is asked again after a short jittered
 * wait (routing/backoff.h) while the retries and the deadline allow; phase_upstream.c keeps
 * the timer. A move to another node never waits. */
#include "routing/backoff.h"
#include "base/clock.h"
#include "gateway/pipeline.h"
#include "net/upstream.h"

/* A node paused until a given millisecond is asked again a little after it (clock_mono_ms()
 * rounds down). */
#define BACKOFF_MARGIN_S 0.002

/* A model group's next model still gets its try: a same-node retry leaves it one retry. */
static bool request_budget_allows(const struct request *r, bool later_model)
{
    /* The failed attempt's 429, when it was one, is no move if the same node is asked again. */
    unsigned free_moves = r->up.rate_limited;
    if (r->up.last_err == TG_ERR_BACKEND_RATE_LIMITED && free_moves)
        free_moves--;
    unsigned used = r->up.attempts - free_moves; /* the retry would be attempt used + 1 */
    return used + (later_model ? 1 : 0) <= r->cfg->routing.retries;
}

void request_note_retry_after(struct request *r)
{
    if (r->up.status != 429 && r->up.status < 500)
        return;
    char ra[32];
    if (upstream_header(r->up.xfer, "retry-after-ms", ra, sizeof ra) == 0)
        r->up.retry_after_ms = backoff_retry_after_ms(ra, true);
    else if (upstream_header(r->up.xfer, "retry-after", ra, sizeof ra) == 0)
        r->up.retry_after_ms = backoff_retry_after_ms(ra, false);
}

double request_same_node_delay(struct request *r, bool retryable)
{
    const struct config_target *me = r->up.target;
    if (!retryable || !me)
        return -1;
    if (r->up.retry_after_ms > (long)(BACKOFF_CAP_S * 1000))
        return -1; /* the node asked for more time than a retry waits */
    /* Another node of this model goes first, at once; another model only after this one. */
    struct router_request probe = r->up.rreq;
    probe.now_ms = clock_mono_ms();
    probe.free_only = false;
    probe.wait_probation = false;
    const struct config_target *next = router_pick(r->route, &probe, r->up.skip, NULL);
    if (next && next->tier == me->tier)
        return -1;
    if (!request_budget_allows(r, next != NULL))
        return -1;
    /* Out of service: a node ejected for its failures (or probes failing, or suspected stuck)
     * is not asked again; one paused by its 429 is, when the pause ends within the cap. */
    struct backend_state *s = me->backend->state;
    int64_t back_ms = 0;
    double floor_s = r->up.retry_after_ms > 0 ? (double)r->up.retry_after_ms / 1000.0 : 0;
    if (!backend_available(s, probe.now_ms, &back_ms)) {
        double back_s = (double)(back_ms - probe.now_ms) / 1000.0;
        if (backend_health(s, probe.now_ms) != BACKEND_RATE_LIMITED || back_ms <= 0 ||
            back_s > BACKOFF_CAP_S)
            return -1;
        if (back_s + BACKOFF_MARGIN_S > floor_s)
            floor_s = back_s + BACKOFF_MARGIN_S;
    }
    double delay =
        backoff_delay(r->up.same_node + 1, BACKOFF_BASE_S, BACKOFF_CAP_S, worker_random(r->w));
    if (delay < floor_s)
        delay = floor_s;
    if (clock_mono() + delay >= r->up.deadline)
        return -1; /* never past the deadline */
    return delay;
}

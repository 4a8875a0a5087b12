/* Stuck nodes: a backend that takes requests and answers none of them (a hang behind a live
 * listener) is suspected as soon as the evidence is in, instead of after its first-byte
 * timeout or three failed probes.
 *
 * Each attempt waiting for its first byte is checked (phase_upstream.c, on a timer) against
 * stuck_after_s(): health.stuck_factor × when its first byte was due at the node's recent p95
 * (routing/latency.h), at least health.stuck_min_ms. An overdue attempt suspects its node
 * when nothing sent to the node since that attempt began has been answered (the node is not
 * merely slow with this one request) and either another attempt is waiting too or this one
 * is twice overdue (one long prompt on an idle node is not enough). A suspected node gets no
 * new traffic; the attempts waiting on it that nothing since has answered give up and fail
 * over. The suspicion ends when an attempt sent no earlier than the one that raised it is
 * answered (requests the node took before it stopped may still finish: they say nothing), or
 * a probe started after it succeeds; a node suspected again and again without answering a
 * request in between waits longer each time before a probe may end it (health.cooldown_ms
 * doubling, up to max_cooldown_ms), so a node whose probes answer while its requests hang
 * costs a request now and then, not a flood.
 *
 * Lock-free: atomics written by any worker and the health thread. */
#ifndef TOLLGATE_STUCK_H
#define TOLLGATE_STUCK_H

#include "config/config.h"
#include "routing/latency.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

enum stuck_state {
    STUCK_NONE = 0,  /* answering */
    STUCK_SUSPECTED, /* requests in flight, none answered: no new traffic */
};

enum stuck_verdict {
    STUCK_WAIT = 0, /* keep waiting for this attempt's first byte */
    STUCK_GIVE_UP,  /* the node is suspected and this attempt is one it ignores: fail over */
};

struct stuck {
    _Atomic int64_t answered_us; /* the latest start of an attempt that got its first byte */
    atomic_int waiting;          /* attempts in flight with no first byte yet */
    atomic_int state;            /* enum stuck_state */
    _Atomic int64_t since_ms;    /* suspected at */
    _Atomic int64_t trigger_us;  /* the start of the overdue attempt that suspected it */
    atomic_uint streak;          /* suspicions with no answered request between */
    _Atomic uint64_t total;      /* times suspected */
};

/* How long an attempt may wait for its first byte before it counts as overdue, seconds; 0 when
 * the node's latency is not known yet or stuck detection is off (stuck_factor 0). */
double stuck_after_s(const struct latency *lat, const struct config_health *h, bool stream,
                     long out_tokens);
/* The same for target t of a route: a node whose latency is not known yet (new, or never
 * answered) is held to the median of the other nodes serving the model. */
double stuck_after_target(const struct config_route *route, const struct config_target *t,
                          const struct config_health *h, bool stream, long out_tokens);

/* An attempt started (at started_us, clock_mono() in µs) / got its first byte / ended without
 * one. stuck_answered() returns true when that ended a suspicion. */
void stuck_attempt_begin(struct stuck *s);
bool stuck_answered(struct stuck *s, int64_t started_us);
void stuck_attempt_end(struct stuck *s);

/* The verdict on an attempt that started at started_us and has waited waited_s with no first
 * byte; after_s from stuck_after_s() for this attempt, least_s the same for a stream on this
 * node (an attempt on a suspected node gives up only once it waited that long, so a request
 * sent a moment ago is not thrown away on a suspicion that may not last). world_us is
 * stuck_world_answered_us(): a node is suspected only while some node answers what was sent
 * after this attempt (a request or a probe), so a stall of the gateway itself (or of the
 * network, or of a host running every node) suspects no one. *suspected_now is set when
 * this call suspected it. */
enum stuck_verdict stuck_check(struct stuck *s, int64_t started_us, double waited_s, double after_s,
                               double least_s, int64_t world_us, int64_t now_ms,
                               bool *suspected_now);
/* The latest start of an attempt (or a probe) any node answered (process-wide). */
int64_t stuck_world_answered_us(void);
/* A probe that started at started_us was answered: the world is not stalled. */
void stuck_world_probe_ok(int64_t started_us);

/* A probe that started at probe_started_ms answered well: true when it ended a suspicion. */
bool stuck_probe_ok(struct stuck *s, const struct config_health *h, int64_t probe_started_ms,
                    int64_t now_ms);

bool stuck_suspected(const struct stuck *s);

#endif

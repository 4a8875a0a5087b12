/* Request coalescing across workers: a process-wide table of the cacheable misses being
 * answered right now, by cache key.
 *
 * The first miss for a key leads; identical ones that arrive while it is answered, on any
 * worker, follow it and wait. When the leader lands (its answer stored, or failed), every
 * follower is posted the answer (or NULL: go on alone) through a callback the caller gives,
 * which hands it to the follower's own worker (gateway/phase_cache.c uses a mailbox and an
 * ev_async per worker). A landed answer stays in the table a little longer (the caller says
 * how long), so an identical miss that comes just after the landing, on a worker whose own
 * cache does not hold it yet, gets it too instead of asking a backend again. The table is
 * striped by key and touched only by cacheable misses.
 * Joining and leaving are O(1) (the follower owns its list node); landing is O(followers),
 * and posts happen with no lock held. */
#ifndef TOLLGATE_FLIGHT_H
#define TOLLGATE_FLIGHT_H

#include "base/list.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum flight_role {
    FLIGHT_ALONE = 0, /* neither: no flight to join and may not lead one (or out of memory) */
    FLIGHT_LEAD,
    FLIGHT_FOLLOW,
    FLIGHT_LANDED, /* the answer landed a moment ago: *landed holds a copy */
};

/* A landed answer handed to a late joiner: `text` is the caller's to free. */
struct flight_landed {
    char *text;
    size_t len;
    double cost_usd;
    int64_t landed_ms; /* when it landed (for Cache-Control: max-age) */
};

struct flight;

/* A follower's place in a flight, owned by the follower (embedded in its request). Its
 * fields belong to the table while it follows: read them only through this API. */
struct flight_waiter {
    uint64_t token;
    void *target;
    unsigned stripe;
    struct flight *flight; /* NULL once landed or left */
    struct list link;      /* on the flight's waiters */
};

/* Delivers a landed flight's answer to one follower: `target` and `token` as the follower
 * joined with; `text` (not NUL-terminated, valid during the call) is NULL when the leader
 * had no answer to share. Called without any lock held. */
typedef void (*flight_post_fn)(void *target, uint64_t token, const char *text, size_t len,
                               double cost_usd);

/* Joins the flight for `key` as a follower through `w` (when may_follow and one exists) or
 * starts one as its leader (when may_lead and none exists). `token` names the request,
 * unique in the process; `target` is where its answer goes (its worker). When may_follow and
 * the flight landed with an answer less than its linger ago, that answer is copied into
 * *landed (FLIGHT_LANDED; FLIGHT_ALONE when the copy cannot be made). `now_ms` is
 * clock_mono_ms(). */
enum flight_role flight_join(const unsigned char key[32], uint64_t token, void *target,
                             bool may_follow, bool may_lead, int64_t now_ms,
                             struct flight_waiter *w, struct flight_landed *landed);

/* A follower stops waiting (its wait is over, or it is gone). Nothing happens if its flight
 * landed already (the post, if not yet handled, finds the follower gone and is dropped).
 * After it returns, the table no longer refers to `w`. */
void flight_leave(struct flight_waiter *w);

/* The leader ends its flight: each follower gets `text` (NULL: none) through `post`. With
 * an answer and linger_ms > 0, a copy stays for late joiners until now_ms + linger_ms (while
 * all lingering answers together stay under FLIGHT_LINGER_MAX_BYTES). */
void flight_land(const unsigned char key[32], uint64_t leader_token, const char *text, size_t len,
                 double cost_usd, flight_post_fn post, int64_t now_ms, int64_t linger_ms);

/* What all lingering answers may hold together. */
#define FLIGHT_LINGER_MAX_BYTES (32u << 20)

/* Followers waiting now, all flights together (tests and metrics). */
size_t flight_waiting(void);

#endif

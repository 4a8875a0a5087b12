#include "gateway/flight.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FLIGHT_STRIPES 64

struct flight_waiter {
    uint64_t token;
    void *target;
    struct flight_waiter *next;
};

struct flight {
    unsigned char key[32];
    uint64_t leader;
    struct flight_waiter *waiters;
    struct flight *next;
};

static struct {
    pthread_mutex_t lock;
    struct flight *head;
} flight_stripes[FLIGHT_STRIPES] = {
    [0 ... FLIGHT_STRIPES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER},
};

static _Atomic size_t flight_waiters;

static unsigned stripe_of(const unsigned char key[32])
{
    return key[0] % FLIGHT_STRIPES; /* the key is a SHA-256: any byte is uniform */
}

static struct flight **find(struct flight **head, const unsigned char key[32])
{
    while (*head && memcmp((*head)->key, key, 32))
        head = &(*head)->next;
    return head;
}

enum flight_role flight_join(const unsigned char key[32], uint64_t token, void *target,
                             bool may_follow, bool may_lead)
{
    unsigned s = stripe_of(key);
    enum flight_role role = FLIGHT_ALONE;
    pthread_mutex_lock(&flight_stripes[s].lock);
    struct flight **slot = find(&flight_stripes[s].head, key);
    if (*slot && may_follow) {
        struct flight_waiter *wt = malloc(sizeof *wt);
        if (wt) {
            *wt = (struct flight_waiter){.token = token, .target = target,
                                         .next = (*slot)->waiters};
            (*slot)->waiters = wt;
            atomic_fetch_add_explicit(&flight_waiters, 1, memory_order_relaxed);
            role = FLIGHT_FOLLOW;
        }
    } else if (!*slot && may_lead) {
        struct flight *f = calloc(1, sizeof *f);
        if (f) {
            memcpy(f->key, key, 32);
            f->leader = token;
            *slot = f;
            role = FLIGHT_LEAD;
        }
    }
    pthread_mutex_unlock(&flight_stripes[s].lock);
    return role;
}

void flight_leave(const unsigned char key[32], uint64_t token)
{
    unsigned s = stripe_of(key);
    struct flight_waiter *gone = NULL;
    pthread_mutex_lock(&flight_stripes[s].lock);
    struct flight *f = *find(&flight_stripes[s].head, key);
    for (struct flight_waiter **p = f ? &f->waiters : NULL; p && *p; p = &(*p)->next)
        if ((*p)->token == token) {
            gone = *p;
            *p = gone->next;
            break;
        }
    pthread_mutex_unlock(&flight_stripes[s].lock);
    if (gone)
        atomic_fetch_sub_explicit(&flight_waiters, 1, memory_order_relaxed);
    free(gone);
}

void flight_land(const unsigned char key[32], uint64_t leader_token, const char *text, size_t len,
                 double cost_usd, flight_post_fn post)
{
    unsigned s = stripe_of(key);
    struct flight *f = NULL;
    pthread_mutex_lock(&flight_stripes[s].lock);
    struct flight **slot = find(&flight_stripes[s].head, key);
    if (*slot && (*slot)->leader == leader_token) {
        f = *slot;
        *slot = f->next;
    }
    pthread_mutex_unlock(&flight_stripes[s].lock);
    if (!f)
        return;
    for (struct flight_waiter *next, *wt = f->waiters; wt; wt = next) {
        next = wt->next;
        atomic_fetch_sub_explicit(&flight_waiters, 1, memory_order_relaxed);
        post(wt->target, wt->token, text, len, cost_usd);
        free(wt);
    }
    free(f);
}

size_t flight_waiting(void)
{
    return atomic_load_explicit(&flight_waiters, memory_order_relaxed);
}

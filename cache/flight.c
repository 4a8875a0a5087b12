#include "cache/flight.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FLIGHT_STRIPES 64

struct flight {
    unsigned char key[32];
    uint64_t leader;
    struct list waiters; /* of struct flight_waiter, newest first */
    size_t n_waiters;
    struct flight *next;
    /* Landed with an answer: kept for late joiners until linger_until_ms. */
    char *text;
    size_t len;
    double cost_usd;
    int64_t landed_ms, linger_until_ms;
};

static struct {
    pthread_mutex_t lock;
    struct flight *head;
} flight_stripes[FLIGHT_STRIPES] = {
    [0 ... FLIGHT_STRIPES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER},
};

static _Atomic size_t flight_waiters;
static _Atomic size_t flight_linger_bytes;

static void flight_free(struct flight *f)
{
    if (f && f->text)
        atomic_fetch_sub_explicit(&flight_linger_bytes, f->len, memory_order_relaxed);
    if (f)
        free(f->text);
    free(f);
}

/* Lingering answers whose time is up go (the caller holds the stripe's lock). */
static void purge(struct flight **head, int64_t now_ms)
{
    while (*head) {
        struct flight *f = *head;
        if (f->text && now_ms >= f->linger_until_ms) {
            *head = f->next;
            flight_free(f);
        } else {
            head = &f->next;
        }
    }
}

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
                             bool may_follow, bool may_lead, int64_t now_ms,
                             struct flight_waiter *w, struct flight_landed *landed)
{
    unsigned s = stripe_of(key);
    enum flight_role role = FLIGHT_ALONE;
    pthread_mutex_lock(&flight_stripes[s].lock);
    purge(&flight_stripes[s].head, now_ms);
    struct flight **slot = find(&flight_stripes[s].head, key);
    if (*slot && (*slot)->text) {
        struct flight *f = *slot;
        if (may_follow && (landed->text = malloc(f->len ? f->len : 1))) {
            memcpy(landed->text, f->text, f->len);
            landed->len = f->len;
            landed->cost_usd = f->cost_usd;
            landed->landed_ms = f->landed_ms;
            role = FLIGHT_LANDED;
        }
    } else if (*slot && may_follow) {
        struct flight *f = *slot;
        *w = (struct flight_waiter){.token = token, .target = target, .stripe = s, .flight = f};
        list_push_head(&f->waiters, &w->link);
        f->n_waiters++;
        atomic_fetch_add_explicit(&flight_waiters, 1, memory_order_relaxed);
        role = FLIGHT_FOLLOW;
    } else if (!*slot && may_lead) {
        struct flight *f = calloc(1, sizeof *f);
        if (f) {
            memcpy(f->key, key, 32);
            f->leader = token;
            list_init(&f->waiters);
            *slot = f;
            role = FLIGHT_LEAD;
        }
    }
    pthread_mutex_unlock(&flight_stripes[s].lock);
    return role;
}

void flight_leave(struct flight_waiter *w)
{
    pthread_mutex_lock(&flight_stripes[w->stripe].lock);
    struct flight *f = w->flight;
    if (f) {
        list_unlink(&w->link);
        f->n_waiters--;
        w->flight = NULL;
        atomic_fetch_sub_explicit(&flight_waiters, 1, memory_order_relaxed);
    }
    pthread_mutex_unlock(&flight_stripes[w->stripe].lock);
}

void flight_land(const unsigned char key[32], uint64_t leader_token, const char *text, size_t len,
                 double cost_usd, flight_post_fn post, int64_t now_ms, int64_t linger_ms)
{
    unsigned s = stripe_of(key);
    struct {
        uint64_t token;
        void *target;
    } *to = NULL;
    size_t n = 0;
    struct flight *f = NULL;
    pthread_mutex_lock(&flight_stripes[s].lock);
    purge(&flight_stripes[s].head, now_ms);
    struct flight **slot = find(&flight_stripes[s].head, key);
    if (*slot && !(*slot)->text && (*slot)->leader == leader_token) {
        f = *slot;
        *slot = f->next;
        /* The waiters live in their followers' requests, which may end as soon as the lock
         * is released: take what the posts need now and let go of every node. */
        to = f->n_waiters ? malloc(f->n_waiters * sizeof *to) : NULL;
        struct list *node, *tmp;
        LIST_FOR_EACH_SAFE (node, tmp, &f->waiters) {
            struct flight_waiter *w = LIST_ENTRY(node, struct flight_waiter, link);
            if (to) {
                to[n].token = w->token;
                to[n].target = w->target;
                n++;
            }
            w->flight = NULL; /* without memory for the list, they wait out their time */
            list_unlink(&w->link);
        }
        atomic_fetch_sub_explicit(&flight_waiters, f->n_waiters, memory_order_relaxed);
        f->n_waiters = 0;
        /* Kept for late joiners when it fits; its slot (now empty) goes back in the table. */
        if (text && linger_ms > 0 &&
            atomic_fetch_add_explicit(&flight_linger_bytes, len, memory_order_relaxed) + len <=
                FLIGHT_LINGER_MAX_BYTES &&
            (f->text = malloc(len ? len : 1))) {
            memcpy(f->text, text, len);
            f->len = len;
            f->cost_usd = cost_usd;
            f->landed_ms = now_ms;
            f->linger_until_ms = now_ms + linger_ms;
            f->next = flight_stripes[s].head;
            flight_stripes[s].head = f;
            f = NULL;
        } else if (text && linger_ms > 0) {
            atomic_fetch_sub_explicit(&flight_linger_bytes, len, memory_order_relaxed);
        }
    }
    pthread_mutex_unlock(&flight_stripes[s].lock);
    for (size_t i = 0; i < n; i++)
        post(to[i].target, to[i].token, text, len, cost_usd);
    free(to);
    flight_free(f);
}

size_t flight_waiting(void)
{
    return atomic_load_explicit(&flight_waiters, memory_order_relaxed);
}

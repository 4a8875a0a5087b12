#include "tenancy/keycache.h"

#include "base/list.h"

#include <stdlib.h>
#include <string.h>

struct keycache_node {
    struct keycache_entry e;
    struct keycache_node *hnext; /* hash chain */
    struct list lru;             /* on the cache's LRU list, most recent first */
    struct list unknown;         /* an unknown key: on the list of those, newest first */
    bool stale;                  /* past its time whatever its age (keycache_clear) */
};

struct keycache {
    struct keycache_node **buckets;
    size_t n_buckets; /* a power of two */
    size_t size, capacity;
    size_t n_unknown, unknown_cap; /* entries for keys Redis does not know, and their bound */
    int64_t ttl_ms, negative_ttl_ms;
    struct list lru;
    struct list unknown; /* oldest last: past negative_ttl_ms they go (reap_unknown) */
};

static size_t bucket_of(const struct keycache *c, const unsigned char d[32])
{
    uint64_t h; /* the digest is already uniformly random */
    memcpy(&h, d, sizeof h);
    return (size_t)h & (c->n_buckets - 1);
}

struct keycache *keycache_new(size_t capacity, int64_t ttl_ms, int64_t negative_ttl_ms)
{
    struct keycache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->n_buckets = 64;
    while (c->n_buckets < capacity)
        c->n_buckets *= 2;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->capacity = capacity ? capacity : 1;
    c->unknown_cap = c->capacity / 4 ? c->capacity / 4 : 1;
    c->ttl_ms = ttl_ms;
    c->negative_ttl_ms = negative_ttl_ms;
    list_init(&c->lru);
    list_init(&c->unknown);
    return c;
}

static struct keycache_node **find_slot(struct keycache *c, const unsigned char d[32])
{
    struct keycache_node **p = &c->buckets[bucket_of(c, d)];
    while (*p && memcmp((*p)->e.digest, d, 32))
        p = &(*p)->hnext;
    return p;
}

static void node_remove(struct keycache *c, struct keycache_node **slot)
{
    struct keycache_node *n = *slot;
    *slot = n->hnext;
    list_unlink(&n->lru);
    if (list_linked(&n->unknown)) {
        list_unlink(&n->unknown);
        c->n_unknown--;
    }
    free(n->e.models);
    free(n);
    c->size--;
}

const struct keycache_entry *keycache_get(struct keycache *c, const unsigned char digest[32],
                                          int64_t now_ms, bool allow_stale)
{
    struct keycache_node *n = *find_slot(c, digest);
    if (!n)
        return NULL;
    int64_t ttl = n->e.known ? c->ttl_ms : c->negative_ttl_ms;
    if (!allow_stale && (n->stale || now_ms - n->e.fetched_ms > ttl))
        return NULL;
    list_unlink(&n->lru);
    list_push_head(&c->lru, &n->lru);
    return &n->e;
}

static size_t models_len(const char *m)
{
    size_t n = 0;
    while (m[n])
        n += strlen(m + n) + 1;
    return n + 1;
}

static struct keycache_node *oldest_unknown(const struct keycache *c)
{
    return LIST_ENTRY(c->unknown.prev, struct keycache_node, unknown);
}

/* Entries for unknown keys are only worth their negative_ttl_ms (a stale one is no outage
 * fallback: an unknown key during an outage gets 503, not 401), so they go when it is over,
 * and their number has a bound of its own: a flood of random keys, which is all they come
 * from, neither holds memory for long nor pushes the keys of real callers out. */
static void reap_unknown(struct keycache *c, int64_t now_ms, size_t room)
{
    while (!list_empty(&c->unknown) &&
           (c->n_unknown + room > c->unknown_cap ||
            now_ms - oldest_unknown(c)->e.fetched_ms > c->negative_ttl_ms))
        node_remove(c, find_slot(c, oldest_unknown(c)->e.digest));
}

int keycache_put(struct keycache *c, const struct keycache_entry *e)
{
    struct keycache_node **slot = find_slot(c, e->digest);
    if (*slot)
        node_remove(c, slot);
    reap_unknown(c, e->fetched_ms, e->known ? 0 : 1);
    while (c->size >= c->capacity && !list_empty(&c->lru))
        node_remove(c, find_slot(c, LIST_ENTRY(c->lru.prev, struct keycache_node, lru)->e.digest));
    struct keycache_node *n = calloc(1, sizeof *n);
    if (!n)
        return -1;
    n->e = *e;
    n->e.models = NULL;
    if (e->models) {
        size_t len = models_len(e->models);
        n->e.models = malloc(len);
        if (!n->e.models) {
            free(n);
            return -1;
        }
        memcpy(n->e.models, e->models, len);
    }
    slot = find_slot(c, e->digest);
    n->hnext = *slot;
    *slot = n;
    list_push_head(&c->lru, &n->lru);
    if (!e->known) {
        list_push_head(&c->unknown, &n->unknown);
        c->n_unknown++;
    }
    c->size++;
    return 0;
}

void keycache_evict(struct keycache *c, const unsigned char digest[32])
{
    struct keycache_node **slot = find_slot(c, digest);
    if (*slot)
        node_remove(c, slot);
}

void keycache_clear(struct keycache *c)
{
    for (struct list *node = c->lru.next; node != &c->lru; node = node->next)
        LIST_ENTRY(node, struct keycache_node, lru)->stale = true;
}

size_t keycache_size(const struct keycache *c)
{
    return c->size;
}

void keycache_free(struct keycache *c)
{
    if (!c)
        return;
    while (!list_empty(&c->lru))
        node_remove(c, find_slot(c, LIST_ENTRY(c->lru.next, struct keycache_node, lru)->e.digest));
    free(c->buckets);
    free(c);
}

bool keycache_allows(const char *models, const char *model)
{
    if (!models)
        return true;
    for (const char *m = models; *m; m += strlen(m) + 1)
        if (!strcmp(m, model))
            return true;
    return false;
}

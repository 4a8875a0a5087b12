#include "gateway/cache.h"

#include "gateway/auth.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cache_node {
    struct cache_entry e;
    struct cache_node *hnext;
    struct cache_node *prev, *next; /* LRU, most recent first */
};

struct cache {
    struct cache_node **buckets;
    size_t n_buckets;
    size_t bytes, max_bytes;
    struct cache_node *head, *tail;
};

struct cache *cache_new(size_t max_bytes)
{
    struct cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->n_buckets = 4096;
    c->buckets = calloc(c->n_buckets, sizeof *c->buckets);
    if (!c->buckets) {
        free(c);
        return NULL;
    }
    c->max_bytes = max_bytes;
    return c;
}

static size_t node_bytes(const struct cache_node *n)
{
    return sizeof *n + n->e.len;
}

static struct cache_node **slot_of(struct cache *c, const unsigned char key[32])
{
    uint64_t h;
    memcpy(&h, key, sizeof h);
    struct cache_node **p = &c->buckets[h & (c->n_buckets - 1)];
    while (*p && memcmp((*p)->e.key, key, 32))
        p = &(*p)->hnext;
    return p;
}

static void lru_unlink(struct cache *c, struct cache_node *n)
{
    if (n->prev)
        n->prev->next = n->next;
    else
        c->head = n->next;
    if (n->next)
        n->next->prev = n->prev;
    else
        c->tail = n->prev;
    n->prev = n->next = NULL;
}

static void lru_push(struct cache *c, struct cache_node *n)
{
    n->next = c->head;
    if (c->head)
        c->head->prev = n;
    c->head = n;
    if (!c->tail)
        c->tail = n;
}

static void node_remove(struct cache *c, struct cache_node **slot)
{
    struct cache_node *n = *slot;
    *slot = n->hnext;
    lru_unlink(c, n);
    c->bytes -= node_bytes(n);
    free(n->e.body);
    free(n);
}

const struct cache_entry *cache_get(struct cache *c, const unsigned char key[32], int64_t now_ms,
                                    int64_t max_age_ms)
{
    struct cache_node **slot = slot_of(c, key);
    struct cache_node *n = *slot;
    if (!n)
        return NULL;
    if (now_ms >= n->e.expires_ms) {
        node_remove(c, slot);
        return NULL;
    }
    if (max_age_ms >= 0 && now_ms - n->e.stored_ms > max_age_ms)
        return NULL;
    lru_unlink(c, n);
    lru_push(c, n);
    return &n->e;
}

int cache_put(struct cache *c, const unsigned char key[32], const char *body, size_t len,
              const char *backend, double cost_usd, int64_t now_ms, int64_t ttl_ms)
{
    struct cache_node **slot = slot_of(c, key);
    if (*slot)
        node_remove(c, slot);
    if (sizeof(struct cache_node) + len > c->max_bytes)
        return -1;
    while (c->tail && c->bytes + sizeof(struct cache_node) + len > c->max_bytes)
        node_remove(c, slot_of(c, c->tail->e.key));
    struct cache_node *n = calloc(1, sizeof *n);
    if (!n || !(n->e.body = malloc(len + 1))) {
        free(n);
        return -1;
    }
    memcpy(n->e.body, body, len);
    n->e.body[len] = '\0';
    n->e.len = len;
    memcpy(n->e.key, key, 32);
    snprintf(n->e.backend, sizeof n->e.backend, "%s", backend ? backend : "");
    n->e.cost_usd = cost_usd;
    n->e.stored_ms = now_ms;
    n->e.expires_ms = now_ms + ttl_ms;
    slot = slot_of(c, key);
    n->hnext = *slot;
    *slot = n;
    lru_push(c, n);
    c->bytes += node_bytes(n);
    return 0;
}

size_t cache_bytes(const struct cache *c)
{
    return c->bytes;
}

void cache_free(struct cache *c)
{
    if (!c)
        return;
    while (c->head)
        node_remove(c, slot_of(c, c->head->e.key));
    free(c->buckets);
    free(c);
}

/* Integral reals become integers (1.0 and 1 ask the same), recursively. */
static void normalise_numbers(json_t *v)
{
    const char *k;
    json_t *child;
    size_t i;
    if (json_is_object(v)) {
        void *tmp;
        json_object_foreach_safe(v, tmp, k, child)
        {
            double d = json_is_real(child) ? json_real_value(child) : NAN;
            if (isfinite(d) && d == floor(d) && fabs(d) < 9e15)
                json_object_set_new(v, k, json_integer((json_int_t)d));
            else
                normalise_numbers(child);
        }
    } else if (json_is_array(v)) {
        json_array_foreach(v, i, child)
        {
            double d = json_is_real(child) ? json_real_value(child) : NAN;
            if (isfinite(d) && d == floor(d) && fabs(d) < 9e15)
                json_array_set_new(v, i, json_integer((json_int_t)d));
            else
                normalise_numbers(child);
        }
    }
}

int cache_key(const char *route, const char *model, const char *scope, json_t *body,
              unsigned char out[32])
{
    json_t *copy = json_deep_copy(body);
    if (!copy)
        return -1;
    /* Delivery details, not the question: a stream and a whole answer share an entry. */
    json_object_del(copy, "stream");
    json_object_del(copy, "stream_options");
    json_object_del(copy, "user");
    normalise_numbers(copy);
    char *text = json_dumps(copy, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(copy);
    if (!text)
        return -1;
    size_t lr = strlen(route), lm = strlen(model), ls = strlen(scope), lt = strlen(text);
    char *all = malloc(lr + lm + ls + lt + 3);
    if (!all) {
        free(text);
        return -1;
    }
    char *p = all;
    memcpy(p, route, lr + 1); /* NUL-separated, so no field can run into the next */
    p += lr + 1;
    memcpy(p, model, lm + 1);
    p += lm + 1;
    memcpy(p, scope, ls + 1);
    p += ls + 1;
    memcpy(p, text, lt);
    auth_sha256(all, lr + lm + ls + lt + 3, out);
    free(all);
    free(text);
    return 0;
}

bool cache_deterministic(json_t *body)
{
    json_t *t = json_object_get(body, "temperature");
    json_t *seed = json_object_get(body, "seed");
    return (json_is_number(t) && json_number_value(t) == 0) || json_is_integer(seed);
}

#include "cache/cache.h"

#include "base/digest.h"
#include "base/list.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct cache_node {
    struct cache_entry e;
    struct cache_node *hnext;
    struct list lru; /* on the cache's LRU list, most recent first */
};

struct cache {
    struct cache_node **buckets;
    size_t n_buckets;
    size_t bytes, max_bytes;
    struct list lru;
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
    list_init(&c->lru);
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

static void node_remove(struct cache *c, struct cache_node **slot)
{
    struct cache_node *n = *slot;
    *slot = n->hnext;
    list_unlink(&n->lru);
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
    list_unlink(&n->lru);
    list_push_head(&c->lru, &n->lru);
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
    while (!list_empty(&c->lru) && c->bytes + sizeof(struct cache_node) + len > c->max_bytes)
        node_remove(c, slot_of(c, LIST_ENTRY(c->lru.prev, struct cache_node, lru)->e.key));
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
    list_push_head(&c->lru, &n->lru);
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
    while (!list_empty(&c->lru))
        node_remove(c, slot_of(c, LIST_ENTRY(c->lru.next, struct cache_node, lru)->e.key));
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
        json_array_foreach (v, i, child) {
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
    digest_sha256(all, lr + lm + ls + lt + 3, out);
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

/* ---- streamed answers ------------------------------------------------------------------- */

void cache_capture_init(struct cache_capture *c, bool chat, size_t max_bytes)
{
    *c = (struct cache_capture){.chat = chat, .max_bytes = max_bytes};
}

void cache_capture_free(struct cache_capture *c)
{
    json_decref(c->doc);
    c->doc = NULL;
}

static void capture_fail(struct cache_capture *c)
{
    c->failed = true;
    cache_capture_free(c);
}

/* Text deltas are kept as pieces under "\x01<key>" and joined once, at the end
 * (capture_join): appending to a growing string at every event would copy it each time. */
#define CAPTURE_PIECES '\x01'

/* Adds a string delta to the pieces of obj[key]. */
static int capture_append(struct cache_capture *c, json_t *obj, const char *key, json_t *delta)
{
    if (!delta || json_is_null(delta))
        return 0;
    if (!json_is_string(delta))
        return -1;
    c->bytes += json_string_length(delta);
    if (c->bytes > c->max_bytes)
        return -1;
    char pkey[64];
    if ((size_t)snprintf(pkey, sizeof pkey, "%c%s", CAPTURE_PIECES, key) >= sizeof pkey)
        return -1;
    json_t *pieces = json_object_get(obj, pkey);
    if (!pieces) {
        pieces = json_array();
        if (json_object_set_new(obj, pkey, pieces))
            return -1;
    }
    return json_array_append(pieces, delta);
}

/* Replaces the piece lists of one object the capture built by the texts they make. */
static int capture_join_pieces(json_t *obj)
{
    const char *k;
    json_t *e;
    void *tmp;
    json_object_foreach_safe(obj, tmp, k, e)
    {
        /* A text set by this loop may come round again: only lists are pieces. */
        if (k[0] != CAPTURE_PIECES || !json_is_array(e))
            continue;
        size_t len = 0, i;
        json_t *piece;
        json_array_foreach (e, i, piece)
            len += json_string_length(piece);
        char *text = malloc(len + 1);
        if (!text)
            return -1;
        size_t at = 0;
        json_array_foreach (e, i, piece) {
            memcpy(text + at, json_string_value(piece), json_string_length(piece));
            at += json_string_length(piece);
        }
        int rc = json_object_set_new(obj, k + 1, json_stringn_nocheck(text, len));
        free(text);
        if (rc || json_object_del(obj, k))
            return -1;
    }
    return 0;
}

/* Joins the pieces where the capture puts them: in each choice (completions), its message and
 * the functions of its tool calls. Values taken from the node as they were (an id, a tool
 * call's id) are left alone, whatever keys they hold. */
static int capture_join(json_t *doc)
{
    size_t i, k;
    json_t *ch, *call;
    json_array_foreach (json_object_get(doc, "choices"), i, ch) {
        json_t *message = json_object_get(ch, "message");
        if (capture_join_pieces(ch) || capture_join_pieces(message))
            return -1;
        json_array_foreach (json_object_get(message, "tool_calls"), k, call) {
            if (capture_join_pieces(json_object_get(call, "function")))
                return -1;
        }
    }
    return 0;
}

/* A streamed tool call delta merged into message.tool_calls[index]. */
static int capture_tool_call(struct cache_capture *c, json_t *message, json_t *d)
{
    json_t *calls = json_object_get(message, "tool_calls");
    if (!calls) {
        calls = json_array();
        if (json_object_set_new(message, "tool_calls", calls))
            return -1;
    }
    json_t *idx = json_object_get(d, "index");
    size_t k = json_is_integer(idx) ? (size_t)json_integer_value(idx) : json_array_size(calls);
    if (k > 128)
        return -1;
    while (json_array_size(calls) <= k)
        if (json_array_append_new(calls, json_pack("{s:{}}", "function")))
            return -1;
    json_t *call = json_array_get(calls, k);
    json_t *fn = json_object_get(call, "function");
    if (json_object_get(d, "id"))
        json_object_set(call, "id", json_object_get(d, "id"));
    if (json_object_get(d, "type"))
        json_object_set(call, "type", json_object_get(d, "type"));
    json_t *dfn = json_object_get(d, "function");
    if (json_is_object(dfn) &&
        (capture_append(c, fn, "name", json_object_get(dfn, "name")) ||
         capture_append(c, fn, "arguments", json_object_get(dfn, "arguments"))))
        return -1;
    return 0;
}

/* The accumulated choice with this index, created on first sight. */
static json_t *capture_choice(struct cache_capture *c, json_t *choices, json_t *index)
{
    size_t n = json_array_size(choices);
    for (size_t i = 0; i < n; i++) {
        json_t *ch = json_array_get(choices, i);
        if (json_equal(json_object_get(ch, "index"), index))
            return ch;
    }
    if (n >= 128)
        return NULL;
    json_t *ch = c->chat ? json_pack("{s:O, s:{s:s, s:n}, s:n, s:n}", "index", index, "message",
                                     "role", "assistant", "content", "logprobs", "finish_reason")
                         : json_pack("{s:O, s:s, s:n, s:n}", "index", index, "text", "", "logprobs",
                                     "finish_reason");
    if (!ch || json_array_append_new(choices, ch))
        return NULL;
    return ch;
}

static int capture_choice_delta(struct cache_capture *c, json_t *choices, json_t *d)
{
    json_t *index = json_object_get(d, "index");
    if (!json_is_integer(index))
        return -1;
    json_t *lp = json_object_get(d, "logprobs");
    if (lp && !json_is_null(lp))
        return -1; /* not reassembled: such answers are not stored */
    json_t *ch = capture_choice(c, choices, index);
    if (!ch)
        return -1;
    json_t *fin = json_object_get(d, "finish_reason");
    if (json_is_string(fin))
        json_object_set(ch, "finish_reason", fin);
    if (!c->chat)
        return capture_append(c, ch, "text", json_object_get(d, "text"));
    json_t *delta = json_object_get(d, "delta");
    if (!delta || json_is_null(delta))
        return 0;
    if (!json_is_object(delta))
        return -1;
    json_t *message = json_object_get(ch, "message");
    const char *k;
    json_t *v;
    json_object_foreach (delta, k, v) {
        if (!strcmp(k, "role")) {
            if (json_is_string(v))
                json_object_set(message, "role", v);
        } else if (!strcmp(k, "tool_calls")) {
            size_t i;
            json_t *call;
            if (!json_is_array(v) && !json_is_null(v))
                return -1;
            json_array_foreach (v, i, call) {
                if (!json_is_object(call) || capture_tool_call(c, message, call))
                    return -1;
            }
        } else if (json_is_string(v)) {
            /* content, refusal, reasoning_content, ...: text deltas */
            if (capture_append(c, message, k, v))
                return -1;
        } else if (!json_is_null(v)) {
            return -1; /* a delta field we do not know how to merge */
        }
    }
    return 0;
}

void cache_capture_event(struct cache_capture *c, const char *data, size_t len)
{
    if (c->failed)
        return;
    json_t *ev = json_loadb(data, len, 0, NULL);
    json_t *choices = json_object_get(ev, "choices");
    if (!json_is_object(ev) || (choices && !json_is_array(choices) && !json_is_null(choices))) {
        json_decref(ev);
        capture_fail(c);
        return;
    }
    if (!c->doc) {
        c->doc = json_pack("{s:O?, s:s, s:O?, s:O?, s:[]}", "id", json_object_get(ev, "id"),
                           "object", c->chat ? "chat.completion" : "text_completion", "created",
                           json_object_get(ev, "created"), "model", json_object_get(ev, "model"),
                           "choices");
        json_t *fp = json_object_get(ev, "system_fingerprint");
        if (c->doc && fp)
            json_object_set(c->doc, "system_fingerprint", fp);
        if (!c->doc) {
            json_decref(ev);
            capture_fail(c);
            return;
        }
    }
    json_t *acc = json_object_get(c->doc, "choices");
    size_t i;
    json_t *d;
    json_array_foreach (choices, i, d) {
        if (!json_is_object(d) || capture_choice_delta(c, acc, d)) {
            json_decref(ev);
            capture_fail(c);
            return;
        }
    }
    json_decref(ev);
}

char *cache_capture_finish(struct cache_capture *c, json_t *usage, size_t *len)
{
    json_t *choices = json_object_get(c->doc, "choices");
    size_t n = json_array_size(choices);
    bool complete = !c->failed && n > 0;
    for (size_t i = 0; complete && i < n; i++)
        complete = json_is_string(json_object_get(json_array_get(choices, i), "finish_reason"));
    if (!complete) {
        json_decref(usage);
        return NULL;
    }
    if (capture_join(c->doc)) {
        json_decref(usage);
        return NULL;
    }
    if (usage)
        json_object_set_new(c->doc, "usage", usage);
    char *text = json_dumps(c->doc, JSON_COMPACT);
    *len = text ? strlen(text) : 0;
    return text;
}

/* One intrusive doubly-linked list for the whole code base (as h2o's linklist.h).
 *
 * A list is an anchor `struct list` that points at itself when empty; an element embeds a
 * `struct list` node and is found again with LIST_ENTRY(). A node that is not on any list has
 * next == NULL (a zeroed struct is unlinked), so list_linked() tells whether to unlink it.
 * Not thread-safe: a list belongs to one thread (or to whoever holds the lock its owner
 * names). */
#ifndef TOLLGATE_LIST_H
#define TOLLGATE_LIST_H

#include <stdbool.h>
#include <stddef.h>

struct list {
    struct list *prev, *next;
};

#define LIST_ENTRY(node, type, member) ((type *)((char *)(node)-offsetof(type, member)))

/* Iterates over the nodes of `anchor`; `node` may be unlinked (and freed) in the body. */
#define LIST_FOR_EACH_SAFE(node, tmp, anchor)                                                      \
    for ((node) = (anchor)->next, (tmp) = (node)->next; (node) != (anchor);                        \
         (node) = (tmp), (tmp) = (node)->next)

static inline void list_init(struct list *anchor)
{
    anchor->prev = anchor->next = anchor;
}

static inline bool list_empty(const struct list *anchor)
{
    return anchor->next == anchor;
}

static inline bool list_linked(const struct list *node)
{
    return node->next != NULL;
}

/* Inserts `node` before `pos` (before the anchor: at the tail). */
static inline void list_insert(struct list *pos, struct list *node)
{
    node->prev = pos->prev;
    node->next = pos;
    pos->prev->next = node;
    pos->prev = node;
}

static inline void list_push_tail(struct list *anchor, struct list *node)
{
    list_insert(anchor, node);
}

static inline void list_push_head(struct list *anchor, struct list *node)
{
    list_insert(anchor->next, node);
}

/* Takes `node` off its list and marks it unlinked; a no-op for an unlinked node. */
static inline void list_unlink(struct list *node)
{
    if (!node->next)
        return;
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->prev = node->next = NULL;
}

/* The first node, or NULL when empty. */
static inline struct list *list_first(const struct list *anchor)
{
    return anchor->next == anchor ? NULL : anchor->next;
}

#endif

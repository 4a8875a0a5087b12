#include "base/arena.h"

#include <jansson.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Blocks are page-aligned and start with a magic number and their own address, which is how
 * a free tells an arena piece (nothing to do) from a malloc'd one (free it): the page of any
 * pointer malloc returned is mapped, so reading its first bytes is safe, and heap data that
 * happened to hold both values would only cost a leak. malloc'd pieces have no header, so
 * what jansson returns to callers (json_dumps) is freed with free() as usual. */
#define ARENA_MAGIC 0x746f6c6c61726e61ull /* "tollarna" */
#define ARENA_CACHE_MAX 32                /* blocks a thread keeps for its next requests */
/* An arena that grew past this many blocks (a body of many small values) asks for its memory
 * to go back to the system, not only to malloc: without it the freed blocks stay resident,
 * scattered among live allocations where malloc cannot trim them. The trim itself is the
 * thread's owner's to do, off the request path (arena_take_trim). */
#define ARENA_TRIM_BLOCKS 256

struct arena_block {
    uint64_t magic;
    struct arena_block *self;
    struct arena_block *next;
    uint64_t pad;
    unsigned char data[];
};

/* An arena piece's header: its size, for yajl's realloc. */
struct piece {
    uint64_t size;
    uint64_t pad;
};

#define BLOCK_DATA (ARENA_BLOCK_BYTES - sizeof(struct arena_block))

static __thread struct arena *current;
static __thread struct arena_block *cache;
static __thread bool trim_wanted;
static __thread unsigned n_cached;

/* A thread's cached blocks are freed when it exits. */
static pthread_key_t cache_key;
static pthread_once_t cache_key_once = PTHREAD_ONCE_INIT;

static void cache_free(void *unused)
{
    (void)unused;
    while (cache) {
        struct arena_block *b = cache;
        cache = b->next;
        b->magic = 0;
        free(b);
    }
    n_cached = 0;
}

static void cache_key_make(void)
{
    pthread_key_create(&cache_key, cache_free);
}

static void *arena_piece(struct arena *a, size_t n)
{
    if (n >= ARENA_MAX_PIECE)
        return malloc(n ? n : 1);
    size_t need = sizeof(struct piece) + ((n + 15) & ~(size_t)15);
    if (!a->blocks || a->used + need > BLOCK_DATA) {
        struct arena_block *b = cache;
        if (b) {
            cache = b->next;
            n_cached--;
        } else if (!(b = aligned_alloc(ARENA_BLOCK_BYTES, ARENA_BLOCK_BYTES))) {
            return NULL;
        }
        b->magic = ARENA_MAGIC;
        b->self = b;
        b->next = a->blocks;
        a->blocks = b;
        a->used = 0;
    }
    struct piece *p = (struct piece *)(a->blocks->data + a->used);
    a->used += need;
    p->size = n;
    return p + 1;
}

/* Reads the start of the page a heap pointer lies in (always mapped: arena blocks are one
 * page), which AddressSanitizer and ThreadSanitizer would report as a use after free. */
__attribute__((no_sanitize("address", "thread"))) static bool in_arena(const void *ptr)
{
    const struct arena_block *b =
        (const struct arena_block *)((uintptr_t)ptr & ~(uintptr_t)(ARENA_BLOCK_BYTES - 1));
    return b->magic == ARENA_MAGIC && b->self == b;
}

static void piece_free(void *ptr)
{
    if (ptr && !in_arena(ptr))
        free(ptr);
    /* An arena piece goes with its arena. */
}

void arena_enter(struct arena *a)
{
    current = a;
}

void arena_leave(void)
{
    current = NULL;
}

void arena_release(struct arena *a)
{
    size_t n = 0;
    while (a->blocks) {
        n++;
        struct arena_block *b = a->blocks;
        a->blocks = b->next;
        if (n_cached < ARENA_CACHE_MAX) {
            if (!cache) {
                /* Only a non-NULL value makes the thread's exit call cache_free. */
                pthread_once(&cache_key_once, cache_key_make);
                pthread_setspecific(cache_key, &cache);
            }
            b->next = cache;
            cache = b;
            n_cached++;
        } else {
            b->magic = 0;
            free(b);
        }
    }
    a->used = 0;
    if (n > ARENA_TRIM_BLOCKS)
        trim_wanted = true;
}

bool arena_take_trim(void)
{
    bool wanted = trim_wanted;
    trim_wanted = false;
    return wanted;
}

bool arena_owns(const struct arena *a, const void *p)
{
    for (const struct arena_block *b = a->blocks; b; b = b->next)
        if ((const char *)p >= (const char *)b &&
            (const char *)p < (const char *)b + ARENA_BLOCK_BYTES)
            return true;
    return false;
}

size_t arena_n_blocks(const struct arena *a)
{
    size_t n = 0;
    for (const struct arena_block *b = a->blocks; b; b = b->next)
        n++;
    return n;
}

/* ---- jansson ------------------------------------------------------------------------------ */

static void *json_piece(size_t n)
{
    return current ? arena_piece(current, n) : malloc(n);
}

/* Before main, so every value jansson ever frees was allocated through json_piece. */
__attribute__((constructor)) static void arena_install(void)
{
    json_set_alloc_funcs(json_piece, piece_free);
}

/* ---- yajl --------------------------------------------------------------------------------- */

static void *yajl_piece(void *ctx, size_t n)
{
    return arena_piece(ctx, n);
}

static void *yajl_repiece(void *ctx, void *ptr, size_t n)
{
    if (!ptr)
        return arena_piece(ctx, n);
    if (!in_arena(ptr))
        return realloc(ptr, n ? n : 1);
    size_t old = ((struct piece *)ptr - 1)->size;
    void *fresh = arena_piece(ctx, n);
    if (fresh)
        memcpy(fresh, ptr, old < n ? old : n);
    return fresh;
}

static void yajl_unpiece(void *ctx, void *ptr)
{
    (void)ctx;
    piece_free(ptr);
}

void arena_yajl_funcs(struct arena *a, yajl_alloc_funcs *out)
{
    out->malloc = yajl_piece;
    out->realloc = yajl_repiece;
    out->free = yajl_unpiece;
    out->ctx = a;
}

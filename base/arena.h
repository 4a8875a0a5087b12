/* Per-request bump allocation for the many small, short-lived pieces of one request: the
 * nodes of its parsed JSON body (jansson) and the state of the scanners reading its answer
 * (yajl). They come from a block the worker thread reuses, and all go at once when the
 * request ends, instead of a malloc and a free each (about thirty pairs per request).
 *
 * jansson's allocator is process-wide, so it is replaced (before main) by one that takes
 * from the arena made current on this thread with arena_enter(), and from malloc otherwise;
 * its free tells the two apart by the block a pointer lies in. Pieces of ARENA_MAX_PIECE
 * bytes or more (long strings) always come from malloc, so an arena stays small whatever
 * the body. Everything taken from an arena must be dropped before arena_release(): for a
 * request body, json_decref() the tree first.
 *
 * An arena belongs to one thread (the worker running the request). */
#ifndef TOLLGATE_ARENA_H
#define TOLLGATE_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <yajl/yajl_common.h>

#define ARENA_BLOCK_BYTES 4096
#define ARENA_MAX_PIECE 512

struct arena_block;

struct arena {
    struct arena_block *blocks; /* the newest first; NULL until the first piece */
    size_t used;                /* bytes taken from the newest block */
};

/* Makes a the current arena of this thread for jansson until arena_leave(). Not nested. */
void arena_enter(struct arena *a);
void arena_leave(void);

/* Returns the arena's blocks to this thread's cache (or to malloc); a is empty again. */
void arena_release(struct arena *a);

/* Whether an arena released on this thread since the last call grew past ARENA_TRIM_BLOCKS,
 * so that malloc_trim() would give pages back; clears it. Called by the thread's owner from a
 * timer, so the trim (milliseconds, up to a second on a fragmented heap) never runs on a
 * request's path. */
bool arena_take_trim(void);

/* yajl allocation functions taking from a (yajl's own API, no thread state). */
void arena_yajl_funcs(struct arena *a, yajl_alloc_funcs *out);

/* Whether p lies in one of a's blocks, and how many blocks a holds (for tests). */
bool arena_owns(const struct arena *a, const void *p);
size_t arena_n_blocks(const struct arena *a);

#endif

/*
 * rng: a fast per-thread pseudo-random generator for ids and fault draws.
 *
 * Not cryptographic. Each thread seeds its own state on first use, so the
 * functions are safe from any thread without a lock.
 */
#ifndef MOCKNODE_RNG_H
#define MOCKNODE_RNG_H

#include <stdint.h>

/* The next 64 random bits of this thread's sequence. */
uint64_t rng_next(void);

/* A uniform double in [0, 1). */
double rng_unit(void);

#endif

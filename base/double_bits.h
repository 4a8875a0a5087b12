/* A double kept in an _Atomic uint64_t as its bits, for figures one thread writes and others
 * read without a lock (prices, smoothed ratios): C11 promises no lock-free atomic double, and
 * a 64-bit integer's loads and stores are lock-free where Tollgate runs. The loads and stores
 * here are relaxed: a reader sees a recent value of that one figure, nothing about the others
 * (publish several together with a version, as routing/backend.c does for prices). */
#ifndef TOLLGATE_DOUBLE_BITS_H
#define TOLLGATE_DOUBLE_BITS_H

#include <stdatomic.h>
#include <stdint.h>
#include <string.h>

/* The bits of d, and the double whose bits they are. */
static inline uint64_t double_bits_of(double d)
{
    uint64_t bits;
    memcpy(&bits, &d, sizeof bits);
    return bits;
}

static inline double double_bits_value(uint64_t bits)
{
    double d;
    memcpy(&d, &bits, sizeof d);
    return d;
}

static inline double double_bits_load(const _Atomic uint64_t *v)
{
    return double_bits_value(atomic_load_explicit(v, memory_order_relaxed));
}

static inline void double_bits_store(_Atomic uint64_t *v, double d)
{
    atomic_store_explicit(v, double_bits_of(d), memory_order_relaxed);
}

#endif

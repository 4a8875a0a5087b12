#include "rng.h"

#include "wake.h"

static _Thread_local uint64_t rng_state;

/* xorshift64*, seeded per thread so threads never share or lock PRNG state. */
uint64_t rng_next(void)
{
    uint64_t x = rng_state;

    if (x == 0) {
        x = wake_now_ns() ^ ((uint64_t)(uintptr_t)&rng_state * 0x9e3779b97f4a7c15ull);
        if (x == 0)
            x = 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    rng_state = x;
    return x * 0x2545f4914f6cdd1dull;
}

double rng_unit(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

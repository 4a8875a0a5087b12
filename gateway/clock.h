/* Monotonic time in seconds, for durations and deadlines: unlike ev_time() (the wall clock),
 * it never jumps when the system clock is set. */
#ifndef TOLLGATE_CLOCK_H
#define TOLLGATE_CLOCK_H

#include <time.h>

static inline double clock_mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif

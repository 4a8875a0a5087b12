/* Runtime state of each backend (in-flight count, counters), shared by all workers and kept
 * across config reloads, looked up by backend name.
 *
 * States are created while a config is loaded (under a mutex, never on the hot path) and
 * never freed, so a pointer to one stays valid for the life of the process. Fields are
 * atomics: workers update them without a lock. */
#ifndef TOLLGATE_BACKEND_H
#define TOLLGATE_BACKEND_H

#include "gateway/config.h"

#include <stdatomic.h>
#include <stdint.h>

struct backend_state {
    char *name;
    atomic_int inflight;
    _Atomic uint64_t requests;
    _Atomic uint64_t failures;
    struct backend_state *next; /* registry list */
};

/* Points every backend of `cfg` at its state, creating the missing ones. 0 or -1 (OOM). */
int backend_attach(struct config *cfg);

#endif

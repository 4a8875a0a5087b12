/* Same-node retries: how long a request waits before it asks the node that just failed it
 * again. Exponential backoff with full jitter, as in AWS's "Exponential Backoff And Jitter"
 * (the n-th wait is uniform between 0 and min(cap, base x 2^(n-1))): retries from many
 * requests spread out instead of coming back in step, and the waits stay short (gRPC's
 * connection backoff caps and jitters its waits the same way). A node that asks for more
 * time than the cap (Retry-After) is not asked again by the same request.
 * Pure arithmetic: no state, no I/O; thread-safe. */
#ifndef TOLLGATE_BACKOFF_H
#define TOLLGATE_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

/* The first retry waits up to this long (seconds), each later one up to twice the one before,
 * never more than BACKOFF_CAP_S. */
#define BACKOFF_BASE_S 0.05
#define BACKOFF_CAP_S 1.0
/* A Retry-After that is not a number of seconds (an HTTP date): taken as "not soon". */
#define BACKOFF_NOT_SOON_MS 86400000L

/* The wait before the n-th retry (n >= 1; 0 is taken as 1) to the same node, in seconds:
 * uniform in [0, min(cap_s, base_s x 2^(n-1))], drawn from `random` (any 64 bits). */
double backoff_delay(unsigned n, double base_s, double cap_s, uint64_t random);

/* A Retry-After header's value in milliseconds: delta-seconds ("2"), or with `in_ms` (the
 * retry-after-ms header OpenAI's SDKs read) milliseconds ("1500", "12.5"). Anything else
 * (an HTTP date, garbage, a negative number) is BACKOFF_NOT_SOON_MS. */
long backoff_retry_after_ms(const char *value, bool in_ms);

#endif

#include "routing/backoff.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>

double backoff_delay(unsigned n, double base_s, double cap_s, uint64_t random)
{
    if (n < 1)
        n = 1;
    /* 2^(n-1) past 2^30 is past any cap worth having: no overflow, no inf. */
    double ceiling = base_s * ldexp(1.0, n > 31 ? 30 : (int)n - 1);
    if (ceiling > cap_s)
        ceiling = cap_s;
    if (!(ceiling > 0))
        return 0;
    /* The top 53 bits as a double in [0, 1). */
    double unit = (double)(random >> 11) / (double)(1ull << 53);
    return unit * ceiling;
}

long backoff_retry_after_ms(const char *value, bool in_ms)
{
    if (!value)
        return BACKOFF_NOT_SOON_MS;
    while (*value == ' ' || *value == '\t')
        value++;
    if (!isdigit((unsigned char)*value))
        return BACKOFF_NOT_SOON_MS; /* a date, a sign, nothing */
    char *end;
    double v = strtod(value, &end);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end || !isfinite(v))
        return BACKOFF_NOT_SOON_MS;
    double ms = in_ms ? v : v * 1000;
    return ms >= (double)BACKOFF_NOT_SOON_MS ? BACKOFF_NOT_SOON_MS : (long)ceil(ms);
}

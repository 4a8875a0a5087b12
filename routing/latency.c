#include "routing/latency.h"

#define RELAXED memory_order_relaxed

static uint64_t load(const _Atomic uint64_t *v)
{
    return atomic_load_explicit(v, RELAXED);
}

static void store(_Atomic uint64_t *v, uint64_t x)
{
    atomic_store_explicit(v, x, RELAXED);
}

void latency_first_byte(struct latency *l, double seconds)
{
    if (!(seconds > 0) || seconds > 3600)
        return;
    uint64_t x = (uint64_t)(seconds * 1e6);
    if (!x)
        x = 1;
    uint64_t srtt = load(&l->ttfb_us);
    if (!srtt) {
        store(&l->ttfb_us, x);
        store(&l->ttfb_dev_us, x / 2);
        store(&l->floor_us, x);
        return;
    }
    uint64_t dev = load(&l->ttfb_dev_us);
    uint64_t diff = x > srtt ? x - srtt : srtt - x;
    store(&l->ttfb_dev_us, (dev * 3 + diff) / 4);
    store(&l->ttfb_us, (srtt * 7 + x) / 8);
    uint64_t floor = load(&l->floor_us);
    if (!floor || x < floor)
        store(&l->floor_us, x);
    else
        store(&l->floor_us, floor + (x - floor) / 128);
}

void latency_answer(struct latency *l, double ttfb_s, double total_s, long tokens)
{
    if (tokens < 4 || !(total_s > 0) || total_s > 3600)
        return;
    double start = ttfb_s > 0 ? ttfb_s : (double)load(&l->ttfb_us) / 1e6;
    double per = (total_s - start) / (double)tokens;
    if (!(per > 0))
        return; /* quicker than the usual first byte: says nothing about the tokens */
    uint64_t x = (uint64_t)(per * 1e9);
    if (!x)
        x = 1;
    uint64_t old = load(&l->token_ns);
    store(&l->token_ns, old ? (old * 7 + x) / 8 : x);
}

double latency_p95_s(const struct latency *l)
{
    uint64_t srtt = load(&l->ttfb_us);
    if (!srtt)
        return 0;
    return (double)(srtt + 2 * load(&l->ttfb_dev_us)) / 1e6;
}

double latency_expect_s(const struct latency *l, bool stream, long out_tokens)
{
    double first = latency_p95_s(l);
    if (stream)
        return first;
    uint64_t tok = load(&l->token_ns);
    if (!tok)
        return 0;
    if (out_tokens < 1)
        out_tokens = 1;
    return first + (double)out_tokens * 1.5 * (double)tok / 1e9;
}

double latency_slowdown(const struct latency *l)
{
    uint64_t srtt = load(&l->ttfb_us), floor = load(&l->floor_us);
    if (!srtt || !floor)
        return 0;
    return (double)srtt / (double)floor;
}

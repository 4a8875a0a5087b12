/* A backend's recent latency, as the routing decisions need it: how long its first byte
 * usually takes (for stuck detection, the learned limit's latency signal and hedging) and how
 * long it takes per output token (what a whole answer should take).
 *
 * First-byte samples come from streams only: a stream's first event says how long the node
 * took to start, while a whole answer's first byte is the whole answer and says more about
 * its length than about the node. The estimators are TCP's (RFC 6298): a smoothed mean with
 * gain 1/8 and a mean deviation with gain 1/4, so mean + 2 deviations stands for a p95. The
 * floor is a baseline: it follows a lower sample at once and a higher one slowly (1/128),
 * so a node that starts queueing shows as mean ÷ floor growing.
 *
 * Lock-free: every field is an atomic, written by any worker; two racing samples may lose
 * one, which only makes an estimate a little older. */
#ifndef TOLLGATE_LATENCY_H
#define TOLLGATE_LATENCY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct latency {
    _Atomic uint64_t ttfb_us;     /* smoothed stream first byte; 0 = nothing measured yet */
    _Atomic uint64_t ttfb_dev_us; /* its mean deviation */
    _Atomic uint64_t floor_us;    /* baseline first byte */
    _Atomic uint64_t token_ns;    /* smoothed time per output token; 0 = nothing measured yet */
};

/* A stream's first event came `seconds` after the attempt started. */
void latency_first_byte(struct latency *l, double seconds);
/* An answer of `tokens` output tokens took `total_s`, its first byte (0 when it was a whole
 * answer) `ttfb_s`: feeds the time per token. Answers under 4 tokens say too little. */
void latency_answer(struct latency *l, double ttfb_s, double total_s, long tokens);

/* The first byte's recent p95 (mean + 2 deviations), seconds; 0 when nothing is known. */
double latency_p95_s(const struct latency *l);
/* When an attempt's first byte should have come by, at the p95: a stream's first event, or a
 * whole answer of up to `out_tokens` tokens (p95 first byte + tokens × 1.5 × time per token).
 * 0 when the node's latency is not known yet. */
double latency_expect_s(const struct latency *l, bool stream, long out_tokens);
/* Recent first byte ÷ baseline (1 = as fast as it gets); 0 when nothing is known. */
double latency_slowdown(const struct latency *l);

#endif

/* The metrics tests' view of a scrape: shards rendered into Prometheus text that must be
 * well-formed exposition, and samples and histograms read back out of it. Shared by
 * tests/unit/test_metrics.c and test_metrics_render.c (linked into every unit test; used by
 * those two).
 *
 * The checks are cmocka assertions: a failing one ends the test, so call them only from a
 * cmocka test (scrape_problem() alone is safe in a forked child). Not thread-safe:
 * scrape_problem() keeps its work in static storage. */
#ifndef TOLLGATE_TESTS_SCRAPE_H
#define TOLLGATE_TESTS_SCRAPE_H

#include "base/buf.h"
#include "metrics/metrics.h"

#include <stdbool.h>
#include <stddef.h>

/* ---- reading the text ---------------------------------------------------------------------- */

/* The line that starts with `series` followed by a space, or NULL. */
const char *scrape_find(const char *text, const char *series);
bool scrape_has(const char *text, const char *series);
/* The value of the sample whose name and labels are exactly `series`; fails when absent. */
double scrape_sample(const char *text, const char *series);
/* Whether any line starts with `prefix`. */
bool scrape_has_line(const char *text, const char *prefix);
/* How many times `needle` occurs in `text`. */
size_t scrape_count(const char *text, const char *needle);

/* NULL when `text` is well-formed text exposition (format 0.0.4) as Tollgate writes it, or a
 * description of the first problem (static storage) with *where at its line. */
const char *scrape_problem(const char *text, const char **where);
/* Fails the test, quoting the line, when scrape_problem() finds one. */
void scrape_assert_valid(const char *text);
/* Runs `promtool check metrics` on the text when promtool is installed (fails the test when
 * it rejects the text); 1 when it ran, 0 when promtool is missing. */
int scrape_promtool(const char *text);

/* ---- histograms ---------------------------------------------------------------------------- */

struct scrape_hist {
    double le[METRICS_HIST_MAX + 2]; /* finite bounds, then +Inf */
    double cum[METRICS_HIST_MAX + 2];
    size_t n; /* buckets including +Inf */
    double sum, count;
};

/* Every line of histogram `name` with exactly the labels `labels` (no braces; "" for none);
 * false when it has no bucket. */
bool scrape_read_hist(const char *text, const char *name, const char *labels,
                      struct scrape_hist *h);
/* Fails unless the histogram has exactly `bounds` then +Inf, buckets cumulative and monotonic,
 * +Inf equal to the count, and matches the observations `obs` (le = less than or equal). */
void scrape_check_hist(const char *text, const char *name, const char *labels, const double *bounds,
                       size_t n_bounds, const double *obs, size_t n_obs);

/* ---- rendering ----------------------------------------------------------------------------- */

/* metrics_render() of the shards into a new malloc'd text (caller frees), checked with
 * scrape_assert_valid(). */
char *scrape_render(struct metrics_shard *const *shards, size_t n);
/* A new shard; fails when there is none. */
struct metrics_shard *scrape_shard(void);
/* metrics_label(); fails on index 0 (table full). */
unsigned scrape_label(enum metrics_label_kind kind, const char *name, const char *name2);

#endif

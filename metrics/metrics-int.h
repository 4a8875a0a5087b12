/* Internal to metrics/: what metrics.c (shards, labels, the tollgate_ series) shares with
 * genai.c (the OpenTelemetry GenAI series). Not for use outside the folder. */
#ifndef TOLLGATE_METRICS_INT_H
#define TOLLGATE_METRICS_INT_H

#include "metrics/metrics.h"

#include <stdbool.h>
#include <stddef.h>

struct metrics_bounds {
    const double *le;
    size_t n;
};

#define METRICS_BOUNDS(a) ((struct metrics_bounds){a, sizeof a / sizeof a[0]})
#define METRICS_OFF(field) offsetof(struct metrics_shard, field)

/* One scrape: the shards it sums and where the text goes (err: a buffer cap was hit). */
struct metrics_render_ctx {
    struct buf *out;
    struct metrics_shard *const *shards;
    size_t n;
    int err;
};

void metrics_hist_observe(struct metrics_hist *h, struct metrics_bounds b, double v);
/* Index i of a table, or 0 (other) past its cap. */
unsigned metrics_clamp(unsigned i, unsigned cap);
/* How many names a label table holds now (index 0, other, included). */
size_t metrics_labels_in_use(enum metrics_label_kind kind);
/* The operation name of a gen_ai operation index. */
const char *metrics_genai_op_name(int op);

void metrics_head(struct metrics_render_ctx *rd, const char *name, const char *type,
                  const char *help);
/* One histogram series at `off` in every shard (labels without braces, "" for none); skipped
 * when empty unless `always`. */
void metrics_hist_render(struct metrics_render_ctx *rd, const char *name, const char *labels,
                         size_t off, struct metrics_bounds bounds, bool always);

/* The gen_ai_* families (genai.c). */
void metrics_genai_observe_tokens(struct metrics_shard *s, enum metrics_route route, unsigned pair,
                                  long input, long output);
void metrics_render_genai(struct metrics_render_ctx *rd);

#endif

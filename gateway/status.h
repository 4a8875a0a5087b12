/* The status page of the admin listener: `GET /` serves one self-contained HTML file
 * (gateway/status.html, built into the binary), which asks for the admin key and then polls
 * `GET /admin/backends` and `GET /admin/status` with it. The page holds no data of its own,
 * so it is served without the key; everything it shows comes from the JSON behind the key.
 *
 * Called on the admin listener's threads; no state but the page's Content-Security-Policy,
 * computed once (thread-safe). */
#ifndef TOLLGATE_STATUS_H
#define TOLLGATE_STATUS_H

#include "config/config.h"
#include "metrics/metrics.h"

#include <jansson.h>
#include <microhttpd.h>
#include <stddef.h>

/* The page as built into the binary (generated from gateway/status.html by the Makefile). */
extern const unsigned char status_html[];
extern const unsigned int status_html_len;

/* Queues the page (for GET or HEAD), with a Content-Security-Policy that allows
 * only the page's own inline script and style (by their SHA-256) and requests to the admin
 * listener itself, and no caching. */
enum MHD_Result status_page(struct MHD_Connection *conn);

/* The Content-Security-Policy of the page (for tests). NULL on OOM. */
const char *status_csp(void);

/* What the page needs beyond /admin/backends, summed over the workers' shards (relaxed
 * loads: a few increments behind at most):
 *   {"totals": {requests, spend_usd, routing_savings_usd, cache_savings_usd, cache_hits,
 *               cache_misses, cache_bypasses, input_tokens, output_tokens, streams, retries,
 *               inflight},
 *    "backends": [{name, health, reason, attempts, failed, rate_limited, spend_usd,
 *                  input_tokens, output_tokens}],
 *    "top_keys": [{name, spend_usd}]}            (at most STATUS_TOP_KEYS, dearest first)
 * Counters run from the start of the process; the page turns them into rates. NULL on OOM. */
#define STATUS_TOP_KEYS 10
json_t *status_json(const struct config *cfg, struct metrics_shard *const *shards, size_t n);

/* Why a backend is in its health state, in a few words for people ("health probes failing
 * (3 in a row)", "failing (5xx, timeouts or bad answers): back in 12 s"). Writes into buf (cut
 * at len) and returns it. */
const char *status_health_reason(const struct config *cfg, const struct config_backend *b,
                                 int64_t now_ms, char *buf, size_t len);

#endif

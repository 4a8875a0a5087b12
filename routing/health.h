/* Background health checks and live prices, on a thread of their own (never a worker):
 * - every `health.interval_ms`, GET {backend url}/models with `health.timeout_ms`; the
 *   result goes to backend_record_probe() (routing/backend.h);
 * - every `prices_refresh_s`, for backends with a `prices_url`, fetch an OpenRouter-style
 *   models document (data[].id, data[].pricing.prompt/.completion in USD per token) and set
 *   the live prices of the models whose upstream name (or name) matches an id.
 * health_* functions are called from the main thread. */
#ifndef TOLLGATE_HEALTH_H
#define TOLLGATE_HEALTH_H

#include "config/config.h"

#include <jansson.h>

struct health;

struct health *health_start(struct config *cfg);
/* Switches to a new config (the backend list may have changed). */
void health_reload(struct health *h, struct config *cfg);
void health_stop(struct health *h);

/* Applies a prices document to a backend's models; returns how many models it priced.
 * Exposed for tests. */
int health_apply_prices(const struct config_backend *b, json_t *doc, long long now_ms);

#endif

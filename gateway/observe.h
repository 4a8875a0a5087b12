/* A finished request in the OpenTelemetry GenAI metrics (metrics/metrics.h's
 * metrics_observe_genai()), called by phase_settle.c. Internal to gateway/. */
#ifndef TOLLGATE_OBSERVE_H
#define TOLLGATE_OBSERVE_H

struct request;

/* The metric label of the model a request asked for when it has no route (refused in
 * admission): the configured model's, or 0 (other) for a name no route has. Never a name
 * the caller made up: the label tables hold configured names only. */
unsigned request_asked_metric_model(const struct request *r);

/* Duration, time to first token and first chunk, by the (backend, model) that answered, or
 * by the model asked (`model`) and the error type. */
void request_observe_genai(const struct request *r, unsigned model, double seconds);

#endif

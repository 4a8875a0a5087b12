/*
 * runtime: the behaviour knobs - fault, pacing, answer length - that flags set
 * at start and POST /_mock/config changes while the node runs.
 *
 * One copy sits under a mutex; requests take a snapshot with runtime_get()
 * and never see a half-applied update. Every function is thread-safe.
 */
#ifndef MOCKNODE_RUNTIME_H
#define MOCKNODE_RUNTIME_H

#include <microhttpd.h>

#include "fault.h"

#define RUNTIME_MAX_TOKENS 100000u
#define RUNTIME_MAX_DELAY_MS 3600000u
#define RUNTIME_MAX_RETRY_AFTER 86400u
#define RUNTIME_MAX_FAULT_COUNT 1000000u

struct mock_req;

/* What POST /_mock/config can change; copied whole into each request. */
struct runtime {
    enum fault fault;
    double fault_rate;
    unsigned ttfb_ms;
    unsigned token_ms;
    unsigned tokens;
    unsigned retry_after_s;
    unsigned fault_count; /* only the next N requests get the fault (fault_limit); 0: all */
};

/* A snapshot of the current knobs; before any runtime_set(), the defaults. */
struct runtime runtime_get(void);

/* Replaces all the knobs at once; the caller has checked them against the limits above. */
void runtime_set(const struct runtime *r);

/*
 * Answers GET /_mock/config with the knobs, and POST by applying the body's
 * keys all or nothing (400 for an unknown key or a bad value, changing none).
 */
enum MHD_Result runtime_reply(struct mock_req *req, const char *method);

#endif

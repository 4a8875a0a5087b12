/*
 * stats: what /_mock/stats reports - request counters and the last /v1 request.
 *
 * Counters are atomics; the last-request snapshot sits under a mutex held only
 * to swap or read it. Every function is safe from any MHD thread.
 */
#ifndef MOCKNODE_STATS_H
#define MOCKNODE_STATS_H

#include <microhttpd.h>

struct mock_req;

/*
 * Counts a /v1 request (req->ep below EP_V1_COUNT) and records it as the last
 * one: method, path, Authorization, x-request-id and a body of up to 64 KiB.
 * Call once the body is in. A failed allocation skips only the snapshot.
 */
void stats_count(struct mock_req *req, const char *method, const char *url);

/* Answers GET /_mock/stats. */
enum MHD_Result stats_reply(struct MHD_Connection *conn);

/* Answers POST /_mock/reset: zeroes the counters and forgets the last request. */
enum MHD_Result stats_reset(struct MHD_Connection *conn);

/* Frees the last-request snapshot; for shutdown, after the daemon has stopped. */
void stats_free(void);

#endif

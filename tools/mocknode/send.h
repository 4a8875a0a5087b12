/*
 * send: puts a planned answer on the wire - a whole body, a paced SSE stream,
 * or a body cut short by close-mid-stream.
 *
 * Runs on the MHD thread of the request's connection. Token pacing parks the
 * connection with wake_suspend_until(), so no MHD thread ever sleeps.
 */
#ifndef MOCKNODE_SEND_H
#define MOCKNODE_SEND_H

#include <microhttpd.h>

struct mock_req;

/*
 * Queues the answer inference.c planned in `req` (req->out, or the stream's
 * prefix and stage) and moves the request to PHASE_SENDING. `req` must live
 * until MHD completes it; streams read from it until then. Call from an MHD
 * callback of req->conn.
 */
enum MHD_Result send_answer(struct mock_req *req);

#endif

/*
 * fault: the failures mocknode can be told to inject, and the ones that
 * replace the answer outright.
 *
 * Which fault is configured lives in runtime.h; each inference request draws
 * its own with fault_draw(). 500, 429 and hang are answered here by
 * fault_reply(); close-mid-stream, invalid-json and inflate-usage shape the
 * answer instead (inference.c plans it, send.c cuts it). All functions are
 * safe from any thread.
 */
#ifndef MOCKNODE_FAULT_H
#define MOCKNODE_FAULT_H

#include <stdbool.h>

#include <microhttpd.h>

struct mock_req;

enum fault {
    FAULT_NONE,
    FAULT_500,
    FAULT_429,
    FAULT_HANG,
    FAULT_CLOSE,
    FAULT_INVALID_JSON,
    FAULT_INFLATE,
    FAULT_COUNT,
};

/* The name --fault and /_mock/config use for `f` ("none", "500", "close-mid-stream", ...). */
const char *fault_name(enum fault f);

/* The fault named `s`, or -1 when there is none by that name. */
int fault_parse(const char *s);

/* The fault one request gets: `f` with probability `rate`, else FAULT_NONE; once the
 * faults allowed by fault_limit() are drawn, always FAULT_NONE (the node recovered). */
enum fault fault_draw(enum fault f, double rate);

/* Only the next `n` faults drawn happen (0: no limit); the count starts again at each call. */
void fault_limit(unsigned n);

/*
 * Answers req->fault when it replaces the answer (500 and 429 at once, hang by
 * parking the connection) and returns true with the MHD result in *ret.
 * Returns false, doing nothing, for every other fault. Call from the access
 * handler of req->conn.
 */
bool fault_reply(struct mock_req *req, unsigned retry_after_s, enum MHD_Result *ret);

#endif

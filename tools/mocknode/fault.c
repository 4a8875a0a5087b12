#include "fault.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "node.h"
#include "reply.h"
#include "req.h"
#include "rng.h"
#include "wake.h"

static const char *const fault_names[FAULT_COUNT] = {
    "none", "500", "429", "hang", "close-mid-stream", "invalid-json", "inflate-usage",
};

const char *fault_name(enum fault f)
{
    return fault_names[f];
}

int fault_parse(const char *s)
{
    for (int i = 0; i < FAULT_COUNT; i++)
        if (strcmp(s, fault_names[i]) == 0)
            return i;
    return -1;
}

/* Faults still to happen before the node recovers; -1: no limit. */
static atomic_long faults_left = -1;

void fault_limit(unsigned n)
{
    atomic_store(&faults_left, n ? (long)n : -1);
}

enum fault fault_draw(enum fault f, double rate)
{
    if (f != FAULT_NONE && rate < 1.0 && !(rng_unit() < rate))
        return FAULT_NONE;
    if (f == FAULT_NONE)
        return f;
    long left = atomic_load(&faults_left);
    while (left >= 0) {
        if (left == 0)
            return FAULT_NONE;
        if (atomic_compare_exchange_weak(&faults_left, &left, left - 1))
            break;
    }
    return f;
}

bool fault_reply(struct mock_req *req, unsigned retry_after_s, enum MHD_Result *ret)
{
    char msg[300];

    switch (req->fault) {
    case FAULT_500:
        snprintf(msg, sizeof(msg), "mocknode %s: injected failure", node_name);
        *ret = reply_error_hdr(req->conn, MHD_HTTP_INTERNAL_SERVER_ERROR, msg, "server_error", NULL,
                               NULL, NULL, NULL);
        return true;
    case FAULT_429: {
        char secs[16];
        snprintf(msg, sizeof(msg), "mocknode %s: rate limit reached", node_name);
        snprintf(secs, sizeof(secs), "%u", retry_after_s);
        *ret = reply_error_hdr(req->conn, MHD_HTTP_TOO_MANY_REQUESTS, msg, "requests", NULL,
                               "rate_limit_exceeded", MHD_HTTP_HEADER_RETRY_AFTER, secs);
        return true;
    }
    case FAULT_HANG: {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        req->phase = PHASE_HANG;
        *ret =
            ci && wake_suspend_hang(&req->hang, req->conn, ci->connect_fd) == 0 ? MHD_YES : MHD_NO;
        return true;
    }
    default:
        return false;
    }
}

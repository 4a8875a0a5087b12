/*
 * reply: queues whole responses on an MHD connection.
 *
 * Every response carries `x-mocknode: NAME`. The queueing functions must be
 * called from an MHD callback of `conn`; they return MHD's result, MHD_NO when
 * the response could not be built (the connection is then dropped). They
 * touch no shared mutable state, so any MHD thread may call them.
 */
#ifndef MOCKNODE_REPLY_H
#define MOCKNODE_REPLY_H

#include <stdbool.h>

#include <jansson.h>
#include <microhttpd.h>

#include "buf.h"

/* Adds `x-mocknode` and, unless NULL, the Content-Type. False when MHD refused one. */
bool reply_add_headers(struct MHD_Response *r, const char *content_type);

/* Queues the contents of `b`, taking them (a failed buffer: MHD_NO), with an optional header. */
enum MHD_Result reply_buf(struct MHD_Connection *conn, unsigned status, const char *content_type,
                          struct buf *b, const char *hname, const char *hvalue);

/* Queues `v` as compact JSON; takes the reference to `v`, even on failure. */
enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, json_t *v);

/* Queues an OpenAI error body of the given type, with an optional extra header. */
enum MHD_Result reply_error_hdr(struct MHD_Connection *conn, unsigned status, const char *message,
                                const char *type, const char *param, const char *code,
                                const char *hname, const char *hvalue);

/* Queues an "invalid_request_error"; NULL param/code become null. */
enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *message,
                            const char *param, const char *code);

/* Queues a 200 with a response built once at start-up (see reply_static_json()). */
enum MHD_Result reply_cached(struct MHD_Connection *conn, struct MHD_Response *r);

/*
 * Builds a reusable JSON response from `v` (taking the reference) for
 * reply_cached(). Returns NULL on failure; the caller destroys it with
 * MHD_destroy_response() once the daemon has stopped.
 */
struct MHD_Response *reply_static_json(json_t *v);

#endif

/* Multipart uploads (POST /v1/audio/transcriptions, /v1/audio/translations): nginx's
 * proxy_request_buffering. The body is read into a bounded spool (base/spool.h: memory up to
 * UPLOAD_MEMORY_BYTES, then an unlinked temporary file, max_upload_bytes in all) and scanned
 * as it arrives (openai/multipart.h); a file part usually comes before the model, so the node
 * is chosen once the whole body is in. Then the fields the scan kept are written as a small
 * JSON body (r->body) that admission validates and routes like any other, and each attempt
 * sends the spool from its start with the caller's Content-Type (its boundary), the `model`
 * field's value replaced by the backend's name for the model where the two differ. Owns
 * r->upload. Internal to gateway/; runs on the request's worker. */
#ifndef TOLLGATE_UPLOAD_H
#define TOLLGATE_UPLOAD_H

#include "gateway/pipeline.h"
#include "net/upstream.h"

/* In memory per upload at most; beyond it the spool is on disk. */
#define UPLOAD_MEMORY_BYTES (256u << 10)

/* MHD's first call for a multipart endpoint: the size cap (413 on a Content-Length over
 * max_upload_bytes) and the Content-Type (400 when it is not multipart/form-data with a
 * boundary), then the spool. MHD's result. */
enum MHD_Result request_upload_begin(struct request *r);
/* A piece of the body: spooled and scanned. Over max_upload_bytes (413), malformed (400) or
 * unspoolable (500), the rest of the body is read and dropped and the error is the answer. */
enum MHD_Result request_upload_data(struct request *r, const char *data, size_t *size);
/* The body is in: true with the error set when it is malformed; else r->body holds its
 * fields as JSON for admission. */
bool request_upload_end(struct request *r);
/* The node's header list for an attempt: `base` without its Content-Type, behind the caller's
 * Content-Type; `base` when the request is no upload. Valid while the request lives. */
struct curl_slist *request_upload_headers(struct request *r, struct curl_slist *base);
/* Makes *req send the spool to target t (from its start). 0, or TG_ERR_NOMEM. */
int request_upload_attach(struct request *r, const struct config_target *t,
                          struct upstream_req *req);
/* The request ends: the spool's memory and file go. */
void request_upload_free(struct request *r);

#endif

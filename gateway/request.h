/* The life of one HTTP request on a worker: parse, authenticate, validate, route, relay the
 * upstream answer (whole or as a stream) and account for it.
 *
 * The state is created on MHD's first call for a request and freed in its completion
 * callback; everything runs on the owning worker's thread. */
#ifndef TOLLGATE_REQUEST_H
#define TOLLGATE_REQUEST_H

#include <microhttpd.h>

struct worker;

/* MHD access handler; cls is the worker. */
enum MHD_Result request_handle(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version, const char *upload_data,
                               size_t *upload_data_size, void **con_cls);
/* MHD completion callback; cls is the worker. */
void request_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe);
/* Ends every live request of a worker at once (drain timeout): upstream transfers are
 * cancelled and callers get an error, an SSE error event for started streams. */
void request_abort_all(struct worker *w);
/* Resumes every suspended connection (before the daemon stops). */
void request_resume_all(struct worker *w);
/* Delivers the answers other workers' flights posted for this worker's followers (the
 * worker's mail_async callback). */
void request_take_mail(struct worker *w);
/* Frees mail nobody will read (the worker is gone). */
void request_drop_mail(struct worker *w);

#endif

/*
 * http: the MHD callbacks - a request's lifecycle, routing and the small
 * endpoints (models, healthz); the rest is handed to inference.c, runtime.c
 * and stats.c.
 *
 * http_init() and http_free() run on the main thread, before the daemon
 * starts and after it stops; the callbacks run on MHD's threads and share
 * only the read-only responses built by http_init().
 */
#ifndef MOCKNODE_HTTP_H
#define MOCKNODE_HTTP_H

#include <stddef.h>

#include <microhttpd.h>

/* Builds the cached /v1/models and /healthz answers from node.h. Returns 0, or -1. */
int http_init(void);

/* Frees what http_init() built. */
void http_free(void);

/* MHD's access handler (MHD_AccessHandlerCallback); `cls` is unused. */
enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls);

/* MHD_OPTION_NOTIFY_COMPLETED: frees the request state. */
void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe);

#endif

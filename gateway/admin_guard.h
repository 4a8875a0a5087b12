/* Connection limits for the admin listener (gateway/admin.c), whose libmicrohttpd daemon runs
 * its own threads, like the ones net/httpd.c puts on the workers' listeners:
 *   - a request's header must be complete within header_timeout_ms of the connection opening
 *     or of its previous answer, its body within body_timeout_ms of the header; a byte now and
 *     then does not extend them (slowloris), unlike MHD's idle timeout;
 *   - at the cap, the connection that has waited longest for its request (idle keep-alive, or
 *     a header still dripping in) is shut to make room, once it waited a second; a connection
 *     whose request is in is never shed.
 * The guard sits between MHD and the admin's own callbacks: pass admin_guard_handle,
 * admin_guard_completed and admin_guard_connection to MHD_start_daemon() with the guard as
 * their argument, and admin_guard_mhd_limit() as MHD_OPTION_CONNECTION_LIMIT. A thread of
 * its own enforces the deadlines (shutdown() of the socket; MHD then closes it).
 *
 * Thread-safe: MHD's threads and the guard's thread share its state under one lock (the
 * admin listener's, never a worker's). */
#ifndef TOLLGATE_ADMIN_GUARD_H
#define TOLLGATE_ADMIN_GUARD_H

#include <microhttpd.h>

struct admin_guard;

struct admin_guard_config {
    unsigned cap;               /* connections; more are made room for by shedding */
    unsigned header_timeout_ms; /* 0 = no deadline */
    unsigned body_timeout_ms;   /* 0 = no deadline */
    MHD_AccessHandlerCallback handler;
    void *handler_cls;
    MHD_RequestCompletedCallback completed;
    void *completed_cls;
};

/* Starts the guard's thread. NULL when out of memory or threads. */
struct admin_guard *admin_guard_new(const struct admin_guard_config *c);
/* MHD's connection limit: the cap, and room for connections shed and not closed yet. */
unsigned admin_guard_mhd_limit(const struct admin_guard *g);
/* Connections shed so far: at the cap, past a header deadline, past a body deadline. */
void admin_guard_stats(struct admin_guard *g, unsigned long *at_cap, unsigned long *header,
                       unsigned long *body);
/* Stops the thread and frees the guard: after MHD_stop_daemon(). NULL is fine. */
void admin_guard_free(struct admin_guard *g);

enum MHD_Result admin_guard_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_data_size, void **con_cls);
void admin_guard_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                           enum MHD_RequestTerminationCode toe);
void admin_guard_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                            enum MHD_ConnectionNotificationCode code);

#endif

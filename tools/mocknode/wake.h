/*
 * wake: parks MHD connections without blocking MHD threads.
 *
 * One timer thread owns a min-heap of wake times and an epoll set of parked
 * ("hanging") sockets. Callers suspend a connection from inside one of its MHD
 * callbacks; the timer thread calls MHD_resume_connection() when the time
 * comes, when a hanging client disconnects, or at shutdown. A connection is
 * resumed exactly once per suspension, and nothing here touches it after the
 * resume, so the request may be freed as soon as MHD completes it.
 *
 * All functions are thread-safe. The daemon must be running with
 * MHD_ALLOW_SUSPEND_RESUME from before wake_start() until after wake_stop().
 */
#ifndef MOCKNODE_WAKE_H
#define MOCKNODE_WAKE_H

#include <stdbool.h>
#include <stdint.h>

#include <microhttpd.h>

/* A parked connection, embedded in the request state; owned by wake while parked. */
struct wake_hang {
    struct wake_hang *prev;
    struct wake_hang *next;
    struct MHD_Connection *conn;
    int fd;
};

/* Monotonic clock in nanoseconds. */
uint64_t wake_now_ns(void);

/* Starts the timer thread. Returns 0, or -1 with errno set. */
int wake_start(void);

/*
 * Suspends `conn` and resumes it at `due_ns` (wake_now_ns() clock). Call only
 * from an MHD callback of `conn`. Returns 0, or -1 when the node is stopping
 * or memory ran out; the connection is then left running.
 */
int wake_suspend_until(struct MHD_Connection *conn, uint64_t due_ns);

/*
 * Suspends `conn` until the peer of socket `fd` goes away or the node stops.
 * `h` must stay valid until the connection is resumed. Same calling rule and
 * return values as wake_suspend_until().
 */
int wake_suspend_hang(struct wake_hang *h, struct MHD_Connection *conn, int fd);

/*
 * Stops the timer thread and resumes every parked connection; later suspends
 * are refused. Call once, before MHD_stop_daemon().
 */
void wake_stop(void);

#endif

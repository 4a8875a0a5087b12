/* The server: one worker thread per core, each with its own libev loop, SO_REUSEPORT
 * listener, libmicrohttpd daemon (external epoll, suspend/resume), curl multi and metrics
 * shard. Nothing is shared between workers but the read-only config snapshot and atomic
 * backend state.
 *
 * server_* functions are called from the main thread only. */
#ifndef TOLLGATE_SERVER_H
#define TOLLGATE_SERVER_H

#include "base/buf.h"
#include "config/config.h"

#include <stdbool.h>

struct server;

/* Binds the listeners and starts the workers. NULL with a message in err on failure. */
struct server *server_start(struct config *cfg, char *err, size_t err_len);
/* Publishes a new config to every worker (the server takes its own reference). */
void server_reload(struct server *s, struct config *cfg);
/* Begins a graceful stop: not ready, no new connections, in-flight requests finish within
 * the drain timeout. A second call cuts the drain short. */
void server_drain(struct server *s);
/* Appends the Prometheus text of all workers' counters (any thread). */
int server_render_metrics(struct server *s, struct buf *out);
/* The workers' metrics shards, for reading from any thread (relaxed loads): at most max of
 * them in out; returns how many. */
struct metrics_shard;
size_t server_metrics_shards(struct server *s, struct metrics_shard **out, size_t max);
/* True once every worker has left its loop (after a drain). */
bool server_stopped(struct server *s);
/* Waits for every worker to stop, then frees the server. */
void server_wait(struct server *s);

#endif

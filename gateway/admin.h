/* The admin listener (`admin_listen`, Bearer `admin_key`): operator endpoints, kept off the
 * client-facing port. Runs on its own libmicrohttpd threads (two), never on a worker.
 *   GET /admin/backends   every backend: url, models and current prices, health, in-flight,
 *                          recent latency, failures and ejections
 *   GET /metrics          Prometheus text
 *   GET /admin/status     totals, per-backend spend and failures, top keys by spend
 *   GET /                 the status page (gateway/status.h), served without the key
 *   POST /admin/keys, GET /admin/keys, GET|DELETE /admin/keys/{name}
 *                          Redis-held API keys (tenancy/keys.h); bodies up to 64 KiB
 * admin_* functions are called from the main thread. */
#ifndef TOLLGATE_ADMIN_H
#define TOLLGATE_ADMIN_H

#include "config/config.h"
#include "gateway/server.h"

struct admin;

/* NULL with a message in err when the listener cannot start. */
struct admin *admin_start(struct config *cfg, struct server *server, char *err, size_t err_len);
void admin_reload(struct admin *a, struct config *cfg);
void admin_stop(struct admin *a);

#endif

/* Listen addresses, written once: the gateway's `listen`, the admin's `admin_listen` and the
 * healthcheck's client all parse "host:port" here.
 *
 * Accepted: "127.0.0.1:8080", "[::1]:8080", "::1:8080" (the last colon splits), a name
 * ("localhost:8080"), an empty host or "0.0.0.0" or "::" for every address, and port 0 for
 * one the kernel picks. A numeric port must be from 0 to 65535; a port that is not a number
 * is a service name ("http"), left to getaddrinfo(). Every message begins with the config
 * key and the address as configured: `listen "127.0.0.1": expected host:port`.
 *
 * No state of its own: every function may be called from any thread. */
#ifndef TOLLGATE_LISTEN_H
#define TOLLGATE_LISTEN_H

#include <stddef.h>

#define LISTEN_HOST_MAX 256

/* listen_open() flags. */
#define LISTEN_NONBLOCK 1u  /* the socket is non-blocking (an event loop accepts on it) */
#define LISTEN_REUSEPORT 2u /* SO_REUSEPORT: one listener per worker, the kernel spreads */

struct listen_addr {
    const char *name;           /* the config key, for messages; not copied */
    const char *text;           /* the address as configured, for messages; not copied */
    char host[LISTEN_HOST_MAX]; /* without brackets; "" = every address */
    char port[32];              /* a number from 0 to 65535, or a service name */
};

/* Splits `text` into host and port. 0, or -1 with a message in err. `name` and `text` must
 * outlive `a`. */
int listen_parse(struct listen_addr *a, const char *name, const char *text, char *err,
                 size_t err_len);

/* A bound, listening TCP socket (close-on-exec, SO_REUSEADDR) on the first of the address's
 * resolutions that takes it; `port` >= 0 replaces the parsed port. The fd, or -1 with a
 * message in err. */
int listen_open(const struct listen_addr *a, int port, int backlog, unsigned flags, char *err,
                size_t err_len);

/* The port a socket is bound to (the kernel's pick after port 0), or -1. */
int listen_bound_port(int fd);

/* For a client of this listener on the same host: every-address hosts ("", 0.0.0.0, ::)
 * become the loopback address of their family. */
void listen_loopback(struct listen_addr *a);

#endif

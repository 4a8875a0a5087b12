#include "gateway/admin.h"

#include "gateway/buf.h"
#include "gateway/error.h"
#include "routing/backend.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct admin {
    struct MHD_Daemon *mhd;
    struct server *server;
    /* lock guards cfg: the admin thread reads it, a reload replaces it. */
    pthread_mutex_t lock;
    struct config *cfg;
};

static struct config *admin_config(struct admin *a)
{
    pthread_mutex_lock(&a->lock);
    struct config *cfg = config_ref(a->cfg);
    pthread_mutex_unlock(&a->lock);
    return cfg;
}

static enum MHD_Result admin_reply(struct MHD_Connection *conn, unsigned status, char *body,
                                   size_t len, const char *ctype)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, free);
    if (!resp) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    enum MHD_Result ok = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result admin_error(struct MHD_Connection *conn, enum tg_error err,
                                   const char *msg)
{
    size_t len = 0;
    char *body = error_body(err, msg, NULL, NULL, &len);
    if (!body)
        return MHD_NO;
    return admin_reply(conn, error_status(err), body, len, "application/json");
}

static enum MHD_Result admin_json(struct MHD_Connection *conn, json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text)
        return admin_error(conn, TG_ERR_NOMEM, "out of memory");
    return admin_reply(conn, 200, text, strlen(text), "application/json");
}

/* Constant-time check of the Bearer token against admin_key (both hashed first, so the
 * comparison does not depend on the lengths either). */
static bool admin_authorized(struct MHD_Connection *conn, const struct config *cfg)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    unsigned char got[SHA256_DIGEST_LENGTH], want[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)h + 7, strlen(h + 7), got);
    SHA256((const unsigned char *)cfg->admin_key, strlen(cfg->admin_key), want);
    return CRYPTO_memcmp(got, want, sizeof got) == 0;
}

static json_t *admin_backends(const struct config *cfg)
{
    int64_t now = backend_now_ms();
    json_t *list = json_array();
    for (size_t i = 0; i < cfg->n_backends; i++) {
        const struct config_backend *b = &cfg->backends[i];
        struct backend_state *s = b->state;
        json_t *models = json_array();
        for (size_t j = 0; j < b->n_models; j++) {
            const struct config_model *m = &b->models[j];
            bool live = m->price && atomic_load(&m->price->live);
            json_array_append_new(
                models, json_pack("{s:s, s:s?, s:f, s:f, s:s}", "name", m->name, "upstream",
                                  m->upstream, "input_usd_per_mtok", backend_input_price(m),
                                  "output_usd_per_mtok", backend_output_price(m), "price_source",
                                  live ? "live" : "config"));
        }
        int64_t until = atomic_load(&s->ejected_until_ms);
        int64_t probe = atomic_load(&s->last_probe_ms);
        json_t *o = json_pack(
            "{s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:i, s:I, s:f, s:f, s:b, s:o, s:o}", "name",
            b->name, "url", b->url, "health", backend_health_name(s, now), "inflight",
            atomic_load(&s->inflight), "max_inflight", (int)b->max_inflight, "requests",
            (json_int_t)atomic_load(&s->requests), "failures",
            (json_int_t)atomic_load(&s->failures), "ejections",
            (json_int_t)atomic_load(&s->ejections), "consecutive_failures",
            (int)atomic_load(&s->consecutive_failures), "ejected_for_ms",
            (json_int_t)(until > now ? until - now : 0), "ttfb_ms",
            (double)atomic_load(&s->ttfb_ewma_us) / 1000.0, "duration_ms",
            (double)atomic_load(&s->duration_ewma_us) / 1000.0, "probe_ok",
            !atomic_load(&s->probe_down), "last_probe_ago_ms",
            probe ? json_integer(now - probe) : json_null(), "models", models);
        json_array_append_new(list, o);
    }
    return json_pack("{s:o}", "backends", list);
}

static enum MHD_Result admin_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls)
{
    (void)version;
    (void)upload_data;
    struct admin *a = cls;
    if (!*con_cls) {
        *con_cls = a; /* the first call only has the headers */
        return MHD_YES;
    }
    if (*upload_data_size) {
        *upload_data_size = 0; /* no admin endpoint takes a body yet */
        return MHD_YES;
    }
    struct config *cfg = admin_config(a);
    enum MHD_Result ok;
    if (!admin_authorized(conn, cfg)) {
        ok = admin_error(conn, TG_ERR_AUTH, "Send the admin key as 'Authorization: Bearer KEY'.");
    } else if (!strcmp(url, "/admin/backends") || !strcmp(url, "/metrics")) {
        if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
            ok = admin_error(conn, TG_ERR_METHOD, "Use GET.");
        } else if (url[1] == 'a') {
            ok = admin_json(conn, admin_backends(cfg));
        } else {
            struct buf out;
            buf_init(&out, 16u << 20);
            if (server_render_metrics(a->server, &out)) {
                buf_free(&out);
                ok = admin_error(conn, TG_ERR_NOMEM, "metrics too large");
            } else {
                size_t len;
                char *text = buf_steal(&out, &len);
                ok = admin_reply(conn, 200, text, len, "text/plain; version=0.0.4; charset=utf-8");
            }
        }
    } else {
        ok = admin_error(conn, TG_ERR_UNKNOWN_URL, "No such admin endpoint.");
    }
    config_unref(cfg);
    return ok;
}

static int admin_listen_socket(const char *addr, char *err, size_t err_len)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    size_t hn = colon ? (size_t)(colon - addr) : 0;
    if (!colon || hn >= sizeof host) {
        snprintf(err, err_len, "admin_listen \"%s\": expected host:port", addr);
        return -1;
    }
    memcpy(host, addr, hn);
    host[hn] = '\0';
    if (hn > 1 && host[0] == '[' && host[hn - 1] == ']') {
        memmove(host, host + 1, hn - 2);
        host[hn - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (gai) {
        snprintf(err, err_len, "admin_listen \"%s\": %s", addr, gai_strerror(gai));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd != -1)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (fd == -1 || bind(fd, res->ai_addr, res->ai_addrlen) == -1 || listen(fd, 128) == -1) {
        snprintf(err, err_len, "admin_listen \"%s\": %m", addr);
        if (fd != -1)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

struct admin *admin_start(struct config *cfg, struct server *server, char *err, size_t err_len)
{
    int fd = admin_listen_socket(cfg->admin_listen, err, err_len);
    if (fd == -1)
        return NULL;
    struct admin *a = calloc(1, sizeof *a);
    if (!a) {
        close(fd);
        return NULL;
    }
    pthread_mutex_init(&a->lock, NULL);
    a->server = server;
    a->cfg = config_ref(cfg);
    a->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL,
                              admin_handle, a, MHD_OPTION_LISTEN_SOCKET, fd,
                              MHD_OPTION_CONNECTION_LIMIT, 256u, MHD_OPTION_CONNECTION_TIMEOUT,
                              30u, MHD_OPTION_END);
    if (!a->mhd) {
        snprintf(err, err_len, "admin_listen: cannot start the HTTP daemon");
        close(fd);
        config_unref(a->cfg);
        free(a);
        return NULL;
    }
    return a;
}

void admin_reload(struct admin *a, struct config *cfg)
{
    pthread_mutex_lock(&a->lock);
    struct config *old = a->cfg;
    a->cfg = config_ref(cfg);
    pthread_mutex_unlock(&a->lock);
    config_unref(old);
}

void admin_stop(struct admin *a)
{
    if (!a)
        return;
    MHD_stop_daemon(a->mhd);
    config_unref(a->cfg);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

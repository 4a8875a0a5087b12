#include "gateway/admin.h"

#include "base/buf.h"
#include "base/clock.h"
#include "base/digest.h"
#include "base/error.h"
#include "base/listen.h"
#include "base/log.h"
#include "base/usd.h"
#include "gateway/admin_guard.h"
#include "gateway/status.h"
#include "routing/backend.h"
#include "tenancy/keys.h"
#include "tenancy/ledger.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

/* The admin listener's connection cap (operators and a Prometheus or two). */
#define ADMIN_MAX_CONNECTIONS 256

struct admin {
    struct MHD_Daemon *mhd;
    struct admin_guard *guard; /* header and body deadlines, the connection cap */
    struct server *server;
    /* lock guards cfg: the admin threads read it, a reload replaces it. */
    pthread_mutex_t lock;
    struct config *cfg;
};

/* One admin request (MHD's con_cls), freed in admin_completed(). The body is kept up to
 * KEYS_BODY_MAX bytes; past that the rest is dropped and the answer is 413. */
struct admin_request {
    struct buf body;
    int body_error; /* BUF_ETOOBIG or BUF_ENOMEM once an append failed */
};

static struct config *admin_config(struct admin *a)
{
    pthread_mutex_lock(&a->lock);
    struct config *cfg = config_ref(a->cfg);
    pthread_mutex_unlock(&a->lock);
    return cfg;
}

/* For a body that holds a new API key: wiped before it goes back to malloc. */
static void admin_free_secret(void *body)
{
    explicit_bzero(body, strlen(body));
    free(body);
}

static enum MHD_Result admin_reply_with(struct MHD_Connection *conn, unsigned status, char *body,
                                        size_t len, const char *ctype, void (*release)(void *))
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer_with_free_callback(len, body, release);
    if (!resp) {
        release(body);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    enum MHD_Result ok = MHD_queue_response(conn, status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result admin_reply(struct MHD_Connection *conn, unsigned status, char *body,
                                   size_t len, const char *ctype)
{
    return admin_reply_with(conn, status, body, len, ctype, free);
}

static enum MHD_Result admin_error(struct MHD_Connection *conn, enum tg_error err, const char *msg)
{
    size_t len = 0;
    char *body = error_body(err, msg, NULL, NULL, &len);
    if (!body)
        return MHD_NO;
    return admin_reply(conn, error_status(err), body, len, "application/json");
}

/* Takes doc (NULL means out of memory). */
static enum MHD_Result admin_json(struct MHD_Connection *conn, unsigned status, json_t *doc)
{
    char *text = doc ? usd_json_dumps(doc, JSON_COMPACT) : NULL; /* prices, spend: no float noise */
    json_decref(doc);
    if (!text)
        return admin_error(conn, TG_ERR_NOMEM, "out of memory");
    return admin_reply(conn, status, text, strlen(text), "application/json");
}

/* Constant-time check of the Bearer token against admin_key (both hashed first, so the
 * comparison does not depend on the lengths either). */
static bool admin_authorized(struct MHD_Connection *conn, const struct config *cfg)
{
    const char *h = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7))
        return false;
    unsigned char got[32], want[32];
    digest_sha256(h + 7, strlen(h + 7), got);
    digest_sha256(cfg->admin_key, strlen(cfg->admin_key), want);
    return digest_equal(got, want, sizeof got);
}

/* What routing learned of a backend (routing/limiter.h, latency.h, stuck.h): its learned
 * limit and the one it is held to now (slow start), whether it is suspected stuck. */
static void admin_backend_routing(json_t *o, const struct config *cfg,
                                  const struct config_backend *b, int64_t now)
{
    struct backend_state *s = b->state;
    const struct limiter *l = &s->limit;
    double share = limiter_ramp_share(l, cfg->health.slow_start_ms, now);
    double p95 = latency_p95_s(&s->lat);
    json_object_set_new(o, "limit", json_real(limiter_limit(l, &cfg->routing)));
    json_object_set_new(o, "effective_limit", json_integer(backend_limit(cfg, b, now)));
    json_object_set_new(
        o, "limit_phase",
        json_string(atomic_load(&l->phase) == LIMITER_PROBING ? "probing" : "steady"));
    json_object_set_new(o, "slow_start", json_real(share));
    json_object_set_new(o, "suspected", json_boolean(stuck_suspected(&s->stuck)));
    json_object_set_new(o, "stuck_total", json_integer((json_int_t)atomic_load(&s->stuck.total)));
    json_object_set_new(o, "ttfb_p95_ms", p95 > 0 ? json_real(p95 * 1000) : json_null());
}

/* Per model: its usage honesty (routing/honesty.h) and how old its live price is. */
static void admin_model_routing(json_t *mo, const struct backend_price *p, bool live, int64_t now)
{
    const struct honesty *h = &p->honesty;
    json_object_set_new(mo, "usage_samples", json_integer(atomic_load(&h->samples)));
    json_object_set_new(mo, "usage_ratio_prompt", json_real(honesty_ratio(h, false)));
    json_object_set_new(mo, "usage_ratio_completion", json_real(honesty_ratio(h, true)));
    json_object_set_new(mo, "usage_inflation", json_real(honesty_inflation(h)));
    json_object_set_new(mo, "overreporting", json_boolean(honesty_flagged(h)));
    json_object_set_new(mo, "price_age_ms",
                        live ? json_integer(now - atomic_load(&p->checked_ms)) : json_null());
    json_object_set_new(mo, "price_changed_ago_ms",
                        live ? json_integer(now - atomic_load(&p->updated_ms)) : json_null());
}

static json_t *admin_backends(const struct config *cfg)
{
    int64_t now = clock_mono_ms();
    json_t *list = json_array();
    for (size_t i = 0; i < cfg->n_backends; i++) {
        const struct config_backend *b = &cfg->backends[i];
        struct backend_state *s = b->state;
        json_t *models = json_array();
        for (size_t j = 0; j < b->n_models; j++) {
            const struct config_model *m = &b->models[j];
            bool live = m->price && atomic_load(&m->price->live);
            json_t *mo =
                json_pack("{s:s, s:s?, s:f, s:f, s:s}", "name", m->name, "upstream", m->upstream,
                          "input_usd_per_mtok", backend_input_price(m), "output_usd_per_mtok",
                          backend_output_price(m), "price_source", live ? "live" : "config");
            if (m->price)
                admin_model_routing(mo, m->price, live, now);
            json_array_append_new(models, mo);
        }
        int64_t until = atomic_load(&s->ejected_until_ms);
        int64_t probe = atomic_load(&s->last_probe_ms);
        json_t *o =
            json_pack("{s:s, s:s, s:s, s:i, s:i, s:I, s:I, s:I, s:i, s:I, s:f, s:f, s:b, s:o, s:o}",
                      "name", b->name, "url", b->url, "health", backend_health_name(s, now),
                      "inflight", atomic_load(&s->inflight), "max_inflight", (int)b->max_inflight,
                      "requests", (json_int_t)atomic_load(&s->requests), "failures",
                      (json_int_t)atomic_load(&s->failures), "ejections",
                      (json_int_t)atomic_load(&s->ejections), "consecutive_failures",
                      (int)atomic_load(&s->consecutive_failures), "ejected_for_ms",
                      (json_int_t)(until > now ? until - now : 0), "ttfb_ms",
                      (double)atomic_load(&s->ttfb_ewma_us) / 1000.0, "duration_ms",
                      (double)atomic_load(&s->duration_ewma_us) / 1000.0, "probe_ok",
                      !atomic_load(&s->probe_down), "last_probe_ago_ms",
                      probe ? json_integer(now - probe) : json_null(), "models", models);
        admin_backend_routing(o, cfg, b, now);
        json_array_append_new(list, o);
    }
    return json_pack("{s:o}", "backends", list);
}

static enum MHD_Result admin_keys_error(struct MHD_Connection *conn, const struct keys_error *err)
{
    size_t len = 0;
    char *body = keys_error_body(err, &len);
    if (!body)
        return MHD_NO;
    return admin_reply(conn, keys_error_status(err), body, len, "application/json");
}

static enum MHD_Result admin_keys_create(struct MHD_Connection *conn, const struct config *cfg,
                                         struct admin_request *req)
{
    if (req->body_error == BUF_ETOOBIG)
        return admin_error(conn, TG_ERR_TOO_LARGE, "The body is over 64 KiB.");
    if (req->body_error)
        return admin_error(conn, TG_ERR_NOMEM, "out of memory");
    json_error_t jerr;
    json_t *body = json_loadb(req->body.len ? req->body.data : "", req->body.len,
                              JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        char msg[256];
        snprintf(msg, sizeof msg, "The body is not valid JSON: %s", jerr.text);
        return admin_error(conn, TG_ERR_INVALID_JSON, msg);
    }
    struct keys_record r;
    struct keys_error err;
    char key[KEYS_KEY_LEN + 1];
    int rc = keys_parse_request(body, (int64_t)time(NULL), &r, &err);
    json_decref(body);
    if (rc)
        return admin_keys_error(conn, &err);
    if (keys_create(cfg, &r, key, &err)) {
        keys_record_clear(&r);
        return admin_keys_error(conn, &err);
    }
    log_event(LOG_INFO, "key_created", "\"name\":\"%s\",\"sha256_prefix\":\"%.8s\"", r.name,
              r.sha256);
    json_t *doc = keys_created_json(&r, key);
    explicit_bzero(key, sizeof key);
    keys_record_clear(&r);
    char *text = doc ? usd_json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (!text)
        return admin_error(conn, TG_ERR_NOMEM, "out of memory");
    return admin_reply_with(conn, 201, text, strlen(text), "application/json", admin_free_secret);
}

/* /admin/keys and /admin/keys/{name}. Each call holds a Redis connection of its own for its
 * duration (tenancy/keys.h): bounded by the connect and command timeouts. */
static enum MHD_Result admin_keys(struct MHD_Connection *conn, const struct config *cfg,
                                  const char *method, const char *url, struct admin_request *req)
{
    struct keys_error err;
    bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    const char *name = url[sizeof "/admin/keys" - 1] ? url + sizeof "/admin/keys" : NULL;
    if (!name) {
        if (!strcmp(method, "POST"))
            return admin_keys_create(conn, cfg, req);
        if (!get)
            return admin_error(conn, TG_ERR_METHOD, "Use GET or POST.");
        /* Pages as OpenAI's lists: ?limit=N (1..1000, default 100) &after=NAME. */
        const char *after = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "after");
        const char *lim = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
        long limit = 100;
        if (lim) {
            char *end;
            limit = strtol(lim, &end, 10);
            if (end == lim || *end || limit < 1 || limit > 1000)
                return admin_error(conn, TG_ERR_INVALID_VALUE,
                                   "limit must be a number from 1 to 1000.");
        }
        struct keys_record *list;
        size_t n;
        bool more;
        if (keys_list(cfg, after, (size_t)limit, &list, &n, &more, &err))
            return admin_keys_error(conn, &err);
        json_t *doc = keys_list_json(list, n, more);
        keys_records_free(list, n);
        return admin_json(conn, 200, doc);
    }
    if (get) {
        struct keys_record r = {0};
        if (keys_show(cfg, name, &r, &err))
            return admin_keys_error(conn, &err);
        json_t *doc = keys_record_json(&r);
        keys_record_clear(&r);
        return admin_json(conn, 200, doc);
    }
    if (strcmp(method, "DELETE"))
        return admin_error(conn, TG_ERR_METHOD, "Use GET or DELETE.");
    if (keys_revoke(cfg, name, &err))
        return admin_keys_error(conn, &err);
    log_event(LOG_INFO, "key_revoked", "\"name\":\"%s\"", name);
    return admin_json(conn, 200, json_pack("{s:s, s:b}", "name", name, "revoked", 1));
}

/* GET /admin/usage[?key=NAME]: the usage ledger's totals per key and model
 * (tenancy/ledger.h), over a Redis connection of the call's own like /admin/keys. */
static enum MHD_Result admin_usage(struct MHD_Connection *conn, const struct config *cfg,
                                   const char *method)
{
    if (strcmp(method, "GET") && strcmp(method, "HEAD"))
        return admin_error(conn, TG_ERR_METHOD, "Use GET.");
    const char *key = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "key");
    if (key && !*key)
        return admin_error(conn, TG_ERR_INVALID_VALUE, "'key' must name an API key.");
    struct ledger_usage_row *rows;
    size_t n, len = 0;
    struct keys_error err;
    if (ledger_usage(cfg, key, &rows, &n, &err))
        return admin_keys_error(conn, &err);
    char *text = ledger_usage_json(rows, n, &len);
    free(rows);
    if (!text)
        return admin_error(conn, TG_ERR_NOMEM, "out of memory");
    return admin_reply(conn, 200, text, len, "application/json");
}

static void admin_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                            enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct admin_request *req = *con_cls;
    if (req) {
        buf_free(&req->body);
        free(req);
        *con_cls = NULL;
    }
}

static enum MHD_Result admin_handle(void *cls, struct MHD_Connection *conn, const char *url,
                                    const char *method, const char *version,
                                    const char *upload_data, size_t *upload_data_size,
                                    void **con_cls)
{
    (void)version;
    struct admin *a = cls;
    struct admin_request *req = *con_cls;
    if (!req) {
        /* The first call only has the headers. */
        if (!(req = calloc(1, sizeof *req)))
            return MHD_NO;
        buf_init(&req->body, KEYS_BODY_MAX);
        *con_cls = req;
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (!req->body_error)
            req->body_error = buf_append(&req->body, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return MHD_YES;
    }
    struct config *cfg = admin_config(a);
    enum MHD_Result ok;
    if (!strcmp(url, "/")) {
        /* The page has no data in it: everything it shows needs the key. */
        ok = strcmp(method, "GET") && strcmp(method, "HEAD")
                 ? admin_error(conn, TG_ERR_METHOD, "Use GET.")
                 : status_page(conn);
    } else if (!admin_authorized(conn, cfg)) {
        ok = admin_error(conn, TG_ERR_AUTH, "Send the admin key as 'Authorization: Bearer KEY'.");
    } else if (!strcmp(url, "/admin/backends") || !strcmp(url, "/metrics")) {
        if (strcmp(method, "GET") && strcmp(method, "HEAD")) {
            ok = admin_error(conn, TG_ERR_METHOD, "Use GET.");
        } else if (url[1] == 'a') {
            ok = admin_json(conn, 200, admin_backends(cfg));
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
    } else if (!strcmp(url, "/admin/keys") || !strncmp(url, "/admin/keys/", 12)) {
        ok = admin_keys(conn, cfg, method, url, req);
    } else if (!strcmp(url, "/admin/status")) {
        struct metrics_shard *shards[256];
        size_t n = server_metrics_shards(a->server, shards, 256);
        ok = strcmp(method, "GET") && strcmp(method, "HEAD")
                 ? admin_error(conn, TG_ERR_METHOD, "Use GET.")
                 : admin_json(conn, 200, status_json(cfg, shards, n));
    } else if (!strcmp(url, "/admin/usage")) {
        ok = admin_usage(conn, cfg, method);
    } else {
        ok = admin_error(conn, TG_ERR_UNKNOWN_URL, "No such admin endpoint.");
    }
    config_unref(cfg);
    return ok;
}

struct admin *admin_start(struct config *cfg, struct server *server, char *err, size_t err_len)
{
    struct listen_addr addr;
    if (listen_parse(&addr, "admin_listen", cfg->admin_listen, err, err_len))
        return NULL;
    int fd = listen_open(&addr, -1, 128, 0, err, err_len);
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
    /* The client listener's deadlines, and a cap with the same shedding (gateway/admin_guard.h):
     * a slow or idle client cannot hold the operators' port. */
    struct admin_guard_config gc = {
        .cap = ADMIN_MAX_CONNECTIONS,
        .header_timeout_ms = cfg->client_header_timeout_ms,
        .body_timeout_ms = cfg->client_body_timeout_ms,
        .handler = admin_handle,
        .handler_cls = a,
        .completed = admin_completed,
    };
    a->guard = admin_guard_new(&gc);
    /* Two threads: a key operation waits on Redis (up to its timeouts), and /metrics
     * scrapes should not wait behind it. */
    if (a->guard)
        a->mhd = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL,
                                  admin_guard_handle, a->guard, MHD_OPTION_LISTEN_SOCKET, fd,
                                  MHD_OPTION_THREAD_POOL_SIZE, 2u, MHD_OPTION_CONNECTION_LIMIT,
                                  admin_guard_mhd_limit(a->guard),
                                  MHD_OPTION_CONNECTION_MEMORY_LIMIT, cfg->connection_memory_bytes,
                                  MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_NOTIFY_COMPLETED,
                                  admin_guard_completed, a->guard, MHD_OPTION_NOTIFY_CONNECTION,
                                  admin_guard_connection, a->guard, MHD_OPTION_END);
    if (!a->mhd) {
        admin_guard_free(a->guard);
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
    admin_guard_free(a->guard); /* after the daemon: its connections are closed */
    config_unref(a->cfg);
    pthread_mutex_destroy(&a->lock);
    free(a);
}

#include "stats.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "node.h"
#include "reply.h"
#include "req.h"

#define MAX_RECORDED_BODY (64u << 10)

static const char *const v1_stat_keys[EP_V1_COUNT] = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/responses/{id}",
    "/v1/images/generations",
    "/v1/audio/speech",
    "/v1/moderations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/models",
    "/v1/models/{id}",
    "other",
};

/* The "last" request snapshot: one allocation holding every string. */
struct last_req {
    const char *method;
    const char *path;
    const char *authorization;
    const char *x_request_id;
    const char *body; /* NULL when absent or over MAX_RECORDED_BODY */
    size_t body_len;
    char data[];
};

static atomic_ullong stat_requests;
static atomic_ullong stat_by_path[EP_V1_COUNT];
static pthread_mutex_t last_lock = PTHREAD_MUTEX_INITIALIZER;
static struct last_req *last;

static void record_last(struct mock_req *req, const char *method, const char *url)
{
    const char *auth =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *xrid = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "x-request-id");
    size_t body_len = 0;

    if (!req->too_large && req->body.len > 0 && req->body.len <= MAX_RECORDED_BODY)
        body_len = req->body.len;
    size_t ml = strlen(method) + 1;
    size_t pl = strlen(url) + 1;
    size_t al = auth ? strlen(auth) + 1 : 0;
    size_t xl = xrid ? strlen(xrid) + 1 : 0;
    struct last_req *n = malloc(sizeof(*n) + ml + pl + al + xl + body_len);
    if (!n)
        return;
    char *p = n->data;
    n->method = memcpy(p, method, ml);
    p += ml;
    n->path = memcpy(p, url, pl);
    p += pl;
    n->authorization = al ? memcpy(p, auth, al) : NULL;
    p += al;
    n->x_request_id = xl ? memcpy(p, xrid, xl) : NULL;
    p += xl;
    n->body = body_len ? memcpy(p, req->body.data, body_len) : NULL;
    n->body_len = body_len;

    pthread_mutex_lock(&last_lock);
    struct last_req *old = last;
    last = n;
    pthread_mutex_unlock(&last_lock);
    free(old);
}

void stats_count(struct mock_req *req, const char *method, const char *url)
{
    atomic_fetch_add_explicit(&stat_requests, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&stat_by_path[req->ep], 1, memory_order_relaxed);
    record_last(req, method, url);
}

/* Header bytes need not be UTF-8; jansson refuses those, and null beats a missing key. */
static json_t *str_or_null(const char *s)
{
    json_t *v = s ? json_string(s) : NULL;

    return v ? v : json_null();
}

enum MHD_Result stats_reply(struct MHD_Connection *conn)
{
    json_t *by_path = json_object();
    for (int i = 0; i < EP_V1_COUNT; i++) {
        unsigned long long n = atomic_load_explicit(&stat_by_path[i], memory_order_relaxed);
        if (n)
            json_object_set_new(by_path, v1_stat_keys[i], json_integer((json_int_t)n));
    }
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(node_name));
    json_object_set_new(
        o, "requests",
        json_integer((json_int_t)atomic_load_explicit(&stat_requests, memory_order_relaxed)));
    json_object_set_new(o, "by_path", by_path);

    json_t *l = json_null();
    pthread_mutex_lock(&last_lock);
    if (last) {
        json_t *body = last->body ? json_loadb(last->body, last->body_len, 0, NULL) : NULL;
        l = json_object();
        json_object_set_new(l, "method", json_string(last->method));
        json_object_set_new(l, "path", json_string(last->path));
        json_object_set_new(l, "authorization", str_or_null(last->authorization));
        json_object_set_new(l, "x_request_id", str_or_null(last->x_request_id));
        json_object_set_new(l, "body", body ? body : json_null());
    }
    pthread_mutex_unlock(&last_lock);
    json_object_set_new(o, "last", l);
    return reply_json(conn, MHD_HTTP_OK, o);
}

enum MHD_Result stats_reset(struct MHD_Connection *conn)
{
    atomic_store(&stat_requests, 0);
    for (int i = 0; i < EP_V1_COUNT; i++)
        atomic_store(&stat_by_path[i], 0);
    pthread_mutex_lock(&last_lock);
    struct last_req *old = last;
    last = NULL;
    pthread_mutex_unlock(&last_lock);
    free(old);
    return reply_json(conn, MHD_HTTP_OK, json_pack("{s:b}", "ok", 1));
}

void stats_free(void)
{
    pthread_mutex_lock(&last_lock);
    free(last);
    last = NULL;
    pthread_mutex_unlock(&last_lock);
}

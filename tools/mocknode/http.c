#include "http.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "buf.h"
#include "inference.h"
#include "media.h"
#include "node.h"
#include "reply.h"
#include "req.h"
#include "responses.h"
#include "runtime.h"
#include "send.h"
#include "stats.h"

static struct MHD_Response *healthz_resp;
static struct MHD_Response *models_resp;

int http_init(void)
{
    json_t *data = json_array();

    for (size_t i = 0; i < node_model_count; i++)
        json_array_append_new(data, json_pack("{s:s, s:s, s:I, s:s}", "id", node_models[i],
                                              "object", "model", "created",
                                              (json_int_t)node_started_at, "owned_by", node_name));
    models_resp = reply_static_json(json_pack("{s:s, s:o}", "object", "list", "data", data));
    healthz_resp = reply_static_json(json_pack("{s:s}", "status", "ok"));
    return models_resp && healthz_resp ? 0 : -1;
}

void http_free(void)
{
    MHD_destroy_response(models_resp);
    MHD_destroy_response(healthz_resp);
}

static enum MHD_Result handle_model(struct MHD_Connection *conn, const char *url)
{
    const char *id = url + strlen("/v1/models/");

    if (!node_model_known(id)) {
        char msg[256];
        snprintf(msg, sizeof(msg), "The model '%.180s' does not exist", id);
        return reply_error(conn, MHD_HTTP_NOT_FOUND, msg, "model", "model_not_found");
    }
    return reply_json(conn, MHD_HTTP_OK,
                      json_pack("{s:s, s:s, s:I, s:s}", "id", id, "object", "model", "created",
                                (json_int_t)node_started_at, "owned_by", node_name));
}

/* ---- dispatch ---- */

static enum ep classify(const char *url)
{
    if (strncmp(url, "/v1/", 4) == 0) {
        if (strcmp(url, "/v1/chat/completions") == 0)
            return EP_CHAT;
        if (strcmp(url, "/v1/completions") == 0)
            return EP_COMPLETIONS;
        if (strcmp(url, "/v1/embeddings") == 0)
            return EP_EMBEDDINGS;
        if (strcmp(url, "/v1/responses") == 0)
            return EP_RESPONSES;
        if (strncmp(url, "/v1/responses/", 14) == 0 && url[14] != '\0')
            return EP_RESPONSE_ID;
        if (strcmp(url, "/v1/images/generations") == 0)
            return EP_IMAGES;
        if (strcmp(url, "/v1/audio/speech") == 0)
            return EP_SPEECH;
        if (strcmp(url, "/v1/moderations") == 0)
            return EP_MODERATIONS;
        if (strcmp(url, "/v1/audio/transcriptions") == 0)
            return EP_TRANSCRIPTIONS;
        if (strcmp(url, "/v1/audio/translations") == 0)
            return EP_TRANSLATIONS;
        if (strcmp(url, "/v1/models") == 0)
            return EP_MODELS;
        if (strncmp(url, "/v1/models/", 11) == 0 && url[11] != '\0')
            return EP_MODEL;
        return EP_V1_OTHER;
    }
    if (strcmp(url, "/healthz") == 0)
        return EP_HEALTHZ;
    if (strcmp(url, "/_mock/config") == 0)
        return EP_CONFIG;
    if (strcmp(url, "/_mock/stats") == 0)
        return EP_STATS;
    if (strcmp(url, "/_mock/reset") == 0)
        return EP_RESET;
    return EP_OTHER;
}

/* The Allow header value for an endpoint; NULL for unknown paths. */
static const char *allowed_methods(enum ep ep)
{
    switch (ep) {
    case EP_CHAT:
    case EP_COMPLETIONS:
    case EP_EMBEDDINGS:
    case EP_RESPONSES:
    case EP_IMAGES:
    case EP_SPEECH:
    case EP_MODERATIONS:
    case EP_TRANSCRIPTIONS:
    case EP_TRANSLATIONS:
    case EP_RESET:
        return "POST";
    case EP_RESPONSE_ID:
        return "GET, DELETE";
    case EP_MODELS:
    case EP_MODEL:
    case EP_HEALTHZ:
    case EP_STATS:
        return "GET";
    case EP_CONFIG:
        return "GET, POST";
    default:
        return NULL;
    }
}

static bool method_allowed(const char *allow, const char *method)
{
    size_t n = strlen(method);

    for (const char *p = allow; (p = strstr(p, method)); p += n)
        if ((p == allow || p[-1] == ' ') && (p[n] == '\0' || p[n] == ','))
            return true;
    return false;
}

/* Runs once the whole request (or an oversized announcement) is in. */
static enum MHD_Result dispatch(struct mock_req *req, const char *method, const char *url)
{
    struct MHD_Connection *conn = req->conn;

    req->phase = PHASE_SENDING;
    if (req->ep < EP_V1_COUNT)
        stats_count(req, method, url);
    if (req->too_large)
        return reply_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "request body too large", NULL,
                           "request_too_large");
    const char *allow = allowed_methods(req->ep);
    if (!allow)
        return reply_error(conn, MHD_HTTP_NOT_FOUND, "unknown url", NULL, "unknown_url");
    if (!method_allowed(allow, method))
        return reply_error_hdr(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed",
                               "invalid_request_error", NULL, "method_not_allowed",
                               MHD_HTTP_HEADER_ALLOW, allow);
    switch (req->ep) {
    case EP_CHAT:
    case EP_COMPLETIONS:
    case EP_EMBEDDINGS:
        return inference_reply(req);
    case EP_RESPONSES:
        return responses_reply(req);
    case EP_RESPONSE_ID:
        return responses_by_id(req, method, url);
    case EP_IMAGES:
    case EP_SPEECH:
    case EP_MODERATIONS:
    case EP_TRANSCRIPTIONS:
    case EP_TRANSLATIONS:
        return media_reply(req);
    case EP_MODELS:
        return reply_cached(conn, models_resp);
    case EP_MODEL:
        return handle_model(conn, url);
    case EP_HEALTHZ:
        return reply_cached(conn, healthz_resp);
    case EP_CONFIG:
        return runtime_reply(req, method);
    case EP_STATS:
        return stats_reply(conn);
    case EP_RESET:
        return stats_reset(conn);
    default:
        return MHD_NO;
    }
}

static bool content_length_too_big(struct MHD_Connection *conn)
{
    const char *cl =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    char *end;

    if (!cl)
        return false;
    errno = 0;
    unsigned long long n = strtoull(cl, &end, 10);
    return end != cl && (errno == ERANGE || n > REQ_MAX_BODY);
}

static void req_free(struct mock_req *req)
{
    buf_free(&req->body);
    buf_free(&req->out);
    buf_free(&req->prefix);
    responses_free(req);
    free(req->model);
    free(req);
}

enum MHD_Result http_on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload_data,
                                size_t *upload_data_size, void **con_cls)
{
    struct mock_req *req = *con_cls;

    (void)cls;
    (void)version;
    if (!req) {
        req = calloc(1, sizeof(*req));
        if (!req)
            return MHD_NO;
        req->conn = conn;
        req->ep = classify(url);
        req->phase = PHASE_BODY;
        buf_init(&req->body, REQ_MAX_BODY);
        buf_init(&req->out, REQ_MAX_ANSWER);
        buf_init(&req->prefix, 1 << 20);
        *con_cls = req;
        /* Refuse from the announced length, before reading a byte of the body. */
        if (content_length_too_big(conn)) {
            req->too_large = true;
            return dispatch(req, method, url);
        }
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (req->phase == PHASE_BODY && !req->too_large) {
            buf_add(&req->body, upload_data, *upload_data_size);
            req->too_large = req->body.failed;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    switch (req->phase) {
    case PHASE_BODY:
        return dispatch(req, method, url);
    case PHASE_DELAY:
        return req->ep == EP_RESPONSES ? responses_send(req) : send_answer(req);
    case PHASE_HANG:
        /* Resumed because the client left or the node stops: drop the connection. */
        return MHD_NO;
    case PHASE_SENDING:
        break;
    }
    return MHD_YES;
}

void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                       enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    if (*con_cls) {
        req_free(*con_cls);
        *con_cls = NULL;
    }
}

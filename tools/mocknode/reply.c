#include "reply.h"

#include <stdlib.h>
#include <string.h>

#include "answer.h"
#include "node.h"

bool reply_add_headers(struct MHD_Response *r, const char *content_type)
{
    return MHD_add_response_header(r, "x-mocknode", node_name) == MHD_YES &&
           (!content_type ||
            MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, content_type) == MHD_YES);
}

/* Queues malloc'd `data` as the body (taking it) with an optional extra header. */
static enum MHD_Result reply_raw(struct MHD_Connection *conn, unsigned status,
                                 const char *content_type, char *data, size_t len,
                                 const char *hname, const char *hvalue)
{
    if (!data)
        return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(len, data, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(data);
        return MHD_NO;
    }
    enum MHD_Result ret = MHD_NO;
    if (reply_add_headers(r, content_type) &&
        (!hname || MHD_add_response_header(r, hname, hvalue) == MHD_YES))
        ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

enum MHD_Result reply_buf(struct MHD_Connection *conn, unsigned status, const char *content_type,
                          struct buf *b, const char *hname, const char *hvalue)
{
    size_t len = 0;
    char *data = buf_steal(b, &len);

    return reply_raw(conn, status, content_type, data, len, hname, hvalue);
}

/* jansson allocates with malloc, so MHD can free the text. */
enum MHD_Result reply_json(struct MHD_Connection *conn, unsigned status, json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);

    json_decref(v);
    return reply_raw(conn, status, "application/json", text, text ? strlen(text) : 0, NULL, NULL);
}

enum MHD_Result reply_error_hdr(struct MHD_Connection *conn, unsigned status, const char *message,
                                const char *type, const char *param, const char *code,
                                const char *hname, const char *hvalue)
{
    struct buf b;

    buf_init(&b, 1 << 20);
    answer_error(&b, message, type, param, code);
    return reply_buf(conn, status, "application/json", &b, hname, hvalue);
}

enum MHD_Result reply_error(struct MHD_Connection *conn, unsigned status, const char *message,
                            const char *param, const char *code)
{
    return reply_error_hdr(conn, status, message, "invalid_request_error", param, code, NULL, NULL);
}

enum MHD_Result reply_cached(struct MHD_Connection *conn, struct MHD_Response *r)
{
    return MHD_queue_response(conn, MHD_HTTP_OK, r);
}

struct MHD_Response *reply_static_json(json_t *v)
{
    char *text = json_dumps(v, JSON_COMPACT);
    struct MHD_Response *r = NULL;

    json_decref(v);
    if (text)
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_COPY);
    free(text);
    if (r && !reply_add_headers(r, "application/json")) {
        MHD_destroy_response(r);
        r = NULL;
    }
    return r;
}

#include "gateway/upload.h"

#include "base/log.h"
#include "base/spool.h"
#include "openai/multipart.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* The caller's Content-Type is passed on as it came: printable, and at most this long. */
#define UPLOAD_CTYPE_MAX 256
/* Nodes of the header list an attempt carries (the backend's list is a handful). */
#define UPLOAD_HEADER_NODES 16

struct request_upload {
    struct spool spool;
    struct multipart mp;
    char ctype[UPLOAD_CTYPE_MAX + 16]; /* "Content-Type: ..." */
    struct curl_slist nodes[UPLOAD_HEADER_NODES];
    /* The body an attempt sends: the spool, with the model's value replaced by `model`. */
    const char *model;
    size_t model_len;
    size_t total; /* bytes sent */
    size_t pos;   /* the next byte curl reads */
};

static bool upload_ctype_ok(const char *v)
{
    size_t n = 0;
    for (; v[n]; n++)
        if (n >= UPLOAD_CTYPE_MAX || (unsigned char)v[n] < 0x20 || (unsigned char)v[n] > 0x7e)
            return false;
    return n > 0;
}

enum MHD_Result request_upload_begin(struct request *r)
{
    size_t max = r->cfg->max_upload_bytes;
    const char *cl =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl && strtoull(cl, NULL, 10) > max)
        return REQUEST_FAIL_NOW(r, TG_ERR_TOO_LARGE, NULL,
                                "The upload is larger than the limit of %zu bytes.", max);
    const char *ct =
        MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    struct request_upload *u = calloc(1, sizeof *u);
    if (!u)
        return REQUEST_FAIL_NOW(r, TG_ERR_NOMEM, NULL, "out of memory");
    r->upload = u;
    spool_init(&u->spool, UPLOAD_MEMORY_BYTES, max);
    if (!ct || !upload_ctype_ok(ct))
        return REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, NULL,
                                "The request must be multipart/form-data with a file.");
    if (multipart_init(&u->mp, ct))
        return REQUEST_FAIL_NOW(r, TG_ERR_INVALID_VALUE, NULL, "%s", u->mp.msg);
    snprintf(u->ctype, sizeof u->ctype, "Content-Type: %s", ct);
    buf_init(&r->body, r->cfg->max_body_bytes);
    r->state = REQUEST_BODY;
    return MHD_YES;
}

enum MHD_Result request_upload_data(struct request *r, const char *data, size_t *size)
{
    struct request_upload *u = r->upload;
    size_t n = *size;
    *size = 0;
    int rc = spool_write(&u->spool, data, n);
    if (rc == SPOOL_ETOOBIG)
        request_set_error(r, TG_ERR_TOO_LARGE, NULL,
                          "The upload is larger than the limit of %zu bytes.",
                          r->cfg->max_upload_bytes);
    else if (rc == SPOOL_ENOMEM)
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
    else if (rc) {
        /* $TMPDIR full or not writable (a read-only root file system without a volume). */
        log_event(LOG_WARN, "upload_spool_failed",
                  "\"request_id\":\"%s\",\"tmpdir\":\"%s\",\"error\":\"%s\"", r->id,
                  getenv("TMPDIR") ? "$TMPDIR" : "/tmp", strerror(errno));
        request_set_error(r, TG_ERR_INTERNAL, NULL, "The upload could not be spooled.");
    } else if (multipart_feed(&u->mp, data, n))
        request_set_error(r, TG_ERR_INVALID_VALUE, u->mp.param, "%s", u->mp.msg);
    else
        return MHD_YES;
    /* As with a body over max_body_bytes: the answer goes at the body's end. */
    spool_free(&u->spool);
    httpd_discard_body(r->conn);
    return MHD_YES;
}

bool request_upload_end(struct request *r)
{
    struct request_upload *u = r->upload;
    if (multipart_finish(&u->mp)) {
        request_set_error(r, TG_ERR_INVALID_VALUE, u->mp.param, "%s", u->mp.msg);
        return true;
    }
    json_t *doc = json_object();
    if (u->mp.has_file)
        json_object_set_new(doc, "file", json_pack("{s:I}", "bytes", (json_int_t)u->mp.file_bytes));
    for (int f = 0; f < MULTIPART_FIELDS; f++) {
        const struct multipart_value *v = &u->mp.values[f];
        if (!v->seen)
            continue;
        const char *name = multipart_field_name((enum multipart_field)f);
        json_t *val;
        if (f == MULTIPART_FIELD_STREAM && (!strcmp(v->text, "true") || !strcmp(v->text, "false")))
            val = json_boolean(!strcmp(v->text, "true"));
        else
            val = json_stringn(v->text, v->len);
        if (!val) {
            json_decref(doc);
            request_set_error(r, TG_ERR_INVALID_VALUE, name, "'%s' is not UTF-8 text.", name);
            return true;
        }
        json_object_set_new(doc, name, val);
    }
    char *text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    if (!text || buf_append_str(&r->body, text)) {
        free(text);
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        return true;
    }
    free(text);
    return false;
}

struct curl_slist *request_upload_headers(struct request *r, struct curl_slist *base)
{
    struct request_upload *u = r->upload;
    if (!u)
        return base;
    /* Copies of the shared nodes before its Content-Type (config.c puts it first), then the
     * rest of the shared list as it is: nothing shared is written. */
    size_t n = 0;
    u->nodes[n++] = (struct curl_slist){.data = u->ctype};
    struct curl_slist *b = base;
    for (; b && strncasecmp(b->data, "Content-Type:", 13) && n < UPLOAD_HEADER_NODES; b = b->next)
        u->nodes[n++] = (struct curl_slist){.data = b->data};
    for (size_t i = 0; i + 1 < n; i++)
        u->nodes[i].next = &u->nodes[i + 1];
    u->nodes[n - 1].next = b && !strncasecmp(b->data, "Content-Type:", 13) ? b->next : b;
    return u->nodes;
}

/* CURLOPT_READFUNCTION: the spool from u->pos, the model's value replaced. */
static size_t upload_read(char *out, size_t size, size_t nitems, void *ctx)
{
    struct request_upload *u = ctx;
    const struct multipart_value *m = &u->mp.values[MULTIPART_FIELD_MODEL];
    size_t want = size * nitems, got = 0;
    while (got < want && u->pos < u->total) {
        size_t pos = u->pos, len = want - got;
        if (pos >= m->offset && pos < m->offset + u->model_len) { /* the model's new value */
            size_t k = m->offset + u->model_len - pos;
            k = k < len ? k : len;
            memcpy(out + got, u->model + (pos - m->offset), k);
            got += k;
            u->pos += k;
            continue;
        }
        size_t from = pos, upto = u->total; /* the spool's bytes: before or after the value */
        if (pos < m->offset) {
            upto = m->offset;
        } else {
            from = pos - u->model_len + m->len;
        }
        if (len > upto - pos)
            len = upto - pos;
        ssize_t k = spool_read(&u->spool, from, out + got, len);
        if (k <= 0)
            return CURL_READFUNC_ABORT;
        got += (size_t)k;
        u->pos += (size_t)k;
    }
    return got;
}

/* CURLOPT_SEEKFUNCTION: curl sends the body again (a redirect or an auth round is never
 * taken, but a reused connection that closed may be retried by curl). */
static int upload_seek(void *ctx, curl_off_t offset, int origin)
{
    struct request_upload *u = ctx;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > u->total)
        return CURL_SEEKFUNC_CANTSEEK;
    u->pos = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

int request_upload_attach(struct request *r, const struct config_target *t,
                          struct upstream_req *req)
{
    struct request_upload *u = r->upload;
    const struct multipart_value *m = &u->mp.values[MULTIPART_FIELD_MODEL];
    u->model = t->model->upstream ? t->model->upstream : t->model->name;
    u->model_len = strlen(u->model);
    if (!m->seen) { /* validation refuses it; nothing to replace */
        u->model = "";
        u->model_len = 0;
    }
    u->total = u->spool.len - m->len + u->model_len;
    u->pos = 0;
    req->body = NULL;
    req->body_len = u->total;
    req->read = upload_read;
    req->seek = upload_seek;
    req->read_ctx = u;
    return 0;
}

void request_upload_free(struct request *r)
{
    if (!r->upload)
        return;
    spool_free(&r->upload->spool);
    free(r->upload);
    r->upload = NULL;
}

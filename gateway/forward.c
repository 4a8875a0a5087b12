/* Caller headers passed on to the node: User-Agent (the caller's, with the gateway's as a
 * suffix, as proxies do: "my-app/1.2 tollgate/0.1.0"), OpenAI-Organization and
 * OpenAI-Project. The backend's shared header list is linked behind the request's own nodes
 * (a copy of its nodes when the gateway's own User-Agent line has to go), so nothing shared
 * is written and nothing is allocated. */
#include "gateway/pipeline.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* Printable ASCII only (MHD already refuses line breaks): anything else is not passed on. */
static bool forward_value_ok(const char *v, size_t max)
{
    size_t n = 0;
    for (; v[n]; n++)
        if (n >= max || (unsigned char)v[n] < 0x20 || (unsigned char)v[n] > 0x7e)
            return false;
    return n > 0;
}

static struct curl_slist *forward_push(struct request_forward *f, const char *line)
{
    if (f->n_nodes == REQUEST_FORWARD_NODES)
        return NULL;
    struct curl_slist *node = &f->nodes[f->n_nodes++];
    node->data = (char *)line;
    node->next = NULL;
    return node;
}

struct curl_slist *request_forward_headers(struct request *r, struct curl_slist *base)
{
    struct request_forward *f = &r->fwd;
    const char *ua = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "User-Agent");
    const char *org = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "OpenAI-Organization");
    const char *proj = MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, "OpenAI-Project");
    bool has_ua = ua && forward_value_ok(ua, REQUEST_FORWARD_UA_MAX);
    bool has_org = org && forward_value_ok(org, REQUEST_FORWARD_ID_MAX);
    bool has_proj = proj && forward_value_ok(proj, REQUEST_FORWARD_ID_MAX);
    if (!has_ua && !has_org && !has_proj)
        return base;
    f->n_nodes = 0;
    struct curl_slist *head = NULL, *tail = NULL, *node;
#define FORWARD_LINK(line)                                                                         \
    do {                                                                                           \
        if (!(node = forward_push(f, (line))))                                                     \
            return base; /* a longer shared list than ever built: pass on nothing */               \
        if (tail)                                                                                  \
            tail->next = node;                                                                     \
        else                                                                                       \
            head = node;                                                                           \
        tail = node;                                                                               \
    } while (0)
    if (has_ua) {
        snprintf(f->ua, sizeof f->ua, "User-Agent: %s tollgate/" TOLLGATE_VERSION, ua);
        FORWARD_LINK(f->ua);
    }
    if (has_org) {
        snprintf(f->org, sizeof f->org, "OpenAI-Organization: %s", org);
        FORWARD_LINK(f->org);
    }
    if (has_proj) {
        snprintf(f->proj, sizeof f->proj, "OpenAI-Project: %s", proj);
        FORWARD_LINK(f->proj);
    }
    if (!has_ua) {
        tail->next = base; /* the shared list as it is */
        return head;
    }
    /* The shared list without its User-Agent line, as copies of its nodes. */
    for (struct curl_slist *b = base; b; b = b->next)
        if (strncasecmp(b->data, "User-Agent:", 11))
            FORWARD_LINK(b->data);
#undef FORWARD_LINK
    return head;
}

#include "openai/sse.h"

#include <string.h>

void sse_init(struct sse_parser *p, size_t max_event_bytes)
{
    buf_init(&p->line, max_event_bytes);
    buf_init(&p->raw, max_event_bytes + 2);
    buf_init(&p->data, max_event_bytes);
    p->has_data = false;
    p->skip_lf = false;
}

static int sse_map(int buf_result)
{
    return buf_result == BUF_ETOOBIG ? SSE_ETOOBIG : buf_result ? SSE_ENOMEM : SSE_OK;
}

static int sse_line(struct sse_parser *p, sse_event_fn fn, void *ctx)
{
    const char *l = p->line.data ? p->line.data : "";
    size_t n = p->line.len;
    int result;
    if (n == 0) {
        if (p->raw.len == 0)
            return SSE_OK; /* stray blank lines between events */
        if ((result = buf_append(&p->raw, "\n", 1)))
            return sse_map(result);
        struct sse_event ev = {
            .raw = p->raw.data,
            .raw_len = p->raw.len,
            .data = p->data.data ? p->data.data : "",
            .data_len = p->data.len,
            .has_data = p->has_data,
        };
        int rc = fn(ctx, &ev);
        buf_reset(&p->raw);
        buf_reset(&p->data);
        p->has_data = false;
        return rc;
    }
    if ((result = buf_append(&p->raw, l, n)) || (result = buf_append(&p->raw, "\n", 1)))
        return sse_map(result);
    if (n >= 4 && !memcmp(l, "data", 4) && (n == 4 || l[4] == ':')) {
        const char *v = n == 4 ? "" : l + 5;
        size_t vn = n == 4 ? 0 : n - 5;
        if (vn && *v == ' ') {
            v++;
            vn--;
        }
        if (p->has_data && (result = buf_append(&p->data, "\n", 1)))
            return sse_map(result);
        if ((result = buf_append(&p->data, v, vn)))
            return sse_map(result);
        p->has_data = true;
    }
    return SSE_OK;
}

/* The usual event, whole in the bytes fed at *at: one "data:" line ended by LF, then a blank
 * line (LF), maybe after an "event:" line (the Responses API names every event). It is handed
 * over as it lies in those bytes (already normalised), with no copy of the lines or the event;
 * only its payload is copied, to end it with a NUL. *whole is false when the bytes are anything
 * else (the general path reads them); otherwise *at moves past the event and the callback's
 * result is returned. */
static int sse_whole_event(struct sse_parser *p, const char **at, const char *end, sse_event_fn fn,
                           void *ctx, bool *whole)
{
    const char *first = *at, *l = first;
    *whole = false;
    if (end - l >= 6 && !memcmp(l, "event:", 6)) {
        const char *el = memchr(l, '\n', (size_t)(end - l));
        if (!el || memchr(l, '\r', (size_t)(el - l)))
            return SSE_OK;
        l = el + 1;
    }
    size_t avail = (size_t)(end - l);
    if (avail < 7 || memcmp(l, "data:", 5))
        return SSE_OK;
    const char *eol = memchr(l, '\n', avail);
    if (!eol || eol + 1 == end || eol[1] != '\n')
        return SSE_OK;
    size_t n = (size_t)(eol - l);
    if ((size_t)(eol - first) > p->line.max || memchr(l, '\r', n))
        return SSE_OK; /* too big, or lines that end in CR: the general path's */
    *whole = true;
    const char *v = l + 5;
    size_t vn = n - 5;
    if (vn && *v == ' ') {
        v++;
        vn--;
    }
    buf_reset(&p->data);
    int result = buf_append(&p->data, v, vn);
    if (result)
        return sse_map(result);
    struct sse_event ev = {
        .raw = first,
        .raw_len = (size_t)(eol - first) + 2,
        .data = p->data.data ? p->data.data : "",
        .data_len = vn,
        .has_data = true,
    };
    *at = eol + 2;
    int rc = fn(ctx, &ev);
    buf_reset(&p->data);
    return rc;
}

int sse_feed(struct sse_parser *p, const char *bytes, size_t n, sse_event_fn fn, void *ctx)
{
    if (n == 0)
        return SSE_OK; /* keeps skip_lf for the next bytes */
    const char *end = bytes + n;
    if (p->skip_lf && bytes < end && *bytes == '\n')
        bytes++;
    p->skip_lf = false;
    while (bytes < end) {
        if (p->line.len == 0 && p->raw.len == 0) {
            bool whole;
            int rc = sse_whole_event(p, &bytes, end, fn, ctx, &whole);
            if (whole) {
                if (rc)
                    return rc;
                continue;
            }
        }
        const char *eol = bytes;
        while (eol < end && *eol != '\n' && *eol != '\r')
            eol++;
        int result = buf_append(&p->line, bytes, (size_t)(eol - bytes));
        if (result)
            return sse_map(result);
        if (eol == end)
            break;
        if (*eol == '\r') {
            if (eol + 1 < end && eol[1] == '\n')
                eol++;
            else if (eol + 1 == end)
                p->skip_lf = true;
        }
        bytes = eol + 1;
        int rc = sse_line(p, fn, ctx);
        buf_reset(&p->line);
        if (rc)
            return rc;
    }
    return SSE_OK;
}

bool sse_pending(const struct sse_parser *p)
{
    return p->line.len > 0 || p->raw.len > 0;
}

void sse_free(struct sse_parser *p)
{
    buf_free(&p->line);
    buf_free(&p->raw);
    buf_free(&p->data);
}

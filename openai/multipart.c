#include "openai/multipart.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

static const char *const multipart_names[MULTIPART_FIELDS] = {
    [MULTIPART_FIELD_MODEL] = "model",
    [MULTIPART_FIELD_RESPONSE_FORMAT] = "response_format",
    [MULTIPART_FIELD_STREAM] = "stream",
    [MULTIPART_FIELD_LANGUAGE] = "language",
};

const char *multipart_field_name(enum multipart_field f)
{
    return f < MULTIPART_FIELDS ? multipart_names[f] : "";
}

static int multipart_fail(struct multipart *m, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int multipart_fail(struct multipart *m, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->msg, sizeof m->msg, fmt, ap);
    va_end(ap);
    m->param = param;
    m->state = MULTIPART_FAILED;
    return MULTIPART_EBAD;
}

/* RFC 2046's bchars: what a boundary may be made of (a space, but not at its end). */
static bool multipart_bchar(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           strchr("'()+_,-./:=? ", c);
}

static const char *skip_ws(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* One parameter of a header value at p (after its ';'): its name into name[n_max] (lower
 * case), its value, quoted or a token, into val[v_max] (cut when longer; *cut says so).
 * Returns where the next one starts, or NULL when malformed. */
static const char *param_next(const char *p, char *name, size_t n_max, char *val, size_t v_max,
                              bool *cut)
{
    p = skip_ws(p);
    size_t n = 0;
    while (*p && *p != '=' && *p != ';' && *p != ' ' && *p != '\t') {
        if (n + 1 < n_max)
            name[n++] = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        p++;
    }
    name[n] = '\0';
    p = skip_ws(p);
    size_t v = 0;
    *cut = false;
    if (*p == '=') {
        p = skip_ws(p + 1);
        if (*p == '"') {
            for (p++; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (v + 1 < v_max)
                    val[v++] = *p;
                else
                    *cut = true;
            }
            if (*p != '"')
                return NULL; /* an unterminated quoted string */
            p++;
        } else {
            for (; *p && *p != ';' && *p != ' ' && *p != '\t'; p++) {
                if (v + 1 < v_max)
                    val[v++] = *p;
                else
                    *cut = true;
            }
        }
    }
    val[v] = '\0';
    p = skip_ws(p);
    if (*p && *p != ';')
        return NULL;
    return p;
}

int multipart_init(struct multipart *m, const char *content_type)
{
    memset(m, 0, sizeof *m);
    m->state = MULTIPART_BODY;
    /* The body's first delimiter has no CRLF before it: start as if one had just come. */
    m->match = 2;
    static const char type[] = "multipart/form-data";
    const char *p = content_type ? skip_ws(content_type) : "";
    if (strncasecmp(p, type, sizeof type - 1) ||
        (p[sizeof type - 1] && p[sizeof type - 1] != ';' && p[sizeof type - 1] != ' '))
        return multipart_fail(m, NULL, "The request must be multipart/form-data with a file.");
    p = skip_ws(p + sizeof type - 1);
    bool found = false;
    while (*p == ';') {
        char name[32], val[MULTIPART_BOUNDARY_MAX + 2];
        bool cut;
        p = param_next(p + 1, name, sizeof name, val, sizeof val, &cut);
        if (!p)
            break;
        if (strcmp(name, "boundary"))
            continue;
        size_t len = strlen(val);
        bool ok = len >= 1 && !cut && len <= MULTIPART_BOUNDARY_MAX && val[len - 1] != ' ';
        for (size_t i = 0; ok && i < len; i++)
            ok = multipart_bchar(val[i]);
        if (!ok)
            return multipart_fail(m, NULL, "The multipart boundary is not valid (RFC 2046).");
        m->delim_len = (size_t)snprintf(m->delim, sizeof m->delim, "\r\n--%s", val);
        found = true;
        break;
    }
    if (!found)
        return multipart_fail(m, NULL, "The multipart/form-data Content-Type has no boundary.");
    return MULTIPART_OK;
}

/* Content bytes of the current part. */
static int multipart_take(struct multipart *m, const char *data, size_t len)
{
    if (!len)
        return MULTIPART_OK;
    if (m->part == MULTIPART_PART_FILE) {
        m->file_bytes += len;
    } else if (m->part == MULTIPART_PART_FIELD) {
        struct multipart_value *v = &m->values[m->field];
        if (len > MULTIPART_VALUE_MAX - v->len)
            return multipart_fail(m, multipart_names[m->field], "'%s' is longer than %d bytes.",
                                  multipart_names[m->field], MULTIPART_VALUE_MAX);
        memcpy(v->text + v->len, data, len);
        v->len += len;
        v->text[v->len] = '\0';
    }
    return MULTIPART_OK;
}

/* A part ended at a delimiter. */
static void multipart_part_end(struct multipart *m)
{
    if (m->part == MULTIPART_PART_FILE)
        m->has_file = true;
    m->part = MULTIPART_PART_NONE;
}

/* A part's Content-Disposition: form-data; name="..."[; filename="..."]. */
static int multipart_disposition(struct multipart *m, const char *value)
{
    const char *p = skip_ws(value);
    if (strncasecmp(p, "form-data", 9) || (p[9] && p[9] != ';' && p[9] != ' ' && p[9] != '\t'))
        return multipart_fail(m, NULL, "A multipart part is not form-data.");
    p = skip_ws(p + 9);
    char name[64] = "";
    bool named = false;
    while (*p == ';') {
        char key[32], val[64];
        bool cut;
        p = param_next(p + 1, key, sizeof key, val, sizeof val, &cut);
        if (!p)
            return multipart_fail(m, NULL, "A multipart Content-Disposition is malformed.");
        if (!strcmp(key, "name")) {
            if (named)
                return multipart_fail(m, NULL, "A multipart part is named twice.");
            named = true;
            snprintf(name, sizeof name, "%s", cut ? "" : val); /* a long name is none of ours */
        }
    }
    if (*p)
        return multipart_fail(m, NULL, "A multipart Content-Disposition is malformed.");
    if (!named)
        return multipart_fail(m, NULL, "A multipart part has no name.");
    m->part_named = true;
    m->part = MULTIPART_PART_NONE;
    if (!strcmp(name, "file")) {
        if (m->has_file)
            return multipart_fail(m, "file", "'file' is given more than once.");
        m->part = MULTIPART_PART_FILE;
        return MULTIPART_OK;
    }
    for (int f = 0; f < MULTIPART_FIELDS; f++)
        if (!strcmp(name, multipart_names[f])) {
            if (m->values[f].seen)
                return multipart_fail(m, multipart_names[f], "'%s' is given more than once.",
                                      multipart_names[f]);
            m->values[f].seen = true;
            m->part = MULTIPART_PART_FIELD;
            m->field = (enum multipart_field)f;
        }
    return MULTIPART_OK;
}

/* One header line of a part, without its line break. */
static int multipart_header(struct multipart *m)
{
    if (++m->n_headers > MULTIPART_HEADERS_MAX)
        return multipart_fail(m, NULL, "A multipart part has too many header lines.");
    char *colon = memchr(m->line, ':', m->line_len);
    if (!colon || colon == m->line || memchr(m->line, '\0', m->line_len))
        return multipart_fail(m, NULL, "A multipart part has a malformed header line.");
    if ((size_t)(colon - m->line) == 19 && !strncasecmp(m->line, "content-disposition", 19)) {
        if (m->part_named)
            return multipart_fail(m, NULL, "A multipart part has two Content-Dispositions.");
        return multipart_disposition(m, colon + 1);
    }
    return MULTIPART_OK;
}

/* The headers' end: the part's content starts at m->offset. */
static int multipart_headers_end(struct multipart *m)
{
    if (!m->part_named)
        return multipart_fail(m, NULL, "A multipart part has no Content-Disposition name.");
    if (m->part == MULTIPART_PART_FIELD)
        m->values[m->field].offset = m->offset;
    m->state = MULTIPART_BODY;
    m->match = 0;
    return MULTIPART_OK;
}

/* A part starts after its delimiter's line break. */
static int multipart_part_begin(struct multipart *m)
{
    if (++m->n_parts > MULTIPART_PARTS_MAX)
        return multipart_fail(m, NULL, "The multipart body has more than %d parts.",
                              MULTIPART_PARTS_MAX);
    m->state = MULTIPART_HEADERS;
    m->line_len = 0;
    m->n_headers = 0;
    m->part_named = false;
    m->part = MULTIPART_PART_NONE;
    return MULTIPART_OK;
}

int multipart_feed(struct multipart *m, const char *data, size_t len)
{
    size_t i = 0;
    int rc = MULTIPART_OK;
    while (i < len && rc == MULTIPART_OK) {
        char c = data[i];
        switch (m->state) {
        case MULTIPART_BODY: {
            if (m->match == 0) {
                /* The delimiter's only CR is its first byte: content runs to the next CR. */
                const char *cr = memchr(data + i, '\r', len - i);
                size_t upto = cr ? (size_t)(cr - data) : len;
                rc = multipart_take(m, data + i, upto - i);
                m->offset += upto - i;
                i = upto;
                if (cr) {
                    m->match = 1;
                    m->offset++;
                    i++;
                }
                break;
            }
            if (c == m->delim[m->match]) {
                m->match++;
                m->offset++;
                i++;
                if (m->match == m->delim_len) {
                    multipart_part_end(m);
                    m->match = 0;
                    m->state = MULTIPART_DELIM_TAIL;
                }
                break;
            }
            /* Not a delimiter after all: what matched was content; c is looked at again. */
            rc = multipart_take(m, m->delim, m->match);
            m->match = 0;
            break;
        }
        case MULTIPART_DELIM_TAIL: /* transport padding, then CRLF or "--" */
            m->offset++;
            i++;
            if (c == '-')
                m->state = MULTIPART_DASH;
            else if (c == '\r')
                m->state = MULTIPART_DELIM_LF;
            else if (c == '\n')
                rc = multipart_part_begin(m);
            else if (c != ' ' && c != '\t')
                rc = multipart_fail(m, NULL, "A multipart boundary is followed by other text.");
            break;
        case MULTIPART_DELIM_LF:
            m->offset++;
            i++;
            rc = c == '\n' ? multipart_part_begin(m)
                           : multipart_fail(m, NULL, "A multipart boundary line is malformed.");
            break;
        case MULTIPART_DASH:
            m->offset++;
            i++;
            if (c == '-')
                m->state = MULTIPART_END;
            else
                rc = multipart_fail(m, NULL, "A multipart boundary line is malformed.");
            break;
        case MULTIPART_HEADERS:
            m->offset++;
            i++;
            if (c != '\n') {
                if (m->line_len == MULTIPART_LINE_MAX)
                    rc = multipart_fail(m, NULL, "A multipart header line is longer than %d bytes.",
                                        MULTIPART_LINE_MAX);
                else
                    m->line[m->line_len++] = c;
                break;
            }
            if (m->line_len && m->line[m->line_len - 1] == '\r')
                m->line_len--;
            m->line[m->line_len] = '\0';
            rc = m->line_len ? multipart_header(m) : multipart_headers_end(m);
            m->line_len = 0;
            break;
        case MULTIPART_END:
            m->offset += len - i; /* the epilogue */
            i = len;
            break;
        case MULTIPART_FAILED:
            return MULTIPART_EBAD;
        }
    }
    return rc;
}

int multipart_finish(struct multipart *m)
{
    if (m->state == MULTIPART_FAILED)
        return MULTIPART_EBAD;
    if (m->state != MULTIPART_END)
        return multipart_fail(m, NULL, "The multipart body ended before its closing boundary.");
    return MULTIPART_OK;
}

/* An incremental scanner of multipart/form-data bodies (RFC 7578, RFC 2046 §5.1), for the
 * uploads of POST /v1/audio/transcriptions and /v1/audio/translations. It is fed the body in
 * whatever pieces it arrives and keeps only what the gateway needs: the small text fields
 * (MULTIPART_FIELD_*, each at most MULTIPART_VALUE_MAX bytes) with the offset of their value
 * in the body, and the count of the `file` part's bytes, which are skipped without a copy.
 * Every other part is skipped as well. The state is a fixed size, whatever the body.
 *
 * Refused (multipart_feed or multipart_finish returns MULTIPART_EBAD with a message): a
 * Content-Type that is not multipart/form-data with a valid boundary; a part header line
 * over MULTIPART_LINE_MAX bytes, or more than MULTIPART_HEADERS_MAX of them; a part without
 * a Content-Disposition form-data name; more than MULTIPART_PARTS_MAX parts; a captured field
 * or the file given twice, or a captured field over its bound; a body that ends before its
 * closing boundary. No I/O; a scanner belongs to one request. */
#ifndef TOLLGATE_MULTIPART_H
#define TOLLGATE_MULTIPART_H

#include <stdbool.h>
#include <stddef.h>

#define MULTIPART_BOUNDARY_MAX 70 /* RFC 2046 */
#define MULTIPART_LINE_MAX 1024   /* one header line of a part */
#define MULTIPART_HEADERS_MAX 16  /* header lines of one part */
#define MULTIPART_PARTS_MAX 256
#define MULTIPART_VALUE_MAX 256 /* a captured field's value */

enum multipart_field {
    MULTIPART_FIELD_MODEL = 0,
    MULTIPART_FIELD_RESPONSE_FORMAT,
    MULTIPART_FIELD_STREAM,
    MULTIPART_FIELD_LANGUAGE,
    MULTIPART_FIELDS
};

enum multipart_result {
    MULTIPART_OK = 0,
    MULTIPART_EBAD = -1, /* malformed or over a bound: msg and param say what */
};

struct multipart_value {
    bool seen;
    char text[MULTIPART_VALUE_MAX + 1]; /* NUL-terminated; may hold NULs of its own */
    size_t len;
    size_t offset; /* where the value starts in the body */
};

enum multipart_state {
    MULTIPART_BODY,       /* in a part's content (or the preamble): looking for a delimiter */
    MULTIPART_DELIM_TAIL, /* after a delimiter: "--" ends the body, CRLF starts a part */
    MULTIPART_DELIM_LF,   /* after the CR of that CRLF */
    MULTIPART_DASH,       /* after the first '-' of "--" */
    MULTIPART_HEADERS,    /* a part's header lines */
    MULTIPART_END,        /* after the closing delimiter: the epilogue, ignored */
    MULTIPART_FAILED,
};

enum multipart_part {
    MULTIPART_PART_NONE = 0, /* the preamble, or a part that is skipped */
    MULTIPART_PART_FIELD,    /* a captured field: `field` says which */
    MULTIPART_PART_FILE,
};

struct multipart {
    char delim[4 + MULTIPART_BOUNDARY_MAX + 1]; /* "\r\n--" boundary */
    size_t delim_len;
    enum multipart_state state;
    size_t match;  /* bytes of delim matched so far */
    size_t offset; /* body bytes fed so far */
    char line[MULTIPART_LINE_MAX + 1];
    size_t line_len;
    unsigned n_headers;
    unsigned n_parts;
    enum multipart_part part;
    enum multipart_field field;
    bool part_named;
    struct multipart_value values[MULTIPART_FIELDS];
    bool has_file;
    size_t file_bytes;
    char msg[160];
    const char *param; /* the field a refusal is about, or NULL */
};

/* The name of a captured field ("model", "response_format", "stream", "language"). */
const char *multipart_field_name(enum multipart_field f);

/* Reads the boundary from a Content-Type header value. 0, or MULTIPART_EBAD with msg set
 * (the scanner then refuses whatever it is fed). */
int multipart_init(struct multipart *m, const char *content_type);
/* Feeds the next piece of the body. 0, or MULTIPART_EBAD (and so on for every later call). */
int multipart_feed(struct multipart *m, const char *data, size_t len);
/* The body ended: 0 when its closing delimiter came, else MULTIPART_EBAD. */
int multipart_finish(struct multipart *m);

#endif

/* Integers of any size in a request body. jansson holds integers as 64-bit values and refuses
 * a document with a larger one, yet such a body is valid JSON that a backend may take (a seed,
 * an id in a vendor field). A body whose only trouble is such an integer is parsed with each
 * one held as a marked string (OPENAI_BIGNUM_MARK followed by its digits), so the fields the
 * gateway reads are still validated (a huge max_tokens is not an integer it can use), and
 * openai_dump_body() writes the digits back as they came. A body sent on unchanged is the
 * caller's bytes. No state; thread-safe. */
#ifndef TOLLGATE_BIGNUM_H
#define TOLLGATE_BIGNUM_H

#include <jansson.h>
#include <stddef.h>

/* The marker's text as jansson writes it in a dump: a NUL then "tollgate-bignum:". */
#define OPENAI_BIGNUM_MARK "\\u0000tollgate-bignum:"

/* After jansson refused `data` for an integer out of its range: the tree with every such
 * integer held as a marked string. 0 with *out set, or a tg_error with a message (a body
 * with a string that looks like a marker is refused: it would be written back as a number). */
int openai_parse_bignums(const char *data, size_t len, json_t **out, char *msg, size_t msg_len);

/* The body as compact JSON text with marked integers written back as numbers; malloc'd, NULL
 * on OOM. */
char *openai_dump_body(const json_t *body);

#endif

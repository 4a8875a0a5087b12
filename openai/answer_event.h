/* One whole stream event scanned at once (openai/answer.h's scan, without its hold-back).
 *
 * answer_scan_feed() holds back a token cut at the end of a piece, which costs a pass over
 * every byte to find where tokens end; a stream event's payload is always whole when it is
 * scanned (the SSE parser hands over complete events), so no token can be cut and yajl takes
 * it at once. Same facts, same verdicts as answer_scan_feed() then answer_scan_finish(). */
#ifndef TOLLGATE_ANSWER_EVENT_H
#define TOLLGATE_ANSWER_EVENT_H

#include "openai/answer.h"

#include <stddef.h>

/* Scans the whole document data (n bytes) with a scan fresh from answer_scan_init_kind():
 * 0 when it is well-formed JSON, -1 otherwise (or when memory runs out). */
int answer_scan_event(struct answer_scan *s, const char *data, size_t n);

#endif

#include "openai/answer_event.h"

#include <yajl/yajl_parse.h>

int answer_scan_event(struct answer_scan *s, const char *data, size_t n)
{
    /* As answer.c's parse(): the callbacks place the usage object by s->fed plus what yajl
     * consumed, so fed moves only after yajl returns. */
    if (n && yajl_parse(s->handle, (const unsigned char *)data, n) != yajl_status_ok)
        return -1;
    s->fed += n;
    return yajl_complete_parse(s->handle) == yajl_status_ok && s->depth == 0 ? 0 : -1;
}

#include "config/expand.h"

#include "base/buf.h"

#include <stdlib.h>
#include <string.h>

char *config_expand_env(const char *in, char **missing)
{
    struct buf out;
    buf_init(&out, CONFIG_EXPAND_MAX_BYTES);
    *missing = NULL;
    const char *p = in;
    while (*p) {
        const char *start = strstr(p, "${");
        if (!start) {
            if (buf_append_str(&out, p))
                goto err;
            break;
        }
        const char *end = strchr(start + 2, '}');
        if (!end) {
            if (buf_append_str(&out, p))
                goto err;
            break;
        }
        if (buf_append(&out, p, (size_t)(start - p)))
            goto err;
        char name[256];
        size_t n = (size_t)(end - start - 2);
        if (n >= sizeof name)
            n = sizeof name - 1;
        memcpy(name, start + 2, n);
        name[n] = '\0';
        const char *def = NULL;
        char *colon = strstr(name, ":-");
        if (colon) {
            *colon = '\0';
            def = colon + 2;
        }
        const char *val = getenv(name);
        if (!val || (!*val && def))
            val = def;
        if (!val) {
            *missing = strdup(name);
            goto err;
        }
        if (buf_append_str(&out, val))
            goto err;
        p = end + 1;
    }
    if (!out.data)
        return strdup("");
    return buf_steal(&out, NULL);
err:
    buf_free(&out);
    return NULL;
}

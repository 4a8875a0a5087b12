/* Redis URLs (redis_parse_url(), see redis.h): pure string work, no I/O. */
#include "redis/redis.h"

#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- URL parsing -------------------------------------------------------------------------- */

__attribute__((format(printf, 3, 4))) static int url_fail(char *err, size_t n, const char *fmt, ...)
{
    if (err && n) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, n, fmt, ap);
        va_end(ap);
    }
    return REDIS_EINVAL;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/* Percent-decodes s[0..len) into out (NUL-terminated). -1 on a bad escape, an encoded NUL or
 * when it does not fit. */
static int pct_decode(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int ch = (unsigned char)s[i];
        if (ch == '%') {
            if (i + 2 >= len)
                return -1;
            int h = hexval((unsigned char)s[i + 1]), l = hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            ch = h * 16 + l;
            if (ch == 0)
                return -1;
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)ch;
    }
    out[o] = '\0';
    return 0;
}

/* Digits only, no sign, value <= max. */
static int parse_uint(const char *s, size_t len, long max, long *out)
{
    if (len == 0 || len > 10)
        return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* "user:password" → out->user, out->password. */
static int parse_userinfo(const char *s, size_t len, struct redis_url *out, char *err, size_t n)
{
    const char *colon = memchr(s, ':', len);
    if (!colon)
        return url_fail(err, n,
                        "credentials need a ':' (redis://:password@host or "
                        "redis://user:password@host)");
    size_t ulen = (size_t)(colon - s);
    if (pct_decode(s, ulen, out->user, sizeof out->user) != 0)
        return url_fail(err, n, "bad or too long user name");
    if (pct_decode(colon + 1, len - ulen - 1, out->password, sizeof out->password) != 0)
        return url_fail(err, n, "bad percent-encoding in the password, or it is too long");
    return 0;
}

/* "db=N" pairs joined by '&'. */
static int parse_query(const char *q, size_t len, struct redis_url *out, bool have_db, char *err,
                       size_t n)
{
    const char *end = q + len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *stop = amp ? amp : end;
        size_t plen = (size_t)(stop - q);
        if (plen > 3 && !strncmp(q, "db=", 3)) {
            long v;
            if (have_db)
                return url_fail(err, n, "the database is given twice");
            if (parse_uint(q + 3, plen - 3, INT_MAX, &v) != 0)
                return url_fail(err, n, "db must be a number");
            out->db = (int)v;
            have_db = true;
        } else if (plen > 0) {
            return url_fail(err, n, "unknown URL parameter '%.*s' (only db=N is known)",
                            (int)(plen > 40 ? 40 : plen), q);
        }
        q = amp ? amp + 1 : end;
    }
    return 0;
}

static bool host_char_ok(int ch, bool bracketed)
{
    if (isalnum(ch) || ch == '.' || ch == '-' || ch == '_')
        return true;
    return bracketed && (ch == ':' || ch == '%');
}

static int parse_tcp(const char *rest, struct redis_url *out, char *err, size_t n)
{
    const char *at = strrchr(rest, '@');
    if (at) {
        int rc = parse_userinfo(rest, (size_t)(at - rest), out, err, n);
        if (rc)
            return rc;
        rest = at + 1;
    }
    size_t hp_len = strcspn(rest, "/?");
    const char *hp = rest, *hp_end = rest + hp_len;
    const char *port = NULL;
    if (*hp == '[') {
        const char *close = memchr(hp, ']', hp_len);
        if (!close)
            return url_fail(err, n, "missing ']' after an IPv6 address");
        size_t hl = (size_t)(close - hp - 1);
        if (hl == 0 || hl >= sizeof out->host)
            return url_fail(err, n, "bad host");
        for (size_t i = 0; i < hl; i++)
            if (!host_char_ok((unsigned char)hp[1 + i], true))
                return url_fail(err, n, "bad character in the host");
        memcpy(out->host, hp + 1, hl);
        out->host[hl] = '\0';
        if (close + 1 < hp_end) {
            if (close[1] != ':')
                return url_fail(err, n, "unexpected text after ']'");
            port = close + 2;
        }
    } else {
        const char *colon = memchr(hp, ':', hp_len);
        size_t hl = colon ? (size_t)(colon - hp) : hp_len;
        if (colon && memchr(colon + 1, ':', (size_t)(hp_end - colon - 1)))
            return url_fail(err, n, "an IPv6 address needs brackets: redis://[::1]:6379");
        if (hl == 0)
            return url_fail(err, n, "no host");
        if (hl >= sizeof out->host)
            return url_fail(err, n, "host name too long");
        for (size_t i = 0; i < hl; i++)
            if (!host_char_ok((unsigned char)hp[i], false))
                return url_fail(err, n, "bad character in the host");
        memcpy(out->host, hp, hl);
        out->host[hl] = '\0';
        if (colon)
            port = colon + 1;
    }
    if (port) {
        long v;
        if (parse_uint(port, (size_t)(hp_end - port), 65535, &v) != 0 || v == 0)
            return url_fail(err, n, "port must be a number from 1 to 65535");
        out->port = (int)v;
    }
    const char *p = hp_end;
    bool have_db = false;
    if (*p == '/') {
        size_t dlen = strcspn(p + 1, "?");
        if (dlen > 0) {
            long v;
            if (parse_uint(p + 1, dlen, INT_MAX, &v) != 0)
                return url_fail(err, n, "the path must be a database number (/0, /1, ...)");
            out->db = (int)v;
            have_db = true;
        }
        p += 1 + dlen;
    }
    if (*p == '?')
        return parse_query(p + 1, strlen(p + 1), out, have_db, err, n);
    return 0;
}

static int parse_unix(const char *rest, struct redis_url *out, char *err, size_t n)
{
    out->unix_socket = true;
    out->port = 0;
    if (!strncmp(rest, "//", 2)) {
        rest += 2;
        if (*rest != '/') {
            /* unix://[user]:password@/path: the credentials end where the path begins. */
            const char *at = strstr(rest, "@/");
            if (!at)
                return url_fail(err, n, "expected unix:///path or unix://:password@/path");
            int rc = parse_userinfo(rest, (size_t)(at - rest), out, err, n);
            if (rc)
                return rc;
            rest = at + 1;
        }
    }
    if (*rest != '/')
        return url_fail(err, n, "the socket path must be absolute (unix:/path/to.sock)");
    size_t plen = strcspn(rest, "?");
    if (plen >= sizeof out->path)
        return url_fail(err, n, "socket path too long (at most %zu bytes)", sizeof out->path - 1);
    memcpy(out->path, rest, plen);
    out->path[plen] = '\0';
    if (rest[plen] == '?')
        return parse_query(rest + plen + 1, strlen(rest + plen + 1), out, false, err, n);
    return 0;
}

int redis_parse_url(const char *url, struct redis_url *out, char *err, size_t n)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (err && n)
        err[0] = '\0';
    if (!url || !*url)
        return url_fail(err, n, "empty Redis URL");
    int rc;
    if (!strncasecmp(url, "rediss://", 9))
        rc = url_fail(err, n, "TLS (rediss://) is not supported");
    else if (!strncasecmp(url, "redis://", 8))
        rc = parse_tcp(url + 8, out, err, n);
    else if (!strncasecmp(url, "unix:", 5))
        rc = parse_unix(url + 5, out, err, n);
    else
        rc = url_fail(err, n, "must start with redis:// or unix:");
    if (rc) {
        /* Nothing half-parsed (a password, say) is left behind for a careless caller. */
        memset(out, 0, sizeof *out);
    }
    return rc;
}

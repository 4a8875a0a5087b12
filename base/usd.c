#include "base/usd.h"

#include "base/buf.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Drops trailing zeros after the decimal point, keeping one digit after it ("3.0"). */
static void usd_trim(char *out)
{
    char *dot = strchr(out, '.');
    if (!dot)
        return;
    char *end = out + strlen(out) - 1;
    while (end > dot + 1 && *end == '0')
        *end-- = '\0';
}

void usd_format(char *out, size_t n, double usd)
{
    if (!n)
        return;
    if (!isfinite(usd) || fabs(usd) < 0.5e-10) {
        snprintf(out, n, "0.0");
        return;
    }
    bool neg = usd < 0;
    double v = neg ? -usd : usd;
    char tmp[USD_TEXT_MAX];
    if (v < 1e5) {
        /* Below 1e5 the units of 1e-10 fit in 53 bits: the digits by integer arithmetic, as
         * printf's float conversion is several times slower (this is on the hot path). */
        unsigned long long units = (unsigned long long)(v * 1e10 + 0.5);
        int i = sizeof tmp - 1;
        tmp[i] = '\0';
        for (int d = 0; d < 10; d++, units /= 10)
            tmp[--i] = (char)('0' + units % 10);
        tmp[--i] = '.';
        do {
            tmp[--i] = (char)('0' + units % 10);
            units /= 10;
        } while (units);
        if (neg)
            tmp[--i] = '-';
        memmove(tmp, tmp + i, sizeof tmp - (size_t)i);
    } else if (v < 1e15) {
        /* 15 significant digits at most: a double holds 15 exactly. */
        int decimals = 15 - (int)floor(log10(v)) - 1;
        snprintf(tmp, sizeof tmp, "%s%.*f", neg ? "-" : "", decimals > 0 ? decimals : 1, v);
    } else {
        snprintf(tmp, sizeof tmp, "%s%.1f", neg ? "-" : "", v);
    }
    usd_trim(tmp);
    snprintf(out, n, "%s", tmp);
}

/* The end of the JSON string token that starts at s[i] (a quote): the index past its closing
 * quote. */
static size_t usd_string_end(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* Whether a member named key[0..n) holds an amount in USD: "cost", or a name with "usd" in
 * it (cost_usd, budget_usd, input_usd_per_mtok, spend_usd, ...). */
static bool usd_key(const char *key, size_t n)
{
    if (n == 4 && !memcmp(key, "cost", 4))
        return true;
    for (size_t i = 0; i + 3 <= n; i++)
        if (!memcmp(key + i, "usd", 3))
            return true;
    return false;
}

char *usd_json_dumps(const json_t *doc, size_t flags)
{
    char *text = json_dumps(doc, flags);
    if (!text)
        return NULL;
    size_t len = strlen(text);
    struct buf out;
    /* A rewritten real is never longer than USD_TEXT_MAX, and jansson's are at least 3. */
    buf_init(&out, len * (USD_TEXT_MAX / 3 + 1) + 1);
    int err = 0;
    size_t i = 0, copied = 0;
    const char *key = NULL; /* the last string, and whether a ':' followed it */
    size_t key_len = 0;
    bool after_key = false;
    while (i < len && !err) {
        char c = text[i];
        if (c == '"') {
            size_t end = usd_string_end(text, i, len);
            key = text + i + 1;
            key_len = end > i + 1 ? end - i - 2 : 0;
            after_key = false;
            i = end;
            continue;
        }
        if (c == ':') {
            after_key = key != NULL;
            i++;
            continue;
        }
        if (c != '-' && (c < '0' || c > '9')) {
            if (c != ' ' && c != '\n' && c != '\t' && c != '\r')
                after_key = false;
            i++;
            continue;
        }
        size_t start = i;
        bool real = false;
        while (i < len && strchr("0123456789+-.eE", text[i])) {
            real |= text[i] == '.' || text[i] == 'e' || text[i] == 'E';
            i++;
        }
        bool amount = real && after_key && usd_key(key, key_len);
        after_key = false;
        if (!amount)
            continue;
        char num[USD_TEXT_MAX];
        usd_format(num, sizeof num, strtod(text + start, NULL));
        err |= buf_append(&out, text + copied, start - copied);
        err |= buf_append_str(&out, num);
        copied = i;
    }
    err |= buf_append(&out, text + copied, len - copied);
    free(text);
    if (err) {
        buf_free(&out);
        return NULL;
    }
    if (!out.len) /* an empty dump cannot happen for a valid document */
        return calloc(1, 1);
    return buf_steal(&out, NULL);
}

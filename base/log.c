#include "base/log.h"

#include <limits.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int log_level_now = LOG_INFO;

/* A worker's pending lines (log_buffer_lines()): written by log_flush(), in writes of whole
 * lines of at most PIPE_BUF bytes, so lines from different threads never interleave. */
#define LOG_BUFFER_BYTES 16384
static __thread struct {
    bool on;
    size_t len;
    char data[LOG_BUFFER_BYTES];
} log_pending;

void log_buffer_lines(void)
{
    log_pending.on = true;
}

static void log_write(const char *data, size_t len)
{
    while (len) {
        ssize_t w = write(STDOUT_FILENO, data, len);
        if (w <= 0)
            return; /* stdout gone or full: a log line is not worth blocking for */
        data += w;
        len -= (size_t)w;
    }
}

void log_flush(void)
{
    size_t off = 0;
    while (off < log_pending.len) {
        size_t n = log_pending.len - off;
        if (n > PIPE_BUF) {
            /* Up to the last line end within PIPE_BUF (lines are shorter than that). */
            n = PIPE_BUF;
            while (n && log_pending.data[off + n - 1] != '\n')
                n--;
            if (!n)
                n = PIPE_BUF;
        }
        log_write(log_pending.data + off, n);
        off += n;
    }
    log_pending.len = 0;
}

void log_set_level(enum log_level level)
{
    atomic_store_explicit(&log_level_now, (int)level, memory_order_relaxed);
}

bool log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level_now, memory_order_relaxed) &&
           level != LOG_OFF;
}

char *log_escape(char *out, size_t n, const char *in)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)(in ? in : ""); *p && o + 7 < n; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') {
            out[o++] = '\\';
            out[o++] = (char)c;
        } else if (c < 0x20) {
            out[o++] = '\\';
            out[o++] = 'u';
            out[o++] = '0';
            out[o++] = '0';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = (char)c;
        }
    }
    out[o] = '\0';
    return out;
}

void log_event(enum log_level level, const char *event, const char *members_fmt, ...)
{
    static const char *const names[] = {"debug", "info", "warn", "error", "off"};
    if (!log_enabled(level))
        return;
    char line[PIPE_BUF];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof line,
                     "{\"ts\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\","
                     "\"event\":\"%s\"",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level], event);
    if (members_fmt && n > 0 && (size_t)n < sizeof line - 2) {
        line[n++] = ',';
        va_list ap;
        va_start(ap, members_fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, members_fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if (n < 0)
        return;
    if ((size_t)n > sizeof line - 3)
        n = (int)sizeof line - 3; /* a truncated line still ends as one line */
    line[n++] = '}';
    line[n++] = '\n';
    if (!log_pending.on || level >= LOG_WARN) {
        log_flush(); /* problems go out at once, after what came before them */
        log_write(line, (size_t)n);
        return;
    }
    if (log_pending.len + (size_t)n > sizeof log_pending.data)
        log_flush();
    memcpy(log_pending.data + log_pending.len, line, (size_t)n);
    log_pending.len += (size_t)n;
}

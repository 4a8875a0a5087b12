/* Structured logging: one JSON object per line on stdout.
 *
 * Callers pass already-escaped JSON members ("\"k\":v"); log_escape() makes a string safe to
 * embed. Never pass a key, a prompt or an Authorization header. Thread-safe: every line is
 * formatted on the caller's stack and written with one write(2) (atomic for pipes up to
 * PIPE_BUF), so lines from workers never interleave; see log_buffer_lines(). */
#ifndef TOLLGATE_LOG_H
#define TOLLGATE_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);

/* From now on this thread keeps its info and debug lines until log_flush() (a worker calls
 * it before its loop waits), so a busy worker writes many lines per write(2). Warnings and
 * errors are written at once. */
void log_buffer_lines(void);
void log_flush(void);

/* Writes {"ts":...,"level":...,"event":EVENT, <members>}. `members_fmt` may be NULL. */
void log_event(enum log_level level, const char *event, const char *members_fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* JSON-escapes `in` into out (always NUL-terminated, truncated to fit). Returns out. */
char *log_escape(char *out, size_t n, const char *in);

#endif

/* The ledger's spool: one JSON line per record Redis has not acknowledged, in a file of the
 * worker's own (locked, so one writer a spool), replayed by ledger.c; spools left by other
 * processes adopted at start; and the records held in memory, within a cap, when the spool
 * cannot take them (its disk full or failing, its cap reached, no spool at all). */
#include "tenancy/ledger-int.h"

#include "base/clock.h"
#include "base/log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define LEDGER_COMPACT_MIN (1ll << 20) /* replayed bytes before the spool is rewritten */
#define LEDGER_DROP_LOG_INTERVAL_S 10.0

void ledger_drop(struct ledger *l, const struct ledger_record *r, const char *why)
{
    ledger_count(&l->dropped);
    double now = clock_mono();
    if (now - l->last_drop_log < LEDGER_DROP_LOG_INTERVAL_S)
        return;
    l->last_drop_log = now;
    char id[2 * LEDGER_FIELD_MAX], path[512], msg[400];
    log_event(LOG_ERROR, "ledger_dropped",
              "\"request_id\":\"%s\",\"spool\":\"%s\",\"message\":\"%s\",\"dropped\":%llu",
              log_escape(id, sizeof id, r ? r->id : ""), log_escape(path, sizeof path, l->path),
              log_escape(msg, sizeof msg, why), (unsigned long long)atomic_load(&l->dropped));
}

/* The spool did not take r (why): it waits in memory for the disk or Redis, within held_max;
 * beyond that it is dropped. */
static void ledger_hold(struct ledger *l, const struct ledger_record *r, const char *line, size_t n,
                        const char *why)
{
    size_t cost = sizeof(struct ledger_held) + n;
    char msg[300];
    if (l->held_bytes + cost > l->held_max) {
        snprintf(msg, sizeof msg, "%s; spool_memory_bytes (%zu) is full", why, l->held_max);
        ledger_drop(l, r, msg);
        return;
    }
    struct ledger_held *h = malloc(cost);
    if (!h) {
        snprintf(msg, sizeof msg, "%s; out of memory", why);
        ledger_drop(l, r, msg);
        return;
    }
    h->len = n;
    memcpy(h->line, line, n);
    list_push_tail(&l->held, &h->link);
    l->held_bytes += cost;
    l->n_held++;
    ledger_publish_held(l);
    if (!l->holding) {
        l->holding = true;
        char path[512];
        log_event(LOG_ERROR, "ledger_holding",
                  "\"spool\":\"%s\",\"reason\":\"%s\",\"max_bytes\":%zu,\"message\":\"the spool "
                  "cannot take usage records: they are held in memory until the disk or Redis "
                  "takes them (lost if the process stops first); beyond spool_memory_bytes they "
                  "are dropped\"",
                  log_escape(path, sizeof path, l->path), log_escape(msg, sizeof msg, why),
                  l->held_max);
    }
}

/* Frees a held entry that reached the spool or Redis. */
void ledger_unhold(struct ledger *l, struct ledger_held *h)
{
    list_unlink(&h->link);
    l->held_bytes -= sizeof *h + h->len;
    l->n_held--;
    free(h);
    ledger_publish_held(l);
    if (l->holding && l->n_held == 0) {
        l->holding = false;
        char path[512];
        log_event(LOG_INFO, "ledger_released",
                  "\"spool\":\"%s\",\"message\":\"no usage record is held in memory any more\"",
                  log_escape(path, sizeof path, l->path));
    }
}

/* Appends one line to the spool as one write(2); a partial write is undone, so the file only
 * ever holds whole lines. 0, or -1 with the reason in why. */
static int ledger_append(struct ledger *l, const char *line, size_t n, char *why, size_t why_len)
{
    if (l->fd == -1) {
        snprintf(why, why_len, "%s", l->no_spool[0] ? l->no_spool : "spool closed");
        return -1;
    }
    if (l->size + (off_t)n > l->spool_max) {
        snprintf(why, why_len, "spool full (spool_max_bytes: %lld)", (long long)l->spool_max);
        return -1;
    }
    ssize_t w = write(l->fd, line, n);
    if (w != (ssize_t)n) {
        int saved = errno;
        if (w > 0 && ftruncate(l->fd, l->size) == -1)
            saved = errno;
        snprintf(why, why_len, "spool write failed: %s", w < 0 ? strerror(saved) : "short write");
        return -1;
    }
    l->size += (off_t)n;
    ledger_publish_size(l);
    ledger_count(&l->spooled);
    return 0;
}

/* Spools r: Redis did not take it (cause: why, for the log; NULL logs nothing). When the
 * spool cannot take it either, it is held in memory. */
void ledger_spool(struct ledger *l, const struct ledger_record *r, const char *cause)
{
    char line[LEDGER_LINE_MAX + 1], why[200];
    int n = ledger_format_line(r, line, sizeof line);
    if (n < 0) {
        ledger_drop(l, r, "record too long for the spool");
        return;
    }
    if (ledger_append(l, line, (size_t)n, why, sizeof why)) {
        ledger_hold(l, r, line, (size_t)n, why);
        return;
    }
    if (!l->spooling && cause) {
        l->spooling = true;
        char path[512];
        log_event(LOG_WARN, "ledger_spooling",
                  "\"spool\":\"%s\",\"message\":\"%s: usage records go to the spool and are "
                  "replayed when Redis takes them\"",
                  log_escape(path, sizeof path, l->path), cause);
    }
}

/* Held records go to the spool while it takes them (the disk has room again). */
void ledger_spool_held(struct ledger *l)
{
    struct list *node;
    char why[200];
    while ((node = list_first(&l->held))) {
        struct ledger_held *h = LIST_ENTRY(node, struct ledger_held, link);
        if (ledger_append(l, h->line, h->len, why, sizeof why))
            break;
        ledger_unhold(l, h);
    }
}

/* Rewrites the spool without its replayed head, once that head is large and most of the
 * file; the tail (records spooled while replaying) is copied. On any failure the file stays
 * as it is (replay goes on from `done`). */
void ledger_compact(struct ledger *l)
{
    if (l->done < LEDGER_COMPACT_MIN || l->size - l->done > l->done)
        return;
    char tmp[4200];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", l->path) >= sizeof tmp)
        return;
    int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd == -1)
        return;
    char *buf = malloc(LEDGER_READ_CHUNK);
    off_t at = l->done;
    bool ok = buf != NULL;
    while (ok && at < l->size) {
        size_t want = (size_t)(l->size - at < LEDGER_READ_CHUNK ? l->size - at : LEDGER_READ_CHUNK);
        ssize_t got = pread(l->fd, buf, want, at);
        ok = got > 0 && write(fd, buf, (size_t)got) == got;
        at += got > 0 ? got : 0;
    }
    free(buf);
    if (!ok || rename(tmp, l->path) == -1) {
        close(fd);
        unlink(tmp);
        return;
    }
    close(l->fd);
    l->fd = fd;
    l->size -= l->done;
    l->done = 0;
    ledger_publish_size(l);
}

/* Appends the whole lines of the spool at `from` to this ledger's spool. 0, or -1 when it
 * could not all be copied (the orphan then stays for a later run). */
static int ledger_copy_lines(struct ledger *l, int from, off_t *copied)
{
    char *buf = malloc(LEDGER_READ_CHUNK);
    if (!buf)
        return -1;
    off_t at = 0;
    int rc = 0;
    for (;;) {
        ssize_t got = pread(from, buf, LEDGER_READ_CHUNK, at);
        if (got < 0) {
            rc = -1;
            break;
        }
        if (got == 0)
            break;
        /* Up to the last line end in the chunk: a line cut by a crash is left behind. */
        size_t n = (size_t)got;
        while (n && buf[n - 1] != '\n')
            n--;
        if (!n) {
            if (got == LEDGER_READ_CHUNK) {
                at += got; /* a "line" longer than any record: corrupt, skipped */
                continue;
            }
            break;
        }
        if (l->size + (off_t)n > LEDGER_SPOOL_MAX || write(l->fd, buf, n) != (ssize_t)n) {
            rc = -1;
            break;
        }
        l->size += (off_t)n;
        *copied += (off_t)n;
        at += (off_t)n;
    }
    free(buf);
    return rc;
}

/* Spools nobody holds any more, next to this one: their records are replayed here. */
void ledger_adopt(struct ledger *l)
{
    const char *slash = strrchr(l->path, '/');
    char dir[4096];
    if ((size_t)snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - l->path) : 1,
                         slash ? l->path : ".") >= sizeof dir)
        return;
    if (!*dir)
        snprintf(dir, sizeof dir, "/");
    DIR *d = opendir(dir);
    if (!d)
        return;
    const size_t pre = strlen(LEDGER_SPOOL_PREFIX), suf = strlen(LEDGER_SPOOL_SUFFIX);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= pre + suf || strncmp(e->d_name, LEDGER_SPOOL_PREFIX, pre) ||
            strcmp(e->d_name + n - suf, LEDGER_SPOOL_SUFFIX))
            continue;
        char path[4400], lock_path[4400];
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, e->d_name) >= sizeof path - 8 ||
            !strcmp(path, l->path))
            continue;
        memcpy(lock_path, path, strlen(path));
        memcpy(lock_path + strlen(path), ".lock", 6);
        int lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
        if (lock_fd == -1)
            continue;
        if (flock(lock_fd, LOCK_EX | LOCK_NB) == -1) {
            close(lock_fd); /* a live ledger's spool */
            continue;
        }
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        off_t copied = 0;
        if (fd != -1 && ledger_copy_lines(l, fd, &copied) == 0) {
            unlink(path);
            unlink(lock_path);
            if (copied) {
                char from[600], to[600];
                log_event(LOG_INFO, "ledger_spool_adopted",
                          "\"from\":\"%s\",\"spool\":\"%s\",\"bytes\":%lld",
                          log_escape(from, sizeof from, path), log_escape(to, sizeof to, l->path),
                          (long long)copied);
            }
        }
        if (fd != -1)
            close(fd);
        close(lock_fd);
    }
    closedir(d);
}

/* Locks and opens l->path. 0, or -1 with errno set and *step saying which step failed. */
int ledger_open_spool(struct ledger *l, const char **step)
{
    char lock_path[4200];
    *step = "lock";
    if ((size_t)snprintf(lock_path, sizeof lock_path, "%s.lock", l->path) >= sizeof lock_path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    /* Two writers would replay and truncate each other's records: refuse a spool in use.
     * Another ledger may hold it for a moment while adopting it (ledger_adopt): retry. */
    if ((l->lock_fd = open(lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) == -1)
        return -1;
    for (int tries = 0; flock(l->lock_fd, LOCK_EX | LOCK_NB) == -1; tries++) {
        if (errno != EWOULDBLOCK || tries == 50)
            return -1;
        usleep(10000);
    }
    *step = "open";
    if ((l->fd = open(l->path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0600)) == -1)
        return -1;
    struct stat st;
    if (fstat(l->fd, &st) == -1)
        return -1;
    l->size = st.st_size;
    /* A line cut short by a crash is ended, so it stays one (corrupt) line on its own. */
    char last;
    if (l->size > 0 && pread(l->fd, &last, 1, l->size - 1) == 1 && last != '\n' &&
        write(l->fd, "\n", 1) == 1)
        l->size++;
    return 0;
}

/* The spool cannot be used (a directory not writable, a spool another process holds): the
 * ledger goes on without one, and what Redis does not take is held in memory. */
void ledger_no_spool(struct ledger *l, const char *step, int err)
{
    if (l->fd != -1)
        close(l->fd);
    if (l->lock_fd != -1)
        close(l->lock_fd);
    l->fd = l->lock_fd = -1;
    l->size = l->done = 0;
    snprintf(l->no_spool, sizeof l->no_spool, "no spool (%s: %s)", step,
             err == EWOULDBLOCK ? "held by another process" : strerror(err));
    char path[512], msg[200];
    log_event(LOG_ERROR, "ledger_no_spool",
              "\"spool\":\"%s\",\"error\":\"%s\",\"message\":\"the usage spool cannot be used: "
              "records Redis does not take are held in memory (spool_memory_bytes), then "
              "dropped\"",
              log_escape(path, sizeof path, l->path), log_escape(msg, sizeof msg, l->no_spool));
}

void ledger_spool_close(struct ledger *l, const char *path)
{
    if (l->fd != -1) {
        if (l->size == l->done && !l->batch_pending) {
            /* Nothing waits for Redis: no file left behind (removed while still locked). */
            char lock_path[4200];
            snprintf(lock_path, sizeof lock_path, "%s.lock", l->path);
            unlink(l->path);
            unlink(lock_path);
        } else {
            log_event(LOG_WARN, "ledger_spool_kept",
                      "\"spool\":\"%s\",\"bytes\":%lld,\"message\":\"usage records wait in the "
                      "spool for Redis; the next start with this spool_dir replays them\"",
                      path, (long long)(l->size - l->done));
        }
        close(l->fd);
        l->fd = -1;
    }
    if (l->lock_fd != -1) {
        close(l->lock_fd); /* the spool is free for the next process */
        l->lock_fd = -1;
    }
}

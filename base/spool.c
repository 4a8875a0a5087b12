#include "base/spool.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

void spool_init(struct spool *s, size_t mem_max, size_t max)
{
    *s = (struct spool){.mem_max = mem_max < max ? mem_max : max, .max = max, .fd = -1};
    buf_init(&s->mem, s->mem_max);
}

/* An unlinked temporary file in $TMPDIR (else /tmp). */
static int spool_open(void)
{
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
#ifdef O_TMPFILE
    int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd != -1)
        return fd;
#endif
    char path[4096];
    if (snprintf(path, sizeof path, "%s/tollgate-upload-XXXXXX", dir) >= (int)sizeof path) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int tmp = mkstemp(path);
    if (tmp == -1)
        return -1;
    unlink(path);
    if (fcntl(tmp, F_SETFD, FD_CLOEXEC) == -1) {
        close(tmp);
        return -1;
    }
    return tmp;
}

int spool_write(struct spool *s, const void *data, size_t len)
{
    if (len > s->max - s->len)
        return SPOOL_ETOOBIG;
    const char *p = data;
    size_t in_mem = s->len < s->mem_max ? s->mem_max - s->len : 0;
    if (in_mem > len)
        in_mem = len;
    if (in_mem && buf_append(&s->mem, p, in_mem))
        return SPOOL_ENOMEM;
    if (in_mem == len) {
        s->len += len;
        return SPOOL_OK;
    }
    if (s->fd == -1 && (s->fd = spool_open()) == -1) {
        s->mem.len -= in_mem; /* nothing of this write is kept */
        return SPOOL_EIO;
    }
    size_t done = in_mem;
    off_t at = (off_t)(s->len + in_mem - s->mem_max);
    while (done < len) {
        ssize_t n = pwrite(s->fd, p + done, len - done, at);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            s->mem.len -= in_mem;
            return SPOOL_EIO;
        }
        done += (size_t)n;
        at += n;
    }
    s->len += len;
    return SPOOL_OK;
}

ssize_t spool_read(const struct spool *s, size_t off, void *out, size_t n)
{
    if (off >= s->len || n == 0)
        return 0;
    if (n > s->len - off)
        n = s->len - off;
    char *o = out;
    size_t got = 0;
    if (off < s->mem_max) {
        size_t m = s->mem_max - off < n ? s->mem_max - off : n;
        memcpy(o, s->mem.data + off, m);
        got = m;
    }
    while (got < n) {
        ssize_t r = pread(s->fd, o + got, n - got, (off_t)(off + got - s->mem_max));
        if (r == -1 && errno == EINTR)
            continue;
        if (r == -1)
            return got ? (ssize_t)got : -1;
        if (r == 0) {
            errno = EIO; /* the file is shorter than what was written to it */
            return got ? (ssize_t)got : -1;
        }
        got += (size_t)r;
    }
    return (ssize_t)got;
}

bool spool_on_disk(const struct spool *s)
{
    return s->fd != -1;
}

void spool_free(struct spool *s)
{
    buf_free(&s->mem);
    if (s->fd != -1)
        close(s->fd);
    s->fd = -1;
    s->len = 0;
}

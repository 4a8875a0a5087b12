/* A bounded upload spool (nginx's client_body_buffer_size and client_body_temp_path): the
 * first `mem_max` bytes are held in memory, the rest in an unlinked temporary file, up to
 * `max` bytes in all. So an upload costs at most mem_max bytes of memory whatever its size,
 * and it can be read back from any offset as often as needed (a failover replays it).
 *
 * The file is made with O_TMPFILE in $TMPDIR (else /tmp), or mkstemp() and unlink() where
 * the file system has no O_TMPFILE: it has no name while it is used, and it is gone when the
 * spool is freed or the process dies. Reads and writes are plain pread/write on a regular
 * file (the page cache), as nginx does on its event loop.
 *
 * Not thread-safe: a spool belongs to one request on one worker. */
#ifndef TOLLGATE_SPOOL_H
#define TOLLGATE_SPOOL_H

#include "base/buf.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

enum spool_result {
    SPOOL_OK = 0,
    SPOOL_ENOMEM = -1,
    SPOOL_ETOOBIG = -2, /* the write would pass `max`; nothing was written */
    SPOOL_EIO = -3,     /* the temporary file could not be made or written (errno set) */
};

struct spool {
    struct buf mem; /* the first mem_max bytes */
    size_t mem_max;
    size_t len; /* bytes written in all */
    size_t max; /* the most bytes the spool may ever hold */
    int fd;     /* the temporary file with the bytes after mem_max; -1 before it is needed */
};

void spool_init(struct spool *s, size_t mem_max, size_t max);
/* Appends; 0 or a spool_result. After an error the spool keeps what it had. */
int spool_write(struct spool *s, const void *data, size_t len);
/* Copies up to n bytes from offset `off` into out: the count (0 at the end), or -1 on a read
 * error (errno set). */
ssize_t spool_read(const struct spool *s, size_t off, void *out, size_t n);
/* True once bytes went to the temporary file. */
bool spool_on_disk(const struct spool *s);
/* Frees the memory and closes the file (which takes it away). Safe to call twice. */
void spool_free(struct spool *s);

#endif

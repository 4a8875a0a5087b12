/* Shared by the libFuzzer targets (tests/fuzz/fuzz_<name>.c) and the replay driver (replay.c).
 *
 * Each target defines LLVMFuzzerTestOneInput() and nothing else that outlives a run: whatever
 * a run allocates it frees, and global state it touches is either reset by the run or bounded
 * by design (metrics label tables). A property a target checks is asserted with FUZZ_CHECK,
 * which aborts, so libFuzzer keeps the input and the replay fails on it.
 *
 * Targets that feed a parser in pieces read their split points from the input itself (the
 * fuzzer mutates them like any other byte): see struct fuzz_split. */
#ifndef TOLLGATE_FUZZ_H
#define TOLLGATE_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_MAX_SPLITS 7

/* Where to cut an input fed in pieces. The input starts with a control byte whose low three
 * bits say how many chunk-length bytes follow (0 to 7); each of those gives a chunk of
 * 1 + byte bytes, used in turn. With none, every chunk is one byte long. The high five bits
 * are left to the target (a cap, a mode). The payload is what follows. */
struct fuzz_split {
    unsigned char lens[FUZZ_MAX_SPLITS];
    size_t n_lens, next;
    unsigned extra; /* the control byte's high five bits */
};

/* Reads the control bytes; *data and *size are left on the payload. */
static inline void fuzz_split_init(struct fuzz_split *s, const uint8_t **data, size_t *size)
{
    *s = (struct fuzz_split){0};
    if (*size == 0)
        return;
    unsigned ctl = (*data)[0];
    size_t n = ctl & 7u;
    if (n > *size - 1)
        n = *size - 1;
    for (size_t i = 0; i < n; i++)
        s->lens[i] = (*data)[1 + i];
    s->n_lens = n;
    s->extra = ctl >> 3;
    *data += 1 + n;
    *size -= 1 + n;
}

/* The length of the next chunk, at most `left`. */
static inline size_t fuzz_split_next(struct fuzz_split *s, size_t left)
{
    size_t len = 1;
    if (s->n_lens) {
        len = 1 + (size_t)s->lens[s->next];
        s->next = (s->next + 1) % s->n_lens;
    }
    return len < left ? len : left;
}

/* A NUL-terminated copy of the input (what a C API taking strings is given). */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (!s)
        abort();
    for (size_t i = 0; i < size; i++)
        s[i] = (char)data[i];
    s[size] = '\0';
    return s;
}

#endif

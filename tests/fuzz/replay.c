/* Replays inputs through a fuzz target without libFuzzer: `replay_<target> FILE...` calls
 * LLVMFuzzerTestOneInput() once per file, as libFuzzer would, and fails on the first check
 * that aborts. Built with the ordinary compiler and flags by `make fuzz-replay` (part of
 * `make test`), so the seed corpus and every regression input run on each test. */
#include "tests/fuzz/fuzz.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint8_t *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    uint8_t *data = malloc(cap);
    while (data) {
        n += fread(data + n, 1, cap - n, f);
        if (n < cap)
            break;
        uint8_t *more = realloc(data, cap *= 2);
        if (!more)
            free(data);
        data = more;
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(data);
        return NULL;
    }
    *size = n;
    return data;
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        size_t size = 0;
        uint8_t *data = read_all(argv[i], &size);
        if (!data) {
            fprintf(stderr, "%s: cannot read %s\n", argv[0], argv[i]);
            return 1;
        }
        /* An exact-size copy, so a read past the input is past the allocation. */
        uint8_t *exact = malloc(size ? size : 1);
        if (!exact)
            return 1;
        memcpy(exact, data, size);
        free(data);
        LLVMFuzzerTestOneInput(exact, size);
        free(exact);
    }
    return 0;
}

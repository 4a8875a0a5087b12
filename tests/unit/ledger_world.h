/* The ledger tests' world, shared by tests/unit/test_ledger.c (the line format, the script,
 * live writes, the usage query, a graceful stop) and test_ledger_spool.c (the spool: outages,
 * replay, adoption, a full disk, records held in memory); linked into every unit test, used by
 * those two. A world is one loop and one throwaway redis-server (tests/unit/harness.h) and the
 * path of a ledger's spool in the server's temporary directory.
 *
 * The checks are cmocka assertions: call these only from a cmocka test. Not thread-safe. */
#ifndef TOLLGATE_TESTS_LEDGER_WORLD_H
#define TOLLGATE_TESTS_LEDGER_WORLD_H

#include "tenancy/ledger.h"
#include "tests/unit/harness.h"

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct ledger_world {
    struct harness_world h;
    struct harness_redis srv;
    char url[128];
    char spool[128];
};

/* cmocka setup and teardown: a world with its server running, in *state. */
int ledger_world_setup(void **state);
int ledger_world_teardown(void **state);

/* One command on a side connection to the world's server: the reply (freeReplyObject() it). */
redisReply *ledger_world_cmd(const struct ledger_world *w, int argc, const char **argv);
/* An integer reply (or a string read as one; -1 for another type); fails without a reply. */
long long ledger_world_int(const struct ledger_world *w, int argc, const char **argv);
#define LEDGER_WORLD_INT(w, ...) ledger_world_int((w), HARNESS_ARGV(__VA_ARGS__))

/* A client that reconnects and closes its breaker quickly, with a patient command deadline;
 * when wait_up, connected (within 5 s, else the test fails). */
struct redis_client *ledger_world_client(struct ledger_world *w, bool wait_up);

/* What ledger_world_reached() waits for: the counters of l at least these, nothing in flight,
 * and (check_spool) at most spool_bytes_max bytes in the spool. */
struct ledger_world_want {
    struct ledger *l;
    uint64_t written, replayed, duplicates, spool_bytes_max;
    bool check_spool;
};
bool ledger_world_reached(void *want);

struct ledger_stats ledger_world_stats(struct ledger *l);

/* A successful answer's entry, backend "node-a", a cache miss, 12.5 ms, a fixed time. */
struct ledger_entry ledger_world_entry(const char *id, const char *key, const char *model, long p,
                                       long c, double cost);

/* Lines in a file (-1 when it cannot be opened); its text (at most 1 MiB, NUL-terminated,
 * malloc'd); writing a file. */
long long ledger_world_lines(const char *path);
char *ledger_world_read(const char *path, size_t *len);
void ledger_world_write(const char *path, const char *data, size_t len);

/* Entries in the usage stream; a field of a key's sums. */
long long ledger_world_xlen(const struct ledger_world *w);
long long ledger_world_sum(const struct ledger_world *w, const char *key, const char *field);

/* A spool at path of n records with uids <prefix><30 digits> (key "orphan-key", model "m1"),
 * then, when cut_tail, the start of a line cut by a crash. */
void ledger_world_spool_records(const char *path, const char *prefix, int n, bool cut_tail);

#endif

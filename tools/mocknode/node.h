/*
 * node: who this node is - its name, its models, when it started.
 *
 * Written only before the daemon starts (cli.c fills the name, models and
 * quiet flag, main() the start time); read-only afterwards, so any thread
 * may read them without a lock.
 */
#ifndef MOCKNODE_NODE_H
#define MOCKNODE_NODE_H

#include <stdbool.h>
#include <stddef.h>

extern const char *node_name;
extern char **node_models; /* node_model_count names from --models */
extern size_t node_model_count;
extern bool node_quiet;           /* --quiet: no MHD error log, no stop message */
extern long long node_started_at; /* Unix seconds; the models' "created" */

/* Whether `name` is one of the node's models. */
bool node_model_known(const char *name);

#endif

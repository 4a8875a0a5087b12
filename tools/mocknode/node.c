#include "node.h"

#include <string.h>

const char *node_name;
char **node_models;
size_t node_model_count;
bool node_quiet;
long long node_started_at;

bool node_model_known(const char *name)
{
    for (size_t i = 0; i < node_model_count; i++)
        if (strcmp(node_models[i], name) == 0)
            return true;
    return false;
}

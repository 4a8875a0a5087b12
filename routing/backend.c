#include "routing/backend.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Guards the registry list only; taken when a config is loaded, never per request. */
static pthread_mutex_t backend_registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct backend_state *backend_registry;

static struct backend_state *backend_state_for(const char *name)
{
    for (struct backend_state *s = backend_registry; s; s = s->next)
        if (!strcmp(s->name, name))
            return s;
    struct backend_state *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    s->name = strdup(name);
    if (!s->name) {
        free(s);
        return NULL;
    }
    s->next = backend_registry;
    backend_registry = s;
    return s;
}

int backend_attach(struct config *cfg)
{
    int result = 0;
    pthread_mutex_lock(&backend_registry_lock);
    for (size_t i = 0; i < cfg->n_backends; i++) {
        cfg->backends[i].state = backend_state_for(cfg->backends[i].name);
        if (!cfg->backends[i].state)
            result = -1;
    }
    pthread_mutex_unlock(&backend_registry_lock);
    return result;
}

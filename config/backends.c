/* The `backends` section: each node's URL, secret, capacity, price feed, CA and models. */
#include "config/schema.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void parse_models(struct config_problems *ctx, struct config_backend *b, json_t *item,
                         const char *bpath)
{
    static const char *const allowed[] = {"name",
                                          "upstream",
                                          "input_usd_per_mtok",
                                          "output_usd_per_mtok",
                                          "cached_input_usd_per_mtok",
                                          "usd_per_image",
                                          "usd_per_mchar",
                                          "usd_per_audio_second",
                                          "capabilities",
                                          "context_length",
                                          NULL};
    char path[128];
    snprintf(path, sizeof path, "%s.models", bpath);
    json_t *arr = config_get_arr(ctx, item, "models", bpath);
    if (!arr || json_array_size(arr) == 0) {
        /* Absent, null ("models:" with nothing after it) or []; get_arr said so for a non-list. */
        json_t *v = json_object_get(item, "models");
        if (!v || json_is_null(v) || arr)
            config_problem(ctx, path, "must list at least one model");
        return;
    }
    b->models = calloc(json_array_size(arr), sizeof *b->models);
    size_t i;
    json_t *m;
    json_array_foreach (arr, i, m) {
        char mpath[160];
        snprintf(mpath, sizeof mpath, "%s[%zu]", path, i);
        if (!json_is_object(m)) {
            config_problem(ctx, mpath, "must be a mapping");
            continue;
        }
        config_check_keys(ctx, m, mpath, allowed);
        struct config_model *cm = &b->models[b->n_models++];
        cm->name = config_get_str(ctx, m, "name", mpath, true);
        cm->upstream = config_get_str(ctx, m, "upstream", mpath, false);
        cm->input_usd_per_mtok =
            config_get_num(ctx, m, "input_usd_per_mtok", mpath, 0, 1e15, 0, true, false);
        cm->output_usd_per_mtok =
            config_get_num(ctx, m, "output_usd_per_mtok", mpath, 0, 1e15, 0, true, false);
        config_parse_model_extras(ctx, cm, m, mpath);
        cm->usd_per_image = config_get_num(ctx, m, "usd_per_image", mpath, 0, 1e9, 0, false, false);
        cm->usd_per_mchar =
            config_get_num(ctx, m, "usd_per_mchar", mpath, 0, 1e15, 0, false, false);
        cm->usd_per_audio_second =
            config_get_num(ctx, m, "usd_per_audio_second", mpath, 0, 1e9, 0, false, false);
        if (cm->name && !*cm->name) {
            char p[200];
            snprintf(p, sizeof p, "%s.name", mpath);
            config_problem(ctx, p, "must not be empty");
        }
        for (size_t j = 0; cm->name && j + 1 < b->n_models; j++)
            if (b->models[j].name && !strcmp(b->models[j].name, cm->name)) {
                char p[200];
                snprintf(p, sizeof p, "%s.name", mpath);
                config_problem(ctx, p, "duplicate model \"%s\" on this backend", cm->name);
            }
    }
}

/* A backend's ca_file: a readable PEM bundle, for a backend with an https URL. */
static void check_ca_file(struct config_problems *ctx, const char *path, const char *file,
                          const char *url)
{
    if (url && strncmp(url, "https://", 8)) {
        config_problem(ctx, path, "applies only to a backend with an https:// url");
        return;
    }
    FILE *f = fopen(file, "r");
    if (!f) {
        config_problem(ctx, path, "cannot read %s: %s", file, strerror(errno));
        return;
    }
    /* Enough to find the first certificate of any real bundle. */
    char head[64 * 1024];
    size_t n = fread(head, 1, sizeof head - 1, f);
    fclose(f);
    head[n] = '\0';
    if (!strstr(head, "-----BEGIN CERTIFICATE-----"))
        config_problem(ctx, path, "%s holds no PEM certificate", file);
}

void config_parse_backends(struct config_problems *ctx, struct config *cfg, json_t *root)
{
    static const char *const allowed[] = {
        "name",         "url",        "api_key",          "models",
        "max_inflight", "prices_url", "prices_refresh_s", "ca_file",
        "provider",     NULL};
    json_t *arr = config_get_arr(ctx, root, "backends", "");
    if (!arr || json_array_size(arr) == 0) {
        json_t *v = json_object_get(root, "backends");
        if (!v || json_is_null(v) || arr)
            config_problem(ctx, "backends", "must list at least one backend");
        return;
    }
    cfg->backends = calloc(json_array_size(arr), sizeof *cfg->backends);
    size_t i;
    json_t *item;
    json_array_foreach (arr, i, item) {
        char path[64];
        snprintf(path, sizeof path, "backends[%zu]", i);
        if (!json_is_object(item)) {
            config_problem(ctx, path, "must be a mapping");
            continue;
        }
        config_check_keys(ctx, item, path, allowed);
        struct config_backend *b = &cfg->backends[cfg->n_backends++];
        b->name = config_get_str(ctx, item, "name", path, true);
        b->url = config_get_str(ctx, item, "url", path, true);
        b->api_key = config_get_str(ctx, item, "api_key", path, false);
        if (b->api_key && !*b->api_key) {
            free(b->api_key); /* an unset optional secret means "no key" */
            b->api_key = NULL;
        }
        b->max_inflight =
            (unsigned)config_get_num(ctx, item, "max_inflight", path, 0, 1000000, 0, false, true);
        b->prices_url = config_get_str(ctx, item, "prices_url", path, false);
        if (b->prices_url && !*b->prices_url) {
            free(b->prices_url);
            b->prices_url = NULL;
        }
        if (b->prices_url && strncmp(b->prices_url, "http://", 7) &&
            strncmp(b->prices_url, "https://", 8)) {
            char pp[96];
            snprintf(pp, sizeof pp, "%s.prices_url", path);
            config_problem(ctx, pp, "must start with http:// or https://");
        }
        b->prices_refresh_s =
            config_get_num(ctx, item, "prices_refresh_s", path, 0.1, 86400, 300, false, false);
        b->ca_file = config_get_str(ctx, item, "ca_file", path, false);
        if (b->ca_file && !*b->ca_file) {
            free(b->ca_file);
            b->ca_file = NULL;
        }
        char p[96];
        if (b->ca_file) {
            snprintf(p, sizeof p, "%s.ca_file", path);
            check_ca_file(ctx, p, b->ca_file, b->url);
        }
        /* A metric label value: short, and in the OpenTelemetry registry's alphabet. */
        b->provider = config_get_str(ctx, item, "provider", path, false);
        if (b->provider && (!*b->provider || strlen(b->provider) > 64 ||
                            strspn(b->provider, "abcdefghijklmnopqrstuvwxyz0123456789._-") !=
                                strlen(b->provider))) {
            snprintf(p, sizeof p, "%s.provider", path);
            config_problem(ctx, p, "must be 1-64 characters of a-z, 0-9, '.', '_' or '-'");
        }
        if (b->url) {
            size_t n = strlen(b->url);
            while (n > 0 && b->url[n - 1] == '/')
                b->url[--n] = '\0';
            if (n > 900) {
                snprintf(p, sizeof p, "%s.url", path);
                config_problem(ctx, p, "is longer than 900 characters");
            } else if (strncmp(b->url, "http://", 7) && strncmp(b->url, "https://", 8)) {
                snprintf(p, sizeof p, "%s.url", path);
                config_problem(ctx, p, "must start with http:// or https://");
            } else if (strpbrk(b->url, " \t\r\n?#")) {
                snprintf(p, sizeof p, "%s.url", path);
                config_problem(ctx, p,
                               "must be a plain base URL without spaces, query or fragment");
            }
        }
        if (b->name && (!*b->name || strpbrk(b->name, " \t\r\n\"\\"))) {
            snprintf(p, sizeof p, "%s.name", path);
            config_problem(ctx, p, "must be a non-empty name without spaces or quotes");
        }
        for (size_t j = 0; b->name && j + 1 < cfg->n_backends; j++)
            if (cfg->backends[j].name && !strcmp(cfg->backends[j].name, b->name)) {
                snprintf(p, sizeof p, "%s.name", path);
                config_problem(ctx, p, "duplicate backend name \"%s\"", b->name);
            }
        parse_models(ctx, b, item, path);
    }
}

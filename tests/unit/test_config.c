/* Unit tests for config/: YAML and JSON loading, ${VAR} substitution (config/expand.h), YAML to
 * JSON (config/yaml.h), validation messages with their paths, defaults. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config/config.h"
#include "config/expand.h"
#include "config/schema.h"
#include "config/yaml.h"

#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct config *load(const char *text, const char *name, char **errors)
{
    return config_load_string(text, strlen(text), name, errors);
}

/* Loads a config that must be valid; fails the test with the error text otherwise. */
static struct config *load_ok(const char *text, const char *name)
{
    char *errors = NULL;
    struct config *cfg = load(text, name, &errors);
    if (!cfg)
        fail_msg("config did not load:\n%s", errors ? errors : "(no error text)");
    assert_null(errors);
    return cfg;
}

/* Loads a config that must be rejected and returns the error text (caller frees). */
static char *load_err(const char *text, const char *name)
{
    char *errors = NULL;
    struct config *cfg = load(text, name, &errors);
    if (cfg) {
        config_unref(cfg);
        fail_msg("config was accepted but should not be");
    }
    assert_non_null(errors);
    return errors;
}

/* True when some line of `errors` starts with "<path>: ". */
static int has_path(const char *errors, const char *path)
{
    size_t n = strlen(path);
    for (const char *line = errors; line && *line;) {
        if (!strncmp(line, path, n) && line[n] == ':' && line[n + 1] == ' ')
            return 1;
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return 0;
}

#define assert_path(errors, path)                                                                  \
    do {                                                                                           \
        if (!has_path((errors), (path)))                                                           \
            fail_msg("no error for path \"%s\" in:\n%s", (path), (errors));                        \
    } while (0)

static void sha256_of(const char *s, unsigned char out[32])
{
    SHA256((const unsigned char *)s, strlen(s), out);
}

static int setup(void **state)
{
    (void)state;
    unsetenv("TOLLGATE_LISTEN");
    return 0;
}

/* sha256("abc") */
#define ABC_SHA256 "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

static const char full_yaml[] = "# Tollgate test config\n"
                                "listen: \"0.0.0.0:9090\"\n"
                                "workers: 3\n"
                                "max_connections: 1000\n"
                                "connection_memory_bytes: 65536\n"
                                "max_body_bytes: 1048576\n"
                                "drain_timeout_ms: 5000\n"
                                "log_level: warn\n"
                                "upstream:\n"
                                "  connect_timeout_ms: 1500\n"
                                "  first_byte_timeout_ms: 30000\n"
                                "  idle_timeout_ms: 20000\n"
                                "  total_timeout_ms: 120000\n"
                                "  max_response_bytes: 4194304\n"
                                "keys:\n"
                                "  - name: alice\n"
                                "    key: sk-alice-123\n"
                                "  - name: bob\n"
                                "    sha256: " ABC_SHA256 "\n"
                                "backends:\n"
                                "  - name: openai\n"
                                "    url: https://api.openai.com/v1/\n"
                                "    api_key: sk-upstream-secret\n"
                                "    models:\n"
                                "      - name: gpt-4o-mini\n"
                                "        input_usd_per_mtok: 0.15\n"
                                "        output_usd_per_mtok: 0.6\n"
                                "      - name: gpt-4o\n"
                                "        input_usd_per_mtok: 2.5\n"
                                "        output_usd_per_mtok: 10\n"
                                "  - name: local\n"
                                "    url: http://127.0.0.1:8000/v1//\n"
                                "    models:\n"
                                "      - name: gpt-4o-mini\n"
                                "        upstream: Qwen/Qwen2.5-7B-Instruct\n"
                                "        input_usd_per_mtok: 0.05\n"
                                "        output_usd_per_mtok: 0.1\n"
                                "      - name: bge-small\n"
                                "        input_usd_per_mtok: 0.01\n"
                                "        output_usd_per_mtok: 0\n"
                                "redis:\n"
                                "  url: redis://127.0.0.1:6379/0\n";

static const char full_json[] =
    "{\n"
    "  \"listen\": \"0.0.0.0:9090\",\n"
    "  \"workers\": 3,\n"
    "  \"max_connections\": 1000,\n"
    "  \"connection_memory_bytes\": 65536,\n"
    "  \"max_body_bytes\": 1048576,\n"
    "  \"drain_timeout_ms\": 5000,\n"
    "  \"log_level\": \"warn\",\n"
    "  \"upstream\": {\"connect_timeout_ms\": 1500, \"first_byte_timeout_ms\": 30000,\n"
    "               \"idle_timeout_ms\": 20000, \"total_timeout_ms\": 120000,\n"
    "               \"max_response_bytes\": 4194304},\n"
    "  \"keys\": [\n"
    "    {\"name\": \"alice\", \"key\": \"sk-alice-123\"},\n"
    "    {\"name\": \"bob\", \"sha256\": \"" ABC_SHA256 "\"}\n"
    "  ],\n"
    "  \"backends\": [\n"
    "    {\"name\": \"openai\", \"url\": \"https://api.openai.com/v1/\",\n"
    "     \"api_key\": \"sk-upstream-secret\",\n"
    "     \"models\": [\n"
    "       {\"name\": \"gpt-4o-mini\", \"input_usd_per_mtok\": 0.15,\n"
    "        \"output_usd_per_mtok\": 0.6},\n"
    "       {\"name\": \"gpt-4o\", \"input_usd_per_mtok\": 2.5, \"output_usd_per_mtok\": 10}\n"
    "     ]},\n"
    "    {\"name\": \"local\", \"url\": \"http://127.0.0.1:8000/v1//\",\n"
    "     \"models\": [\n"
    "       {\"name\": \"gpt-4o-mini\", \"upstream\": \"Qwen/Qwen2.5-7B-Instruct\",\n"
    "        \"input_usd_per_mtok\": 0.05, \"output_usd_per_mtok\": 0.1},\n"
    "       {\"name\": \"bge-small\", \"input_usd_per_mtok\": 0.01, \"output_usd_per_mtok\": 0}\n"
    "     ]}\n"
    "  ],\n"
    "  \"redis\": {\"url\": \"redis://127.0.0.1:6379/0\"}\n"
    "}\n";

static int slist_has(const struct curl_slist *h, const char *line)
{
    for (; h; h = h->next)
        if (!strcmp(h->data, line))
            return 1;
    return 0;
}

static void check_full(const struct config *cfg)
{
    assert_string_equal(cfg->listen, "0.0.0.0:9090");
    assert_int_equal(cfg->workers, 3);
    assert_int_equal(cfg->max_connections, 1000);
    assert_int_equal(cfg->connection_memory_bytes, 65536);
    assert_int_equal(cfg->max_body_bytes, 1048576);
    assert_int_equal(cfg->drain_timeout_ms, 5000);
    assert_int_equal(cfg->log_level, LOG_WARN);
    assert_int_equal(cfg->upstream.connect_timeout_ms, 1500);
    assert_int_equal(cfg->upstream.first_byte_timeout_ms, 30000);
    assert_int_equal(cfg->upstream.idle_timeout_ms, 20000);
    assert_int_equal(cfg->upstream.total_timeout_ms, 120000);
    assert_int_equal(cfg->upstream.max_response_bytes, 4194304);
    assert_non_null(cfg->redis_url);
    assert_string_equal(cfg->redis_url, "redis://127.0.0.1:6379/0");

    /* Keys: stored as SHA-256 digests only. */
    unsigned char d[32];
    assert_int_equal(cfg->n_keys, 2);
    assert_string_equal(cfg->keys[0].name, "alice");
    sha256_of("sk-alice-123", d);
    assert_memory_equal(cfg->keys[0].sha256, d, 32);
    assert_string_equal(cfg->keys[1].name, "bob");
    sha256_of("abc", d);
    assert_memory_equal(cfg->keys[1].sha256, d, 32);

    /* Backends, in file order, with trailing '/' stripped from the URL. */
    assert_int_equal(cfg->n_backends, 2);
    const struct config_backend *oa = &cfg->backends[0], *lo = &cfg->backends[1];
    assert_string_equal(oa->name, "openai");
    assert_string_equal(oa->url, "https://api.openai.com/v1");
    assert_non_null(oa->api_key);
    assert_string_equal(oa->api_key, "sk-upstream-secret");
    assert_int_equal(oa->n_models, 2);
    assert_string_equal(oa->models[0].name, "gpt-4o-mini");
    assert_null(oa->models[0].upstream);
    assert_float_equal(oa->models[0].input_usd_per_mtok, 0.15, 1e-12);
    assert_float_equal(oa->models[0].output_usd_per_mtok, 0.6, 1e-12);
    assert_string_equal(oa->models[1].name, "gpt-4o");
    assert_float_equal(oa->models[1].input_usd_per_mtok, 2.5, 1e-12);
    assert_float_equal(oa->models[1].output_usd_per_mtok, 10, 1e-12);
    assert_true(slist_has(oa->headers, "Authorization: Bearer sk-upstream-secret"));
    assert_true(slist_has(oa->headers, "Content-Type: application/json"));

    assert_string_equal(lo->name, "local");
    assert_string_equal(lo->url, "http://127.0.0.1:8000/v1");
    assert_null(lo->api_key);
    assert_int_equal(lo->n_models, 2);
    assert_string_equal(lo->models[0].name, "gpt-4o-mini");
    assert_non_null(lo->models[0].upstream);
    assert_string_equal(lo->models[0].upstream, "Qwen/Qwen2.5-7B-Instruct");
    assert_float_equal(lo->models[0].input_usd_per_mtok, 0.05, 1e-12);
    assert_float_equal(lo->models[0].output_usd_per_mtok, 0.1, 1e-12);
    assert_string_equal(lo->models[1].name, "bge-small");
    assert_float_equal(lo->models[1].output_usd_per_mtok, 0, 0);
    for (const struct curl_slist *h = lo->headers; h; h = h->next)
        assert_null(strstr(h->data, "Authorization"));

    /* Routes: one per model name, sorted, each listing every backend that serves it. */
    assert_int_equal(cfg->n_routes, 3);
    assert_string_equal(cfg->routes[0].model, "bge-small");
    assert_string_equal(cfg->routes[1].model, "gpt-4o");
    assert_string_equal(cfg->routes[2].model, "gpt-4o-mini");
    for (size_t i = 0; i + 1 < cfg->n_routes; i++)
        assert_true(strcmp(cfg->routes[i].model, cfg->routes[i + 1].model) < 0);

    const struct config_route *r = config_find_route(cfg, "gpt-4o-mini");
    assert_non_null(r);
    assert_string_equal(r->model, "gpt-4o-mini");
    assert_int_equal(r->n_targets, 2);
    assert_ptr_equal(r->targets[0].backend, oa);
    assert_ptr_equal(r->targets[0].model, &oa->models[0]);
    assert_ptr_equal(r->targets[1].backend, lo);
    assert_ptr_equal(r->targets[1].model, &lo->models[0]);

    r = config_find_route(cfg, "gpt-4o");
    assert_non_null(r);
    assert_int_equal(r->n_targets, 1);
    assert_ptr_equal(r->targets[0].model, &oa->models[1]);

    r = config_find_route(cfg, "bge-small");
    assert_non_null(r);
    assert_int_equal(r->n_targets, 1);
    assert_ptr_equal(r->targets[0].backend, lo);

    assert_null(config_find_route(cfg, "gpt-4"));
    assert_null(config_find_route(cfg, "gpt-4o-mini-2024"));
    assert_null(config_find_route(cfg, ""));
    assert_null(config_find_route(cfg, "zzz"));
    assert_null(config_find_route(cfg, "Qwen/Qwen2.5-7B-Instruct"));
}

static void test_full_yaml(void **state)
{
    (void)state;
    struct config *cfg = load_ok(full_yaml, "tollgate.yaml");
    check_full(cfg);
    assert_string_equal(cfg->source, "tollgate.yaml");
    config_unref(cfg);
}

static void test_full_json(void **state)
{
    (void)state;
    struct config *cfg = load_ok(full_json, "tollgate.json");
    check_full(cfg);
    config_unref(cfg);
}

/* JSON is recognised by its first character even without a .json name. */
static void test_json_detected_by_content(void **state)
{
    (void)state;
    struct config *cfg = load_ok(full_json, "config");
    check_full(cfg);
    config_unref(cfg);
}

static void test_config_ref_counts(void **state)
{
    (void)state;
    struct config *cfg = load_ok(full_yaml, "t.yaml");
    assert_ptr_equal(config_ref(cfg), cfg);
    config_unref(cfg);
    /* Still alive after one unref of two. */
    assert_string_equal(cfg->listen, "0.0.0.0:9090");
    config_unref(cfg);
}

/* The file path variant reads the same file. */
static void test_config_load_file(void **state)
{
    (void)state;
    char path[] = "/tmp/tollgate-test-config-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, full_yaml, strlen(full_yaml)), (ssize_t)strlen(full_yaml));
    close(fd);
    char *errors = NULL;
    struct config *cfg = config_load(path, &errors);
    unlink(path);
    assert_null(errors);
    assert_non_null(cfg);
    check_full(cfg);
    assert_string_equal(cfg->source, path);
    config_unref(cfg);

    cfg = config_load("/nonexistent/tollgate.yaml", &errors);
    assert_null(cfg);
    assert_non_null(errors);
    assert_non_null(strstr(errors, "/nonexistent/tollgate.yaml"));
    free(errors);
}

static void test_expand_env(void **state)
{
    (void)state;
    char *missing = NULL;
    setenv("TG_T_HOST", "10.1.2.3", 1);
    setenv("TG_T_EMPTY", "", 1);
    unsetenv("TG_T_UNSET");

    char *s = config_expand_env("http://${TG_T_HOST}:${TG_T_UNSET:-8000}/v1", &missing);
    assert_non_null(s);
    assert_null(missing);
    assert_string_equal(s, "http://10.1.2.3:8000/v1");
    free(s);

    /* A set variable wins over its default; an empty one takes the default. */
    s = config_expand_env("${TG_T_HOST:-nope}|${TG_T_EMPTY:-dflt}|${TG_T_EMPTY}|", &missing);
    assert_non_null(s);
    assert_string_equal(s, "10.1.2.3|dflt||");
    free(s);

    /* An empty default is allowed. */
    s = config_expand_env("[${TG_T_UNSET:-}]", &missing);
    assert_non_null(s);
    assert_string_equal(s, "[]");
    free(s);

    /* Text without a closing brace is left alone; so is plain text. */
    s = config_expand_env("cost $5 ${TG_T_HOST", &missing);
    assert_non_null(s);
    assert_string_equal(s, "cost $5 ${TG_T_HOST");
    free(s);
    s = config_expand_env("", &missing);
    assert_non_null(s);
    assert_string_equal(s, "");
    free(s);

    /* A value is not expanded again. */
    setenv("TG_T_NESTED", "${TG_T_HOST}", 1);
    s = config_expand_env("${TG_T_NESTED}", &missing);
    assert_non_null(s);
    assert_string_equal(s, "${TG_T_HOST}");
    free(s);

    s = config_expand_env("a ${TG_T_HOST} b ${TG_T_UNSET} c", &missing);
    assert_null(s);
    assert_non_null(missing);
    assert_string_equal(missing, "TG_T_UNSET");
    free(missing);
}

static void test_env_substitution_in_config(void **state)
{
    (void)state;
    setenv("TG_T_LISTEN_HOST", "127.0.0.9", 1);
    setenv("TG_T_BACKEND_URL", "http://10.0.0.7:9000/v1/", 1);
    setenv("TG_T_WORKERS", "5", 1);
    setenv("TG_T_PRICE", "1.25", 1);
    setenv("TG_T_CLIENT_KEY", "sk-from-env", 1);
    unsetenv("TG_T_UPSTREAM_KEY");
    const char *yaml = "listen: ${TG_T_LISTEN_HOST}:${TG_T_PORT_UNSET:-8181}\n"
                       "workers: ${TG_T_WORKERS}\n"
                       "keys:\n"
                       "  - name: env\n"
                       "    key: ${TG_T_CLIENT_KEY}\n"
                       "backends:\n"
                       "  - name: b\n"
                       "    url: ${TG_T_BACKEND_URL}\n"
                       "    api_key: ${TG_T_UPSTREAM_KEY:-}\n"
                       "    models:\n"
                       "      - name: m\n"
                       "        input_usd_per_mtok: ${TG_T_PRICE}\n"
                       "        output_usd_per_mtok: \"${TG_T_PRICE_OUT:-2}\"\n";
    struct config *cfg = load_ok(yaml, "env.yaml");
    assert_string_equal(cfg->listen, "127.0.0.9:8181");
    assert_int_equal(cfg->workers, 5);
    assert_string_equal(cfg->backends[0].url, "http://10.0.0.7:9000/v1");
    assert_null(cfg->backends[0].api_key); /* empty after substitution: no key */
    assert_float_equal(cfg->backends[0].models[0].input_usd_per_mtok, 1.25, 1e-12);
    assert_float_equal(cfg->backends[0].models[0].output_usd_per_mtok, 2, 1e-12);
    unsigned char d[32];
    sha256_of("sk-from-env", d);
    assert_memory_equal(cfg->keys[0].sha256, d, 32);
    config_unref(cfg);
}

static void test_env_missing_reported_with_path(void **state)
{
    (void)state;
    unsetenv("TG_T_NO_SUCH_URL");
    unsetenv("TG_T_NO_SUCH_KEY");
    const char *yaml = "backends:\n"
                       "  - name: a\n"
                       "    url: http://a/v1\n"
                       "    models: [{name: m, input_usd_per_mtok: 1, output_usd_per_mtok: 1}]\n"
                       "  - name: b\n"
                       "    url: ${TG_T_NO_SUCH_URL}\n"
                       "    api_key: ${TG_T_NO_SUCH_KEY}\n"
                       "    models: [{name: m, input_usd_per_mtok: 1, output_usd_per_mtok: 1}]\n";
    char *errors = load_err(yaml, "env.yaml");
    assert_path(errors, "backends[1].url");
    assert_path(errors, "backends[1].api_key");
    assert_non_null(strstr(errors, "TG_T_NO_SUCH_URL"));
    assert_non_null(strstr(errors, "TG_T_NO_SUCH_KEY"));
    free(errors);
}

/* Everything wrong at once: each problem is reported under its own path. */
static void test_many_errors_reported_together(void **state)
{
    (void)state;
    const char *yaml =
        "listen: 127.0.0.1:8080\n"
        "log_level: verbose\n"
        "colour: blue\n"
        "keys:\n"
        "  - name: both\n"
        "    key: secret\n"
        "    sha256: " ABC_SHA256 "\n"
        "  - name: badhex\n"
        "    sha256: 0123456789abcdefXX23456789abcdef0123456789abcdef0123456789abcdef\n"
        "backends:\n"
        "  - name: dup\n"
        "    url: ftp://example.com/v1\n"
        "    bogus: 1\n"
        "    models:\n"
        "      - name: m\n"
        "        input_usd_per_mtok: 1\n"
        "        output_usd_per_mtok: 1\n"
        "  - name: dup\n"
        "    models:\n"
        "      - name: m\n"
        "        input_usd_per_mtok: -1\n"
        "        output_usd_per_mtok: 1\n";
    char *errors = load_err(yaml, "bad.yaml");
    assert_path(errors, "backends[1].models[0].input_usd_per_mtok");
    assert_path(errors, "colour");
    assert_path(errors, "backends[0].bogus");
    assert_path(errors, "backends[1].name");
    assert_non_null(strstr(errors, "duplicate backend name \"dup\""));
    assert_path(errors, "backends[1].url");
    assert_path(errors, "backends[0].url");
    assert_path(errors, "keys[0]");
    assert_path(errors, "keys[1].sha256");
    assert_path(errors, "log_level");
    /* Nothing is reported about the parts that are right. */
    assert_false(has_path(errors, "listen"));
    assert_false(has_path(errors, "backends[0].models[0].input_usd_per_mtok"));
    assert_false(has_path(errors, "backends[1].models[0].output_usd_per_mtok"));
    free(errors);
}

static void test_same_errors_in_json(void **state)
{
    (void)state;
    const char *json =
        "{\"log_level\": \"loud\", \"extra\": true,\n"
        " \"keys\": [{\"name\": \"k\", \"sha256\": \"abc\"}],\n"
        " \"backends\": [\n"
        "  {\"name\": \"a\", \"url\": \"http://a/v1\", \"models\": [\n"
        "    {\"name\": \"m\", \"input_usd_per_mtok\": 1, \"output_usd_per_mtok\": 1}]},\n"
        "  {\"name\": \"b\", \"url\": \"localhost:8000\", \"models\": [\n"
        "    {\"name\": \"m\", \"input_usd_per_mtok\": -0.5, \"output_usd_per_mtok\": 1}]}]}\n";
    char *errors = load_err(json, "bad.json");
    assert_path(errors, "log_level");
    assert_path(errors, "extra");
    assert_path(errors, "keys[0].sha256");
    assert_path(errors, "backends[1].url");
    assert_path(errors, "backends[1].models[0].input_usd_per_mtok");
    free(errors);
}

static void test_yaml_syntax_error_has_line(void **state)
{
    (void)state;
    const char *yaml = "listen: 127.0.0.1:8080\n"
                       "backends:\n"
                       "  - name: a\n"
                       "    url: [http://a/v1\n"
                       "    models: []\n";
    char *errors = load_err(yaml, "broken.yaml");
    assert_non_null(strstr(errors, "YAML syntax error"));
    const char *l = strstr(errors, "line ");
    assert_non_null(l);
    long line = strtol(l + 5, NULL, 10);
    assert_in_range(line, 4, 5);
    free(errors);

    /* A tab used for indentation. */
    errors = load_err("backends:\n\t- name: a\n", "tab.yaml");
    assert_non_null(strstr(errors, "line 2"));
    free(errors);
}

/* config_yaml_to_json on its own: plain scalars are typed, quoted ones stay strings. */
static void test_yaml_to_json_scalars(void **state)
{
    (void)state;
    const char *yaml = "i: 42\n"
                       "neg: -7\n"
                       "f: 0.25\n"
                       "dot: .5\n"
                       "qi: \"42\"\n"
                       "sq: 'true'\n"
                       "t: true\n"
                       "F: False\n"
                       "n: ~\n"
                       "e:\n"
                       "word: inf\n"
                       "list: [1, two]\n";
    struct buf errors;
    buf_init(&errors, 1 << 16);
    struct config_problems problems = {.text = &errors, .count = 0};
    json_t *root = config_yaml_to_json(yaml, strlen(yaml), &problems);
    assert_non_null(root);
    assert_int_equal(problems.count, 0);
    assert_int_equal(errors.len, 0);
    assert_true(json_is_integer(json_object_get(root, "i")));
    assert_int_equal(json_integer_value(json_object_get(root, "i")), 42);
    assert_int_equal(json_integer_value(json_object_get(root, "neg")), -7);
    assert_true(json_is_real(json_object_get(root, "f")));
    assert_true(json_real_value(json_object_get(root, "f")) == 0.25);
    assert_true(json_real_value(json_object_get(root, "dot")) == 0.5);
    assert_string_equal(json_string_value(json_object_get(root, "qi")), "42");
    assert_string_equal(json_string_value(json_object_get(root, "sq")), "true");
    assert_true(json_is_true(json_object_get(root, "t")));
    assert_true(json_is_false(json_object_get(root, "F")));
    assert_true(json_is_null(json_object_get(root, "n")));
    assert_true(json_is_null(json_object_get(root, "e")));
    /* strtod reads "inf", but a word is a string. */
    assert_string_equal(json_string_value(json_object_get(root, "word")), "inf");
    json_t *list = json_object_get(root, "list");
    assert_int_equal(json_array_size(list), 2);
    assert_int_equal(json_integer_value(json_array_get(list, 0)), 1);
    assert_string_equal(json_string_value(json_array_get(list, 1)), "two");
    json_decref(root);

    /* An empty document is an empty mapping. */
    root = config_yaml_to_json("", 0, &problems);
    assert_non_null(root);
    assert_true(json_is_object(root));
    assert_int_equal(json_object_size(root), 0);
    json_decref(root);
    assert_int_equal(problems.count, 0);
    buf_free(&errors);
}

/* Its errors: one "where: problem" line each, appended to the caller's text and counted. */
static void test_yaml_to_json_errors(void **state)
{
    (void)state;
    struct buf errors;
    buf_init(&errors, 1 << 16);
    buf_append_str(&errors, "earlier: kept\n");
    struct config_problems problems = {.text = &errors, .count = 1};
    const char *yaml = "a: 1\nb: 2\na: 3\nb: 4\n";
    assert_null(config_yaml_to_json(yaml, strlen(yaml), &problems));
    assert_int_equal(problems.count, 3);
    assert_string_equal(errors.data, "earlier: kept\n"
                                     "line 3: duplicate key \"a\"\n"
                                     "line 4: duplicate key \"b\"\n");
    buf_reset(&errors);

    problems.count = 0;
    yaml = "base: &b {x: 1}\nother: *b\n";
    assert_null(config_yaml_to_json(yaml, strlen(yaml), &problems));
    assert_int_equal(problems.count, 1);
    assert_string_equal(errors.data, "line 2: YAML aliases are not supported\n");
    buf_reset(&errors);

    problems.count = 0;
    yaml = "? [a]\n: 1\n";
    assert_null(config_yaml_to_json(yaml, strlen(yaml), &problems));
    assert_int_equal(problems.count, 1);
    assert_string_equal(errors.data, "line 1: mapping keys must be plain strings\n");
    buf_reset(&errors);

    problems.count = 0;
    yaml = "a: 1\n---\nb: 2\n";
    assert_null(config_yaml_to_json(yaml, strlen(yaml), &problems));
    assert_int_equal(problems.count, 1);
    assert_string_equal(errors.data, "(root): only one YAML document is allowed\n");
    buf_reset(&errors);

    /* CONFIG_YAML_MAX_DEPTH levels of nesting are read; one more is an error. */
    char deep[256];
    for (int extra = 0; extra < 2; extra++) {
        int depth = CONFIG_YAML_MAX_DEPTH + extra;
        size_t n = 0;
        for (int i = 0; i < depth; i++)
            deep[n++] = '[';
        deep[n++] = '1';
        for (int i = 0; i < depth; i++)
            deep[n++] = ']';
        problems.count = 0;
        json_t *root = config_yaml_to_json(deep, n, &problems);
        if (extra == 0) {
            assert_non_null(root);
            assert_int_equal(problems.count, 0);
            json_decref(root);
        } else {
            assert_null(root);
            assert_int_equal(problems.count, 1);
            assert_string_equal(errors.data, "line 1: nesting too deep\n");
        }
    }
    buf_free(&errors);
}

static void test_json_syntax_error_has_line_and_column(void **state)
{
    (void)state;
    const char *json = "{\n"
                       "  \"listen\": \"127.0.0.1:8080\",\n"
                       "  \"workers\": 2,,\n"
                       "  \"backends\": []\n"
                       "}\n";
    char *errors = load_err(json, "broken.json");
    assert_non_null(strstr(errors, "JSON syntax error"));
    assert_non_null(strstr(errors, "line 3 column "));
    const char *c = strstr(errors, "column ");
    long col = strtol(c + 7, NULL, 10);
    assert_in_range(col, 15, 16);
    free(errors);
}

static void test_empty_backends_rejected(void **state)
{
    (void)state;
    char *errors = load_err("listen: 127.0.0.1:8080\nbackends: []\n", "a.yaml");
    assert_path(errors, "backends");
    free(errors);
    errors = load_err("listen: 127.0.0.1:8080\n", "b.yaml");
    assert_path(errors, "backends");
    free(errors);
    errors = load_err("{\"backends\": []}", "c.json");
    assert_path(errors, "backends");
    free(errors);
    /* "backends:" with nothing after it is null, which counts as absent (found by fuzz_config). */
    errors = load_err("backends:\n", "n.yaml");
    assert_path(errors, "backends");
    free(errors);
    /* A backend without models is just as useless. */
    errors = load_err("backends:\n  - name: a\n    url: http://a\n    models: []\n", "d.yaml");
    assert_path(errors, "backends[0].models");
    free(errors);
    errors = load_err("backends:\n  - name: a\n    url: http://a\n    models:\n", "e.yaml");
    assert_path(errors, "backends[0].models");
    free(errors);
}

static const char minimal_yaml[] = "backends:\n"
                                   "  - name: only\n"
                                   "    url: http://127.0.0.1:9000\n"
                                   "    models:\n"
                                   "      - name: m\n"
                                   "        input_usd_per_mtok: 1\n"
                                   "        output_usd_per_mtok: 2\n";

static void test_listen_env_override(void **state)
{
    (void)state;
    setenv("TOLLGATE_LISTEN", "127.0.0.1:18080", 1);
    struct config *cfg = load_ok(full_yaml, "t.yaml");
    assert_string_equal(cfg->listen, "127.0.0.1:18080");
    config_unref(cfg);
    cfg = load_ok(minimal_yaml, "m.yaml");
    assert_string_equal(cfg->listen, "127.0.0.1:18080");
    config_unref(cfg);
    /* An empty override is no override. */
    setenv("TOLLGATE_LISTEN", "", 1);
    cfg = load_ok(full_yaml, "t.yaml");
    assert_string_equal(cfg->listen, "0.0.0.0:9090");
    config_unref(cfg);
    unsetenv("TOLLGATE_LISTEN");
}

static void test_defaults(void **state)
{
    (void)state;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    struct config *cfg = load_ok(minimal_yaml, "m.yaml");
    assert_string_equal(cfg->listen, "127.0.0.1:8080");
    assert_int_equal(cfg->max_body_bytes, 8u << 20);
    assert_int_equal(cfg->workers, cores > 0 ? (unsigned)cores : 1);
    assert_int_equal(cfg->log_level, LOG_INFO);
    assert_int_equal(cfg->n_keys, 0);
    assert_null(cfg->redis_url);
    assert_int_equal(cfg->upstream.max_response_bytes, 32u << 20);
    assert_true(cfg->upstream.connect_timeout_ms > 0);
    assert_true(cfg->upstream.total_timeout_ms >= cfg->upstream.first_byte_timeout_ms);
    assert_int_equal(cfg->n_routes, 1);
    config_unref(cfg);

    /* workers: 0 means one per core. */
    char text[512];
    snprintf(text, sizeof text, "workers: 0\n%s", minimal_yaml);
    cfg = load_ok(text, "w.yaml");
    assert_true(cfg->workers > 0);
    assert_int_equal(cfg->workers, cores > 0 ? (unsigned)cores : 1);
    config_unref(cfg);
}

static void test_bad_numbers(void **state)
{
    (void)state;
    char text[512];
    snprintf(text, sizeof text, "workers: -1\nmax_body_bytes: 0\ndrain_timeout_ms: lots\n%s",
             minimal_yaml);
    char *errors = load_err(text, "n.yaml");
    assert_path(errors, "workers");
    assert_path(errors, "max_body_bytes");
    assert_path(errors, "drain_timeout_ms");
    free(errors);
}

static void test_missing_required_fields(void **state)
{
    (void)state;
    const char *yaml = "keys:\n"
                       "  - name: nokey\n"
                       "backends:\n"
                       "  - url: http://a\n"
                       "    models:\n"
                       "      - input_usd_per_mtok: 1\n";
    char *errors = load_err(yaml, "r.yaml");
    assert_path(errors, "keys[0]");
    assert_path(errors, "backends[0].name");
    assert_path(errors, "backends[0].models[0].name");
    assert_path(errors, "backends[0].models[0].output_usd_per_mtok");
    free(errors);
}

/* The plaintext API key must not be echoed in error text. */
static void test_errors_do_not_echo_keys(void **state)
{
    (void)state;
    const char *yaml = "keys:\n"
                       "  - name: k\n"
                       "    key: sk-very-secret-value\n"
                       "    sha256: " ABC_SHA256 "\n"
                       "backends: []\n";
    char *errors = load_err(yaml, "s.yaml");
    assert_null(strstr(errors, "sk-very-secret-value"));
    free(errors);
}

/* A key given twice is a mistake, not "the last one wins". */
static void test_duplicate_keys_rejected(void **state)
{
    (void)state;
    char text[512];
    snprintf(text, sizeof text, "listen: 127.0.0.1:1\nworkers: 2\nlisten: 127.0.0.1:2\n%s",
             minimal_yaml);
    char *errors = load_err(text, "dup.yaml");
    assert_non_null(strstr(errors, "line 3"));
    assert_non_null(strstr(errors, "listen"));
    free(errors);
    errors = load_err("{\"listen\": \"a:1\", \"listen\": \"a:2\"}", "dup.json");
    assert_non_null(strstr(errors, "line 1"));
    assert_non_null(strstr(errors, "listen"));
    free(errors);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_full_yaml, setup),
        cmocka_unit_test_setup(test_full_json, setup),
        cmocka_unit_test_setup(test_json_detected_by_content, setup),
        cmocka_unit_test_setup(test_config_ref_counts, setup),
        cmocka_unit_test_setup(test_config_load_file, setup),
        cmocka_unit_test_setup(test_expand_env, setup),
        cmocka_unit_test_setup(test_env_substitution_in_config, setup),
        cmocka_unit_test_setup(test_env_missing_reported_with_path, setup),
        cmocka_unit_test_setup(test_many_errors_reported_together, setup),
        cmocka_unit_test_setup(test_same_errors_in_json, setup),
        cmocka_unit_test_setup(test_yaml_syntax_error_has_line, setup),
        cmocka_unit_test_setup(test_yaml_to_json_scalars, setup),
        cmocka_unit_test_setup(test_yaml_to_json_errors, setup),
        cmocka_unit_test_setup(test_json_syntax_error_has_line_and_column, setup),
        cmocka_unit_test_setup(test_empty_backends_rejected, setup),
        cmocka_unit_test_setup(test_listen_env_override, setup),
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_bad_numbers, setup),
        cmocka_unit_test_setup(test_missing_required_fields, setup),
        cmocka_unit_test_setup(test_errors_do_not_echo_keys, setup),
        cmocka_unit_test_setup(test_duplicate_keys_rejected, setup),
    };
    return cmocka_run_group_tests_name("config", tests, NULL, NULL);
}

/* Unit tests for openai/multipart: the incremental multipart/form-data scanner. Every body
 * is fed whole and then split at every byte, in pieces of every size up to 7. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "openai/multipart.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CT "multipart/form-data; boundary=XyZ-123"

/* A file whose content holds every prefix of the delimiter, and CRs and dashes. */
static const char file_bytes[] =
    "RIFF\r\n--XyZ-12\r\r\n-\r\n--XyZ-12!\r\n--XyZ\x00\xff tail\r\n--XyZ-12";
#define FILE_LEN (sizeof file_bytes - 1)

static size_t sdk_body(char *out, size_t n)
{
    size_t len = 0;
    len += (size_t)snprintf(out + len, n - len,
                            "--XyZ-123\r\n"
                            "Content-Disposition: form-data; name=\"file\"; "
                            "filename=\"a.wav\"\r\n"
                            "Content-Type: audio/wav\r\n\r\n");
    memcpy(out + len, file_bytes, FILE_LEN);
    len += FILE_LEN;
    len += (size_t)snprintf(out + len, n - len,
                            "\r\n--XyZ-123\r\n"
                            "Content-Disposition: form-data; name=\"model\"\r\n\r\n"
                            "whisper-1\r\n--XyZ-123\r\n"
                            "content-disposition: form-data; name=prompt\r\n\r\n"
                            "a long prompt that is skipped\r\n--XyZ-123\r\n"
                            "Content-Disposition: form-data; name=\"response_format\"\r\n\r\n"
                            "verbose_json\r\n--XyZ-123--\r\nepilogue");
    return len;
}

/* Feeds body in pieces of `piece` bytes (0: whole); the first error, or finish's result. */
static int scan(struct multipart *m, const char *ct, const char *body, size_t len, size_t piece)
{
    int rc = multipart_init(m, ct);
    if (rc)
        return rc;
    for (size_t at = 0; at < len;) {
        size_t n = piece && piece < len - at ? piece : len - at;
        rc = multipart_feed(m, body + at, n);
        if (rc)
            return rc;
        at += n;
    }
    return multipart_finish(m);
}

static void test_sdk_body_every_split(void **state)
{
    (void)state;
    char body[2048];
    size_t len = sdk_body(body, sizeof body);
    struct multipart *m = malloc(sizeof *m);
    for (size_t piece = 0; piece <= 7; piece++) {
        assert_int_equal(scan(m, CT, body, len, piece), MULTIPART_OK);
        assert_true(m->has_file);
        assert_int_equal(m->file_bytes, FILE_LEN);
        struct multipart_value *model = &m->values[MULTIPART_FIELD_MODEL];
        assert_true(model->seen);
        assert_string_equal(model->text, "whisper-1");
        assert_memory_equal(body + model->offset, "whisper-1\r\n", 11);
        assert_string_equal(m->values[MULTIPART_FIELD_RESPONSE_FORMAT].text, "verbose_json");
        assert_false(m->values[MULTIPART_FIELD_STREAM].seen);
        assert_int_equal(m->offset, len);
    }
    /* Split at every single position into two pieces. */
    for (size_t cut = 0; cut <= len; cut++) {
        assert_int_equal(multipart_init(m, CT), MULTIPART_OK);
        assert_int_equal(multipart_feed(m, body, cut), MULTIPART_OK);
        assert_int_equal(multipart_feed(m, body + cut, len - cut), MULTIPART_OK);
        assert_int_equal(multipart_finish(m), MULTIPART_OK);
        assert_int_equal(m->file_bytes, FILE_LEN);
        assert_string_equal(m->values[MULTIPART_FIELD_MODEL].text, "whisper-1");
    }
    free(m);
}

static void test_content_types(void **state)
{
    (void)state;
    struct multipart m;
    assert_int_equal(multipart_init(&m, "multipart/form-data; boundary=\"a b:c\""), MULTIPART_OK);
    assert_string_equal(m.delim, "\r\n--a b:c");
    assert_int_equal(multipart_init(&m, "Multipart/Form-Data;charset=utf-8; BOUNDARY=q"),
                     MULTIPART_OK);
    assert_string_equal(m.delim, "\r\n--q");
    assert_int_equal(multipart_init(&m, "application/json"), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, NULL), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, "multipart/form-data"), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, "multipart/form-datax; boundary=a"), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, "multipart/form-data; boundary="), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, "multipart/form-data; boundary=\"a\rb\""), MULTIPART_EBAD);
    assert_int_equal(multipart_init(&m, "multipart/form-data; boundary=\"unterminated"),
                     MULTIPART_EBAD);
    char longb[200];
    snprintf(longb, sizeof longb, "multipart/form-data; boundary=%071d", 0);
    assert_int_equal(multipart_init(&m, longb), MULTIPART_EBAD);
    /* Refused from the start: every feed too. */
    assert_int_equal(multipart_feed(&m, "--x", 3), MULTIPART_EBAD);
    assert_int_equal(multipart_finish(&m), MULTIPART_EBAD);
}

struct bad_case {
    const char *body;
    const char *param; /* NULL: none */
};

static void test_malformed(void **state)
{
    (void)state;
    static const struct bad_case cases[] = {
        {"--XyZ-123\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nw", NULL},
        {"no boundary at all", NULL},
        {"--XyZ-123x\r\n\r\n--XyZ-123--", NULL},
        {"--XyZ-123\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ-123--", NULL},
        {"--XyZ-123\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx\r\n--XyZ-123--", NULL},
        {"--XyZ-123\r\nContent-Disposition: form-data; filename=\"a\"\r\n\r\nx\r\n--XyZ-123--",
         NULL},
        {"--XyZ-123\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx\r\n--XyZ-123--", NULL},
        {"--XyZ-123\r\nno colon\r\n\r\nx\r\n--XyZ-123--", NULL},
        {"--XyZ-123\r\nContent-Disposition: form-data; name=model\r\n\r\na\r\n--XyZ-123\r\n"
         "Content-Disposition: form-data; name=model\r\n\r\nb\r\n--XyZ-123--",
         "model"},
        {"--XyZ-123\r\nContent-Disposition: form-data; name=file\r\n\r\na\r\n--XyZ-123\r\n"
         "Content-Disposition: form-data; name=file\r\n\r\nb\r\n--XyZ-123--",
         "file"},
        {"--XyZ-123\r\nContent-Disposition: form-data; name=a\r\n"
         "Content-Disposition: form-data; name=b\r\n\r\nb\r\n--XyZ-123--",
         NULL},
        {"--XyZ-123-x", NULL},
        {"--XyZ-123\rx", NULL},
    };
    struct multipart m;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        for (size_t piece = 0; piece <= 3; piece++) {
            assert_int_equal(scan(&m, CT, cases[i].body, strlen(cases[i].body), piece),
                             MULTIPART_EBAD);
            assert_true(m.msg[0]);
            if (cases[i].param)
                assert_string_equal(m.param, cases[i].param);
        }
    }
}

static void test_bounds(void **state)
{
    (void)state;
    struct multipart m;
    char *body = malloc(8192);
    /* A model of MULTIPART_VALUE_MAX bytes is taken; one more is refused. */
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(body, 8192,
                                    "--XyZ-123\r\nContent-Disposition: form-data; name=model\r\n"
                                    "\r\n%0*d\r\n--XyZ-123--",
                                    MULTIPART_VALUE_MAX + extra, 0);
        assert_int_equal(scan(&m, CT, body, n, 5), extra ? MULTIPART_EBAD : MULTIPART_OK);
        if (extra)
            assert_string_equal(m.param, "model");
    }
    /* A header line of MULTIPART_LINE_MAX + 1 bytes. */
    size_t n = (size_t)snprintf(body, 8192, "--XyZ-123\r\nX-Long: %0*d\r\n\r\n--XyZ-123--",
                                MULTIPART_LINE_MAX, 0);
    assert_int_equal(scan(&m, CT, body, n, 0), MULTIPART_EBAD);
    /* Too many header lines. */
    n = (size_t)snprintf(body, 8192, "--XyZ-123\r\n");
    for (int i = 0; i <= MULTIPART_HEADERS_MAX; i++)
        n += (size_t)snprintf(body + n, 8192 - n, "X-%d: y\r\n", i);
    n += (size_t)snprintf(body + n, 8192 - n, "\r\nz\r\n--XyZ-123--");
    assert_int_equal(scan(&m, CT, body, n, 0), MULTIPART_EBAD);
    free(body);
    /* Too many parts. */
    size_t cap = (MULTIPART_PARTS_MAX + 2) * 80;
    body = malloc(cap);
    n = 0;
    for (int i = 0; i <= MULTIPART_PARTS_MAX; i++)
        n += (size_t)snprintf(body + n, cap - n,
                              "--XyZ-123\r\nContent-Disposition: form-data; name=p%d\r\n\r\nv\r\n",
                              i);
    n += (size_t)snprintf(body + n, cap - n, "--XyZ-123--");
    assert_int_equal(scan(&m, CT, body, n, 0), MULTIPART_EBAD);
    free(body);
}

/* A preamble, LF-only line breaks, transport padding, no file: scanned; the caller decides
 * what is missing. */
static void test_lenient_forms(void **state)
{
    (void)state;
    static const char body[] = "preamble text\r\n--XyZ-123  \n"
                               "Content-Disposition: form-data; name=\"stream\"\n\n"
                               "true\r\n--XyZ-123\r\n"
                               "Content-Disposition: form-data; name=\"language\"\r\n\r\n"
                               "en\r\n--XyZ-123--";
    struct multipart m;
    for (size_t piece = 0; piece <= 4; piece++) {
        assert_int_equal(scan(&m, CT, body, sizeof body - 1, piece), MULTIPART_OK);
        assert_false(m.has_file);
        assert_string_equal(m.values[MULTIPART_FIELD_STREAM].text, "true");
        assert_string_equal(m.values[MULTIPART_FIELD_LANGUAGE].text, "en");
        assert_false(m.values[MULTIPART_FIELD_MODEL].seen);
    }
    assert_string_equal(multipart_field_name(MULTIPART_FIELD_RESPONSE_FORMAT), "response_format");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sdk_body_every_split),
        cmocka_unit_test(test_content_types),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_bounds),
        cmocka_unit_test(test_lenient_forms),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

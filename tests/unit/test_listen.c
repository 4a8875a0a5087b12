/* Unit tests for base/listen: host:port parsing, binding, the healthcheck's loopback host. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/listen.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void parse_ok(const char *text, const char *host, const char *port)
{
    struct listen_addr a;
    char err[256] = "";
    assert_int_equal(listen_parse(&a, "listen", text, err, sizeof err), 0);
    assert_string_equal(err, "");
    assert_string_equal(a.host, host);
    assert_string_equal(a.port, port);
    assert_string_equal(a.name, "listen");
    assert_ptr_equal(a.text, text);
}

static void parse_bad(const char *name, const char *text, const char *want)
{
    struct listen_addr a;
    char err[512] = "";
    assert_int_equal(listen_parse(&a, name, text, err, sizeof err), -1);
    assert_string_equal(err, want);
}

static void test_parse_good(void **state)
{
    (void)state;
    parse_ok("127.0.0.1:8080", "127.0.0.1", "8080");
    parse_ok("0.0.0.0:0", "0.0.0.0", "0");
    parse_ok(":9", "", "9");
    parse_ok("[::1]:443", "::1", "443");
    parse_ok("[::]:65535", "::", "65535");
    parse_ok("::1:8080", "::1", "8080"); /* the last colon splits */
    parse_ok("localhost:http", "localhost", "http");
    parse_ok("gw.example.com:00080", "gw.example.com", "00080");
    /* Brackets come off only as a pair. */
    parse_ok("[::1:80", "[::1", "80");
    parse_ok("[]:80", "", "80");
}

static void test_parse_bad(void **state)
{
    (void)state;
    parse_bad("listen", "127.0.0.1", "listen \"127.0.0.1\": expected host:port");
    parse_bad("listen", "", "listen \"\": expected host:port");
    parse_bad("admin_listen", "127.0.0.1:", "admin_listen \"127.0.0.1:\": expected host:port");
    parse_bad("listen", "127.0.0.1:65536",
              "listen \"127.0.0.1:65536\": the port must be from 0 to 65535");
    parse_bad("admin_listen", "[::1]:99999",
              "admin_listen \"[::1]:99999\": the port must be from 0 to 65535");
    parse_bad("listen", "h:184467440737095516160",
              "listen \"h:184467440737095516160\": the port must be from 0 to 65535");
    char name[400];
    memset(name, 'a', 300);
    strcpy(name + 300, ":80");
    char want[512];
    snprintf(want, sizeof want, "listen \"%s\": expected host:port", name);
    parse_bad("listen", name, want);
    parse_bad("listen", "h:0123456789012345678901234567890123456789",
              "listen \"h:0123456789012345678901234567890123456789\": expected host:port");
}

static void test_open_and_port(void **state)
{
    (void)state;
    struct listen_addr a;
    char err[256] = "";
    assert_int_equal(listen_parse(&a, "listen", "127.0.0.1:0", err, sizeof err), 0);
    int fd = listen_open(&a, -1, 16, LISTEN_NONBLOCK | LISTEN_REUSEPORT, err, sizeof err);
    assert_true(fd >= 0);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
    int port = listen_bound_port(fd);
    assert_true(port > 0 && port <= 65535);
    /* A second worker's listener on the port the first one got. */
    int fd2 = listen_open(&a, port, 16, LISTEN_NONBLOCK | LISTEN_REUSEPORT, err, sizeof err);
    assert_true(fd2 >= 0);
    assert_int_equal(listen_bound_port(fd2), port);
    close(fd2);
    /* Without SO_REUSEPORT the port is taken: the kernel's message. */
    char want[256];
    snprintf(want, sizeof want, "listen \"127.0.0.1:0\": %s", strerror(EADDRINUSE));
    assert_int_equal(listen_open(&a, port, 16, 0, err, sizeof err), -1);
    assert_string_equal(err, want);
    close(fd);

    /* Blocking when not asked otherwise. */
    assert_int_equal(listen_parse(&a, "admin_listen", "[::1]:0", err, sizeof err), 0);
    fd = listen_open(&a, -1, 16, 0, err, sizeof err);
    if (fd >= 0) { /* a machine without IPv6 loopback says so in err instead */
        assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
        assert_true(listen_bound_port(fd) > 0);
        close(fd);
    } else {
        assert_memory_equal(err, "admin_listen \"[::1]:0\": ", 23);
    }
}

static void test_open_unresolvable(void **state)
{
    (void)state;
    struct listen_addr a;
    char err[256] = "";
    assert_int_equal(listen_parse(&a, "admin_listen", "127.0.0.1:nosuchservice", err, sizeof err),
                     0);
    assert_int_equal(listen_open(&a, -1, 16, 0, err, sizeof err), -1);
    const char *prefix = "admin_listen \"127.0.0.1:nosuchservice\": ";
    assert_memory_equal(err, prefix, strlen(prefix));
    assert_true(strlen(err) > strlen(prefix));
}

static void test_loopback(void **state)
{
    (void)state;
    static const char *const in[][2] = {
        {":80", "127.0.0.1"}, {"0.0.0.0:80", "127.0.0.1"}, {"[::]:80", "::1"},
        {"[::1]:80", "::1"},  {"10.1.2.3:80", "10.1.2.3"}, {"localhost:80", "localhost"},
    };
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        struct listen_addr a;
        char err[128];
        assert_int_equal(listen_parse(&a, "listen", in[i][0], err, sizeof err), 0);
        listen_loopback(&a);
        assert_string_equal(a.host, in[i][1]);
        assert_string_equal(a.port, "80");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_good),    cmocka_unit_test(test_parse_bad),
        cmocka_unit_test(test_open_and_port), cmocka_unit_test(test_open_unresolvable),
        cmocka_unit_test(test_loopback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

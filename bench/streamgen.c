/* streamgen: the load generator of the stream benchmark (bench/streams.sh).
 *
 * Holds N concurrent HTTP/1.1 keep-alive connections to one target, each posting a streaming
 * chat completion and, once its stream has ended, the next one, for D seconds; then it stops
 * starting streams and waits for those under way to end, so that every stream it started is
 * either completed or an error and a proxy's CPU time over the run divides by whole streams.
 * One thread, one epoll set, no buffer per connection: a response is parsed byte by byte
 * (status line, headers, chunked framing, SSE "data:" lines) by a small state machine.
 *
 * A stream is completed when its status is 200, its body is chunked, it carries "data: [DONE]"
 * (or, a Responses API stream, its "response.completed" event) and its last chunk arrives; anything
 * else (another status, a connection closed or reset, a stream without [DONE], no byte for 30 s) is
 * an error and the connection is opened again. Time to first token: from the request's write to the
 * first "data:" of its body.
 *
 *   streamgen -c CONNS -d SECONDS [-r RAMP_S] [-H "Header: value"] [-b BODY] URL
 *
 * Prints one line of "key=value" figures: streams, errors, events, ttft_p50_us, ttft_p99_us,
 * ttft_max_us, wall_s and the generator's own cpu_s (to check it was not the bottleneck).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SG_MAX_CONNS 20000
#define SG_REQ_MAX 4096
#define SG_IDLE_US (30 * 1000000LL)
#define SG_TTFT_MAX (1u << 24)

enum sg_state {
    SG_IDLE,
    SG_CONNECTING,
    SG_STATUS,
    SG_HEADERS,
    SG_SIZE,
    SG_DATA,
    SG_DATA_END,
    SG_TRAILER
};

struct sg_conn {
    int fd;
    enum sg_state st;
    int64_t sent_us, last_us, start_at_us;
    unsigned status, status_digits;
    unsigned hdr_nl;   /* consecutive line ends seen in the headers ("\r" ignored) */
    unsigned ch_match; /* bytes of "chunked" matched */
    bool chunked, got_first, got_done, line_empty;
    uint64_t chunk_left;
    unsigned data_match, done_match, completed_match;
    bool at_line_start;
};

static struct sg_conn *conns;
static unsigned n_conns;
static int ep;
static char req[SG_REQ_MAX];
static size_t req_len;
static struct sockaddr_in target;
static uint32_t *ttfts;
static size_t n_ttft;
static unsigned long long streams, errors, events;
static bool stopping;

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void conn_close(struct sg_conn *c)
{
    if (c->fd != -1)
        close(c->fd);
    c->fd = -1;
    c->st = SG_IDLE;
}

static void send_request(struct sg_conn *c)
{
    ssize_t n = send(c->fd, req, req_len, MSG_NOSIGNAL);
    if (n != (ssize_t)req_len) { /* a request this small fits a fresh socket's buffer */
        errors++;
        conn_close(c);
        return;
    }
    c->sent_us = c->last_us = now_us();
    c->st = SG_STATUS;
    c->status = c->status_digits = 0;
    c->hdr_nl = c->ch_match = 0;
    c->chunked = c->got_first = c->got_done = false;
    c->data_match = c->done_match = c->completed_match = 0;
    c->at_line_start = true;
}

static void conn_open(struct sg_conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd == -1) {
        errors++;
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP,
                             .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) == -1) {
        errors++;
        conn_close(c);
        return;
    }
    c->last_us = now_us();
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) == -1 && errno != EINPROGRESS) {
        errors++;
        conn_close(c);
        return;
    }
    c->st = SG_CONNECTING;
}

/* A stream ended cleanly: count it and start the next one on the same connection. */
static void stream_done(struct sg_conn *c)
{
    if (!c->got_done) {
        errors++;
        conn_close(c);
        return;
    }
    streams++;
    if (stopping) {
        conn_close(c);
        return;
    }
    send_request(c);
}

/* The body's bytes (chunk payload): count "data:" at a line start, note the first and [DONE]. */
static void on_payload(struct sg_conn *c, const char *p, size_t n)
{
    static const char data[] = "data:", done[] = "[DONE]", completed[] = "\"response.completed\"";
    for (size_t i = 0; i < n; i++) {
        char ch = p[i];
        if (c->data_match || c->at_line_start) {
            if (ch == data[c->data_match]) {
                if (++c->data_match == 5) {
                    c->data_match = 0;
                    events++;
                    if (!c->got_first) {
                        c->got_first = true;
                        int64_t d = now_us() - c->sent_us;
                        if (n_ttft < SG_TTFT_MAX)
                            ttfts[n_ttft++] = (uint32_t)(d > UINT32_MAX ? UINT32_MAX : d);
                    }
                }
            } else {
                c->data_match = 0;
            }
        }
        if (ch == done[c->done_match]) {
            if (++c->done_match == 6) {
                c->got_done = true;
                c->done_match = 0;
            }
        } else {
            c->done_match = ch == '[' ? 1 : 0;
        }
        /* the pattern's first byte, '"', comes again only as its last: a mismatch restarts the
         * match at this byte or not at all */
        if (ch == completed[c->completed_match]) {
            if (++c->completed_match == sizeof completed - 1) {
                c->got_done = true;
                c->completed_match = 0;
            }
        } else {
            c->completed_match = ch == '"' ? 1 : 0;
        }
        c->at_line_start = ch == '\n';
    }
}

/* Feeds received bytes through the response's state machine. Returns false when the
 * connection was closed. */
static bool on_bytes(struct sg_conn *c, const char *p, size_t n)
{
    static const char chunked[] = "chunked";
    size_t i = 0;
    while (i < n) {
        char ch = p[i];
        switch (c->st) {
        case SG_STATUS: /* "HTTP/1.1 200 ..." up to the line end */
            if (ch == '\n') {
                c->st = SG_HEADERS;
                c->hdr_nl = 1;
            } else if (ch >= '0' && ch <= '9' && c->status_digits < 3 && i > 0 &&
                       (c->status_digits || p[i - 1] == ' ')) {
                c->status = c->status * 10 + (unsigned)(ch - '0');
                c->status_digits++;
            }
            i++;
            break;
        case SG_HEADERS:
            if (ch == '\n') {
                if (++c->hdr_nl == 2) {
                    if (c->status != 200 || !c->chunked) {
                        errors++;
                        conn_close(c);
                        return false;
                    }
                    c->st = SG_SIZE;
                    c->chunk_left = 0;
                    c->line_empty = true;
                }
            } else if (ch != '\r') {
                c->hdr_nl = 0;
                char lc = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
                if (lc == chunked[c->ch_match]) {
                    if (++c->ch_match == 7)
                        c->chunked = true;
                } else {
                    c->ch_match = lc == 'c' ? 1 : 0;
                }
            }
            i++;
            break;
        case SG_SIZE: /* hex size, maybe extensions, "\r\n" */
            if (ch == '\n') {
                if (c->line_empty) { /* the "\r\n" after a chunk's data, tolerated here */
                    i++;
                    break;
                }
                c->st = c->chunk_left ? SG_DATA : SG_TRAILER;
                c->line_empty = true;
            } else if (ch != '\r') {
                int v = (ch >= '0' && ch <= '9')   ? ch - '0'
                        : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                        : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10
                                                   : -1;
                if (c->line_empty && v < 0) {
                    errors++;
                    conn_close(c);
                    return false;
                }
                if (v >= 0 && c->chunk_left < (1ull << 40))
                    c->chunk_left = c->chunk_left * 16 + (uint64_t)v;
                c->line_empty = false;
            }
            i++;
            break;
        case SG_DATA: {
            size_t take = n - i < c->chunk_left ? n - i : (size_t)c->chunk_left;
            on_payload(c, p + i, take);
            i += take;
            c->chunk_left -= take;
            if (!c->chunk_left) {
                c->st = SG_SIZE;
                c->line_empty = true;
            }
            break;
        }
        case SG_TRAILER: /* trailer lines up to an empty one */
            if (ch == '\n') {
                if (c->line_empty) {
                    i++;
                    stream_done(c);
                    if (c->fd == -1)
                        return false;
                    if (i < n) { /* bytes after the end of a response nobody asked for */
                        errors++;
                        conn_close(c);
                        return false;
                    }
                    break;
                }
                c->line_empty = true;
            } else if (ch != '\r') {
                c->line_empty = false;
            }
            i++;
            break;
        default:
            i++;
            break;
        }
    }
    return true;
}

static void on_event(struct sg_conn *c, uint32_t evs)
{
    if (c->st == SG_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (evs & (EPOLLERR | EPOLLHUP))) {
            errors++;
            conn_close(c);
            return;
        }
        if (!(evs & EPOLLOUT))
            return;
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)(c - conns)};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        if (stopping) {
            conn_close(c);
            return;
        }
        send_request(c);
        return;
    }
    static char buf[65536];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof buf, 0);
        if (r > 0) {
            c->last_us = now_us();
            if (!on_bytes(c, buf, (size_t)r))
                return;
            if ((size_t)r < sizeof buf)
                return;
            continue;
        }
        if (r == -1 && (errno == EAGAIN || errno == EINTR))
            return;
        /* closed or reset: an error unless the connection was idle between streams */
        if (c->st != SG_IDLE)
            errors++;
        conn_close(c);
        return;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t pct(double p)
{
    if (!n_ttft)
        return 0;
    size_t i = (size_t)(p * (double)(n_ttft - 1) + 0.5);
    return ttfts[i];
}

static int usage(void)
{
    fprintf(stderr, "usage: streamgen -c CONNS -d SECONDS [-r RAMP_S] [-H 'Name: value']... "
                    "[-b BODY] http://HOST:PORT/PATH\n");
    return 2;
}

int main(int argc, char **argv)
{
    unsigned secs = 10;
    double ramp = 1.0;
    const char *body = "{\"model\":\"bench-model\",\"messages\":[{\"role\":\"user\",\"content\":"
                       "\"Say hi\"}],\"max_tokens\":100,\"stream\":true}";
    char headers[2048] = "";
    size_t hl = 0;
    int opt;
    n_conns = 100;
    while ((opt = getopt(argc, argv, "c:d:r:H:b:")) != -1) {
        switch (opt) {
        case 'c':
            n_conns = (unsigned)atoi(optarg);
            break;
        case 'd':
            secs = (unsigned)atoi(optarg);
            break;
        case 'r':
            ramp = atof(optarg);
            break;
        case 'H': {
            int w = snprintf(headers + hl, sizeof headers - hl, "%s\r\n", optarg);
            if (w < 0 || (size_t)w >= sizeof headers - hl)
                return usage();
            hl += (size_t)w;
            break;
        }
        case 'b':
            body = optarg;
            break;
        default:
            return usage();
        }
    }
    if (optind != argc - 1 || n_conns < 1 || n_conns > SG_MAX_CONNS || secs < 1 || ramp < 0)
        return usage();
    unsigned a, b, c4, d, port;
    char path[1024] = "/";
    if (sscanf(argv[optind], "http://%u.%u.%u.%u:%u%1023s", &a, &b, &c4, &d, &port, path) < 5 ||
        a > 255 || b > 255 || c4 > 255 || d > 255 || port < 1 || port > 65535)
        return usage();
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)port);
    target.sin_addr.s_addr = htonl(a << 24 | b << 16 | c4 << 8 | d);
    int w =
        snprintf(req, sizeof req,
                 "POST %s HTTP/1.1\r\nHost: %u.%u.%u.%u:%u\r\nContent-Type: application/json\r\n"
                 "Accept: text/event-stream\r\n%sContent-Length: %zu\r\n\r\n%s",
                 path, a, b, c4, d, port, headers, strlen(body), body);
    if (w < 0 || (size_t)w >= sizeof req)
        return usage();
    req_len = (size_t)w;

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < n_conns + 64u) {
        rl.rlim_cur = rl.rlim_max < n_conns + 64u ? rl.rlim_max : n_conns + 64u;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    conns = calloc(n_conns, sizeof *conns);
    ttfts = malloc(SG_TTFT_MAX * sizeof *ttfts);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (!conns || !ttfts || ep == -1) {
        perror("streamgen");
        return 1;
    }
    int64_t t0 = now_us(), end = t0 + (int64_t)secs * 1000000;
    for (unsigned i = 0; i < n_conns; i++) {
        conns[i].fd = -1;
        conns[i].st = SG_IDLE;
        conns[i].start_at_us = t0 + (int64_t)(ramp * 1e6 * i / n_conns);
    }
    unsigned started = 0;
    int64_t last_scan = 0;
    struct epoll_event evs[512];
    for (;;) {
        int64_t now = now_us();
        if (!stopping && now >= end)
            stopping = true;
        /* connections due to open (the ramp), or to open again after an error */
        for (unsigned i = started; i < n_conns && conns[i].start_at_us <= now; i++, started++)
            if (!stopping)
                conn_open(&conns[i]);
        /* the walk over every connection, ten times a second */
        if (now - last_scan < 100000 && started == n_conns) {
            int n = epoll_wait(ep, evs, 512, 10);
            for (int i = 0; i < n; i++)
                on_event(&conns[evs[i].data.u32], evs[i].events);
            continue;
        }
        last_scan = now;
        bool busy = false;
        for (unsigned i = 0; i < started; i++) {
            struct sg_conn *c = &conns[i];
            if (c->st == SG_IDLE) {
                if (!stopping)
                    conn_open(c);
            } else if (now - c->last_us > SG_IDLE_US) {
                errors++;
                conn_close(c);
            }
            busy |= c->st != SG_IDLE;
        }
        if (stopping && !busy)
            break;
        int n = epoll_wait(ep, evs, 512, 10);
        for (int i = 0; i < n; i++)
            on_event(&conns[evs[i].data.u32], evs[i].events);
    }
    double wall = (double)(now_us() - t0) / 1e6;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    qsort(ttfts, n_ttft, sizeof *ttfts, cmp_u32);
    printf("streams=%llu errors=%llu events=%llu ttft_p50_us=%u ttft_p99_us=%u ttft_max_us=%u "
           "wall_s=%.2f cpu_s=%.2f\n",
           streams, errors, events, pct(0.50), pct(0.99), n_ttft ? ttfts[n_ttft - 1] : 0, wall,
           cpu);
    return 0;
}

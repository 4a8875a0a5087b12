#include "base/listen.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int listen_parse(struct listen_addr *a, const char *name, const char *text, char *err,
                 size_t err_len)
{
    a->name = name;
    a->text = text;
    a->host[0] = a->port[0] = '\0';
    const char *colon = strrchr(text, ':');
    size_t hn = colon ? (size_t)(colon - text) : 0;
    size_t pn = colon ? strlen(colon + 1) : 0;
    if (!colon || hn >= sizeof a->host || pn == 0 || pn >= sizeof a->port) {
        snprintf(err, err_len, "%s \"%s\": expected host:port", name, text);
        return -1;
    }
    if (hn > 1 && text[0] == '[' && text[hn - 1] == ']') {
        memcpy(a->host, text + 1, hn - 2);
        a->host[hn - 2] = '\0';
    } else {
        memcpy(a->host, text, hn);
        a->host[hn] = '\0';
    }
    memcpy(a->port, colon + 1, pn + 1);
    if (strspn(a->port, "0123456789") == pn) {
        /* getaddrinfo() would take 65536 as port 0 and 99999 as 34463. */
        unsigned long n = 0;
        for (size_t i = 0; i < pn && n <= 65535; i++)
            n = n * 10 + (unsigned long)(a->port[i] - '0');
        if (n > 65535) {
            snprintf(err, err_len, "%s \"%s\": the port must be from 0 to 65535", name, text);
            return -1;
        }
    }
    return 0;
}

int listen_open(const struct listen_addr *a, int port, int backlog, unsigned flags, char *err,
                size_t err_len)
{
    char port_text[16];
    const char *service = a->port;
    if (port >= 0) {
        snprintf(port_text, sizeof port_text, "%d", port);
        service = port_text;
    }
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(a->host[0] ? a->host : NULL, service, &hints, &res);
    if (gai) {
        snprintf(err, err_len, "%s \"%s\": %s", a->name, a->text, gai_strerror(gai));
        return -1;
    }
    int type = SOCK_STREAM | SOCK_CLOEXEC | (flags & LISTEN_NONBLOCK ? SOCK_NONBLOCK : 0);
    bool said = false;
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, type, 0);
        if (fd == -1)
            continue;
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (flags & LISTEN_REUSEPORT)
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, backlog) == 0)
            break;
        snprintf(err, err_len, "%s \"%s\": %s", a->name, a->text, strerror(errno));
        said = true;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd == -1 && !said)
        snprintf(err, err_len, "%s \"%s\": no usable address", a->name, a->text);
    return fd;
}

int listen_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) == -1)
        return -1;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return -1;
}

void listen_loopback(struct listen_addr *a)
{
    if (!a->host[0] || !strcmp(a->host, "0.0.0.0"))
        strcpy(a->host, "127.0.0.1");
    else if (!strcmp(a->host, "::"))
        strcpy(a->host, "::1");
}

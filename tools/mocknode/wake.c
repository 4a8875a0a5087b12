#include "wake.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

struct wake_entry {
    uint64_t due_ns;
    struct MHD_Connection *conn;
};

/* Connections resumed per pass; more simply wait for the next pass. */
#define WAKE_BATCH 256

/* lock guards everything below it; the epoll set itself is thread-safe. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct wake_entry *heap;
static size_t heap_len;
static size_t heap_cap;
static struct wake_hang *hangs;
static bool stopping;

static int epoll_fd = -1;
static int event_fd = -1;
static pthread_t thread;

uint64_t wake_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void kick(void)
{
    uint64_t one = 1;

    /* A full counter already means a pending wake-up, so a failed write loses nothing. */
    if (write(event_fd, &one, sizeof(one)) == -1)
        return;
}

static void drain_kicks(void)
{
    uint64_t v;

    /* EAGAIN only means another pass already drained it. */
    if (read(event_fd, &v, sizeof(v)) == -1)
        return;
}

static void heap_push(struct wake_entry e)
{
    size_t i = heap_len++;

    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (heap[parent].due_ns <= e.due_ns)
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = e;
}

static struct wake_entry heap_pop(void)
{
    struct wake_entry top = heap[0];
    struct wake_entry last = heap[--heap_len];
    size_t i = 0;

    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= heap_len)
            break;
        if (child + 1 < heap_len && heap[child + 1].due_ns < heap[child].due_ns)
            child++;
        if (last.due_ns <= heap[child].due_ns)
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (heap_len > 0)
        heap[i] = last;
    return top;
}

static void hang_unlink(struct wake_hang *h)
{
    if (h->prev)
        h->prev->next = h->next;
    else
        hangs = h->next;
    if (h->next)
        h->next->prev = h->prev;
    h->prev = h->next = NULL;
    epoll_ctl(epoll_fd, EPOLL_CTL_DEL, h->fd, NULL);
}

int wake_suspend_until(struct MHD_Connection *conn, uint64_t due_ns)
{
    pthread_mutex_lock(&lock);
    if (stopping)
        goto refuse;
    if (heap_len == heap_cap) {
        size_t cap = heap_cap ? heap_cap * 2 : 1024;
        struct wake_entry *p = realloc(heap, cap * sizeof(*p));
        if (!p)
            goto refuse;
        heap = p;
        heap_cap = cap;
    }
    /*
     * Suspending under the lock means the timer thread can only see (and
     * resume) the connection after MHD knows it is suspended, and wake_stop()
     * cannot slip between our stopping check and the push.
     */
    MHD_suspend_connection(conn);
    heap_push((struct wake_entry){.due_ns = due_ns, .conn = conn});
    bool earliest = heap[0].conn == conn;
    pthread_mutex_unlock(&lock);
    if (earliest)
        kick();
    return 0;
refuse:
    pthread_mutex_unlock(&lock);
    return -1;
}

int wake_suspend_hang(struct wake_hang *h, struct MHD_Connection *conn, int fd)
{
    /* Only a hang-up matters: a hanging request never reads again. */
    struct epoll_event ev = {.events = EPOLLRDHUP, .data.ptr = h};

    pthread_mutex_lock(&lock);
    if (stopping)
        goto refuse;
    h->conn = conn;
    h->fd = fd;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev) == -1)
        goto refuse;
    MHD_suspend_connection(conn);
    h->prev = NULL;
    h->next = hangs;
    if (hangs)
        hangs->prev = h;
    hangs = h;
    pthread_mutex_unlock(&lock);
    return 0;
refuse:
    pthread_mutex_unlock(&lock);
    return -1;
}

static int timeout_ms_locked(void)
{
    if (heap_len == 0)
        return -1;
    uint64_t now = wake_now_ns();
    if (heap[0].due_ns <= now)
        return 0;
    /* Round up: waking early would just spin until the deadline. */
    uint64_t ms = (heap[0].due_ns - now + 999999) / 1000000;
    return ms > 60000 ? 60000 : (int)ms;
}

static void *timer_main(void *arg)
{
    struct epoll_event evs[64];
    struct MHD_Connection *batch[WAKE_BATCH];

    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        bool stop = stopping;
        int timeout = timeout_ms_locked();
        pthread_mutex_unlock(&lock);
        if (stop)
            break;

        int n = epoll_wait(epoll_fd, evs, 64, timeout);
        if (n == -1 && errno != EINTR)
            break;

        size_t nb = 0;
        pthread_mutex_lock(&lock);
        for (int i = 0; i < n; i++) {
            struct wake_hang *h = evs[i].data.ptr;
            if (!h) {
                drain_kicks();
                continue;
            }
            /* Hang entries leave the set only here or after this thread exits. */
            if (nb < WAKE_BATCH) {
                batch[nb++] = h->conn;
                hang_unlink(h);
            }
        }
        uint64_t now = wake_now_ns();
        while (heap_len > 0 && heap[0].due_ns <= now && nb < WAKE_BATCH)
            batch[nb++] = heap_pop().conn;
        pthread_mutex_unlock(&lock);

        /* Popped entries are ours alone, so resuming needs no lock and keeps the hold short. */
        for (size_t i = 0; i < nb; i++)
            MHD_resume_connection(batch[i]);
    }
    return NULL;
}

int wake_start(void)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};

    epoll_fd = epoll_create1(EPOLL_CLOEXEC);
    if (epoll_fd == -1)
        return -1;
    event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (event_fd == -1)
        goto err;
    if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, event_fd, &ev) == -1)
        goto err;
    int rc = pthread_create(&thread, NULL, timer_main, NULL);
    if (rc != 0) {
        errno = rc;
        goto err;
    }
    return 0;
err:
    if (event_fd != -1)
        close(event_fd);
    close(epoll_fd);
    event_fd = epoll_fd = -1;
    return -1;
}

void wake_stop(void)
{
    pthread_mutex_lock(&lock);
    stopping = true;
    pthread_mutex_unlock(&lock);
    kick();
    pthread_join(thread, NULL);

    /* The timer thread is gone and suspends are refused: the lists are ours now. */
    while (heap_len > 0)
        MHD_resume_connection(heap_pop().conn);
    while (hangs) {
        struct MHD_Connection *conn = hangs->conn;
        hang_unlink(hangs);
        MHD_resume_connection(conn);
    }
    free(heap);
    heap = NULL;
    heap_cap = 0;
    close(event_fd);
    close(epoll_fd);
    event_fd = epoll_fd = -1;
}

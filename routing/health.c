#include "routing/health.h"

#include "base/buf.h"
#include "base/clock.h"
#include "base/error.h"
#include "base/list.h"
#include "base/log.h"
#include "net/upstream.h"
#include "routing/backend.h"

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HEALTH_MAX_PRICES_BYTES (4u << 20)

enum check_kind { CHECK_PROBE, CHECK_PRICES };

/* One probe or price fetch in flight; holds the config whose headers it uses. */
struct check {
    struct health *h;
    struct config *cfg;
    size_t backend;
    enum check_kind kind;
    int64_t started_ms;
    struct upstream_xfer *xfer;
    struct curl_slist *headers; /* a feed read's own: the backend's and If-None-Match */
    bool got_data;
    char etag[160]; /* the feed's ETag for this answer */
    struct buf body;
    char url[1024];
    struct list node; /* on the thread's live checks */
};

/* A backend's price feed: read on its own schedule, with the ETag of what was last applied
 * so an unchanged document costs a 304. */
struct feed {
    int64_t due_ms; /* next read */
    bool busy;      /* a read is in flight */
    char etag[160];
};

struct health {
    pthread_t thread;
    struct ev_loop *loop;
    struct upstream *upstream;
    ev_timer probe_timer;
    ev_timer prices_timer;
    ev_async wakeup;
    /* lock guards `next` and `stop`, written by the main thread. */
    pthread_mutex_t lock;
    struct config *next;
    bool stop;
    struct config *cfg; /* the health thread's own snapshot */
    unsigned *busy;     /* per backend of cfg: a probe is in flight */
    struct feed *feeds; /* per backend of cfg */
    struct list checks; /* every probe and price fetch in flight */
};

static void check_free(struct check *c)
{
    list_unlink(&c->node);
    buf_free(&c->body);
    curl_slist_free_all(c->headers);
    config_unref(c->cfg);
    free(c);
}

static int check_on_data(void *ctx, const char *data, size_t len)
{
    struct check *c = ctx;
    if (c->kind == CHECK_PROBE)
        return 0; /* only the status matters */
    if (!c->got_data) {
        c->got_data = true;
        if (c->xfer && upstream_header(c->xfer, "etag", c->etag, sizeof c->etag))
            c->etag[0] = '\0';
    }
    return buf_append(&c->body, data, len) ? TG_ERR_BAD_BACKEND_RESPONSE : 0;
}

static void prices_arm(struct health *h);

/* A per-token USD price: OpenRouter sends strings ("0.0000002"), numbers are accepted too.
 * Anything else, negative, or above a dollar a token is refused. */
static int price_value(json_t *v, double *out)
{
    double d;
    if (json_is_number(v)) {
        d = json_number_value(v);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        char *end;
        d = strtod(s, &end);
        if (end == s || *end)
            return -1;
    } else {
        return -1;
    }
    if (!(d >= 0) || d > 1)
        return -1;
    *out = d;
    return 0;
}

int health_apply_prices(const struct config_backend *b, json_t *doc, long long now_ms)
{
    json_t *data = json_object_get(doc, "data");
    int priced = 0;
    for (size_t m = 0; m < b->n_models; m++) {
        const struct config_model *model = &b->models[m];
        const char *want = model->upstream ? model->upstream : model->name;
        size_t i;
        json_t *item;
        json_array_foreach (data, i, item) {
            const char *id = json_string_value(json_object_get(item, "id"));
            if (!id || strcmp(id, want))
                continue;
            if (model->price)
                capability_apply_feed(&model->price->feed, item);
            json_t *pricing = json_object_get(item, "pricing");
            double in, out;
            if (price_value(json_object_get(pricing, "prompt"), &in) ||
                price_value(json_object_get(pricing, "completion"), &out))
                break; /* missing or not a price: keep the prices we have */
            if (model->price)
                backend_set_price(model->price, in * 1e6, out * 1e6, now_ms);
            priced++;
            break;
        }
    }
    return priced;
}

static void check_on_done(void *ctx, int result, long status, const char *detail)
{
    struct check *c = ctx;
    struct health *h = c->h;
    const struct config_backend *b = &c->cfg->backends[c->backend];
    int64_t now = clock_mono_ms();
    bool current = c->cfg == h->cfg;
    if (c->kind == CHECK_PROBE) {
        bool ok = result == 0 && status >= 200 && status < 300;
        bool was_down = atomic_load(&b->state->probe_down);
        bool was_suspected = stuck_suspected(&b->state->stuck);
        if (ok)
            stuck_world_probe_ok(c->started_ms * 1000);
        backend_record_probe(b->state, &c->cfg->health, ok, c->started_ms, now);
        bool is_down = atomic_load(&b->state->probe_down);
        if (was_down != is_down) {
            char esc[300];
            log_event(is_down ? LOG_WARN : LOG_INFO, is_down ? "backend_down" : "backend_up",
                      "\"backend\":\"%s\",\"detail\":\"%s\"", b->name,
                      log_escape(esc, sizeof esc, ok ? "probe answered" : detail));
        }
        if (was_suspected && !stuck_suspected(&b->state->stuck))
            log_event(LOG_INFO, "backend_unsuspected",
                      "\"backend\":\"%s\",\"detail\":\"a probe answered\"", b->name);
        if (current)
            h->busy[c->backend] = 0;
    } else if (result == 0 && status == 304) {
        /* Unchanged since the ETag we sent: the prices in force are confirmed. */
        for (size_t m = 0; m < b->n_models; m++)
            if (b->models[m].price && atomic_load(&b->models[m].price->live))
                backend_confirm_price(b->models[m].price, now);
        if (current) {
            h->feeds[c->backend].busy = false;
            prices_arm(h);
        }
    } else {
        json_t *doc = NULL;
        if (result == 0 && status == 200)
            doc = json_loadb(c->body.data ? c->body.data : "", c->body.len, 0, NULL);
        int priced = doc ? health_apply_prices(b, doc, now) : -1;
        json_decref(doc);
        char esc[300];
        if (priced < 0)
            log_event(LOG_WARN, "prices_failed",
                      "\"backend\":\"%s\",\"status\":%ld,\"detail\":\"%s\"", b->name, status,
                      log_escape(esc, sizeof esc, detail));
        else
            log_event(LOG_DEBUG, "prices_updated", "\"backend\":\"%s\",\"models\":%d", b->name,
                      priced);
        if (current) {
            struct feed *f = &h->feeds[c->backend];
            /* Only a document that was applied may be answered with a 304 next time. */
            snprintf(f->etag, sizeof f->etag, "%s", priced >= 0 ? c->etag : "");
            f->busy = false;
            prices_arm(h);
        }
    }
    check_free(c);
}

static const struct upstream_ops check_ops = {
    .on_data = check_on_data,
    .on_done = check_on_done,
};

/* Whether two URLs have the same scheme, host and port. */
static bool same_origin(const char *a, const char *b)
{
    const char *sa = strstr(a, "://"), *sb = strstr(b, "://");
    if (!sa || !sb)
        return false;
    size_t na = (size_t)(sa + 3 - a) + strcspn(sa + 3, "/");
    size_t nb = (size_t)(sb + 3 - b) + strcspn(sb + 3, "/");
    return na == nb && !strncasecmp(a, b, na);
}

/* What a price feed on another origin than its backend is sent: not the backend's api_key. */
static struct curl_slist foreign_feed_headers = {(char *)"User-Agent: tollgate/" TOLLGATE_VERSION,
                                                 NULL};

static void check_start(struct health *h, size_t i, enum check_kind kind)
{
    const struct config_backend *b = &h->cfg->backends[i];
    struct check *c = calloc(1, sizeof *c);
    if (!c)
        return;
    c->h = h;
    c->cfg = config_ref(h->cfg);
    list_push_head(&h->checks, &c->node);
    c->backend = i;
    c->kind = kind;
    c->started_ms = clock_mono_ms();
    buf_init(&c->body, HEALTH_MAX_PRICES_BYTES);
    if (kind == CHECK_PROBE)
        snprintf(c->url, sizeof c->url, "%s/models", b->url);
    else
        snprintf(c->url, sizeof c->url, "%s", b->prices_url);
    long timeout = h->cfg->health.timeout_ms;
    /* A feed elsewhere (a public price list) gets neither the backend's key nor its CA. */
    bool own = kind == CHECK_PROBE || same_origin(b->url, b->prices_url);
    struct curl_slist *headers = own ? b->headers : &foreign_feed_headers;
    const char *etag = kind == CHECK_PRICES ? h->feeds[i].etag : "";
    if (etag[0]) {
        /* The feed's headers plus If-None-Match: a list of the check's own. */
        char inm[200];
        snprintf(inm, sizeof inm, "If-None-Match: %s", etag);
        for (struct curl_slist *l = headers; l; l = l->next) {
            struct curl_slist *next = curl_slist_append(c->headers, l->data);
            if (!next)
                goto fail;
            c->headers = next;
        }
        struct curl_slist *next = curl_slist_append(c->headers, inm);
        if (!next)
            goto fail;
        c->headers = headers = next;
    }
    struct upstream_req req = {
        .url = c->url,
        .headers = headers,
        .ca_file = own ? b->ca_file : NULL,
        .request_id = kind == CHECK_PROBE ? "tollgate-health-probe" : "tollgate-prices",
        .connect_timeout_ms = timeout,
        .first_byte_timeout_ms = timeout,
        .idle_timeout_ms = timeout,
        .total_timeout_ms = kind == CHECK_PROBE ? timeout : timeout * 5,
    };
    c->xfer = upstream_start(h->upstream, &req, &check_ops, c);
    if (!c->xfer)
        goto fail;
    if (kind == CHECK_PROBE)
        h->busy[i] = 1;
    else
        h->feeds[i].busy = true;
    return;
fail:
    check_free(c);
}

static void probe_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct health *h = t->data;
    for (size_t i = 0; i < h->cfg->n_backends; i++)
        if (!h->busy[i])
            check_start(h, i, CHECK_PROBE);
}

/* Sets the feed timer to the next read that is due, to the millisecond (never on a coarser
 * tick: a price a second late routes and bills a second wrong). */
static void prices_arm(struct health *h)
{
    int64_t next = INT64_MAX;
    for (size_t i = 0; i < h->cfg->n_backends; i++)
        if (h->cfg->backends[i].prices_url && !h->feeds[i].busy && h->feeds[i].due_ms < next)
            next = h->feeds[i].due_ms;
    ev_timer_stop(h->loop, &h->prices_timer);
    if (next == INT64_MAX)
        return;
    int64_t wait = next - clock_mono_ms();
    ev_now_update(h->loop);
    ev_timer_set(&h->prices_timer, wait > 0 ? (double)wait / 1000.0 : 0., 0.);
    ev_timer_start(h->loop, &h->prices_timer);
}

static void prices_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    struct health *h = t->data;
    int64_t now = clock_mono_ms();
    for (size_t i = 0; i < h->cfg->n_backends; i++) {
        const struct config_backend *b = &h->cfg->backends[i];
        struct feed *f = &h->feeds[i];
        if (!b->prices_url || f->busy || now < f->due_ms)
            continue;
        /* On the feed's own cadence, from when this read was due (not when it ran), unless
         * it fell a whole period behind. */
        int64_t period = (int64_t)(b->prices_refresh_s * 1000.0);
        if (period < 1)
            period = 1;
        f->due_ms = f->due_ms && now - f->due_ms < period ? f->due_ms + period : now + period;
        check_start(h, i, CHECK_PRICES);
    }
    prices_arm(h);
}

/* Makes `cfg` the thread's snapshot: per-backend bookkeeping starts afresh (a check still in
 * flight for the old snapshot finishes against it and is then dropped). */
static int health_use(struct health *h, struct config *cfg)
{
    size_t n = cfg->n_backends;
    unsigned *busy = calloc(n + 1, sizeof *busy);
    struct feed *feeds = calloc(n + 1, sizeof *feeds);
    if (!busy || !feeds) {
        free(busy);
        free(feeds);
        return -1;
    }
    free(h->busy);
    free(h->feeds);
    h->busy = busy;
    h->feeds = feeds;
    config_unref(h->cfg);
    h->cfg = config_ref(cfg);
    ev_timer_stop(h->loop, &h->probe_timer);
    ev_timer_set(&h->probe_timer, 0., (double)cfg->health.interval_ms / 1000.0);
    ev_timer_start(h->loop, &h->probe_timer);
    prices_arm(h); /* every feed is due at once */
    return 0;
}

static void wakeup_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    struct health *h = a->data;
    pthread_mutex_lock(&h->lock);
    struct config *next = h->next;
    h->next = NULL;
    bool stop = h->stop;
    pthread_mutex_unlock(&h->lock);
    if (next) {
        health_use(h, next);
        config_unref(next);
    }
    if (stop)
        ev_break(loop, EVBREAK_ALL);
}

static void *health_main(void *arg)
{
    struct health *h = arg;
    ev_run(h->loop, 0);
    return NULL;
}

struct health *health_start(struct config *cfg)
{
    struct health *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    pthread_mutex_init(&h->lock, NULL);
    list_init(&h->checks);
    h->loop = ev_loop_new(EVBACKEND_EPOLL | EVFLAG_NOENV);
    h->upstream = h->loop ? upstream_new(h->loop, 4) : NULL;
    if (!h->upstream)
        goto err;
    ev_timer_init(&h->probe_timer, probe_cb, 0., 1.);
    h->probe_timer.data = h;
    ev_timer_init(&h->prices_timer, prices_cb, 0., 0.);
    h->prices_timer.data = h;
    ev_async_init(&h->wakeup, wakeup_cb);
    h->wakeup.data = h;
    ev_async_start(h->loop, &h->wakeup);
    if (health_use(h, cfg))
        goto err;
    if (pthread_create(&h->thread, NULL, health_main, h))
        goto err;
    return h;
err:
    upstream_free(h->upstream);
    if (h->loop)
        ev_loop_destroy(h->loop);
    config_unref(h->cfg);
    free(h->busy);
    free(h->feeds);
    free(h);
    return NULL;
}

void health_reload(struct health *h, struct config *cfg)
{
    pthread_mutex_lock(&h->lock);
    config_unref(h->next);
    h->next = config_ref(cfg);
    pthread_mutex_unlock(&h->lock);
    ev_async_send(h->loop, &h->wakeup);
}

/* upstream_free() cancels checks still in flight without callbacks: free their state. */
void health_stop(struct health *h)
{
    if (!h)
        return;
    pthread_mutex_lock(&h->lock);
    h->stop = true;
    pthread_mutex_unlock(&h->lock);
    ev_async_send(h->loop, &h->wakeup);
    pthread_join(h->thread, NULL);
    upstream_free(h->upstream);
    struct list *node, *tmp;
    LIST_FOR_EACH_SAFE (node, tmp, &h->checks) {
        check_free(LIST_ENTRY(node, struct check, node));
    }
    ev_loop_destroy(h->loop);
    config_unref(h->cfg);
    config_unref(h->next);
    free(h->busy);
    free(h->feeds);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

/* Pub/sub: subscriptions on the client's second connection, resubscribed after every
 * reconnect (conn.c calls redis_sub_send() when that connection is ready). */
#include "redis/client-int.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- pub/sub ------------------------------------------------------------------------------ */

static void sub_cb(redisAsyncContext *ac, void *r, void *privdata)
{
    const redisReply *reply = r;
    /* A NULL reply: the context is going away, maybe with the client (and the channel). */
    if (!reply)
        return;
    struct redis_conn *k = ac->data;
    if (!k || k->ac != ac)
        return;
    struct redis_chan *ch = privdata;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    enum redis_sub_event event;
    const char *msg = NULL;
    size_t msg_len = 0;
    if (!strcasecmp(kind, "message") && reply->element[2]->type == REDIS_REPLY_STRING) {
        event = REDIS_SUB_MESSAGE;
        msg = reply->element[2]->str;
        msg_len = reply->element[2]->len;
    } else if (!strcasecmp(kind, "subscribe")) {
        event = REDIS_SUB_READY;
    } else {
        return;
    }
    struct redis_client *c = k->c;
    redis_client_enter(c);
    for (struct redis_subscriber *s = ch->subs; s && !c->dead; s = s->next)
        s->fn(s->ctx, event, ch->name, ch->len, msg, msg_len);
    redis_client_leave(c);
}

void redis_sub_send(struct redis_conn *k, struct redis_chan *ch)
{
    const char *argv[2] = {"SUBSCRIBE", ch->name};
    size_t lens[2] = {9, ch->len};
    /* On failure the context is going away; the next connection subscribes again. */
    redisAsyncCommandArgv(k->ac, sub_cb, ch, 2, argv, lens);
}

int redis_subscribe(struct redis_client *c, const char *channel, redis_message_fn fn, void *ctx)
{
    if (!c || !channel || !fn)
        return REDIS_EINVAL;
    if (c->dead)
        return REDIS_ENOTCONN;
    size_t len = strlen(channel);
    struct redis_chan *ch = c->chans;
    while (ch && (ch->len != len || memcmp(ch->name, channel, len)))
        ch = ch->next;
    struct redis_subscriber *s = calloc(1, sizeof *s);
    if (!s)
        return REDIS_ENOMEM;
    s->fn = fn;
    s->ctx = ctx;
    if (!ch) {
        ch = calloc(1, sizeof *ch);
        if (!ch || !(ch->name = malloc(len + 1))) {
            free(ch);
            free(s);
            return REDIS_ENOMEM;
        }
        memcpy(ch->name, channel, len + 1);
        ch->len = len;
        ch->subs_tail = &ch->subs;
        ch->next = c->chans;
        c->chans = ch;
    }
    *ch->subs_tail = s;
    ch->subs_tail = &s->next;
    if (!c->sub.started)
        redis_conn_attempt(&c->sub);
    else if (c->sub.state == CONN_READY)
        redis_sub_send(&c->sub, ch); /* its confirmation is READY for every subscriber */
    return 0;
}

void redis_chans_free(struct redis_client *c)
{
    while (c->chans) {
        struct redis_chan *ch = c->chans;
        c->chans = ch->next;
        while (ch->subs) {
            struct redis_subscriber *s = ch->subs;
            ch->subs = s->next;
            free(s);
        }
        free(ch->name);
        free(ch);
    }
}

/* The metered pass-through endpoints' part of the pipeline (openai/media.h): their answers are
 * passed through as the node sent them (audio bytes with the node's content type), and billed
 * by the unit at the serving model's unit price: the images the answer holds (at most the `n`
 * asked for), or the characters a speech answer spoke. Moderations are billed as input tokens
 * like embeddings and do not come here. */
#include "gateway/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void request_media_settle(struct request *r)
{
    const struct config_model *m = r->up.target->model;
    size_t units = 0;
    double price = 0;
    if (r->ep->meter == OPENAI_METER_IMAGES) {
        units = r->usage.n_choices < r->oreq.units ? r->usage.n_choices : r->oreq.units;
        price = m->usd_per_image;
    } else if (r->ep->meter == OPENAI_METER_CHARACTERS) {
        units = r->usage.delivered ? r->oreq.units : 0; /* spoken only when audio came */
        price = m->usd_per_mchar / 1e6;
    }
    r->usage.prompt_tokens = r->usage.completion_tokens = 0;
    r->usage.cost_usd = (double)units * price;
}

void request_media_whole(struct request *r)
{
    if (r->relay.scanning)
        request_note_scan(r, &r->relay.scan);
    r->usage.delivered = r->relay.resp.len; /* the bytes the node answered with */
    request_settle_usage(r);
    request_flight_land(r, NULL, 0, 0); /* images and audio are never cached */
    char ctype[sizeof r->reply.ctype];
    snprintf(ctype, sizeof ctype, "%s", r->reply.ctype);
    size_t len = 0;
    char *text = r->relay.resp.len ? buf_steal(&r->relay.resp, &len) : calloc(1, 1);
    if (!text) {
        request_set_error(r, TG_ERR_NOMEM, NULL, "out of memory");
        return;
    }
    request_set_reply(r, (unsigned)r->up.status, text, len, ctype);
}

/* The metered pass-through endpoints' part of the pipeline (openai/media.h): their answers are
 * passed through as the node sent them (audio bytes with the node's content type, a
 * transcript as JSON or text), and billed by the unit at the serving model's unit price: the
 * images the answer holds (at most the `n` asked for), the characters a speech answer spoke,
 * or the seconds of audio a transcription or translation reports (at most what the upload can
 * hold). Moderations are billed as input tokens
 * like embeddings and do not come here. */
#include "openai/media.h"
#include "gateway/pipeline.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A number in the answer, or -1. */
static double media_number(json_t *v)
{
    return json_is_number(v) && json_number_value(v) >= 0 ? json_number_value(v) : -1;
}

/* A transcription or translation: the seconds of audio the node reports (usage of type
 * "duration", else verbose_json's duration), or its tokens (usage of type "tokens", billed at
 * the model's token prices); estimated from the file's size when it reports neither (a text,
 * srt or vtt answer). Clamped by what the upload can hold (openai/media.h). */
static void media_audio_settle(struct request *r)
{
    const struct config_model *m = r->up.target->model;
    double bound = (double)r->oreq.units; /* media_audio_max_seconds() of the file */
    json_t *doc =
        r->relay.resp.len ? json_loadb(r->relay.resp.data, r->relay.resp.len, 0, NULL) : NULL;
    json_t *usage = json_object_get(doc, "usage");
    const char *type = json_string_value(json_object_get(usage, "type"));
    double seconds = -1;
    if (type && !strcmp(type, "tokens")) {
        double in = media_number(json_object_get(usage, "input_tokens"));
        double out = media_number(json_object_get(usage, "output_tokens"));
        if (in >= 0 && out >= 0) {
            /* Output is text: a token is at least a byte of it. */
            json_t *text = json_object_get(doc, "text");
            double out_cap =
                (double)(json_is_string(text) ? json_string_length(text) : r->relay.resp.len) + 1;
            double in_cap = bound * MEDIA_AUDIO_MAX_TOKENS_PER_SECOND;
            r->usage.reported = true;
            r->usage.clamped = in > in_cap || out > out_cap;
            r->usage.prompt_tokens = (long)(in > in_cap ? in_cap : in);
            r->usage.completion_tokens = (long)(out > out_cap ? out_cap : out);
            double price_in, price_out;
            backend_billed_price(m, &r->up.price, &price_in, &price_out);
            r->usage.cost_usd = ((double)r->usage.prompt_tokens * price_in +
                                 (double)r->usage.completion_tokens * price_out) /
                                1e6;
            json_decref(doc);
            return;
        }
    }
    if (type && !strcmp(type, "duration"))
        seconds = media_number(json_object_get(usage, "seconds"));
    if (seconds < 0)
        seconds = media_number(json_object_get(doc, "duration"));
    json_decref(doc);
    r->usage.reported = seconds >= 0;
    r->usage.estimated = !r->usage.reported;
    if (seconds < 0)
        seconds = (double)r->oreq.upload_bytes / MEDIA_AUDIO_EST_BYTES_PER_SECOND;
    if (seconds > bound) {
        seconds = bound;
        r->usage.clamped = r->usage.reported;
    }
    r->usage.prompt_tokens = r->usage.completion_tokens = 0;
    r->usage.cost_usd = seconds * m->usd_per_audio_second;
}

void request_media_settle(struct request *r)
{
    if (r->ep->meter == OPENAI_METER_AUDIO_SECONDS) {
        media_audio_settle(r);
        return;
    }
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

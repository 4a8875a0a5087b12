#include "answer.h"

#include <stdlib.h>
#include <string.h>

/* Token 0 as it appears inside a JSON string: "[NAME]" with NAME escaped. */
static char *token0;
static size_t token0_len;

static const char *const words[] = {
    " lorem",  " ipsum", " dolor",  " sit",     " amet",   " consectetur", " adipiscing",
    " elit",   " sed",   " do",     " eiusmod", " tempor", " incididunt",  " ut",
    " labore", " et",    " dolore", " magna",   " aliqua",
};
#define WORD_COUNT (sizeof(words) / sizeof(words[0]))

int answer_init(const char *name)
{
    struct buf b;

    buf_init(&b, 1 << 20);
    buf_adds(&b, "[");
    buf_add(&b, name, strlen(name));
    buf_adds(&b, "]");
    struct buf q;
    buf_init(&q, 8 << 20);
    if (!b.failed)
        buf_add_json_str(&q, b.data, b.len);
    buf_free(&b);
    if (q.failed) {
        buf_free(&q);
        return -1;
    }
    /* Keep the escaped text without its quotes so tokens can be concatenated. */
    token0_len = q.len - 2;
    token0 = malloc(token0_len + 1);
    if (!token0) {
        buf_free(&q);
        return -1;
    }
    memcpy(token0, q.data + 1, token0_len);
    token0[token0_len] = '\0';
    buf_free(&q);
    return 0;
}

/* Appends token `i` as JSON string content (no quotes); the words need no escaping. */
static void add_token(struct buf *b, unsigned i)
{
    if (i == 0)
        buf_add(b, token0, token0_len);
    else
        buf_adds(b, words[(i - 1) % WORD_COUNT]);
}

static const char *finish_reason(const struct answer_gen *g)
{
    return g->capped ? "length" : "stop";
}

void answer_usage(struct buf *b, unsigned prompt, unsigned completion, bool with_completion,
                  unsigned mult)
{
    unsigned long long p = (unsigned long long)prompt * mult;
    unsigned long long c = (unsigned long long)completion * mult;

    if (with_completion)
        buf_printf(b, "{\"prompt_tokens\":%llu,\"completion_tokens\":%llu,\"total_tokens\":%llu}",
                   p, c, p + c);
    else
        buf_printf(b, "{\"prompt_tokens\":%llu,\"total_tokens\":%llu}", p, p);
}

static void add_head(struct buf *b, const struct answer_gen *g, const char *object)
{
    buf_adds(b, "{\"id\":\"");
    buf_adds(b, g->id);
    buf_adds(b, "\",\"object\":\"");
    buf_adds(b, object);
    buf_printf(b, "\",\"created\":%lld,\"model\":", g->created);
    buf_add_json_str(b, g->model, g->model_len);
    buf_adds(b, ",\"choices\":");
}

void answer_body(struct buf *b, const struct answer_gen *g)
{
    bool chat = g->kind == ANSWER_CHAT;

    add_head(b, g, chat ? "chat.completion" : "text_completion");
    if (chat)
        buf_adds(b, "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    else
        buf_adds(b, "[{\"index\":0,\"text\":\"");
    for (unsigned i = 0; i < g->completion_tokens && !b->failed; i++)
        add_token(b, i);
    buf_adds(b, chat ? "\"}," : "\",");
    buf_printf(b, "\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":", finish_reason(g));
    answer_usage(b, g->prompt_tokens, g->completion_tokens, true, g->usage_mult);
    buf_adds(b, "}");
}

void answer_chunk_prefix(struct buf *b, const struct answer_gen *g)
{
    add_head(b, g, g->kind == ANSWER_CHAT ? "chat.completion.chunk" : "text_completion");
}

void answer_event_token(struct buf *b, const struct answer_gen *g, const struct buf *prefix,
                        unsigned i)
{
    buf_adds(b, "data: ");
    buf_add(b, prefix->data, prefix->len);
    if (g->kind != ANSWER_CHAT)
        buf_adds(b, "[{\"index\":0,\"text\":\"");
    else if (i == 0)
        buf_adds(b, "[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"");
    else
        buf_adds(b, "[{\"index\":0,\"delta\":{\"content\":\"");
    add_token(b, i);
    buf_adds(b, g->kind == ANSWER_CHAT ? "\"}," : "\",");
    buf_adds(b, "\"logprobs\":null,\"finish_reason\":null}]}\n\n");
}

void answer_event_finish(struct buf *b, const struct answer_gen *g, const struct buf *prefix)
{
    buf_adds(b, "data: ");
    buf_add(b, prefix->data, prefix->len);
    if (g->kind == ANSWER_CHAT)
        buf_adds(b, "[{\"index\":0,\"delta\":{},");
    else
        buf_adds(b, "[{\"index\":0,\"text\":\"\",");
    buf_printf(b, "\"logprobs\":null,\"finish_reason\":\"%s\"}]}\n\n", finish_reason(g));
}

void answer_event_usage(struct buf *b, const struct answer_gen *g, const struct buf *prefix)
{
    buf_adds(b, "data: ");
    buf_add(b, prefix->data, prefix->len);
    buf_adds(b, "[],\"usage\":");
    answer_usage(b, g->prompt_tokens, g->completion_tokens, true, g->usage_mult);
    buf_adds(b, "}\n\n");
}

void answer_embedding(struct buf *b, unsigned index, uint64_t seed)
{
    /* splitmix64: stable per input, so the same text always embeds the same way. */
    uint64_t x = seed;

    buf_printf(b, "{\"object\":\"embedding\",\"index\":%u,\"embedding\":[", index);
    for (int i = 0; i < 16; i++) {
        x += 0x9e3779b97f4a7c15ull;
        uint64_t z = x;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        double v = (double)(z >> 11) * 0x1.0p-53 * 2.0 - 1.0;
        buf_printf(b, i ? ",%.6f" : "%.6f", v);
    }
    buf_adds(b, "]}");
}

static void add_str_or_null(struct buf *b, const char *s)
{
    if (s)
        buf_add_json_str(b, s, strlen(s));
    else
        buf_adds(b, "null");
}

void answer_error(struct buf *b, const char *message, const char *type, const char *param,
                  const char *code)
{
    buf_adds(b, "{\"error\":{\"message\":");
    add_str_or_null(b, message);
    buf_adds(b, ",\"type\":");
    add_str_or_null(b, type);
    buf_adds(b, ",\"param\":");
    add_str_or_null(b, param);
    buf_adds(b, ",\"code\":");
    add_str_or_null(b, code);
    buf_adds(b, "}}");
}

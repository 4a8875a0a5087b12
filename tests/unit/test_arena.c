/* Unit tests for gateway/arena: jansson and yajl pieces from a request's arena. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "base/arena.h"
#include "openai/answer.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static void test_parse_in_arena(void **state)
{
    (void)state;
    struct arena a = {0};
    static const char body[] =
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}";
    arena_enter(&a);
    json_t *doc = json_loadb(body, sizeof body - 1, 0, NULL);
    arena_leave();
    assert_non_null(doc);
    assert_non_null(a.blocks);
    assert_true(arena_owns(&a, doc));
    json_t *messages = json_object_get(doc, "messages");
    assert_true(arena_owns(&a, messages));
    assert_true(arena_owns(&a, json_string_value(json_object_get(doc, "model"))));
    assert_string_equal(json_string_value(json_object_get(json_array_get(messages, 0), "content")),
                        "hi");

    /* Changed after the window: the new values come from malloc, and all of it frees. */
    json_t *renamed = json_string("upstream-name");
    assert_false(arena_owns(&a, renamed));
    json_object_set_new(doc, "model", renamed);
    json_object_set_new(doc, "stream_options", json_pack("{s:b}", "include_usage", 1));
    char *text = json_dumps(doc, JSON_COMPACT | JSON_SORT_KEYS);
    assert_non_null(text);
    assert_false(arena_owns(&a, text));
    assert_string_equal(text,
                        "{\"max_tokens\":16,\"messages\":[{\"content\":\"hi\",\"role\":\"user\"}],"
                        "\"model\":\"upstream-name\",\"stream_options\":{\"include_usage\":true}}");
    free(text); /* json_dumps' result is plain malloc memory */
    json_decref(doc);
    arena_release(&a);
    assert_null(a.blocks);
}

static void test_long_strings_from_malloc(void **state)
{
    (void)state;
    struct arena a = {0};
    char body[4200];
    memcpy(body, "{\"content\":\"", 12);
    memset(body + 12, 'x', 4000);
    memcpy(body + 4012, "\"}", 3);
    arena_enter(&a);
    json_t *doc = json_loads(body, 0, NULL);
    arena_leave();
    assert_non_null(doc);
    const char *content = json_string_value(json_object_get(doc, "content"));
    assert_int_equal(strlen(content), 4000);
    assert_false(arena_owns(&a, content));
    json_decref(doc);
    arena_release(&a);
}

static void test_blocks_reused(void **state)
{
    (void)state;
    struct arena a = {0}, b = {0};
    arena_enter(&a);
    json_t *x = json_integer(1);
    arena_leave();
    struct arena_block *first = a.blocks;
    json_decref(x);
    arena_release(&a);
    arena_enter(&b);
    json_t *y = json_integer(2);
    arena_leave();
    assert_ptr_equal(b.blocks, first); /* the thread's cache gave the block back */
    json_decref(y);
    arena_release(&b);
}

static void test_many_pieces_span_blocks(void **state)
{
    (void)state;
    struct arena a = {0};
    arena_enter(&a);
    json_t *arr = json_array();
    for (int i = 0; i < 2000; i++)
        json_array_append_new(arr, json_integer(i));
    arena_leave();
    assert_true(arena_n_blocks(&a) > 10);
    for (int i = 0; i < 2000; i++)
        assert_int_equal(json_integer_value(json_array_get(arr, (size_t)i)), i);
    json_decref(arr);
    arena_release(&a);
}

/* A small arena asks for no trim; one grown past ARENA_TRIM_BLOCKS asks once, and the trim is
 * left to the thread's owner (arena_take_trim), not done inside arena_release. */
static void test_big_arena_asks_for_a_trim(void **state)
{
    (void)state;
    (void)arena_take_trim();
    struct arena a = {0};
    arena_enter(&a);
    json_t *arr = json_array();
    for (int i = 0; i < 100; i++)
        json_array_append_new(arr, json_integer(i));
    arena_leave();
    json_decref(arr);
    arena_release(&a);
    assert_false(arena_take_trim());

    arena_enter(&a);
    arr = json_array();
    for (int i = 0; i < 100000; i++)
        json_array_append_new(arr, json_integer(i));
    arena_leave();
    assert_true(arena_n_blocks(&a) > 256);
    json_decref(arr);
    arena_release(&a);
    assert_true(arena_take_trim());
    assert_false(arena_take_trim());
}

static void test_yajl_pieces(void **state)
{
    (void)state;
    struct arena a = {0};
    yajl_alloc_funcs f;
    arena_yajl_funcs(&a, &f);
    char *p = f.malloc(f.ctx, 40);
    assert_true(arena_owns(&a, p));
    memcpy(p, "0123456789012345678901234567890123456789", 40);
    char *q = f.realloc(f.ctx, p, 100); /* still small: another arena piece, content kept */
    assert_true(arena_owns(&a, q));
    assert_memory_equal(q, "0123456789012345678901234567890123456789", 40);
    char *r = f.realloc(f.ctx, q, 3000); /* large: from malloc, content kept */
    assert_false(arena_owns(&a, r));
    assert_memory_equal(r, "0123456789012345678901234567890123456789", 40);
    r = f.realloc(f.ctx, r, 6000);
    assert_memory_equal(r, "0123456789012345678901234567890123456789", 40);
    f.free(f.ctx, r);
    f.free(f.ctx, f.malloc(f.ctx, 8));
    arena_release(&a);
}

/* The answer scanner gives the same result from an arena as from malloc. */
static void test_scan_in_arena(void **state)
{
    (void)state;
    static const char answer[] =
        "{\"id\":\"x\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":"
        "\"hello there\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":7,"
        "\"completion_tokens\":3}}";
    struct arena a = {0};
    struct answer_scan s, m;
    assert_int_equal(answer_scan_init(&s, &a), 0);
    assert_int_equal(answer_scan_init(&m, NULL), 0);
    for (size_t i = 0; i < sizeof answer - 1; i += 7) {
        size_t n = sizeof answer - 1 - i < 7 ? sizeof answer - 1 - i : 7;
        assert_int_equal(answer_scan_feed(&s, answer + i, n), 0);
        assert_int_equal(answer_scan_feed(&m, answer + i, n), 0);
    }
    assert_int_equal(answer_scan_finish(&s), 0);
    assert_int_equal(answer_scan_finish(&m), 0);
    assert_true(arena_owns(&a, s.handle));
    assert_int_equal(s.prompt_tokens, 7);
    assert_int_equal(s.completion_tokens, 3);
    assert_int_equal(s.delivered, m.delivered);
    assert_int_equal(s.n_choices, m.n_choices);
    answer_scan_free(&s);
    answer_scan_free(&m);
    arena_release(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_in_arena),
        cmocka_unit_test(test_long_strings_from_malloc),
        cmocka_unit_test(test_blocks_reused),
        cmocka_unit_test(test_many_pieces_span_blocks),
        cmocka_unit_test(test_yajl_pieces),
        cmocka_unit_test(test_scan_in_arena),
        cmocka_unit_test(test_big_arena_asks_for_a_trim),
    };
    return cmocka_run_group_tests_name("arena", tests, NULL, NULL);
}

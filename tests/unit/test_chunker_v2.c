/*
 * test_chunker_v2: markdown-simple@2, chunks bounded by the model's input.
 * Every chunk stays within max_tokens (tokens.h's estimate) on adversarial
 * input, text is never lost or split inside a character, cuts prefer
 * paragraphs, then sentences, then words; overlap repeats the tail of a
 * cut chunk; the version string says how chunks were made.
 */
#include <criterion/criterion.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"
#include "ids.h"

#include "unit/support_lcg.h"

static dp_chunk_list chunk2(const char *text, size_t len, unsigned max, unsigned overlap)
{
    dp_chunker_spec spec = {2, max, overlap};
    dp_chunk_list list;
    char err[256] = "";
    dp_err rc = dp_chunk_markdown_v2(&spec, text, len, &list, err, sizeof err);
    cr_assert_eq(rc, DP_OK, "chunker failed: %s", err);
    return list;
}

/* The bound, ords, hashes and whole characters, for every chunk. */
static void assert_bounded(const dp_chunk_list *l, unsigned max)
{
    for (size_t i = 0; i < l->count; i++) {
        const dp_chunk *c = &l->items[i];
        cr_assert_eq(c->ord, i);
        cr_assert_gt(c->text_len, 0);
        cr_assert_eq(c->tokens, dp_tokens_estimate(c->text, c->text_len));
        cr_assert_leq(c->tokens, max, "chunk %zu: %zu tokens over %u", i, c->tokens, max);
        cr_assert_neq(((unsigned char)c->text[0] & 0xc0), 0x80, "chunk %zu starts inside a character", i);
        unsigned char last = (unsigned char)c->text[c->text_len - 1];
        cr_assert(last < 0x80 || (last & 0xc0) == 0x80, "chunk %zu ends inside a character", i);
        char sha[DP_SHA256_HEX_SIZE];
        dp_sha256_hex(c->text, c->text_len, sha);
        cr_assert_str_eq(c->sha256, sha);
    }
}

/* The chunk texts joined with sep. */
static char *joined(const dp_chunk_list *l, const char *sep)
{
    size_t n = 1;
    for (size_t i = 0; i < l->count; i++)
        n += l->items[i].text_len + strlen(sep);
    char *out = malloc(n), *p = out;
    for (size_t i = 0; i < l->count; i++) {
        if (i) {
            memcpy(p, sep, strlen(sep));
            p += strlen(sep);
        }
        memcpy(p, l->items[i].text, l->items[i].text_len);
        p += l->items[i].text_len;
    }
    *p = '\0';
    return out;
}

Test(chunker_v2, spec_example_headings_start_chunks_with_real_line_numbers)
{
    const char *t = "# Document Title\n\nThis is the first paragraph.\n\n## Section 1\n"
                    "Content for section 1.\n\n## Section 2\nContent for section 2.\n\n"
                    "More content here.";
    dp_chunk_list l = chunk2(t, strlen(t), 512, 0);
    cr_assert_eq(l.count, 3);
    cr_assert_str_eq(l.items[0].text, "# Document Title\n\nThis is the first paragraph.");
    cr_assert_str_eq(l.items[1].text, "## Section 1\nContent for section 1.");
    cr_assert_str_eq(l.items[2].text,
                     "## Section 2\nContent for section 2.\n\nMore content here.");
    size_t lines[3][2] = {{0, 3}, {4, 6}, {7, 11}};
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(l.items[i].start_line, lines[i][0], "chunk %zu", i);
        cr_assert_eq(l.items[i].end_line, lines[i][1], "chunk %zu", i);
    }
    dp_chunk_list_free(&l);
}

/* The document: a markdown file that is one 2 MB line. */
Test(chunker_v2, one_2mb_line_of_sentences_is_cut_at_sentence_ends)
{
    const char *sentence = "The pipeline stores every chunk in PostgreSQL, 42 times a day. ";
    size_t sl = strlen(sentence), len = 0, cap = 2u << 20;
    char *t = malloc(cap + sl + 1);
    while (len < cap) {
        memcpy(t + len, sentence, sl);
        len += sl;
    }
    len--;                                   /* no trailing space */
    t[len] = '\0';
    dp_chunk_list l = chunk2(t, len, 512, 0);
    assert_bounded(&l, 512);
    cr_assert_gt(l.count, 1000);
    for (size_t i = 0; i < l.count; i++)
        cr_assert_eq(l.items[i].text[l.items[i].text_len - 1], '.', "chunk %zu ends mid-sentence", i);
    char *back = joined(&l, " ");            /* nothing lost, nothing repeated */
    cr_assert(strcmp(back, t) == 0);
    free(back);
    dp_chunk_list_free(&l);
    free(t);
}

Test(chunker_v2, a_line_without_spaces_is_cut_hard_and_loses_nothing)
{
    size_t len = 2u << 20;
    char *t = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        t[i] = (char)('a' + i % 26);
    t[len] = '\0';
    dp_chunk_list l = chunk2(t, len, 512, 0);
    assert_bounded(&l, 512);
    for (size_t i = 0; i + 1 < l.count; i++)  /* full pieces: 512 tokens of 4 letters */
        cr_assert_eq(l.items[i].text_len, 2048, "chunk %zu", i);
    char *back = joined(&l, "");
    cr_assert(strcmp(back, t) == 0);
    free(back);
    dp_chunk_list_free(&l);
    free(t);
}

Test(chunker_v2, long_cjk_text_is_cut_between_characters)
{
    const char *two = "\xe4\xbd\xa0\xe5\xa5\xbd\xe3\x80\x82";    /* 你好。 */
    size_t n = 60000, len = 0;
    char *t = malloc(n * 9 + 1);
    for (size_t i = 0; i < n; i++, len += 9)
        memcpy(t + len, two, 9);
    t[len] = '\0';
    dp_chunk_list l = chunk2(t, len, 100, 0);
    assert_bounded(&l, 100);
    cr_assert_gt(l.count, 1000);
    char *back = joined(&l, "");
    cr_assert(strcmp(back, t) == 0);
    free(back);
    dp_chunk_list_free(&l);
    free(t);
}

Test(chunker_v2, many_tiny_lines_fill_chunks_and_keep_every_line)
{
    size_t n = 200000, len = 0;
    char *t = malloc(n * 4 + 1);
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(t + len, "%s%c", i ? "\n" : "", (char)('a' + i % 26));
    dp_chunk_list l = chunk2(t, len, 64, 0);
    assert_bounded(&l, 64);
    for (size_t i = 0; i + 1 < l.count; i++)   /* "x\n" costs 2: 32 lines a chunk */
        cr_assert_eq(l.items[i].end_line - l.items[i].start_line, 32, "chunk %zu", i);
    char *back = joined(&l, "\n");
    cr_assert(strcmp(back, t) == 0);
    free(back);
    dp_chunk_list_free(&l);
    free(t);
}

Test(chunker_v2, paragraphs_stay_whole_when_they_fit)
{
    /* Paragraphs of 3 lines, ~70 tokens each; 200 tokens a chunk. */
    char t[16384];
    size_t len = 0;
    for (int p = 0; p < 30; p++)
        for (int k = 0; k < 3; k++)
            len += (size_t)snprintf(t + len, sizeof t - len, "%sparagraph %d line %d says"
                                    " something about the pipeline and more%s",
                                    p && !k ? "\n\n" : "", p, k, k < 2 ? "\n" : "");
    dp_chunk_list l = chunk2(t, len, 200, 0);
    assert_bounded(&l, 200);
    cr_assert_gt(l.count, 5);
    for (size_t i = 0; i < l.count; i++) {
        int para, line;
        cr_assert_eq(sscanf(l.items[i].text, "paragraph %d line %d", &para, &line), 2);
        cr_assert_eq(line, 0, "chunk %zu starts mid-paragraph", i);
        const char *last = strrchr(l.items[i].text, '\n');
        cr_assert(last && strstr(last, " line 2 "), "chunk %zu ends mid-paragraph", i);
    }
    char *back = joined(&l, "\n\n");
    cr_assert(strcmp(back, t) == 0);
    free(back);
    dp_chunk_list_free(&l);
}

/* The longest suffix of a that is a prefix of b. */
static size_t shared(const dp_chunk *a, const dp_chunk *b)
{
    for (size_t k = a->text_len < b->text_len ? a->text_len : b->text_len; k > 0; k--)
        if (!memcmp(a->text + a->text_len - k, b->text, k))
            return k;
    return 0;
}

Test(chunker_v2, overlap_repeats_the_tail_of_a_cut_chunk)
{
    char *t = malloc(200000);
    size_t len = 0;
    for (int w = 0; len < 150000; w++)
        len += (size_t)sprintf(t + len, "%sword%d", w ? " " : "", w);
    dp_chunk_list plain = chunk2(t, len, 256, 0);
    dp_chunk_list over = chunk2(t, len, 256, 40);
    assert_bounded(&plain, 256);
    assert_bounded(&over, 256);
    cr_assert_gt(over.count, plain.count);
    for (size_t i = 1; i < plain.count; i++)
        cr_assert_eq(shared(&plain.items[i - 1], &plain.items[i]), 0);
    for (size_t i = 1; i < over.count; i++) {
        const dp_chunk *a = &over.items[i - 1], *b = &over.items[i];
        size_t k = shared(a, b);
        cr_assert_gt(k, 0, "chunk %zu repeats nothing of %zu", i, i - 1);
        cr_assert_leq(dp_tokens_estimate(b->text, k), 40, "chunk %zu", i);
        cr_assert_geq(dp_tokens_estimate(b->text, k), 30, "chunk %zu: overlap too short", i);
        cr_assert(b->text[k] == ' ' && (k == a->text_len || a->text[a->text_len - k - 1] == ' '),
                  "chunk %zu: overlap not at word boundaries", i);
    }
    /* Overlap between lines of one paragraph too. */
    char *lines = malloc(60000);
    size_t ll = 0;
    for (int i = 0; i < 3000; i++)
        ll += (size_t)sprintf(lines + ll, "%sline %d", i ? "\n" : "", i);
    dp_chunk_list lo = chunk2(lines, ll, 64, 16);
    assert_bounded(&lo, 64);
    for (size_t i = 1; i < lo.count; i++)
        cr_assert_gt(shared(&lo.items[i - 1], &lo.items[i]), 0, "chunk %zu", i);
    dp_chunk_list_free(&lo);
    dp_chunk_list_free(&plain);
    dp_chunk_list_free(&over);
    free(lines);
    free(t);
}

Test(chunker_v2, deterministic_and_within_bounds_on_generated_documents)
{
    for (uint64_t seed = 1; seed <= 40; seed++) {
        size_t len;
        char *doc = lcg_doc(seed, 4000, &len);
        unsigned max = 32 + (unsigned)(seed * 37 % 600);
        unsigned ov = (unsigned)(seed % 3 == 0 ? max / 2 : seed % 3 == 1 ? 0 : 7);
        dp_chunk_list a = chunk2(doc, len, max, ov), b = chunk2(doc, len, max, ov);
        assert_bounded(&a, max);
        cr_assert_eq(a.count, b.count);
        for (size_t i = 0; i < a.count; i++) {
            cr_assert_str_eq(a.items[i].sha256, b.items[i].sha256);
            cr_assert_eq(a.items[i].start_line, b.items[i].start_line);
        }
        dp_chunk_list_free(&a);
        dp_chunk_list_free(&b);
        free(doc);
    }
}

Test(chunker_v2, whitespace_only_content_has_no_chunks)
{
    dp_chunker_spec spec = {2, 512, 0};
    dp_chunk_list l;
    char err[128];
    cr_assert_eq(dp_chunk_markdown_v2(&spec, " \n\n\t\n", 5, &l, err, sizeof err),
                 DP_ERR_PERMANENT);
    cr_assert_str_eq(err, "No chunks generated from parsed content");
    cr_assert_eq(l.count, 0);
}

Test(chunker_v2, version_strings_are_canonical)
{
    static const struct { const char *s; int version; unsigned max, ov; } ok[] = {
        {"markdown-simple@1", 1, 0, 0},
        {"markdown-simple@2", 2, 512, 0},
        {"markdown-simple@2;max_tokens=1000", 2, 1000, 0},
        {"markdown-simple@2;overlap_tokens=64", 2, 512, 64},
        {"markdown-simple@2;max_tokens=200;overlap_tokens=100", 2, 200, 100},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        dp_chunker_spec s;
        char err[512], back[DP_CHUNKER_VERSION_SIZE];
        cr_assert_eq(dp_chunker_spec_parse(ok[i].s, &s, err, sizeof err), DP_OK, "%s", err);
        cr_assert_eq(s.version, ok[i].version);
        cr_assert_eq(s.max_tokens, ok[i].max);
        cr_assert_eq(s.overlap_tokens, ok[i].ov);
        dp_chunker_spec_format(&s, back, sizeof back);
        cr_assert_str_eq(back, ok[i].s);
    }
    static const char *const bad[] = {
        "", "markdown-simple@3", "Markdown-Simple@2", "markdown-simple@2;max_tokens=512",
        "markdown-simple@2;max_tokens=0100", "markdown-simple@2;max_tokens=31",
        "markdown-simple@2;max_tokens=8192", "markdown-simple@2;overlap_tokens=257",
        "markdown-simple@2;overlap_tokens=64;max_tokens=1000", "markdown-simple@2;",
        "markdown-simple@2x", "markdown-simple@1;max_tokens=100",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        dp_chunker_spec s;
        char err[512];
        cr_assert_eq(dp_chunker_spec_parse(bad[i], &s, err, sizeof err), DP_ERR_PERMANENT,
                     "'%s' accepted", bad[i]);
        cr_assert(strstr(err, "unknown chunker version"), "%s", err);
    }
}

Test(chunker_v2, chunk_ids_hash_the_whole_version_string)
{
    const char *doc = "00000000-0000-0000-0000-000000000001";
    char v1[DP_UUID_STR_SIZE], v2[DP_UUID_STR_SIZE], v2b[DP_UUID_STR_SIZE];
    dp_chunk_id(doc, DP_CHUNKER_NAME, "markdown-simple@1", 0, v1, NULL, 0);
    dp_chunk_id(doc, DP_CHUNKER_NAME, "markdown-simple@2", 0, v2, NULL, 0);
    dp_chunk_id(doc, DP_CHUNKER_NAME, "markdown-simple@2;max_tokens=1000", 0, v2b, NULL, 0);
    cr_assert_str_eq(v1, "1153de6e-d6a0-575a-b811-3a0a24059264");   /* the seed's vector */
    cr_assert_str_neq(v1, v2);
    cr_assert_str_neq(v2, v2b);
}

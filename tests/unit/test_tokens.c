/*
 * test_tokens: the conservative token estimate (stages/tokens.h) that
 * bounds markdown-simple@2 chunks, budgets embedding requests and is the
 * input limit of the embedding service stand-in.
 *
 * The "cl100k" counts are the ones OpenAI's tokenizer examples give for
 * these strings (tiktoken, encoding cl100k_base); the estimate must be at
 * least those on ordinary text.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokens.h"

static size_t est(const char *s) { return dp_tokens_estimate(s, strlen(s)); }

Test(tokens, the_rules_one_by_one)
{
    cr_assert_eq(est(""), 0);
    cr_assert_eq(est("a"), 1);
    cr_assert_eq(est("abcd"), 1);            /* up to 4 letters: 1 */
    cr_assert_eq(est("abcde"), 2);
    cr_assert_eq(est("123"), 1);             /* digits in groups of 3 */
    cr_assert_eq(est("1234567"), 3);
    cr_assert_eq(est("a b"), 2);             /* a space before a word is free */
    cr_assert_eq(est("a 1"), 3);             /* ...not before a digit */
    cr_assert_eq(est("a "), 2);              /* ...nor at the end */
    cr_assert_eq(est("a  b"), 3);            /* two spaces: one run, 1 */
    cr_assert_eq(est("\n\n\n\n\n"), 2);      /* whitespace runs: 4 a token */
    cr_assert_eq(est("..."), 3);             /* each punctuation byte */
    cr_assert_eq(est("\xc3\xa9"), 1);        /* é: 2-byte character */
    cr_assert_eq(est("\xe4\xbd\xa0"), 2);    /* 你: 3 bytes */
    cr_assert_eq(est("\xf0\x9f\x98\x80"), 2); /* 😀: 4 bytes */
    cr_assert_eq(est("\xff\x80\xc3"), 3);    /* not UTF-8: each byte */
    cr_assert_eq(est("\xed\xa0\x80"), 3);    /* a surrogate is not valid UTF-8 */
}

Test(tokens, at_least_cl100k_on_known_sentences)
{
    static const struct { const char *text; size_t cl100k; } known[] = {
        {"tiktoken is great!", 6},
        {"antidisestablishmentarianism", 6},
        {"2 + 2 = 4", 7},
        {"\xe3\x81\x8a\xe8\xaa\x95\xe7\x94\x9f\xe6\x97\xa5\xe3\x81\x8a\xe3\x82\x81"
         "\xe3\x81\xa7\xe3\x81\xa8\xe3\x81\x86", 9},           /* お誕生日おめでとう */
        {"Hello, world!", 4},
        {"The quick brown fox jumps over the lazy dog.", 10},
    };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        size_t e = est(known[i].text);
        cr_assert_geq(e, known[i].cl100k, "'%s': estimate %zu < cl100k %zu",
                      known[i].text, e, known[i].cl100k);
        /* ...and not wildly over: at most 2x on these */
        cr_assert_leq(e, 2 * known[i].cl100k, "'%s': estimate %zu", known[i].text, e);
    }
    cr_assert_eq(est("The quick brown fox jumps over the lazy dog."), 13);
    cr_assert_eq(est("2 + 2 = 4"), 7);
}

/* Every estimated token covers at most 5 bytes, whatever the bytes: the
 * bound that makes a chunk of E estimated tokens at most 5 E real ones. */
Test(tokens, never_more_than_5_bytes_a_token)
{
    static const char *const worst[] = {" abcd abcd abcd", "abcd", "    ", " x",
                                        "1111111111", " 1 1 1"};
    for (size_t i = 0; i < sizeof worst / sizeof *worst; i++)
        cr_assert_leq(strlen(worst[i]), 5 * est(worst[i]), "'%s'", worst[i]);
    unsigned long long x = 88172645463325252ULL;
    char buf[257];
    for (int round = 0; round < 2000; round++) {
        size_t n = 1 + round % 256;
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            /* mostly letters and spaces, the cheapest bytes */
            static const char pick[] = "abcdefghij      0123\n.\xc3\xa9";
            buf[i] = pick[x % (sizeof pick - 1)];
        }
        buf[n] = '\0';
        cr_assert_leq(n, 5 * dp_tokens_estimate(buf, n) + 4, "round %d", round);
    }
}

Test(tokens, joining_lines_costs_at_most_one_more)
{
    static const char *const lines[] = {"abc", " abc", "  abc", "", "123", " 1",
                                        "# x", "\xe4\xbd\xa0", "a.", "   "};
    size_t n = sizeof lines / sizeof *lines;
    char buf[64];
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) {
            snprintf(buf, sizeof buf, "%s\n%s", lines[i], lines[j]);
            cr_assert_leq(est(buf), est(lines[i]) + 1 + est(lines[j]), "'%s'", buf);
        }
}

Test(tokens, prefix_is_the_longest_that_fits_and_ends_on_a_character)
{
    const char *s = "hello world \xe4\xbd\xa0\xe5\xa5\xbd 12345";
    size_t len = strlen(s);
    for (size_t max = 0; max <= est(s) + 1; max++) {
        size_t p = dp_tokens_prefix(s, len, max);
        cr_assert_leq(dp_tokens_estimate(s, p), max, "max %zu", max);
        cr_assert(p == len || ((unsigned char)s[p] & 0xc0) != 0x80, "cut inside a character");
        if (p < len) {             /* one more character would not fit */
            size_t q = p + 1;
            while (q < len && ((unsigned char)s[q] & 0xc0) == 0x80)
                q++;
            cr_assert_gt(dp_tokens_estimate(s, q), max, "max %zu: %zu is not the longest",
                         max, p);
        }
    }
    cr_assert_eq(dp_tokens_prefix(s, len, 1000), len);
}

/*
 * tokens: the conservative token estimate described in tokens.h.
 *
 * One pass with one byte of lookahead.  Each byte is charged when it opens
 * a new group: the 1st, 5th, 9th... letter of a run, the 1st, 4th, 7th...
 * digit, the 1st, 5th... byte of a whitespace run, the lead byte of a UTF-8
 * character.  So the running total after byte i is the estimate of the
 * prefix up to i, apart from a single space that a following word would
 * make free (charged 0 here, 1 at the very end of a text); that is what
 * lets dp_tokens_prefix cut by the running total.
 */
#include "tokens.h"

#include <stdint.h>

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

static int is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

/* Length of a valid UTF-8 sequence at s[0..n), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t k;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        k = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        k = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        k = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < k)
        return 0;
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((k == 3 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
        (k == 4 && (cp < 0x10000 || cp > 0x10ffff)))
        return 0;
    return k;
}

/* Walks text[0..len) and returns the estimate; with max_tokens != SIZE_MAX
 * stops before the first character that would take the running total over
 * it and stores that position in *cut. */
static size_t walk(const char *text, size_t len, size_t max_tokens, size_t *cut)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t total = 0, i = 0;
    while (i < len) {
        unsigned char c = s[i];
        size_t n = 1, cost;
        /* With a bound, a run is read no further than the bound could
         * reach (room + 1 groups), so cutting a long run is linear. */
        size_t room = max_tokens == SIZE_MAX ? SIZE_MAX / 8 : max_tokens - total;
        if (is_alpha(c)) {
            while (i + n < len && n < (room + 1) * 4 && is_alpha(s[i + n]))
                n++;
            /* A run is charged group by group so a cut can fall inside it. */
            for (size_t g = 0; g < n; g += 4) {
                if (total + 1 > max_tokens) {
                    *cut = i + g;
                    return total;
                }
                total++;
            }
            i += n;
            continue;
        } else if (is_digit(c)) {
            while (i + n < len && n < (room + 1) * 3 && is_digit(s[i + n]))
                n++;
            for (size_t g = 0; g < n; g += 3) {
                if (total + 1 > max_tokens) {
                    *cut = i + g;
                    return total;
                }
                total++;
            }
            i += n;
            continue;
        } else if (is_space(c)) {
            while (i + n < len && n < (room + 1) * 4 && is_space(s[i + n]))
                n++;
            int free_space = n == 1 && c == ' ' && i + 1 < len && !is_digit(s[i + 1]);
            for (size_t g = 0; g < n && !free_space; g += 4) {
                if (total + 1 > max_tokens) {
                    *cut = i + g;
                    return total;
                }
                total++;
            }
            i += n;
            continue;
        } else if (c < 0x80) {
            cost = 1;
        } else if ((n = utf8_len(s + i, len - i)) != 0) {
            cost = n == 2 ? 1 : 2;
        } else {
            n = 1;
            cost = 1;
        }
        if (total + cost > max_tokens) {
            *cut = i;
            return total;
        }
        total += cost;
        i += n;
    }
    *cut = len;
    return total;
}

size_t dp_tokens_estimate(const char *text, size_t len)
{
    size_t cut;
    return text ? walk(text, len, SIZE_MAX, &cut) : 0;
}

size_t dp_tokens_prefix(const char *text, size_t len, size_t max_tokens)
{
    if (!text)
        return 0;
    size_t cut;
    walk(text, len, max_tokens, &cut);
    /* The running total may have left a single space free that the prefix,
     * ending there, pays for; back off until the prefix itself fits. */
    while (cut > 0 && dp_tokens_estimate(text, cut) > max_tokens) {
        cut--;
        while (cut > 0 && ((unsigned char)text[cut] & 0xc0) == 0x80)
            cut--;
    }
    return cut;
}

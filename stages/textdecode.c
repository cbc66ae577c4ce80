/*
 * textdecode: raw bytes of a text document to clean UTF-8 (see the header).
 *
 * Decoding is two steps.  First the bytes become UTF-8: a byte order mark
 * names their encoding; without one, UTF-8 is assumed when the bytes are
 * UTF-8, or mostly are, and the configured 8-bit charset otherwise.
 * Anything but UTF-8 goes through glibc's iconv, which writes valid UTF-8
 * (a sequence it cannot convert becomes U+FFFD here).  Then one cleaning
 * pass over UTF-8 replaces each invalid sequence (its maximal valid
 * prefix, as Unicode recommends) by U+FFFD and drops C0 controls other
 * than tab, newline and carriage return (and U+FEFF at the very start, a
 * byte order mark no longer needed): PostgreSQL refuses NUL and invalid
 * UTF-8 in text, and the others are noise to a reader and to an embedding
 * model.
 *
 * The detection is deliberately simple: a file whose non-ASCII bytes
 * include at least as many valid multi-byte sequences as invalid ones is
 * UTF-8 with a few broken bytes; one with no valid multi-byte sequence and
 * some invalid bytes is 8-bit text (café in latin1 is "caf\xe9").
 */
#include "textdecode.h"

#include <errno.h>
#include <iconv.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char replacement[3] = {'\xEF', '\xBF', '\xBD'}; /* U+FFFD */

/* The length of the valid UTF-8 sequence at p[0..n) (1 to 4), or minus
 * the length of its maximal invalid prefix (at least 1). */
static int utf8_seq(const unsigned char *p, size_t n)
{
    unsigned c = p[0], lo = 0x80, hi = 0xBF;
    int need;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        need = 1;
    else if (c == 0xE0)
        need = 2, lo = 0xA0;          /* no overlong forms */
    else if (c == 0xED)
        need = 2, hi = 0x9F;          /* no surrogates */
    else if (c >= 0xE1 && c <= 0xEF)
        need = 2;
    else if (c == 0xF0)
        need = 3, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3)
        need = 3;
    else if (c == 0xF4)
        need = 3, hi = 0x8F;          /* nothing above U+10FFFF */
    else
        return -1;
    for (int k = 1; k <= need; k++) {
        if ((size_t)k >= n || p[k] < lo || p[k] > hi)
            return -k;
        lo = 0x80;
        hi = 0xBF;
    }
    return need + 1;
}

static int dropped_control(unsigned char c)
{
    return c < 0x20 && c != '\t' && c != '\n' && c != '\r';
}

int dp_text_is_clean(const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    if (len >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF)
        return 0;
    for (size_t i = 0; i < len;) {
        if (dropped_control(p[i]))
            return 0;
        int n = utf8_seq(p + i, len - i);
        if (n < 0)
            return 0;
        i += (size_t)n;
    }
    return 1;
}

/* The cleaning pass over UTF-8 in[0..len): writes into out when it is not
 * NULL (sized by a first call with NULL) and returns the output length. */
static size_t clean_pass(const char *in, size_t len, char *out,
                         dp_text_info *info)
{
    const unsigned char *p = (const unsigned char *)in;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        if (dropped_control(p[i])) {
            if (out)
                info->removed++;
            i++;
            continue;
        }
        int n = utf8_seq(p + i, len - i);
        if (n == 3 && o == 0 && memcmp(p + i, "\xEF\xBB\xBF", 3) == 0) {
            if (out) /* a second mark, or one iconv let through */
                info->removed++;
            i += 3;
        } else if (n > 0) {
            if (out)
                memcpy(out + o, p + i, (size_t)n);
            o += (size_t)n;
            i += (size_t)n;
        } else {
            if (out) {
                memcpy(out + o, replacement, 3);
                info->replaced++;
            }
            o += 3;
            i += (size_t)-n;
        }
    }
    return o;
}

static dp_err clean_utf8(const char *in, size_t len, char **out, size_t *out_len,
                         dp_text_info *info, char *err, size_t errlen)
{
    size_t n = clean_pass(in, len, NULL, info);
    char *buf = malloc(n + 1);
    if (!buf)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                       "out of memory decoding %zu bytes of text", len);
    clean_pass(in, len, buf, info);
    buf[n] = '\0';
    *out = buf;
    *out_len = n;
    return DP_OK;
}

typedef struct growbuf {
    char *data;
    size_t len, cap;
} growbuf;

static int grow(growbuf *g, size_t need)
{
    if (g->cap - g->len >= need)
        return 0;
    size_t cap = g->cap ? g->cap : 256;
    while (cap - g->len < need)
        cap *= 2;
    char *d = realloc(g->data, cap);
    if (!d)
        return -1;
    g->data = d;
    g->cap = cap;
    return 0;
}

/* in[0..len) in charset `from` to UTF-8 in g; a sequence iconv cannot
 * convert becomes U+FFFD and `unit` bytes are skipped (an incomplete one at
 * the end ends the text). */
static dp_err iconv_to_utf8(const char *from, size_t unit, const char *in,
                            size_t len, growbuf *g, dp_text_info *info,
                            char *err, size_t errlen)
{
    iconv_t cd = iconv_open("UTF-8", from);
    if (cd == (iconv_t)-1)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "text charset '%s' is not known to iconv", from);
    char *src = (char *)in;
    size_t left = len;
    dp_err e = DP_OK;
    while (left > 0) {
        if (grow(g, left * 2 + 16)) {
            e = DP_ERR_RETRYABLE;
            break;
        }
        char *dst = g->data + g->len;
        size_t room = g->cap - g->len;
        size_t r = iconv(cd, &src, &left, &dst, &room);
        g->len = (size_t)(dst - g->data);
        if (r != (size_t)-1 || errno == E2BIG)
            continue;
        if (grow(g, 3)) {
            e = DP_ERR_RETRYABLE;
            break;
        }
        memcpy(g->data + g->len, replacement, 3);
        g->len += 3;
        info->replaced++;
        if (errno == EILSEQ) {
            size_t skip = unit < left ? unit : left;
            src += skip;
            left -= skip;
        } else {
            left = 0; /* EINVAL: an incomplete sequence at the end */
        }
        iconv(cd, NULL, NULL, NULL, NULL);
    }
    iconv_close(cd);
    if (e)
        return dp_errf(e, err, errlen, "out of memory decoding %zu bytes of "
                       "%s text", len, from);
    return DP_OK;
}

/* Counts the valid multi-byte sequences and the invalid ones. */
static void utf8_counts(const unsigned char *p, size_t len, size_t *good,
                        size_t *bad)
{
    *good = *bad = 0;
    for (size_t i = 0; i < len;) {
        int n = utf8_seq(p + i, len - i);
        if (n > 1)
            (*good)++;
        else if (n < 0)
            (*bad)++;
        i += (size_t)(n < 0 ? -n : n);
    }
}

dp_err dp_text_decode(const char *raw, size_t len, const char *fallback,
                      char **out, size_t *out_len, dp_text_info *info,
                      char *err, size_t errlen)
{
    static const struct {
        const char *bom;
        size_t bom_len;
        const char *name;     /* reported */
        const char *charset;  /* for iconv; NULL: UTF-8 */
        size_t unit;
    } boms[] = {
        /* UTF-32LE first: its mark starts like UTF-16LE's. */
        {"\xFF\xFE\x00\x00", 4, "utf-32le", "UTF-32LE", 4},
        {"\x00\x00\xFE\xFF", 4, "utf-32be", "UTF-32BE", 4},
        {"\xEF\xBB\xBF", 3, "utf-8-bom", NULL, 1},
        {"\xFF\xFE", 2, "utf-16le", "UTF-16LE", 2},
        {"\xFE\xFF", 2, "utf-16be", "UTF-16BE", 2},
    };
    dp_text_info local;
    if (!info)
        info = &local;
    memset(info, 0, sizeof(*info));
    *out = NULL;
    *out_len = 0;
    const char *charset = NULL;
    size_t unit = 1, skip = 0;
    info->encoding = "utf-8";
    for (size_t k = 0; k < sizeof(boms) / sizeof(boms[0]); k++) {
        if (len >= boms[k].bom_len && memcmp(raw, boms[k].bom, boms[k].bom_len) == 0) {
            info->encoding = boms[k].name;
            charset = boms[k].charset;
            unit = boms[k].unit;
            skip = boms[k].bom_len;
            break;
        }
    }
    if (skip == 0 && fallback) {
        size_t good, bad;
        utf8_counts((const unsigned char *)raw, len, &good, &bad);
        if (bad > 0 && (good == 0 || bad > good)) {
            info->encoding = fallback;
            charset = fallback;
        }
    }
    if (!charset)
        return clean_utf8(raw + skip, len - skip, out, out_len, info, err, errlen);
    growbuf g = {0};
    dp_err e = iconv_to_utf8(charset, unit, raw + skip, len - skip, &g, info,
                             err, errlen);
    if (e == DP_OK)
        e = clean_utf8(g.data ? g.data : "", g.len, out, out_len, info, err,
                       errlen);
    free(g.data);
    return e;
}

/* ---- content sniffing ---------------------------------------------------- */

static const struct {
    const char *magic;
    size_t len;
    const char *what;
} magics[] = {
    {"\x7F" "ELF", 4, "an ELF executable"},
    {"\xFE\xED\xFA\xCE", 4, "a Mach-O executable"},
    {"\xFE\xED\xFA\xCF", 4, "a Mach-O executable"},
    {"\xCE\xFA\xED\xFE", 4, "a Mach-O executable"},
    {"\xCF\xFA\xED\xFE", 4, "a Mach-O executable"},
    {"\xCA\xFE\xBA\xBE", 4, "a Java class or Mach-O universal binary"},
    {"\x00" "asm", 4, "a WebAssembly module"},
    {"\x89PNG\r\n\x1A\n", 8, "a PNG image"},
    {"\xFF\xD8\xFF", 3, "a JPEG image"},
    {"GIF87a", 6, "a GIF image"},
    {"GIF89a", 6, "a GIF image"},
    {"II*\x00", 4, "a TIFF image"},
    {"MM\x00*", 4, "a TIFF image"},
    {"PK\x03\x04", 4, "a ZIP archive (or an office document)"},
    {"PK\x05\x06", 4, "a ZIP archive"},
    {"\x1F\x8B", 2, "a gzip archive"},
    {"\xFD" "7zXZ\x00", 6, "an xz archive"},
    {"7z\xBC\xAF\x27\x1C", 6, "a 7-Zip archive"},
    {"Rar!\x1A\x07", 6, "a RAR archive"},
    {"\xD0\xCF\x11\xE0\xA1\xB1\x1A\xE1", 8, "an OLE2 file (an old office document)"},
    {"SQLite format 3\x00", 16, "an SQLite database"},
    {"%PDF-", 5, "a PDF document"},
};

/* A Windows executable: "MZ", and at the offset stored at 0x3C, "PE\0\0". */
static int is_pe(const unsigned char *p, size_t len)
{
    if (len < 0x40 || p[0] != 'M' || p[1] != 'Z')
        return 0;
    uint32_t off = (uint32_t)p[0x3C] | (uint32_t)p[0x3D] << 8 |
                   (uint32_t)p[0x3E] << 16 | (uint32_t)p[0x3F] << 24;
    return off <= len - 4 && memcmp(p + off, "PE\0\0", 4) == 0;
}

const char *dp_text_sniff_binary(const char *data, size_t len, char *why,
                                 size_t whylen)
{
    const unsigned char *p = (const unsigned char *)data;
    if ((len >= 2 && ((p[0] == 0xFF && p[1] == 0xFE) || (p[0] == 0xFE && p[1] == 0xFF))) ||
        (len >= 4 && memcmp(p, "\x00\x00\xFE\xFF", 4) == 0))
        return NULL; /* UTF-16 or UTF-32, marked */
    for (size_t k = 0; k < sizeof(magics) / sizeof(magics[0]); k++)
        if (len >= magics[k].len && memcmp(p, magics[k].magic, magics[k].len) == 0)
            return magics[k].what;
    if (is_pe(p, len))
        return "a Windows executable";
    size_t n = len < DP_TEXT_SNIFF_BYTES ? len : DP_TEXT_SNIFF_BYTES, bad = 0;
    for (size_t i = 0; i < n; i++)
        if (p[i] < 0x20 && p[i] != '\t' && p[i] != '\n' && p[i] != '\v' &&
            p[i] != '\f' && p[i] != '\r' && p[i] != 0x1B)
            bad++;
    if (bad * 10 > n) {
        snprintf(why, whylen, "binary data (%zu of its first %zu bytes are NUL "
                 "or control bytes)", bad, n);
        return why;
    }
    return NULL;
}

/*
 * test_textdecode: raw text bytes become clean UTF-8 (byte order marks, the
 * 8-bit fallback, U+FFFD for invalid sequences, controls dropped), and
 * content sniffing tells binary files from text.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "textdecode.h"

#define FFFD "\xEF\xBF\xBD"

/* Decodes raw[0..len) with the default fallback, asserting success. */
static char *decode(const char *raw, size_t len, dp_text_info *info, size_t *out_len)
{
    char *out = NULL, err[256] = "";
    size_t n = 0;
    dp_err e = dp_text_decode(raw, len, "WINDOWS-1252", &out, &n, info, err,
                              sizeof(err));
    cr_assert_eq(e, DP_OK, "decode failed: %s", err);
    cr_assert_not_null(out);
    cr_assert_eq(out[n], '\0', "output is NUL-terminated");
    cr_assert(dp_text_is_clean(out, n), "output is clean UTF-8");
    if (out_len)
        *out_len = n;
    return out;
}

static void assert_decodes(const char *raw, size_t len, const char *want,
                           const char *encoding)
{
    dp_text_info info;
    size_t n;
    char *out = decode(raw, len, &info, &n);
    cr_assert_eq(n, strlen(want), "length %zu, want %zu ('%s')", n, strlen(want), out);
    cr_assert_eq(memcmp(out, want, n), 0, "got '%s', want '%s'", out, want);
    cr_assert_str_eq(info.encoding, encoding);
    free(out);
}

Test(textdecode, utf8_bom_is_dropped)
{
    assert_decodes("\xEF\xBB\xBF" "caf\xC3\xA9", 8, "caf\xC3\xA9", "utf-8-bom");
}

Test(textdecode, utf16le_with_bom_is_decoded)
{
    static const char raw[] = "\xFF\xFE" "c\0a\0f\0\xE9\0\n\0\x3D\xD8\x00\xDE";
    assert_decodes(raw, sizeof(raw) - 1, "caf\xC3\xA9\n\xF0\x9F\x98\x80", "utf-16le");
}

Test(textdecode, utf16be_with_bom_is_decoded)
{
    static const char raw[] = "\xFE\xFF" "\0c\0a\0f\0\xE9";
    assert_decodes(raw, sizeof(raw) - 1, "caf\xC3\xA9", "utf-16be");
}

Test(textdecode, utf32le_with_bom_is_not_taken_for_utf16le)
{
    static const char raw[] = "\xFF\xFE\0\0" "h\0\0\0" "\xAC\x20\0\0";
    assert_decodes(raw, sizeof(raw) - 1, "h\xE2\x82\xAC", "utf-32le");
}

Test(textdecode, utf32be_with_bom_is_decoded)
{
    static const char raw[] = "\0\0\xFE\xFF" "\0\0\0h" "\0\x01\xF6\x00";
    assert_decodes(raw, sizeof(raw) - 1, "h\xF0\x9F\x98\x80", "utf-32be");
}

Test(textdecode, lone_surrogate_in_utf16_becomes_a_replacement)
{
    static const char raw[] = "\xFF\xFE" "a\0\x00\xD8" "b\0";
    dp_text_info info;
    size_t n;
    char *out = decode(raw, sizeof(raw) - 1, &info, &n);
    cr_assert_str_eq(out, "a" FFFD "b");
    cr_assert_eq(info.replaced, 1);
    free(out);
}

Test(textdecode, odd_trailing_byte_of_utf16_becomes_a_replacement)
{
    static const char raw[] = "\xFF\xFE" "a\0b";
    assert_decodes(raw, sizeof(raw) - 1, "a" FFFD, "utf-16le");
}

Test(textdecode, invalid_bytes_in_utf8_become_replacements)
{
    /* Valid multi-byte characters around two broken spots: UTF-8. */
    static const char raw[] = "na\xC3\xAFve \xFF caf\xC3\xA9 \xE2\x82 \xE2\x82\xAC";
    dp_text_info info;
    size_t n;
    char *out = decode(raw, sizeof(raw) - 1, &info, &n);
    cr_assert_str_eq(out, "na\xC3\xAFve " FFFD " caf\xC3\xA9 " FFFD " \xE2\x82\xAC");
    cr_assert_str_eq(info.encoding, "utf-8");
    cr_assert_eq(info.replaced, 2, "a truncated sequence is one replacement");
    free(out);
}

Test(textdecode, overlong_and_surrogate_encodings_are_invalid)
{
    /* C0 80 (overlong NUL) and ED A0 80 (a surrogate), five invalid
     * sequences in all, among six valid ones. */
    static const char raw[] = "\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9 \xC0\x80 \xED\xA0\x80";
    assert_decodes(raw, sizeof(raw) - 1,
                   "\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9 " FFFD FFFD " "
                   FFFD FFFD FFFD, "utf-8");
}

Test(textdecode, nul_and_controls_are_removed_tab_newline_cr_kept)
{
    static const char raw[] = "a\0b\x01\x07\x1B[0m\tc\r\nd\x0B\x0C\x7F";
    dp_text_info info;
    size_t n;
    char *out = decode(raw, sizeof(raw) - 1, &info, &n);
    cr_assert_eq(n, strlen("ab[0m\tc\r\nd\x7F"));
    cr_assert_str_eq(out, "ab[0m\tc\r\nd\x7F");
    cr_assert_str_eq(info.encoding, "utf-8");
    cr_assert_eq(info.removed, 6);
    free(out);
}

Test(textdecode, latin1_text_falls_back_to_the_8bit_charset)
{
    static const char raw[] = "caf\xE9 na\xEFve \xA9 2024, \x93quoted\x94";
    assert_decodes(raw, sizeof(raw) - 1,
                   "caf\xC3\xA9 na\xC3\xAFve \xC2\xA9 2024, \xE2\x80\x9Cquoted\xE2\x80\x9D",
                   "WINDOWS-1252");
}

Test(textdecode, configured_fallback_charset_is_used)
{
    char *out = NULL, err[256] = "";
    size_t n;
    dp_text_info info;
    /* 0xA4 is the euro sign in ISO-8859-15, the currency sign in latin1. */
    cr_assert_eq(dp_text_decode("\xA4 5", 3, "ISO-8859-15", &out, &n, &info, err,
                                sizeof(err)), DP_OK, "%s", err);
    cr_assert_str_eq(out, "\xE2\x82\xAC 5");
    cr_assert_str_eq(info.encoding, "ISO-8859-15");
    free(out);
}

Test(textdecode, unknown_fallback_charset_is_an_error_when_needed)
{
    char *out = NULL, err[256] = "";
    size_t n;
    cr_assert_eq(dp_text_decode("caf\xE9", 4, "NO-SUCH-CHARSET", &out, &n, NULL, err,
                                sizeof(err)), DP_ERR_PERMANENT);
    cr_assert_null(out);
    cr_assert(strstr(err, "NO-SUCH-CHARSET"), "%s", err);
}

Test(textdecode, without_fallback_bytes_are_utf8_whatever_they_hold)
{
    char *out = NULL, err[256] = "";
    size_t n;
    cr_assert_eq(dp_text_decode("caf\xE9\0", 5, NULL, &out, &n, NULL, err,
                                sizeof(err)), DP_OK);
    cr_assert_str_eq(out, "caf" FFFD);
    free(out);
}

Test(textdecode, empty_input_is_empty_text)
{
    dp_text_info info;
    size_t n = 99;
    char *out = decode("", 0, &info, &n);
    cr_assert_eq(n, 0);
    cr_assert_str_eq(out, "");
    cr_assert_str_eq(info.encoding, "utf-8");
    free(out);
    out = decode("\xFF\xFE", 2, &info, &n);
    cr_assert_eq(n, 0, "a bare byte order mark is empty text");
    cr_assert_str_eq(info.encoding, "utf-16le");
    free(out);
}

Test(textdecode, clean_text_is_recognised_as_clean)
{
    cr_assert(dp_text_is_clean("", 0));
    cr_assert(dp_text_is_clean("# Title\r\n\tcaf\xC3\xA9 \xF0\x9F\x98\x80\n", 20));
    cr_assert_not(dp_text_is_clean("\xEF\xBB\xBFx", 4), "a BOM is not clean");
    cr_assert_not(dp_text_is_clean("a\0b", 3));
    cr_assert_not(dp_text_is_clean("a\x0C" "b", 3), "form feed is removed too");
    cr_assert_not(dp_text_is_clean("caf\xE9", 4));
    cr_assert_not(dp_text_is_clean("\xF4\x90\x80\x80", 4), "above U+10FFFF");
}

/* Seed vectors: raw bytes, expected UTF-8, expected encoding. */
static const struct {
    const char *raw;
    size_t len;
    const char *want;
    const char *encoding;
} vectors[] = {
    {"plain ascii\n", 12, "plain ascii\n", "utf-8"},
    {"\xEF\xBB\xBF", 3, "", "utf-8-bom"},
    {"\xEF\xBB\xBF\xEF\xBB\xBFx", 7, "x", "utf-8-bom"},
    {"\xFF\xFE\xFF\xFEx\0", 6, "x", "utf-16le"},
    {"x\xEF\xBB\xBF", 4, "x\xEF\xBB\xBF", "utf-8"},
    {"\xFE\xFF\0A\0\n", 6, "A\n", "utf-16be"},
    {"\xFF\xFE\0\0A\0\0\0", 8, "A", "utf-32le"},
    {"\xFF\xFE\0\0\0\0\x11\0", 8, FFFD, "utf-32le"},
    {"\xC3\xA9\xFF", 3, "\xC3\xA9" FFFD, "utf-8"},
    {"\xF0\x9F\x98", 3, "\xC3\xB0\xC5\xB8\xCB\x9C", "WINDOWS-1252"},
    {"\xF0\x9F\x98\x80\xF0\x9F\x98", 7, "\xF0\x9F\x98\x80" FFFD, "utf-8"},
    {"\xE9t\xE9", 3, "\xC3\xA9t\xC3\xA9", "WINDOWS-1252"},
    {"a\x81z\xE9", 4, "a" FFFD "z\xC3\xA9", "WINDOWS-1252"},
    {"\0\0\0", 3, "", "utf-8"},
    {"line\r\nnext\x1F", 11, "line\r\nnext", "utf-8"},
};

Test(textdecode, seed_vectors)
{
    for (size_t k = 0; k < sizeof(vectors) / sizeof(vectors[0]); k++) {
        dp_text_info info;
        size_t n;
        char *out = decode(vectors[k].raw, vectors[k].len, &info, &n);
        cr_assert_eq(n, strlen(vectors[k].want), "vector %zu: length %zu", k, n);
        cr_assert_eq(memcmp(out, vectors[k].want, n), 0, "vector %zu: '%s'", k, out);
        cr_assert_str_eq(info.encoding, vectors[k].encoding, "vector %zu", k);
        free(out);
    }
}

/* ---- content sniffing ---------------------------------------------------- */

static const char *sniff(const char *data, size_t len)
{
    static char why[160];
    return dp_text_sniff_binary(data, len, why, sizeof(why));
}

Test(textdecode, executables_and_images_are_binary)
{
    cr_assert_str_eq(sniff("\x7F" "ELF\x02\x01\x01", 7), "an ELF executable");
    cr_assert_str_eq(sniff("\x89PNG\r\n\x1A\n\0\0\0\rIHDR", 16), "a PNG image");
    cr_assert_str_eq(sniff("\xFF\xD8\xFF\xE0", 4), "a JPEG image");
    cr_assert_str_eq(sniff("GIF89a", 6), "a GIF image");
    cr_assert_not_null(sniff("PK\x03\x04", 4));
    cr_assert_str_eq(sniff("%PDF-1.7\n", 9), "a PDF document");
    char pe[128] = "MZ";
    pe[0x3C] = 0x40;
    memcpy(pe + 0x40, "PE\0\0", 4);
    cr_assert_str_eq(sniff(pe, sizeof(pe)), "a Windows executable");
}

Test(textdecode, text_is_not_binary)
{
    cr_assert_null(sniff("", 0));
    cr_assert_null(sniff("MZ was here, a plain note\n", 26));
    cr_assert_null(sniff("# Title\n\ncaf\xE9 \x1B[1mbold\x1B[0m\f\n", 29));
    /* A few stray NULs in text: decoding drops them. */
    char text[200];
    memset(text, 'x', sizeof(text));
    text[50] = text[120] = '\0';
    cr_assert_null(sniff(text, sizeof(text)));
}

Test(textdecode, many_nul_bytes_are_binary_unless_a_utf16_or_utf32_bom_opens)
{
    static const char utf16[] = "\xFF\xFE" "h\0e\0l\0l\0o\0";
    cr_assert_null(sniff(utf16, sizeof(utf16) - 1));
    static const char utf16be[] = "\xFE\xFF" "\0h\0e\0l\0l\0o";
    cr_assert_null(sniff(utf16be, sizeof(utf16be) - 1));
    static const char utf32[] = "\0\0\xFE\xFF\0\0\0h";
    cr_assert_null(sniff(utf32, sizeof(utf32) - 1));
    static const char bare[] = "h\0e\0l\0l\0o\0";
    const char *what = sniff(bare, sizeof(bare) - 1);
    cr_assert_not_null(what, "UTF-16 without a mark looks binary");
    cr_assert(strstr(what, "binary data"), "%s", what);
}

/*
 * textdecode: the bytes of a text or markdown file made into clean UTF-8,
 * and the sniffing that tells such a file from a binary one.
 *
 * Clean text, which every later stage (validate's fingerprint, the
 * chunker, PostgreSQL) can take as it is, is valid UTF-8 with no byte
 * order mark and no C0 control other than tab, newline and carriage
 * return.  The pure functions here allocate only the decoded text.
 */
#ifndef DP_TEXTDECODE_H
#define DP_TEXTDECODE_H

#include <stddef.h>

#include "dp_error.h"

typedef struct dp_text_info {
    /* What the bytes were taken to be: "utf-8", "utf-8-bom", "utf-16le",
     * "utf-16be", "utf-32le", "utf-32be", or the fallback charset's name. */
    const char *encoding;
    size_t replaced;      /* U+FFFD written for invalid sequences */
    size_t removed;       /* control characters dropped */
} dp_text_info;

/* 1 if text[0..len) is clean already (see the top): nothing to decode. */
int dp_text_is_clean(const char *text, size_t len);

/* Decodes raw[0..len) into clean UTF-8: *out is malloc'd, NUL-terminated
 * (the caller frees it), *out_len its length.  The encoding is, in order:
 * a byte order mark (UTF-8, UTF-16 LE/BE, UTF-32 LE/BE); UTF-8 when the
 * bytes are valid UTF-8, or mostly are (a few invalid bytes among valid
 * multi-byte sequences); else fallback, an 8-bit charset iconv knows.
 * fallback NULL: the bytes are UTF-8 whatever they hold (Tika's replies).
 * Invalid sequences become U+FFFD; C0 controls but tab, newline and
 * carriage return are removed.  Fails only when fallback is not a charset
 * iconv knows (DP_ERR_PERMANENT) or memory runs out (DP_ERR_RETRYABLE). */
dp_err dp_text_decode(const char *raw, size_t len, const char *fallback,
                      char **out, size_t *out_len, dp_text_info *info,
                      char *err, size_t errlen);

/* Content sniffing: NULL when data[0..len) may be text; otherwise what it
 * looks like instead ("an ELF executable", "a PNG image", "binary data
 * (...)"), a static string or one written into why.  Only the first
 * DP_TEXT_SNIFF_BYTES bytes are looked at: a known magic number (ELF,
 * PE, Mach-O, PNG, JPEG, GIF, ZIP, gzip, PDF...) makes it binary, and so
 * do NUL and other control bytes (not tab, newline, vertical tab, form
 * feed, carriage return or escape) making up more than a tenth of them,
 * unless a UTF-16 or UTF-32 byte order mark opens the file (its NUL bytes
 * are then halves of characters).  A text file with a few stray NULs is
 * text: decoding drops them. */
#define DP_TEXT_SNIFF_BYTES 8192
const char *dp_text_sniff_binary(const char *data, size_t len, char *why,
                                 size_t whylen);

#endif

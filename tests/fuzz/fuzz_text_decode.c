/*
 * fuzz_text_decode: text decoding (stages/textdecode.c) and content
 * sniffing on any bytes, and the chunker on what decoding makes.
 *
 * Input: [charset][raw...]; the first byte picks the fallback charset
 * (none, as for Tika's answers; WINDOWS-1252, the default; ISO-8859-1;
 * ISO-8859-15), the rest is the file as submitted.
 *
 * What must hold, besides no crash, leak or undefined behaviour:
 *   - decoding succeeds, and its output is NUL-terminated clean UTF-8
 *     (dp_text_is_clean: valid, no leading byte order mark, no C0 control
 *     but tab, newline and carriage return);
 *   - decoding is idempotent: clean text decodes to itself, as "utf-8",
 *     with nothing replaced or removed (so parse's fast path, which keeps
 *     clean raw files as they are, gives what decoding would);
 *   - the chunker takes the decoded text (chunks or, for blank text, its
 *     permanent refusal);
 *   - sniffing answers, and a file it calls text never starts with a known
 *     executable or image signature (checked for ELF and PNG).
 */
#include <string.h>

#include "chunker.h"
#include "ids.h"
#include "support_fuzz.h"
#include "textdecode.h"

static const char *const charsets[] = {NULL, "WINDOWS-1252", "ISO-8859-1",
                                       "ISO-8859-15"};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    const char *fallback = charsets[data[0] % 4];
    const char *raw = (const char *)data + 1;
    size_t len = size - 1;

    char why[160];
    const char *binary = dp_text_sniff_binary(raw, len, why, sizeof(why));
    if (!binary) {
        FUZZ_CHECK(len < 4 || memcmp(raw, "\x7F" "ELF", 4) != 0, "ELF taken for text");
        FUZZ_CHECK(len < 8 || memcmp(raw, "\x89PNG\r\n\x1A\n", 8) != 0,
                   "PNG taken for text");
    }

    char *out = NULL, err[256];
    size_t out_len = 0;
    dp_text_info info;
    dp_err e = dp_text_decode(raw, len, fallback, &out, &out_len, &info, err,
                              sizeof(err));
    FUZZ_CHECK(e == DP_OK, err);
    FUZZ_CHECK(out && out[out_len] == '\0', "output not NUL-terminated");
    FUZZ_CHECK(dp_text_is_clean(out, out_len), "output is not clean UTF-8");
    FUZZ_CHECK(info.encoding && *info.encoding, "no encoding reported");
    if (dp_text_is_clean(raw, len))
        FUZZ_CHECK(out_len == len && memcmp(out, raw, len) == 0,
                   "clean text changed by decoding");

    char *again = NULL;
    size_t again_len = 0;
    dp_text_info info2;
    e = dp_text_decode(out, out_len, fallback, &again, &again_len, &info2, err,
                       sizeof(err));
    FUZZ_CHECK(e == DP_OK, err);
    FUZZ_CHECK(again_len == out_len && memcmp(again, out, out_len) == 0,
               "decoding is not idempotent");
    FUZZ_CHECK(strcmp(info2.encoding, "utf-8") == 0 && info2.replaced == 0 &&
                   info2.removed == 0, "clean text taken for something else");
    free(again);

    size_t n = dp_normalize_text(out, out_len, out);
    dp_chunk_list list;
    e = dp_chunk_markdown(out, n, &list, err, sizeof(err));
    FUZZ_CHECK(e == DP_OK || e == DP_ERR_PERMANENT, err);
    if (e == DP_OK)
        dp_chunk_list_free(&list);
    free(out);
    return 0;
}

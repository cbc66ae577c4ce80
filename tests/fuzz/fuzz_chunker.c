/*
 * fuzz_chunker: the markdown-simple@1 chunker, the embedding batch planner
 * and the text functions of ids.h under them, on any bytes.
 *
 * Input: [max_texts][max_tokens][text...]; the text is the parsed content
 * the chunk stage would read (any bytes: invalid UTF-8, NULs, CR, lone
 * '#').  The two first bytes set the planner's limits (1-256 texts, 0-8160
 * tokens) so that small inputs still make several batches.
 *
 * (Text decoding, the step that turns a text file's bytes into clean UTF-8
 * before this, has its own harness, fuzz_text_decode.c, which also feeds
 * the chunker what it makes.)
 *
 * The same text also goes through markdown-simple@2 with a bound from the
 * first byte (32-1052 tokens) and an overlap from the second (0 or up to
 * half the bound).
 *
 * What must hold, besides no crash, leak or undefined behaviour:
 *   - markdown-simple@2: no chunk over the bound (the estimate of each
 *     text is at most max_tokens), texts stripped, hashed and found in the
 *     content in order; without overlap the chunks hold exactly the
 *     content's ASCII letters and digits (nothing lost, nothing repeated),
 *     with overlap at least those; no chunks exactly when whitespace only;
 *   - chunks (chunker.h): ords 0..n-1, start_line = ord * 20, 1 to 20 lines
 *     each, texts non-empty, already stripped, NUL-terminated, hashed by
 *     their sha256, and found in the content in order; no chunk at all
 *     exactly when the content is whitespace only (DP_ERR_PERMANENT);
 *   - batches: consecutive, covering every text, at most max_texts each,
 *     within max_tokens unless a text travels alone, and greedy (a batch
 *     ends only when the next text would not fit);
 *   - dp_normalize_text gives the same bytes in place and into a new
 *     buffer, stripped, with no line ending in whitespace; dp_parsed_sha256
 *     (streamed) is the sha256 of those bytes, and fails exactly when they
 *     are empty;
 *   - a text that starts with a UUID parses, formats back to it in lower
 *     case and gives a chunk id; dp_py_float_hex of any 8 bytes reads back
 *     (strtod) as the same double.
 */
#include <ctype.h>
#include <math.h>
#include <string.h>

#include "chunker.h"
#include "ids.h"
#include "support_fuzz.h"

static void check_chunks(const char *text, size_t len, const dp_chunk_list *list)
{
    const char *at = text, *end = text + len;
    size_t bytes = 0;
    for (size_t i = 0; i < list->count; i++) {
        const dp_chunk *c = &list->items[i];
        size_t slen;
        char sha[DP_SHA256_HEX_SIZE];
        FUZZ_CHECK(c->ord == i, "ords have a gap");
        FUZZ_CHECK(c->start_line == i * DP_CHUNKER_MAX_LINES, "start_line is not ord*20");
        FUZZ_CHECK(c->end_line > c->start_line &&
                       c->end_line - c->start_line <= DP_CHUNKER_MAX_LINES,
                   "a chunk of no line or more than 20");
        FUZZ_CHECK(c->text_len > 0 && c->text[c->text_len] == '\0', "empty or unterminated");
        FUZZ_CHECK(dp_text_strip(c->text, c->text_len, &slen) == c->text &&
                       slen == c->text_len,
                   "chunk text not stripped");
        FUZZ_CHECK(dp_sha256_hex(c->text, c->text_len, sha) == DP_OK &&
                       strcmp(sha, c->sha256) == 0,
                   "chunk_sha is not the sha256 of the text");
        const char *found = memmem(at, (size_t)(end - at), c->text, c->text_len);
        FUZZ_CHECK(found != NULL, "chunk text not found in the content after the last");
        at = found + c->text_len;
        bytes += c->text_len + 1;
    }
    FUZZ_CHECK(bytes <= len + 1, "texts outgrow the content");
}

static void check_batches(const dp_chunk_list *list, size_t max_texts, size_t max_tokens)
{
    size_t n = list->count;
    size_t *tokens = malloc(n * sizeof(*tokens)), *ends = malloc(n * sizeof(*ends));
    FUZZ_CHECK(tokens && ends, "out of memory");
    for (size_t i = 0; i < n; i++) {
        tokens[i] = dp_embed_estimate_tokens(list->items[i].text, list->items[i].text_len);
        /* tokens.h: at most one token a byte, at most 5 bytes a token */
        FUZZ_CHECK(tokens[i] <= list->items[i].text_len, "more tokens than bytes");
        FUZZ_CHECK(list->items[i].text_len <= 5 * tokens[i], "over 5 bytes a token");
    }
    size_t nb = dp_embed_plan_batches(tokens, n, max_texts, max_tokens, ends);
    FUZZ_CHECK(nb >= 1 && nb <= n && ends[nb - 1] == n, "batches do not cover the texts");
    size_t first = 0;
    for (size_t b = 0; b < nb; b++) {
        FUZZ_CHECK(ends[b] > first, "an empty batch");
        size_t count = ends[b] - first, sum = 0;
        for (size_t i = first; i < ends[b]; i++)
            sum += tokens[i];
        FUZZ_CHECK(count <= max_texts, "a batch of more than max_texts");
        FUZZ_CHECK(sum <= max_tokens || count == 1, "a batch over max_tokens");
        if (b + 1 < nb)
            FUZZ_CHECK(count == max_texts || sum + tokens[ends[b]] > max_tokens,
                       "a batch ended although the next text fitted");
        first = ends[b];
    }
    free(tokens);
    free(ends);
}

static int is_ws_end(const char *s, size_t len)
{
    return dp_text_rstrip_len(s, len) != len;
}

static void check_normalize(const char *text, size_t len)
{
    char *out = malloc(len + 1), *inplace = malloc(len + 1);
    FUZZ_CHECK(out && inplace, "out of memory");
    memcpy(inplace, text, len);
    size_t n = dp_normalize_text(text, len, out);
    size_t m = dp_normalize_text(inplace, len, inplace);
    FUZZ_CHECK(n <= len && n == m && memcmp(out, inplace, n) == 0,
               "normalising in place differs");
    size_t slen;
    FUZZ_CHECK(dp_text_strip(out, n, &slen) == out && slen == n, "normalised text not stripped");
    for (const char *line = out, *end = out + n; line < end;) {
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *le = nl ? nl : end;
        FUZZ_CHECK(!is_ws_end(line, (size_t)(le - line)), "a line ends in whitespace");
        line = nl ? nl + 1 : end;
    }
    char streamed[DP_SHA256_HEX_SIZE], direct[DP_SHA256_HEX_SIZE], err[256];
    dp_err rc = dp_parsed_sha256(text, len, streamed, err, sizeof(err));
    FUZZ_CHECK((rc == DP_OK) == (n > 0), "parsed_sha256 fails iff the text is empty");
    if (rc == DP_OK)
        FUZZ_CHECK(dp_sha256_hex(out, n, direct) == DP_OK && strcmp(streamed, direct) == 0,
                   "streamed parsed_sha256 differs from sha256 of the normalised text");
    free(out);
    free(inplace);
}

static void check_ids(const char *text, size_t len)
{
    if (len >= 36) {
        char id[37], back[DP_UUID_STR_SIZE], chunk[DP_UUID_STR_SIZE], err[256];
        uint8_t uuid[16], again[16];
        memcpy(id, text, 36);
        id[36] = '\0';
        int ok = dp_uuid_parse(id, uuid) == 0;
        if (ok) {
            dp_uuid_format(uuid, back);
            for (int i = 0; i < 36; i++)
                FUZZ_CHECK(back[i] == tolower((unsigned char)id[i]), "uuid formats back wrong");
            FUZZ_CHECK(dp_uuid_parse(back, again) == 0 && memcmp(uuid, again, 16) == 0,
                       "uuid does not parse back");
        }
        dp_err rc = dp_chunk_id(id, DP_CHUNKER_NAME, DP_CHUNKER_DEFAULT_VERSION, 7, chunk, err,
                                sizeof(err));
        FUZZ_CHECK((rc == DP_OK) == ok, "chunk id accepts exactly the uuids");
    }
    if (len >= 8) {
        double x, y;
        char hex[DP_PY_FLOAT_HEX_SIZE];
        memcpy(&x, text + len - 8, sizeof(x));
        size_t n = dp_py_float_hex(x, hex);
        FUZZ_CHECK(n == strlen(hex) && n < DP_PY_FLOAT_HEX_SIZE, "float.hex length");
        y = strtod(hex, NULL);
        FUZZ_CHECK(isnan(x) ? strcmp(hex, "nan") == 0 : memcmp(&x, &y, sizeof(x)) == 0,
                   "float.hex does not read back");
    }
}

/* Letters and digits: bytes no strip can remove (strip() also takes
 * Unicode spaces, so other bytes may go at a chunk's ends). */
static size_t non_ws(const char *p, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += isalnum((unsigned char)p[i]) != 0;
    return k;
}

static void check_v2(const char *text, size_t len, size_t slen, unsigned max, unsigned ov)
{
    dp_chunker_spec spec = {2, max, ov};
    dp_chunk_list list;
    char err[256];
    dp_err rc = dp_chunk_markdown_v2(&spec, text, len, &list, err, sizeof(err));
    FUZZ_CHECK(rc == DP_OK || rc == DP_ERR_PERMANENT, "v2: unexpected error");
    FUZZ_CHECK((rc == DP_OK) == (slen > 0), "v2: no chunks iff whitespace only");
    if (rc != DP_OK) {
        FUZZ_CHECK(list.count == 0 && list.items == NULL, "v2: failed with chunks");
        return;
    }
    size_t kept = 0;
    const char *at = text, *end = text + len;
    for (size_t i = 0; i < list.count; i++) {
        const dp_chunk *c = &list.items[i];
        char sha[DP_SHA256_HEX_SIZE];
        size_t sl;
        FUZZ_CHECK(c->ord == i, "v2: ords with gaps");
        FUZZ_CHECK(c->tokens <= max, "v2: a chunk over the bound");
        FUZZ_CHECK(c->tokens == dp_tokens_estimate(c->text, c->text_len), "v2: tokens");
        FUZZ_CHECK(c->text_len > 0 && c->text[c->text_len] == '\0', "v2: empty or unterminated");
        dp_text_strip(c->text, c->text_len, &sl);
        FUZZ_CHECK(sl == c->text_len, "v2: text not stripped");
        FUZZ_CHECK(dp_sha256_hex(c->text, c->text_len, sha) == DP_OK &&
                   strcmp(sha, c->sha256) == 0, "v2: sha256");
        FUZZ_CHECK(c->start_line < c->end_line, "v2: lines");
        /* In the content, in order (an overlapping chunk starts earlier). */
        const char *found = NULL;
        for (const char *p = ov ? text : at; p + c->text_len <= end; p++)
            if (!memcmp(p, c->text, c->text_len)) {
                found = p;
                if (!ov || p >= at || p + c->text_len > at)
                    break;
            }
        FUZZ_CHECK(found != NULL, "v2: a chunk not in the content");
        if (!ov && found)
            at = found + c->text_len;
        kept += non_ws(c->text, c->text_len);
    }
    size_t all = non_ws(text, len);
    FUZZ_CHECK(ov ? kept >= all : kept == all, "v2: content lost or repeated");
    dp_chunk_list_free(&list);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    size_t max_texts = 1 + fuzz_byte(&in);
    size_t max_tokens = (size_t)fuzz_byte(&in) * 32;
    const char *text = (const char *)in.p;
    size_t len = in.n;

    dp_chunk_list list;
    char err[256];
    size_t slen;
    dp_err rc = dp_chunk_markdown(text, len, &list, err, sizeof(err));
    dp_text_strip(text, len, &slen);
    FUZZ_CHECK(rc == DP_OK || rc == DP_ERR_PERMANENT, "chunker: unexpected error");
    FUZZ_CHECK((rc == DP_OK) == (slen > 0), "no chunks iff whitespace only");
    if (rc == DP_OK) {
        FUZZ_CHECK(list.count > 0, "ok with no chunk");
        check_chunks(text, len, &list);
        check_batches(&list, max_texts, max_tokens);
    } else {
        FUZZ_CHECK(list.count == 0 && list.items == NULL, "failed with chunks");
    }
    dp_chunk_list_free(&list);
    unsigned v2max = 32 + (unsigned)max_texts * 4 - 4;
    unsigned v2ov = (max_tokens / 32) & 1 ? (unsigned)(max_tokens / 32) % (v2max / 2 + 1) : 0;
    check_v2(text, len, slen, v2max, v2ov);
    check_normalize(text, len);
    check_ids(text, len);
    return 0;
}

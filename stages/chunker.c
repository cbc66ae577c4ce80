/*
 * chunker: the "markdown-simple" chunker and the embedding batch planner.
 * The rules and their quirks are spelled out in chunker.h.
 *
 * Memory: the chunk texts are disjoint pieces of the input, and between two
 * consecutive chunks lies at least the '\n' that ended the earlier one, so
 * all texts plus one NUL each fit in len + 1 bytes.  The chunker therefore
 * makes one text allocation of len + 1 bytes and grows only the dp_chunk
 * array, and never re-joins lines: '\n'.join(lines) is simply the input
 * range from the first line's start to the last line's end.
 */
#include "chunker.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

struct chunk_builder {
    dp_chunk_list *list;
    size_t cap;            /* allocated dp_chunk slots */
    size_t text_used;      /* bytes used in list->text_buf */
    EVP_MD_CTX *md;
    EVP_MD *sha256;        /* fetched once: an implicit fetch per chunk costs
                              more than hashing a short chunk */
};

static int sha256_hex(EVP_MD_CTX *md, const EVP_MD *sha256, const char *p, size_t n,
                      char *out)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn = 0;
    if (EVP_DigestInit_ex2(md, sha256, NULL) != 1 ||
        EVP_DigestUpdate(md, p, n) != 1 || EVP_DigestFinal_ex(md, d, &dn) != 1)
        return -1;
    for (unsigned int i = 0; i < dn; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 0x0f];
    }
    out[2 * dn] = '\0';
    return 0;
}

/* Flushes the lines [first, last_end) (nlines of them) as one chunk, unless
 * its stripped text is empty.  Returns 0 or -1 on allocation failure. */
static int flush_chunk(struct chunk_builder *b, const char *first,
                       const char *last_end, size_t nlines)
{
    dp_chunk_list *list = b->list;
    size_t text_len;
    const char *text = dp_text_strip(first, (size_t)(last_end - first), &text_len);
    if (text_len == 0)
        return 0;                           /* dropped: no ord used */
    if (list->count == INT32_MAX)          /* chunk_ord is a Postgres int */
        return -1;

    if (list->count == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        dp_chunk *items = realloc(list->items, cap * sizeof *items);
        if (!items)
            return -1;
        list->items = items;
        b->cap = cap;
    }

    char *dst = list->text_buf + b->text_used;
    memcpy(dst, text, text_len);
    dst[text_len] = '\0';
    b->text_used += text_len + 1;

    dp_chunk *c = &list->items[list->count];
    c->ord = (uint32_t)list->count;
    c->start_line = list->count * DP_CHUNKER_MAX_LINES;
    c->end_line = c->start_line + nlines;
    c->text = dst;
    c->text_len = text_len;
    if (sha256_hex(b->md, b->sha256, dst, text_len, c->sha256) != 0)
        return -1;
    list->count++;
    return 0;
}

void dp_chunk_list_free(dp_chunk_list *list)
{
    if (!list)
        return;
    free(list->items);
    free(list->text_buf);
    list->items = NULL;
    list->text_buf = NULL;
    list->count = 0;
}

dp_err dp_chunk_markdown(const char *content, size_t len, dp_chunk_list *out,
                         char *err, size_t errlen)
{
    struct chunk_builder b = { out, 0, 0, EVP_MD_CTX_new(), EVP_MD_fetch(NULL, "SHA256", NULL) };
    memset(out, 0, sizeof *out);
    if (!content) {
        content = "";
        len = 0;
    }
    out->text_buf = malloc(len + 1);
    if (!out->text_buf || !b.md || !b.sha256)
        goto oom;

    const char *end = content + len;
    const char *line = content;             /* start of the current line */
    const char *first = content;            /* start of the current chunk */
    size_t nlines = 0;

    for (;;) {                              /* one iteration per '\n'-split line */
        const char *nl = memchr(line, '\n', (size_t)(end - line));
        const char *line_end = nl ? nl : end;
        if (nlines == 0)
            first = line;
        nlines++;
        if ((line < line_end && line[0] == '#') || nlines >= DP_CHUNKER_MAX_LINES) {
            if (flush_chunk(&b, first, line_end, nlines) != 0)
                goto oom;
            nlines = 0;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    if (nlines > 0 && flush_chunk(&b, first, end, nlines) != 0)
        goto oom;

    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    if (out->count == 0) {
        dp_chunk_list_free(out);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "No chunks generated from parsed content");
    }
    return DP_OK;

oom:
    EVP_MD_CTX_free(b.md);
    EVP_MD_free(b.sha256);
    dp_chunk_list_free(out);
    return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                   "chunker: out of memory chunking %zu bytes of content", len);
}

/* ---- Embedding batches -------------------------------------------------- */

size_t dp_embed_estimate_tokens(const char *text, size_t len)
{
    size_t chars = 0;
    for (size_t i = 0; i < len; i++)
        chars += ((unsigned char)text[i] & 0xc0) != 0x80;
    return chars / 4;
}

size_t dp_embed_plan_batches(const size_t *tokens, size_t n, size_t max_texts,
                             size_t max_tokens, size_t *batch_end)
{
    size_t nbatches = 0, in_batch = 0, batch_tokens = 0;
    for (size_t i = 0; i < n; i++) {
        /* "current_tokens + estimated > 8000", written so it cannot overflow */
        int over = tokens[i] > max_tokens || batch_tokens > max_tokens - tokens[i];
        if (in_batch > 0 && (in_batch >= max_texts || over)) {
            batch_end[nbatches++] = i;
            in_batch = 0;
            batch_tokens = 0;
        }
        in_batch++;
        batch_tokens += tokens[i];
    }
    if (in_batch > 0)
        batch_end[nbatches++] = n;
    return nbatches;
}

/*
 * chunker: how a parsed document is cut into chunks, and how chunk texts
 * are grouped into embedding requests.
 *
 * The "markdown-simple" chunker reproduces the original _generate_chunks()
 * exactly, quirks included, because chunk ords, texts, chunk_sha and meta
 * feed chunk ids and ON CONFLICT writes that must stay stable:
 *
 *   - the text is split on '\n' only; every line is appended to the current
 *     chunk, and the chunk is flushed right after appending a line that
 *     starts with '#' (so a heading *ends* the chunk it joins) or once the
 *     chunk holds 20 lines;
 *   - chunk text = '\n'.join(lines).strip() (Python whitespace, see ids.h);
 *     an empty text is dropped without using up an ord;
 *   - the remainder is flushed at the end;
 *   - meta start_line = n*20 and end_line = n*20 + number of lines in the
 *     chunk, where n = chunks emitted before this one.  These are NOT real
 *     line numbers (quirk of the original), kept because stored meta must
 *     not change between runs.
 *
 * CRLF input is not special: '\r' stays part of its line (so "#x\r" is
 * still a heading and "\r" alone is not a line break); strip() removes a
 * '\r' only where it ends up at the start or end of a chunk text.
 *
 * Cost is linear in the input: one pass with memchr, one copy of the kept
 * bytes, one SHA-256 per chunk.  Memory is len + 1 bytes for all texts plus
 * sizeof(dp_chunk) (~100 bytes) per chunk.  A typical 10 MB document takes
 * ~20 ms; the worst case, 10 MB of "#\n" (5 million chunks), ~1.3 s and
 * ~600 MB, bound by the per-chunk SHA-256 and dp_chunk.
 */
#ifndef DP_CHUNKER_H
#define DP_CHUNKER_H

#include <stddef.h>
#include <stdint.h>

#include "dp_error.h"
#include "ids.h"
#include "tokens.h"

#define DP_CHUNKER_NAME "markdown-simple"
#define DP_CHUNKER_DEFAULT_VERSION "markdown-simple@1"  /* upload_jobs.chunks_version default */
#define DP_CHUNKER_MAX_LINES 20

/* markdown-simple@2, chunks bounded by tokens (see "markdown-simple@2"
 * below).  A job records its chunker as a version string: the bare name
 * means these defaults, other values are spelled out, so the string alone
 * says how the chunks were made and replays make the same chunks (and
 * chunk ids, which hash it). */
#define DP_CHUNKER_V2 "markdown-simple@2"
#define DP_CHUNKER_V2_MAX_TOKENS 512
#define DP_CHUNKER_V2_OVERLAP_TOKENS 0
#define DP_CHUNKER_MIN_TOKENS 32
#define DP_CHUNKER_MAX_TOKENS_LIMIT 8191
#define DP_CHUNKER_VERSION_SIZE 96

typedef struct dp_chunk {
    uint32_t ord;          /* 0, 1, 2, ... with no gaps */
    size_t start_line;     /* meta.start_line: ord*20 (see the quirk above) */
    size_t end_line;       /* meta.end_line: ord*20 + lines in this chunk */
    const char *text;      /* stripped text, NUL-terminated, never empty;
                              points into the owning list's buffer */
    size_t text_len;
    size_t tokens;         /* dp_tokens_estimate(text) */
    char sha256[DP_SHA256_HEX_SIZE];  /* chunk_sha: sha256 hex of text */
} dp_chunk;

/* Owns every chunk text.  Free with dp_chunk_list_free(). */
typedef struct dp_chunk_list {
    dp_chunk *items;
    size_t count;
    char *text_buf;        /* private: one buffer holding all the texts */
} dp_chunk_list;

/* Runs "markdown-simple" over content[0..len) (need not be NUL-terminated).
 * On DP_OK, *out holds at least one chunk and must be freed by the caller.
 * Errors leave *out empty (safe to free):
 *   DP_ERR_PERMANENT "No chunks generated from parsed content" when every
 *     chunk text is empty (empty or whitespace-only content);
 *   DP_ERR_RETRYABLE when memory or OpenSSL allocation fails.
 * The chunker version (e.g. "markdown-simple@1", the job's chunks_version)
 * does not change the chunks; it only enters dp_chunk_id(). */
dp_err dp_chunk_markdown(const char *content, size_t len, dp_chunk_list *out,
                         char *err, size_t errlen);

void dp_chunk_list_free(dp_chunk_list *list);

/* ---- markdown-simple@2 ----------------------------------------------------
 *
 * The same markdown reading as @1 (lines, headings, blank lines), with
 * every chunk at most max_tokens by dp_tokens_estimate (tokens.h):
 *
 *   - a line starting with '#' starts a new chunk (what @1 meant: its
 *     heading *ended* the chunk it joined);
 *   - lines join the current chunk while its estimate stays within
 *     max_tokens (a line costs its estimate plus 1 for the '\n');
 *     no 20-line limit;
 *   - when the next line does not fit, the chunk is cut at its last
 *     paragraph break (blank line) if it has one, the paragraphs after it
 *     moving to the next chunk, else before that line;
 *   - a line over max_tokens alone ends the current chunk and is cut into
 *     pieces of at most max_tokens: at the last sentence end (. ! ? with
 *     an optional closing quote or bracket, then whitespace) in the second
 *     half of the piece, else at the last whitespace, else hard at the last
 *     whole UTF-8 character that fits (a line with no spaces, CJK text);
 *   - overlap_tokens > 0: a chunk that was cut inside a paragraph (between
 *     its lines or inside a line) hands its last words, at most
 *     overlap_tokens of them (fewer when the next line would not fit
 *     otherwise), to the start of the next chunk;
 *   - texts are stripped, empty ones dropped without an ord, as in @1;
 *   - start_line / end_line are real line numbers here (0-based, end
 *     exclusive) of the lines the chunk text comes from.
 *
 * Linear in the input apart from the overlap search (a binary search in
 * the last 5 * overlap_tokens bytes of each cut chunk). */

typedef struct dp_chunker_spec {
    int version;                 /* 1 or 2 */
    unsigned max_tokens;         /* @2: 32..8191 */
    unsigned overlap_tokens;     /* @2: 0..max_tokens / 2 */
} dp_chunker_spec;

/* Reads a job's chunker version string: "markdown-simple@1",
 * "markdown-simple@2" (512 tokens, no overlap), or
 * "markdown-simple@2;max_tokens=N;overlap_tokens=M" with either part left
 * out when it is the default.  Only that canonical spelling is accepted, so
 * one chunking has one string (and one set of chunk ids).  Unknown or
 * malformed: DP_ERR_PERMANENT naming the string. */
dp_err dp_chunker_spec_parse(const char *version, dp_chunker_spec *out, char *err,
                             size_t errlen);

/* Writes the canonical version string of spec into out (at least
 * DP_CHUNKER_VERSION_SIZE bytes). */
void dp_chunker_spec_format(const dp_chunker_spec *spec, char *out, size_t outlen);

/* markdown-simple@2 over content[0..len); results and errors as
 * dp_chunk_markdown, and every chunk's tokens <= spec->max_tokens. */
dp_err dp_chunk_markdown_v2(const dp_chunker_spec *spec, const char *content,
                            size_t len, dp_chunk_list *out, char *err, size_t errlen);

/* Runs the chunker spec names (version 1 ignores the token settings). */
dp_err dp_chunk_text(const dp_chunker_spec *spec, const char *content, size_t len,
                     dp_chunk_list *out, char *err, size_t errlen);

/* ---- Embedding batches -------------------------------------------------- */

#define DP_EMBED_BATCH_MAX_TEXTS 256    /* openai_max_batch_size */
#define DP_EMBED_BATCH_MAX_TOKENS 8000  /* estimated tokens per request */

/* A text's estimated tokens for batch budgets and rate limits: the
 * chunker's estimate, dp_tokens_estimate (tokens.h), so the budget of a
 * request is counted as the chunks were bounded.  (The original used
 * len(text) // 4, which undercounts punctuation, digits and CJK text.) */
size_t dp_embed_estimate_tokens(const char *text, size_t len);

/* Splits n texts, in order, into consecutive batches as the original
 * _create_micro_batches() did: a text starts a new batch when the current
 * one already holds max_texts texts or when adding its estimated tokens
 * would take the batch over max_tokens.  A single text above max_tokens
 * therefore travels alone.  tokens[i] is the estimate of text i.
 * Writes the exclusive end index of each batch into batch_end (room for n
 * entries: there are never more batches than texts) and returns the number
 * of batches; batch b holds texts [b ? batch_end[b-1] : 0, batch_end[b]). */
size_t dp_embed_plan_batches(const size_t *tokens, size_t n, size_t max_texts,
                             size_t max_tokens, size_t *batch_end);

#endif

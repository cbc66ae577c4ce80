/*
 * ids: the deterministic identities and content hashes of a document.
 *
 * Everything here must produce byte-for-byte what the original Python
 * worker stored, because chunk ids, parsed_sha256, chunk_sha and
 * vector_sha are compared against rows written by earlier runs (dedup,
 * ON CONFLICT, resume).  The functions are pure: no I/O, no globals, and
 * they allocate nothing except OpenSSL's per-call digest context.
 *
 *   chunk_id     UUIDv5(DP_CHUNK_ID_NAMESPACE,
 *                       "{document_id}:{chunker_name}:{chunker_version}:{ord}")
 *   chunk_sha    sha256 hex of the (stripped) chunk text
 *   parsed_sha256  sha256 hex of dp_normalize_text(content)
 *   vector_sha   sha256 hex of the concatenated Python float.hex() strings
 *
 * "Whitespace" means Python's str.isspace(): the ASCII bytes \t \n \v \f \r,
 * 0x1c-0x1f and space, plus the Unicode whitespace code points U+0085,
 * U+00A0, U+1680, U+2000-U+200A, U+2028, U+2029, U+202F, U+205F and U+3000,
 * recognised by their UTF-8 encodings.  The original ran str.strip() on
 * decoded text, so stripping the Unicode ones too keeps the hashes equal for
 * real documents (a PDF parse often ends in U+00A0).  Text is otherwise
 * handled as bytes; invalid UTF-8 (which the original could not decode)
 * passes through unchanged.
 *
 * All hex output is lower case and NUL-terminated.
 */
#ifndef DP_IDS_H
#define DP_IDS_H

#include <stddef.h>
#include <stdint.h>

#include "dp_error.h"

#define DP_UUID_STR_SIZE 37       /* "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" + NUL */
#define DP_SHA256_HEX_SIZE 65     /* 64 hex digits + NUL */
#define DP_PY_FLOAT_HEX_SIZE 32   /* longest is "-0x1.fffffffffffffp-1022" (24) */

/* 6c8a1e6e-1f0b-4aa8-9f0a-1a7c2e6f2b42, the chunk-id namespace (CONTEXT002). */
extern const uint8_t DP_CHUNK_ID_NAMESPACE[16];

/* ---- UUIDs ------------------------------------------------------------- */

/* RFC 4122 name-based UUID, version 5 (SHA-1), exactly like Python's
 * uuid.uuid5(ns, name) for a name whose UTF-8 bytes are name[0..len).
 * Writes the canonical lower-case form into out.  Fails (DP_ERR_RETRYABLE)
 * only if OpenSSL cannot allocate its digest context. */
dp_err dp_uuid5(const uint8_t ns[16], const char *name, size_t len,
                char out[DP_UUID_STR_SIZE]);

/* Parses the 36-character hyphenated form, either case.  Returns 0 on
 * success, -1 if text is not exactly such a UUID.  No braces, no "urn:". */
int dp_uuid_parse(const char *text, uint8_t out[16]);

/* Formats 16 bytes as the canonical lower-case 8-4-4-4-12 text. */
void dp_uuid_format(const uint8_t uuid[16], char out[DP_UUID_STR_SIZE]);

/* A random UUID, version 4 (getrandom; if that fails, the clock and the
 * pid keep ids of one process apart). */
void dp_uuid4(char out[DP_UUID_STR_SIZE]);

/* The chunk id of one chunk.  document_id must be a UUID in the 36-character
 * form; it is hashed in its canonical lower-case text, i.e. str(UUID) as the
 * original got it from asyncpg.  chunker_name and chunker_version are hashed
 * exactly as given (no lowercasing: the original code did not lowercase;
 * RFC003's lowercasing would change every id).  ord is printed in decimal.
 * DP_ERR_PERMANENT (message in err) if document_id is not a UUID. */
dp_err dp_chunk_id(const char *document_id, const char *chunker_name,
                   const char *chunker_version, uint32_t ord,
                   char out[DP_UUID_STR_SIZE], char *err, size_t errlen);

/* ---- SHA-256 and text normalization -------------------------------------- */

/* sha256 of data[0..len) as 64 lower-case hex digits.  DP_ERR_RETRYABLE only
 * if OpenSSL cannot allocate. */
dp_err dp_sha256_hex(const void *data, size_t len, char out[DP_SHA256_HEX_SIZE]);

/* Python str.strip() on s[0..len): returns the first kept byte and writes the
 * kept length into *out_len (0 for whitespace-only input). */
const char *dp_text_strip(const char *s, size_t len, size_t *out_len);

/* Python str.rstrip(): the length of s[0..len) without trailing whitespace. */
size_t dp_text_rstrip_len(const char *s, size_t len);

/* The original's _normalize_markdown:
 *     '\n'.join(line.rstrip() for line in text.strip().split('\n'))
 * Lines split on '\n' only, so "\r\n" text loses its '\r' (rstrip removes
 * it) but '\r' alone is not a line break.  Writes the result into out, which
 * needs room for len bytes and may be the same buffer as in (the output never
 * overtakes the input).  Returns the output length; writes no NUL. */
size_t dp_normalize_text(const char *in, size_t len, char *out);

/* parsed_sha256: sha256 hex of dp_normalize_text(content), computed in one
 * streaming pass without a copy.  Content that is empty or whitespace-only
 * gives DP_ERR_PERMANENT with the original's message "Parsed content is
 * empty". */
dp_err dp_parsed_sha256(const char *content, size_t len,
                        char out[DP_SHA256_HEX_SIZE], char *err, size_t errlen);

/* ---- Vectors ------------------------------------------------------------ */

/* CPython's float.hex(x), e.g. 0.1 -> "0x1.999999999999ap-4",
 * 1.0 -> "0x1.0000000000000p+0", -0.0 -> "-0x0.0p+0",
 * 5e-324 -> "0x0.0000000000001p-1022", inf -> "inf", -inf -> "-inf",
 * any NaN -> "nan".  Always 13 hex digits after the point for non-zero
 * finite x (unlike C's %a).  Returns the length written (without NUL). */
size_t dp_py_float_hex(double x, char out[DP_PY_FLOAT_HEX_SIZE]);

/* vector_sha: sha256 hex of the concatenation of dp_py_float_hex(v[i]).
 * The values must be the doubles Python would have seen, i.e. the JSON
 * numbers parsed with correct rounding (strtod / jansson), never a float32
 * round trip.  DP_ERR_RETRYABLE only if OpenSSL cannot allocate. */
dp_err dp_vector_sha256(const double *v, size_t n, char out[DP_SHA256_HEX_SIZE]);

#endif

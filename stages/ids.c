/*
 * ids: UUIDv5 chunk ids, SHA-256 content hashes, Python-compatible text
 * normalization and float.hex().  See ids.h for the contracts.
 *
 * Design notes:
 * - Digests stream their input through one EVP_MD_CTX, so hashing a
 *   normalized 10 MB document or a chunk-id name needs no copy of it.
 * - Whitespace tests follow Python's str.isspace() on UTF-8 bytes (ids.h).
 *   UTF-8 is self-synchronising, so a whitespace encoding found next to a
 *   boundary is always a whole character, scanning forwards or backwards.
 * - float.hex() is done on the IEEE-754 bits: for a normal number the
 *   13 digits are the stored mantissa and the exponent is unbiased; for a
 *   subnormal CPython prints 0x0.<mantissa>p-1022.  That is exactly what
 *   CPython's frexp/ldexp loop in float_hex() produces.
 */
#include "ids.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

const uint8_t DP_CHUNK_ID_NAMESPACE[16] = {
    0x6c, 0x8a, 0x1e, 0x6e, 0x1f, 0x0b, 0x4a, 0xa8,
    0x9f, 0x0a, 0x1a, 0x7c, 0x2e, 0x6f, 0x2b, 0x42,
};

static const char HEX[] = "0123456789abcdef";

static void hex_encode(const unsigned char *bytes, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = HEX[bytes[i] >> 4];
        out[2 * i + 1] = HEX[bytes[i] & 0x0f];
    }
    out[2 * n] = '\0';
}

/* ---- Whitespace ---------------------------------------------------------- */

static int is_ascii_space(unsigned char c)
{
    return (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20);
}

/* Length of the whitespace character starting at p (avail bytes readable),
 * or 0 if p does not start one. */
static size_t space_len_at(const unsigned char *p, size_t avail)
{
    if (is_ascii_space(p[0]))
        return 1;
    if (avail >= 2 && p[0] == 0xc2 && (p[1] == 0x85 || p[1] == 0xa0))
        return 2;                                   /* U+0085, U+00A0 */
    if (avail < 3)
        return 0;
    if (p[0] == 0xe1)
        return p[1] == 0x9a && p[2] == 0x80 ? 3 : 0;  /* U+1680 */
    if (p[0] == 0xe3)
        return p[1] == 0x80 && p[2] == 0x80 ? 3 : 0;  /* U+3000 */
    if (p[0] != 0xe2)
        return 0;
    if (p[1] == 0x80)                               /* U+2000-200A, 2028, 2029, 202F */
        return (p[2] >= 0x80 && p[2] <= 0x8a) || p[2] == 0xa8 || p[2] == 0xa9 ||
               p[2] == 0xaf ? 3 : 0;
    return p[1] == 0x81 && p[2] == 0x9f ? 3 : 0;    /* U+205F */
}

/* Length of the whitespace character ending just before end (avail bytes
 * readable before it), or 0. */
static size_t space_len_before(const unsigned char *end, size_t avail)
{
    if (is_ascii_space(end[-1]))
        return 1;
    if (avail >= 2 && space_len_at(end - 2, 2) == 2)
        return 2;
    if (avail >= 3 && space_len_at(end - 3, 3) == 3)
        return 3;
    return 0;
}

size_t dp_text_rstrip_len(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n;
    while (len > 0 && (n = space_len_before(p + len, len)) > 0)
        len -= n;
    return len;
}

const char *dp_text_strip(const char *s, size_t len, size_t *out_len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t start = 0, n;
    while (start < len && (n = space_len_at(p + start, len - start)) > 0)
        start += n;
    *out_len = dp_text_rstrip_len(s + start, len - start);
    return s + start;
}

/* ---- Normalization ----------------------------------------------------- */

/* Walks the normalized text as a sequence of byte ranges of the input and
 * hands each maximal contiguous run to sink(); a run only breaks where rstrip
 * removed bytes, so clean text is a single call. */
typedef void (*span_sink)(void *ctx, const char *p, size_t n);

static void normalize_spans(const char *in, size_t len, span_sink sink, void *ctx)
{
    size_t body_len;
    const char *pos = dp_text_strip(in, len, &body_len);
    const char *end = pos + body_len;
    const char *run = pos, *run_end = pos;

    while (body_len > 0) {
        const char *nl = memchr(pos, '\n', (size_t)(end - pos));
        const char *line_end = nl ? nl : end;
        size_t keep = dp_text_rstrip_len(pos, (size_t)(line_end - pos));

        run_end = pos + keep;               /* invariant: the run ended at pos */
        if (!nl)
            break;
        if (run_end != nl) {                /* rstrip dropped bytes before '\n' */
            if (run_end > run)
                sink(ctx, run, (size_t)(run_end - run));
            run = nl;
        }
        run_end = nl + 1;                   /* the '\n' joins the run */
        pos = nl + 1;
    }
    if (run_end > run)
        sink(ctx, run, (size_t)(run_end - run));
}

struct copy_sink { char *out; size_t n; };

static void copy_span(void *ctx, const char *p, size_t n)
{
    struct copy_sink *c = ctx;
    memmove(c->out + c->n, p, n);           /* may overlap when in-place */
    c->n += n;
}

size_t dp_normalize_text(const char *in, size_t len, char *out)
{
    struct copy_sink c = { out, 0 };
    if (!in || len == 0)
        return 0;
    normalize_spans(in, len, copy_span, &c);
    return c.n;
}

struct digest_sink { EVP_MD_CTX *md; int ok; };

static void digest_span(void *ctx, const char *p, size_t n)
{
    struct digest_sink *d = ctx;
    if (d->ok && EVP_DigestUpdate(d->md, p, n) != 1)
        d->ok = 0;
}

/* ---- SHA-256 ------------------------------------------------------------ */

static dp_err digest_final_hex(EVP_MD_CTX *md, char *out)
{
    unsigned char bytes[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_DigestFinal_ex(md, bytes, &n) != 1)
        return DP_ERR_RETRYABLE;
    hex_encode(bytes, n, out);
    return DP_OK;
}

dp_err dp_sha256_hex(const void *data, size_t len, char out[DP_SHA256_HEX_SIZE])
{
    unsigned char bytes[32];
    if (EVP_Digest(data, len, bytes, NULL, EVP_sha256(), NULL) != 1)
        return DP_ERR_RETRYABLE;
    hex_encode(bytes, sizeof bytes, out);
    return DP_OK;
}

dp_err dp_parsed_sha256(const char *content, size_t len,
                        char out[DP_SHA256_HEX_SIZE], char *err, size_t errlen)
{
    size_t kept = 0;
    if (content && len > 0)
        dp_text_strip(content, len, &kept);
    if (kept == 0)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "Parsed content is empty");

    struct digest_sink d = { EVP_MD_CTX_new(), 1 };
    dp_err rc = DP_ERR_RETRYABLE;
    if (d.md && EVP_DigestInit_ex(d.md, EVP_sha256(), NULL) == 1) {
        normalize_spans(content, len, digest_span, &d);
        if (d.ok)
            rc = digest_final_hex(d.md, out);
    }
    EVP_MD_CTX_free(d.md);
    if (rc != DP_OK)
        return dp_errf(rc, err, errlen, "sha256 of parsed content failed in OpenSSL");
    return DP_OK;
}

/* ---- UUIDs ------------------------------------------------------------- */

void dp_uuid_format(const uint8_t uuid[16], char out[DP_UUID_STR_SIZE])
{
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = HEX[uuid[i] >> 4];
        *o++ = HEX[uuid[i] & 0x0f];
    }
    *o = '\0';
}

void dp_uuid4(char out[DP_UUID_STR_SIZE])
{
    uint8_t b[16];
    if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t t = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
        uint64_t p = (uint64_t)getpid() << 40 ^ t;
        memcpy(b, &t, 8);
        memcpy(b + 8, &p, 8);
    }
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    dp_uuid_format(b, out);
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int dp_uuid_parse(const char *text, uint8_t out[16])
{
    int b = 0;
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return -1;
            continue;
        }
        int hi = hex_value(text[i]);
        int lo = hi < 0 ? -1 : hex_value(text[++i]);
        if (lo < 0)
            return -1;
        out[b++] = (uint8_t)(hi << 4 | lo);
    }
    return text[36] == '\0' ? 0 : -1;
}

/* SHA-1 over ns and then each part; sets the version and variant bits. */
static dp_err uuid5_parts(const uint8_t ns[16], const char *const *parts,
                          const size_t *lens, size_t nparts,
                          char out[DP_UUID_STR_SIZE])
{
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha1(), NULL) == 1 &&
             EVP_DigestUpdate(md, ns, 16) == 1;
    for (size_t i = 0; ok && i < nparts; i++)
        ok = EVP_DigestUpdate(md, parts[i], lens[i]) == 1;
    ok = ok && EVP_DigestFinal_ex(md, digest, &n) == 1;
    EVP_MD_CTX_free(md);
    if (!ok)
        return DP_ERR_RETRYABLE;

    uint8_t u[16];
    memcpy(u, digest, 16);
    u[6] = (uint8_t)((u[6] & 0x0f) | 0x50);     /* version 5 */
    u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);     /* RFC 4122 variant */
    dp_uuid_format(u, out);
    return DP_OK;
}

dp_err dp_uuid5(const uint8_t ns[16], const char *name, size_t len,
                char out[DP_UUID_STR_SIZE])
{
    return uuid5_parts(ns, &name, &len, 1, out);
}

dp_err dp_chunk_id(const char *document_id, const char *chunker_name,
                   const char *chunker_version, uint32_t ord,
                   char out[DP_UUID_STR_SIZE], char *err, size_t errlen)
{
    uint8_t doc[16];
    char doc_text[DP_UUID_STR_SIZE], ord_text[16];

    if (!chunker_name || !chunker_version)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "chunk id for document %.64s: no chunker name or version",
                       document_id ? document_id : "(null)");
    if (!document_id || dp_uuid_parse(document_id, doc) != 0)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "chunk id: document_id '%.64s' is not a UUID",
                       document_id ? document_id : "(null)");
    dp_uuid_format(doc, doc_text);
    snprintf(ord_text, sizeof ord_text, "%" PRIu32, ord);

    const char *parts[] = { doc_text, ":", chunker_name, ":", chunker_version, ":", ord_text };
    size_t lens[] = { 36, 1, strlen(chunker_name), 1, strlen(chunker_version), 1,
                      strlen(ord_text) };
    if (uuid5_parts(DP_CHUNK_ID_NAMESPACE, parts, lens, 7, out) != DP_OK)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                       "chunk id for document %s: SHA-1 failed in OpenSSL", doc_text);
    return DP_OK;
}

/* ---- float.hex() and vector_sha ----------------------------------------- */

size_t dp_py_float_hex(double x, char out[DP_PY_FLOAT_HEX_SIZE])
{
    uint64_t bits;
    memcpy(&bits, &x, sizeof bits);
    int negative = (int)(bits >> 63);
    unsigned exp_field = (unsigned)(bits >> 52) & 0x7ff;
    uint64_t mantissa = bits & ((UINT64_C(1) << 52) - 1);
    char *o = out;

    if (exp_field == 0x7ff) {               /* repr(): "nan" for every NaN */
        const char *s = mantissa ? "nan" : negative ? "-inf" : "inf";
        size_t n = strlen(s);
        memcpy(out, s, n + 1);
        return n;
    }
    if (negative)
        *o++ = '-';
    *o++ = '0';
    *o++ = 'x';
    if (exp_field == 0 && mantissa == 0) {
        memcpy(o, "0.0p+0", 7);
        return (size_t)(o - out) + 6;
    }
    *o++ = exp_field ? '1' : '0';           /* subnormals: 0x0.<m>p-1022 */
    *o++ = '.';
    /* 13 hex digits: the top nibble, then six bytes two digits at a time
     * (vector_sha formats 1536 of these per vector). */
    static const char pairs[] =
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
        "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
        "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
        "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
        "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
        "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
        "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
        "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
    *o++ = HEX[(mantissa >> 48) & 0xf];
    if ((mantissa & 0xfffffff) == 0) {
        /* A float32 widened (every vector element): the last seven digits
         * are zeros. */
        memcpy(o, pairs + 2 * ((mantissa >> 40) & 0xff), 2);
        memcpy(o + 2, pairs + 2 * ((mantissa >> 32) & 0xff), 2);
        o[4] = HEX[(mantissa >> 28) & 0xf];
        memcpy(o + 5, "0000000", 7);
        o += 12;
    } else {
        for (int shift = 40; shift >= 0; shift -= 8, o += 2)
            memcpy(o, pairs + 2 * ((mantissa >> shift) & 0xff), 2);
    }
    int e = exp_field ? (int)exp_field - 1023 : -1022;
    *o++ = 'p';
    *o++ = e < 0 ? '-' : '+';
    unsigned mag = (unsigned)(e < 0 ? -e : e);
    if (mag >= 1000)
        *o++ = (char)('0' + mag / 1000);
    if (mag >= 100)
        *o++ = (char)('0' + mag / 100 % 10);
    if (mag >= 10)
        *o++ = (char)('0' + mag / 10 % 10);
    *o++ = (char)('0' + mag % 10);
    *o = '\0';
    return (size_t)(o - out);
}

dp_err dp_vector_sha256(const double *v, size_t n, char out[DP_SHA256_HEX_SIZE])
{
    char buf[4096];
    size_t used = 0;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    int ok = md && EVP_DigestInit_ex(md, EVP_sha256(), NULL) == 1;

    for (size_t i = 0; ok && i < n; i++) {
        if (sizeof buf - used < DP_PY_FLOAT_HEX_SIZE) {
            ok = EVP_DigestUpdate(md, buf, used) == 1;
            used = 0;
        }
        used += dp_py_float_hex(v[i], buf + used);
    }
    ok = ok && EVP_DigestUpdate(md, buf, used) == 1;
    dp_err rc = ok ? digest_final_hex(md, out) : DP_ERR_RETRYABLE;
    EVP_MD_CTX_free(md);
    return rc;
}

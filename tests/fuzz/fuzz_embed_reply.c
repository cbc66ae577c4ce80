/*
 * fuzz_embed_reply: what the embeddings client makes of a 2xx reply body
 * (dp_embed_client_parse in stages/embed_client.c: the cut of base64
 * "embedding" strings out of the reply, jansson on the rest, base64 float32
 * decoding, indexes, dimensions, vector_sha).
 *
 * Input: [client][n][body...].  client picks one of six clients made once,
 * with embed_dim 1, 2, 3, 4, 8 or 16 (never contacted: parsing needs no
 * server); n % 9 is the number of inputs the request had.
 *
 * What must hold, besides no crash, leak or undefined behaviour: the
 * outcome is the contract of embed_client.h, computed here a second way,
 * from the reply as jansson alone reads it with a strict base64 decoder:
 *   - a body that is not JSON is DP_ERR_RETRYABLE;
 *   - a JSON reply that is not n vectors of embed_dim numbers (a "data"
 *     array of n items, each with a distinct "index" in [0, n) or none, i.e.
 *     its position, and an "embedding" that is an array of numbers or the
 *     base64 of little-endian float32s) is DP_ERR_PERMANENT;
 *   - otherwise DP_OK, with exactly those vectors (as float32) at their
 *     indexes, and each vector_sha the dp_vector_sha256 of the values as
 *     sent.
 * On any failure the job holds no vectors and says why, in valid UTF-8
 * without control characters (the message goes to PostgreSQL).
 */
#include <math.h>
#include <string.h>

#include <jansson.h>

#include "embed_client.h"
#include "ids.h"
#include "support_fuzz.h"

#define MAX_N 8
#define MAX_DIM 16

static const int dims[] = {1, 2, 3, 4, 8, 16};
#define NCLIENTS (sizeof(dims) / sizeof(dims[0]))
static dp_embed_client *clients[NCLIENTS];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < NCLIENTS; i++) {
        dp_config cfg;
        char err[256];
        memset(&cfg, 0, sizeof(cfg));
        cfg.embed_url = "http://127.0.0.1:9";
        cfg.embed_dim = dims[i];
        cfg.embed_inflight = 1;
        cfg.embed_rpm = 1000;
        cfg.embed_tpm = 1000000;
        cfg.embed_timeout_ms = 1000;
        cfg.breaker_threshold = 5;
        cfg.breaker_reset_ms = 60000;
        FUZZ_CHECK(dp_embed_client_new(&cfg, &clients[i], err, sizeof(err)) == DP_OK, err);
    }
    return 0;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* RFC 4648 base64 with padding: groups of four, '=' only as the last one or
 * two characters.  Writes at most cap bytes; returns the decoded length, or
 * -1 if text is not base64 or decodes to more than cap bytes. */
static long strict_base64(const char *text, size_t len, uint8_t *out, size_t cap)
{
    if (len % 4)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            if (text[i + k] == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
            } else if (pad || (v[k] = b64_value(text[i + k])) < 0) {
                return -1;
            }
        }
        uint32_t bits = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 |
                        (uint32_t)v[3];
        for (int k = 0; k < 3 - pad; k++) {
            if (n == cap)
                return -1;
            out[n++] = (uint8_t)(bits >> (16 - 8 * k));
        }
    }
    return (long)n;
}

/* The expected outcome; on DP_OK the vectors (float32) and shas. */
static dp_err expected(const char *body, size_t len, size_t n, size_t dim, float *vec,
                       char *shas)
{
    json_t *root = json_loadb(body, len, 0, NULL);
    if (!root)
        return DP_ERR_RETRYABLE;
    dp_err rc = DP_ERR_PERMANENT;
    unsigned char seen[MAX_N] = {0};
    double row[MAX_DIM];
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data) || json_array_size(data) != n)
        goto out;
    for (size_t i = 0; i < n; i++) {
        json_t *item = json_array_get(data, i);
        json_t *jindex = json_object_get(item, "index");
        json_int_t idx = !jindex ? (json_int_t)i
                         : json_is_integer(jindex) ? json_integer_value(jindex) : -1;
        if (idx < 0 || idx >= (json_int_t)n || seen[idx])
            goto out;
        seen[idx] = 1;
        json_t *emb = json_object_get(item, "embedding");
        if (json_is_array(emb)) {
            if (json_array_size(emb) != dim)
                goto out;
            for (size_t k = 0; k < dim; k++) {
                json_t *x = json_array_get(emb, k);
                if (!json_is_number(x))
                    goto out;
                row[k] = json_number_value(x);
            }
        } else if (json_is_string(emb)) {
            uint8_t raw[4 * MAX_DIM];
            long got = strict_base64(json_string_value(emb), json_string_length(emb), raw,
                                     sizeof(raw));
            if (got != (long)(4 * dim))
                goto out;
            for (size_t k = 0; k < dim; k++) {
                uint32_t u = (uint32_t)raw[4 * k] | (uint32_t)raw[4 * k + 1] << 8 |
                             (uint32_t)raw[4 * k + 2] << 16 | (uint32_t)raw[4 * k + 3] << 24;
                float f;
                memcpy(&f, &u, sizeof(f));
                row[k] = f;
            }
        } else {
            goto out;
        }
        FUZZ_CHECK(dp_vector_sha256(row, dim, shas + (size_t)idx * DP_SHA256_HEX_SIZE) ==
                       DP_OK,
                   "vector sha");
        for (size_t k = 0; k < dim; k++)
            vec[(size_t)idx * dim + k] = (float)row[k];
    }
    rc = DP_OK;
out:
    json_decref(root);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_in in = {data, size};
    size_t which = fuzz_byte(&in) % NCLIENTS;
    size_t n = fuzz_byte(&in) % (MAX_N + 1), dim = (size_t)dims[which];
    static const char *const texts[MAX_N] = {"a", "b", "c", "d", "e", "f", "g", "h"};
    dp_embed_job job;
    memset(&job, 0, sizeof(job));
    job.texts = texts;
    job.n = n;
    job.http_status = 200;

    dp_err rc = dp_embed_client_parse(clients[which], &job, (const char *)in.p, in.n);
    FUZZ_CHECK(rc == job.result, "result not stored in the job");
    FUZZ_CHECK(rc == DP_OK || rc == DP_ERR_RETRYABLE || rc == DP_ERR_PERMANENT,
               "neither ok, retryable nor permanent");

    float want[MAX_N * MAX_DIM];
    char shas[MAX_N * DP_SHA256_HEX_SIZE];
    dp_err expect = expected((const char *)in.p, in.n, n, dim, want, shas);
    if (rc != expect)
        fprintf(stderr, "parse: %s (%s), expected %s\n", dp_err2str(rc), job.error,
                dp_err2str(expect));
    FUZZ_CHECK(rc == expect, "outcome differs from the contract");
    if (rc == DP_OK) {
        FUZZ_CHECK(job.vectors && job.shas && job.dim == (int)dim, "ok without vectors");
        FUZZ_CHECK(memcmp(job.vectors, want, n * dim * sizeof(float)) == 0,
                   "vectors differ from the reply's");
        FUZZ_CHECK(memcmp(job.shas, shas, n * DP_SHA256_HEX_SIZE) == 0,
                   "vector_sha differs");
    } else {
        FUZZ_CHECK(!job.vectors && !job.shas && job.error[0], "failed with vectors or no why");
        FUZZ_CHECK(fuzz_utf8_message(job.error, strlen(job.error)),
                   "message is not valid UTF-8");
    }
    free(job.vectors);
    free(job.shas);
    return 0;
}

/*
 * embed_client: the OpenAI-compatible embeddings client.
 *
 * One libcurl multi handle and a pool of up to embed_inflight easy handles
 * live as long as the client, so many requests are in flight at once over
 * kept-alive connections that later requests reuse.  Each job is one
 * request: POST {embed_url}/v1/embeddings {model, input:[texts],
 * encoding_format: embed_encoding (base64 by default)}, with
 * "Authorization: Bearer <embed_api_key>"
 * when the key is set.
 *
 * The client never retries (the stage runtime owns retries and backoff).  It
 * does three things around each request:
 *  - rate limit: embed_rpm requests and embed_tpm estimated tokens per
 *    sliding minute (ratelimit.h).  Tokens are estimated as the sum over the
 *    texts of dp_embed_estimate_tokens (the chunker's conservative estimate,
 *    tokens.h), at least 1 per request; the original
 *    client's TPM window counted a flat ~100 per text, which overcounts short
 *    chunks 4x.  A full window makes jobs wait, never fail.  With
 *    embed_rate_scope shared (the default) the window is shared through
 *    PostgreSQL by every process calling the same service, model and key
 *    (dp_embed_rate_key), so N embed instances together keep to the limit.
 *  - circuit breaker "embeddings" (breaker.h): a refused call fails at once.
 *  - classification of the outcome (dp_embed_job.result):
 *      DP_OK            200 with n vectors of embed_dim numbers;
 *      DP_ERR_RETRYABLE timeouts, connection errors, 408, 429, 5xx, and a
 *                       200 whose body is not JSON at all (a proxy or a cut
 *                       connection, not the service's answer);
 *      DP_ERR_PERMANENT any other 4xx (empty input, bad key, bad model, an
 *                       input over the model's limit: "This model's maximum
 *                       context length is 8191 tokens..."), with the
 *                       service's message, and a
 *                       JSON answer of the wrong shape: wrong count, bad
 *                       index, a vector of another dimension ("dimension
 *                       mismatch"), a non-number.  Retrying cannot fix those.
 *    The breaker counts each retryable outcome as a failure and every other
 *    answer as a success: a 400 says the service is up, and one bad
 *    document must not stop all embedding for reset_ms.
 *
 * Vectors are parsed from "float" JSON arrays (numbers exactly as the JSON
 * gives them, integers included) or, if the server sends a string, from
 * base64 little-endian float32.
 *
 * Threads: dp_embed_run may be called from several threads; calls on one
 * client are serialised (a libcurl multi handle is single-threaded).  Use
 * one client per thread for parallel runs.  libcurl is initialised once per
 * process by the first dp_embed_client_new (curl_global_init).
 */
#ifndef DP_EMBED_CLIENT_H
#define DP_EMBED_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "config.h"
#include "dp_error.h"
#include "ratelimit.h"

typedef struct dp_embed_client dp_embed_client;

typedef struct dp_embed_job {
    const char *const *texts;   /* in: UTF-8, non-empty */
    size_t n;                   /* in */
    float *vectors;             /* out: n * dim float32s (what real[] stores), malloc'd by
                                   the client, caller frees */
    char *shas;                 /* out: n vector_sha hex strings, DP_SHA256_HEX_SIZE bytes
                                   apart, of the values exactly as the service sent them
                                   (dp_vector_sha256); malloc'd by the client, caller frees */
    int dim;                    /* out */
    dp_err result;              /* out: DP_OK, DP_ERR_RETRYABLE, DP_ERR_PERMANENT */
    int http_status;            /* out: 0 if no response */
    int64_t retry_after_ms;     /* out: from Retry-After (seconds or HTTP date), -1 if none;
                                   for jobs refused by an open breaker, the time until
                                   it lets a probe through */
    int not_sent;               /* out: 1 if a bounded run (dp_embed_run_until)
                                   ended before sending it: result
                                   DP_ERR_RETRYABLE, retry_after_ms when
                                   the rate limiter would admit it */
    char error[512];            /* out */
} dp_embed_job;

/* Reads embed_url, embed_model, embed_api_key, embed_dim, embed_inflight,
 * embed_rpm, embed_tpm, embed_rate_scope (with database_url),
 * embed_timeout_ms, breaker_threshold and breaker_reset_ms (copied: cfg may be freed afterwards). */
dp_err dp_embed_client_new(const dp_config *cfg, dp_embed_client **out, char *err,
                           size_t errlen);
void dp_embed_client_free(dp_embed_client *c);
dp_breaker *dp_embed_client_breaker(dp_embed_client *c);
dp_ratelimit *dp_embed_client_ratelimit(dp_embed_client *c);

/* The key the client's rate limit is shared under when embed_rate_scope is
 * shared: "embeddings <embed_url without password> <embed_model>
 * key:<16 hex digits of the API key's SHA-256, or none>".  -1 if it does
 * not fit outlen. */
int dp_embed_rate_key(const dp_config *cfg, char *out, size_t outlen);

/* Whether the service is up at all: GET {embed_url}/v1/models answers below
 * 500 (see http_alive.h).  Asked when every request of a run failed
 * retryably; a "no" counts as a failure on the breaker. */
int dp_embed_client_alive(dp_embed_client *c);

/* Runs every job, up to embed_inflight requests at once, honouring the rate
 * limiter and the breaker.  The out fields of every job are overwritten
 * (vectors and shas are NULL unless the job succeeds).  A job with n == 0
 * succeeds without a request (vectors and shas NULL).
 * Returns DP_OK when every job has its own result; returns DP_ERR_RETRYABLE
 * as soon as the breaker is open, without finishing the remaining jobs:
 * those not yet sent and those still in flight (abandoned) get result
 * DP_ERR_RETRYABLE, error "circuit breaker open ...".  Jobs already answered
 * keep their own results. */
dp_err dp_embed_run(dp_embed_client *c, dp_embed_job *jobs, size_t njobs);

/* dp_embed_run, calling done(job, arg) as soon as each job succeeds, while
 * the others are still in flight: the caller can store the vectors and free
 * them (setting job->vectors and job->shas to NULL) instead of holding every
 * job's vectors until the last answer. */
typedef void (*dp_embed_done_fn)(dp_embed_job *job, void *arg);
dp_err dp_embed_run_each(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                         dp_embed_done_fn done, void *arg);

/* dp_embed_run_each, also calling prepare(job, arg) just before a job's
 * request is built: it fills job->texts (job->n is already the count), so a
 * caller with many jobs holds the texts only of those in flight.  A prepare
 * that fails sets job->result and job->error itself and returns non-zero;
 * that job is not sent. */
typedef int (*dp_embed_prepare_fn)(dp_embed_job *job, void *arg);
dp_err dp_embed_run_hooks(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                          dp_embed_prepare_fn prepare, dp_embed_done_fn done,
                          void *arg);

/* dp_embed_run_hooks bounded in time: no request leaves at or after
 * deadline_ms (dp_clock_mono_ms), nor one the rate limiter would admit only
 * after it, so a run lasts until the deadline plus the answers then in
 * flight (embed_timeout_ms at most).  The jobs are sent in order; those not
 * sent, a suffix, get not_sent = 1.  deadline_ms 0: no bound. */
dp_err dp_embed_run_until(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                          dp_embed_prepare_fn prepare, dp_embed_done_fn done,
                          void *arg, int64_t deadline_ms);

/* What the client makes of a 2xx reply body for job (its vectors, shas and
 * result, as after a request).  Used for every reply; callable on its own
 * for replies kept elsewhere, and by the tests. */
dp_err dp_embed_client_parse(dp_embed_client *c, dp_embed_job *job, const char *body,
                             size_t len);

/* Counters since the client was made (for health output and tests). */
typedef struct dp_embed_stats {
    int64_t requests;     /* HTTP requests sent */
    int64_t connects;     /* new connections opened (the rest reused one) */
    int64_t ok, retryable, permanent; /* outcomes of the requests sent */
    int64_t refused;      /* jobs refused or abandoned by an open breaker */
    int64_t reply_bytes_peak; /* most reply bytes held at once (embed_buffer_kb
                                 bounds it, past one reply) */
} dp_embed_stats;
void dp_embed_client_stats(dp_embed_client *c, dp_embed_stats *out);

/* Estimated tokens of one job's request, as the rate limiter counts them. */
int64_t dp_embed_job_tokens(const dp_embed_job *job);

#endif

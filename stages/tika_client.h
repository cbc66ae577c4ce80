/*
 * tika_client: text out of documents, from an Apache Tika server.
 *
 * PUT {tika_url}/tika with the document's bytes and "Accept: text/plain";
 * Tika answers with the document's text in UTF-8.  dp_tika_parse_many sends
 * a batch's documents at once, at most `concurrency` in flight (libcurl
 * multi), so Tika works on several while the stage waits for all; its
 * easy handles and their connections live as long as the client and are
 * reused.  Runs on one client are serialised (a mutex).
 *
 * Outcomes:
 *   DP_OK             2xx: the text (possibly empty: a scan with no text layer);
 *   DP_ERR_PERMANENT  4xx, e.g. 422 (Tika could not parse it: corrupt,
 *                     encrypted, or not what its Content-Type says) or 415,
 *                     and a text longer than max_bytes;
 *   DP_ERR_RETRYABLE  5xx, 408, 429, timeouts, connection errors, any other
 *                     status, and an open circuit breaker (no request sent).
 * The breaker ("tika") counts each retryable outcome as a failure and each
 * answer about the document (2xx, 4xx, too long) as a success: a batch of
 * corrupt PDFs says nothing about Tika's health and must not stop parsing.
 * The client never retries (the stage runtime does).
 */
#ifndef DP_TIKA_CLIENT_H
#define DP_TIKA_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "breaker.h"
#include "config.h"
#include "dp_error.h"

typedef struct dp_tika_client dp_tika_client;

/* Reads tika_url, tika_timeout_ms, breaker_threshold and breaker_reset_ms
 * (copied: cfg may be freed afterwards). */
dp_err dp_tika_client_new(const dp_config *cfg, dp_tika_client **out, char *err,
                          size_t errlen);
void dp_tika_client_free(dp_tika_client *c);
dp_breaker *dp_tika_client_breaker(dp_tika_client *c);

/* Whether Tika is up at all: GET {tika_url}/tika answers below 500 (see
 * http_alive.h).  Asked after a retryable failure; a "no" counts as a
 * failure on the breaker. */
int dp_tika_client_alive(dp_tika_client *c);

/* PUT {tika_url}/tika with the document bytes, Content-Type (may be NULL:
 * Tika detects the type), Accept: text/plain.  On DP_OK *text is the UTF-8
 * text (malloc'd, NUL-terminated, caller frees) and *text_len its length;
 * otherwise *text is NULL and err says why.  max_bytes == 0: no limit. */
dp_err dp_tika_parse(dp_tika_client *c, const void *data, size_t len,
                     const char *content_type, size_t max_bytes, char **text,
                     size_t *text_len, char *err, size_t errlen);

/* One document of dp_tika_parse_many: what to send, and what came of it. */
typedef struct dp_tika_job {
    const void *data;         /* the document's bytes (not copied) */
    size_t len;
    const char *content_type; /* may be NULL: Tika detects the type */
    size_t max_bytes;         /* 0: no limit */
    int started;              /* out: 0 if never sent (the run's start window closed) */
    dp_err result;            /* out, when started: as from dp_tika_parse */
    char *text;               /* out on DP_OK: malloc'd, NUL-terminated, caller frees */
    size_t text_len;
    char error[512];          /* out otherwise: why */
} dp_tika_job;

/* Sends jobs[0..n) to Tika in order, at most `concurrency` in flight; each
 * as dp_tika_parse would (its breaker, its outcomes).  No job starts once
 * start_until_ms (dp_clock_mono_ms time; 0: no limit) has passed, except
 * the run's first, so a run always makes progress: such jobs keep
 * started = 0.  Jobs already in flight finish (each within the client's
 * timeout).  Returns when every started job has its result. */
void dp_tika_parse_many(dp_tika_client *c, dp_tika_job *jobs, size_t n, int concurrency,
                        int64_t start_until_ms);

/* Exposed for tests and fuzzing: what dp_tika_parse makes of one answer,
 * without a server.  status is the HTTP status, body[0..body_len) the reply
 * as libcurl would hand it to the client, in pieces of `piece` bytes (0:
 * one piece); len and content_type are the document's, for the message.
 * Outcomes, *text and err as from dp_tika_parse; the breaker is not told. */
dp_err dp_tika_reply(long status, const void *body, size_t body_len, size_t piece,
                     size_t len, const char *content_type, size_t max_bytes, char **text,
                     size_t *text_len, char *err, size_t errlen);

#endif

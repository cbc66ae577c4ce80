/*
 * breaker: a circuit breaker per external service (embeddings, Tika).
 *
 * closed     calls go ahead; each failure counts, each success resets the
 *            count; `threshold` consecutive failures open the breaker.
 * open       calls are refused for reset_ms (the original: 5 failures, 60 s).
 * half-open  once reset_ms has passed, exactly one call (the probe) may go
 *            ahead; its success closes the breaker, its failure re-opens it
 *            for another reset_ms.  A probe that never reports back (its
 *            caller died) stops blocking others after reset_ms: the next
 *            caller becomes the probe.
 *
 * What counts as a failure is the caller's decision; the service clients
 * count only outcomes that say the service is unwell (timeouts, lost
 * connections, 408/429/5xx), not answers that blame the request (4xx).
 *
 * Thread-safe (one mutex per breaker).  Time is CLOCK_MONOTONIC unless a test
 * injects its own clock.  State changes are logged as JSON lines.
 */
#ifndef DP_BREAKER_H
#define DP_BREAKER_H

#include <stdint.h>

typedef struct dp_breaker dp_breaker;

typedef enum { DP_BREAKER_CLOSED, DP_BREAKER_OPEN, DP_BREAKER_HALF_OPEN } dp_breaker_state;

#define DP_BREAKER_DEFAULT_THRESHOLD 5
#define DP_BREAKER_DEFAULT_RESET_MS 60000

/* service names the breaker in logs (copied).  threshold <= 0 and
 * reset_ms <= 0 take the defaults above.  NULL only if out of memory. */
dp_breaker *dp_breaker_new(const char *service, int threshold, int64_t reset_ms);
void dp_breaker_free(dp_breaker *b);

/* 1 if a call may go ahead now: closed, or half-open and no probe is in
 * flight (the caller becomes the probe).  0 while open. */
int dp_breaker_allow(dp_breaker *b);
/* Same, and *is_probe (if not NULL) says whether the caller became the
 * half-open probe, whose outcome decides the breaker's next state. */
int dp_breaker_allow_call(dp_breaker *b, int *is_probe);

void dp_breaker_success(dp_breaker *b); /* closes, count = 0 */
void dp_breaker_failure(dp_breaker *b); /* count++; opens at threshold; a failed
                                           probe re-opens for another reset_ms */

/* The state as of now: an open breaker whose reset_ms has passed reads as
 * half-open (that is the state the next dp_breaker_allow sees). */
dp_breaker_state dp_breaker_state_now(dp_breaker *b);
const char *dp_breaker_state_name(dp_breaker_state s); /* "closed", "open", "half_open" */
/* ms until a probe is allowed (0 if a call is allowed now). */
int64_t dp_breaker_retry_in_ms(dp_breaker *b);
/* Consecutive failures counted so far. */
int dp_breaker_failures(dp_breaker *b);
const char *dp_breaker_service(const dp_breaker *b);

/* Tests: replace the clock (NULL restores CLOCK_MONOTONIC). */
void dp_breaker_set_clock(dp_breaker *b, int64_t (*now_ms)(void *arg), void *arg);

#endif

/*
 * ratelimit: a client-side limit of requests and tokens per minute.
 *
 * A sliding-window log: every admitted request is remembered with its time
 * and token count for 60 s, and a new one is admitted only if the last 60 s
 * (including it) hold at most requests_per_min requests and tokens_per_min
 * tokens.  Unlike a token bucket, which may let through up to twice the
 * budget in the first minute, this never exceeds the limit in any 60 s
 * window, so a server that counts the same way (OpenAI, the original's
 * mock) never sees us over it.  The original client used fixed 60 s windows;
 * a sliding one avoids the double burst at a window edge.
 *
 * A request larger than the whole token budget is admitted once the window
 * holds no tokens at all, so it waits, but never forever.
 *
 * Memory grows with the requests admitted in the last minute (16 bytes
 * each), not with the configured limits.  Thread-safe (one mutex).
 *
 * Shared (dp_ratelimit_share): the same rule over a log in PostgreSQL
 * (upload_pipeline.rate_limit_take, schemas/sql/0015) that every process
 * using the same key consults, so that N processes together stay within the
 * limit.  The limiter keeps a connection of its own in autocommit, never
 * inside a caller's transaction, and holds no lock between calls.  While
 * PostgreSQL does not answer (within DP_RATELIMIT_SHARED_TIMEOUT_MS), the
 * local window decides alone, with this process's shared admissions in it,
 * and the shared log is tried again every DP_RATELIMIT_SHARED_RETRY_MS: a
 * process then keeps to the limit by itself, N of them to N times it.
 */
#ifndef DP_RATELIMIT_H
#define DP_RATELIMIT_H

#include <stdint.h>

typedef struct dp_ratelimit dp_ratelimit;

#define DP_RATELIMIT_WINDOW_MS 60000

/* A limit <= 0 means no limit on that count.  NULL only if out of memory. */
dp_ratelimit *dp_ratelimit_new(int requests_per_min, int tokens_per_min);
void dp_ratelimit_free(dp_ratelimit *rl);

/* 0 if a request of `tokens` may start now (and it is counted), else the ms
 * to wait before asking again (>= 1; nothing is counted).  A single request
 * larger than the per-minute token budget is allowed when the window holds
 * no tokens. */
int64_t dp_ratelimit_try(dp_ratelimit *rl, int tokens);

/* What the last 60 s hold (for health output); either pointer may be NULL. */
void dp_ratelimit_usage(dp_ratelimit *rl, int64_t *requests, int64_t *tokens);

#define DP_RATELIMIT_SHARED_TIMEOUT_MS 2000
#define DP_RATELIMIT_SHARED_RETRY_MS 5000

/* Shares the limit with every process that shares it under `key` in the
 * PostgreSQL database at conninfo (the connection is made at the first
 * dp_ratelimit_try).  key must not hold a secret: it is stored in rows.
 * -1 if out of memory. */
int dp_ratelimit_share(dp_ratelimit *rl, const char *conninfo, const char *key);

/* 1 if the last decision came from the shared log, 0 if from the local
 * window (not shared, or the fallback while PostgreSQL does not answer). */
int dp_ratelimit_shared_ok(dp_ratelimit *rl);

/* Tests: replace the clock (NULL restores CLOCK_MONOTONIC). */
void dp_ratelimit_set_clock(dp_ratelimit *rl, int64_t (*now_ms)(void *arg), void *arg);

#endif

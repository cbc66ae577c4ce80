/*
 * log: one JSON object per line on stderr.
 *
 * Every line carries ts, level, stage, instance and message; a dp_log_ctx adds the
 * record's correlation id, topic, partition and offset where one is at hand,
 * and a jansson object adds anything else.  Lines are written with a single
 * write() so lines from several threads never interleave.
 */
#ifndef DP_LOG_H
#define DP_LOG_H

#include <stdint.h>
#include <jansson.h>

typedef enum { DP_LOG_DEBUG, DP_LOG_INFO, DP_LOG_WARN, DP_LOG_ERROR } dp_log_level;

typedef struct dp_log_ctx {
    const char *stage;          /* overrides the process default if set */
    const char *correlation_id;
    const char *topic;
    int32_t partition;          /* -1: none */
    int64_t offset;             /* -1: none */
} dp_log_ctx;

#define DP_LOG_CTX_NONE ((dp_log_ctx){NULL, NULL, NULL, -1, -1})

/* Process-wide defaults; strings are copied. */
void dp_log_init(const char *stage, const char *instance, const char *level);
int dp_log_enabled(dp_log_level level);

void dp_log(dp_log_level level, const dp_log_ctx *ctx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Same, with extra fields; takes ownership of extra (may be NULL). */
void dp_logj(dp_log_level level, const dp_log_ctx *ctx, json_t *extra,
             const char *fmt, ...) __attribute__((format(printf, 4, 5)));

#endif

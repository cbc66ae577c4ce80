/* log: JSON-lines logging (see log.h). */
#include "log.h"
#include "redact.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char dp_log_stage[64] = "docpipe";
static char dp_log_instance[128] = "";
static dp_log_level dp_log_min = DP_LOG_INFO;

static const char *level_name(dp_log_level l)
{
    switch (l) {
    case DP_LOG_DEBUG: return "debug";
    case DP_LOG_INFO: return "info";
    case DP_LOG_WARN: return "warn";
    case DP_LOG_ERROR: return "error";
    }
    return "info";
}

void dp_log_init(const char *stage, const char *instance, const char *level)
{
    if (stage)
        snprintf(dp_log_stage, sizeof(dp_log_stage), "%s", stage);
    if (instance)
        snprintf(dp_log_instance, sizeof(dp_log_instance), "%s", instance);
    if (level) {
        for (int l = DP_LOG_DEBUG; l <= DP_LOG_ERROR; l++)
            if (strcmp(level, level_name((dp_log_level)l)) == 0)
                dp_log_min = (dp_log_level)l;
    }
}

int dp_log_enabled(dp_log_level level) { return level >= dp_log_min; }

static void vlog(dp_log_level level, const dp_log_ctx *ctx, json_t *extra,
                 const char *fmt, va_list ap)
{
    if (!dp_log_enabled(level)) {
        json_decref(extra);
        return;
    }
    char msg[2048];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    dp_redact(msg); /* secrets never reach a log (redact.h) */

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char when[64];
    snprintf(when, sizeof(when), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);

    json_t *o = json_object();
    json_object_set_new(o, "ts", json_string(when));
    json_object_set_new(o, "level", json_string(level_name(level)));
    json_object_set_new(o, "stage", json_string(ctx && ctx->stage ? ctx->stage
                                                                  : dp_log_stage));
    json_object_set_new(o, "instance", json_string(dp_log_instance));
    json_object_set_new(o, "message", json_string(msg));
    if (ctx) {
        if (ctx->correlation_id)
            json_object_set_new(o, "correlation_id",
                                json_string(ctx->correlation_id));
        if (ctx->topic)
            json_object_set_new(o, "topic", json_string(ctx->topic));
        if (ctx->partition >= 0)
            json_object_set_new(o, "partition", json_integer(ctx->partition));
        if (ctx->offset >= 0)
            json_object_set_new(o, "offset", json_integer(ctx->offset));
    }
    if (extra) {
        json_object_update(o, extra);
        json_decref(extra);
    }
    char *line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!line)
        return;
    dp_redact(line); /* ...nor through the extra fields */
    size_t len = strlen(line);
    line[len] = '\n'; /* the NUL becomes the newline: one write() */
    ssize_t w = write(STDERR_FILENO, line, len + 1);
    (void)w;
    free(line);
}

void dp_log(dp_log_level level, const dp_log_ctx *ctx, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, ctx, NULL, fmt, ap);
    va_end(ap);
}

void dp_logj(dp_log_level level, const dp_log_ctx *ctx, json_t *extra,
             const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, ctx, extra, fmt, ap);
    va_end(ap);
}

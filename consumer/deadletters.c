/*
 * deadletters: a record that cannot be processed is recorded in
 * docpipe.dp_dead_letters (and the stage's own tables, through its hook)
 * in the batch's transaction, and published to the stage's dead-letter
 * topic with its context in headers and the attempt's id, like an output.
 */
#include "runtime_int.h"
#include "redact.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

dp_err dp_dlq_record(dp_runtime *rt, dp_slot *s, int64_t attempt, char *err,
                     size_t errlen)
{
    char ps[16], os[32], att[16], ts[32], ff[32], lf[32], ah[96];
    dp_kafka_attempt_header(rt, s, attempt, ah);
    snprintf(ps, sizeof(ps), "%d", s->rec.partition);
    snprintf(os, sizeof(os), "%" PRId64, s->rec.offset);
    snprintf(att, sizeof(att), "%d", s->rec.attempts);
    snprintf(ts, sizeof(ts), "%" PRId64, s->rec.timestamp_ms);
    snprintf(ff, sizeof(ff), "%" PRId64, s->first_failure_ms);
    snprintf(lf, sizeof(lf), "%" PRId64, s->last_failure_ms);
    /* The error goes into a row, a header and `dlq show`: no secret in it
     * (redact.h), whoever wrote it. dp_dlq_publish sends the same text. */
    dp_redact(s->error);
    const char *params[16] = {rt->group, s->rec.topic, ps, os, rt->stage->name,
        rt->stage->dlq_topic, s->rec.key, s->rec.value,
        s->rec.timestamp_ms >= 0 ? ts : NULL, att,
        dp_err2str(s->dlq_category), s->error ? s->error : "", ff, lf, s->corr, ah};
    int lens[16] = {0};
    int fmts[16] = {0};
    lens[6] = (int)s->rec.key_len;
    lens[7] = (int)s->rec.value_len;
    fmts[6] = fmts[7] = 1;
    if (!s->rec.key)
        params[6] = NULL;
    if (!s->rec.value)
        params[7] = NULL;
    PGresult *res = dp_pg_execp(rt->db,
        "INSERT INTO docpipe.dp_dead_letters (group_id, topic, partition,"
        " \"offset\", stage, dlq_topic, record_key, record_value, record_ts,"
        " attempts, category, error, first_failure, last_failure,"
        " correlation_id, attempt) VALUES ($1, $2, $3::int, $4::bigint, $5, $6,"
        " $7, $8, to_timestamp($9::bigint / 1000.0), $10::int, $11, $12,"
        " to_timestamp($13::bigint / 1000.0), to_timestamp($14::bigint / 1000.0),"
        " $15, $16)", 16, NULL, params, lens, fmts, 0);
    dp_err e = dp_pg_check(rt->db, res, PGRES_COMMAND_OK, "record dead letter",
                           err, errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}
/* The stage's own record of a dead letter runs under a savepoint: if it
 * fails for a reason of its own, the dead letter still goes out (and the
 * failure is logged) rather than stalling the partition on it. */
dp_err dp_dlq_hook(dp_runtime *rt, dp_slot *s, char *err,
                   size_t errlen)
{
    dp_err e = dp_pg_exec(rt->db, "SAVEPOINT dp_dead_letter", err, errlen);
    if (e)
        return e;
    e = rt->stage->dead_letter(rt->stage->state, rt->db, &s->rec,
                               s->dlq_category, s->error ? s->error : "", err,
                               errlen);
    if (e == DP_OK)
        return dp_pg_exec(rt->db, "RELEASE SAVEPOINT dp_dead_letter", err, errlen);
    if (e == DP_ERR_RETRYABLE)
        return e;
    dp_log_ctx ctx = dp_rt_slot_ctx(rt, s);
    dp_log(DP_LOG_ERROR, &ctx, "recording the dead letter in the stage's tables"
           " failed (dead-lettering anyway): %s", err);
    return dp_pg_exec(rt->db, "ROLLBACK TO SAVEPOINT dp_dead_letter", err, errlen);
}
static void iso_time(int64_t ms, char out[64])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ms % 1000));
}
dp_err dp_dlq_publish(dp_runtime *rt, dp_slot *s, int64_t attempt,
                      char *err, size_t errlen)
{
    char buf[64], ff[64], lf[64], ts[64], event[400], att[96];
    rd_kafka_headers_t *h = rd_kafka_headers_new(18);
    /* Like an output, a dead letter counts only if its attempt committed
     * (it is a row of dp_dead_letters then); its stream names the input. */
    dp_kafka_attempt_header(rt, s, attempt, att);
    dp_kafka_header_add(h, DP_HDR_ATTEMPT, att);
    snprintf(event, sizeof(event), "%s/%s/%d", rt->group, s->rec.topic,
             s->rec.partition);
    dp_kafka_header_add(h, HDR_STREAM, event);
    snprintf(event, sizeof(event), "%s/%s/%d/%" PRId64 ":dlq", rt->group,
             s->rec.topic, s->rec.partition, s->rec.offset);
    dp_kafka_header_add(h, HDR_EVENT, event);
    dp_kafka_header_add(h, "docpipe-stage", rt->stage->name);
    dp_kafka_header_add(h, "docpipe-group", rt->group);
    dp_kafka_header_add(h, "docpipe-original-topic", s->rec.topic);
    snprintf(buf, sizeof(buf), "%d", s->rec.partition);
    dp_kafka_header_add(h, "docpipe-original-partition", buf);
    snprintf(buf, sizeof(buf), "%" PRId64, s->rec.offset);
    dp_kafka_header_add(h, "docpipe-original-offset", buf);
    if (s->rec.timestamp_ms >= 0) {
        iso_time(s->rec.timestamp_ms, ts);
        dp_kafka_header_add(h, "docpipe-original-timestamp", ts);
    }
    if (s->rec.key)
        rd_kafka_header_add(h, "docpipe-original-key", -1, s->rec.key,
                            (ssize_t)s->rec.key_len);
    snprintf(buf, sizeof(buf), "%d", s->rec.attempts);
    dp_kafka_header_add(h, "docpipe-attempts", buf);
    dp_kafka_header_add(h, "docpipe-error-category", dp_err2str(s->dlq_category));
    dp_redact(s->error);
    dp_kafka_header_add(h, "docpipe-error-message", s->error ? s->error : "");
    iso_time(s->first_failure_ms, ff);
    iso_time(s->last_failure_ms, lf);
    dp_kafka_header_add(h, "docpipe-first-failure", ff);
    dp_kafka_header_add(h, "docpipe-last-failure", lf);
    dp_kafka_header_add(h, HDR_CORR, s->corr);
    return dp_kafka_produce(rt, rt->stage->dlq_topic, s->rec.key, s->rec.key_len,
                       s->rec.value, s->rec.value_len, h, err, errlen);
}

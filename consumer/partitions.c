/*
 * partitions: the input partitions an instance owns (claim, pause, resume,
 * seek) and what happens to them on a rebalance.
 *
 * An assignment claims the partitions in PostgreSQL (bumping their epoch)
 * and assigns them at the stored offsets; a revocation drops the batch
 * being built.  A record that fails retryably, or is deferred, halts its
 * partition: the records after it in the batch leave it, the partition is
 * paused and rewound to it, and resumed when due by a new assignment at it
 * (dp_part_resume_due).  Other resumes (after a batch-wide wait) are
 * followed by a seek to the offset expected next (dp_part_resume_at).  An
 * idle owner checks
 * its epochs now and then (a replay took the partition), and a position no
 * longer in the log resumes at the earliest record kept.
 */
#include "runtime_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

dp_part *dp_part_get(dp_runtime *rt, int32_t p)
{
    if (p >= rt->nparts) {
        int n = p + 1;
        rt->parts = realloc(rt->parts, (size_t)n * sizeof(dp_part));
        memset(rt->parts + rt->nparts, 0,
               (size_t)(n - rt->nparts) * sizeof(dp_part));
        for (int i = rt->nparts; i < n; i++) {
            rt->parts[i].retry_offset = -1;
            rt->parts[i].committed = -1;
            rt->parts[i].first_seen = -1;
            rt->parts[i].next_poll = -1;
            rt->parts[i].replay_until = -1;
        }
        rt->nparts = n;
    }
    return &rt->parts[p];
}
void dp_part_reset(dp_part *pt)
{
    for (int i = 0; i < pt->nmarks; i++)
        free(pt->marks[i].stream);
    free(pt->marks);
    memset(pt, 0, sizeof(*pt));
    pt->retry_offset = -1;
    pt->committed = -1;
    pt->first_seen = -1;
    pt->next_poll = -1;
    pt->replay_until = -1;
}
static void on_assign(dp_runtime *rt, rd_kafka_topic_partition_list_t *parts)
{
    int n = parts->cnt;
    dp_offset_claim *claims = calloc((size_t)(n ? n : 1), sizeof(*claims));
    for (int i = 0; i < n; i++)
        claims[i].partition = parts->elems[i].partition;
    char err[512];
    dp_err e;
    int64_t delay = 200;
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    /* Without a claim nothing may be processed, so insist (with backoff). */
    for (;;) {
        e = dp_rt_db_ensure(rt, err, sizeof(err));
        if (e == DP_OK)
            e = dp_offsets_claim(rt->db, rt->group, rt->stage->input_topic,
                                 rt->cfg->instance_id, claims, n, err,
                                 sizeof(err));
        for (int i = 0; e == DP_OK && i < n; i++)
            e = dp_dedup_load(rt, claims[i].partition, err, sizeof(err));
        if (e == DP_OK)
            break;
        dp_log(DP_LOG_WARN, &ctx, "claiming partitions failed, retrying in "
               "%" PRId64 " ms: %s", delay, err);
        for (int i = 0; i < n; i++)
            dp_part_reset(dp_part_get(rt, claims[i].partition));
        usleep((useconds_t)delay * 1000);
        if (delay < 5000)
            delay *= 2;
    }
    json_t *assigned = json_array();
    for (int i = 0; i < n; i++) {
        dp_part *pt = dp_part_get(rt, claims[i].partition);
        pt->assigned = 1;
        pt->epoch = claims[i].epoch;
        pt->committed = claims[i].next_offset;
        pt->first_seen = -1;
        pt->next_poll = -1;
        pt->retry_offset = -1;
        pt->paused_until_ms = 0;
        pt->replay_until = claims[i].replay_until;
        parts->elems[i].offset =
            claims[i].next_offset >= 0 ? claims[i].next_offset
            : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                         : RD_KAFKA_OFFSET_BEGINNING;
        json_array_append_new(assigned, json_pack("{s:i,s:I,s:I}",
            "partition", claims[i].partition, "offset",
            (json_int_t)claims[i].next_offset, "epoch",
            (json_int_t)claims[i].epoch));
    }
    free(claims);
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:o}", "partitions", assigned),
            "partitions assigned and claimed");
    DP_FAULT(rt->stage->name, "in-claim");
    pthread_mutex_lock(&rt->view_mu);
    rt->view.rebalances++;
    rt->view.joined = 1;
    pthread_mutex_unlock(&rt->view_mu);
    rt->assign_gen++;
    rt->last_epoch_check_ms = dp_rt_mono_ms();
    rd_kafka_assign(rt->consumer, parts);
    /* A pause outlives the assignment in librdkafka: partitions paused for
     * a batch-wide wait that a rebalance ended would never fetch again. */
    rd_kafka_resume_partitions(rt->consumer, parts);
}
static void on_revoke(dp_runtime *rt)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    if (rt->nslots)
        dp_log(DP_LOG_INFO, &ctx, "revoked: dropping %zu uncommitted records",
               rt->nslots);
    dp_rt_batch_clear(rt);
    for (int i = 0; i < rt->nparts; i++)
        dp_part_reset(&rt->parts[i]);
    rt->assign_gen++;
    rd_kafka_assign(rt->consumer, NULL);
}
void dp_part_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        on_assign(rt, parts);
    else
        on_revoke(rt);
}
/* Record s waits ms before it is tried again, its budget unspent: its
 * partition is paused and rewound to it, and the slots after it in the
 * partition leave this batch. */
void dp_part_defer_from(dp_runtime *rt, dp_slot *s, int64_t ms)
{
    dp_part *pt = dp_part_get(rt, s->rec.partition);
    if (pt->retry_offset != s->rec.offset) {
        pt->retry_offset = s->rec.offset;
        pt->retry_attempts = s->rec.attempts - 1;
    }
    pt->paused_until_ms = dp_rt_mono_ms() + ms;
    for (size_t k = 0; k < rt->nslots; k++) {
        dp_slot *o = &rt->slots[k];
        if (o->rec.partition == s->rec.partition && o->rec.offset >= s->rec.offset)
            o->state = RS_DROPPED;
    }
}
/* Assigns every partition we own again, at the offset its next record
 * must have: the retrying record for a waiting partition, which is paused
 * again; for the others the one after the last record polled (what was
 * polled is settled, or in the batch being built), else the committed
 * one.  An assignment discards whatever was fetched before it, which a
 * seek of a paused partition does not promise. */
static void rewind_all(dp_runtime *rt)
{
    rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_new(rt->nparts);
    rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int p = 0; p < rt->nparts; p++) {
        dp_part *pt = &rt->parts[p];
        if (!pt->assigned)
            continue;
        int64_t at = pt->paused_until_ms && pt->retry_offset >= 0 ? pt->retry_offset
                     : pt->next_poll >= 0 ? pt->next_poll
                     : pt->committed >= 0 ? pt->committed
                     : pt->first_seen >= 0 ? pt->first_seen
                     : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                                  : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(all, rt->stage->input_topic, p)->offset = at;
        if (pt->paused_until_ms) {
            pt->paused_by_assign = 1;
            rd_kafka_topic_partition_list_add(paused, rt->stage->input_topic, p);
            if (pt->paused_until_ms > 0)
                pt->paused_until_ms = -pt->paused_until_ms; /* negative: applied */
        }
    }
    rd_kafka_resp_err_t ke = rd_kafka_assign(rt->consumer, all);
    if (ke == RD_KAFKA_RESP_ERR_NO_ERROR && paused->cnt)
        ke = rd_kafka_pause_partitions(rt->consumer, paused);
    if (ke) {
        dp_log(DP_LOG_ERROR, NULL, "rewinding partitions for a retry failed: %s",
               rd_kafka_err2str(ke));
        rt->rejoin = 1;
    }
    rd_kafka_topic_partition_list_destroy(all);
    rd_kafka_topic_partition_list_destroy(paused);
}
void dp_part_refetch(dp_runtime *rt)
{
    /* A pause outlives an assignment: the running ones are resumed first
     * (before the assignment's ops, see dp_part_resume_due). */
    rd_kafka_topic_partition_list_t *run = dp_part_running(rt, RD_KAFKA_OFFSET_INVALID);
    rd_kafka_resume_partitions(rt->consumer, run);
    rd_kafka_topic_partition_list_destroy(run);
    rewind_all(rt);
}
/* Rewinds every partition whose record waits for a retry, and pauses it
 * (rewind_all). */
void dp_part_apply_deferrals(dp_runtime *rt)
{
    int any = 0;
    for (int p = 0; p < rt->nparts; p++)
        if (rt->parts[p].assigned && rt->parts[p].paused_until_ms > 0 &&
            rt->parts[p].retry_offset >= 0)
            any = 1;
    if (!any || rt->rejoin)
        return;
    rewind_all(rt);
}
/* The partitions assigned and running (not waiting for a record's retry),
 * each with the given offset. */
rd_kafka_topic_partition_list_t *dp_part_running(dp_runtime *rt, int64_t offset)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int p = 0; p < rt->nparts; p++)
        if (rt->parts[p].assigned && !rt->parts[p].paused_until_ms)
            rd_kafka_topic_partition_list_add(l, rt->stage->input_topic, p)->offset = offset;
    return l;
}
/*
 * Resumes the partitions in l, each at the offset given in l, or at the
 * one after the last record polled from it when that is negative.
 *
 * librdkafka resumes a partition at the offset after the last record the
 * application polled before the pause took effect.  Records polled (and
 * dropped, the partition being paused on our side) between the pause call
 * and that moment move this position past them: resumed plainly, the
 * partition would skip them, and a later commit would pass them by.  So
 * every resume is followed by a seek to the offset we expect next.
 */
void dp_part_resume_at(dp_runtime *rt, rd_kafka_topic_partition_list_t *l)
{
    /* A resume librdkafka does not carry out (the partition stays paused
     * there while we take it for running): what the stall watch
     * (dp_fetch_nudge) must catch. */
    if (!DP_FAULT(rt->stage->name, "lost-resume"))
        rd_kafka_resume_partitions(rt->consumer, l);
    rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(l->cnt);
    for (int i = 0; i < l->cnt; i++) {
        dp_part *pt = dp_part_get(rt, l->elems[i].partition);
        int64_t at = l->elems[i].offset >= 0 ? l->elems[i].offset
                     : pt->next_poll >= 0   ? pt->next_poll
                                            : pt->committed;
        if (pt->assigned && at >= 0) {
            rd_kafka_topic_partition_list_add(seek, rt->stage->input_topic,
                                              l->elems[i].partition)->offset = at;
            pt->next_poll = at;
        }
    }
    if (seek->cnt) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(rt->consumer, seek, 5000);
        for (int i = 0; !e && i < seek->cnt; i++) {
            dp_part *pt = dp_part_get(rt, seek->elems[i].partition);
            int by_assign = pt->paused_by_assign;
            pt->paused_by_assign = 0;
            /* A partition paused as it was assigned has nothing polled
             * past its assigned offset, which the seek only repeats; its
             * fetcher may still be starting (librdkafka answers
             * "Erroneous state"), and it resumes at that offset all the
             * same: no reason to rejoin the group. */
            if (by_assign && seek->elems[i].err == RD_KAFKA_RESP_ERR__STATE) {
                dp_log(DP_LOG_DEBUG, NULL, "resuming partition %d at its assigned"
                       " offset %" PRId64 " (seek: %s)", (int)seek->elems[i].partition,
                       seek->elems[i].offset, rd_kafka_err2str(seek->elems[i].err));
                continue;
            }
            if (seek->elems[i].err) {
                dp_log(DP_LOG_WARN, NULL, "resuming partition %d at offset %" PRId64
                       ": %s; rejoining the group", (int)seek->elems[i].partition,
                       seek->elems[i].offset, rd_kafka_err2str(seek->elems[i].err));
                rt->rejoin = 1;
            }
        }
        if (e) {
            dp_log(DP_LOG_WARN, NULL, "resuming partitions: %s; rejoining the group",
                   rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            rt->rejoin = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(seek);
}
/*
 * The partitions whose record's retry is due: resumed, then every
 * partition is assigned again (rewind_all), these at their retrying record.
 *
 * Not a resume and a seek after rewind_all's assignment.  librdkafka 2.0.2
 * serves an assignment on its own thread, which starts each partition with
 * ops of a new version; a resume this thread creates meanwhile can reach
 * the partition after them, is then taken for outdated and dropped without
 * a word, and the seek that follows succeeds: the partition stayed paused
 * for good (docs/reliability.md).  A deferral or a retry on any partition
 * re-assigns them all, so another partition's retry falling due just then
 * was enough.  Resumed before the assignment, the resume's op comes before
 * every op the assignment makes; a pause after it that is dropped the same
 * way (a partition still waiting) lets records through that fetch takes
 * for rewound and drops, and the next rewind_all assigns it afresh.
 */
void dp_part_resume_due(dp_runtime *rt)
{
    int64_t t = dp_rt_mono_ms();
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int p = 0; p < rt->nparts; p++) {
        dp_part *pt = &rt->parts[p];
        if (pt->paused_until_ms < 0 && -pt->paused_until_ms <= t) {
            pt->paused_until_ms = 0;
            pt->paused_by_assign = 0; /* no seek follows (dp_part_resume_at) */
            pt->next_poll = pt->retry_offset >= 0 ? pt->retry_offset : pt->committed;
            rd_kafka_topic_partition_list_add(l, rt->stage->input_topic, p);
        }
    }
    if (l->cnt && !rt->rejoin) {
        /* Fault point lost-resume: a resume librdkafka does not carry out
         * (the partition stays paused there while we take it for running),
         * what the stall watch (dp_fetch_nudge) must catch. */
        if (!DP_FAULT(rt->stage->name, "lost-resume"))
            rd_kafka_resume_partitions(rt->consumer, l);
        rewind_all(rt);
    }
    rd_kafka_topic_partition_list_destroy(l);
}
void dp_part_rejoin(dp_runtime *rt)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    dp_log(DP_LOG_WARN, &ctx, "rejoining the group to re-claim partitions");
    dp_rt_batch_clear(rt);
    rd_kafka_unsubscribe(rt->consumer);
    for (int i = 0; i < 20; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 50);
        if (m)
            rd_kafka_message_destroy(m);
    }
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, rt->stage->input_topic,
                                      RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rt->consumer, t);
    rd_kafka_topic_partition_list_destroy(t);
    rt->rejoin = 0;
}
/*
 * A partition's position is no longer in the log (auto.offset.reset is
 * "error", so librdkafka reports it instead of jumping): records were
 * deleted before this stage read them (retention, DeleteRecords), or the
 * topic was recreated shorter.  With offset_gap "earliest" the stage
 * resumes at the earliest record kept, logs the gap at WARN and writes it
 * into docpipe.dp_offset_gaps; with "fail" it stops with the error.
 */
void dp_part_out_of_range(dp_runtime *rt, int32_t p, const char *why)
{
    dp_part *pt = dp_part_get(rt, p);
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, p, -1};
    if (!pt->assigned)
        return;
    int64_t from = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
    int64_t lo = -1, hi = -1;
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
        rt->consumer, rt->stage->input_topic, p, &lo, &hi, 10000);
    if (ke) {
        dp_log(DP_LOG_WARN, &ctx, "offset %" PRId64 " is out of range (%s) and "
               "the log's bounds are unknown (%s); rejoining the group", from,
               why, rd_kafka_err2str(ke));
        rt->rejoin = 1;
        return;
    }
    if (strcmp(rt->cfg->offset_gap, "fail") == 0) {
        snprintf(rt->fatal_error, sizeof(rt->fatal_error),
                 "%s partition %d: stored offset %" PRId64 " is no longer in the"
                 " log (it holds %" PRId64 "..%" PRId64 "); records were deleted"
                 " before this stage read them (offset_gap=fail)",
                 rt->stage->input_topic, p, from, lo, hi - 1);
        rt->consumer_fatal = 1;
        return;
    }
    int64_t lost = from >= 0 && from < lo ? lo - from : 0;
    rt->stats.gaps += (uint64_t)lost;
    dp_logj(DP_LOG_WARN, &ctx, json_pack("{s:I,s:I,s:I,s:I}", "from",
            (json_int_t)from, "dp_part_resume_at", (json_int_t)lo, "log_end",
            (json_int_t)hi, "lost", (json_int_t)lost),
            "stored offset no longer in the log: resuming at the earliest record"
            " kept; the offsets between were never processed");
    char ps[16], fs[32], ts[32], err[512];
    snprintf(ps, sizeof(ps), "%d", p);
    snprintf(fs, sizeof(fs), "%" PRId64, from);
    snprintf(ts, sizeof(ts), "%" PRId64, lo);
    const char *params[6] = {rt->group, rt->stage->input_topic, ps, fs, ts,
                             rt->cfg->instance_id};
    if (dp_rt_db_ensure(rt, err, sizeof(err)) ||
        dp_pg_command(rt->db, "INSERT INTO docpipe.dp_offset_gaps (group_id,"
            " topic, partition, from_offset, to_offset, owner) VALUES ($1, $2,"
            " $3::int, $4::bigint, $5::bigint, $6)", 6, params,
            "record offset gap", err, sizeof(err)))
        dp_log(DP_LOG_WARN, &ctx, "the gap could not be recorded: %s", err);
    /* A partition whose fetch stopped on the error is not seekable in
     * librdkafka 2.0.2: the assignment is made again, this partition at lo
     * and every other at the offset it expects next (paused ones paused
     * again), which also restarts the fetch. */
    rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_new(rt->nparts);
    rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int q = 0; q < rt->nparts; q++) {
        dp_part *o = &rt->parts[q];
        if (!o->assigned)
            continue;
        int64_t at = q == p ? lo
                     : o->paused_until_ms && o->retry_offset >= 0 ? o->retry_offset
                     : o->next_poll >= 0 ? o->next_poll
                     : o->committed >= 0 ? o->committed
                     : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                                  : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(all, rt->stage->input_topic, q)->offset = at;
        if (o->paused_until_ms)
            rd_kafka_topic_partition_list_add(paused, rt->stage->input_topic, q);
    }
    rd_kafka_resp_err_t ae = rd_kafka_assign(rt->consumer, all);
    if (ae == RD_KAFKA_RESP_ERR_NO_ERROR && paused->cnt)
        ae = rd_kafka_pause_partitions(rt->consumer, paused);
    if (ae) {
        dp_log(DP_LOG_WARN, &ctx, "resuming at %" PRId64 " failed (%s); rejoining",
               lo, rd_kafka_err2str(ae));
        rt->rejoin = 1;
    }
    rd_kafka_topic_partition_list_destroy(all);
    rd_kafka_topic_partition_list_destroy(paused);
    pt->next_poll = lo;
    if (pt->first_seen < 0)
        pt->first_seen = lo;
}
/* An owner with nothing to commit would never notice that `docpipe
 * replay` (or anyone) took its partitions: while idle it compares its
 * epochs with the stored ones now and then, and rejoins if one moved. */
void dp_part_check_epochs(dp_runtime *rt)
{
    int64_t t = dp_rt_mono_ms();
    if (rt->nslots || t - rt->last_epoch_check_ms < EPOCH_CHECK_MS)
        return;
    rt->last_epoch_check_ms = t;
    int32_t parts[256];
    int64_t epochs[256];
    int n = 0;
    for (int p = 0; p < rt->nparts && n < 256; p++)
        if (rt->parts[p].assigned)
            parts[n++] = p;
    char err[512];
    if (n == 0 || dp_rt_db_ensure(rt, err, sizeof(err)) ||
        dp_offsets_epochs(rt->db, rt->group, rt->stage->input_topic, parts,
                          epochs, n, err, sizeof(err)))
        return;
    for (int i = 0; i < n; i++)
        if (epochs[i] != rt->parts[parts[i]].epoch) {
            dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic,
                              parts[i], -1};
            dp_log(DP_LOG_INFO, &ctx, "partition taken (epoch %" PRId64 " now, "
                   "ours %" PRId64 "): rejoining to claim it again", epochs[i],
                   rt->parts[parts[i]].epoch);
            rt->rejoin = 1;
            return;
        }
}

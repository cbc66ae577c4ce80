/*
 * runtime: the stage loop and the batch API (see runtime.h, stage.h and
 * docs/design.md).
 *
 * One thread drives one consumer, one producer and one PostgreSQL
 * connection.  Records are polled into a batch (fetch.c) until it holds
 * batch_max records or batch_wait_ms passed since its first record; then
 * process_batch() settles it: settle() runs the steps docs/design.md lists
 * ("One transaction per batch"), each in its room:
 *
 *   visibility.c   which records are acted on: upstream attempts decided,
 *                  copies skipped, the dedup marks;
 *   (the handler)  the stage's effects, passes until every record is ok;
 *   deadletters.c  dead letters recorded and published;
 *   offsets.c      the fenced offset move with the attempt's row;
 *   clients.c      outputs published with their headers, the producer;
 *   partitions.c   claims, pauses, resumes and seeks, rebalances, gaps;
 *   arena.c        the batch's bytes.
 *
 * A batch-wide retryable failure keeps the batch and waits (paused); a
 * batch-wide permanent one settles the records one at a time.
 */
#include "runtime_int.h"
#include "redact.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


size_t dp_batch_count(const dp_batch *b) { return b->n; }

dp_record *dp_batch_record(dp_batch *b, size_t i) { return &b->live[i]->rec; }

PGconn *dp_batch_db(dp_batch *b) { return b->rt->db; }

const char *dp_batch_instance(const dp_batch *b) { return b->rt->cfg->instance_id; }

const dp_config *dp_batch_config(const dp_batch *b) { return b->rt->cfg; }

void dp_batch_fail(dp_batch *b, size_t i, dp_err verdict, const char *fmt, ...)
{
    dp_slot *s = b->live[i];
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dp_redact(msg); /* it becomes a job's error and a dead letter's headers */
    s->verdict = verdict == DP_ERR_RETRYABLE ? DP_ERR_RETRYABLE
                                             : DP_ERR_PERMANENT;
    free(s->error);
    s->error = strdup(msg);
}

void dp_batch_defer(dp_batch *b, size_t i, int64_t ms, const char *fmt, ...)
{
    dp_slot *s = b->live[i];
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dp_redact(msg);
    s->verdict = DP_ERR_RETRYABLE;
    s->defer_ms = ms > 0 ? ms : 1;
    free(s->error);
    s->error = strdup(msg);
}

void dp_batch_leave(dp_batch *b, size_t i, int64_t ms)
{
    b->live[i]->leave_ms = ms > 0 ? ms : 1;
}

void dp_batch_retry_in(dp_batch *b, size_t i, int64_t ms)
{
    if (ms > b->live[i]->retry_min_ms)
        b->live[i]->retry_min_ms = ms;
}

void dp_batch_set_generation(dp_batch *b, size_t i, int64_t generation)
{
    b->live[i]->out_gen = generation;
}

void dp_batch_retry_after(dp_batch *b, int64_t ms)
{
    if (ms > b->rt->retry_hint_ms)
        b->rt->retry_hint_ms = ms;
}

void dp_batch_emit(dp_batch *b, size_t i, const char *topic, const void *key,
                   size_t key_len, const void *value, size_t value_len)
{
    dp_slot *s = b->live[i];
    dp_arena *a = &b->rt->outs;
    if (s->nouts == s->capouts) {
        size_t cap = s->capouts ? s->capouts * 2 : 2;
        dp_output *outs = dp_arena_alloc(a, cap * sizeof(dp_output));
        if (s->nouts)
            memcpy(outs, s->outs, s->nouts * sizeof(dp_output));
        s->outs = outs;
        s->capouts = cap;
    }
    dp_output *o = &s->outs[s->nouts++];
    size_t tlen = strlen(topic) + 1;
    char *mem = dp_arena_alloc(a, tlen + key_len + value_len);
    o->topic = memcpy(mem, topic, tlen);
    o->key = mem + tlen;
    if (key_len)
        memcpy(o->key, key, key_len);
    o->key_len = key_len;
    o->value = mem + tlen + key_len;
    if (value_len)
        memcpy(o->value, value, value_len);
    o->value_len = value_len;
}

/* Outputs live in rt->outs, which each handler pass resets. */
static void slot_clear_outputs(dp_slot *s)
{
    s->outs = NULL;
    s->nouts = s->capouts = 0;
}

static void slot_release(dp_runtime *rt, dp_slot *s)
{
    slot_clear_outputs(s);
    free(s->error);
    if (s->rec.decoded && rt->stage->free_decoded)
        rt->stage->free_decoded(rt->stage->state, s->rec.decoded);
    if (s->msg)
        rd_kafka_message_destroy(s->msg);
    s->error = NULL;
    s->rec.decoded = NULL;
    s->msg = NULL;
    s->data = NULL;
}

void dp_rt_batch_clear(dp_runtime *rt)
{
    for (size_t i = 0; i < rt->nslots; i++)
        slot_release(rt, &rt->slots[i]);
    rt->nslots = 0;
    dp_arena_reset(&rt->recs);
    dp_arena_reset(&rt->outs);
}

dp_err dp_rt_db_ensure(dp_runtime *rt, char *err, size_t errlen)
{
    if (rt->db && PQstatus(rt->db) == CONNECTION_OK)
        return DP_OK;
    if (rt->db) {
        PQreset(rt->db);
        if (PQstatus(rt->db) == CONNECTION_OK)
            return DP_OK;
        dp_pg_finish(rt->db);
        rt->db = NULL;
    }
    return dp_pg_connect_once(rt->cfg, rt->cfg->instance_id, &rt->db, err, errlen);
}

/* Moves the failures of one handler pass into slot states; returns 1 if any
 * record failed (so the pass must be rolled back and re-run). */
static int settle_failures(dp_runtime *rt, dp_batch *b)
{
    int any = 0;
    /* Records left by the handler (dp_batch_leave): a suffix of their
     * partition's records goes back to the partition, and the pass stands;
     * one left before a record that was handled cannot (that record's
     * offset could not be committed without it), so it is deferred and
     * the pass runs again. */
    for (size_t i = 0; i < b->n; i++) {
        dp_slot *s = b->live[i];
        if (s->leave_ms <= 0 || s->verdict != DP_OK)
            continue;
        int suffix = 1;
        for (size_t k = 0; k < b->n && suffix; k++) {
            dp_slot *o = b->live[k];
            suffix = !(o->rec.partition == s->rec.partition &&
                       o->rec.offset > s->rec.offset && o->leave_ms <= 0);
        }
        if (!suffix) {
            s->verdict = DP_ERR_RETRYABLE;
            s->defer_ms = s->leave_ms;
            free(s->error);
            s->error = strdup("left by the handler before a record it handled");
        }
    }
    for (size_t i = 0; i < b->n; i++) {
        dp_slot *s = b->live[i];
        if (s->leave_ms <= 0 || s->verdict != DP_OK || s->state == RS_DROPPED)
            continue;
        dp_log_ctx ctx = dp_rt_slot_ctx(rt, s);
        dp_log(DP_LOG_DEBUG, &ctx, "record left for a later pass (%" PRId64 " ms)",
               s->leave_ms);
        rt->stats.left++;
        dp_part_defer_from(rt, s, s->leave_ms);
    }
    for (size_t i = 0; i < b->n; i++)
        b->live[i]->leave_ms = 0;
    for (size_t i = 0; i < b->n; i++) {
        dp_slot *s = b->live[i];
        if (s->verdict == DP_OK)
            continue;
        any = 1;
        if (s->state == RS_DROPPED) {
            /* Behind an earlier failure of its partition: not settled now. */
            s->verdict = DP_OK;
            s->defer_ms = 0;
            continue;
        }
        dp_part *pt = dp_part_get(rt, s->rec.partition);
        dp_log_ctx ctx = dp_rt_slot_ctx(rt, s);
        int64_t t = dp_rt_now_ms();
        if (pt->retry_offset != s->rec.offset) {
            pt->retry_offset = s->rec.offset;
            pt->retry_attempts = 0;
            pt->first_failure_ms = t;
        }
        pt->retry_attempts = s->rec.attempts;
        pt->last_failure_ms = t;
        snprintf(pt->last_error, sizeof(pt->last_error), "%s",
                 s->error ? s->error : "");
        if (s->defer_ms > 0) {
            /* Not a failure of the record: wait, keep its budget. */
            pt->retry_attempts = s->rec.attempts - 1;
            dp_log(DP_LOG_DEBUG, &ctx, "record deferred %" PRId64 " ms: %s",
                   s->defer_ms, s->error ? s->error : "");
            dp_part_defer_from(rt, s, s->defer_ms);
        } else if (s->verdict == DP_ERR_RETRYABLE && s->rec.attempts <= rt->cfg->retry_max) {
            int64_t delay = dp_backoff_ms(rt->cfg->retry_base_ms,
                                          s->rec.attempts - 1,
                                          rt->cfg->retry_jitter, &rt->rand_state);
            if (s->retry_min_ms > delay)
                delay = s->retry_min_ms;
            pt->paused_until_ms = dp_rt_mono_ms() + delay;
            rt->stats.retries++;
            dp_logj(DP_LOG_WARN, &ctx, json_pack("{s:i,s:I,s:s}", "attempt",
                    s->rec.attempts, "retry_in_ms", (json_int_t)delay, "error",
                    s->error ? s->error : ""),
                    "record failed retryably; partition paused until retry");
            /* This record and everything after it in its partition wait. */
            for (size_t k = 0; k < rt->nslots; k++) {
                dp_slot *o = &rt->slots[k];
                if (o->rec.partition == s->rec.partition &&
                    o->rec.offset >= s->rec.offset)
                    o->state = RS_DROPPED;
            }
        } else {
            s->state = RS_DLQ;
            s->dlq_category = s->verdict == DP_ERR_RETRYABLE ? DP_ERR_RETRYABLE
                                                             : DP_ERR_PERMANENT;
            s->first_failure_ms = pt->first_failure_ms;
            s->last_failure_ms = t;
            if (s->verdict == DP_ERR_RETRYABLE) {
                char *msg = NULL;
                if (asprintf(&msg, "retries exhausted after %d attempts: %s",
                             s->rec.attempts, s->error ? s->error : "") > 0) {
                    free(s->error);
                    s->error = msg;
                }
            }
        }
        s->verdict = DP_OK;
        s->defer_ms = 0;
        s->retry_min_ms = 0;
    }
    return any;
}

/* The offset moves of slots [from, to): per partition, from the committed
 * position (under the claimed epoch) to after its last settled record. */
static dp_err plan_advance(dp_runtime *rt, size_t from, size_t to,
                           dp_offset_advance *adv, int cap, int *nadv,
                           char *err, size_t errlen)
{
    *nadv = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state == RS_DROPPED)
            continue;
        int k;
        for (k = 0; k < *nadv && adv[k].partition != s->rec.partition; k++)
            ;
        if (k == *nadv) {
            if (*nadv == cap)
                return dp_errf(DP_ERR_PERMANENT, err, errlen,
                               "more than %d partitions in one batch", cap);
            dp_part *pt = dp_part_get(rt, s->rec.partition);
            adv[k].partition = s->rec.partition;
            adv[k].epoch = pt->epoch;
            adv[k].expected = pt->committed;
            (*nadv)++;
        }
        adv[k].next_offset = s->rec.offset + 1;
    }
    return DP_OK;
}

/* Handler passes over the live slots of [from, to) until every one is ok
 * (failed records leave the pass, see settle_failures), inside an open
 * transaction on return (DP_OK), or the transaction rolled back. */
static dp_err handle_passes(dp_runtime *rt, dp_batch *b, size_t from, size_t to,
                            batch_result *result, char *err, size_t errlen)
{
    dp_err e;
    for (;;) {
        /* A pass starts afresh: outputs of an earlier pass (rolled back)
         * and of slots already settled (acknowledged) are not needed. */
        dp_arena_reset(&rt->outs);
        b->n = 0;
        for (size_t i = from; i < to; i++) {
            dp_slot *s = &rt->slots[i];
            slot_clear_outputs(s);
            s->verdict = DP_OK;
            if (s->state == RS_PENDING)
                b->live[b->n++] = s;
        }
        if ((e = dp_pg_exec(rt->db, "BEGIN", err, errlen)))
            return e;
        if (b->n == 0)
            return DP_OK;
        int64_t t_h = dp_rt_mono_ms();
        e = DP_FAULT(rt->stage->name, "batch-retry")
                ? dp_errf(DP_ERR_RETRYABLE, err, errlen, "fault point batch-retry")
                : rt->stage->handle(rt->stage->state, b, err, errlen);
        rt->t_handler += dp_rt_mono_ms() - t_h;
        if (e != DP_OK) {
            PQclear(PQexec(rt->db, "ROLLBACK"));
            rt->stats.rollbacks++;
            if (e == DP_ERR_RETRYABLE)
                return e;
            if (b->n > 1) {
                dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
                dp_log(DP_LOG_WARN, &ctx, "batch of %zu failed (%s); "
                       "retrying its records one at a time", b->n, err);
                *result = BATCH_SPLIT;
                return e;
            }
            dp_batch_fail(b, 0, DP_ERR_PERMANENT, "%s", err);
        }
        if (!settle_failures(rt, b))
            return DP_OK;
        if (e == DP_OK) {
            PQclear(PQexec(rt->db, "ROLLBACK"));
            rt->stats.rollbacks++;
        }
    }
}

/* For monitoring only (docs/design.md, "Offsets in Kafka, for monitoring
 * only"): the positions just committed in PostgreSQL are committed to the
 * group in Kafka too, asynchronously, so that Kafka's own tools show the
 * stage's lag.  Nothing reads them back (partitions.c assigns explicit
 * offsets from PostgreSQL), so a failure changes nothing: it is logged at
 * debug, here or in clients.c's offset_commit_cb(). */
static void commit_to_kafka(dp_runtime *rt, const dp_offset_advance *adv,
                            int nadv)
{
    if (nadv == 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nadv);
    for (int k = 0; k < nadv; k++)
        rd_kafka_topic_partition_list_add(l, rt->stage->input_topic,
                                          adv[k].partition)->offset = adv[k].next_offset;
    rd_kafka_resp_err_t ke = rd_kafka_commit(rt->consumer, l, 1 /* async */);
    rd_kafka_topic_partition_list_destroy(l);
    if (ke) {
        dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
        dp_log(DP_LOG_DEBUG, &ctx, "positions not committed to Kafka "
               "(monitoring only): %s", rd_kafka_err2str(ke));
    }
}

/* Once committed: our view of the partitions and their marks moves on. */
static void settled(dp_runtime *rt, size_t from, size_t to,
                    const dp_offset_advance *adv, int nadv)
{
    commit_to_kafka(rt, adv, nadv);
    for (int k = 0; k < nadv; k++) {
        dp_part *pt = dp_part_get(rt, adv[k].partition);
        pt->committed = adv[k].next_offset;
        if (pt->retry_offset >= 0 && pt->retry_offset < pt->committed) {
            pt->retry_offset = -1;
            pt->retry_attempts = 0;
        }
        dp_dedup_commit(pt);
    }
    uint64_t dlq = 0, done = 0, dups = 0, aborted = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        done += s->state == RS_PENDING;
        dups += s->state == RS_DUP;
        aborted += s->state == RS_ABORTED;
        if (s->state != RS_DLQ)
            continue;
        dlq++;
        pthread_mutex_lock(&rt->view_mu);
        rt->view.dead_letters_by[s->dlq_category == DP_ERR_RETRYABLE ? 1
                                 : s->dlq_category == DP_ERR_POISON  ? 2 : 0]++;
        pthread_mutex_unlock(&rt->view_mu);
        dp_log_ctx c = dp_rt_slot_ctx(rt, s);
        dp_logj(DP_LOG_WARN, &c, json_pack("{s:s,s:i,s:s,s:s}", "category",
                dp_err2str(s->dlq_category), "attempts", s->rec.attempts,
                "error", s->error ? s->error : "", "dlq_topic",
                rt->stage->dlq_topic), "record dead-lettered");
    }
    rt->stats.batches++;
    rt->stats.records += done;
    rt->stats.dead_letters += dlq;
    rt->stats.duplicates += dups;
    rt->stats.aborted += aborted;
    rt->batch_failures = 0;
}

/*
 * One attempt to settle slots[from, to) (docs/design.md, "One transaction
 * per batch", lists these steps):
 *   1. decide the upstream attempts of the records; 2. skip duplicates and
 *   records of aborted attempts; 3. handler passes until every live record
 *   is ok; 4. dead-letter rows; 5. dedup marks; 6. the fenced offset move
 *   with this attempt's row (it now holds the partitions' row locks);
 *   7. outputs and dead letters handed to the producer, with this attempt's
 *   id; 8. every acknowledgement awaited; 9. COMMIT.
 * Outputs go out only after step 6, so a consumer that sees one while the
 * attempt is still open finds the lock held and waits for the outcome.
 */
static batch_result settle(dp_runtime *rt, size_t from, size_t to)
{
    char err[1024] = "";
    dp_err e;
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    dp_batch b = {rt, calloc(to - from + 1, sizeof(dp_slot *)), 0};
    batch_result result = BATCH_RETRY;
    dp_offset_advance adv[64];
    int nadv = 0;

    /* Slots may have moved (the array grows): re-point into them. */
    for (size_t i = from; i < to; i++)
        rt->slots[i].rec.correlation_id = rt->slots[i].corr;
    if (dp_kafka_producer_fatal(rt) && (e = dp_kafka_producer_reset(rt, err, sizeof(err))))
        goto retry;
    if ((e = dp_rt_db_ensure(rt, err, sizeof(err))))
        goto retry;
    /* Plans cached while the tables were small are made again now and
     * then, for their present size (pg_replan_ms). */
    int64_t now = dp_rt_mono_ms();
    if (rt->cfg->pg_replan_ms > 0 && now - rt->last_replan_ms >= rt->cfg->pg_replan_ms) {
        if ((e = dp_pg_replan(rt->db, err, sizeof(err))))
            goto retry;
        rt->last_replan_ms = now;
    }
    if ((e = dp_dedup_decide(rt, from, to, err, sizeof(err))))
        goto retry;
    dp_dedup_pass(rt, from, to);
    if ((e = handle_passes(rt, &b, from, to, &result, err, sizeof(err)))) {
        if (result == BATCH_SPLIT)
            goto out;
        goto retry;
    }
    /* Again, without the records the passes deferred, left or dropped for
     * a retry: a mark moved past one of them would take it, fetched again,
     * for a copy of itself. */
    dp_dedup_pass(rt, from, to);
    if (DP_FAULT(rt->stage->name, "after-handler")) {
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err), "fault point after-handler");
        goto rollback;
    }

    /* Every live record is ok. */
    int64_t attempt = dp_attempt_new_id();
    if ((e = plan_advance(rt, from, to, adv, 64, &nadv, err, sizeof(err))))
        goto rollback;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state != RS_DLQ)
            continue;
        if ((e = dp_dlq_record(rt, s, attempt, err, sizeof(err))))
            goto rollback;
        if (rt->stage->dead_letter && (e = dp_dlq_hook(rt, s, err, sizeof(err))))
            goto rollback;
    }
    if ((e = dp_dedup_store(rt, adv, nadv, err, sizeof(err))))
        goto rollback;
    e = dp_offsets_advance(rt->db, rt->group, rt->stage->input_topic, adv,
                           nadv, attempt, err, sizeof(err));
    if (e == DP_ERR_FENCED) {
        PQclear(PQexec(rt->db, "ROLLBACK"));
        rt->stats.fenced++;
        rt->stats.rollbacks++;
        dp_log(DP_LOG_ERROR, &ctx, "commit refused, batch rolled back: %s",
               err);
        rt->rejoin = 1;
        result = BATCH_FENCED;
        goto out;
    }
    if (e)
        goto rollback;

    /* Outputs and dead letters out, with the attempt's id; their
     * acknowledgements are awaited before COMMIT. */
    rt->delivery_failures = 0;
    if (DP_FAULT(rt->stage->name, "producer-fatal"))
        rd_kafka_test_fatal_error(rt->producer,
                                  RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                  "fault point producer-fatal");
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state == RS_PENDING)
            e = dp_kafka_publish_outputs(rt, s, attempt, err, sizeof(err));
        else if (s->state == RS_DLQ)
            e = dp_dlq_publish(rt, s, attempt, err, sizeof(err));
        if (e)
            goto rollback;
    }
    int64_t t_flush = dp_rt_mono_ms();
    rd_kafka_resp_err_t fe = rd_kafka_flush(rt->producer, rt->cfg->produce_timeout_ms);
    rt->t_flush += dp_rt_mono_ms() - t_flush;
    if (fe != RD_KAFKA_RESP_ERR_NO_ERROR || rt->delivery_failures ||
        dp_kafka_producer_fatal(rt)) {
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err),
                    "outputs not acknowledged by Kafka: %s",
                    rt->producer_fatal ? rt->fatal_error
                    : rt->delivery_failures ? rt->delivery_error : "timed out");
        goto rollback;
    }
    DP_FAULT(rt->stage->name, "after-produce");
    int64_t t_c = dp_rt_mono_ms();
    e = dp_pg_exec(rt->db, "COMMIT", err, sizeof(err));
    rt->t_commit += dp_rt_mono_ms() - t_c;
    if (e == DP_OK && DP_FAULT(rt->stage->name, "commit-lost"))
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err),
                    "fault point commit-lost: COMMIT's reply taken as lost");
    if (e) {
        /* The commit may or may not have happened: re-claim to find out. */
        dp_log(DP_LOG_ERROR, &ctx, "commit outcome unknown: %s", err);
        rt->rejoin = 1;
        result = BATCH_FENCED;
        goto out;
    }
    DP_FAULT(rt->stage->name, "after-commit");
    settled(rt, from, to, adv, nadv);
    result = BATCH_DONE;
    goto out;

rollback:
    PQclear(PQexec(rt->db, "ROLLBACK"));
    rt->stats.rollbacks++;
retry:
    rt->batch_failures++;
    dp_log(DP_LOG_WARN, &ctx, "batch failed (%s), will retry: %s",
           dp_err2str(e), err);
    result = BATCH_RETRY;
out:
    free(b.live);
    return result;
}

/* Split mode: a batch-wide permanent error that no record was blamed for;
 * each record is settled alone, which finds the culprit.  A fence ends it
 * (the partitions are no longer ours: nothing after may commit). */
static void settle_one_by_one(dp_runtime *rt, volatile sig_atomic_t *stop)
{
    for (size_t i = 0; i < rt->nslots && !rt->rejoin && !*stop; i++) {
        while (rt->slots[i].state != RS_DROPPED) {
            batch_result ri = settle(rt, i, i + 1);
            if (ri == BATCH_DONE || ri == BATCH_FENCED || *stop || rt->rejoin)
                break;
            usleep(200 * 1000);
        }
        DP_FAULT(rt->stage->name, "split-record");
    }
}

static void process_batch(dp_runtime *rt, volatile sig_atomic_t *stop)
{
    int64_t t0 = dp_rt_mono_ms();
    while (rt->nslots) {
        batch_result r = settle(rt, 0, rt->nslots);
        if (r == BATCH_SPLIT) {
            settle_one_by_one(rt, stop);
            r = rt->rejoin ? BATCH_FENCED : BATCH_DONE;
        }
        if (r == BATCH_FENCED)
            rt->rejoin = 1;
        if (r != BATCH_RETRY || rt->rejoin || *stop)
            break;
        /* A batch-wide transient failure (database or Kafka down, a
         * service's breaker open): keep the batch, keep polling. */
        int64_t delay = dp_backoff_ms(rt->cfg->retry_base_ms < 1000
                                          ? rt->cfg->retry_base_ms : 1000,
                                      rt->batch_failures - 1 < 6
                                          ? rt->batch_failures - 1 : 6,
                                      rt->cfg->retry_jitter, &rt->rand_state);
        if (rt->retry_hint_ms > delay)
            delay = rt->retry_hint_ms;
        rt->retry_hint_ms = 0;
        /* Those waiting for a record's retry stay as they are (dp_part_resume_due
         * resumes them); the others resume after their last record polled. */
        rd_kafka_topic_partition_list_t *l = dp_part_running(rt, -1);
        rd_kafka_pause_partitions(rt->consumer, l);
        int64_t until = dp_rt_mono_ms() + delay;
        uint64_t gen = rt->assign_gen;
        DP_FAULT(rt->stage->name, "in-retry-wait");
        while (dp_rt_mono_ms() < until && !*stop && rt->assign_gen == gen) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 100);
            if (!m)
                continue;
            if (rt->assign_gen != gen) {
                /* A rebalance inside this poll dropped the batch, and m is
                 * the first record of the new assignment: it is kept. */
                dp_fetch_take(rt, m);
                break;
            }
            rd_kafka_message_destroy(m); /* paused: stale prefetch */
        }
        if (rt->assign_gen != gen) {
            rd_kafka_topic_partition_list_destroy(l);
            rt->t_settle += dp_rt_mono_ms() - t0;
            return; /* the batch went with the old assignment */
        }
        dp_part_resume_at(rt, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    dp_part_apply_deferrals(rt);
    dp_rt_batch_clear(rt);
    int64_t took = dp_rt_mono_ms() - t0;
    rt->t_settle += took;
    pthread_mutex_lock(&rt->view_mu);
    dp_hist_observe(&rt->view.batch_seconds, (double)took / 1000.0);
    pthread_mutex_unlock(&rt->view_mu);
}

/* Records of the owned partitions not committed yet: librdkafka's cached
 * log ends (kept fresh by fetches and the nudges) less the committed
 * positions.  Once a second, from the stage thread. */
static void measure_lag(dp_runtime *rt, int *assigned, int64_t *lag)
{
    *assigned = 0;
    *lag = 0;
    for (int p = 0; p < rt->nparts; p++) {
        dp_part *pt = &rt->parts[p];
        if (!pt->assigned)
            continue;
        (*assigned)++;
        int64_t lo = -1, hi = -1;
        if (rd_kafka_get_watermark_offsets(rt->consumer, rt->stage->input_topic, p,
                                           &lo, &hi) || hi < 0) {
            *lag = -1;
            continue;
        }
        int64_t at = pt->committed >= 0 ? pt->committed : lo;
        if (*lag >= 0 && hi > at)
            *lag += hi - at;
    }
}

/* The view metrics and health read (runtime.h), refreshed each turn. */
static void publish_view(dp_runtime *rt)
{
    int64_t now = dp_rt_mono_ms();
    int assigned = -1;
    int64_t lag = 0;
    if (now - rt->last_lag_ms >= 1000) {
        rt->last_lag_ms = now;
        measure_lag(rt, &assigned, &lag);
    }
    pthread_mutex_lock(&rt->view_mu);
    rt->view.stats = rt->stats;
    rt->view.last_turn_ms = now;
    if (assigned >= 0) {
        rt->view.assigned = assigned;
        rt->view.lag = lag;
    }
    pthread_mutex_unlock(&rt->view_mu);
}

const double dp_hist_bounds[DP_HIST_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300};

void dp_hist_observe(dp_hist *h, double seconds)
{
    int b = 0;
    while (b < DP_HIST_BUCKETS && seconds > dp_hist_bounds[b])
        b++;
    h->counts[b]++;
    h->sum += seconds;
    h->count++;
}

void dp_runtime_view_get(dp_runtime *rt, dp_runtime_view *out)
{
    pthread_mutex_lock(&rt->view_mu);
    *out = rt->view;
    pthread_mutex_unlock(&rt->view_mu);
}

const char *dp_runtime_stage(const dp_runtime *rt) { return rt->stage->name; }

dp_err dp_runtime_new(const dp_config *cfg, const dp_stage *stage,
                      dp_runtime **out, char *err, size_t errlen)
{
    dp_runtime *rt = calloc(1, sizeof(*rt));
    rt->cfg = cfg;
    rt->stage = stage;
    rt->rand_state = (unsigned int)(getpid() ^ dp_rt_now_ms());
    pthread_mutex_init(&rt->view_mu, NULL);
    rt->view.lag = -1;
    rt->nudge_every_ms = NUDGE_LAGGING_MS;
    snprintf(rt->group, sizeof(rt->group), "%s%s", cfg->topic_prefix,
             stage->name);
    rt->batch_max = cfg->batch_max > 0 ? cfg->batch_max
                    : stage->batch_max > 0 ? stage->batch_max : 500;
    rd_kafka_conf_t *cc = NULL, *pc = NULL;
    char kerr[512];
    dp_err e = dp_kafka_conf(rt, 0, &cc, err, errlen);
    if (e == DP_OK)
        e = dp_kafka_conf(rt, 1, &pc, err, errlen);
    if (e)
        goto fail;
    rd_kafka_conf_set_rebalance_cb(cc, dp_part_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(cc, dp_kafka_offset_commit_cb);
    rd_kafka_conf_destroy(pc);
    rt->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, kerr, sizeof(kerr));
    if (!rt->consumer) {
        e = dp_errf(DP_ERR_PERMANENT, err, errlen, "consumer: %s", kerr);
        goto fail;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(rt->consumer);
    rt->cq = rd_kafka_queue_get_consumer(rt->consumer);
    if ((e = dp_kafka_producer_new(rt, err, errlen)))
        goto fail;
    e = dp_pg_connect(cfg, cfg->instance_id, &rt->db, err, errlen);
    if (e)
        goto fail;
    *out = rt;
    return DP_OK;
fail:
    if (cc)
        rd_kafka_conf_destroy(cc);
    dp_runtime_free(rt);
    *out = NULL;
    return e;
}

dp_err dp_runtime_run(dp_runtime *rt, volatile sig_atomic_t *stop, char *err,
                      size_t errlen)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, rt->stage->input_topic,
                                      RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t ke = rd_kafka_subscribe(rt->consumer, t);
    rd_kafka_topic_partition_list_destroy(t);
    if (ke)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "subscribe to %s: %s",
                       rt->stage->input_topic, rd_kafka_err2str(ke));
    /* Learn the output topics now, not on the first batch's flush. */
    const char *warm[34];
    int nw = 0;
    for (int i = 0; rt->stage->output_topics && rt->stage->output_topics[i] && nw < 32; i++)
        warm[nw++] = rt->stage->output_topics[i];
    if (rt->stage->dlq_topic)
        warm[nw++] = rt->stage->dlq_topic;
    for (int i = 0; i < nw; i++) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rt->producer, warm[i], NULL);
        const rd_kafka_metadata_t *md = NULL;
        if (rd_kafka_metadata(rt->producer, 0, rkt, &md, 5000) == 0 && md)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:s,s:i,s:i}", "group", rt->group,
            "batch_max", rt->batch_max, "batch_wait_ms", rt->cfg->batch_wait_ms),
            "stage started");
    dp_fetch_nudger_start(rt);

    while (!*stop) {
        publish_view(rt);
        if (rt->consumer_fatal)
            break;
        if (rt->rejoin)
            dp_part_rejoin(rt);
        dp_part_resume_due(rt);
        int timeout = 100;
        if (rt->nslots) {
            int64_t left = rt->batch_deadline_ms - dp_rt_mono_ms();
            timeout = left < 0 ? 0 : (int)left;
        }
        if (timeout > rt->nudge_every_ms)
            timeout = (int)rt->nudge_every_ms;
        /* Wait for one record, then take whatever else is already queued.
         * Not with rd_kafka_consume_batch_queue(): in librdkafka 2.0.2 it
         * can drop records next to an assignment, pause, resume or seek
         * (fixed in 2.1.0), and a dropped record is a lost one, since the
         * offsets committed after it pass it by. */
        rd_kafka_message_t *ms[256];
        size_t nm = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, timeout);
        if (m) {
            ms[nm++] = m;
            size_t want = rt->batch_max > (int)rt->nslots + 1
                              ? (size_t)rt->batch_max - rt->nslots - 1 : 0;
            if (want > sizeof(ms) / sizeof(ms[0]) - 1)
                want = sizeof(ms) / sizeof(ms[0]) - 1;
            for (size_t k = 0; k < want; k++) {
                if (!(m = rd_kafka_consumer_poll(rt->consumer, 0)))
                    break;
                ms[nm++] = m;
            }
        }
        rt->polled += nm;
        if (nm == 0) {
            dp_fetch_nudge(rt);
            dp_part_check_epochs(rt);
            /* The producer's own events (statistics, errors) are served by
             * its polls; flush polls it during a batch, this when idle. */
            rd_kafka_poll(rt->producer, 0);
        }
        for (size_t k = 0; k < nm; k++)
            dp_fetch_take(rt, ms[k]);
        if (rt->nslots && ((int)rt->nslots >= rt->batch_max ||
                           dp_rt_mono_ms() >= rt->batch_deadline_ms)) {
            dp_fetch_nudge_early(rt);
            process_batch(rt, stop);
        }
    }
    /* Stopping: settle what we hold, then leave the group cleanly. */
    if (rt->nslots && !rt->rejoin && !rt->consumer_fatal)
        process_batch(rt, stop);
    dp_rt_batch_clear(rt);
    dp_fetch_nudger_join(rt);
    dp_log(DP_LOG_INFO, &ctx, "stopping: leaving the group");
    rd_kafka_consumer_close(rt->consumer);
    rd_kafka_flush(rt->producer, rt->cfg->produce_timeout_ms);
    dp_runtime_stats s = rt->stats;
    dp_logj(DP_LOG_DEBUG, &ctx, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "settle_ms",
            (json_int_t)rt->t_settle, "handler_ms", (json_int_t)rt->t_handler,
            "flush_ms", (json_int_t)rt->t_flush, "commit_ms",
            (json_int_t)rt->t_commit, "nudges", (json_int_t)rt->nudges,
            "early_nudges", (json_int_t)rt->early_nudges),
            "time spent settling batches");
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
            "batches", (json_int_t)s.batches, "records", (json_int_t)s.records,
            "duplicates", (json_int_t)s.duplicates, "dead_letters",
            (json_int_t)s.dead_letters, "retries", (json_int_t)s.retries,
            "fenced", (json_int_t)s.fenced, "offset_gaps", (json_int_t)s.gaps,
            "aborted_upstream", (json_int_t)s.aborted, "undecided_deferrals",
            (json_int_t)s.undecided, "producer_resets",
            (json_int_t)s.producer_resets, "left", (json_int_t)s.left, "stalls",
            (json_int_t)s.stalls), "stage stopped");
    if (rt->consumer_fatal)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "%s", rt->fatal_error);
    return DP_OK;
}

void dp_runtime_get_stats(dp_runtime *rt, dp_runtime_stats *out)
{
    *out = rt->stats;
}

void dp_runtime_free(dp_runtime *rt)
{
    if (!rt)
        return;
    dp_fetch_nudger_join(rt);
    dp_rt_batch_clear(rt);
    pthread_mutex_destroy(&rt->view_mu);
    dp_arena_free(&rt->recs);
    dp_arena_free(&rt->outs);
    free(rt->slots);
    if (rt->cq)
        rd_kafka_queue_destroy(rt->cq);
    for (int i = 0; i < rt->nparts; i++)
        dp_part_reset(&rt->parts[i]);
    free(rt->parts);
    if (rt->consumer)
        rd_kafka_destroy(rt->consumer);
    if (rt->producer)
        rd_kafka_destroy(rt->producer);
    if (rt->db)
        dp_pg_finish(rt->db);
    free(rt);
}

/*
 * fetch: records from poll to a batch's slots (identity, correlation id,
 * upstream attempt and position, decoding), and the fetch nudging that
 * keeps librdkafka's small prefetch full.
 *
 * librdkafka 2.0.2 stops fetching a partition while the consumer's prefetch
 * queue is over queued.max.messages.kbytes, and looks again only when its
 * broker thread next wakes: after up to a second (fetch.queue.backoff.ms,
 * which later versions added, does not exist yet).  A small prefetch then
 * caps the rate at about one queue per second.  Any request to the broker
 * wakes that thread, which then finds the queue drained and fetches at once;
 * so when a poll comes back empty, a watermark query per partition (one
 * ListOffsets round trip) both wakes it and tells whether records are still
 * waiting (lagging: poll briefly and nudge again soon) or the partitions are
 * caught up (nudge rarely; new records arrive through the fetch the broker
 * holds open).  A lag that brings no records (a transactional producer's
 * last marker is never delivered) doubles the interval up to the idle one.
 */
#include "runtime_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

/* A correlation id for a record that came without one: a UUID-shaped
 * digest of its position (two FNV-1a passes, version 8 "custom"), so every
 * replay of it logs the same id.  Not OpenSSL: a stage that never hashes
 * otherwise should not pay for initialising it. */
static void derive_corr(const char *topic, int32_t p, int64_t off, char out[40])
{
    char name[300];
    size_t tl = strnlen(topic, 260);
    memcpy(name, topic, tl);
    char *q = name + tl;
    *q++ = '/';
    q = dp_rt_fmt_u64(q, (uint64_t)p);
    *q++ = '/';
    q = dp_rt_fmt_u64(q, (uint64_t)off);
    int n = (int)(q - name);
    uint64_t h1 = 14695981039346656037ULL, h2 = 1099511628211ULL * 31u;
    for (int i = 0; i < n; i++) {
        h1 = (h1 ^ (unsigned char)name[i]) * 1099511628211ULL;
        h2 = (h2 ^ (unsigned char)name[n - 1 - i]) * 1099511628211ULL;
    }
    unsigned char md[16];
    for (int i = 0; i < 8; i++) {
        md[i] = (unsigned char)(h1 >> (56 - 8 * i));
        md[8 + i] = (unsigned char)(h2 >> (56 - 8 * i));
    }
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x80);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[md[i] >> 4];
        *o++ = hex[md[i] & 15];
    }
    *o = '\0';
}
/* Fills a slot from a polled message: identity, correlation id, upstream
 * attempt and position (decided and deduplicated when the batch is
 * settled: see dp_dedup_decide() and dp_dedup_pass()), decoding. */
static void slot_prepare(dp_runtime *rt, dp_slot *s, rd_kafka_message_t *m)
{
    s->msg = m;
    s->rec.topic = rt->stage->input_topic;
    s->rec.partition = m->partition;
    s->rec.offset = m->offset;
    rd_kafka_timestamp_type_t tst;
    s->rec.timestamp_ms = rd_kafka_message_timestamp(m, &tst);
    /* Key and value are copied so the message (and the fetch buffer it
     * pins inside librdkafka) is released at once: a batch then costs its
     * records' bytes, not the fetch responses they came in. */
    s->data = dp_arena_alloc(&rt->recs, m->key_len + m->len + 1);
    if (m->key)
        memcpy(s->data, m->key, m->key_len);
    if (m->payload)
        memcpy(s->data + m->key_len, m->payload, m->len);
    s->rec.key = m->key ? s->data : NULL;
    s->rec.key_len = m->key_len;
    s->rec.value = m->payload ? s->data + m->key_len : NULL;
    s->rec.value_len = m->len;
    s->state = RS_PENDING;
    s->src_epoch = 0;
    s->src_offset = -1;
    s->src_index = -1;

    rd_kafka_headers_t *h = NULL;
    rd_kafka_message_headers(m, &h);
    char buf[64];
    if (!dp_kafka_header_str(h, HDR_CORR, s->corr, sizeof(s->corr)))
        derive_corr(s->rec.topic, m->partition, m->offset, s->corr);
    s->rec.correlation_id = s->corr;
    dp_part *pt = dp_part_get(rt, m->partition);
    s->rec.attempts = pt->retry_offset == m->offset ? pt->retry_attempts + 1 : 1;
    s->rec.replay = pt->replay_until >= 0 && m->offset < pt->replay_until;
    s->rec.generation = dp_kafka_header_str(h, HDR_GEN, buf, sizeof(buf))
                            ? strtoll(buf, NULL, 10) : 0;
    s->out_gen = s->rec.generation;

    char stream[256], att[96];
    s->stream = NULL;
    if (dp_kafka_header_str(h, HDR_STREAM, stream, sizeof(stream)) &&
        dp_kafka_header_str(h, HDR_SEQ, buf, sizeof(buf)) &&
        sscanf(buf, "%" SCNd64 ":%" SCNd32, &s->src_offset, &s->src_index) == 2) {
        s->stream = dp_dedup_mark(pt, stream, 1)->stream;
        /* Records of releases before commit visibility carry no attempt:
         * they are taken as committed, as they were then. */
        memcpy(s->att_stream, stream, sizeof(s->att_stream));
        if (dp_kafka_header_str(h, DP_HDR_ATTEMPT, att, sizeof(att)) &&
            dp_attempt_parse(att, s->att_stream, &s->att))
            s->src_epoch = s->att.epoch;
        else
            memset(&s->att, 0, sizeof(s->att));
    }

    if (rt->stage->decode) {
        char err[512] = "";
        dp_err e = rt->stage->decode(rt->stage->state, m->payload, m->len,
                                     &s->rec.decoded, err, sizeof(err));
        if (e != DP_OK) {
            s->state = RS_DLQ;
            s->dlq_category = DP_ERR_POISON;
            s->error = strdup(*err ? err : "record cannot be decoded");
            s->first_failure_ms = s->last_failure_ms = dp_rt_now_ms();
        }
    }
}
/* Takes one polled message into the batch being built, or drops it (an
 * error, or a partition paused on our side, rewound to be fetched again). */
void dp_fetch_take(dp_runtime *rt, rd_kafka_message_t *m)
{
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
            m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
            dp_part_out_of_range(rt, m->partition, rd_kafka_message_errstr(m));
        } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
            dp_log(DP_LOG_WARN, &ctx, "consumer: %s", rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
        return;
    }
    dp_part *pt = dp_part_get(rt, m->partition);
    if (pt->first_seen < 0)
        pt->first_seen = m->offset;
    /* Offsets are dense in topics written without transactions (and
     * not compacted): a jump means a record was never polled. */
    int64_t expect = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
    if (expect >= 0 && m->offset > expect) {
        rt->stats.gaps++;
        dp_log_ctx gc = {rt->stage->name, NULL, rt->stage->input_topic,
                         m->partition, m->offset};
        dp_log(DP_LOG_WARN, &gc, "offsets %" PRId64 "..%" PRId64
               " were never polled", expect, m->offset - 1);
    }
    pt->next_poll = m->offset + 1;
    if (!pt->assigned || pt->paused_until_ms) {
        rd_kafka_message_destroy(m); /* rewound: refetched later */
        return;
    }
    if (rt->nslots == rt->capslots) {
        /* One batch's worth at once: no copies while it fills. */
        rt->capslots = rt->capslots ? rt->capslots * 2
                       : rt->batch_max < 4096 ? (size_t)rt->batch_max : 4096;
        rt->slots = realloc(rt->slots, rt->capslots * sizeof(dp_slot));
    }
    if (rt->nslots == 0)
        rt->batch_deadline_ms = dp_rt_mono_ms() + rt->cfg->batch_wait_ms;
    dp_slot *s = &rt->slots[rt->nslots++];
    memset(s, 0, sizeof(*s));
    slot_prepare(rt, s, m);
    rd_kafka_message_destroy(m);
    s->msg = NULL;
}
/*
 * The backstop for a partition that stopped fetching.  A partition we run
 * (not paused on our side), behind its log end, from which nothing was
 * polled for STALL_MS while the consumer was idle, is stuck: librdkafka
 * should be fetching it.  It happened twice under chaos (a partition
 * resumed after a record's retry never delivered again; the cause is not
 * known), and nothing else would ever notice: every other partition kept
 * going.  First the assignment is made again at the offsets expected next,
 * which restarts every fetcher and costs nothing if the stall was only a
 * very slow link; if the partition still polls nothing, the instance
 * rejoins the group and claims again, which always works (the offsets are
 * in PostgreSQL).  A warning names each step.
 */
static void watch_stall(dp_runtime *rt, dp_part *pt, int32_t partition, int64_t next,
                        int64_t log_end)
{
    int64_t t = dp_rt_mono_ms();
    if (!pt->stall_since_ms || pt->stall_at != next) {
        pt->stall_at = next;
        pt->stall_since_ms = t;
        pt->stall_refetched = 0;
        return;
    }
    if (t - pt->stall_since_ms < STALL_MS || rt->rejoin)
        return;
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, partition, next};
    int refetch = !pt->stall_refetched;
    dp_logj(DP_LOG_WARN, &ctx, json_pack("{s:I,s:I}", "stalled_ms",
            (json_int_t)(t - pt->stall_since_ms), "log_end", (json_int_t)log_end),
            refetch ? "partition polled nothing while behind its log end; assigning"
                      " it again to restart its fetch"
                    : "partition still polls nothing; rejoining the group to fetch"
                      " it again");
    rt->stats.stalls++;
    pt->stall_since_ms = t;
    if (refetch) {
        pt->stall_refetched = 1;
        dp_part_refetch(rt);
    } else {
        pt->stall_since_ms = 0;
        rt->rejoin = 1;
    }
}
void dp_fetch_nudge(dp_runtime *rt)
{
    int64_t t = dp_rt_mono_ms();
    if (t - rt->last_nudge_ms < rt->nudge_every_ms)
        return;
    rt->last_nudge_ms = t;
    rt->nudges++;
    int fruitless = rt->polled == rt->polled_at_nudge;
    rt->polled_at_nudge = rt->polled;
    rd_kafka_topic_partition_list_t *l = dp_part_running(rt, RD_KAFKA_OFFSET_END);
    int lagging = 0;
    /* One ListOffsets per leader, sent in parallel. */
    if (l->cnt && rd_kafka_offsets_for_times(rt->consumer, l, NUDGE_WAIT_MS) ==
                      RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < l->cnt; i++) {
            dp_part *pt = dp_part_get(rt, l->elems[i].partition);
            int64_t next = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
            if (!l->elems[i].err && next >= 0 && l->elems[i].offset > next) {
                lagging = 1;
                watch_stall(rt, pt, l->elems[i].partition, next, l->elems[i].offset);
            } else {
                pt->stall_since_ms = 0;
            }
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (!lagging)
        rt->nudge_every_ms = NUDGE_IDLE_MS;
    else if (!fruitless)
        rt->nudge_every_ms = NUDGE_LAGGING_MS;
    else if ((rt->nudge_every_ms *= 2) > NUDGE_IDLE_MS)
        rt->nudge_every_ms = NUDGE_IDLE_MS;
}
/* The fetch woken after an empty poll arrives one round trip later, while
 * PostgreSQL waits for the next batch.  So when a batch is about to be
 * settled and the prefetch queue no longer holds the next one, a helper
 * thread sends the same query now: the broker thread fetches while this
 * thread settles, and the next poll finds records waiting. */
static void *nudger_main(void *arg)
{
    dp_runtime *rt = arg;
    pthread_mutex_lock(&rt->nudge_mu);
    for (;;) {
        while (!rt->nudger_stop && !rt->nudge_req)
            pthread_cond_wait(&rt->nudge_cv, &rt->nudge_mu);
        if (rt->nudger_stop)
            break;
        rd_kafka_topic_partition_list_t *l = rt->nudge_req;
        rt->nudge_req = NULL;
        rt->nudge_busy = 1;
        rt->early_nudges++;
        pthread_mutex_unlock(&rt->nudge_mu);
        rd_kafka_offsets_for_times(rt->consumer, l, 1000);
        rd_kafka_topic_partition_list_destroy(l);
        pthread_mutex_lock(&rt->nudge_mu);
        rt->nudge_busy = 0;
    }
    pthread_mutex_unlock(&rt->nudge_mu);
    return NULL;
}
void dp_fetch_nudge_early(dp_runtime *rt)
{
    if (!rt->nudger_running ||
        rd_kafka_queue_length(rt->cq) >= (size_t)rt->batch_max)
        return;
    pthread_mutex_lock(&rt->nudge_mu);
    if (!rt->nudge_req && !rt->nudge_busy) {
        rd_kafka_topic_partition_list_t *l = dp_part_running(rt, RD_KAFKA_OFFSET_END);
        if (l->cnt) {
            rt->nudge_req = l;
            pthread_cond_signal(&rt->nudge_cv);
        } else {
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
    pthread_mutex_unlock(&rt->nudge_mu);
}
void dp_fetch_nudger_start(dp_runtime *rt)
{
    pthread_mutex_init(&rt->nudge_mu, NULL);
    pthread_cond_init(&rt->nudge_cv, NULL);
    rt->nudger_running = pthread_create(&rt->nudger, NULL, nudger_main, rt) == 0;
}
void dp_fetch_nudger_join(dp_runtime *rt)
{
    if (!rt->nudger_running)
        return;
    pthread_mutex_lock(&rt->nudge_mu);
    rt->nudger_stop = 1;
    pthread_cond_signal(&rt->nudge_cv);
    pthread_mutex_unlock(&rt->nudge_mu);
    pthread_join(rt->nudger, NULL);
    if (rt->nudge_req)
        rd_kafka_topic_partition_list_destroy(rt->nudge_req);
    rt->nudge_req = NULL;
    rt->nudger_running = 0;
    pthread_mutex_destroy(&rt->nudge_mu);
    pthread_cond_destroy(&rt->nudge_cv);
}

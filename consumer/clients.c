/*
 * clients: the stage's Kafka clients (configuration, callbacks, the
 * producer recreated after a fatal error) and the publishing of a batch's
 * outputs with their headers (stream, seq, event id, correlation id,
 * attempt, generation).
 */
#include "runtime_int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    /* Success without an offset is librdkafka's implicit ack, which can
     * stand for a record that was never written (publish.h): the batch
     * rolls back and publishes again; downstream drops a copy by event id. */
    if (!dp_delivery_confirmed(m)) {
        rt->delivery_failures++;
        snprintf(rt->delivery_error, sizeof(rt->delivery_error), "%s",
                 m->err ? rd_kafka_err2str(m->err)
                        : "acknowledged without an offset (implicit ack)");
    }
}
/* A fatal error leaves a client unusable: an idempotent producer whose
 * sequence broke fails every later produce.  The producer is recreated
 * between batches (nothing of an unacknowledged batch commits); a fatal
 * consumer error stops the stage with the error. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    dp_runtime *rt = opaque;
    if (err != RD_KAFKA_RESP_ERR__FATAL)
        return; /* transient: log_cb has it, librdkafka retries */
    char why[256];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
    snprintf(rt->fatal_error, sizeof(rt->fatal_error), "%s: %s (%s)",
             rd_kafka_err2name(orig), why, reason);
    if (rk == rt->producer)
        rt->producer_fatal = 1;
    else
        rt->consumer_fatal = 1;
    dp_log_ctx ctx = {rt->stage->name, NULL, NULL, -1, -1};
    dp_log(DP_LOG_ERROR, &ctx, "fatal Kafka %s error: %s",
           rk == rt->producer ? "producer" : "consumer", rt->fatal_error);
}
/* The outcome of runtime.c's commits to the group: monitoring only, so a
 * failure (a rebalance under way, say) is noted and otherwise ignored. */
void dp_kafka_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                               rd_kafka_topic_partition_list_t *offsets,
                               void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    for (int i = 0; !err && offsets && i < offsets->cnt; i++)
        err = offsets->elems[i].err;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
        dp_log(DP_LOG_DEBUG, &ctx, "positions not committed to Kafka "
               "(monitoring only): %s", rd_kafka_err2str(err));
    }
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    (void)rk;
    dp_log(strcmp(fac, "CONFWARN") == 0 ? DP_LOG_DEBUG
           : level <= 3 ? DP_LOG_ERROR : level <= 4 ? DP_LOG_WARN : DP_LOG_DEBUG,
           NULL, "kafka %s: %s", fac, buf);
}
/* librdkafka's statistics (JSON, every stats_interval_ms): the totals that
 * tell whether a client talks to its brokers, kept for the metrics. */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    dp_runtime *rt = opaque;
    json_error_t je;
    json_t *j = json_loadb(json, len, 0, &je);
    if (!j)
        return 0;
    dp_kafka_view v;
    v.tx = json_integer_value(json_object_get(j, "tx"));
    v.rx = json_integer_value(json_object_get(j, "rx"));
    v.tx_bytes = json_integer_value(json_object_get(j, "tx_bytes"));
    v.rx_bytes = json_integer_value(json_object_get(j, "rx_bytes"));
    v.txmsgs = json_integer_value(json_object_get(j, "txmsgs"));
    v.rxmsgs = json_integer_value(json_object_get(j, "rxmsgs"));
    v.msg_cnt = json_integer_value(json_object_get(j, "msg_cnt"));
    v.replyq = json_integer_value(json_object_get(j, "replyq"));
    json_decref(j);
    pthread_mutex_lock(&rt->view_mu);
    if (rk == rt->producer)
        rt->view.producer = v;
    else
        rt->view.consumer = v;
    pthread_mutex_unlock(&rt->view_mu);
    return 0; /* librdkafka frees json */
}

dp_err dp_kafka_conf(dp_runtime *rt, int producer, rd_kafka_conf_t **out,
                     char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char kerr[256];
    struct { const char *k, *v; } base_consumer[] = {
        {"bootstrap.servers", rt->cfg->brokers},
        {"group.id", rt->group},
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"partition.assignment.strategy", "range"},
        {"isolation.level", "read_committed"},
        /* A position no longer in the log is reported, never jumped over
         * silently: see dp_part_out_of_range(). */
        {"auto.offset.reset", "error"},
        /* A small prefetch: dp_fetch_nudge() makes librdkafka refill it at
         * once instead of after its one-second backoff, so 256 KB keeps a
         * 1000-record batch fed and the process small. */
        {"queued.max.messages.kbytes", "256"},
        {"fetch.max.bytes", "1048576"},
        {"max.partition.fetch.bytes", "262144"},
        /* A fetch holding only caught-up partitions waits this long at the
         * broker, and everything else on the connection (the nudge, the
         * lagging partitions' next fetch) waits behind it. */
        {"fetch.wait.max.ms", "100"},
        {"client.id", rt->cfg->instance_id},
        {NULL, NULL}}, base_producer[] = {
        {"bootstrap.servers", rt->cfg->brokers},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        /* One request in flight: with more, librdkafka 2.0.2 counts a
         * failed request as delivered when a later one of the same
         * partition succeeds (an "implicit ack"), and a broker without
         * producer state for the partition had accepted that later one
         * over the gap.  A gap would then be hidden for good by the
         * downstream watermark (docs/design.md, "Delivery reports"). */
        {"max.in.flight.requests.per.connection", "1"},
        {"linger.ms", "5"},
        {"partitioner", "murmur2_random"},
        {"client.id", rt->cfg->instance_id},
        {NULL, NULL}};
    for (int i = 0; (producer ? base_producer : base_consumer)[i].k; i++) {
        const char *k = (producer ? base_producer : base_consumer)[i].k;
        const char *v = (producer ? base_producer : base_consumer)[i].v;
        if (rd_kafka_conf_set(conf, k, v, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return dp_errf(DP_ERR_PERMANENT, err, errlen, "Kafka %s=%s: %s", k,
                           v, kerr);
        }
    }
    dp_err e = dp_config_apply_kafka(rt->cfg, conf, producer, err, errlen);
    if (e) {
        rd_kafka_conf_destroy(conf);
        return e;
    }
    int stats_ms = rt->cfg->stats_interval_ms ? rt->cfg->stats_interval_ms
                   : rt->cfg->http_addr && *rt->cfg->http_addr ? 5000 : 0;
    if (stats_ms > 0) {
        char ms[32];
        snprintf(ms, sizeof(ms), "%d", stats_ms);
        if (rd_kafka_conf_set(conf, "statistics.interval.ms", ms, kerr,
                              sizeof(kerr)) == RD_KAFKA_CONF_OK)
            rd_kafka_conf_set_stats_cb(conf, stats_cb);
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, rt);
    *out = conf;
    return DP_OK;
}
dp_err dp_kafka_producer_new(dp_runtime *rt, char *err, size_t errlen)
{
    rd_kafka_conf_t *pc = NULL;
    char kerr[512];
    dp_err e = dp_kafka_conf(rt, 1, &pc, err, errlen);
    if (e)
        return e;
    rd_kafka_conf_set_dr_msg_cb(pc, dr_cb);
    rt->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, kerr, sizeof(kerr));
    if (!rt->producer)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "producer: %s", kerr);
    rt->producer_fatal = 0;
    return DP_OK;
}
/* Whether the producer is in a fatal state: error_cb reports it only when
 * the producer is polled, while produce calls fail with __FATAL at once. */
int dp_kafka_producer_fatal(dp_runtime *rt)
{
    if (rt->producer_fatal)
        return 1;
    char why[256];
    rd_kafka_resp_err_t fe = rd_kafka_fatal_error(rt->producer, why, sizeof(why));
    if (fe == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    snprintf(rt->fatal_error, sizeof(rt->fatal_error), "%s: %s",
             rd_kafka_err2name(fe), why);
    rt->producer_fatal = 1;
    return 1;
}
/* After a fatal producer error: whatever it still holds belongs to a batch
 * that will not commit, so it is purged and a new producer (new producer
 * id, fresh sequences) takes over. */
dp_err dp_kafka_producer_reset(dp_runtime *rt, char *err, size_t errlen)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, NULL, -1, -1};
    dp_log(DP_LOG_WARN, &ctx, "recreating the producer after a fatal error: %s",
           rt->fatal_error);
    rd_kafka_purge(rt->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rt->producer, 1000);
    rd_kafka_destroy(rt->producer);
    rt->producer = NULL;
    rt->stats.producer_resets++;
    return dp_kafka_producer_new(rt, err, errlen);
}
const char *dp_kafka_header_str(rd_kafka_headers_t *h, const char *name,
                                char *buf, size_t buflen)
{
    const void *v;
    size_t len;
    if (!h || rd_kafka_header_get_last(h, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR
        || !v || len >= buflen)
        return NULL;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return buf;
}
void dp_kafka_header_add(rd_kafka_headers_t *h, const char *name, const char *v)
{
    rd_kafka_header_add(h, name, -1, v, -1);
}
dp_err dp_kafka_produce(dp_runtime *rt, const char *topic, const void *key,
                        size_t klen, const void *value, size_t vlen,
                        rd_kafka_headers_t *h, char *err, size_t errlen)
{
    for (;;) {
        rd_kafka_resp_err_t ke = rd_kafka_producev(rt->producer,
            RD_KAFKA_V_TOPIC(topic),
            RD_KAFKA_V_KEY((void *)key, klen),
            RD_KAFKA_V_VALUE((void *)value, vlen),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h),
            RD_KAFKA_V_END);
        if (ke == RD_KAFKA_RESP_ERR_NO_ERROR)
            return DP_OK;
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(rt->producer, 10);
            continue;
        }
        rd_kafka_headers_destroy(h);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "produce to %s: %s",
                       topic, rd_kafka_err2str(ke));
    }
}
/* The docpipe-attempt value of slot s's outputs in attempt id. */
void dp_kafka_attempt_header(dp_runtime *rt, const dp_slot *s, int64_t id,
                             char out[96])
{
    const dp_part *pt = dp_part_get(rt, s->rec.partition);
    dp_attempt_format(id, pt->epoch, pt->committed, out, 96);
}
dp_err dp_kafka_publish_outputs(dp_runtime *rt, dp_slot *s, int64_t attempt,
                                char *err, size_t errlen)
{
    if (s->nouts == 0)
        return DP_OK;
    char att[96], gen[32];
    dp_kafka_attempt_header(rt, s, attempt, att);
    snprintf(gen, sizeof(gen), "%" PRId64, s->out_gen);
    char event[600];
    int slen = snprintf(event, 300, "%s/%s/%d", rt->group, s->rec.topic,
                        s->rec.partition);
    if (slen < 0 || slen >= 300)
        slen = 299;
    event[slen] = '\0';
    char *seq = event + slen + 1; /* event is "<stream>/<seq>" */
    for (size_t i = 0; i < s->nouts; i++) {
        dp_output *o = &s->outs[i];
        char *p = dp_rt_fmt_u64(seq, (uint64_t)s->rec.offset);
        *p++ = ':';
        p = dp_rt_fmt_u64(p, i);
        *p = '\0';
        rd_kafka_headers_t *h = rd_kafka_headers_new(6);
        rd_kafka_header_add(h, HDR_STREAM, -1, event, slen);
        rd_kafka_header_add(h, HDR_SEQ, -1, seq, p - seq);
        event[slen] = '/';
        rd_kafka_header_add(h, HDR_EVENT, -1, event, p - event);
        event[slen] = '\0';
        rd_kafka_header_add(h, HDR_CORR, -1, s->corr, -1);
        rd_kafka_header_add(h, DP_HDR_ATTEMPT, -1, att, -1);
        if (s->out_gen)
            rd_kafka_header_add(h, HDR_GEN, -1, gen, -1);
        dp_err e = dp_kafka_produce(rt, o->topic, o->key, o->key_len, o->value,
                               o->value_len, h, err, errlen);
        if (e)
            return e;
    }
    return DP_OK;
}

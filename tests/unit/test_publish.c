/*
 * test_publish: delivery reports without an offset, and the publisher that
 * sends those records again.
 *
 * librdkafka's in-process mock cluster injects the protocol fault seen on
 * the real broker: the first ProduceRequest of a partition fails slowly
 * while later requests of the same partition succeed.  librdkafka 2.0.2
 * then reports the first request's records delivered ("implicitly acked"),
 * without an offset, although they were never written.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "publish.h"

#define PRODUCE_API_KEY 0
#define NRECORDS 60

static rd_kafka_t *cluster_rk;
static rd_kafka_mock_cluster_t *mc;

static void setup(void)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
    cluster_rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    cr_assert(cluster_rk, "%s", err);
    mc = rd_kafka_mock_cluster_new(cluster_rk, 1);
    cr_assert(mc);
    cr_assert_eq(rd_kafka_mock_topic_create(mc, "t", 1, 1), 0);
}

static void teardown(void)
{
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(cluster_rk);
}

TestSuite(publish, .init = setup, .fini = teardown, .timeout = 60);

/* The producer settings docpipe uses (idempotence, a short linger). */
static rd_kafka_conf_t *producer_conf(void)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    cr_assert_eq(rd_kafka_conf_set(conf, "bootstrap.servers",
                                   rd_kafka_mock_cluster_bootstraps(mc), err,
                                   sizeof(err)), RD_KAFKA_CONF_OK);
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err));
    rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof(err));
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
    return conf;
}

/* The next ProduceRequest fails, answered after 300 ms; requests sent in
 * the meantime succeed at once. */
static void fail_next_produce_slowly(void)
{
    rd_kafka_mock_broker_push_request_error_rtts(
        mc, 1, PRODUCE_API_KEY, 1, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION, 300);
}

/* Values "0".."n-1" found in the topic; returns how many records it holds. */
static int read_back(int *seen, int n)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(mc),
                      err, sizeof(err));
    rd_kafka_conf_set(conf, "group.id", "reader", err, sizeof(err));
    rd_kafka_conf_set(conf, "log_level", "3", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    cr_assert(rk, "%s", err);
    int64_t lo = 0, hi = 0;
    cr_assert_eq(rd_kafka_query_watermark_offsets(rk, "t", 0, &lo, &hi, 5000), 0);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, "t", 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    int got = 0;
    for (int idle = 0; got < hi - lo && idle < 50;) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m) {
            idle++;
            continue;
        }
        if (!m->err) {
            char v[16];
            snprintf(v, sizeof(v), "%.*s", (int)m->len, (const char *)m->payload);
            int i = atoi(v);
            if (i >= 0 && i < n)
                seen[i]++;
            got++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_destroy(rk);
    cr_assert_eq(got, hi - lo, "read %d of the %lld records", got, (long long)(hi - lo));
    return got;
}

typedef struct raw_reports {
    int confirmed, without_offset, failed;
} raw_reports;

static void raw_dr(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    raw_reports *r = opaque;
    if (m->err)
        r->failed++;
    else if (dp_delivery_confirmed(m))
        r->confirmed++;
    else
        r->without_offset++;
}

/* The hazard itself, with a plain idempotent producer: every report says
 * success, some carry no offset, and exactly those records are missing. */
Test(publish, success_without_offset_is_a_record_the_broker_never_wrote)
{
    raw_reports r = {0};
    char err[256];
    rd_kafka_conf_t *conf = producer_conf();
    rd_kafka_conf_set_dr_msg_cb(conf, raw_dr);
    rd_kafka_conf_set_opaque(conf, &r);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    cr_assert(rk, "%s", err);
    cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t"), RD_KAFKA_V_PARTITION(0),
                                   RD_KAFKA_V_VALUE("0", 1),
                                   RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                   RD_KAFKA_V_END), 0);
    cr_assert_eq(rd_kafka_flush(rk, 5000), 0);   /* producer id and metadata */
    fail_next_produce_slowly();
    for (int i = 1; i < NRECORDS; i++) {
        char v[16];
        int n = snprintf(v, sizeof(v), "%d", i);
        cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC("t"), RD_KAFKA_V_PARTITION(0),
                                       RD_KAFKA_V_VALUE(v, (size_t)n),
                                       RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                       RD_KAFKA_V_END), 0);
        if (i % 2 == 0)
            rd_kafka_poll(rk, 10);   /* several requests while the first waits */
    }
    cr_assert_eq(rd_kafka_flush(rk, 10000), 0);
    rd_kafka_destroy(rk);

    int seen[NRECORDS] = {0};
    int held = read_back(seen, NRECORDS);
    cr_assert_eq(r.failed, 0, "no report says failed");
    cr_assert_eq(r.confirmed + r.without_offset, NRECORDS);
    cr_assert_gt(r.without_offset, 0, "the injected fault gave no offset-less report");
    cr_assert_eq(held, NRECORDS - r.without_offset,
                 "the topic holds %d: every offset-less record is missing", held);
}

/* The publisher sends those records again: all of them end up in the log,
 * each once (the copies were never written, so none is doubled). */
Test(publish, publisher_resends_records_reported_without_offset)
{
    char err[256];
    dp_publisher *p = dp_publisher_new(producer_conf(), err, sizeof(err));
    cr_assert(p, "%s", err);
    cr_assert_eq(dp_publisher_send(p, "t", "k", 1, strdup("0"), 1, "h", "v", err,
                                   sizeof(err)), 0, "%s", err);
    cr_assert_eq(dp_publisher_finish(p, 5000, 5, err, sizeof(err)), 0, "%s", err);
    fail_next_produce_slowly();
    for (int i = 1; i < NRECORDS; i++) {
        char v[16];
        int n = snprintf(v, sizeof(v), "%d", i);
        cr_assert_eq(dp_publisher_send(p, "t", v, (size_t)n, strdup(v), (size_t)n,
                                       "h", "v", err, sizeof(err)), 0, "%s", err);
        if (i % 2 == 0)
            usleep(10 * 1000);
    }
    cr_assert_eq(dp_publisher_finish(p, 10000, 5, err, sizeof(err)), 0, "%s", err);
    dp_publish_stats st = dp_publisher_stats(p);
    dp_publisher_free(p);

    cr_assert_gt(st.unconfirmed, 0, "the injected fault gave no offset-less report");
    cr_assert_eq(st.resent, st.unconfirmed);
    cr_assert_eq(st.sent, NRECORDS);
    cr_assert_eq(st.confirmed, NRECORDS, "confirmed %llu", (unsigned long long)st.confirmed);
    cr_assert_eq(st.failed, 0);
    int seen[NRECORDS] = {0};
    cr_assert_eq(read_back(seen, NRECORDS), NRECORDS);
    for (int i = 0; i < NRECORDS; i++)
        cr_assert_eq(seen[i], 1, "record %d is in the topic %d time(s)", i, seen[i]);
}

/* A record the producer cannot deliver at all is counted, not lost
 * silently: finish() returns it with the reason. */
Test(publish, undeliverable_record_is_reported)
{
    char err[256];
    rd_kafka_conf_t *conf = producer_conf();
    rd_kafka_conf_set(conf, "message.timeout.ms", "500", err, sizeof(err));
    rd_kafka_conf_set(conf, "log_level", "0", err, sizeof(err));
    dp_publisher *p = dp_publisher_new(conf, err, sizeof(err));
    cr_assert(p, "%s", err);
    rd_kafka_mock_broker_set_down(mc, 1);
    cr_assert_eq(dp_publisher_send(p, "t", "k", 1, strdup("x"), 1, NULL, NULL, err,
                                   sizeof(err)), 0, "%s", err);
    char why[256] = "";
    cr_assert_eq(dp_publisher_finish(p, 5000, 5, why, sizeof(why)), 1);
    cr_assert(strstr(why, "timed out"), "reason: %s", why);
    dp_publish_stats st = dp_publisher_stats(p);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.confirmed, 0);
    dp_publisher_free(p);
    rd_kafka_mock_broker_set_up(mc, 1);
}

Test(publish, only_a_report_with_an_offset_is_a_delivery)
{
    rd_kafka_message_t m;
    memset(&m, 0, sizeof(m));
    m.offset = 0;
    cr_assert(dp_delivery_confirmed(&m));
    m.offset = RD_KAFKA_OFFSET_INVALID;
    cr_assert_not(dp_delivery_confirmed(&m), "success without an offset");
    m.offset = 7;
    m.err = RD_KAFKA_RESP_ERR__MSG_TIMED_OUT;
    cr_assert_not(dp_delivery_confirmed(&m));
}

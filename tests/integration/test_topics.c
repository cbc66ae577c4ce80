/*
 * test_topics: `docpipe topics` creates topics with the partitions,
 * replication factor and topic configs it is given (flags, or the settings
 * of the same names), and dead-letter topics with their own retention.ms;
 * read back from the real broker (metadata, DescribeConfigs).  The broker
 * here is a single node: replication factor 1 works, 3 is refused.
 */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "integration/support_env.h"

static tenv T;

static void setup(void) { tenv_setup(&T, "topics"); }
static void teardown(void) { tenv_teardown(&T); }

static rd_kafka_t *admin(void)
{
    char kerr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, kerr, sizeof(kerr));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    cr_assert_not_null(rk, "%s", kerr);
    return rk;
}

/* The value of config name of topic, as the broker describes it, in buf. */
static const char *topic_config(const char *topic, const char *name, char *buf,
                                size_t buflen)
{
    rd_kafka_t *rk = admin();
    rd_kafka_ConfigResource_t *res =
        rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DescribeConfigs(rk, &res, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    cr_assert_not_null(ev, "DescribeConfigs %s: no answer", topic);
    cr_assert_eq(rd_kafka_event_error(ev), 0, "DescribeConfigs %s: %s", topic,
                 rd_kafka_event_error_string(ev));
    size_t nres;
    const rd_kafka_ConfigResource_t **rs = rd_kafka_DescribeConfigs_result_resources(
        rd_kafka_event_DescribeConfigs_result(ev), &nres);
    cr_assert_eq(nres, 1);
    cr_assert_eq(rd_kafka_ConfigResource_error(rs[0]), 0, "%s: %s", topic,
                 rd_kafka_ConfigResource_error_string(rs[0]));
    size_t n;
    const rd_kafka_ConfigEntry_t **ents = rd_kafka_ConfigResource_configs(rs[0], &n);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        if (strcmp(rd_kafka_ConfigEntry_name(ents[i]), name) == 0)
            snprintf(buf, buflen, "%s",
                     rd_kafka_ConfigEntry_value(ents[i]) ? rd_kafka_ConfigEntry_value(ents[i])
                                                         : "");
    rd_kafka_event_destroy(ev);
    rd_kafka_queue_destroy(q);
    rd_kafka_ConfigResource_destroy(res);
    rd_kafka_destroy(rk);
    return buf;
}

/* Partitions of topic and replicas of its first partition (-1: no topic).
 * A topic just created may take a moment to show in every broker's
 * metadata, longer on a loaded machine (5 s was once too short with both
 * cores busy): asked again for up to 60 s. */
static int partitions_of(const char *topic, int *replicas)
{
    rd_kafka_t *rk = admin();
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    int n = -1;
    for (int tries = 0; tries < 300 && n <= 0; tries++) {
        if (tries)
            usleep(200000);
        const rd_kafka_metadata_t *md;
        cr_assert_eq(rd_kafka_metadata(rk, 0, rkt, &md, 10000), 0);
        n = md->topics[0].err ? -1 : md->topics[0].partition_cnt;
        if (replicas)
            *replicas = n > 0 ? md->topics[0].partitions[0].replica_cnt : 0;
        rd_kafka_metadata_destroy(md);
    }
    rd_kafka_topic_destroy(rkt);
    rd_kafka_destroy(rk);
    return n;
}

/* A prefix of its own under the test's (its topics go at teardown). */
static void sub_prefix(char *env, size_t envlen, char *prefix, size_t plen,
                       const char *tag)
{
    snprintf(prefix, plen, "%s%s.", T.prefix, tag);
    snprintf(env, envlen, "DOCPIPE_TOPIC_PREFIX=%s", prefix);
}

Test(topics, flags_set_partitions_replication_configs_and_dlq_retention,
     .init = setup, .fini = teardown, .timeout = 180)
{
    char env[256], prefix[128], topic[256], buf[64];
    sub_prefix(env, sizeof(env), prefix, sizeof(prefix), "flags");
    const char *e[] = {env, NULL};
    const char *args[] = {"topics", "--partitions", "2", "--replication-factor", "1",
                          "--dlq-retention-ms", "3600000", "--config",
                          "max.message.bytes=2000000", NULL};
    cr_assert_eq(tenv_docpipe(&T, args, e), 0);

    snprintf(topic, sizeof(topic), "%sdemo.dlq", prefix);
    int replicas;
    cr_assert_eq(partitions_of(topic, &replicas), 2);
    cr_assert_eq(replicas, 1);
    cr_assert_str_eq(topic_config(topic, "retention.ms", buf, sizeof(buf)), "3600000");
    cr_assert_str_eq(topic_config(topic, "max.message.bytes", buf, sizeof(buf)), "2000000");

    /* Not a dead-letter topic: the broker's retention, the common config. */
    snprintf(topic, sizeof(topic), "%sdemo.in", prefix);
    cr_assert_eq(partitions_of(topic, NULL), 2);
    cr_assert_str_neq(topic_config(topic, "retention.ms", buf, sizeof(buf)), "3600000");
    cr_assert_str_eq(topic_config(topic, "max.message.bytes", buf, sizeof(buf)), "2000000");

    /* Again: every topic exists, nothing created, still a success. */
    cr_assert_eq(tenv_docpipe(&T, args, e), 0);
}

Test(topics, settings_give_the_same_as_flags, .init = setup, .fini = teardown,
     .timeout = 180)
{
    char env[256], prefix[128], topic[256], buf[64];
    sub_prefix(env, sizeof(env), prefix, sizeof(prefix), "settings");
    const char *e[] = {env, "DOCPIPE_TOPIC_PARTITIONS=3", "DOCPIPE_TOPIC_REPLICATION=1",
                       "DOCPIPE_DLQ_RETENTION_MS=7200000",
                       "DOCPIPE_TOPIC_CONFIGS=cleanup.policy=delete,max.message.bytes=1500000",
                       NULL};
    const char *args[] = {"topics", NULL};
    cr_assert_eq(tenv_docpipe(&T, args, e), 0);
    snprintf(topic, sizeof(topic), "%sembed.dlq", prefix);
    cr_assert_eq(partitions_of(topic, NULL), 3);
    cr_assert_str_eq(topic_config(topic, "retention.ms", buf, sizeof(buf)), "7200000");
    cr_assert_str_eq(topic_config(topic, "max.message.bytes", buf, sizeof(buf)), "1500000");
}

Test(topics, replication_beyond_the_brokers_is_refused, .init = setup,
     .fini = teardown, .timeout = 180)
{
    char env[256], prefix[128], topic[256];
    sub_prefix(env, sizeof(env), prefix, sizeof(prefix), "rf3");
    const char *e[] = {env, NULL};
    const char *args[] = {"topics", "--replication-factor", "3", NULL};
    cr_assert_eq(tenv_docpipe(&T, args, e), 1);
    snprintf(topic, sizeof(topic), "%sdemo.in", prefix);
    cr_assert_eq(partitions_of(topic, NULL), -1, "created with too few brokers");
}

Test(topics, bad_arguments_are_usage_errors, .init = setup, .fini = teardown,
     .timeout = 60)
{
    const char *zero[] = {"topics", "--replication-factor", "0", NULL};
    cr_assert_eq(tenv_docpipe(&T, zero, NULL), 2);
    const char *noeq[] = {"topics", "--config", "retention.ms", NULL};
    cr_assert_eq(tenv_docpipe(&T, noeq, NULL), 2);
    const char *unknown[] = {"topics", "--replicas", "1", NULL};
    cr_assert_eq(tenv_docpipe(&T, unknown, NULL), 2);
    const char *extra[] = {"topics", "stray", NULL};
    cr_assert_eq(tenv_docpipe(&T, extra, NULL), 2);
}

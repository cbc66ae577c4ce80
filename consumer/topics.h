/*
 * topics: creates Kafka topics that do not exist yet (admin API), and
 * deletes a prefix's topics.  Existing topics are left as they are (their
 * partition count included).
 */
#ifndef DP_TOPICS_H
#define DP_TOPICS_H

#include "config.h"
#include "dp_error.h"

/* How new topics are made: partitions, replication factor, topic configs
 * ("name=value" pairs separated by commas, for every topic; NULL or "":
 * none) and the retention.ms of dead-letter topics (0: the broker's). */
typedef struct dp_topic_spec {
    int partitions;
    int replication;
    const char *configs;
    long long dlq_retention_ms;
} dp_topic_spec;

/* Creates those of names[0..n) that do not exist; is_dlq[i] (is_dlq may be
 * NULL) marks a dead-letter topic.  *created (may be NULL) counts them. */
dp_err dp_topics_ensure(const dp_config *cfg, const char *const *names,
                        const int *is_dlq, int n, const dp_topic_spec *spec,
                        int *created, char *err, size_t errlen);

/* Deletes every topic whose name starts with prefix (non-empty): what a
 * test or a benchmark run under its own DOCPIPE_TOPIC_PREFIX leaves behind.
 * *deleted (may be NULL) counts the topics deleted. */
dp_err dp_topics_delete_prefix(const char *brokers, const char *prefix,
                               int *deleted, char *err, size_t errlen);

#endif

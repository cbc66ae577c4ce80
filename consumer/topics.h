/*
 * topics: creates Kafka topics that do not exist yet (admin API), and
 * deletes a prefix's topics.  Existing topics are left as they are (their
 * partition count included).
 */
#ifndef DP_TOPICS_H
#define DP_TOPICS_H

#include "config.h"
#include "dp_error.h"

dp_err dp_topics_ensure(const dp_config *cfg, const char *const *names, int n,
                        int partitions, int *created, char *err, size_t errlen);

/* Deletes every topic whose name starts with prefix (non-empty): what a
 * test or a benchmark run under its own DOCPIPE_TOPIC_PREFIX leaves behind.
 * *deleted (may be NULL) counts the topics deleted. */
dp_err dp_topics_delete_prefix(const char *brokers, const char *prefix,
                               int *deleted, char *err, size_t errlen);

#endif

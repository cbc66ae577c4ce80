/*
 * topics: creates Kafka topics that do not exist yet (admin API).
 * Existing topics are left as they are (their partition count included).
 */
#ifndef DP_TOPICS_H
#define DP_TOPICS_H

#include "config.h"
#include "dp_error.h"

dp_err dp_topics_ensure(const dp_config *cfg, const char *const *names, int n,
                        int partitions, int *created, char *err, size_t errlen);

#endif

/*
 * config: every docpipe setting, in one table.
 *
 * The table in config.c (name, type, default, environment variable, help) is
 * the single source of truth: dp_config_load() reads it, `docpipe --help`
 * prints it, and `docpipe config-doc` writes docs/configuration.md from it.
 * Precedence: built-in default < config file (DOCPIPE_CONFIG, lines of
 * `name = value`) < environment variable.
 *
 * librdkafka properties pass through untouched: DOCPIPE_KAFKA_<property>
 * (dots written as underscores, e.g. DOCPIPE_KAFKA_FETCH_MAX_BYTES) applies
 * to every Kafka client, DOCPIPE_CONSUMER_<property> and
 * DOCPIPE_PRODUCER_<property> to one kind only; in the file the same keys are
 * written kafka.<property>, consumer.<property>, producer.<property>.
 */
#ifndef DP_CONFIG_H
#define DP_CONFIG_H

#include <stdio.h>
#include <librdkafka/rdkafka.h>

#include "dp_error.h"

typedef struct dp_config {
    char *brokers;
    char *database_url;
    char *instance_id;
    char *schema_dir;
    char *storage_dir;
    char *offset_reset;
    char *offset_gap;
    char *http_addr;
    int stats_interval_ms;
    int http_live_ms;
    char *log_level;
    char *topic_prefix;
    int batch_max;
    int batch_wait_ms;
    int retry_max;
    int retry_base_ms;
    double retry_jitter;
    int produce_timeout_ms;
    int lock_timeout_ms;
    int idle_txn_timeout_ms;
    char *pg_plan_cache_mode;
    int pg_replan_ms;
    int topic_partitions;
    int topic_replication;
    char *topic_configs;        /* "k=v,k=v" given to every topic created */
    long long dlq_retention_ms; /* 0: broker default, -1: forever */
    char *gc_event_retention;   /* PostgreSQL intervals, read by docpipe gc */
    char *gc_dlq_retention;
    char *gc_file_grace;
    char *gc_attempt_retention;
    int db_connect_timeout_ms;
    int demo_publish;           /* demo stage: publish each record onward */
    char *embed_url;
    char *embed_model;
    char *embed_api_key;
    char *embed_encoding;
    int embed_dim;
    int embed_inflight;
    int embed_rpm;
    int embed_tpm;
    char *embed_rate_scope;   /* shared | process */
    int embed_timeout_ms;
    int embed_buffer_kb;
    int embed_pass_ms;
    int embed_window_tokens;
    char *tika_url;
    int tika_timeout_ms;
    int tika_concurrency;
    int parse_pass_ms;
    char *text_fallback_charset;
    int breaker_threshold;
    int breaker_reset_ms;
    char *chunker_version;      /* chunker of new jobs (intake) */
    int chunk_max_tokens;       /* markdown-simple@2 */
    int chunk_overlap_tokens;
    /* Pass-through Kafka properties: NULL-terminated name/value pairs. */
    char **kafka_common;
    char **kafka_consumer;
    char **kafka_producer;
} dp_config;

/* Loads defaults, then the file named by DOCPIPE_CONFIG (if any), then the
 * environment.  Returns DP_ERR_PERMANENT with a message naming the setting
 * when a value does not parse.  Free with dp_config_free(). */
dp_err dp_config_load(dp_config *cfg, char *err, size_t errlen);
void dp_config_free(dp_config *cfg);

/* Applies the pass-through properties to a librdkafka configuration, and
 * routes its log to docpipe's JSON lines (log.h; secrets redacted). */
dp_err dp_config_apply_kafka(const dp_config *cfg, rd_kafka_conf_t *conf,
                             int is_producer, char *err, size_t errlen);

/* The settings table as text for --help, and as a Markdown document. */
void dp_config_print_help(FILE *out);
void dp_config_print_markdown(FILE *out);

#endif

/*
 * publish: when a delivery report means the record is in the log, and a
 * one-shot publisher (docpipe submit, demo-produce) that re-sends the
 * records whose delivery was not confirmed.
 *
 * librdkafka 2.0.2's idempotent producer reports success without an offset
 * for messages it "implicitly acks": a request R1 fails, a later R2 of the
 * same partition succeeds, and librdkafka concludes that R1 was written
 * too.  A broker with no producer state for the partition (a new topic, a
 * new producer) accepts R2 whatever its first sequence number, so R1 was
 * NOT written: the record is lost while its delivery report says success.
 * docs/design.md ("Delivery reports") has the evidence.  So a report is a
 * delivery only when it carries an offset; anything else is sent again and
 * downstream deduplication (event ids, document ids) absorbs the copy when
 * the first one did land.
 */
#ifndef DP_PUBLISH_H
#define DP_PUBLISH_H

#include <stddef.h>
#include <stdint.h>

#include <librdkafka/rdkafka.h>

/* 1 when the report proves the record is in the log: no error and an
 * offset.  (Our producers use acks=all, under which a written record
 * always has one.) */
static inline int dp_delivery_confirmed(const rd_kafka_message_t *m)
{
    return m->err == RD_KAFKA_RESP_ERR_NO_ERROR && m->offset >= 0;
}

typedef struct dp_publisher dp_publisher;

struct dp_config;

/* The one-shot publishers' producer settings: cfg's brokers, idempotence,
 * linger_ms, the partitioner when not NULL, then cfg's Kafka pass-through.
 * NULL with err set when a setting is refused. */
rd_kafka_conf_t *dp_publisher_conf(const struct dp_config *cfg, const char *linger_ms,
                                   const char *partitioner, char *err, size_t errlen);

typedef struct dp_publish_stats {
    uint64_t sent;        /* records handed to send() */
    uint64_t confirmed;   /* delivered with an offset */
    uint64_t unconfirmed; /* reported delivered without an offset */
    uint64_t resent;      /* produce calls made again for those */
    uint64_t failed;      /* reported failed, or never confirmed */
} dp_publish_stats;

/* Takes conf (also on failure); sets its delivery report callback and
 * opaque.  Returns NULL with err set when the producer cannot be made. */
dp_publisher *dp_publisher_new(rd_kafka_conf_t *conf, char *err, size_t errlen);

/* Queues one record.  value is taken (freed by the publisher, also on
 * failure); key and the header (name and value, both NULL for none) are
 * copied.  Returns 0, or -1 with err set. */
int dp_publisher_send(dp_publisher *p, const char *topic, const void *key,
                      size_t key_len, void *value, size_t value_len,
                      const char *header_name, const char *header_value,
                      char *err, size_t errlen);

#define DP_PUBLISHER_MAX_HEADERS 4

/* The same with up to DP_PUBLISHER_MAX_HEADERS headers: name, value pairs,
 * NULL-terminated (headers itself may be NULL). */
int dp_publisher_send_headers(dp_publisher *p, const char *topic, const void *key,
                              size_t key_len, void *value, size_t value_len,
                              const char *const *headers, char *err, size_t errlen);

/* Waits for every report; records reported without an offset are sent
 * again, up to max_rounds times.  Returns the number of records not
 * confirmed in the end (0: every record is in the log); err holds the last
 * failure's reason. */
uint64_t dp_publisher_finish(dp_publisher *p, int timeout_ms, int max_rounds,
                             char *err, size_t errlen);

dp_publish_stats dp_publisher_stats(const dp_publisher *p);

/* Destroys the producer; records still queued are not waited for. */
void dp_publisher_free(dp_publisher *p);

#endif

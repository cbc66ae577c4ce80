/*
 * runtime: runs one stage as a member of its Kafka consumer group.
 *
 * See stage.h for the stage's side of the contract and docs/design.md for
 * why this is exactly-once.  In short, per batch:
 *   BEGIN; handler effects; dead-letter rows; dedup watermarks;
 *   fenced offset compare-and-set (row-locks our partitions);
 *   produce outputs and dead letters, wait for every ack;  COMMIT.
 * A crash before COMMIT leaves no effect and no offset move; outputs already
 * acknowledged are published again on replay with the same event ids, and
 * downstream runtimes drop them by the per-stream watermark.
 */
#ifndef DP_RUNTIME_H
#define DP_RUNTIME_H

#include <signal.h>
#include <stdint.h>

#include "config.h"
#include "stage.h"

typedef struct dp_runtime dp_runtime;

/* Counters a test or the status command can read. */
typedef struct dp_runtime_stats {
    uint64_t batches;
    uint64_t records;        /* records whose processing committed */
    uint64_t duplicates;     /* records skipped as already seen */
    uint64_t dead_letters;
    uint64_t retries;        /* record attempts that failed retryably */
    uint64_t fenced;         /* commits refused because of fencing */
    uint64_t rollbacks;
    uint64_t gaps;           /* offsets never read (deleted from the log) */
    uint64_t aborted;        /* records of upstream attempts that never committed */
    uint64_t undecided;      /* records deferred: their attempt still open */
    uint64_t producer_resets; /* producers recreated after a fatal error */
    uint64_t left;           /* records a bounded pass left for a later one */
    uint64_t stalls;         /* partitions found not fetching (rejoined) */
} dp_runtime_stats;

dp_err dp_runtime_new(const dp_config *cfg, const dp_stage *stage,
                      dp_runtime **out, char *err, size_t errlen);

/* Runs until *stop becomes non-zero (set it from a signal handler), then
 * finishes the batch in hand, commits, leaves the group and flushes. */
dp_err dp_runtime_run(dp_runtime *rt, volatile sig_atomic_t *stop, char *err,
                      size_t errlen);

void dp_runtime_get_stats(dp_runtime *rt, dp_runtime_stats *out);

/* A latency histogram with fixed bounds (seconds), Prometheus-style. */
#define DP_HIST_BUCKETS 14
extern const double dp_hist_bounds[DP_HIST_BUCKETS];
typedef struct dp_hist {
    uint64_t counts[DP_HIST_BUCKETS + 1]; /* per bucket, not cumulative; last: +Inf */
    double sum;
    uint64_t count;
} dp_hist;
void dp_hist_observe(dp_hist *h, double seconds);

/* Counters of one Kafka client, from librdkafka's statistics callback. */
typedef struct dp_kafka_view {
    int64_t tx, rx, tx_bytes, rx_bytes, txmsgs, rxmsgs; /* totals */
    int64_t msg_cnt, replyq;                            /* now */
} dp_kafka_view;

/* What a running stage shows the outside (metrics, health): a copy taken
 * under the runtime's lock, safe from any thread. */
typedef struct dp_runtime_view {
    dp_runtime_stats stats;
    uint64_t dead_letters_by[3]; /* permanent, retryable, poison */
    uint64_t rebalances;         /* assignments received */
    dp_hist batch_seconds;       /* a polled batch settled, retries included */
    int joined;                  /* the group gave it an assignment */
    int assigned;                /* partitions owned now */
    int64_t lag;                 /* records of its partitions not committed yet */
    int64_t last_turn_ms;        /* dp_clock_mono_ms of the loop's last turn */
    dp_kafka_view consumer, producer;
} dp_runtime_view;

void dp_runtime_view_get(dp_runtime *rt, dp_runtime_view *out);
const char *dp_runtime_stage(const dp_runtime *rt);
void dp_runtime_free(dp_runtime *rt);

#endif

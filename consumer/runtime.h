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
} dp_runtime_stats;

dp_err dp_runtime_new(const dp_config *cfg, const dp_stage *stage,
                      dp_runtime **out, char *err, size_t errlen);

/* Runs until *stop becomes non-zero (set it from a signal handler), then
 * finishes the batch in hand, commits, leaves the group and flushes. */
dp_err dp_runtime_run(dp_runtime *rt, volatile sig_atomic_t *stop, char *err,
                      size_t errlen);

void dp_runtime_get_stats(dp_runtime *rt, dp_runtime_stats *out);
void dp_runtime_free(dp_runtime *rt);

#endif

/*
 * stage: what a document stage gives the runtime, and what it gets back.
 *
 * A stage is a table of callbacks and limits (dp_stage).  The runtime owns
 * everything Kafka and transactional: it polls a batch, opens a PostgreSQL
 * transaction, calls the stage's handler with the decoded records, and then
 * commits the handler's effects, the stage's outputs and dead letters, and the
 * input offsets together.  A stage never sees offsets, epochs or producers.
 *
 * The handler's contract:
 *   - perform the batch's effects with dp_batch_db() inside the open
 *     transaction (never BEGIN/COMMIT itself);
 *   - for each record either leave it ok (and emit its outputs with
 *     dp_batch_emit) or fail it with dp_record_fail(retryable | permanent);
 *   - return DP_OK, or a batch-wide error when it cannot tell which record
 *     is at fault (a lost connection: retryable; anything else: permanent,
 *     and the runtime retries the records one at a time to find the culprit).
 * If any record fails, the runtime rolls the transaction back and calls the
 * handler again without the failed records, so effects of a failed record
 * never commit.  Handlers must therefore be deterministic over their input
 * and the database, and may be called more than once for the same record.
 */
#ifndef DP_STAGE_H
#define DP_STAGE_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"
#include "dp_error.h"

typedef struct dp_record {
    const char *topic;
    int32_t partition;
    int64_t offset;
    int64_t timestamp_ms;        /* -1 if the record has none */
    const void *key;
    size_t key_len;
    const void *value;
    size_t value_len;
    const char *correlation_id;  /* header docpipe-correlation-id, or derived */
    int attempts;                /* 1 on the first attempt */
    int replay;                  /* 1: offset below the partition's
                                    replay_until (docpipe replay moved the
                                    partition back over it) */
    int64_t generation;          /* header docpipe-generation, 0 if none */
    void *decoded;               /* stage->decode's result */
} dp_record;

typedef struct dp_batch dp_batch;

size_t dp_batch_count(const dp_batch *b);
dp_record *dp_batch_record(dp_batch *b, size_t i);
PGconn *dp_batch_db(dp_batch *b);
const char *dp_batch_instance(const dp_batch *b);
const dp_config *dp_batch_config(const dp_batch *b);

/* Marks record i failed (DP_ERR_RETRYABLE or DP_ERR_PERMANENT). */
void dp_batch_fail(dp_batch *b, size_t i, dp_err verdict, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* With a retryable dp_batch_fail: retry record i no sooner than ms from now
 * (a service's Retry-After). */
void dp_batch_retry_in(dp_batch *b, size_t i, int64_t ms);

/* Record i cannot be handled yet (e.g. an upstream commit is not visible
 * yet): it is retried after ms without spending its retry budget. */
void dp_batch_defer(dp_batch *b, size_t i, int64_t ms, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Record i was not handled in this pass and left no effect (e.g. a pass
 * bounded in time stopped before it): the others commit without it, and
 * it is fetched again after ms, its retry budget unspent.  Only the
 * records after it in its partition may be left with it (a suffix of the
 * partition's records in the batch); a record left before one that was
 * handled makes it an ordinary dp_batch_defer (the pass runs again). */
void dp_batch_leave(dp_batch *b, size_t i, int64_t ms);

/* Queues an output of record i for topic; key and value are copied.  The
 * runtime publishes it only if the batch commits, with headers naming its
 * source and a deterministic event id. */
void dp_batch_emit(dp_batch *b, size_t i, const char *topic, const void *key,
                   size_t key_len, const void *value, size_t value_len);

/* Record i's outputs carry this generation (header docpipe-generation)
 * instead of the record's own: a stage that starts a document's work over
 * (a replay) hands the new generation down, and stages below discard work
 * of older generations still in flight. */
void dp_batch_set_generation(dp_batch *b, size_t i, int64_t generation);

/* A batch-wide DP_ERR_RETRYABLE from the handler (e.g. a circuit breaker is
 * open) waits at least ms before the batch is tried again. */
void dp_batch_retry_after(dp_batch *b, int64_t ms);

typedef struct dp_stage {
    const char *name;            /* consumer group is <prefix><name> */
    const char *input_topic;     /* full topic name */
    const char *const *output_topics; /* NULL-terminated, may be NULL */
    const char *dlq_topic;       /* full topic name */
    int batch_max;               /* default records per batch */
    void *state;

    /* Decodes one record's value; DP_ERR_POISON dead-letters it at once. */
    dp_err (*decode)(void *state, const void *value, size_t len, void **out,
                     char *err, size_t errlen);
    void (*free_decoded)(void *state, void *decoded);
    dp_err (*handle)(void *state, dp_batch *batch, char *err, size_t errlen);
    /* Optional: called inside the commit transaction for each record being
     * dead-lettered (rec->decoded may be NULL for poison), to record the
     * failure in the stage's own tables. */
    dp_err (*dead_letter)(void *state, PGconn *db, const dp_record *rec,
                          dp_err category, const char *error, char *err,
                          size_t errlen);
} dp_stage;

#endif

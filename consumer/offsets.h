/*
 * offsets: consumer offsets kept in PostgreSQL, fenced by an epoch.
 *
 * Claiming a partition bumps its epoch and returns the stored next offset;
 * the claimant then holds that epoch.  Advancing is a compare-and-set on
 * (epoch, expected next offset) run as the last statement of the batch's
 * transaction: if another instance claimed the partition since, or the
 * offset moved, no row matches and the whole transaction must roll back
 * (DP_ERR_FENCED).  The successful UPDATE row-locks the partitions until
 * COMMIT, so a new claimant waits for an in-progress commit and then sees
 * its result.
 */
#ifndef DP_OFFSETS_H
#define DP_OFFSETS_H

#include <libpq-fe.h>
#include <stdint.h>

#include "dp_error.h"

typedef struct dp_offset_claim {
    int32_t partition;
    int64_t next_offset; /* -1: nothing stored yet */
    int64_t epoch;
    int64_t replay_until; /* offsets below it are replays; -1: none */
} dp_offset_claim;

typedef struct dp_offset_advance {
    int32_t partition;
    int64_t epoch;
    int64_t expected;    /* -1: nothing stored yet */
    int64_t next_offset;
} dp_offset_advance;

/* Claims n partitions of (group, topic) for owner in its own transaction;
 * claims[i].partition is read, next_offset and epoch are filled in. */
dp_err dp_offsets_claim(PGconn *conn, const char *group, const char *topic,
                        const char *owner, dp_offset_claim *claims, int n,
                        char *err, size_t errlen);

/* Inside the caller's open transaction: advances every partition and
 * records attempt_id as committed with them (docpipe.dp_attempts, see
 * attempts.h), or reports DP_ERR_FENCED (then the caller must roll back). */
dp_err dp_offsets_advance(PGconn *conn, const char *group, const char *topic,
                          const dp_offset_advance *adv, int n,
                          int64_t attempt_id, char *err, size_t errlen);

/* The epochs of the partitions of (group, topic) now; epochs[i] = -1 for a
 * partition with no row.  For an owner to notice that a replay (or anyone)
 * took a partition while it had nothing to commit. */
dp_err dp_offsets_epochs(PGconn *conn, const char *group, const char *topic,
                         const int32_t *parts, int64_t *epochs, int n,
                         char *err, size_t errlen);

/* Sets a partition's next offset outright, bumping its epoch (tests; the
 * operators' way is `docpipe replay`, cli/replay.c). */
dp_err dp_offsets_reset(PGconn *conn, const char *group, const char *topic,
                        int32_t partition, int64_t next_offset, char *err,
                        size_t errlen);

#endif

/*
 * attempts: commit visibility, PostgreSQL's answer to read_committed.
 *
 * A stage publishes a batch's outputs before its COMMIT, so a record on a
 * topic may belong to a transaction that never commits (a crash, a fenced
 * zombie, a COMMIT whose reply was lost, a delivery timeout elsewhere in
 * the batch).  Each attempt at settling a batch therefore has an id,
 * written into docpipe.dp_attempts by the attempt's own transaction
 * together with the fenced offset update, and carried by every output in
 * the header docpipe-attempt as "<id>:<epoch>:<expected>": the epoch and
 * the committed position of the output's input partition when the attempt
 * began.  A consumer decides each record's attempt, in one snapshot:
 *
 *   committed   the attempt's row is visible;
 *   aborted     it is not, and the input partition's (epoch, position) is no
 *               longer (epoch, expected): the attempt's compare-and-set can
 *               never succeed now, so it never will commit;
 *   undecided   neither: the attempt may still be running (it holds the
 *               partition's row lock from its offset update until COMMIT, so
 *               dp_attempts_wait waits for it), or it died and nobody has
 *               taken the partition yet.
 *
 * docs/design.md, "Acting only on committed batches", argues it.
 */
#ifndef DP_ATTEMPTS_H
#define DP_ATTEMPTS_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "dp_error.h"

#define DP_HDR_ATTEMPT "docpipe-attempt"

typedef enum {
    DP_ATTEMPT_UNKNOWN = 0,      /* not asked yet */
    DP_ATTEMPT_COMMITTED,
    DP_ATTEMPT_ABORTED,
    DP_ATTEMPT_UNDECIDED,
} dp_attempt_state;

typedef struct dp_attempt_ref {
    int64_t id;
    const char *group;           /* the producing stage's group */
    const char *topic;           /* its input topic */
    int32_t partition;           /* its input partition */
    int64_t epoch, expected;     /* as the attempt began */
    dp_attempt_state state;      /* filled in */
} dp_attempt_ref;

/* A fresh attempt id: random, 63 bits, never 0. */
int64_t dp_attempt_new_id(void);

/* Formats "<id>:<epoch>:<expected>" into out (at least 64 bytes). */
void dp_attempt_format(int64_t id, int64_t epoch, int64_t expected, char *out,
                       size_t outlen);

/* Parses a docpipe-attempt header value and a docpipe-stream value
 * ("<group>/<topic>/<partition>") into ref; group and topic point into
 * stream_buf, which is modified.  Returns 0 if either does not parse. */
int dp_attempt_parse(const char *attempt, char *stream_buf, dp_attempt_ref *ref);

/* Decides refs[0..n) in one statement (one snapshot). */
dp_err dp_attempts_resolve(PGconn *db, dp_attempt_ref *refs, size_t n,
                           char *err, size_t errlen);

/* Waits (outside any transaction) for the transactions holding the row
 * locks of the undecided refs' partitions to end: an attempt that reached
 * its offset update holds them until its COMMIT or ROLLBACK.  Bounded by
 * the session's lock_timeout (a lock timeout is not an error here). */
dp_err dp_attempts_wait(PGconn *db, const dp_attempt_ref *refs, size_t n,
                        char *err, size_t errlen);

#endif

/*
 * retry_runs: where a `docpipe retry` run stands, so that an interrupted
 * one continues instead of starting over.
 *
 * A run is a row of upload_pipeline.retry_runs (migration 0010), known by
 * its selection's key (dp_retry_sel_key).  Each chunk's transaction moves
 * the run's cursor (after_document) past the chunk, so the cursor says
 * exactly which documents are done: those up to it, committed with it.
 * Running the same command again finds the unfinished run and continues
 * after its cursor; a finished run is history, and the same command then
 * starts a new one.  The process working a run holds a session advisory
 * lock on it: a second process on the same selection is refused, and a
 * killed one releases it with its connection.
 */
#ifndef DP_RETRY_RUNS_H
#define DP_RETRY_RUNS_H

#include <libpq-fe.h>

#include "ids.h"

typedef struct dp_retry_run {
    long long id;                   /* 0: none (a dry run of a new selection) */
    int resumed;                    /* an interrupted run, continued */
    char after[DP_UUID_STR_SIZE];   /* the cursor: DP_RETRY_NIL_ID at the start */
    long long done, sent;           /* by the run so far, earlier sessions too */
    char since[64], until[64];      /* resolved bounds, "" for none */
} dp_retry_run;

/* Resolves since and until (as given, NULL for none) to timestamps:
 * returns 2 with err set if PostgreSQL does not read one as a time. */
int dp_retry_run_bounds(PGconn *db, const char *since, const char *until,
                        dp_retry_run *run, char *err, size_t errlen);

/* Finds the unfinished run of selector, or (not for a dry run) starts one
 * with the bounds resolved into run; restart abandons the unfinished one
 * first.  A run that another process is working is refused.  A dry run
 * takes no lock and creates nothing: it shows what running would do.
 * Returns 0, or 1 with err set. */
int dp_retry_run_open(PGconn *db, const char *selector, int restart, int dry,
                      dp_retry_run *run, char *err, size_t errlen);

/* In the chunk's transaction: the cursor moves to after, done and sent
 * grow by these; finished ends the run.  (run itself is updated by the
 * caller once the transaction has committed.) */
int dp_retry_run_advance(PGconn *db, const dp_retry_run *run, const char *after,
                         long long done, long long sent, int finished,
                         char *err, size_t errlen);

#endif

/*
 * cli.h: what the docpipe commands share (the files of cli/).
 *
 * Exit codes every command keeps to, so scripts can trust them: 0 done,
 * 1 failed, 2 usage error, 3 timed out (wait, submit --wait), 128 plus the
 * signal's number when SIGINT (130) or SIGTERM (143) ended the command.
 * The stop flag is docpipe.c's: the signal handler stores the signal's
 * number in it, so a command that sees it set knows which one came.
 */
#ifndef DP_CLI_H
#define DP_CLI_H

#include <signal.h>
#include <stddef.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "config.h"

#define DP_EXIT_OK 0
#define DP_EXIT_FAILED 1
#define DP_EXIT_USAGE 2
#define DP_EXIT_TIMEOUT 3
#define DP_EXIT_SIGNAL_BASE 128

/* How wait reports its progress (stderr) and its end (stdout). */
typedef struct dp_wait_opts {
    int timeout_s;        /* give up after this long: DP_EXIT_TIMEOUT */
    int progress_every_s; /* not a terminal: a plain line this often; 0 none */
    int json;             /* the final summary as JSON on stdout */
} dp_wait_opts;

/* Waits until the n documents ids (n == 0: every document known) are
 * complete or failed.  Returns 0, 1, DP_EXIT_TIMEOUT, or 128+signal when
 * *stop was set.  *summary (if not NULL) receives the final summary, owned
 * by the caller; else it is printed on stdout (TSV line, or JSON). */
int dp_wait_docs(const dp_config *cfg, const char *const *ids, int n,
                 const dp_wait_opts *o, volatile sig_atomic_t *stop,
                 json_t **summary);

/* lag.c: a Kafka client for reading watermarks, and every named stage's
 * lag as {"stages": [{stage, group, topic, partitions[], total}]}.  NULL
 * and err on failure. */
rd_kafka_t *dp_lag_client(const dp_config *cfg, char *err, size_t errlen);
json_t *dp_lag_read(rd_kafka_t *rk, PGconn *db, const dp_config *cfg,
                    const char *const *names, int n, char *err, size_t errlen);

#endif

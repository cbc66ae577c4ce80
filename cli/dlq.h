/*
 * dlq: what the two files of `docpipe dlq` share.  cli/dlq.c holds the
 * dispatch and the commands that only read or delete rows (list, show,
 * purge); cli/dlq_redrive.c sends dead letters back (redrive).
 *
 * Every dlq command works on the dead letters of the configured topic
 * prefix only (their input topic starts with it): a database shared by
 * several deployments, or by tests each under its own prefix, keeps them
 * apart, as the topics do.
 */
#ifndef DP_CLI_DLQ_H
#define DP_CLI_DLQ_H

#include <signal.h>
#include <stddef.h>

#include <libpq-fe.h>

#include "config.h"

#define DP_DLQ_EXIT_USAGE 2

/* The instant text names, read by PostgreSQL: a timestamp (ISO 8601 or any
 * form PostgreSQL accepts) or, when durations is set, an interval before
 * now ("30 days", "12h", "P7D"; a bare number is refused).  Writes it into
 * out as timestamptz text.  Returns 0, 2 when text is not an instant (told
 * on stderr, naming cmd and what), or 1 when the database failed. */
int dp_dlq_instant(PGconn *db, const char *cmd, const char *what,
                   const char *text, int durations, char *out, size_t outlen);

/* Takes, for the session, the lock that keeps commands changing the dead
 * letters of one prefix (redrive, purge) from running at once.  Returns 0,
 * or 1 with the reason on stderr (another one holds it). */
int dp_dlq_lock(PGconn *db, const char *cmd, const char *prefix);

/* A dead letter's id as given on the command line: a positive integer. */
int dp_dlq_parse_id(const char *text);

/* `docpipe dlq redrive`; argv[0] is the subcommand's name.  stop is set by
 * SIGINT/SIGTERM. */
int dp_dlq_redrive(const dp_config *cfg, volatile sig_atomic_t *stop,
                   int argc, char **argv);

#endif

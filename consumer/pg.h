/*
 * pg: the few libpq helpers every module shares.
 *
 * Connections are opened with the session settings the runtime relies on
 * (idle_in_transaction_session_timeout, so the server itself ends a stalled
 * zombie's transaction and releases its locks; application_name = instance).
 * dp_pg_check() turns a PGresult into a dp_err: connection loss, deadlocks,
 * serialization failures, lock timeouts and server shutdowns are retryable,
 * everything else permanent.
 */
#ifndef DP_PG_H
#define DP_PG_H

#include <libpq-fe.h>

#include "config.h"
#include "dp_error.h"

/* Connects, retrying with capped backoff for up to db_connect_timeout_ms
 * while PostgreSQL does not accept connections (it may be starting). */
dp_err dp_pg_connect(const dp_config *cfg, const char *app, PGconn **out,
                     char *err, size_t errlen);

/* One attempt: a running stage reconnecting has its own retry loop. */
dp_err dp_pg_connect_once(const dp_config *cfg, const char *app, PGconn **out,
                          char *err, size_t errlen);

/* Checks res against the expected status, clears it unless it is wanted
 * (keep != 0 and status ok).  Writes "what: server message" into err. */
dp_err dp_pg_check(PGconn *conn, PGresult *res, ExecStatusType want,
                   const char *what, char *err, size_t errlen);

/* PQexecParams, with the statement prepared on the connection the first
 * time and executed as prepared afterwards (no parsing and planning per
 * call).  sql must be a string literal: statements are told apart by its
 * address. */
PGresult *dp_pg_execp(PGconn *conn, const char *sql, int nparams, const Oid *types,
                      const char *const *values, const int *lengths, const int *formats,
                      int result_format);

/* The same statement sent without waiting for its result (one at a time:
 * collect it with dp_pg_collect before the connection's next query).
 * NULL: sent; otherwise the failure, for dp_pg_check. */
PGresult *dp_pg_sendp(PGconn *conn, const char *sql, int nparams, const Oid *types,
                      const char *const *values, const int *lengths,
                      const int *formats, int result_format);
/* Waits for the result of what dp_pg_sendp sent. */
PGresult *dp_pg_collect(PGconn *conn);

/* PQfinish, forgetting what this thread prepared on conn (a later
 * connection at the same address must not inherit it). */
void dp_pg_finish(PGconn *conn);

/* Drops the session's cached plans (DISCARD PLANS): prepared statements
 * stay, and each is planned again at its next run, for its tables' size at
 * that moment.  Foreign-key checks' plans are dropped too. */
dp_err dp_pg_replan(PGconn *conn, char *err, size_t errlen);

/* Runs a statement with no result rows (BEGIN, COMMIT, SET ...). */
dp_err dp_pg_exec(PGconn *conn, const char *sql, char *err, size_t errlen);

/* dp_pg_execp of a statement with no result rows (text parameters), its
 * failure in err as "what: message". */
dp_err dp_pg_command(PGconn *conn, const char *sql, int nparams,
                     const char *const *values, const char *what, char *err,
                     size_t errlen);

/* Classification of a failed result (or of conn when res is NULL). */
dp_err dp_pg_classify(PGconn *conn, const PGresult *res);

/* Appends a PostgreSQL array literal element, quoted and escaped, to a
 * growing buffer: used to pass arrays to unnest() as one parameter. */
typedef struct dp_buf {
    char *data;
    size_t len, cap;
} dp_buf;
void dp_buf_append(dp_buf *b, const void *data, size_t len);
void dp_buf_appendf(dp_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void dp_buf_array_text(dp_buf *b, const char *s, size_t len);
/* Appends n float4 values as PostgreSQL's binary form of a one-dimensional
 * real[] (a parameter of type DP_FLOAT4_ARRAY_OID, format 1): a vector's
 * elements go over as their bits, with no text to print or parse. */
#define DP_FLOAT4_ARRAY_OID 1021
void dp_buf_float4_array(dp_buf *b, const float *v, size_t n);
/* PostgreSQL's binary form of a one-dimensional text[] (a parameter of type
 * DP_TEXT_ARRAY_OID, format 1): each element goes over as its length and
 * its bytes, so no character in it (a quote, a backslash, a brace) can
 * change the statement, as it might in an array literal.  _begin resets b
 * to an empty array; each _add appends one element.  The server still
 * checks the bytes are text of its encoding (no NUL, valid UTF-8). */
#define DP_TEXT_ARRAY_OID 1009
void dp_buf_text_array_begin(dp_buf *b);
void dp_buf_text_array_add(dp_buf *b, const char *s, size_t len);
void dp_buf_reset(dp_buf *b);
void dp_buf_free(dp_buf *b);

#endif

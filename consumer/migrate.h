/*
 * migrate: applies schemas/sql/NNNN_name.sql in order, once each.
 *
 * Applied versions are recorded in docpipe.schema_migrations.  Each file runs
 * in its own transaction together with its version row, under an advisory
 * lock, so concurrent `docpipe migrate` calls are safe and a failed file
 * leaves nothing half-applied.
 */
#ifndef DP_MIGRATE_H
#define DP_MIGRATE_H

#include <libpq-fe.h>
#include <stdio.h>

#include "dp_error.h"

/* Applies pending migrations from sql_dir; reports each applied file on
 * out (may be NULL).  *applied receives the number applied (may be NULL). */
dp_err dp_migrate(PGconn *conn, const char *sql_dir, FILE *out, int *applied,
                  char *err, size_t errlen);

#endif

/*
 * test_pg: dp_pg_execp prepares a statement once per connection and runs it
 * as prepared afterwards, also across a reset connection (a new server
 * process, which knows no prepared statements) and on two connections used
 * in turn by one thread.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

static const char *dburl(void)
{
    const char *url = getenv("DOCPIPE_DATABASE_URL");
    return url ? url : "postgresql://postgres@127.0.0.1:55432/docpipe";
}

static PGconn *connect_db(void)
{
    PGconn *db = PQconnectdb(dburl());
    cr_assert_eq(PQstatus(db), CONNECTION_OK, "%s", PQerrorMessage(db));
    return db;
}

/* $1 + 1 through dp_pg_execp. */
static long plus_one(PGconn *db, long v)
{
    char s[32];
    snprintf(s, sizeof(s), "%ld", v);
    const char *p[1] = {s};
    PGresult *r = dp_pg_execp(db, "SELECT $1::bigint + 1", 1, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
    long got = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return got;
}

static long prepared_here(PGconn *db)
{
    PGresult *r = PQexec(db, "SELECT count(*) FROM pg_prepared_statements"
                             " WHERE statement LIKE 'SELECT $1::bigint + 1%'");
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

Test(pg, a_statement_is_prepared_once_and_survives_a_reset)
{
    PGconn *db = connect_db();
    for (long i = 0; i < 5; i++)
        cr_assert_eq(plus_one(db, i), i + 1);
    cr_assert_eq(prepared_here(db), 1, "prepared once, not per call");

    int pid = PQbackendPID(db);
    PQreset(db);
    cr_assert_eq(PQstatus(db), CONNECTION_OK, "%s", PQerrorMessage(db));
    cr_assert_neq(PQbackendPID(db), pid, "a reset brings a new server process");
    cr_assert_eq(prepared_here(db), 0);
    cr_assert_eq(plus_one(db, 41), 42, "prepared again on the new process");
    cr_assert_eq(prepared_here(db), 1);
    PQfinish(db);
}

Test(pg, two_connections_in_turn_each_keep_their_statement)
{
    PGconn *a = connect_db(), *b = connect_db();
    for (long i = 0; i < 3; i++) {
        cr_assert_eq(plus_one(a, i), i + 1);
        cr_assert_eq(plus_one(b, 10 + i), 11 + i);
    }
    cr_assert_eq(prepared_here(a), 1);
    cr_assert_eq(prepared_here(b), 1);
    PQfinish(a);
    PQfinish(b);
}

Test(pg, a_failing_statement_reports_its_error)
{
    PGconn *db = connect_db();
    PGresult *r = dp_pg_execp(db, "SELECT no_such_column FROM pg_class", 0, NULL, NULL,
                              NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_FATAL_ERROR);
    cr_assert(strstr(PQresultErrorMessage(r), "no_such_column"), "%s",
              PQresultErrorMessage(r));
    PQclear(r);
    cr_assert_eq(plus_one(db, 1), 2, "the connection goes on");
    PQfinish(db);
}

Test(pg, a_finished_connection_leaves_nothing_to_its_successor)
{
    PGconn *a = connect_db();
    cr_assert_eq(plus_one(a, 1), 2);
    dp_pg_finish(a);
    /* A new connection (perhaps at the same address) prepares afresh. */
    PGconn *b = connect_db();
    cr_assert_eq(prepared_here(b), 0);
    cr_assert_eq(plus_one(b, 2), 3);
    cr_assert_eq(prepared_here(b), 1);
    dp_pg_finish(b);
}

/*
 * test_pg: dp_pg_execp prepares a statement once per connection and runs it
 * as prepared afterwards, also across a reset connection (a new server
 * process, which knows no prepared statements) and on two connections used
 * in turn by one thread; docpipe's sessions plan each statement for its
 * tables' current size; and connecting at start waits for a server that is
 * not up yet, for a bounded time.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
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

Test(pg, a_command_runs_with_its_parameters_and_names_its_failure)
{
    PGconn *db = connect_db();
    char err[512];
    cr_assert_eq(dp_pg_exec(db, "CREATE TEMP TABLE cmd_t (v int)", err, sizeof(err)),
                 DP_OK, "%s", err);
    const char *p[1] = {"41"};
    cr_assert_eq(dp_pg_command(db, "INSERT INTO cmd_t VALUES ($1::int + 1)", 1, p,
                               "insert", err, sizeof(err)), DP_OK, "%s", err);
    PGresult *r = PQexec(db, "SELECT v FROM cmd_t");
    cr_assert_str_eq(PQgetvalue(r, 0, 0), "42");
    PQclear(r);
    cr_assert_neq(dp_pg_command(db, "INSERT INTO cmd_t VALUES ($1::int)", 1,
                                (const char *[]){"not a number"}, "insert again",
                                err, sizeof(err)), DP_OK);
    cr_assert(strncmp(err, "insert again", 12) == 0, "%s", err);
    dp_pg_finish(db);
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

static long xact_scans(PGconn *db)
{
    PGresult *r = PQexec(db, "SELECT pg_stat_get_xact_numscans('grow'::regclass)");
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
    long n = strtol(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return n;
}

/* Sequential scans of a lookup by primary key, prepared (and run 10 times)
 * while its table held 20 rows, in its 100 runs once the table holds 50,000
 * more; all in one transaction (no ANALYZE can intervene), on a connection
 * made by dp_pg_connect with the given plan_cache_mode, with or without
 * dp_pg_replan() once the table has grown. */
static long scans_after_growth(const char *mode, int replan)
{
    setenv("DOCPIPE_PG_PLAN_CACHE_MODE", mode, 1);
    dp_config cfg;
    char err[512];
    cr_assert_eq(dp_config_load(&cfg, err, sizeof(err)), DP_OK, "%s", err);
    unsetenv("DOCPIPE_PG_PLAN_CACHE_MODE");
    PGconn *db;
    cr_assert_eq(dp_pg_connect(&cfg, "test_pg", &db, err, sizeof(err)), DP_OK, "%s", err);
    dp_config_free(&cfg);
    cr_assert_eq(dp_pg_exec(db, "BEGIN", err, sizeof(err)), DP_OK, "%s", err);
    /* Analyzed while tiny: what autovacuum records of a new (or emptied)
     * table early on. */
    cr_assert_eq(dp_pg_exec(db, "CREATE TEMP TABLE grow (id int PRIMARY KEY, pad text);"
                                " INSERT INTO grow SELECT -g, 'x' FROM generate_series(1, 20) g;"
                                " ANALYZE grow", err, sizeof(err)), DP_OK, "%s", err);
    long before = 0;
    for (int i = 0; i < 110; i++) {
        if (i == 10) {
            cr_assert_eq(dp_pg_exec(db, "INSERT INTO grow SELECT g, repeat('x', 100)"
                                        " FROM generate_series(1, 50000) g",
                                    err, sizeof(err)), DP_OK, "%s", err);
            if (replan)
                cr_assert_eq(dp_pg_replan(db, err, sizeof(err)), DP_OK, "%s", err);
            before = xact_scans(db);
        }
        char id[16];
        snprintf(id, sizeof(id), "%d", i * 37 + 1);
        const char *p[1] = {id};
        PGresult *r = dp_pg_execp(db, "SELECT pad FROM grow WHERE id = $1::int", 1, NULL, p,
                                  NULL, NULL, 0);
        cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
        cr_assert_eq(PQntuples(r), i < 10 ? 0 : 1);
        PQclear(r);
    }
    long scans = xact_scans(db) - before;
    cr_assert_eq(dp_pg_exec(db, "ROLLBACK", err, sizeof(err)), DP_OK, "%s", err);
    dp_pg_finish(db);
    return scans;
}

Test(pg, under_the_default_plan_cache_mode_the_tiny_table_plan_stays)
{
    long scans = scans_after_growth("auto", 0);
    cr_assert_eq(scans, 100, "%ld sequential scans of the grown table", scans);
}

/* What a stage does between batches (pg_replan_ms). */
Test(pg, a_replan_makes_a_tiny_table_plan_again_for_the_grown_table)
{
    long scans = scans_after_growth("auto", 1);
    cr_assert_eq(scans, 0, "%ld sequential scans of the grown table", scans);
}

Test(pg, force_custom_plan_plans_for_the_grown_table_without_a_replan)
{
    long scans = scans_after_growth("force_custom_plan", 0);
    cr_assert_eq(scans, 0, "%ld sequential scans of the grown table", scans);
}

/* dp_buf_float4_array: PostgreSQL reads every element back bit for bit,
 * across more than one of the encoder's blocks, signs, zero and the
 * smallest and largest floats included. */
Test(pg, a_binary_float4_array_arrives_bit_for_bit)
{
    PGconn *db = connect_db();
    enum { N = 1000 };
    static float v[N];
    for (int i = 0; i < N; i++)
        v[i] = (float)((i % 2 ? -1.0 : 1.0) * (i + 0.5) / 7.0);
    v[0] = 0.0f;
    v[1] = 1.17549435e-38f;
    v[2] = 3.40282347e+38f;
    dp_buf b = {0};
    dp_buf_float4_array(&b, v, N);
    const char *p[1] = {b.data};
    Oid types[1] = {DP_FLOAT4_ARRAY_OID};
    int lens[1] = {(int)b.len}, fmts[1] = {1};
    PGresult *r = PQexecParams(db, "SELECT cardinality($1), x FROM unnest($1) AS x",
                               1, types, p, lens, fmts, 1);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(db));
    cr_assert_eq(PQntuples(r), N);
    for (int i = 0; i < N; i++) {
        uint32_t got, want;
        memcpy(&got, PQgetvalue(r, i, 1), 4);
        got = ntohl(got);
        memcpy(&want, &v[i], 4);
        cr_assert_eq(got, want, "element %d: %08x, sent %08x", i, got, want);
    }
    PQclear(r);
    dp_buf_free(&b);
    PQfinish(db);
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* At start docpipe waits for PostgreSQL (it may still be starting beside
 * it): retried for db_connect_timeout_ms, then a message that says so. A
 * port where nothing listens stands for the server not up yet. */
Test(pg, connect_retries_for_the_timeout_then_says_why)
{
    char *saved = strdup(dburl());
    setenv("DOCPIPE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/docpipe", 1);
    setenv("DOCPIPE_DB_CONNECT_TIMEOUT_MS", "1500", 1);
    dp_config cfg;
    char err[1024];
    cr_assert_eq(dp_config_load(&cfg, err, sizeof(err)), DP_OK, "%s", err);
    unsetenv("DOCPIPE_DB_CONNECT_TIMEOUT_MS");
    setenv("DOCPIPE_DATABASE_URL", saved, 1);
    free(saved);
    PGconn *db = NULL;
    double t0 = mono_s();
    dp_err e = dp_pg_connect(&cfg, "test_pg", &db, err, sizeof(err));
    double took = mono_s() - t0;
    dp_config_free(&cfg);
    cr_assert_eq(e, DP_ERR_RETRYABLE);
    cr_assert_null(db);
    cr_assert(took >= 1.4 && took < 5.0, "gave up after %.2f s, not about 1.5", took);
    cr_assert(strstr(err, "connect to PostgreSQL") && strstr(err, "gave up after") &&
                  strstr(err, "db_connect_timeout_ms=1500"),
              "%s", err);
}

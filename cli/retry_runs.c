/* retry_runs: docpipe retry's runs in PostgreSQL (see retry_runs.h). */
#include "retry_runs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"
#include "retry_select.h"

/* The advisory lock's first key; the second is the run's id. */
#define RUN_LOCK_KEY "4242002"

/* One bound as PostgreSQL reads it, into out ("" for none). */
static int resolve(PGconn *db, const char *opt, const char *given, char *out,
                   size_t outlen, char *err, size_t errlen)
{
    out[0] = '\0';
    if (!given)
        return 0;
    const char *p[1] = {given};
    PGresult *res = dp_pg_execp(db, "SELECT $1::timestamptz::text", 1, NULL, p,
                                NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        snprintf(out, outlen, "%s", PQgetvalue(res, 0, 0));
        PQclear(res);
        return 0;
    }
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE),
               *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    if (state && strncmp(state, "22", 2) == 0) { /* data exception */
        snprintf(err, errlen, "%s '%s' is not a time: %s", opt, given,
                 msg ? msg : "");
        PQclear(res);
        return 2;
    }
    dp_pg_check(db, res, PGRES_TUPLES_OK, opt, err, errlen);
    return 1;
}

int dp_retry_run_bounds(PGconn *db, const char *since, const char *until,
                        dp_retry_run *run, char *err, size_t errlen)
{
    int rc = resolve(db, "--since", since, run->since, sizeof(run->since), err,
                     errlen);
    return rc ? rc : resolve(db, "--until", until, run->until, sizeof(run->until),
                             err, errlen);
}

/* The unfinished run of selector into run (1), none (0), or -1. */
static int find_unfinished(PGconn *db, const char *selector, dp_retry_run *run,
                           char *err, size_t errlen)
{
    const char *p[1] = {selector};
    PGresult *res = dp_pg_execp(db,
        "SELECT run_id, coalesce(after_document::text, '" DP_RETRY_NIL_ID "'),"
        "   done, sent, coalesce(since_at::text, ''), coalesce(until_at::text, '')"
        " FROM upload_pipeline.retry_runs"
        " WHERE selector = $1 AND finished_at IS NULL", 1, NULL, p, NULL, NULL, 0);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read retry runs", err, errlen))
        return -1;
    int found = PQntuples(res) == 1;
    if (found) {
        run->id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        snprintf(run->after, sizeof(run->after), "%s", PQgetvalue(res, 0, 1));
        run->done = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
        run->sent = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
        snprintf(run->since, sizeof(run->since), "%s", PQgetvalue(res, 0, 4));
        snprintf(run->until, sizeof(run->until), "%s", PQgetvalue(res, 0, 5));
    }
    PQclear(res);
    return found;
}

/* pg_try_advisory_lock on the run: 1 taken, 0 held by another, -1. */
static int lock_run(PGconn *db, long long id, char *err, size_t errlen)
{
    char ids[32];
    snprintf(ids, sizeof(ids), "%lld", id);
    const char *p[1] = {ids};
    PGresult *res = dp_pg_execp(db, "SELECT pg_try_advisory_lock(" RUN_LOCK_KEY
                                ", $1::int)", 1, NULL, p, NULL, NULL, 0);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "lock the retry run", err, errlen))
        return -1;
    int got = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    if (!got)
        snprintf(err, errlen, "another docpipe retry is working through this"
                 " selection (run %lld); wait for it, or stop it first", id);
    return got;
}

static int unlock_run(PGconn *db, long long id, char *err, size_t errlen)
{
    char ids[32];
    snprintf(ids, sizeof(ids), "%lld", id);
    const char *p[1] = {ids};
    PGresult *res = dp_pg_execp(db, "SELECT pg_advisory_unlock(" RUN_LOCK_KEY
                                ", $1::int)", 1, NULL, p, NULL, NULL, 0);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "unlock the retry run", err, errlen))
        return -1;
    PQclear(res);
    return 0;
}

int dp_retry_run_open(PGconn *db, const char *selector, int restart, int dry,
                      dp_retry_run *run, char *err, size_t errlen)
{
    run->id = 0;
    run->resumed = 0;
    run->done = run->sent = 0;
    snprintf(run->after, sizeof(run->after), "%s", DP_RETRY_NIL_ID);
    dp_retry_run found = *run;
    int f = find_unfinished(db, selector, &found, err, errlen);
    if (f < 0)
        return 1;
    if (dry) {
        if (f) {
            *run = found;
            run->resumed = 1;
        }
        return 0;
    }
    if (f && restart) {
        if (lock_run(db, found.id, err, errlen) != 1)
            return 1;
        char ids[32];
        snprintf(ids, sizeof(ids), "%lld", found.id);
        const char *p[1] = {ids};
        if (dp_pg_command(db, "UPDATE upload_pipeline.retry_runs SET finished_at"
                          " = now(), updated_at = now(), abandoned = true"
                          " WHERE run_id = $1::bigint", 1, p, "abandon the retry run",
                          err, errlen) ||
            unlock_run(db, found.id, err, errlen))
            return 1;
        fprintf(stderr, "docpipe retry: run %lld abandoned (%lld documents sent,"
                " through %s)\n", found.id, found.sent, found.after);
    }
    /* The run may be finished by the process that held it while this one
     * waited for nothing; a second look then starts a new one. */
    for (int attempt = 0; attempt < 3; attempt++) {
        const char *p[3] = {selector, *run->since ? run->since : NULL,
                            *run->until ? run->until : NULL};
        PGresult *res = dp_pg_execp(db,
            "INSERT INTO upload_pipeline.retry_runs (selector, since_at, until_at)"
            " VALUES ($1, $2::timestamptz, $3::timestamptz)"
            " ON CONFLICT (selector) WHERE finished_at IS NULL DO NOTHING"
            " RETURNING run_id", 3, NULL, p, NULL, NULL, 0);
        if (dp_pg_check(db, res, PGRES_TUPLES_OK, "start a retry run", err, errlen))
            return 1;
        int created = PQntuples(res) == 1;
        PQclear(res);
        dp_retry_run cur = *run;
        if ((f = find_unfinished(db, selector, &cur, err, errlen)) < 0)
            return 1;
        if (!f)
            continue;
        int got = lock_run(db, cur.id, err, errlen);
        if (got != 1)
            return 1;
        /* Read again under the lock: the cursor the last holder left. */
        dp_retry_run locked = cur;
        if ((f = find_unfinished(db, selector, &locked, err, errlen)) < 0)
            return 1;
        if (f && locked.id == cur.id) {
            *run = locked;
            run->resumed = !created;
            return 0;
        }
        if (unlock_run(db, cur.id, err, errlen))
            return 1;
    }
    snprintf(err, errlen, "cannot start a retry run: the selection's runs keep"
             " changing under this one");
    return 1;
}

int dp_retry_run_advance(PGconn *db, const dp_retry_run *run, const char *after,
                         long long done, long long sent, int finished,
                         char *err, size_t errlen)
{
    char ids[32], d[32], s[32];
    snprintf(ids, sizeof(ids), "%lld", run->id);
    snprintf(d, sizeof(d), "%lld", done);
    snprintf(s, sizeof(s), "%lld", sent);
    const char *p[5] = {ids, after, d, s, finished ? "t" : "f"};
    return dp_pg_command(db,
        "UPDATE upload_pipeline.retry_runs SET after_document = $2::uuid,"
        "   done = done + $3::bigint, sent = sent + $4::bigint, updated_at = now(),"
        "   finished_at = CASE WHEN $5::boolean THEN now() END"
        " WHERE run_id = $1::bigint", 5, p, "advance the retry run", err, errlen)
        ? 1 : 0;
}

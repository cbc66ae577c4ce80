/* migrate: ordered, once-only SQL migrations (see migrate.h). */
#include "migrate.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
    fclose(f);
    return buf;
}

static dp_err apply_one(PGconn *conn, const char *dir, const char *name,
                        int *done, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    dp_err e = dp_pg_exec(conn, "BEGIN", err, errlen);
    if (e)
        return e;
    const char *params[1] = {name};
    PGresult *res = PQexecParams(conn,
        "SELECT 1 FROM docpipe.schema_migrations WHERE version = $1",
        1, NULL, params, NULL, NULL, 0);
    if ((e = dp_pg_check(conn, res, PGRES_TUPLES_OK, "read migrations", err,
                         errlen)))
        goto fail;
    int have = PQntuples(res) > 0;
    PQclear(res);
    *done = 0;
    if (!have) {
        char *sql = read_file(path);
        if (!sql) {
            e = dp_errf(DP_ERR_PERMANENT, err, errlen, "read %s: %s", path,
                        strerror(errno));
            goto fail;
        }
        res = PQexec(conn, sql);
        free(sql);
        char what[600];
        snprintf(what, sizeof(what), "migration %s", name);
        if ((e = dp_pg_check(conn, res, PGRES_COMMAND_OK, what, err, errlen)))
            goto fail;
        PQclear(res);
        res = PQexecParams(conn,
            "INSERT INTO docpipe.schema_migrations(version) VALUES ($1)",
            1, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(conn, res, PGRES_COMMAND_OK, "record migration",
                             err, errlen)))
            goto fail;
        PQclear(res);
        *done = 1;
    }
    return dp_pg_exec(conn, "COMMIT", err, errlen);
fail:
    PQclear(PQexec(conn, "ROLLBACK"));
    return e;
}

dp_err dp_migrate(PGconn *conn, const char *sql_dir, FILE *out, int *applied,
                  char *err, size_t errlen)
{
    if (applied)
        *applied = 0;
    DIR *d = opendir(sql_dir);
    if (!d)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "open %s: %s", sql_dir,
                       strerror(errno));
    char **names = NULL;
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len > 4 && strcmp(de->d_name + len - 4, ".sql") == 0) {
            names = realloc(names, (n + 1) * sizeof(char *));
            names[n++] = strdup(de->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof(char *), cmp_str);

    dp_err e = dp_pg_exec(conn,
        "SET client_min_messages = warning;"
        "SELECT pg_advisory_lock(4242001);"
        "CREATE SCHEMA IF NOT EXISTS docpipe;"
        "CREATE TABLE IF NOT EXISTS docpipe.schema_migrations ("
        " version text PRIMARY KEY,"
        " applied_at timestamptz NOT NULL DEFAULT now())", err, errlen);
    /* A multi-statement PQexec returns the last command's status. */
    for (size_t i = 0; e == DP_OK && i < n; i++) {
        int done = 0;
        e = apply_one(conn, sql_dir, names[i], &done, err, errlen);
        if (e == DP_OK && done) {
            if (applied)
                (*applied)++;
            if (out)
                fprintf(out, "applied %s\n", names[i]);
        }
    }
    PQclear(PQexec(conn, "SELECT pg_advisory_unlock(4242001)"));
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return e;
}

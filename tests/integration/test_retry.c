/*
 * docpipe retry at scale: selecting documents, chunks of them in their own
 * transactions, and runs that continue after an interruption.
 *
 * The documents and jobs are written straight into PostgreSQL, in the
 * states the stages leave (no pipeline runs: the records retry publishes
 * stay on their topics, to be counted).  Each test has a database of its
 * own, so `retry --all` selects this test's documents and nothing of
 * other tests sharing the server.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "pg.h"
#include "support_env.h"

static tenv T;
static char dbname[96], base_url[600], out_path[300], err_path[300];
static PGconn *extra[2];

static void drop_database(void)
{
    PGconn *c = PQconnectdb(base_url);
    char sql[200];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", dbname);
    PQclear(PQexec(c, sql));
    PQfinish(c);
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++)
        if (extra[i])
            PQfinish(extra[i]);
    extra[0] = extra[1] = NULL;
    tenv_teardown(&T);
    if (dbname[0])
        drop_database();
    dbname[0] = '\0';
}

TestSuite(retry, .fini = teardown, .timeout = 600);

/* The server's URL with another database name in its path. */
static void url_with_db(const char *url, const char *db, char *out, size_t outlen)
{
    const char *scheme = strstr(url, "://");
    const char *path = strchr(scheme ? scheme + 3 : url, '/');
    if (!path) {
        snprintf(out, outlen, "%s/%s", url, db);
        return;
    }
    const char *query = strchr(path, '?');
    snprintf(out, outlen, "%.*s/%s%s", (int)(path - url), url, db, query ? query : "");
}

static void exec_ok(PGconn *db, const char *sql)
{
    PGresult *r = PQexec(db, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK ||
              PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
              PQerrorMessage(db));
    PQclear(r);
}

/* A database of the test's own, migrated, and the test's topics. */
static void start(const char *name)
{
    const char *base = getenv("DOCPIPE_DATABASE_URL");
    snprintf(base_url, sizeof(base_url), "%s", base && *base ? base :
             "postgresql://postgres@127.0.0.1:55432/docpipe");
    snprintf(dbname, sizeof(dbname), "docpipe_t%d_%s", (int)getpid(), name);
    PGconn *c = PQconnectdb(base_url);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
    char sql[200];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", dbname);
    PGresult *r = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(c));
    PQclear(r);
    PQfinish(c);
    char url[700];
    url_with_db(base_url, dbname, url, sizeof(url));
    setenv("DOCPIPE_DATABASE_URL", url, 1);
    tenv_setup(&T, name);
    exec_ok(T.db, "SET client_min_messages = warning");
    snprintf(out_path, sizeof(out_path), "/tmp/docpipe-%sretry.out", T.prefix);
    snprintf(err_path, sizeof(err_path), "/tmp/docpipe-%sretry.err", T.prefix);
}

/*
 * n documents with their jobs, as the stages leave them: document g
 * (1..n) is in `state`, or with state NULL failed_parse, failed_chunking or
 * failed_embedding as g % 3 is 0, 1 or 2; its job reached that state on
 * day g % 10 + 1 of January 2024; it belongs to user ...aa when g is odd,
 * ...bb when even.  Every job has its validated text recorded.
 */
static void insert_docs(long n, const char *state)
{
    char sql[3000], st[100];
    if (state)
        snprintf(st, sizeof(st), "'%s'::text", state);
    else
        snprintf(st, sizeof(st), "(ARRAY['failed_parse', 'failed_chunking',"
                 " 'failed_embedding'])[g %% 3 + 1]");
    snprintf(sql, sizeof(sql),
             "WITH g AS (SELECT g, md5('%s' || g)::uuid AS doc, %s AS status,"
             "   CASE WHEN g %% 2 = 1 THEN '00000000-0000-4000-8000-0000000000aa'"
             "   ELSE '00000000-0000-4000-8000-0000000000bb' END::uuid AS usr,"
             "   '2024-01-01 00:00:00+00'::timestamptz + (g %% 10) * interval '1 day'"
             "   + interval '1 hour' AS at"
             "   FROM generate_series(1, %ld) g),"
             " d AS (INSERT INTO upload_pipeline.documents (document_id, user_id,"
             "   filename, mime, bytes_len, file_sha256, raw_path, parsed_path,"
             "   parsed_sha256, processing_status, updated_at)"
             " SELECT doc, usr, 'doc' || g || '.md', 'text/markdown', 100,"
             "   md5('f' || g) || md5('g' || g), 'raw/' || g, 'parsed/' || g,"
             "   md5('p' || g) || md5('q' || g), status, at FROM g)"
             " INSERT INTO upload_pipeline.upload_jobs (job_id, user_id, document_id,"
             "   status, raw_path, parsed_path, parsed_sha256, correlation_id,"
             "   updated_at, created_at)"
             " SELECT md5('job' || g)::uuid, usr, doc, status, 'raw/' || g,"
             "   'parsed/' || g, md5('p' || g) || md5('q' || g), md5('c' || g)::uuid,"
             "   at, at FROM g", T.prefix, st, n);
    exec_ok(T.db, sql);
    exec_ok(T.db, "ANALYZE upload_pipeline.upload_jobs");
    exec_ok(T.db, "ANALYZE upload_pipeline.documents");
}

/* docpipe retry with args (stdin from infile when not NULL); its output
 * and diagnostics land in out_path and err_path. */
static int retry(const char *const *args, const char *infile)
{
    return tenv_wait(tenv_spawn_io(&T, args, NULL, infile, out_path, err_path));
}

/* How often needle occurs in text (not strstr in a loop: the sanitizer's
 * strstr measures the whole rest of the text at every call). */
static long count_of(const char *text, const char *needle)
{
    size_t n = strlen(text), m = strlen(needle);
    long count = 0;
    for (size_t i = 0; m && i + m <= n; i++)
        if (text[i] == needle[0] && memcmp(text + i, needle, m) == 0) {
            count++;
            i += m - 1;
        }
    return count;
}

static long long sql_count(const char *fmt, const char *arg)
{
    dp_buf sql = {0};
    dp_buf_appendf(&sql, fmt, arg);
    long long n = tenv_scalar(&T, sql.data);
    dp_buf_free(&sql);
    return n;
}

/* The first row's first value of a query, into out. */
static void sql_value(const char *sql, char *out, size_t outlen)
{
    PGresult *r = PQexec(T.db, sql);
    cr_assert(PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1, "%s: %s",
              sql, PQerrorMessage(T.db));
    snprintf(out, outlen, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The records on retry's topics, told by document: how many records,
 * how many documents, and the documents with more than one (an array
 * literal for PostgreSQL, built in repeated). */
typedef struct tally {
    long records, documents, repeated_docs;
    long per_topic[3]; /* parse-queued, validated, chunked */
    dp_buf repeated;
} tally;

static void count_records(tally *t)
{
    static const char *const topics[] = {"parse-queued", "validated", "chunked"};
    char **keys = NULL;
    long n = 0;
    memset(t, 0, sizeof(*t));
    for (int i = 0; i < 3; i++) {
        char topic[200];
        snprintf(topic, sizeof(topic), "%s%s", T.prefix, topics[i]);
        tmsg *m;
        int got = tenv_consume_all(&T, topic, &m, 120000);
        t->per_topic[i] = got;
        keys = realloc(keys, (size_t)(n + got + 1) * sizeof(*keys));
        for (int k = 0; k < got; k++)
            keys[n++] = strdup(m[k].key);
        tenv_free_msgs(m, got);
    }
    qsort(keys, (size_t)n, sizeof(*keys), cmp_str);
    dp_buf_append(&t->repeated, "{", 1);
    for (long i = 0; i < n;) {
        long j = i;
        while (j < n && strcmp(keys[j], keys[i]) == 0)
            j++;
        t->documents++;
        if (j - i > 1)
            dp_buf_appendf(&t->repeated, "%s%s", t->repeated_docs++ ? "," : "",
                           keys[i]);
        i = j;
    }
    dp_buf_append(&t->repeated, "}", 1);
    t->records = n;
    for (long i = 0; i < n; i++)
        free(keys[i]);
    free(keys);
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

Test(retry, test_all_sends_every_failed_document_once_in_chunks_with_progress)
{
    start("all");
    long n = 100000;
    const char *env_n = getenv("DOCPIPE_RETRY_TEST_DOCS");
    if (env_n && *env_n)
        n = strtol(env_n, NULL, 10);
    double t0 = now_s();
    insert_docs(n, NULL);
    double t1 = now_s();
    const char *all[] = {"retry", "--all", "--batch", "1000", NULL};
    cr_assert_eq(retry(all, NULL), 0, "retry --all");
    double t2 = now_s();
    fprintf(stderr, "test_retry: %ld documents inserted in %.1f s, sent again by"
            " docpipe retry --all --batch 1000 in %.1f s (%.0f documents/s)\n", n,
            t1 - t0, t2 - t1, (double)n / (t2 - t1));

    char *out = tenv_slurp(out_path), *err = tenv_slurp(err_path);
    cr_assert_eq(count_of(out, "\n"), n, "one line per document sent");
    cr_assert_eq(count_of(out, "\tfailed_parse\tparse\n") +
                 count_of(out, "\tfailed_chunking\tchunk\n") +
                 count_of(out, "\tfailed_embedding\tembed-plan\n"), n);
    cr_assert(count_of(err, " documents done (") >= 2, "progress on stderr:\n%s", err);
    char summary[100];
    snprintf(summary, sizeof(summary), "docpipe retry: %ld document(s) sent again", n);
    cr_assert(strstr(err, summary), "summary line in:\n%s", err);
    free(out);
    free(err);

    /* Every one moved back to its stage's state, once, with its event. */
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                 " WHERE status LIKE 'failed_%' OR retry_count <> 1"), 0);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(DISTINCT document_id) FROM"
                 " upload_pipeline.events WHERE type = 'retry'"), n);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.events"
                 " WHERE type = 'retry'"), n);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.documents d"
                 " JOIN upload_pipeline.upload_jobs j USING (document_id)"
                 " WHERE d.processing_status <> j.status"), 0);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.retry_runs"
                 " WHERE finished_at IS NOT NULL AND done = sent AND sent = "
                 "(SELECT count(*) FROM upload_pipeline.upload_jobs)"), 1,
                 "one finished run");

    /* Exactly one record per document, on its stage's topic. */
    tally t;
    count_records(&t);
    cr_assert_eq(t.records, n);
    cr_assert_eq(t.documents, n);
    cr_assert_eq(t.repeated_docs, 0);
    dp_buf_free(&t.repeated);
    const char *queued[] = {"parse_queued", "parse_validated", "chunks_stored"};
    for (int i = 0; i < 3; i++)
        cr_assert_eq(t.per_topic[i], sql_count("SELECT count(*) FROM"
                     " upload_pipeline.upload_jobs WHERE status = '%s'", queued[i]),
                     "%s: its stage's records", queued[i]);

    /* Run again: nothing is failed any more, nothing is sent. */
    cr_assert_eq(retry(all, NULL), 0);
    out = tenv_slurp(out_path);
    cr_assert_str_eq(out, "");
    free(out);
    count_records(&t);
    cr_assert_eq(t.records, n, "nothing sent twice");
    dp_buf_free(&t.repeated);
}

/* The documents the newest run sent (by its retry events) are exactly
 * those of the `expect` table, which the test filled before the run. */
static void assert_sent_exactly_expected(long want)
{
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM expect"), want,
                 "the expected set has %ld documents", want);
    cr_assert_eq(tenv_scalar(&T,
        "WITH sent AS (SELECT document_id FROM upload_pipeline.events"
        "   WHERE type = 'retry' AND (payload->>'retry_run')::bigint ="
        "   (SELECT max(run_id) FROM upload_pipeline.retry_runs))"
        " SELECT count(*) FROM sent FULL JOIN expect USING (document_id)"
        " WHERE sent.document_id IS NULL OR expect.document_id IS NULL"), 0,
        "sent exactly the selected documents");
    char *out = tenv_slurp(out_path);
    cr_assert_eq(count_of(out, "\n"), want, "%s", out);
    free(out);
}

static void expect_where(const char *where)
{
    char sql[1000];
    snprintf(sql, sizeof(sql), "DROP TABLE IF EXISTS expect; CREATE TEMP TABLE"
             " expect AS SELECT document_id FROM upload_pipeline.upload_jobs"
             " WHERE %s", where);
    exec_ok(T.db, sql);
}

Test(retry, test_state_since_until_user_and_ids_on_stdin_select_exactly_their_documents)
{
    start("select");
    insert_docs(3000, NULL);

    /* Ambiguous or wrong use is refused before anything happens. */
    const char *refused[][8] = {
        {"retry", NULL},
        {"retry", "--from", "chunk", NULL},
        {"retry", "--dry-run", NULL},
        {"retry", "--all", "--user", "00000000-0000-4000-8000-0000000000aa", NULL},
        {"retry", "--all", "00000000-0000-4000-8000-0000000000aa", NULL},
        {"retry", "--state", "complete", NULL},
        {"retry", "--state", "failed_upload", NULL},
        {"retry", "--from", "parse", "--state", "chunking", NULL},
        {"retry", "--from", "index", "--all", NULL},
        {"retry", "--since", "the day before", NULL},
        {"retry", "--all", "--batch", "0", NULL},
        {"retry", "not-a-document", NULL},
        {"retry", "--all", "--restart", "--dry-run", NULL},
        {"retry", "--all", "--bogus", NULL}};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        cr_assert_eq(retry(refused[i], NULL), 2, "usage error: %s %s %s", refused[i][1],
                     refused[i][2] ? refused[i][2] : "", refused[i][2] && refused[i][3]
                     ? refused[i][3] : "");
        char *err = tenv_slurp(err_path);
        cr_assert(strstr(err, "docpipe retry: "), "says why: %s", err);
        free(err);
    }
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.retry_runs"), 0);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                 " WHERE status NOT LIKE 'failed_%'"), 0, "nothing moved");

    /* --state */
    expect_where("status = 'failed_chunking'");
    const char *state[] = {"retry", "--state", "failed_chunking", "--batch", "100", NULL};
    cr_assert_eq(retry(state, NULL), 0);
    assert_sent_exactly_expected(1000);

    /* --since and --until: the job's updated_at, in [since, until). */
    expect_where("status LIKE 'failed_%' AND updated_at >= '2024-01-03 01:00+00'"
                 " AND updated_at < '2024-01-05 01:00+00'");
    const char *window[] = {"retry", "--since", "2024-01-03 01:00+00", "--until",
                            "2024-01-05 01:00+00", "--batch", "77", NULL};
    cr_assert_eq(retry(window, NULL), 0);
    assert_sent_exactly_expected(400); /* days 3 and 4, two states of three */

    /* --user with --state: the filters combine. */
    expect_where("status = 'failed_embedding' AND user_id ="
                 " '00000000-0000-4000-8000-0000000000aa'");
    long long want = tenv_scalar(&T, "SELECT count(*) FROM expect");
    const char *user[] = {"retry", "--user", "00000000-0000-4000-8000-0000000000AA",
                          "--state", "failed_embedding", "--batch", "64", NULL};
    cr_assert_eq(retry(user, NULL), 0);
    assert_sent_exactly_expected(want);

    /* Ids on standard input: any order, repeated, upper case, blank lines. */
    expect_where("status LIKE 'failed_%' AND document_id IN (SELECT document_id"
                 " FROM upload_pipeline.upload_jobs WHERE status LIKE 'failed_%'"
                 " ORDER BY md5(document_id::text) LIMIT 400)");
    char in_path[300];
    snprintf(in_path, sizeof(in_path), "/tmp/docpipe-%sids.in", T.prefix);
    FILE *f = fopen(in_path, "w");
    PGresult *r = PQexec(T.db, "SELECT document_id FROM expect ORDER BY md5("
                         "document_id::text || 'x')");
    for (int i = 0; i < PQntuples(r); i++) {
        const char *id = PQgetvalue(r, i, 0);
        if (i % 7 == 0) {
            for (const char *p = id; *p; p++)
                fputc(*p >= 'a' && *p <= 'f' ? *p - 32 : *p, f);
            fprintf(f, "\n\n");
        } else
            fprintf(f, "  %s\t\n", id);
        if (i % 50 == 0)
            fprintf(f, "%s\n", id);
    }
    PQclear(r);
    fclose(f);
    const char *stdin_ids[] = {"retry", "--batch", "50", "-", NULL};
    cr_assert_eq(retry(stdin_ids, in_path), 0);
    assert_sent_exactly_expected(400);

    /* A named document that is not failed, or not there, fails the command;
     * the others named with it are still sent. */
    expect_where("document_id = (SELECT document_id FROM upload_pipeline.upload_jobs"
                 " WHERE status LIKE 'failed_%' ORDER BY document_id LIMIT 1)");
    char failed[40], done[40];
    sql_value("SELECT document_id FROM expect", failed, sizeof(failed));
    sql_value("SELECT document_id FROM upload_pipeline.upload_jobs"
              " WHERE status NOT LIKE 'failed_%' ORDER BY document_id LIMIT 1", done,
              sizeof(done));
    const char *named[] = {"retry", done, failed, "00000000-0000-4000-8000-00000000dead",
                           NULL};
    cr_assert_eq(retry(named, NULL), 1);
    assert_sent_exactly_expected(1);
    char *err = tenv_slurp(err_path);
    cr_assert(strstr(err, "is not failed") && strstr(err, "no document"
              " 00000000-0000-4000-8000-00000000dead"), "%s", err);
    free(err);

    /* A dry run of everything left lists it and changes nothing. */
    long long left = tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                                 " WHERE status LIKE 'failed_%'");
    cr_assert(left > 0);
    const char *dry[] = {"retry", "--all", "--dry-run", "--batch", "128", NULL};
    cr_assert_eq(retry(dry, NULL), 0);
    char *out = tenv_slurp(out_path);
    cr_assert_eq(count_of(out, "\n"), left);
    free(out);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                 " WHERE status LIKE 'failed_%'"), left, "a dry run changes nothing");

    /* Every document was sent at most once, on one topic. */
    tally t;
    count_records(&t);
    cr_assert_eq(t.repeated_docs, 0);
    cr_assert_eq(t.records, tenv_scalar(&T, "SELECT count(*) FROM"
                 " upload_pipeline.upload_jobs WHERE retry_count = 1"));
    dp_buf_free(&t.repeated);
}

/* The tests below hold rows that retry waits for; it waits longer than
 * its default lock_timeout_ms, so that a slow machine does not end the
 * wait before the test does. */
static const char *const patient[] = {"DOCPIPE_LOCK_TIMEOUT_MS=120000", NULL};

/* A second connection holding a lock until told. */
static PGconn *locker(int i, const char *lock_sql)
{
    if (!extra[i]) {
        char url[700];
        url_with_db(base_url, dbname, url, sizeof(url));
        extra[i] = PQconnectdb(url);
        cr_assert_eq(PQstatus(extra[i]), CONNECTION_OK);
    }
    exec_ok(extra[i], "BEGIN");
    exec_ok(extra[i], lock_sql);
    return extra[i];
}

/* Locks the job of the document at position pos (from 1) in id order: a
 * retry run stops there, inside that chunk's first statement. */
static void lock_document(int i, long pos)
{
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM upload_pipeline.upload_jobs WHERE"
             " document_id = (SELECT document_id FROM upload_pipeline.upload_jobs"
             " ORDER BY document_id OFFSET %ld LIMIT 1) FOR UPDATE", pos - 1);
    locker(i, sql);
}

/* Waits until the unfinished run has done `done` documents and its
 * process waits on a lock. */
static void wait_blocked_at(long done)
{
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT coalesce(max(done), -1) FROM"
             " upload_pipeline.retry_runs WHERE finished_at IS NULL");
    cr_assert_eq(tenv_wait_scalar(&T, sql, done, 60000), done, "run reached %ld", done);
    cr_assert_eq(tenv_wait_scalar(&T, "SELECT count(*) FROM pg_stat_activity"
                 " WHERE datname = current_database() AND application_name ="
                 " 'docpipe-retry' AND wait_event_type = 'Lock'", 1, 60000), 1,
                 "retry waits on the lock");
}

/* Until no session of a killed retry is left (one waiting on a lock
 * notices its client is gone only once it has the lock). */
static void wait_retry_sessions_gone(void)
{
    cr_assert_eq(tenv_wait_scalar(&T, "SELECT count(*) FROM pg_stat_activity WHERE"
                 " datname = current_database() AND application_name ="
                 " 'docpipe-retry'", 0, 60000), 0);
}

/* As if the pipeline had finished the documents sent so far: complete
 * again, so selectable again by --from. */
static void pipeline_completes_them(void)
{
    exec_ok(T.db, "UPDATE upload_pipeline.upload_jobs SET status = 'complete'"
                  " WHERE status = 'parse_validated'");
}

static char *append_file(char *all, const char *path)
{
    char *more = tenv_slurp(path);
    size_t a = strlen(all), m = strlen(more);
    all = realloc(all, a + m + 1);
    memcpy(all + a, more, m + 1);
    free(more);
    return all;
}

/* Lines of text that occur more than once. */
static long repeated_lines(char *text)
{
    long n = count_of(text, "\n"), rep = 0;
    char **lines = malloc((size_t)(n + 1) * sizeof(*lines));
    long k = 0;
    for (char *l = text, *nl; *l && (nl = strchr(l, '\n')); l = nl + 1) {
        *nl = '\0';
        lines[k++] = l;
    }
    qsort(lines, (size_t)k, sizeof(*lines), cmp_str);
    for (long i = 1; i < k; i++)
        rep += strcmp(lines[i - 1], lines[i]) == 0;
    free(lines);
    return rep;
}

Test(retry, test_interrupted_runs_continue_and_send_each_document_once)
{
    start("resume");
    long n = 20000;
    insert_docs(n, "complete");
    /* Complete documents stay selectable by --from: once the pipeline has
     * finished one again, only the run's cursor keeps it from going twice. */
    const char *args[] = {"retry", "--from", "chunk", "--all", "--batch", "1000", NULL};
    char outs[4][320], errs[4][320];
    for (int i = 0; i < 4; i++) {
        snprintf(outs[i], sizeof(outs[i]), "%s.%d", out_path, i);
        snprintf(errs[i], sizeof(errs[i]), "%s.%d", err_path, i);
    }

    /* 1. SIGINT while the fifth chunk waits on a lock: the chunk is
     *    finished, then the command stops. */
    lock_document(0, 5000);
    pid_t a = tenv_spawn_io(&T, args, patient, NULL, outs[0], errs[0]);
    wait_blocked_at(4000);
    /* Meanwhile a second process on the same selection is refused. */
    cr_assert_eq(retry(args, NULL), 1);
    char *err = tenv_slurp(err_path);
    cr_assert(strstr(err, "another docpipe retry is working through this selection"),
              "%s", err);
    free(err);
    kill(a, SIGINT);
    usleep(200000);
    exec_ok(extra[0], "COMMIT");
    cr_assert_eq(tenv_wait(a), 1, "stopped, not done");
    err = tenv_slurp(errs[0]);
    cr_assert(strstr(err, "stopped by a signal"), "%s", err);
    free(err);
    cr_assert_eq(tenv_scalar(&T, "SELECT done FROM upload_pipeline.retry_runs"), 5000,
                 "the chunk in hand was finished");
    pipeline_completes_them();

    /* 2. SIGKILL while the ninth chunk waits for its rows: nothing of it
     *    was sent. */
    lock_document(0, 9000);
    pid_t b = tenv_spawn_io(&T, args, patient, NULL, outs[1], errs[1]);
    wait_blocked_at(8000);
    kill(b, SIGKILL);
    cr_assert_eq(tenv_wait(b), 128 + SIGKILL);
    exec_ok(extra[0], "COMMIT");
    wait_retry_sessions_gone();
    tally t;
    count_records(&t);
    cr_assert_eq(t.records, 8000, "chunks one to eight, once");
    dp_buf_free(&t.repeated);
    pipeline_completes_them();

    /* 3. SIGKILL after the thirteenth chunk's records were acknowledged,
     *    before its transaction committed (held at the run's cursor). */
    lock_document(0, 13000);
    pid_t c = tenv_spawn_io(&T, args, patient, NULL, outs[2], errs[2]);
    wait_blocked_at(12000);
    locker(1, "SELECT 1 FROM upload_pipeline.retry_runs FOR UPDATE");
    exec_ok(extra[0], "COMMIT");
    char topic[200];
    snprintf(topic, sizeof(topic), "%svalidated", T.prefix);
    int got = 0;
    for (int i = 0; i < 600 && got != 13000; i++) {
        tmsg *m;
        got = tenv_consume_all(&T, topic, &m, 30000);
        tenv_free_msgs(m, got);
        if (got != 13000)
            usleep(100000);
    }
    cr_assert_eq(got, 13000, "the thirteenth chunk's records are in");
    cr_assert_eq(tenv_wait_scalar(&T, "SELECT count(*) FROM pg_stat_activity"
                 " WHERE datname = current_database() AND application_name ="
                 " 'docpipe-retry' AND wait_event_type = 'Lock'", 1, 60000), 1);
    kill(c, SIGKILL);
    cr_assert_eq(tenv_wait(c), 128 + SIGKILL);
    exec_ok(extra[1], "ROLLBACK");
    wait_retry_sessions_gone();
    cr_assert_eq(tenv_scalar(&T, "SELECT done FROM upload_pipeline.retry_runs"), 12000,
                 "the thirteenth chunk is not recorded");
    pipeline_completes_them();

    /* 4. The same command finishes the rest. */
    cr_assert_eq(tenv_wait(tenv_spawn_io(&T, args, patient, NULL, outs[3], errs[3])), 0);
    err = tenv_slurp(errs[3]);
    cr_assert(strstr(err, "continuing run"), "%s", err);
    free(err);

    /* Each document was moved back and recorded exactly once, and listed
     * once across the four outputs. */
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                 " WHERE retry_count = 1"), n);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.events"
                 " WHERE type = 'retry'"), n);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(DISTINCT document_id) FROM"
                 " upload_pipeline.events WHERE type = 'retry'"), n);
    char *all = strdup("");
    for (int i = 0; i < 4; i++)
        all = append_file(all, outs[i]);
    cr_assert_eq(count_of(all, "\n"), n);
    cr_assert_eq(repeated_lines(all), 0);
    free(all);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.retry_runs"
                 " WHERE finished_at IS NOT NULL AND done = 20000 AND sent = 20000"), 1);

    /* One record per document, but for the chunk killed between Kafka's
     * acknowledgement and its commit: its documents were sent again by the
     * run that continued (docs/design.md says why that cannot be helped,
     * and why the stages take it). */
    count_records(&t);
    cr_assert_eq(t.documents, n);
    cr_assert_eq(t.repeated_docs, 1000);
    cr_assert_eq(t.records, n + 1000);
    cr_assert_eq(sql_count("SELECT count(*) FROM (SELECT document_id FROM"
                 " upload_pipeline.upload_jobs ORDER BY document_id OFFSET 12000"
                 " LIMIT 1000) c WHERE c.document_id = ANY ('%s'::uuid[])",
                 t.repeated.data), 1000, "the thirteenth chunk's documents");
    dp_buf_free(&t.repeated);
}

Test(retry, test_restart_abandons_the_unfinished_run_and_starts_over)
{
    start("restart");
    insert_docs(3000, "complete");
    const char *args[] = {"retry", "--from", "chunk", "--all", "--batch", "500", NULL};
    lock_document(0, 1000);
    pid_t a = tenv_spawn_io(&T, args, patient, NULL, out_path, err_path);
    wait_blocked_at(500);
    kill(a, SIGTERM);
    usleep(200000);
    exec_ok(extra[0], "COMMIT");
    cr_assert_eq(tenv_wait(a), 1);
    pipeline_completes_them();
    /* A dry run shows what the same command would continue with. */
    const char *dry[] = {"retry", "--from", "chunk", "--all", "--batch", "500",
                         "--dry-run", NULL};
    cr_assert_eq(retry(dry, NULL), 0);
    char *out = tenv_slurp(out_path), *err = tenv_slurp(err_path);
    cr_assert_eq(count_of(out, "\n"), 2000);
    cr_assert(strstr(err, "would continue run"), "%s", err);
    free(out);
    free(err);

    const char *restart[] = {"retry", "--from", "chunk", "--all", "--restart", NULL};
    cr_assert_eq(retry(restart, NULL), 0);
    err = tenv_slurp(err_path);
    cr_assert(strstr(err, "abandoned"), "%s", err);
    free(err);
    out = tenv_slurp(out_path);
    cr_assert_eq(count_of(out, "\n"), 3000, "every document, from the start");
    free(out);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                 " WHERE retry_count = 2"), 1000);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.retry_runs"
                 " WHERE abandoned AND done = 1000"), 1);
    cr_assert_eq(tenv_scalar(&T, "SELECT count(*) FROM upload_pipeline.retry_runs"
                 " WHERE finished_at IS NULL"), 0);
}

/*
 * Secrets stay secret: an embedding API key, a PostgreSQL password inside
 * DOCPIPE_DATABASE_URL, a password inside DOCPIPE_EMBED_URL and SASL
 * credentials, each a distinctive string,
 * appear in nothing a run writes (logs, standard output and error of every
 * command, `status`, `lag`, `dlq`, /metrics, the dashboard's JSON, the
 * records and headers of every topic, the rows docpipe keeps), even while
 * things go wrong: a wrong API key (401, failed documents, dead letters), a
 * stage killed mid-run, a database that cannot be reached.
 *
 * The search is shown to work: the same secrets are found in the running
 * process's environment, the database role of the URL is seen connected,
 * and the right key is what lets the documents complete.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support_env.h"

#define API_KEY "sk-docpipe-SECRET-APIKEY-7f3a"
#define WRONG_KEY "sk-docpipe-SECRET-WRONGKEY-3c9d"
#define PG_ROLE "docpipe_secrets_test"
#define PG_PASSWORD "pg-docpipe-SECRET-PASSWORD-91c2"
#define SASL_USER "docpipe-secrets-user"
#define SASL_PASSWORD "sasl-docpipe-SECRET-PASSWORD-0b8e"
/* A password in the embedding service's URL (a proxy's basic auth): the
 * embed stage names its endpoint in its errors. */
#define URL_PASSWORD "embed-docpipe-SECRET-URLPASS-4e21"

static const char *const secrets[] = {API_KEY, WRONG_KEY, PG_PASSWORD, SASL_PASSWORD,
                                      URL_PASSWORD, NULL};

static tenv T;
static pid_t embed_pid, pipe_pid;
static char dir[700], secret_url[700], env_url[800], env_embed[400], env_storage[800],
    env_user[128], env_pass[128], user[64];

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    tenv_teardown(&T);
}

TestSuite(secrets, .fini = teardown, .timeout = 600);

/* ---- where secrets are looked for ---------------------------------- */

typedef struct found {
    int n;
    char where[2048];
} found;

/* Counts every secret in buf[0..len), naming the place in f. */
static void search(found *f, const char *where, const void *buf, size_t len)
{
    for (int i = 0; secrets[i] && buf; i++) {
        if (memmem(buf, len, secrets[i], strlen(secrets[i]))) {
            f->n++;
            char entry[300];
            snprintf(entry, sizeof(entry), " [%.40s in %.200s]", secrets[i], where);
            size_t used = strlen(f->where), n = strlen(entry);
            if (used + n < sizeof(f->where))
                memcpy(f->where + used, entry, n + 1);
        }
    }
}

static void search_file(found *f, const char *path)
{
    char *s = tenv_slurp(path);
    cr_assert(s, "%s was not written", path);
    search(f, path, s, strlen(s));
    free(s);
}

/* Every value of every row of a query, as text. */
static void search_query(found *f, const char *what, const char *sql)
{
    PGresult *r = PQexec(T.db, sql);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s: %s", sql, PQerrorMessage(T.db));
    for (int i = 0; i < PQntuples(r); i++)
        for (int c = 0; c < PQnfields(r); c++)
            search(f, what, PQgetvalue(r, i, c), (size_t)PQgetlength(r, i, c));
    PQclear(r);
}

/* Every record of every topic of the test's prefix: keys, values, headers. */
static int search_topics(found *f)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    cr_assert(rk, "%s", err);
    const rd_kafka_metadata_t *md;
    cr_assert_eq(rd_kafka_metadata(rk, 1, NULL, &md, 10000), 0);
    char names[64][256];
    int nt = 0;
    for (int i = 0; i < md->topic_cnt && nt < 64; i++)
        if (strncmp(md->topics[i].topic, T.prefix, strlen(T.prefix)) == 0)
            snprintf(names[nt++], sizeof(names[0]), "%s", md->topics[i].topic);
    rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    int records = 0;
    for (int t = 0; t < nt; t++) {
        tmsg *m;
        int n = tenv_consume_all(&T, names[t], &m, 30000);
        for (int i = 0; i < n; i++) {
            search(f, names[t], m[i].key, m[i].key_len);
            search(f, names[t], m[i].value, m[i].len);
            const char *hn;
            const void *hv;
            size_t hl;
            for (size_t h = 0; m[i].headers &&
                               !rd_kafka_header_get_all(m[i].headers, h, &hn, &hv, &hl);
                 h++) {
                search(f, hn, hn, strlen(hn));
                search(f, hn, hv, hl);
            }
        }
        records += n;
        tenv_free_msgs(m, n);
    }
    return records;
}

/* ---- the run -------------------------------------------------------- */

/* The secret URL: the test server's host, port and database, as the role
 * PG_ROLE with its password (PostgreSQL may trust loopback connections:
 * the password is still handed to docpipe, and must still never show). */
static void make_secret_url(void)
{
    char *err = NULL;
    PQconninfoOption *o = PQconninfoParse(T.dburl, &err);
    cr_assert(o, "%s", err ? err : "bad DOCPIPE_DATABASE_URL");
    const char *host = "127.0.0.1", *port = "5432", *db = "docpipe";
    for (PQconninfoOption *p = o; p->keyword; p++) {
        if (!p->val)
            continue;
        if (!strcmp(p->keyword, "host"))
            host = p->val;
        else if (!strcmp(p->keyword, "port"))
            port = p->val;
        else if (!strcmp(p->keyword, "dbname"))
            db = p->val;
    }
    snprintf(secret_url, sizeof(secret_url), "postgresql://%s:%s@%s:%s/%s", PG_ROLE,
             PG_PASSWORD, host, port, db);
    PQconninfoFree(o);
    PGresult *r = PQexec(T.db,
        "DO $$ BEGIN"
        " IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '" PG_ROLE "') THEN"
        "   CREATE ROLE " PG_ROLE " LOGIN SUPERUSER PASSWORD '" PG_PASSWORD "';"
        " ELSE ALTER ROLE " PG_ROLE " LOGIN SUPERUSER PASSWORD '" PG_PASSWORD "';"
        " END IF; END $$");
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(T.db));
    PQclear(r);
}

static int debug_logs;

static const char *env_with(const char *key, const char *fault, const char **env)
{
    static char env_key[200], env_fault[200];
    snprintf(env_key, sizeof(env_key), "DOCPIPE_EMBED_API_KEY=%s", key);
    int n = 0;
    env[n++] = env_url;
    env[n++] = env_embed;
    env[n++] = env_storage;
    env[n++] = env_user;
    env[n++] = env_pass;
    env[n++] = env_key;
    env[n++] = "DOCPIPE_EMBED_TPM=100000000";
    env[n++] = "DOCPIPE_EMBED_RPM=1000000";
    env[n++] = "DOCPIPE_BATCH_WAIT_MS=20";
    /* A killed run's consumers leave the group in 6 s, not 45. */
    env[n++] = "DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000";
    env[n++] = "DOCPIPE_KAFKA_HEARTBEAT_INTERVAL_MS=1000";
    if (fault) {
        snprintf(env_fault, sizeof(env_fault), "DOCPIPE_FAULT=%s", fault);
        env[n++] = env_fault;
    }
    if (debug_logs) {
        /* Everything docpipe and librdkafka can say, its configuration too. */
        env[n++] = "DOCPIPE_LOG_LEVEL=debug";
        env[n++] = "DOCPIPE_KAFKA_DEBUG=conf,generic";
    }
    env[n] = NULL;
    return env_key;
}

static pid_t run_all(const char *key, const char *fault, int port, const char *log)
{
    const char *env[24];
    env_with(key, fault, env);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    const char *args[] = {"run", "--http", addr, "all", NULL};
    return tenv_spawn(&T, args, log, env);
}

/* Runs one docpipe command with the secret settings; its stdout and stderr
 * go to files of dir named by tag; returns the exit status. */
static int command(const char *tag, const char *const *args, const char *const *extra)
{
    const char *env[28];
    env_with(WRONG_KEY, NULL, env);
    int n = 0;
    while (env[n])
        n++;
    for (int i = 0; extra && extra[i] && n < 27; i++)
        env[n++] = extra[i];
    env[n] = NULL;
    char out[900], errf[900];
    snprintf(out, sizeof(out), "%s/%s.out", dir, tag);
    snprintf(errf, sizeof(errf), "%s/%s.err", dir, tag);
    pid_t pid = tenv_spawn_io(&T, args, env, NULL, out, errf);
    return tenv_wait(pid);
}

static void save(const char *tag, const char *body)
{
    char path[900];
    snprintf(path, sizeof(path), "%s/%s", dir, tag);
    FILE *f = fopen(path, "w");
    cr_assert(f, "%s: %s", path, strerror(errno));
    fputs(body ? body : "", f);
    fclose(f);
}

static long long count_jobs(const char *state)
{
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = '%s'", user, state);
    return tenv_scalar(&T, sql);
}

static void wait_jobs(const char *state, long long want, int timeout_s)
{
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = '%s'", user, state);
    long long got = tenv_wait_scalar(&T, sql, want, timeout_s * 1000);
    cr_assert_eq(got, want, "%lld of %lld documents %s after %d s", got, want, state,
                 timeout_s);
}

static int wait_exit(pid_t pid, int timeout_s)
{
    for (int i = 0; i < timeout_s * 10; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(100000);
    }
    return -1;
}

Test(secrets, test_api_key_database_password_and_sasl_credentials_never_appear_in_anything_a_run_writes)
{
    tenv_setup(&T, "secrets");
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sfiles", T.prefix);
    mkdir(dir, 0755);
    make_secret_url();
    snprintf(env_url, sizeof(env_url), "DOCPIPE_DATABASE_URL=%s", secret_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s/storage", dir);
    snprintf(env_user, sizeof(env_user), "DOCPIPE_KAFKA_SASL_USERNAME=%s", SASL_USER);
    snprintf(env_pass, sizeof(env_pass), "DOCPIPE_KAFKA_SASL_PASSWORD=%s", SASL_PASSWORD);
    snprintf(user, sizeof(user), "5ec7e750-0000-4000-8000-%012x", (unsigned)getpid());
    const char *flags[] = {"--api-key", API_KEY, NULL};
    char embed_url[256];
    embed_pid = tenv_start_embedserver(&T, flags, embed_url, sizeof(embed_url));
    cr_assert(!strncmp(embed_url, "http://", 7));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=http://embed-user:%s@%s",
             URL_PASSWORD, embed_url + 7);

    /* Two documents. */
    char docs[2][900];
    for (int i = 0; i < 2; i++) {
        snprintf(docs[i], sizeof(docs[i]), "%s/doc%d.md", dir, i);
        FILE *f = fopen(docs[i], "w");
        cr_assert(f);
        fprintf(f, "# Document %d of %s\n\nA paragraph about secrets kept secret, %d.\n", i,
                T.prefix, i);
        fclose(f);
    }
    const char *submit[] = {"submit", "--user", user, docs[0], docs[1], NULL};
    cr_assert_eq(command("submit", submit, NULL), 0, "submit failed");
    char ids[2][40] = {"", ""};
    {
        char path[900];
        snprintf(path, sizeof(path), "%s/submit.out", dir);
        FILE *f = fopen(path, "r");
        cr_assert(f);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(fscanf(f, "%36s%*[^\n]", ids[i]), 1, "submit printed no id");
        fclose(f);
    }

    /* 1. The wrong key, and validate killed after its first commit. */
    int port = tenv_free_port();
    char log1[900], log2[900], log3[900];
    snprintf(log1, sizeof(log1), "%s/run-killed.log", dir);
    snprintf(log2, sizeof(log2), "%s/run-wrong-key.log", dir);
    snprintf(log3, sizeof(log3), "%s/run-right-key.log", dir);
    pipe_pid = run_all(WRONG_KEY, "validate:after-commit:kill", port, log1);
    /* The database role of the secret URL is the one connected. */
    char roleq[300];
    snprintf(roleq, sizeof(roleq), "SELECT (count(*) > 0)::int FROM pg_stat_activity"
             " WHERE usename = '%s'", PG_ROLE);
    cr_assert_eq(tenv_wait_scalar(&T, roleq, 1, 60000), 1,
                 "no connection as %s: the URL was not used", PG_ROLE);
    /* The search finds the secrets where they are: the process's environment. */
    {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/environ", (int)pipe_pid);
        FILE *f = fopen(path, "r");
        cr_assert(f);
        char buf[65536];
        size_t n = fread(buf, 1, sizeof(buf), f);
        fclose(f);
        found control = {0};
        search(&control, "environ", buf, n);
        cr_assert_eq(control.n, 4, "the search missed a secret of the environment:%s",
                     control.where); /* API key (wrong), PG, SASL and URL passwords */
    }
    int st = wait_exit(pipe_pid, 180);
    cr_assert_eq(st, 128 + SIGKILL, "the fault point did not kill the run (status %d)", st);
    pipe_pid = 0;

    /* 2. Again with the wrong key: 401, both documents failed and
     * dead-lettered; the run and the commands log at debug level. */
    debug_logs = 1;
    pipe_pid = run_all(WRONG_KEY, NULL, port, log2);
    wait_jobs("failed_embedding", 2, 180);
    cr_assert_eq(tenv_http_wait_status(port, "/readyz", 200, 60), 200);
    const char *paths[] = {"/metrics", "/api/stages", "/api/dead-letters", "/livez", "/readyz",
                           "/", NULL};
    for (int i = 0; paths[i]; i++) {
        char url[300], tag[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, paths[i]);
        char *body = NULL;
        long code = tenv_http_get_status(url, &body);
        cr_assert(code == 200, "%s answered %ld", url, code);
        snprintf(tag, sizeof(tag), "http%d.body", i);
        save(tag, body);
        free(body);
    }
    for (int i = 0; i < 2; i++) {
        char url[300], tag[64];
        snprintf(url, sizeof(url), "http://127.0.0.1:%d/api/document?id=%s", port, ids[i]);
        char *body = NULL;
        cr_assert_eq(tenv_http_get_status(url, &body), 200);
        cr_assert(strstr(body, "401"), "the document's error does not say 401: %s", body);
        snprintf(tag, sizeof(tag), "document%d.body", i);
        save(tag, body);
        free(body);
    }
    /* The commands an operator runs while things are wrong. */
    const char *status_args[] = {"status", NULL};
    const char *status_doc[] = {"status", "--json", ids[0], ids[1], NULL};
    const char *lag_args[] = {"lag", NULL};
    const char *lag_json[] = {"lag", "--json", NULL};
    const char *dlq_list[] = {"dlq", "list", "--json", NULL};
    cr_assert_eq(command("status", status_args, NULL), 0);
    cr_assert_eq(command("status-doc", status_doc, NULL), 0);
    cr_assert_eq(command("lag", lag_args, NULL), 0);
    cr_assert_eq(command("lag-json", lag_json, NULL), 0);
    cr_assert_eq(command("dlq-list", dlq_list, NULL), 0);
    char dlq_id[64] = "";
    {
        char sql[400];
        snprintf(sql, sizeof(sql), "SELECT min(id) FROM docpipe.dp_dead_letters"
                 " WHERE topic LIKE '%s%%'", T.prefix);
        snprintf(dlq_id, sizeof(dlq_id), "%lld", tenv_scalar(&T, sql));
    }
    const char *dlq_show[] = {"dlq", "show", dlq_id, NULL};
    cr_assert_eq(command("dlq-show", dlq_show, NULL), 0);
    {
        char path[900];
        snprintf(path, sizeof(path), "%s/dlq-show.out", dir);
        char *s = tenv_slurp(path);
        cr_assert(s && strstr(s, "HTTP 401"), "dlq show does not show the 401: %s", s);
        free(s);
    }
    /* A database that cannot be reached, through a URL with the password. */
    char bad_url[800];
    snprintf(bad_url, sizeof(bad_url), "DOCPIPE_DATABASE_URL=postgresql://%s:%s@127.0.0.1:1/x",
             PG_ROLE, PG_PASSWORD);
    const char *bad_env[] = {bad_url, "DOCPIPE_DB_CONNECT_TIMEOUT_MS=0", NULL};
    cr_assert_neq(command("status-no-db", status_args, bad_env), 0);
    cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0);
    pipe_pid = 0;
    debug_logs = 0;

    /* 3. The right key: sent through again, the documents complete, so the
     * key did reach the service (it refuses every other). */
    pipe_pid = run_all(API_KEY, NULL, port, log3);
    const char *retry[] = {"retry", ids[0], ids[1], NULL};
    cr_assert_eq(command("retry", retry, NULL), 0);
    wait_jobs("complete", 2, 180);
    cr_assert_eq(count_jobs("failed_embedding"), 0);
    cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0);
    pipe_pid = 0;

    /* Everything written: files, rows, records. */
    found f = {0};
    const char *files[] = {"run-killed.log", "run-wrong-key.log", "run-right-key.log",
        "submit.out", "submit.err", "status.out", "status.err", "status-doc.out",
        "status-doc.err", "lag.out", "lag.err", "lag-json.out", "lag-json.err",
        "dlq-list.out", "dlq-list.err", "dlq-show.out", "dlq-show.err", "status-no-db.out",
        "status-no-db.err", "retry.out", "retry.err", "http0.body", "http1.body",
        "http2.body", "http3.body", "http4.body", "http5.body", "document0.body",
        "document1.body", NULL};
    size_t bytes = 0;
    for (int i = 0; files[i]; i++) {
        char path[900];
        snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
        struct stat sb;
        if (stat(path, &sb) == 0)
            bytes += (size_t)sb.st_size;
        search_file(&f, path);
    }
    {
        char path[900];
        snprintf(path, sizeof(path), "%s/status-no-db.err", dir);
        char *s = tenv_slurp(path);
        cr_assert(s && strstr(s, "PostgreSQL"), "no clear database error: %s", s);
        free(s);
    }
    char sql[1200];
    snprintf(sql, sizeof(sql), "SELECT d::text FROM docpipe.dp_dead_letters d"
             " WHERE topic LIKE '%s%%'", T.prefix);
    search_query(&f, "dp_dead_letters", sql);
    snprintf(sql, sizeof(sql), "SELECT e::text FROM upload_pipeline.events e"
             " WHERE document_id IN ('%s', '%s')", ids[0], ids[1]);
    search_query(&f, "events", sql);
    snprintf(sql, sizeof(sql), "SELECT j::text FROM upload_pipeline.upload_jobs j"
             " WHERE user_id = '%s'", user);
    search_query(&f, "upload_jobs", sql);
    search_query(&f, "dp_service_status", "SELECT s::text FROM docpipe.dp_service_status s");
    search_query(&f, "retry_runs", "SELECT r::text FROM upload_pipeline.retry_runs r");
    int records = search_topics(&f);
    cr_assert_gt(records, 10, "only %d records in the test's topics", records);
    cr_assert_gt(bytes, 1000, "the run wrote only %zu bytes", bytes);
    cr_assert_eq(f.n, 0, "secrets found:%s", f.where);
    fprintf(stderr, "secrets: searched %zu bytes of output and %d records: none found\n", bytes,
            records);
}

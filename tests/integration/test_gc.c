/*
 * Retention: `docpipe gc` removes exactly what nothing needs any more, and
 * finalize keeps each vector once.  Documents go through the real
 * pipeline (Kafka, PostgreSQL, Tika, the local embedding service); the
 * things to remove or keep are made beside them: a file a crash left under
 * its temporary name, an old file no row names, old and recent events,
 * resolved and unresolved dead letters, attempts made old.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <jansson.h>

#include "support_docs.h"
#include "support_env.h"

static tenv T;
static pid_t embed_pid, pipe_pid, final_pid;
static char embed_url[256], storage[1200], env_embed[300], env_storage[1300],
    user[64], logf[600];
static const char *env[8];

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (final_pid > 0)
        tenv_stop(final_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = final_pid = embed_pid = 0;
    tenv_teardown(&T);
}

TestSuite(gc, .fini = teardown, .timeout = 600);

static long long qs(const char *fmt, const char *a)
{
    char sql[2048];
    snprintf(sql, sizeof(sql), fmt, a, a, a);
    return tenv_scalar(&T, sql);
}

static void exec_sql(const char *sql)
{
    PGresult *r = PQexec(T.db, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
              "%s: %s", sql, PQerrorMessage(T.db));
    PQclear(r);
}

/* A file of n bytes, its times set back by age_s seconds. */
static void make_file(const char *path, const char *content, long age_s)
{
    FILE *f = fopen(path, "w");
    cr_assert(f, "create %s", path);
    fputs(content, f);
    fclose(f);
    struct timeval tv[2];
    gettimeofday(&tv[0], NULL);
    tv[0].tv_sec -= age_s;
    tv[1] = tv[0];
    cr_assert_eq(utimes(path, tv), 0);
}

static void age_file(const char *path, long age_s)
{
    struct timeval tv[2];
    gettimeofday(&tv[0], NULL);
    tv[0].tv_sec -= age_s;
    tv[1] = tv[0];
    cr_assert_eq(utimes(path, tv), 0, "age %s", path);
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* `docpipe gc --json ARGS`: the counts (caller frees). */
static json_t *gc(const char *const *extra)
{
    const char *args[12] = {"gc", "--json"};
    int n = 2;
    for (int i = 0; extra && extra[i] && n < 11; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%sgc.out", T.prefix);
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "docpipe gc failed");
    char *text = tenv_slurp(out);
    json_t *o = json_loads(text, 0, NULL);
    cr_assert(json_is_object(o), "gc output: %s", text);
    free(text);
    return o;
}

static long long count_of(json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

/* The storage file of a storage:// path. */
static void stored(const char *doc, const char *column, char *out, size_t len)
{
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT %s FROM upload_pipeline.documents WHERE"
             " document_id = '%s'", column, doc);
    PGresult *r = PQexec(T.db, sql);
    cr_assert_eq(PQntuples(r), 1, "%s", PQerrorMessage(T.db));
    snprintf(out, len, "%s/%s", storage, PQgetvalue(r, 0, 0) + strlen("storage://"));
    PQclear(r);
}

Test(gc, removes_exactly_what_nothing_needs_and_finalize_keeps_each_vector_once)
{
    tenv_setup(&T, "gc");
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    unsigned h = 2166136261u;
    for (const char *p = T.prefix; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", h, (unsigned)getpid());
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    const char *e[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                       "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20", NULL};
    memcpy(env, e, sizeof(e));
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);

    /* Every stage but finalize: the documents stop at embeddings_stored,
     * gather's outputs unread in <prefix>embeddings-stored. */
    const char *upstream[] = {"run", "intake", "parse", "validate", "chunk",
                              "embed-plan", "embed", "gather", NULL};
    pipe_pid = tenv_spawn(&T, upstream, logf, env);
    char dir[1300];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sdocs", T.prefix);
    mkdir(dir, 0755);
    static tdoc docs[2];
    char ids[2][40], out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    for (int i = 0; i < 2; i++) {
        tdoc_make(&docs[i], dir, "md", 5000, 8800 + (unsigned)i);
        const char *args[] = {"submit", "--user", user, docs[i].path, NULL};
        cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0);
        char *text = tenv_slurp(out);
        cr_assert(sscanf(text, "%36s", ids[i]) == 1);
        free(text);
    }
    char sql[2048];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
             " user_id = '%s' AND status = 'embeddings_stored'", user);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 2, 300000), 2, "documents at embeddings_stored");

    /* Every attempt so far made two days old. */
    snprintf(sql, sizeof(sql), "UPDATE docpipe.dp_attempts SET committed_at ="
             " committed_at - interval '2 days' WHERE starts_with(topic, '%s')", T.prefix);
    exec_sql(sql);
    long long aged = qs("SELECT count(*) FROM docpipe.dp_attempts WHERE"
                        " starts_with(topic, '%s')", T.prefix);
    cr_assert(aged > 0, "the stages' attempts are recorded");

    /* Files: a live document's own, made old, stay; a temporary one left by
     * a crash and an unreferenced one, both old, go; a young unreferenced
     * one stays (an upload on its way to intake). */
    char raw0[1400], parsed0[1400], tmp[1500], orphan[1500], young[1500];
    stored(ids[0], "raw_path", raw0, sizeof(raw0));
    stored(ids[0], "parsed_path", parsed0, sizeof(parsed0));
    cr_assert(exists(raw0) && exists(parsed0), "the document's files are stored");
    age_file(raw0, 2 * 86400);
    age_file(parsed0, 2 * 86400);
    snprintf(tmp, sizeof(tmp), "%s.tmp.4242.0", raw0);
    make_file(tmp, "half a file", 2 * 86400);
    snprintf(orphan, sizeof(orphan), "%s/parsed", storage);
    mkdir(orphan, 0755); /* (markdown is its own parsed text: maybe none yet) */
    snprintf(orphan, sizeof(orphan), "%s/parsed/%064d", storage, 1);
    make_file(orphan, "text of a document parsed again since", 2 * 86400);
    snprintf(young, sizeof(young), "%s/raw/%064d", storage, 2);
    make_file(young, "an upload not taken in yet", 60);

    /* Events: one 40 days old goes, the document's recent ones stay. */
    snprintf(sql, sizeof(sql), "INSERT INTO upload_pipeline.events (document_id, ts, type,"
             " severity, code, stage) VALUES ('%s', now() - interval '40 days',"
             " 'stage_done', 'info', 'GC_TEST_OLD', 'parse')", ids[0]);
    exec_sql(sql);
    long long events = qs("SELECT count(*) FROM upload_pipeline.events WHERE"
                          " document_id = '%s'", ids[0]);

    /* Dead letters: resolved long ago goes; resolved an hour ago and
     * unresolved (however old) stay. */
    snprintf(sql, sizeof(sql), "INSERT INTO docpipe.dp_dead_letters (group_id, topic,"
             " partition, \"offset\", stage, dlq_topic, attempts, category, error,"
             " first_failure, last_failure, created_at, resolved_at, resolution) VALUES"
             " ('%1$sparse', '%1$sparse-queued', 0, 900001, 'parse', '%1$sparse.dlq', 1,"
             "  'permanent', 'gc test', now(), now(), now() - interval '40 days',"
             "  now() - interval '35 days', 'redriven'),"
             " ('%1$sparse', '%1$sparse-queued', 0, 900002, 'parse', '%1$sparse.dlq', 1,"
             "  'permanent', 'gc test', now(), now(), now() - interval '40 days',"
             "  now() - interval '1 hour', 'redriven'),"
             " ('%1$sparse', '%1$sparse-queued', 0, 900003, 'parse', '%1$sparse.dlq', 1,"
             "  'permanent', 'gc test', now(), now(), now() - interval '40 days',"
             "  NULL, NULL)", T.prefix);
    exec_sql(sql);

    /* A dry run counts and removes nothing. */
    const char *dry[] = {"--older-than", "1 day", "--dry-run", NULL};
    json_t *o = gc(dry);
    cr_assert_eq(count_of(o, "temp_files"), 1);
    cr_assert_eq(count_of(o, "unreferenced_files"), 1);
    cr_assert_eq(count_of(o, "dead_letters"), 1);
    cr_assert(count_of(o, "events") >= 1);
    json_decref(o);
    cr_assert(exists(tmp) && exists(orphan));

    const char *day[] = {"--older-than", "1 day", NULL};
    o = gc(day);
    cr_assert_eq(count_of(o, "temp_files"), 1);
    cr_assert_eq(count_of(o, "unreferenced_files"), 1);
    cr_assert_eq(count_of(o, "dead_letters"), 1);
    cr_assert(count_of(o, "events") >= 1);
    /* finalize has not read gather's outputs: no attempt row may go,
     * however old. */
    cr_assert_eq(count_of(o, "attempts"), 0, "attempts removed while unread");
    json_decref(o);
    cr_assert(!exists(tmp), "the crash's temporary file is gone");
    cr_assert(!exists(orphan), "the unreferenced old file is gone");
    cr_assert(exists(young), "a young unreferenced file stays");
    cr_assert(exists(raw0) && exists(parsed0), "a live document's files stay");
    cr_assert_eq(qs("SELECT count(*) FROM upload_pipeline.events WHERE document_id = '%s'",
                    ids[0]), events - 1, "only the old event went");
    cr_assert_eq(qs("SELECT count(*) FROM upload_pipeline.events WHERE code = 'GC_TEST_OLD'"
                    " AND document_id = '%s'", ids[0]), 0);
    snprintf(sql, sizeof(sql), "SELECT string_agg(\"offset\"::text, ',' ORDER BY \"offset\")"
             " FROM docpipe.dp_dead_letters WHERE group_id = '%sparse' AND \"offset\" > 900000",
             T.prefix);
    PGresult *r = PQexec(T.db, sql);
    cr_assert_str_eq(PQgetvalue(r, 0, 0), "900002,900003", "dead letters left");
    PQclear(r);
    cr_assert_eq(qs("SELECT count(*) FROM docpipe.dp_attempts WHERE starts_with(topic, '%s')",
                    T.prefix), aged);

    /* finalize reads them (their attempts still recorded: acted on), and
     * empties the vector buffer as it promotes. */
    final_pid = tenv_spawn_stage(&T, "finalize", logf, env);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
             " user_id = '%s' AND status = 'complete'", user);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 2, 300000), 2, "documents complete");
    for (int i = 0; i < 2; i++) {
        long long chunks = qs("SELECT count(*) FROM upload_pipeline.document_chunk_buffer"
                              " WHERE document_id = '%s'", ids[i]);
        cr_assert(chunks > 0);
        cr_assert_eq(qs("SELECT count(*) FROM upload_pipeline.document_chunks WHERE"
                        " document_id = '%s'", ids[i]), chunks, "every chunk final");
        cr_assert_eq(qs("SELECT count(*) FROM upload_pipeline.document_vector_buffer WHERE"
                        " document_id = '%s'", ids[i]), 0, "vector buffer emptied");
    }

    /* A replayed finalize finds the buffer empty and completes the
     * documents again from their final rows, changing none.  (Before the
     * old attempts go: a replay reads their records again.) */
    snprintf(sql, sizeof(sql), "SELECT string_agg(chunk_id::text || vector_sha, ','"
             " ORDER BY chunk_id) FROM upload_pipeline.document_chunks WHERE"
             " document_id = '%s'", ids[1]);
    r = PQexec(T.db, sql);
    char *before = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    const char *replay[] = {"replay", "finalize", "--to-earliest", "--execute", NULL};
    cr_assert_eq(tenv_docpipe(&T, replay, env), 0);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
             " user_id = '%s' AND status = 'complete' AND generation > 0", user);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 2, 300000), 2, "complete again after the replay");
    snprintf(sql, sizeof(sql), "SELECT string_agg(chunk_id::text || vector_sha, ','"
             " ORDER BY chunk_id) FROM upload_pipeline.document_chunks WHERE"
             " document_id = '%s'", ids[1]);
    r = PQexec(T.db, sql);
    cr_assert_str_eq(PQgetvalue(r, 0, 0), before, "final rows unchanged");
    PQclear(r);
    free(before);
    /* Every stage has read everything now: the old attempts go, the young
     * ones (finalize's) stay. */
    long long young_attempts = qs("SELECT count(*) FROM docpipe.dp_attempts WHERE"
                                  " starts_with(topic, '%s') AND committed_at >"
                                  " now() - interval '1 day'", T.prefix);
    cr_assert(young_attempts > 0, "finalize's attempts are recorded");
    o = gc(day);
    cr_assert_eq(count_of(o, "attempts"), aged, "the old attempts, all read, go");
    json_decref(o);
    cr_assert_eq(qs("SELECT count(*) FROM docpipe.dp_attempts WHERE starts_with(topic, '%s')",
                    T.prefix), young_attempts);

    for (int i = 0; i < 2; i++)
        tdoc_free(&docs[i]);
}

/*
 * Chunks bounded by the model's input (issue 12): a markdown file that is
 * one 2 MB line, run through the whole pipeline (`docpipe submit`,
 * `docpipe run all` against the real Kafka, PostgreSQL and Tika) with the
 * local embedding service enforcing text-embedding-3's 8191-token input
 * limit like the real one.  With markdown-simple@2 (the default) it
 * completes in chunks of at most chunk_max_tokens and the service refuses
 * nothing; with markdown-simple@1 selected it fails as production would:
 * the service refuses the one 2 MB chunk, the document is failed_embedding
 * with the service's message, dead-lettered, and its chunk is kept.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "support_env.h"

static tenv T;
static pid_t embed_pid, pipe_pid;
static char embed_url[256], storage[1200], user[64], env_embed[300],
    env_storage[1300], logf[600];

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    tenv_teardown(&T);
}

TestSuite(chunk_bound, .fini = teardown, .timeout = 600);

/* Every stage in one process, with the chunker setting given. */
static void run_pipeline(const char *chunker_env)
{
    if (pipe_pid > 0)
        cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0, "pipeline did not stop cleanly");
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);
    const char *env[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                         "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20",
                         chunker_env, NULL};
    const char *args[] = {"run", "all", NULL};
    pipe_pid = tenv_spawn(&T, args, logf, env);
}

static void start(const char *name)
{
    tenv_setup(&T, name);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", 0xc0b0u, (unsigned)getpid());
    const char *flags[] = {"--max-input-tokens", "8191", NULL};
    embed_pid = tenv_start_embedserver(&T, flags, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
}

/* A markdown file of one line of about 2 MB of numbered sentences (tag
 * makes the files differ); returns its length. */
static size_t write_one_line(const char *path, const char *tag)
{
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    size_t len = 0;
    for (int i = 0; len < (2u << 20); i++)
        len += (size_t)fprintf(f, "%sSentence %d of the %s line says that the pipeline"
                               " stores every chunk it embeds.", i ? " " : "", i, tag);
    fputc('\n', f);
    fclose(f);
    return len;
}

static void submit(const char *path, char id[40])
{
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    const char *args[] = {"submit", "--user", user, path, NULL};
    const char *env[] = {env_storage, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "submit %s failed", path);
    char *text = tenv_slurp(out);
    cr_assert(text && sscanf(text, "%36s", id) == 1, "no id for %s", path);
    free(text);
}

/* One number from sql, $1 = doc. */
static long long q(const char *sql, const char *doc)
{
    const char *p[1] = {doc};
    PGresult *r = PQexecParams(T.db, sql, 1, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(T.db));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static long long wait_state(const char *doc, const char *state)
{
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE document_id = '%s' AND status = '%s'", doc, state);
    long long got = tenv_wait_scalar(&T, sql, 1, 300000);
    if (got != 1) {
        char *log = tenv_slurp(logf);
        fprintf(stderr, "chunk_bound: pipeline log tail:\n%s\n",
                log ? log + (strlen(log) > 4000 ? strlen(log) - 4000 : 0) : "");
        free(log);
    }
    return got;
}

/* Responses of the embedding service with this status so far. */
static long long responses(const char *status)
{
    char url[300];
    snprintf(url, sizeof(url), "%s/admin/stats", embed_url);
    char *body = tenv_http_get(url);
    cr_assert(body, "no /admin/stats");
    json_t *j = json_loads(body, 0, NULL);
    free(body);
    long long n = json_integer_value(json_object_get(json_object_get(j, "responses"), status));
    json_decref(j);
    return n;
}

Test(chunk_bound, a_2mb_line_completes_bounded_with_v2_and_fails_like_production_with_v1)
{
    start("chunkbound");
    char dir[1300], path[1500];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sfiles", T.prefix);
    mkdir(dir, 0755);
    char v2doc[40], v1doc[40];

    /* The default chunker, markdown-simple@2 of 512 tokens. */
    run_pipeline("DOCPIPE_LOG_LEVEL=info");
    snprintf(path, sizeof(path), "%s/long-v2.md", dir);
    size_t len = write_one_line(path, "bounded");
    submit(path, v2doc);
    cr_assert_eq(wait_state(v2doc, "complete"), 1, "the 2 MB line completes with v2");
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE document_id ="
                   " $1::uuid AND chunks_version = 'markdown-simple@2'", v2doc), 1);
    long long chunks = q("SELECT count(*) FROM upload_pipeline.document_chunks"
                         " WHERE document_id = $1::uuid", v2doc);
    cr_assert_gt(chunks, 400, "%lld chunks", chunks);
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.document_chunks WHERE"
                   " document_id = $1::uuid AND chunker_version = 'markdown-simple@2'"
                   " AND (meta->>'tokens')::int BETWEEN 1 AND 512"
                   " AND vector_dim = 1536", v2doc), chunks,
                 "every chunk within 512 tokens, embedded");
    /* Cut at sentence ends, on single spaces: nothing lost or repeated. */
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.document_chunks WHERE"
                   " document_id = $1::uuid AND right(text, 1) <> '.'", v2doc), 0);
    cr_assert_eq(q("SELECT sum(octet_length(text)) + count(*) - 1 FROM"
                   " upload_pipeline.document_chunks WHERE document_id = $1::uuid",
                   v2doc), (long long)len);
    cr_assert_eq(responses("400"), 0, "the service refused nothing");
    cr_assert_geq(responses("200"), 1);

    /* markdown-simple@1 selected for new jobs: the same kind of file is one
     * chunk of 2 MB, which the service refuses. */
    run_pipeline("DOCPIPE_CHUNKER_VERSION=markdown-simple@1");
    snprintf(path, sizeof(path), "%s/long-v1.md", dir);
    len = write_one_line(path, "unbounded");
    submit(path, v1doc);
    cr_assert_eq(wait_state(v1doc, "failed_embedding"), 1, "v1's 2 MB chunk fails embedding");
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE document_id ="
                   " $1::uuid AND chunks_version = 'markdown-simple@1'"
                   " AND last_error->>'error' LIKE '%HTTP 400%maximum context length is"
                   " 8191 tokens%'", v1doc), 1, "last_error gives the service's reason");
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters WHERE"
             " group_id = '%sembed' AND category = 'permanent'"
             " AND record_key = convert_to($1, 'UTF8')"
             " AND error LIKE '%%maximum context length%%'", T.prefix);
    cr_assert_eq(q(sql, v1doc), 1, "one permanent dead letter with the reason");
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.document_chunk_buffer WHERE"
                   " document_id = $1::uuid AND chunker_version = 'markdown-simple@1'",
                   v1doc), 1, "its one chunk is kept for a retry");
    cr_assert_eq(q("SELECT max(octet_length(text)) FROM upload_pipeline.document_chunk_buffer"
                   " WHERE document_id = $1::uuid", v1doc), (long long)len,
                 "the chunk holds the whole line");
    cr_assert_geq(responses("400"), 1, "the service refused the over-long input");
    /* The first document is untouched by the change of setting. */
    cr_assert_eq(q("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE document_id ="
                   " $1::uuid AND status = 'complete'", v2doc), 1);
}

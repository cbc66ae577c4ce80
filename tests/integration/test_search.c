/*
 * `docpipe search` over documents that went through the whole pipeline
 * (`docpipe run all`, the real Kafka, PostgreSQL and Tika, the local
 * embedding service, whose vectors are a function of the text): a chunk's
 * own text finds that chunk first, and --user keeps to one user's
 * documents.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "support_docs.h"
#include "support_env.h"

static tenv T;
static pid_t embed_pid, pipe_pid;
static char embed_url[256], storage[1200], env_embed[300], env_storage[1300];
static char user_a[64], user_b[64];

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    tenv_teardown(&T);
}

TestSuite(search, .fini = teardown, .timeout = 600);

static void make_user(char *out, size_t len, unsigned which)
{
    unsigned h = 2166136261u;
    for (const char *p = T.prefix; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(out, len, "%08x-0000-4000-8000-%08x%04x", h, (unsigned)getpid(), which);
}

static void start(const char *name)
{
    tenv_setup(&T, name);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    make_user(user_a, sizeof(user_a), 0xa);
    make_user(user_b, sizeof(user_b), 0xb);
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    const char *env[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                         "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20", NULL};
    char logf[600];
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);
    const char *args[] = {"run", "all", NULL};
    pipe_pid = tenv_spawn(&T, args, logf, env);
}

/* Submits one file as user; its document id. */
static void submit(const char *path, const char *user, char id[40])
{
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    const char *args[] = {"submit", "--user", user, path, NULL};
    const char *env[] = {env_storage, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "submit %s failed", path);
    char *text = tenv_slurp(out);
    cr_assert(text && sscanf(text, "%36s", id) == 1, "no document id from submit");
    free(text);
}

static void wait_complete(int n)
{
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id IN ('%s', '%s') AND status = 'complete'", user_a, user_b);
    long long got = tenv_wait_scalar(&T, sql, n, 300000);
    cr_assert_eq(got, n, "complete: %lld of %d", got, n);
}

/* `docpipe search --json ARGS...`: the parsed array (caller frees). */
static json_t *search(const char *const *extra)
{
    const char *args[16] = {"search", "--json"};
    int n = 2;
    for (int i = 0; extra[i] && n < 15; i++)
        args[n++] = extra[i];
    args[n] = NULL;
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssearch.out", T.prefix);
    const char *env[] = {env_embed, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "docpipe search failed");
    char *text = tenv_slurp(out);
    json_error_t je;
    json_t *arr = json_loads(text, 0, &je);
    cr_assert(json_is_array(arr), "search output is not a JSON array: %s", text);
    free(text);
    return arr;
}

/* One chunk's text from the final table: document doc, ordinal ord. */
static char *chunk_text(const char *doc, int ord)
{
    char sql[300], o[16];
    snprintf(o, sizeof(o), "%d", ord);
    const char *p[2] = {doc, o};
    snprintf(sql, sizeof(sql), "SELECT text FROM upload_pipeline.document_chunks"
             " WHERE document_id = $1::uuid AND chunk_ord = $2::int");
    PGresult *r = PQexecParams(T.db, sql, 2, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQntuples(r), 1, "chunk %d of %s: %s", ord, doc, PQerrorMessage(T.db));
    char *t = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    return t;
}

static const char *hit_doc(json_t *arr, size_t i)
{
    return json_string_value(json_object_get(json_array_get(arr, i), "document_id"));
}

static int hit_ord(json_t *arr, size_t i)
{
    return (int)json_integer_value(json_object_get(json_array_get(arr, i), "chunk_ord"));
}

static double hit_score(json_t *arr, size_t i)
{
    return json_real_value(json_object_get(json_array_get(arr, i), "score"));
}

Test(search, a_chunks_own_text_finds_that_chunk_first_and_user_keeps_to_one_user)
{
    start("search");
    char dir[1300];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sdocs", T.prefix);
    mkdir(dir, 0755);
    /* User A: three documents of several chunks each; user B: one. */
    static tdoc docs[4];
    char ids[4][40];
    for (int i = 0; i < 4; i++) {
        tdoc_make(&docs[i], dir, i % 2 ? "txt" : "md", 6000, 7100 + (unsigned)i);
        submit(docs[i].path, i < 3 ? user_a : user_b, ids[i]);
    }
    wait_complete(4);
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.document_chunks"
             " WHERE document_id = '%s'", ids[1]);
    cr_assert(tenv_scalar(&T, sql) >= 3, "document 1 has several chunks");

    /* The text of chunk 2 of document 1 finds that chunk first, as good as
     * identical (the same text makes the same vector), and every other hit
     * far behind (vectors of other texts are nearly orthogonal).  Within
     * user A: other tests' documents may hold the same text. */
    char *text = chunk_text(ids[1], 2);
    const char *q1[] = {"--k", "5", "--user", user_a, text, NULL};
    json_t *hits = search(q1);
    cr_assert_eq(json_array_size(hits), 5, "--k 5 gives 5 hits");
    cr_assert_str_eq(hit_doc(hits, 0), ids[1]);
    cr_assert_eq(hit_ord(hits, 0), 2);
    cr_assert(hit_score(hits, 0) > 0.9999, "own text scores %f", hit_score(hits, 0));
    cr_assert(hit_score(hits, 1) < 0.5, "the next one scores %f", hit_score(hits, 1));
    for (size_t i = 1; i < 5; i++)
        cr_assert(hit_score(hits, i) <= hit_score(hits, i - 1), "best first");
    json_t *h0 = json_array_get(hits, 0);
    cr_assert_eq(json_integer_value(json_object_get(h0, "rank")), 1);
    const char *file = json_string_value(json_object_get(h0, "file"));
    cr_assert(file && *file && strstr(docs[1].path, file), "file %s of %s", file,
              docs[1].path);
    json_decref(hits);
    free(text);

    /* User B's chunk, searched for as user A: not there; as user B:
     * first. */
    text = chunk_text(ids[3], 1);
    const char *qa[] = {"--user", user_a, "--k", "50", text, NULL};
    hits = search(qa);
    cr_assert(json_array_size(hits) > 0, "user A has chunks");
    for (size_t i = 0; i < json_array_size(hits); i++) {
        cr_assert_str_neq(hit_doc(hits, i), ids[3], "user B's document among user A's hits");
        cr_assert(hit_score(hits, i) < 0.5, "user A's hit %zu scores %f", i, hit_score(hits, i));
    }
    json_decref(hits);
    const char *qb[] = {"--user", user_b, text, NULL};
    hits = search(qb);
    cr_assert_str_eq(hit_doc(hits, 0), ids[3]);
    cr_assert_eq(hit_ord(hits, 0), 1);
    for (size_t i = 0; i < json_array_size(hits); i++)
        cr_assert_str_eq(hit_doc(hits, i), ids[3], "only user B's document");
    json_decref(hits);
    free(text);

    /* The plain output: rank, score, document, ordinal, file, snippet. */
    text = chunk_text(ids[0], 0);
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssearch.tsv", T.prefix);
    const char *targs[] = {"search", "--k", "1", "--user", user_a, text, NULL};
    const char *env[] = {env_embed, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, targs, env, out), 0);
    char *tsv = tenv_slurp(out);
    char want[80];
    snprintf(want, sizeof(want), "1\t1.0000\t%s\t0\t", ids[0]);
    cr_assert(strncmp(tsv, want, strlen(want)) == 0, "line: %s", tsv);
    cr_assert_eq(strchr(tsv, '\n') - tsv + 1, (long)strlen(tsv), "one line: %s", tsv);
    free(tsv);
    free(text);

    /* Usage errors: no text, a bad --k, a user that is not a UUID. */
    const char *bad1[] = {"search", NULL};
    const char *bad2[] = {"search", "--k", "0", "x", NULL};
    const char *bad3[] = {"search", "--user", "alice", "x", NULL};
    cr_assert_eq(tenv_docpipe(&T, bad1, env), 2);
    cr_assert_eq(tenv_docpipe(&T, bad2, env), 2);
    cr_assert_eq(tenv_docpipe(&T, bad3, env), 2);
    /* The embedding service away: a failure that says so, exit 1. */
    const char *gone[] = {"DOCPIPE_EMBED_URL=http://127.0.0.1:9", NULL};
    const char *q[] = {"search", "anything", NULL};
    cr_assert_eq(tenv_docpipe(&T, q, gone), 1);
    for (int i = 0; i < 4; i++)
        tdoc_free(&docs[i]);
}

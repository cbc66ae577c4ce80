/*
 * Files a user might really submit as text that are not clean UTF-8, run
 * through the whole pipeline (`docpipe submit`, `docpipe run all` against
 * the real Kafka, PostgreSQL and Tika, the local embedding service): text
 * in other encodings completes with its characters decoded, broken bytes
 * as U+FFFD and controls gone; binary files named as text are refused at
 * intake with an error that says what they are.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

TestSuite(hostile, .fini = teardown, .timeout = 900);

/* Prefix, storage, a user of our own, the embedding service and every
 * stage in one process (test_pipeline.c's start(), cut down). */
static void start(const char *name)
{
    tenv_setup(&T, name);
    const char *t = getenv("DOCPIPE_TIKA_URL");
    char url[300];
    snprintf(url, sizeof(url), "%s/tika", t && *t ? t : "http://127.0.0.1:39998");
    char *tika = tenv_http_get(url);
    cr_assert(tika, "Apache Tika server is not answering at %s", url);
    free(tika);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", 0x40571e5u,
             (unsigned)getpid());
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    const char *env[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                         "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20",
                         NULL};
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);
    unlink(logf);
    const char *args[] = {"run", "all", NULL};
    pipe_pid = tenv_spawn(&T, args, logf, env);
}

/* Writes data[0..len) as dir/name; path receives the file's path. */
static void write_file(const char *dir, const char *name, const void *data,
                       size_t len, char *path, size_t pathlen)
{
    snprintf(path, pathlen, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    cr_assert(f, "cannot write %s", path);
    cr_assert_eq(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* `docpipe submit` of one file: its document id into id. */
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

/* One row, one column of sql with $1 = doc and $2 = arg (if not NULL), as
 * a number. */
static long long q2(const char *sql, const char *doc, const char *arg)
{
    const char *p[2] = {doc, arg};
    PGresult *r = PQexecParams(T.db, sql, arg ? 2 : 1, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(T.db));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void report(void)
{
    char sql[700];
    snprintf(sql, sizeof(sql), "SELECT d.filename, j.status, coalesce(j.last_error::text, '')"
             " FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d"
             " USING (document_id) WHERE j.user_id = '%s'", user);
    PGresult *r = PQexec(T.db, sql);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
        fprintf(stderr, "hostile: %s %s %s\n", PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                PQgetvalue(r, i, 2));
    PQclear(r);
}

/* A text document completed, parse saw `encoding`, and one of its chunks
 * holds `text` (UTF-8). */
static void assert_complete_with(const char *name, const char *doc,
                                 const char *encoding, const char *text)
{
    cr_assert_eq(q2("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
                    " document_id = $1::uuid AND status = 'complete'"
                    " AND progress->>'encoding' = $2", doc, encoding), 1,
                 "%s is complete, decoded as %s", name, encoding);
    cr_assert_eq(q2("SELECT count(*) FROM upload_pipeline.document_chunks WHERE"
                    " document_id = $1::uuid AND strpos(text, $2) > 0", doc, text), 1,
                 "a chunk of %s holds '%s'", name, text);
}

/* A binary file refused at intake: failed_upload, the reason in
 * last_error and in its one dead letter. */
static void assert_refused(const char *name, const char *doc, const char *what)
{
    char like[200];
    snprintf(like, sizeof(like), "%%content is %s, not text (the upload claims text/%%", what);
    cr_assert_eq(q2("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
                    " document_id = $1::uuid AND status = 'failed_upload'"
                    " AND last_error->>'stage' = 'intake'"
                    " AND last_error->>'error' LIKE $2", doc, like), 1,
                 "%s is failed_upload as %s", name, what);
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters WHERE"
             " group_id = '%sintake' AND category = 'permanent'"
             " AND record_key = convert_to($1, 'UTF8') AND error LIKE $2", T.prefix);
    cr_assert_eq(q2(sql, doc, like), 1, "one dead letter for %s says %s", name, what);
    cr_assert_eq(q2("SELECT count(*) FROM upload_pipeline.document_chunk_buffer"
                    " WHERE document_id = $1::uuid", doc, NULL), 0,
                 "%s reached no later stage", name);
}

Test(hostile, text_in_any_encoding_completes_and_binaries_are_refused_at_intake)
{
    start("hostile");
    char dir[1300], path[1500];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sfiles", T.prefix);
    mkdir(dir, 0755);
    char ids[6][40];

    /* UTF-16LE with its byte order mark: "Crème brûlée costs 5 €\n". */
    static const char u16[] = "\xFF\xFE" "C\0r\0\xE8\0m\0e\0 \0b\0r\0\xFB\0l\0\xE9\0e\0"
                              " \0c\0o\0s\0t\0s\0 \0" "5\0 \0\xAC\x20\n\0";
    write_file(dir, "utf16.txt", u16, sizeof(u16) - 1, path, sizeof(path));
    submit(path, ids[0]);

    /* UTF-8 with broken bytes among good characters. */
    static const char bad[] = "# Caf\xC3\xA9 notes\n\nna\xC3\xAFve \xFF\xFE bytes, "
                              "\xC3\xA9t\xC3\xA9 \xE2\x82 end\n";
    write_file(dir, "broken.md", bad, sizeof(bad) - 1, path, sizeof(path));
    submit(path, ids[1]);

    /* NUL bytes and other controls inside the text. */
    static const char nul[] = "before\0after and\x01 a bell\x07 here\n";
    write_file(dir, "nul.txt", nul, sizeof(nul) - 1, path, sizeof(path));
    submit(path, ids[2]);

    /* Latin1, as an old editor writes it. */
    static const char latin1[] = "Fa\xE7" "ade of the caf\xE9, \xA9 1999\n";
    write_file(dir, "latin1.txt", latin1, sizeof(latin1) - 1, path, sizeof(path));
    submit(path, ids[3]);

    /* An executable named .txt. */
    char *elf = NULL;
    size_t elf_len = 0;
    FILE *f = fopen("/bin/true", "rb");
    cr_assert(f, "/bin/true is needed as a sample executable");
    elf = malloc(4 << 20);
    elf_len = fread(elf, 1, 4 << 20, f);
    fclose(f);
    write_file(dir, "program.txt", elf, elf_len, path, sizeof(path));
    free(elf);
    submit(path, ids[4]);

    /* A PNG image named .md. */
    static const char png[] = "\x89PNG\r\n\x1A\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01"
                              "\x08\x06\0\0\0\x1F\x15\xC4\x89\0\0\0\rIDATx\x9C"
                              "c\xF8\x0F\0\x01\x01\x01\0\x18\xDD\x8D\xB0\0\0\0\0"
                              "IEND\xAE\x42\x60\x82";
    write_file(dir, "picture.md", png, sizeof(png) - 1, path, sizeof(path));
    submit(path, ids[5]);

    char all[600];
    snprintf(all, sizeof(all),
             "SELECT (count(*) = 6 AND count(*) FILTER (WHERE status = 'complete'"
             " OR status LIKE 'failed_%%') = 6)::int"
             " FROM upload_pipeline.upload_jobs WHERE user_id = '%s'", user);
    if (tenv_wait_scalar(&T, all, 1, 240000) != 1)
        report();

    assert_complete_with("utf16.txt", ids[0], "utf-16le",
                         "Cr\xC3\xA8me br\xC3\xBBl\xC3\xA9" "e costs 5 \xE2\x82\xAC");
    assert_complete_with("broken.md", ids[1], "utf-8",
                         "na\xC3\xAFve \xEF\xBF\xBD\xEF\xBF\xBD bytes, \xC3\xA9t\xC3\xA9 "
                         "\xEF\xBF\xBD end");
    assert_complete_with("nul.txt", ids[2], "utf-8", "beforeafter and a bell here");
    assert_complete_with("latin1.txt", ids[3], "WINDOWS-1252",
                         "Fa\xC3\xA7" "ade of the caf\xC3\xA9, \xC2\xA9 1999");
    assert_refused("program.txt", ids[4], "an ELF executable");
    assert_refused("picture.md", ids[5], "a PNG image");
}

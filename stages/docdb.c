/* docdb: state transitions, events and storage (see docdb.h). */
#include "docdb.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ids.h"
#include "pg.h"
#include "redact.h"

dp_err dp_doc_fail(PGconn *db, const char *document_id, const char *failed_state,
                   const char *stage, dp_err category, const char *error,
                   const char *correlation_id, char *err, size_t errlen)
{
    /* The error is shown by status, wait and the dashboard: no secret in it
     * (redact.h), whoever wrote it. */
    char shown[2048];
    snprintf(shown, sizeof(shown), "%s", error ? error : "");
    dp_redact(shown);
    const char *params[6] = {document_id, failed_state, stage,
                             dp_err2str(category), shown, correlation_id};
    return dp_pg_command(db,
        "WITH old AS (SELECT job_id, status FROM upload_pipeline.upload_jobs"
        "              WHERE document_id = $1::uuid FOR UPDATE),"
        " moved AS (UPDATE upload_pipeline.upload_jobs j"
        "   SET status = $2, updated_at = now(),"
        "       last_error = jsonb_build_object('error', $5::text, 'error_type',"
        "         $4::text, 'stage', $3::text, 'failed_at', now(),"
        "         'correlation_id', $6::text)"
        "   FROM old WHERE j.job_id = old.job_id"
        "    AND old.status <> 'complete' AND old.status NOT LIKE 'failed_%'"
        "   RETURNING j.job_id, old.status AS from_status),"
        " doc AS (UPDATE upload_pipeline.documents SET processing_status = $2,"
        "   updated_at = now() WHERE document_id = $1::uuid"
        "   AND EXISTS (SELECT 1 FROM moved))"
        " INSERT INTO upload_pipeline.events (job_id, document_id, type,"
        "   severity, code, stage, from_status, to_status, payload,"
        "   correlation_id)"
        " SELECT job_id, $1::uuid, 'error', 'error', 'JOB_FAILED_PERMANENTLY',"
        "   $3, from_status, $2, jsonb_build_object('error', $5::text,"
        "   'category', $4::text), nullif($6, '')::uuid FROM moved",
        6, params, "record failure", err, errlen);
}

dp_err dp_doc_dead_letter(const char *stage, const char *failed_state,
                          PGconn *db, const dp_record *rec, dp_err category,
                          const char *error, char *err, size_t errlen)
{
    char key[64];
    uint8_t raw[16];
    if (!rec->key || rec->key_len >= sizeof(key))
        return DP_OK; /* no document to mark: the dead letter says it all */
    memcpy(key, rec->key, rec->key_len);
    key[rec->key_len] = '\0';
    if (dp_uuid_parse(key, raw) != 0)
        return DP_OK;
    return dp_doc_fail(db, key, failed_state, stage, category, error,
                       rec->correlation_id, err, errlen);
}

void dp_storage_file(const char *dir, const char *path, char *out, size_t outlen)
{
    const char *rel = strncmp(path, "storage://", 10) == 0 ? path + 10 : path;
    snprintf(out, outlen, "%s/%s", dir, rel);
}

static int mkdirs(const char *path)
{
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    }
    return mkdir(tmp, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

/* A file written under a temporary name, renamed once durable. */
struct dp_stored {
    char *tmp, *file;
};

static void batch_add(dp_storage_batch *sb, const char *tmp, const char *file)
{
    if (sb->n == sb->cap) {
        sb->cap = sb->cap ? 2 * sb->cap : 16;
        sb->files = realloc(sb->files, sb->cap * sizeof(*sb->files));
    }
    sb->files[sb->n].tmp = strdup(tmp);
    sb->files[sb->n].file = strdup(file);
    sb->n++;
}

static void batch_empty(dp_storage_batch *sb)
{
    for (size_t i = 0; i < sb->n; i++) {
        free(sb->files[i].tmp);
        free(sb->files[i].file);
    }
    sb->n = 0;
}

dp_err dp_storage_write(dp_storage_batch *sb, const char *dir, const char *kind,
                        const void *data, size_t len,
                        char path[DP_STORAGE_PATH_SIZE], char sha[65], char *err,
                        size_t errlen)
{
    static _Atomic unsigned long seq;
    char hex[DP_SHA256_HEX_SIZE];
    dp_err e = dp_sha256_hex(data, len, hex);
    if (e)
        return dp_errf(e, err, errlen, "sha256 failed");
    char folder[4096], file[4200], tmp[4300];
    snprintf(folder, sizeof(folder), "%s/%s", dir, kind);
    snprintf(file, sizeof(file), "%s/%s", folder, hex);
    if (path)
        snprintf(path, DP_STORAGE_PATH_SIZE, "storage://%s/%s", kind, hex);
    if (sha)
        memcpy(sha, hex, DP_SHA256_HEX_SIZE);
    struct stat st;
    if (stat(file, &st) == 0 && (size_t)st.st_size == len) {
        /* content-addressed: already there.  Touched, so `docpipe gc`
         * counts its age from this use (a file no row names yet, of an
         * upload on its way to intake, is kept for gc_file_grace). */
        utimensat(AT_FDCWD, file, NULL, 0);
        return DP_OK;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d.%lu", file, (int)getpid(), seq++);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 && errno == ENOENT) {
        /* The folder's first file: make the folder (once, not per file). */
        if (mkdirs(folder) != 0)
            return dp_errf(DP_ERR_RETRYABLE, err, errlen, "create %s: %s", folder,
                           strerror(errno));
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    }
    if (fd < 0)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "write %s: %s", tmp,
                       strerror(errno));
    const char *p = data;
    size_t left = len;
    while (left) {
        ssize_t w = write(fd, p, left);
        if (w < 0) {
            int en = errno;
            close(fd);
            unlink(tmp);
            return dp_errf(DP_ERR_RETRYABLE, err, errlen, "write %s: %s", tmp,
                           strerror(en));
        }
        p += w;
        left -= (size_t)w;
    }
    if (close(fd) != 0) {
        unlink(tmp);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "write %s: %s", tmp,
                       strerror(errno));
    }
    batch_add(sb, tmp, file);
    return DP_OK;
}

dp_err dp_storage_sync(dp_storage_batch *sb, char *err, size_t errlen)
{
    dp_err e = DP_OK;
    size_t i;
    /* Every file first, then the names: a final name always holds the
     * whole file, even after a crash. */
    for (i = 0; i < sb->n && e == DP_OK; i++) {
        int fd = open(sb->files[i].tmp, O_RDONLY);
        if (fd < 0 || fsync(fd) != 0)
            e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "sync %s: %s",
                        sb->files[i].tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
    }
    for (i = 0; i < sb->n && e == DP_OK; i++)
        if (rename(sb->files[i].tmp, sb->files[i].file) != 0)
            e = dp_errf(DP_ERR_RETRYABLE, err, errlen, "store %s: %s",
                        sb->files[i].file, strerror(errno));
    if (e)
        for (i = 0; i < sb->n; i++)
            unlink(sb->files[i].tmp); /* those renamed are gone already */
    batch_empty(sb);
    return e;
}

void dp_storage_discard(dp_storage_batch *sb)
{
    for (size_t i = 0; i < sb->n; i++)
        unlink(sb->files[i].tmp);
    batch_empty(sb);
    free(sb->files);
    sb->files = NULL;
    sb->cap = 0;
}

dp_err dp_storage_put(const char *dir, const char *kind, const void *data,
                      size_t len, char path[DP_STORAGE_PATH_SIZE],
                      char sha[65], char *err, size_t errlen)
{
    dp_storage_batch sb = {0};
    dp_err e = dp_storage_write(&sb, dir, kind, data, len, path, sha, err, errlen);
    if (e == DP_OK)
        e = dp_storage_sync(&sb, err, errlen);
    dp_storage_discard(&sb);
    return e;
}

dp_err dp_storage_size(const char *dir, const char *path, size_t *len, char *err,
                       size_t errlen)
{
    char file[4200];
    dp_storage_file(dir, path, file, sizeof(file));
    struct stat st;
    if (stat(file, &st) != 0)
        return dp_errf(errno == ENOENT ? DP_ERR_PERMANENT : DP_ERR_RETRYABLE,
                       err, errlen, "read %s: %s", path, strerror(errno));
    *len = (size_t)st.st_size;
    return DP_OK;
}

dp_err dp_storage_get(const char *dir, const char *path, size_t max_bytes,
                      char **data, size_t *len, char *err, size_t errlen)
{
    char file[4200];
    dp_storage_file(dir, path, file, sizeof(file));
    int fd = open(file, O_RDONLY);
    if (fd < 0)
        return dp_errf(errno == ENOENT ? DP_ERR_PERMANENT : DP_ERR_RETRYABLE,
                       err, errlen, "read %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "stat %s", path);
    }
    if ((size_t)st.st_size > max_bytes) {
        close(fd);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "%s is %lld bytes, over the limit of %zu", path,
                       (long long)st.st_size, max_bytes);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    buf[got] = '\0';
    *data = buf;
    *len = got;
    return DP_OK;
}

int dp_status_in(const char *status, const char *const *states)
{
    for (int i = 0; states[i]; i++)
        if (strcmp(status, states[i]) == 0)
            return 1;
    return 0;
}

static const char *const state_order[] = {
    "uploaded", "parse_queued", "parsed", "parse_validated", "chunking",
    "chunks_stored", "embedding_queued", "embedding_in_progress",
    "embeddings_stored", "complete", NULL};

/* A state's place in the pipeline, times two: a failed state sits just
 * after the last state its stages take (failed_parse after parsed, ...). */
static int state_rank(const char *status)
{
    for (int i = 0; state_order[i]; i++)
        if (strcmp(status, state_order[i]) == 0)
            return 2 * i;
    static const struct { const char *failed, *after; } failed[] = {
        {"failed_parse", "parsed"}, {"failed_chunking", "chunking"},
        {"failed_embedding", "embeddings_stored"}, {NULL, NULL}};
    for (int i = 0; failed[i].failed; i++)
        if (strcmp(status, failed[i].failed) == 0)
            return state_rank(failed[i].after) + 1;
    return *status ? 1000 : -1; /* failed_upload, unknown: terminal; "": no job */
}

static int lowest_rank(const char *const *accepted)
{
    int lowest = 1000;
    for (int k = 0; accepted[k]; k++) {
        int r = state_rank(accepted[k]);
        if (r < lowest)
            lowest = r;
    }
    return lowest;
}

const char *dp_doc_entry_state(const char *const *accepted)
{
    const char *best = accepted[0];
    for (int k = 0; accepted[k]; k++)
        if (state_rank(accepted[k]) < state_rank(best))
            best = accepted[k];
    return best;
}

int dp_doc_replay_restarts(const char *status, const char *const *accepted)
{
    if (!*status || dp_status_in(status, accepted))
        return 0;
    int r = state_rank(status);
    return r > lowest_rank(accepted) && r < 1000;
}

dp_err dp_doc_clear_from(PGconn *db, const char *ids, const char *to_state,
                         char *err, size_t errlen)
{
    const char *params[1] = {ids};
    dp_err e = DP_OK;
    if (state_rank(to_state) <= state_rank("chunks_stored"))
        e = dp_pg_command(db,
            "WITH b AS (DELETE FROM upload_pipeline.embedding_batches"
            "   WHERE document_id = ANY ($1::uuid[]))"
            " DELETE FROM upload_pipeline.document_vector_buffer"
            " WHERE document_id = ANY ($1::uuid[])", 1, params,
            "remove the embeddings of an earlier generation", err, errlen);
    if (e == DP_OK && state_rank(to_state) <= state_rank("parse_validated"))
        e = dp_pg_command(db,
            "DELETE FROM upload_pipeline.document_chunk_buffer"
            " WHERE document_id = ANY ($1::uuid[])", 1, params,
            "remove the chunks of an earlier generation", err, errlen);
    return e;
}

int dp_doc_accept(dp_batch *b, size_t i, const char *document_id,
                  const char *status, const char *const *accepted)
{
    if (dp_status_in(status, accepted))
        return 1;
    if (state_rank(status) < lowest_rank(accepted))
        dp_batch_defer(b, i, 500, "document %s is still '%s': waiting for the"
                       " upstream stage's commit", document_id,
                       *status ? status : "unknown");
    return 0;
}

dp_err dp_doc_transitions_apply(PGconn *db, const char *jobs_json,
                                const char *moves_json, const char *job_ids,
                                const char *doc_ids, char *err, size_t errlen)
{
    /* The rows are also named by = ANY (ids): a bounded index scan of each
     * table, whatever it holds.  Joined only to the recordset (100 rows to
     * the planner), they were read by sequential scans. */
    const char *params[4] = {jobs_json, moves_json, job_ids, doc_ids};
    PGresult *res = dp_pg_execp(db,
        "WITH u AS (UPDATE upload_pipeline.upload_jobs j"
        "   SET status = t.status, updated_at = now(),"
        "       progress = j.progress || t.progress,"
        "       processing_started_at = coalesce(j.processing_started_at, now()),"
        "       parsed_path = coalesce(t.parsed_path, j.parsed_path),"
        "       embed_batches_total = coalesce(t.batches, j.embed_batches_total),"
        "       generation = coalesce(t.generation, j.generation)"
        "   FROM jsonb_to_recordset($1::jsonb) AS t(job uuid, status text,"
        "     progress jsonb, parsed_path text, batches int, generation int)"
        "   WHERE j.job_id = t.job AND j.job_id = ANY ($3::uuid[])),"
        " d AS (UPDATE upload_pipeline.documents o SET processing_status = t.status,"
        "   updated_at = now(), parsed_path = coalesce(t.parsed_path, o.parsed_path)"
        "   FROM jsonb_to_recordset($1::jsonb) AS t(doc uuid, status text,"
        "     parsed_path text)"
        "   WHERE o.document_id = t.doc AND o.document_id = ANY ($4::uuid[]))"
        " INSERT INTO upload_pipeline.events (job_id, document_id, type,"
        "   severity, code, stage, from_status, to_status, correlation_id)"
        " SELECT m.job, m.doc, coalesce(m.type, CASE WHEN m.to_s = 'complete'"
        "   THEN 'finalized' ELSE 'stage_done' END), 'info', m.code, m.stage,"
        "   m.from_s, m.to_s, nullif(m.corr, '')::uuid"
        " FROM jsonb_to_recordset($2::jsonb) AS m(n int, job uuid, doc uuid,"
        "   from_s text, to_s text, stage text, code text, corr text, type text)"
        " ORDER BY m.n",
        4, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(db, res, PGRES_COMMAND_OK, "state transitions", err,
                           errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

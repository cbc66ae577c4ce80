/*
 * intake (stage 1): checks an upload and records its document and job.
 *
 * In: <prefix>uploaded (UploadRequested), written by `docpipe submit` after
 * it stored the raw file content-addressed.  The file must exist with the
 * announced size and sha256, be at most 25 MB and of a supported type
 * (PDF, HTML, plain text, markdown); a file claiming to be text or
 * markdown must look like text (textdecode.h's content sniffing: an
 * executable or an image named .txt is refused here, not left to fail in
 * a later stage).  A (user, file sha256) pair already
 * known is a duplicate upload: nothing more happens.  Otherwise the
 * document and its job are inserted (uploaded → parse_queued) and a
 * ParseRequested goes to <prefix>parse-queued.  A rejected upload is
 * recorded with status failed_upload and dead-lettered.
 *
 * The same file submitted again after a refusal (say, renamed from .bin to
 * .md) is the same document: its upload, now passing the checks, takes the
 * refused document over (file name, type, path) and starts its job again
 * (failed_upload → uploaded, a retry event, then → parse_queued), under
 * the job's first correlation id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"
#include "docdb.h"
#include "docstage.h"
#include "ids.h"
#include "pg.h"
#include "stages.h"
#include "textdecode.h"

#define INTAKE_MAX_BYTES (25u * 1024 * 1024)

static const char *const supported_mime[] = {
    "application/pdf", "text/html", "application/xhtml+xml", "text/plain",
    "text/markdown", NULL};

int dp_mime_supported(const char *mime)
{
    return dp_status_in(mime, supported_mime);
}

void dp_job_id(const char *document_id, char out[DP_UUID_STR_SIZE])
{
    char name[128];
    int n = snprintf(name, sizeof(name), "job:%s", document_id);
    if (dp_uuid5(DP_CHUNK_ID_NAMESPACE, name, (size_t)n, out) != DP_OK)
        snprintf(out, DP_UUID_STR_SIZE, "%s", document_id);
}

/* The chunker a new job records (upload_jobs.chunks_version): settings
 * chunker_version, chunk_max_tokens and chunk_overlap_tokens as one
 * canonical string (chunker.h), validated when the settings were loaded. */
static void job_chunks_version(const dp_config *cfg, char out[DP_CHUNKER_VERSION_SIZE])
{
    dp_chunker_spec spec = {1, 0, 0};
    if (!strcmp(cfg->chunker_version, DP_CHUNKER_V2))
        spec = (dp_chunker_spec){2, (unsigned)cfg->chunk_max_tokens,
                                 (unsigned)cfg->chunk_overlap_tokens};
    dp_chunker_spec_format(&spec, out, DP_CHUNKER_VERSION_SIZE);
}

/* Inserts document and job; *fresh = 0 when the upload is a duplicate. */
static dp_err record_upload(PGconn *db, avro_value_t *m, const char *status,
                            const char *chunks_version, int *fresh, char *err,
                            size_t errlen)
{
    char job[DP_UUID_STR_SIZE], bytes[32];
    const char *doc = dp_msg_str(m, "document_id");
    dp_job_id(doc, job);
    snprintf(bytes, sizeof(bytes), "%lld", (long long)dp_msg_long(m, "bytes_len"));
    const char *params[11] = {doc, dp_msg_str(m, "user_id"),
        dp_msg_str(m, "filename"), dp_msg_str(m, "mime"), bytes,
        dp_msg_str(m, "file_sha256"), dp_msg_str(m, "raw_path"), job, status,
        dp_msg_str(m, "correlation_id"), chunks_version};
    PGresult *res = dp_pg_execp(db,
        "WITH d AS (INSERT INTO upload_pipeline.documents (document_id, user_id,"
        "   filename, mime, bytes_len, file_sha256, raw_path, processing_status)"
        "   VALUES ($1::uuid, $2::uuid, $3, $4, $5::bigint, $6, $7, $9)"
        "   ON CONFLICT DO NOTHING RETURNING document_id, user_id, raw_path)"
        " INSERT INTO upload_pipeline.upload_jobs (job_id, user_id, document_id,"
        "   status, raw_path, correlation_id, chunks_version)"
        " SELECT $8::uuid, user_id, document_id, $9, raw_path,"
        "   coalesce(nullif($10, ''), $8::text)::uuid, $11 FROM d",
        11, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(db, res, PGRES_COMMAND_OK, "record upload", err,
                           errlen);
    if (e)
        return e;
    *fresh = atoi(PQcmdTuples(res)) > 0;
    PQclear(res);
    return DP_OK;
}

/* Takes over the refused document of this upload (see the top); *again = 1
 * and corr = the job's correlation id when it did. */
static dp_err take_over_refused(PGconn *db, avro_value_t *m,
                                char corr[DP_UUID_STR_SIZE], int *again,
                                char *err, size_t errlen)
{
    const char *params[7] = {dp_msg_str(m, "document_id"), dp_msg_str(m, "user_id"),
        dp_msg_str(m, "filename"), dp_msg_str(m, "mime"),
        dp_msg_str(m, "raw_path"), dp_msg_str(m, "file_sha256"),
        dp_msg_str(m, "correlation_id")};
    PGresult *res = dp_pg_execp(db,
        "WITH j AS (SELECT j.job_id, j.correlation_id FROM upload_pipeline.upload_jobs j"
        "   JOIN upload_pipeline.documents d USING (document_id)"
        "   WHERE j.document_id = $1::uuid AND j.status = 'failed_upload'"
        "   AND d.user_id = $2::uuid AND d.file_sha256 = $6 FOR UPDATE OF j, d),"
        " d AS (UPDATE upload_pipeline.documents SET filename = $3, mime = $4,"
        "   raw_path = $5, processing_status = 'uploaded', updated_at = now()"
        "   WHERE document_id = $1::uuid AND EXISTS (SELECT 1 FROM j)),"
        " u AS (UPDATE upload_pipeline.upload_jobs u SET status = 'uploaded',"
        "   raw_path = $5, retry_count = u.retry_count + 1, updated_at = now()"
        "   FROM j WHERE u.job_id = j.job_id"
        "   RETURNING u.job_id, u.correlation_id, u.retry_count),"
        " e AS (INSERT INTO upload_pipeline.events (job_id, document_id, type,"
        "   severity, code, stage, from_status, to_status, payload, correlation_id)"
        "   SELECT job_id, $1::uuid, 'retry', 'info', 'UPLOAD_SUBMITTED_AGAIN',"
        "   'intake', 'failed_upload', 'uploaded', jsonb_build_object('retry_count',"
        "   retry_count, 'filename', $3::text, 'mime', $4::text,"
        "   'upload_correlation_id', $7::text), correlation_id FROM u)"
        " SELECT correlation_id FROM u",
        7, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(db, res, PGRES_TUPLES_OK, "take over refused upload",
                           err, errlen);
    if (e)
        return e;
    *again = PQntuples(res) == 1;
    if (*again)
        snprintf(corr, DP_UUID_STR_SIZE, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return DP_OK;
}

static dp_err check_upload(const dp_config *cfg, avro_value_t *m, char *why,
                           size_t whylen)
{
    const char *mime = dp_msg_str(m, "mime");
    int64_t bytes = dp_msg_long(m, "bytes_len");
    if (!dp_mime_supported(mime))
        return dp_errf(DP_ERR_PERMANENT, why, whylen,
                       "unsupported type '%s' (PDF, HTML, text, markdown)", mime);
    if (bytes > (int64_t)INTAKE_MAX_BYTES)
        return dp_errf(DP_ERR_PERMANENT, why, whylen,
                       "file is %lld bytes, over the 25 MB limit", (long long)bytes);
    uint8_t raw[16];
    if (dp_uuid_parse(dp_msg_str(m, "document_id"), raw) != 0 ||
        dp_uuid_parse(dp_msg_str(m, "user_id"), raw) != 0)
        return dp_errf(DP_ERR_PERMANENT, why, whylen,
                       "document_id and user_id must be UUIDs");
    char *data;
    size_t len;
    char err[512];
    dp_err e = dp_storage_get(cfg->storage_dir, dp_msg_str(m, "raw_path"),
                              INTAKE_MAX_BYTES, &data, &len, err, sizeof(err));
    if (e)
        return dp_errf(e, why, whylen, "raw file: %s", err);
    char sha[DP_SHA256_HEX_SIZE], sniffed[160];
    dp_sha256_hex(data, len, sha);
    const char *binary = NULL;
    if (strcmp(mime, "text/plain") == 0 || strcmp(mime, "text/markdown") == 0)
        binary = dp_text_sniff_binary(data, len, sniffed, sizeof(sniffed));
    free(data);
    if ((int64_t)len != bytes || strcmp(sha, dp_msg_str(m, "file_sha256")) != 0)
        return dp_errf(DP_ERR_PERMANENT, why, whylen,
                       "raw file does not match the upload (size %zu, sha256 %s)",
                       len, sha);
    if (binary)
        return dp_errf(DP_ERR_PERMANENT, why, whylen,
                       "content is %s, not text (the upload claims %s)", binary, mime);
    return DP_OK;
}

static dp_err intake_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    PGconn *db = dp_batch_db(b);
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        char why[768];
        dp_err v = check_upload(ds->cfg, m, why, sizeof(why));
        if (v) {
            dp_batch_fail(b, i, v, "upload %s rejected: %s", doc, why);
            continue;
        }
        int fresh = 0, again = 0, moved = 0;
        char again_corr[DP_UUID_STR_SIZE];
        char version[DP_CHUNKER_VERSION_SIZE];
        job_chunks_version(ds->cfg, version);
        dp_err e = record_upload(db, m, "uploaded", version, &fresh, err, errlen);
        if (e == DP_OK && !fresh)
            e = take_over_refused(db, m, again_corr, &again, err, errlen);
        if (e)
            return e;
        if (!fresh && !again)
            continue; /* duplicate (user, sha256) or a redelivery */
        const char *from[] = {"uploaded", NULL};
        const char *corr = again ? again_corr : dp_msg_str(m, "correlation_id");
        char job[DP_UUID_STR_SIZE];
        dp_job_id(doc, job);
        dp_docstage_adopt(ds, doc, job, "uploaded");
        e = dp_docstage_transition(ds, b, doc, from, "parse_queued", "PARSE_QUEUED",
                                   corr, NULL, &moved, err, errlen);
        if (e)
            return e;
        dp_field f[] = {DP_FS("document_id", doc), DP_FS("job_id", job),
                        DP_FS("raw_path", dp_msg_str(m, "raw_path")),
                        DP_FS("mime", dp_msg_str(m, "mime")),
                        DP_FS("correlation_id", corr)};
        dp_docstage_emit(ds, b, i, ds->out_topic, "ParseRequested", doc, f, 5);
    }
    return DP_OK;
}

/* A rejected upload still gets its document and job rows, failed_upload. */
static dp_err intake_dead_letter(void *state, PGconn *db, const dp_record *rec,
                                 dp_err category, const char *error, char *err,
                                 size_t errlen)
{
    dp_docstage *ds = state;
    avro_value_t *m = rec->decoded;
    uint8_t raw[16];
    if (m && dp_uuid_parse(dp_msg_str(m, "document_id"), raw) == 0 &&
        dp_uuid_parse(dp_msg_str(m, "user_id"), raw) == 0) {
        int fresh;
        char version[DP_CHUNKER_VERSION_SIZE];
        job_chunks_version(ds->cfg, version);
        dp_err e = record_upload(db, m, "uploaded", version, &fresh, err, errlen);
        if (e)
            return e;
    }
    return dp_doc_dead_letter(ds->name, ds->failed_state, db, rec, category,
                              error, err, errlen);
}

dp_err dp_intake_open(const dp_config *cfg, dp_stage *stage, char *err,
                      size_t errlen)
{
    dp_docstage_spec spec = {"intake", "uploaded", "UploadRequested",
                             "parse-queued", "failed_upload", 100,
                             intake_handle};
    dp_err e = dp_docstage_init(cfg, &spec, NULL, stage, err, errlen);
    if (e == DP_OK)
        stage->dead_letter = intake_dead_letter;
    return e;
}

void dp_intake_close(dp_stage *stage) { dp_docstage_close(stage); }

/*
 * retry: sends failed documents through the pipeline again, after a fix.
 *
 * A document that failed permanently (a parser or embedding service that
 * refused it, a bad key, a bug since fixed) stays in its failed state and
 * its record sits on a dead-letter topic.  Replaying that topic is not
 * enough: for an embedding failure only the first failing batch is
 * dead-lettered (the document's other batches are skipped once it has
 * failed), and the runtime drops records at or below its deduplication
 * watermark.  So retry works from PostgreSQL instead: for each failed
 * document it builds, from the rows the stages left, the input record of
 * the stage to start again from, and publishes it keyed by the document:
 *
 *   failed_parse      -> parse-queued (ParseRequested): parse, then validate
 *   failed_chunking   -> validated (DocumentValidated): chunk
 *   failed_embedding  -> chunked (ChunksStored): embed-plan plans every
 *                        batch again (embed, gather or finalize failed)
 *
 * With --from STAGE the named documents (or a user's) start again at that
 * stage whatever they ended in, complete included: a fix to the parser,
 * the chunker or the embedding model then reaches documents already done.
 * Documents still in flight are left alone.
 *
 * The job goes back to the state that stage takes (parse_queued,
 * parse_validated, chunks_stored), so the document's events stay one chain
 * and a second retry finds nothing to do.  What the stages from there on
 * wrote for the document is removed first (its final rows, vectors,
 * stored-batch rows, and from parse or chunk its chunks), so a run that
 * makes fewer chunks, or other vectors, leaves nothing stale behind.  The
 * records carry no upstream stream header, so no watermark hides them
 * (like submit's uploads).  failed_upload is not retried: intake refused
 * the upload itself; submit the file again once it is fixed.
 *
 * The documents' job rows are locked (FOR UPDATE) for the whole command;
 * their rows removed, state moved back, retry_count raised and a `retry`
 * event recorded in one transaction that commits only once Kafka has
 * acknowledged every record.  A stage that receives a record early waits
 * on the lock, then finds the state it takes.  (parse, chunk and embed-plan
 * also take the failed state itself, so a record published by a run that
 * died before its commit is not lost on them.)  If a record is not
 * delivered, the transaction rolls back and the command fails: run it
 * again (a record that did reach the topic only repeats work that is
 * idempotent).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>

#include "chunker.h"
#include "config.h"
#include "docmsg.h"
#include "ids.h"
#include "pg.h"
#include "publish.h"
#include "stages.h"

/* Where each failed state starts again. */
typedef struct retry_route {
    const char *failed;
    const char *queued; /* the state that stage takes: the job's, again */
    const char *stage;  /* the stage that takes the record */
    const char *topic;  /* its input topic (suffix) */
    const char *schema; /* the record's schema name */
} retry_route;

static const retry_route routes[] = {
    {"failed_parse", "parse_queued", "parse", "parse-queued", "ParseRequested"},
    {"failed_chunking", "parse_validated", "chunk", "validated", "DocumentValidated"},
    {"failed_embedding", "chunks_stored", "embed-plan", "chunked", "ChunksStored"},
    {NULL, NULL, NULL, NULL, NULL}};

static const retry_route *route_of(const char *status)
{
    for (const retry_route *r = routes; r->failed; r++)
        if (strcmp(r->failed, status) == 0)
            return r;
    return NULL;
}

/* --from's route: a stage's name ("embed" for embed-plan). */
static const retry_route *route_from(const char *stage)
{
    if (strcmp(stage, "embed") == 0)
        stage = "embed-plan";
    for (const retry_route *r = routes; r->failed; r++)
        if (strcmp(r->stage, stage) == 0)
            return r;
    return NULL;
}

/* Columns of the candidates query, in order. */
enum { C_DOC, C_JOB, C_STATUS, C_RAW, C_MIME, C_PARSED, C_PSHA, C_VERSION,
       C_CORR, C_CHUNKS };

/* Encodes the record that starts document row r again at its route. */
static dp_err build_record(dp_msgcodec *codec, const retry_route *rt,
                           PGresult *res, int r, void **buf, size_t *len,
                           char *err, size_t errlen)
{
    const char *doc = PQgetvalue(res, r, C_DOC), *job = PQgetvalue(res, r, C_JOB),
               *corr = PQgetvalue(res, r, C_CORR);
    if (strcmp(rt->stage, "parse") == 0) {
        dp_field f[] = {DP_FS("document_id", doc), DP_FS("job_id", job),
                        DP_FS("raw_path", PQgetvalue(res, r, C_RAW)),
                        DP_FS("mime", PQgetvalue(res, r, C_MIME)),
                        DP_FS("correlation_id", corr)};
        return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
    }
    if (strcmp(rt->stage, "chunk") == 0) {
        if (PQgetisnull(res, r, C_PARSED) || PQgetisnull(res, r, C_PSHA)) {
            snprintf(err, errlen, "no validated text is recorded");
            return DP_ERR_PERMANENT;
        }
        dp_field f[] = {DP_FS("document_id", doc), DP_FS("job_id", job),
                        DP_FS("parsed_path", PQgetvalue(res, r, C_PARSED)),
                        DP_FS("parsed_sha256", PQgetvalue(res, r, C_PSHA)),
                        DP_FS("correlation_id", corr)};
        return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
    }
    dp_field f[] = {DP_FS("document_id", doc), DP_FS("job_id", job),
                    DP_FS("chunker_version", PQgetvalue(res, r, C_VERSION)),
                    DP_FL("chunks_total", strtoll(PQgetvalue(res, r, C_CHUNKS), NULL, 10)),
                    DP_FS("correlation_id", corr)};
    return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
}

/* dp_pg_command, its failure reported; 0 on success. */
static int exec_cmd(PGconn *db, const char *what, const char *sql, int n,
                    const char *const *params)
{
    char err[1024];
    if (dp_pg_command(db, sql, n, params, what, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        return -1;
    }
    return 0;
}

/* The documents to retry, locked: the named ones, or every failed one (of
 * user, unless user is ""), or with from every complete or failed one of
 * user. */
static PGresult *candidates(PGconn *db, const char *ids, int named,
                            const char *user, int from)
{
    const char *params[5] = {ids, DP_CHUNKER_NAME, named ? "1" : "0", user,
                             from ? "1" : "0"};
    PGresult *res = dp_pg_execp(db,
        "SELECT j.document_id, j.job_id, j.status, j.raw_path, d.mime,"
        "   j.parsed_path, j.parsed_sha256, j.chunks_version, j.correlation_id,"
        "   (SELECT count(*) FROM upload_pipeline.document_chunk_buffer c"
        "     WHERE c.document_id = j.document_id AND c.chunker_name = $2"
        "     AND c.chunker_version = j.chunks_version)"
        " FROM upload_pipeline.upload_jobs j"
        " JOIN upload_pipeline.documents d USING (document_id)"
        " WHERE CASE WHEN $3::int = 1 THEN j.document_id = ANY ($1::uuid[])"
        "   WHEN $5::int = 1 THEN j.status = 'complete'"
        "     OR j.status LIKE 'failed\\_%'"
        "   ELSE j.status LIKE 'failed\\_%' END"
        " AND ($4 = '' OR j.user_id = nullif($4, '')::uuid)"
        " ORDER BY j.document_id FOR UPDATE OF j",
        5, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read failed documents", err,
                    sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        return NULL;
    }
    return res;
}

static void usage_retry(void)
{
    fprintf(stderr, "usage: docpipe retry [--dry-run] [--user UUID]"
            " [--from parse|chunk|embed] [<document>...]\n");
}

int dp_cmd_retry(const dp_config *cfg, int argc, char **argv)
{
    int dry = 0, first = 0;
    const char *user = "";
    const retry_route *from = NULL;
    uint8_t raw[16];
    for (; first < argc && argv[first][0] == '-'; first++) {
        if (strcmp(argv[first], "--dry-run") == 0)
            dry = 1;
        else if (strcmp(argv[first], "--from") == 0 && first + 1 < argc) {
            if (!(from = route_from(argv[++first]))) {
                fprintf(stderr, "docpipe retry: --from takes parse, chunk or"
                        " embed, not '%s'\n", argv[first]);
                return 2;
            }
        }
        else if (strcmp(argv[first], "--user") == 0 && first + 1 < argc) {
            user = argv[++first];
            if (dp_uuid_parse(user, raw) != 0) {
                fprintf(stderr, "docpipe retry: '%s' is not a user id\n", user);
                return 2;
            }
        } else {
            fprintf(stderr, "docpipe retry: bad option '%s'\n", argv[first]);
            usage_retry();
            return 2;
        }
    }
    dp_buf ids = {0};
    dp_buf_append(&ids, "{", 1);
    for (int i = first; i < argc; i++) {
        if (dp_uuid_parse(argv[i], raw) != 0) {
            fprintf(stderr, "docpipe retry: '%s' is not a document id\n", argv[i]);
            usage_retry();
            dp_buf_free(&ids);
            return 2;
        }
        dp_buf_appendf(&ids, "%s%s", i > first ? "," : "", argv[i]);
    }
    dp_buf_append(&ids, "}", 1);
    int named = argc > first;
    if (from && !named && !*user) {
        fprintf(stderr, "docpipe retry: --from needs documents or --user\n");
        usage_retry();
        dp_buf_free(&ids);
        return 2;
    }

    char err[1024];
    PGconn *db;
    dp_msgcodec *codec = NULL;
    if (dp_pg_connect(cfg, "docpipe-retry", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        dp_buf_free(&ids);
        return 1;
    }
    if (dp_msgcodec_open(cfg->schema_dir, &codec, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        PQfinish(db);
        dp_buf_free(&ids);
        return 1;
    }
    int rc = 0;
    dp_publisher *pub = NULL;
    PGresult *res = NULL;
    dp_buf docs = {0}, stages = {0}, states = {0}, queued = {0}, rechunk = {0};
    if (exec_cmd(db, "begin", "BEGIN", 0, NULL) || !(res = candidates(db, ids.data, named, user, from != NULL))) {
        rc = 1;
        goto out;
    }

    /* Named documents that are not there, or not failed, are reported and
     * make the command fail; the others are still retried. */
    for (int i = first; named && i < argc; i++) {
        int found = 0;
        for (int r = 0; r < PQntuples(res) && !found; r++)
            found = strcasecmp(PQgetvalue(res, r, C_DOC), argv[i]) == 0;
        if (!found) {
            fprintf(stderr, "docpipe retry: no document %s\n", argv[i]);
            rc = 1;
        }
    }
    if (!dry) {
        rd_kafka_conf_t *conf = dp_publisher_conf(cfg, "5", "murmur2_random",
                                                  err, sizeof(err));
        char kerr[512];
        if (!conf || !(pub = dp_publisher_new(conf, kerr, sizeof(kerr)))) {
            fprintf(stderr, "docpipe retry: %s\n", conf ? kerr : err);
            rc = 1;
            goto out;
        }
    }
    size_t sent = 0, upload = 0;
    dp_buf_append(&docs, "{", 1);
    dp_buf_append(&stages, "{", 1);
    dp_buf_append(&states, "{", 1);
    dp_buf_append(&queued, "{", 1);
    dp_buf_append(&rechunk, "{", 1);
    for (int r = 0; r < PQntuples(res); r++) {
        const char *doc = PQgetvalue(res, r, C_DOC),
                   *status = PQgetvalue(res, r, C_STATUS);
        const retry_route *rt = route_of(status);
        if (from && (rt || strcmp(status, "complete") == 0))
            rt = from;
        if (!rt) {
            if (strcmp(status, "failed_upload") == 0) {
                fprintf(stderr, "docpipe retry: %s failed at intake (failed_upload):"
                        " submit the file again\n", doc);
                upload++;
            } else
                fprintf(stderr, "docpipe retry: %s is %s (%s)\n", doc,
                        from ? "in flight" : "not failed", status);
            if (named)
                rc = 1;
            continue;
        }
        void *buf = NULL;
        size_t len = 0;
        if (build_record(codec, rt, res, r, &buf, &len, err, sizeof(err))) {
            fprintf(stderr, "docpipe retry: %s (%s): %s\n", doc, status, err);
            rc = 1;
            continue;
        }
        if (dry)
            free(buf);
        else {
            char *topic = dp_topic_name(cfg, rt->topic);
            int bad = dp_publisher_send(pub, topic, doc, strlen(doc), buf, len,
                                        "docpipe-correlation-id",
                                        PQgetvalue(res, r, C_CORR), err, sizeof(err));
            free(topic);
            if (bad) {
                fprintf(stderr, "docpipe retry: %s: %s\n", doc, err);
                rc = 1;
                continue;
            }
        }
        const char *sep = sent ? "," : "";
        dp_buf_appendf(&docs, "%s%s", sep, doc);
        dp_buf_appendf(&stages, "%s\"%s\"", sep, rt->stage);
        dp_buf_appendf(&states, "%s%s", sep, status);
        dp_buf_appendf(&queued, "%s%s", sep, rt->queued);
        if (strcmp(rt->stage, "embed-plan") != 0)
            dp_buf_appendf(&rechunk, "%s%s", rechunk.len > 1 ? "," : "", doc);
        sent++;
        printf("%s\t%s\t%s\n", doc, status, rt->stage);
    }
    dp_buf_append(&docs, "}", 1);
    dp_buf_append(&stages, "}", 1);
    dp_buf_append(&states, "}", 1);
    dp_buf_append(&queued, "}", 1);
    dp_buf_append(&rechunk, "}", 1);
    if (dry || sent == 0) {
        fprintf(stderr, "docpipe retry: %zu document(s) %s, %zu failed at intake\n",
                sent, dry ? "would be sent again" : "to send again", upload);
        goto out;
    }

    /* Recorded in the transaction that commits once every record is in. */
    const char *p_rechunk[1] = {rechunk.data};
    const char *p_docs[4] = {docs.data, stages.data, states.data, queued.data};
    if (exec_cmd(db, "remove embeddings",
                 "WITH f AS (DELETE FROM upload_pipeline.document_chunks"
                 "   WHERE document_id = ANY ($1::uuid[])),"
                 " b AS (DELETE FROM upload_pipeline.embedding_batches"
                 "   WHERE document_id = ANY ($1::uuid[]))"
                 " DELETE FROM upload_pipeline.document_vector_buffer"
                 " WHERE document_id = ANY ($1::uuid[])", 1, p_docs) ||
        exec_cmd(db, "remove chunks",
                 "DELETE FROM upload_pipeline.document_chunk_buffer"
                 " WHERE document_id = ANY ($1::uuid[])", 1, p_rechunk) ||
        exec_cmd(db, "record retries",
                 "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[],"
                 "   $4::text[]) AS r(document_id, stage, status, queued)),"
                 " j AS (UPDATE upload_pipeline.upload_jobs j SET status = r.queued,"
                 "   retry_count = j.retry_count + 1, updated_at = now(),"
                 "   processing_completed_at = NULL"
                 "   FROM r WHERE j.document_id = r.document_id"
                 "   RETURNING j.job_id, j.document_id, j.retry_count, j.correlation_id),"
                 " d AS (UPDATE upload_pipeline.documents d SET processing_status ="
                 "   r.queued, updated_at = now() FROM r"
                 "   WHERE d.document_id = r.document_id)"
                 " INSERT INTO upload_pipeline.events (job_id, document_id, type,"
                 "   severity, code, stage, from_status, to_status, payload,"
                 "   correlation_id)"
                 " SELECT j.job_id, j.document_id, 'retry', 'info', 'JOB_RETRY_REQUESTED',"
                 "   'retry', r.status, r.queued, jsonb_build_object('retry_count',"
                 "   j.retry_count, 'restart_stage', r.stage), j.correlation_id"
                 " FROM j JOIN r USING (document_id)", 4, p_docs)) {
        rc = 1;
        goto out;
    }
    uint64_t lost = dp_publisher_finish(pub, 60000, 5, err, sizeof(err));
    if (lost) {
        fprintf(stderr, "docpipe retry: %" PRIu64 " of %zu record(s) not delivered"
                " (%s); nothing recorded: run the command again\n", lost, sent, err);
        rc = 1;
        goto out; /* rolls back */
    }
    if (exec_cmd(db, "commit", "COMMIT", 0, NULL)) {
        rc = 1;
        goto out;
    }
    fprintf(stderr, "docpipe retry: %zu document(s) sent again, %zu failed at intake\n",
            sent, upload);
out:
    if (pub)
        dp_publisher_free(pub);
    PQclear(res);
    PQfinish(db); /* an open transaction rolls back */
    dp_msgcodec_free(codec);
    dp_buf_free(&ids);
    dp_buf_free(&docs);
    dp_buf_free(&stages);
    dp_buf_free(&states);
    dp_buf_free(&queued);
    dp_buf_free(&rechunk);
    return rc;
}

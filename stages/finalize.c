/*
 * finalize (stage 8): promotes a document into the searchable table.
 *
 * In: <prefix>embeddings-stored (EmbeddingsStored).  Chunks and their
 * vectors are joined from the buffers into upload_pipeline.document_chunks
 * (embedding as real[]), the job moves embeddings_stored → complete with
 * processing_completed_at set (a 'finalized' event, JOB_COMPLETED), and a
 * DocumentCompleted goes to <prefix>completed for downstream consumers.
 * Every chunk must come with its vector: if one has none, the document
 * fails (failed_embedding) instead of completing with a chunk left out.
 *
 * Each vector is stored once: the statement that promotes a document's
 * vectors deletes their rows from document_vector_buffer, in the batch's
 * transaction.  The chunk buffer stays (chunk text and metadata, small): it
 * is what a replay or a retry --from embed starts from.  A finalize
 * replayed after the buffer was emptied counts the chunks whose final row
 * already holds a vector of the model for the same text as promoted, so
 * it completes the document again without a new embedding.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include "docdb.h"
#include "docstage.h"
#include "pg.h"
#include "stages.h"

static const char *const finalize_from[] = {"embeddings_stored", NULL};

static dp_err finalize_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    PGconn *db = dp_batch_db(b);
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *corr = dp_msg_str(m, "correlation_id");
        int go;
        dp_err e = dp_docstage_ready(ds, b, i, doc, finalize_from, &go, err, errlen);
        if (e)
            return e;
        if (!go)
            continue;
        const char *params[2] = {doc, ds->cfg->embed_model};
        /* The document's chunks through their document_id index, then
         * each chunk's vector through the vector buffer's primary key: the
         * lateral subquery (OFFSET 0 keeps it one) leaves the planner no
         * other order.  Free to choose, it read the vector buffer by model
         * through its key, every vector of every document, whenever its
         * statistics were young: 8 of 11 ms per document on a used
         * database, more on a new one as the buffer grew. */
        PGresult *res = dp_pg_execp(db,
            /* The document's final rows are replaced in this one statement
             * (a replay or a retry may make other chunks or other vectors):
             * a reader sees the old set or the new one, never a mix. */
            "WITH gone AS (DELETE FROM upload_pipeline.document_chunks f"
            "   WHERE f.document_id = $1::uuid AND NOT EXISTS (SELECT 1 FROM"
            "   upload_pipeline.document_chunk_buffer c WHERE c.document_id = $1::uuid"
            "   AND c.chunk_id = f.chunk_id)),"
            " p AS (" DP_SQL_PROMOTE_CHUNKS
            " WHERE c.document_id = $1::uuid"
            " ON CONFLICT (chunk_id) DO UPDATE SET embedding = EXCLUDED.embedding,"
            "   vector_sha = EXCLUDED.vector_sha, embed_model = EXCLUDED.embed_model,"
            "   embed_version = EXCLUDED.embed_version, vector_dim = EXCLUDED.vector_dim,"
            "   text = EXCLUDED.text, chunk_sha = EXCLUDED.chunk_sha,"
            "   chunk_ord = EXCLUDED.chunk_ord, meta = EXCLUDED.meta,"
            "   chunker_name = EXCLUDED.chunker_name,"
            "   chunker_version = EXCLUDED.chunker_version"
            " RETURNING 1),"
            " j AS (UPDATE upload_pipeline.upload_jobs SET"
            "   processing_completed_at = now() WHERE document_id = $1::uuid),"
            /* Each vector is kept once: promoted, its buffer row goes in
             * this statement (the INSERT above still reads it: one
             * snapshot).  A failed document rolls the whole batch back. */
            " vb AS (DELETE FROM upload_pipeline.document_vector_buffer"
            "   WHERE document_id = $1::uuid)"
            " SELECT count(*) + (SELECT count(*) FROM"
            "   upload_pipeline.document_chunk_buffer c WHERE c.document_id = $1::uuid"
            /* A replayed finalize finds the buffer emptied by the first one:
             * a chunk whose final row already holds a vector of this model
             * for the same text (and has none waiting in the buffer) counts
             * as promoted.  A chunk whose text changed needs a new one. */
            "   AND NOT EXISTS (SELECT 1 FROM upload_pipeline.document_vector_buffer v"
            "     WHERE v.chunk_id = c.chunk_id AND v.embed_model = $2"
            "     AND v.embed_version = '1')"
            "   AND EXISTS (SELECT 1 FROM upload_pipeline.document_chunks f"
            "     WHERE f.chunk_id = c.chunk_id AND f.chunk_sha = c.chunk_sha"
            "     AND f.embed_model = $2 AND f.embed_version = '1')),"
            " (SELECT user_id::text FROM upload_pipeline.documents"
            "   WHERE document_id = $1::uuid), (SELECT count(*) FROM"
            "   upload_pipeline.document_chunk_buffer WHERE document_id = $1::uuid)"
            " FROM p",
            2, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(db, res, PGRES_TUPLES_OK, "promote chunks", err,
                             errlen)))
            return e;
        long chunks = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        long buffered = strtol(PQgetvalue(res, 0, 2), NULL, 10);
        char user[64];
        snprintf(user, sizeof(user), "%s", PQgetvalue(res, 0, 1));
        PQclear(res);
        /* Never complete with a chunk left out: a chunk without a vector of
         * this model (lost, or stored under another model) fails the
         * document, and `docpipe retry` embeds it again.  The batch rolls
         * back and re-runs without this record, promotion included. */
        if (chunks != buffered) {
            dp_batch_fail(b, i, DP_ERR_PERMANENT,
                          "finalize %s: %ld of %ld chunks have a vector of %s",
                          doc, chunks, buffered, ds->cfg->embed_model);
            continue;
        }
        char progress[64];
        snprintf(progress, sizeof(progress), "{\"chunks_final\": %ld}", chunks);
        int moved;
        if ((e = dp_docstage_transition(ds, b, doc, finalize_from, "complete",
                                        "JOB_COMPLETED", corr, progress, &moved,
                                        err, errlen)))
            return e;
        struct timeval tv;
        gettimeofday(&tv, NULL);
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FS("user_id", user), DP_FL("chunks", chunks),
                        DP_FS("embed_model", ds->cfg->embed_model),
                        DP_FL("completed_at_ms",
                              (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000),
                        DP_FS("correlation_id", corr)};
        dp_docstage_emit(ds, b, i, ds->out_topic, "DocumentCompleted", doc, f, 7);
    }
    return DP_OK;
}

dp_err dp_finalize_open(const dp_config *cfg, dp_stage *stage, char *err,
                        size_t errlen)
{
    dp_docstage_spec spec = {"finalize", "embeddings-stored", "EmbeddingsStored",
                             "completed", "failed_embedding", 100,
                             finalize_handle};
    return dp_docstage_init(cfg, &spec, NULL, stage, err, errlen);
}

void dp_finalize_close(dp_stage *stage) { dp_docstage_close(stage); }

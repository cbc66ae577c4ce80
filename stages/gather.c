/*
 * gather (stage 7): the fan-in of a document's embedding batches.
 *
 * In: <prefix>embedded (BatchEmbedded), keyed by document id, so all
 * batches of a document arrive, in order, at one partition and one
 * instance.  Each stored batch is recorded once (upload_pipeline.
 * embedding_batches, ON CONFLICT DO NOTHING) and the job's progress
 * updated; when every batch of the document is recorded the job moves to
 * embeddings_stored and an EmbeddingsStored goes to
 * <prefix>embeddings-stored.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docdb.h"
#include "docstage.h"
#include "pg.h"
#include "stages.h"

static const char *const gather_from[] = {"embedding_in_progress",
                                          "embedding_queued", NULL};

static dp_err gather_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    PGconn *db = dp_batch_db(b);
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *corr = dp_msg_str(m, "correlation_id");
        char bi[16], nv[16];
        int go;
        dp_err e = dp_docstage_ready(ds, b, i, doc, gather_from, &go, err, errlen);
        if (e)
            return e;
        if (!go)
            continue;
        snprintf(bi, sizeof(bi), "%lld", (long long)dp_msg_long(m, "batch_index"));
        snprintf(nv, sizeof(nv), "%lld", (long long)dp_msg_long(m, "vectors"));
        const char *params[3] = {doc, bi, nv};
        PGresult *res = dp_pg_execp(db,
            "WITH ins AS (INSERT INTO upload_pipeline.embedding_batches"
            "   (document_id, batch_index, vectors) VALUES ($1::uuid, $2::int, $3::int)"
            "   ON CONFLICT DO NOTHING RETURNING vectors),"
            " agg AS (SELECT count(*) + (SELECT count(*) FROM ins) AS batches,"
            "   coalesce(sum(vectors), 0) + coalesce((SELECT sum(vectors) FROM ins), 0)"
            "   AS vectors FROM upload_pipeline.embedding_batches"
            "   WHERE document_id = $1::uuid)"
            " SELECT agg.batches, agg.vectors, j.embed_batches_total"
            " FROM agg, upload_pipeline.upload_jobs j WHERE j.document_id = $1::uuid",
            3, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(db, res, PGRES_TUPLES_OK, "record batch", err, errlen)))
            return e;
        long done = strtol(PQgetvalue(res, 0, 0), NULL, 10);
        long vectors = strtol(PQgetvalue(res, 0, 1), NULL, 10);
        long total = strtol(PQgetvalue(res, 0, 2), NULL, 10);
        PQclear(res);
        char progress[128];
        snprintf(progress, sizeof(progress),
                 "{\"embeds_done\": %ld, \"embeds_written\": %ld, \"batches_done\": %ld}",
                 vectors, vectors, done);
        if (done < total) {
            const char *p2[2] = {doc, progress};
            if ((e = dp_pg_command(db, "UPDATE upload_pipeline.upload_jobs SET"
                    " progress = progress || $2::jsonb, updated_at = now()"
                    " WHERE document_id = $1::uuid", 2, p2, "record progress",
                    err, errlen)))
                return e;
            continue;
        }
        int moved;
        if ((e = dp_docstage_transition(ds, b, doc, gather_from, "embeddings_stored",
                                        "EMBEDDINGS_STORED", corr, progress,
                                        &moved, err, errlen)))
            return e;
        if (!moved)
            continue;
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FL("vectors_total", vectors), DP_FS("correlation_id", corr)};
        dp_docstage_emit(ds, b, i, ds->out_topic, "EmbeddingsStored", doc, f, 4);
    }
    return DP_OK;
}

dp_err dp_gather_open(const dp_config *cfg, dp_stage *stage, char *err,
                      size_t errlen)
{
    dp_docstage_spec spec = {"gather", "embedded", "BatchEmbedded",
                             "embeddings-stored", "failed_embedding", 200,
                             gather_handle};
    return dp_docstage_init(cfg, &spec, NULL, stage, err, errlen);
}

void dp_gather_close(dp_stage *stage) { dp_docstage_close(stage); }

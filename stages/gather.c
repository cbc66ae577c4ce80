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
 *
 * It also releases the document's next embedding batches: embed-plan
 * published only a window of them (embed_batch_plan, embed_window_tokens);
 * as each is recorded here, the next ones whose tokens fit in the window
 * again go to <prefix>embed-batches, each exactly once (released is set in
 * the batch's transaction, and the record is published only if it
 * commits).
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

typedef struct gather_state {
    char *batches_topic;    /* <prefix>embed-batches */
} gather_state;

/* Publishes the document's next batches that fit in its window now that
 * one more is recorded (embed_plan.c wrote the plan).  Documents planned
 * without a window (no unreleased rows) release nothing. */
static dp_err release_next(dp_docstage *ds, dp_batch *b, size_t i, avro_value_t *m,
                           const char *doc, long total, char *err, size_t errlen)
{
    gather_state *gs = ds->impl;
    char window[24];
    snprintf(window, sizeof(window), "%ld", dp_embed_window_tokens(ds->cfg));
    const char *params[2] = {doc, window};
    PGresult *res = dp_pg_execp(dp_batch_db(b),
        "WITH held AS (SELECT coalesce(sum(p.tokens), 0) AS tokens"
        "   FROM upload_pipeline.embed_batch_plan p WHERE p.document_id = $1::uuid"
        "   AND p.released AND NOT EXISTS (SELECT 1 FROM upload_pipeline.embedding_batches e"
        "     WHERE e.document_id = p.document_id AND e.batch_index = p.batch_index)),"
        " next AS (SELECT p.batch_index,"
        "   sum(p.tokens) OVER (ORDER BY p.batch_index) AS cum,"
        "   row_number() OVER (ORDER BY p.batch_index) AS rn"
        "   FROM upload_pipeline.embed_batch_plan p"
        "   WHERE p.document_id = $1::uuid AND NOT p.released),"
        " pick AS (SELECT next.batch_index FROM next, held WHERE $2::bigint < 0"
        "   OR held.tokens + next.cum <= $2::bigint OR (held.tokens = 0 AND next.rn = 1)),"
        " upd AS (UPDATE upload_pipeline.embed_batch_plan p SET released = true"
        "   FROM pick WHERE p.document_id = $1::uuid AND p.batch_index = pick.batch_index"
        "   RETURNING p.batch_index, p.first_ord, p.count)"
        " SELECT batch_index, first_ord, count FROM upd ORDER BY batch_index",
        2, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(dp_batch_db(b), res, PGRES_TUPLES_OK,
                           "release the next embedding batches", err, errlen);
    if (e)
        return e;
    for (int r = 0; r < PQntuples(res); r++) {
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FL("batch_index", strtol(PQgetvalue(res, r, 0), NULL, 10)),
                        DP_FL("batches_total", total),
                        DP_FL("first_ord", strtol(PQgetvalue(res, r, 1), NULL, 10)),
                        DP_FL("count", strtol(PQgetvalue(res, r, 2), NULL, 10)),
                        DP_FS("correlation_id", dp_msg_str(m, "correlation_id"))};
        dp_docstage_emit(ds, b, i, gs->batches_topic, "EmbedBatch", doc, f, 7);
    }
    PQclear(res);
    return DP_OK;
}

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
            if ((e = release_next(ds, b, i, m, doc, total, err, errlen)))
                return e;
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
    gather_state *gs = calloc(1, sizeof(*gs));
    gs->batches_topic = dp_topic_name(cfg, "embed-batches");
    dp_docstage_spec spec = {"gather", "embedded", "BatchEmbedded",
                             "embeddings-stored", "failed_embedding", 200,
                             gather_handle};
    dp_err e = dp_docstage_init(cfg, &spec, gs, stage, err, errlen);
    if (e) {
        free(gs->batches_topic);
        free(gs);
    }
    return e;
}

void dp_gather_close(dp_stage *stage)
{
    gather_state *gs = dp_docstage_close(stage);
    if (!gs)
        return;
    free(gs->batches_topic);
    free(gs);
}

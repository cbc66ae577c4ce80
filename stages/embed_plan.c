/*
 * embed-plan (stage 5): splits a document's chunks into embedding batches.
 *
 * In: <prefix>chunked (ChunksStored).  The chunks are cut, in ord order,
 * into batches of at most 256 texts and 8000 estimated tokens (the
 * chunker's estimate, tokens.h: the original counted characters / 4,
 * which undercounts digits, punctuation and CJK), and one EmbedBatch per batch goes to
 * <prefix>embed-batches, so the batches of one large document are embedded
 * by many requests at once.  The job records the number of batches (for
 * gather) and moves chunks_stored → embedding_queued.
 *
 * Fair shares: every batch is written to upload_pipeline.embed_batch_plan,
 * and only the first ones are published, at most embed_window_tokens
 * estimated tokens (at least one batch; by default ten seconds of
 * embed_tpm); gather publishes the next ones as
 * these are recorded (gather.c).  A document of 400 batches then holds a
 * few of them in embed's partitions at a time, not all 400 ahead of every
 * document submitted after it (docs/design.md, "Fair shares and bounded
 * passes").
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"
#include "docdb.h"
#include "docstage.h"
#include "pg.h"
#include "stages.h"

/* failed_embedding: `docpipe retry` plans a failed document's batches again. */
static const char *const plan_from[] = {"chunks_stored", "failed_embedding", NULL};

long dp_embed_window_tokens(const dp_config *cfg)
{
    if (cfg->embed_window_tokens != 0)
        return cfg->embed_window_tokens;
    long w = (long)cfg->embed_tpm / 6;
    return w > 0 ? w : 1;
}

/* Writes the document's plan (its batches, their sizes, which are released
 * now) and returns how many of the first batches are released now. */
static dp_err write_plan(PGconn *db, const char *doc, int first_ord,
                         const size_t *tokens, const size_t *ends, size_t nb,
                         long window, size_t *released, char *err, size_t errlen)
{
    dp_buf firsts = {0}, counts = {0}, toks = {0};
    size_t start = 0, rel = 0;
    long long held = 0;
    for (size_t k = 0; k < nb; k++) {
        long long t = 0;
        for (size_t c = start; c < ends[k]; c++)
            t += (long long)tokens[c];
        if (window < 0 || rel == 0 || (rel == k && held + t <= window)) {
            rel = k + 1;
            held += t;
        }
        dp_buf_appendf(&firsts, "%s%d", k ? "," : "{", first_ord + (int)start);
        dp_buf_appendf(&counts, "%s%zu", k ? "," : "{", ends[k] - start);
        dp_buf_appendf(&toks, "%s%lld", k ? "," : "{", t);
        start = ends[k];
    }
    dp_buf_append(&firsts, "}", 1);
    dp_buf_append(&counts, "}", 1);
    dp_buf_append(&toks, "}", 1);
    char nrel[24];
    snprintf(nrel, sizeof(nrel), "%zu", rel);
    const char *p1[1] = {doc};
    dp_err e = dp_pg_command(db, "DELETE FROM upload_pipeline.embed_batch_plan"
                             " WHERE document_id = $1::uuid", 1, p1,
                             "clear the embedding plan", err, errlen);
    const char *p2[5] = {doc, firsts.data, counts.data, toks.data, nrel};
    if (e == DP_OK)
        e = dp_pg_command(db,
            "INSERT INTO upload_pipeline.embed_batch_plan (document_id, batch_index,"
            " first_ord, count, tokens, released)"
            " SELECT $1::uuid, u.i - 1, u.f, u.c, u.t, u.i <= $5::int"
            " FROM unnest($2::int[], $3::int[], $4::bigint[]) WITH ORDINALITY"
            "   AS u(f, c, t, i)", 5, p2, "write the embedding plan", err, errlen);
    dp_buf_free(&firsts);
    dp_buf_free(&counts);
    dp_buf_free(&toks);
    *released = rel;
    return e;
}

static dp_err plan_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    PGconn *db = dp_batch_db(b);
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *corr = dp_msg_str(m, "correlation_id");
        const char *version = dp_msg_str(m, "chunker_version");
        int go;
        dp_err e = dp_docstage_ready(ds, b, i, doc, plan_from, &go, err, errlen);
        if (e)
            return e;
        if (!go)
            continue;
        const char *params[3] = {doc, DP_CHUNKER_NAME, version};
        PGresult *res = dp_pg_execp(db,
            "SELECT chunk_ord, text FROM"
            " upload_pipeline.document_chunk_buffer WHERE document_id = $1::uuid"
            " AND chunker_name = $2 AND chunker_version = $3 ORDER BY chunk_ord",
            3, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(db, res, PGRES_TUPLES_OK, "read chunk sizes", err,
                             errlen)))
            return e;
        size_t n = (size_t)PQntuples(res);
        if (n == 0) {
            PQclear(res);
            dp_batch_fail(b, i, DP_ERR_PERMANENT,
                          "embed-plan %s: No chunks found for embedding", doc);
            continue;
        }
        size_t *tokens = malloc(n * sizeof(size_t));
        size_t *ends = malloc(n * sizeof(size_t));
        int first_ord = atoi(PQgetvalue(res, 0, 0));
        for (size_t k = 0; k < n; k++)
            tokens[k] = dp_tokens_estimate(PQgetvalue(res, (int)k, 1),
                                           (size_t)PQgetlength(res, (int)k, 1));
        PQclear(res);
        size_t nb = dp_embed_plan_batches(tokens, n, DP_EMBED_BATCH_MAX_TEXTS,
                                          DP_EMBED_BATCH_MAX_TOKENS, ends);
        char progress[160];
        snprintf(progress, sizeof(progress),
                 "{\"embeds_total\": %zu, \"embeds_done\": 0, \"batches_total\": %zu}",
                 n, nb);
        int moved;
        e = dp_docstage_transition(ds, b, doc, plan_from, "embedding_queued",
                                   "EMBEDDING_QUEUED", corr, progress,
                                   &moved, err, errlen);
        dp_docstage_set_job(ds, doc, NULL, (long)nb); /* written with the move */
        size_t start = 0, released = nb;
        if (e == DP_OK)
            e = write_plan(db, doc, first_ord, tokens, ends, nb,
                           dp_embed_window_tokens(ds->cfg), &released, err, errlen);
        for (size_t k = 0; e == DP_OK && k < released; k++) {
            dp_field f[] = {DP_FS("document_id", doc),
                            DP_FS("job_id", dp_msg_str(m, "job_id")),
                            DP_FL("batch_index", k), DP_FL("batches_total", nb),
                            DP_FL("first_ord", first_ord + (int)start),
                            DP_FL("count", ends[k] - start),
                            DP_FS("correlation_id", corr)};
            dp_docstage_emit(ds, b, i, ds->out_topic, "EmbedBatch", doc, f, 7);
            start = ends[k];
        }
        free(tokens);
        free(ends);
        if (e)
            return e;
    }
    return DP_OK;
}

dp_err dp_embed_plan_open(const dp_config *cfg, dp_stage *stage, char *err,
                          size_t errlen)
{
    dp_docstage_spec spec = {"embed-plan", "chunked", "ChunksStored",
                             "embed-batches", "failed_embedding", 100,
                             plan_handle};
    return dp_docstage_init(cfg, &spec, NULL, stage, err, errlen);
}

void dp_embed_plan_close(dp_stage *stage) { dp_docstage_close(stage); }

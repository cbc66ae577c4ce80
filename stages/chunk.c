/*
 * chunk (stage 4): splits the text with the chunker the job names
 * (chunks_version: markdown-simple@1, the original's, or markdown-simple@2,
 * bounded by tokens; see chunker.h) and stores the chunks.
 *
 * In: <prefix>validated (DocumentValidated).  The text at parsed_path is
 * normalised as validate did, then chunked.  The job moves
 * parse_validated → chunking → chunks_stored in one transaction (both
 * transitions are events).  Chunk ids are UUIDv5 of
 * "{document_id}:{chunker}:{version}:{ord}", so writing them again
 * (a replay) is a no-op (ON CONFLICT (chunk_id) DO NOTHING).  A
 * ChunksStored goes to <prefix>chunked.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"
#include "docdb.h"
#include "docstage.h"
#include "ids.h"
#include "pg.h"
#include "stages.h"

#define CHUNK_MAX_TEXT (10u * 1024 * 1024)

static const char *const chunk_from[] = {"parse_validated", "failed_chunking", NULL};
static const char *const chunking[] = {"chunking", NULL};

typedef struct chunk_bufs {
    dp_buf ids, ords, shas, texts, metas;
} chunk_bufs;

static dp_err store_chunks(PGconn *db, chunk_bufs *cb, const char *doc,
                           const char *version, int v2, const dp_chunk_list *list,
                           int *written, char *err, size_t errlen)
{
    /* Ids, ordinals and hashes are array literals (their characters are
     * known); texts and metas go over in binary form, which no text can
     * break. */
    dp_buf *lits[3] = {&cb->ids, &cb->ords, &cb->shas};
    for (int k = 0; k < 3; k++) {
        dp_buf_reset(lits[k]);
        dp_buf_append(lits[k], "{", 1);
    }
    dp_buf_text_array_begin(&cb->texts);
    dp_buf_text_array_begin(&cb->metas);
    for (size_t c = 0; c < list->count; c++) {
        const dp_chunk *ch = &list->items[c];
        char id[DP_UUID_STR_SIZE], meta[128];
        dp_err e = dp_chunk_id(doc, DP_CHUNKER_NAME, version, ch->ord, id, err,
                               errlen);
        if (e)
            return e;
        const char *sep = c ? "," : "";
        dp_buf_appendf(&cb->ids, "%s%s", sep, id);
        dp_buf_appendf(&cb->ords, "%s%u", sep, ch->ord);
        dp_buf_appendf(&cb->shas, "%s%s", sep, ch->sha256);
        dp_buf_text_array_add(&cb->texts, ch->text, ch->text_len);
        int n = v2 ? snprintf(meta, sizeof(meta),
                              "{\"start_line\": %zu, \"end_line\": %zu, \"type\":"
                              " \"markdown\", \"tokens\": %zu}",
                              ch->start_line, ch->end_line, ch->tokens)
                   : snprintf(meta, sizeof(meta),
                         "{\"start_line\": %zu, \"end_line\": %zu, \"type\": \"markdown\"}",
                         ch->start_line, ch->end_line);
        dp_buf_text_array_add(&cb->metas, meta, (size_t)n);
    }
    for (int k = 0; k < 3; k++)
        dp_buf_append(lits[k], "}", 1);
    const char *params[8] = {doc, DP_CHUNKER_NAME, version, cb->ids.data,
                             cb->ords.data, cb->shas.data, cb->texts.data,
                             cb->metas.data};
    Oid types[8] = {0, 0, 0, 0, 0, 0, DP_TEXT_ARRAY_OID, DP_TEXT_ARRAY_OID};
    int lens[8] = {0, 0, 0, 0, 0, 0, (int)cb->texts.len, (int)cb->metas.len};
    int fmts[8] = {0, 0, 0, 0, 0, 0, 1, 1};
    PGresult *res = dp_pg_execp(db,
        "INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id,"
        " document_id, chunk_ord, chunker_name, chunker_version, chunk_sha,"
        " text, meta)"
        " SELECT u.id, $1::uuid, u.ord, $2, $3, u.sha, u.txt, u.meta::jsonb"
        " FROM unnest($4::uuid[], $5::int[], $6::text[], $7::text[], $8::text[])"
        "   AS u(id, ord, sha, txt, meta)"
        " ON CONFLICT (chunk_id) DO NOTHING",
        8, types, params, lens, fmts, 0);
    dp_err e = dp_pg_check(db, res, PGRES_COMMAND_OK, "store chunks", err,
                           errlen);
    if (e)
        return e;
    *written = atoi(PQcmdTuples(res));
    PQclear(res);
    return DP_OK;
}

static dp_err chunk_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    chunk_bufs *cb = ds->impl;
    PGconn *db = dp_batch_db(b);
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *corr = dp_msg_str(m, "correlation_id");
        char why[768];
        int go;
        dp_err e = dp_docstage_ready(ds, b, i, doc, chunk_from, &go, err, errlen);
        if (e)
            return e;
        if (!go)
            continue;
        /* The job's chunks_version names the chunker, chosen at intake
         * (setting chunker_version) and kept, so a replay chunks alike. */
        const char *params[1] = {doc};
        PGresult *res = dp_pg_execp(db,
            "SELECT chunks_version FROM upload_pipeline.upload_jobs"
            " WHERE document_id = $1::uuid", 1, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(db, res, PGRES_TUPLES_OK, "read chunks_version",
                             err, errlen)))
            return e;
        char version[DP_CHUNKER_VERSION_SIZE];
        snprintf(version, sizeof(version), "%s",
                 PQntuples(res) ? PQgetvalue(res, 0, 0) : DP_CHUNKER_DEFAULT_VERSION);
        PQclear(res);
        dp_chunker_spec spec;
        dp_chunk_list list = {0};
        char *text;
        size_t len;
        e = dp_chunker_spec_parse(version, &spec, why, sizeof(why));
        if (e == DP_OK)
            e = dp_storage_get(ds->cfg->storage_dir, dp_msg_str(m, "parsed_path"),
                               CHUNK_MAX_TEXT, &text, &len, why, sizeof(why));
        if (e == DP_OK) {
            /* The text validate fingerprinted: parsed_path holds it as
             * parsed (validate does not rewrite it). */
            len = dp_normalize_text(text, len, text);
            e = dp_chunk_text(&spec, text, len, &list, why, sizeof(why));
            free(text);
        }
        if (e) {
            dp_batch_fail(b, i, e, "chunk %s: %s", doc, why);
            continue;
        }
        int moved, written = 0;
        e = dp_docstage_transition(ds, b, doc, chunk_from, "chunking",
                                   "CHUNKING_STARTED", corr, NULL, &moved, err, errlen);
        if (e == DP_OK)
            e = store_chunks(db, cb, doc, version, spec.version == 2, &list, &written,
                             err, errlen);
        char progress[160];
        snprintf(progress, sizeof(progress),
                 "{\"chunks_total\": %zu, \"chunks_done\": %zu, \"chunks_written\": %d}",
                 list.count, list.count, written);
        if (e == DP_OK)
            e = dp_docstage_transition(ds, b, doc, chunking, "chunks_stored",
                                       "CHUNKS_STORED", corr, progress, &moved,
                                       err, errlen);
        size_t count = list.count;
        dp_chunk_list_free(&list);
        if (e)
            return e;
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FS("chunker_version", version),
                        DP_FL("chunks_total", count), DP_FS("correlation_id", corr)};
        dp_docstage_emit(ds, b, i, ds->out_topic, "ChunksStored", doc, f, 5);
    }
    return DP_OK;
}

dp_err dp_chunk_open(const dp_config *cfg, dp_stage *stage, char *err,
                     size_t errlen)
{
    chunk_bufs *cb = calloc(1, sizeof(*cb));
    dp_docstage_spec spec = {"chunk", "validated", "DocumentValidated", "chunked",
                             "failed_chunking", 50, chunk_handle};
    dp_err e = dp_docstage_init(cfg, &spec, cb, stage, err, errlen);
    if (e)
        free(cb);
    return e;
}

void dp_chunk_close(dp_stage *stage)
{
    chunk_bufs *cb = dp_docstage_close(stage);
    if (!cb)
        return;
    dp_buf_free(&cb->ids);
    dp_buf_free(&cb->ords);
    dp_buf_free(&cb->shas);
    dp_buf_free(&cb->texts);
    dp_buf_free(&cb->metas);
    free(cb);
}

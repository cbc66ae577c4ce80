/*
 * validate (stage 3): normalises the parsed text and fingerprints it.
 *
 * In: <prefix>parsed (DocumentParsed).  The text is normalised as the
 * original did (strip the whole text, then right-strip every line); empty
 * text is a permanent failure ("Parsed content is empty").  parsed_sha256
 * is the sha256 of the normalised text.  As in the original, the text is
 * not written again: parsed_path stays, or becomes the path of an earlier
 * document with the same normalised content (the canonical one, named in
 * the event); chunk normalises what it reads the same way.  The job
 * moves parsed → parse_validated; a DocumentValidated goes to
 * <prefix>validated.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docdb.h"
#include "docstage.h"
#include "ids.h"
#include "pg.h"
#include "stages.h"

#define VALIDATE_MAX_TEXT (10u * 1024 * 1024)

static const char *const validate_from[] = {"parsed", NULL};

static dp_err validate_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    PGconn *db = dp_batch_db(b);
    dp_err e = DP_OK;
    for (size_t i = 0; i < dp_batch_count(b); i++) {
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        char why[768];
        int go;
        if ((e = dp_docstage_ready(ds, b, i, doc, validate_from, &go, err, errlen)))
            return e;
        if (!go)
            continue;
        char *text;
        size_t len;
        e = dp_storage_get(ds->cfg->storage_dir, dp_msg_str(m, "parsed_path"),
                           VALIDATE_MAX_TEXT, &text, &len, why, sizeof(why));
        if (e) {
            dp_batch_fail(b, i, e, "validate %s: %s", doc, why);
            continue;
        }
        size_t n = dp_normalize_text(text, len, text);
        char sha[DP_SHA256_HEX_SIZE];
        if (n == 0)
            e = dp_errf(DP_ERR_PERMANENT, why, sizeof(why), "Parsed content is empty");
        else
            e = dp_sha256_hex(text, n, sha);
        free(text);
        if (e) {
            dp_batch_fail(b, i, e, "validate %s: %s", doc, why);
            continue;
        }
        /* An earlier document with the same content lends its path: the
         * canonical one. */
        const char *params[3] = {doc, dp_msg_str(m, "parsed_path"), sha};
        PGresult *res = dp_pg_execp(db,
            "WITH dup AS (SELECT document_id, parsed_path"
            "   FROM upload_pipeline.upload_jobs"
            "   WHERE parsed_sha256 = $3 AND document_id <> $1::uuid"
            "   AND parsed_path IS NOT NULL LIMIT 1),"
            " p AS (SELECT coalesce((SELECT parsed_path FROM dup), $2) AS path),"
            " j AS (UPDATE upload_pipeline.upload_jobs SET parsed_path = p.path,"
            "   parsed_sha256 = $3 FROM p WHERE document_id = $1::uuid),"
            " d AS (UPDATE upload_pipeline.documents SET parsed_path = p.path,"
            "   parsed_sha256 = $3 FROM p WHERE document_id = $1::uuid)"
            " SELECT coalesce((SELECT document_id::text FROM dup), ''), p.path FROM p",
            3, NULL, params, NULL, NULL, 0);
        if ((e = dp_pg_check(db, res, PGRES_TUPLES_OK, "store parsed hash", err,
                             errlen)))
            return e;
        char progress[160], path[DP_STORAGE_PATH_SIZE];
        snprintf(progress, sizeof(progress),
                 "{\"normalized_bytes\": %zu, \"duplicate_of\": \"%s\"}", n,
                 PQgetvalue(res, 0, 0));
        snprintf(path, sizeof(path), "%s", PQgetvalue(res, 0, 1));
        PQclear(res);
        int moved;
        e = dp_docstage_transition(ds, b, doc, validate_from, "parse_validated",
                                   "PARSE_VALIDATED",
                                   dp_msg_str(m, "correlation_id"), progress, &moved,
                                   err, errlen);
        if (e)
            return e;
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FS("parsed_path", path), DP_FS("parsed_sha256", sha),
                        DP_FS("correlation_id", dp_msg_str(m, "correlation_id"))};
        dp_docstage_emit(ds, b, i, ds->out_topic, "DocumentValidated", doc, f, 5);
    }
    return DP_OK;
}

dp_err dp_validate_open(const dp_config *cfg, dp_stage *stage, char *err,
                        size_t errlen)
{
    dp_docstage_spec spec = {"validate", "parsed", "DocumentParsed", "validated",
                             "failed_parse", 50, validate_handle};
    return dp_docstage_init(cfg, &spec, NULL, stage, err, errlen);
}

void dp_validate_close(dp_stage *stage) { dp_docstage_close(stage); }

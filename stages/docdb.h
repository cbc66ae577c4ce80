/*
 * docdb: what every document stage does to the domain tables.
 *
 * A stage moves a document's job from one of the states it accepts to its
 * own output state and writes the matching row into upload_pipeline.events
 * (with the correlation id), in the batch's transaction.  A record whose
 * document is not in an accepted state (a replay of a document that moved
 * on, a duplicate upload) changes nothing: dp_docstage_transition
 * reports moved = 0 and the stage skips the record's effects and outputs.
 *
 * Storage: raw files and parsed texts are content-addressed files under the
 * storage_dir setting, referred to as storage://raw/<sha256> and
 * storage://parsed/<sha256>.  Writes go to a temporary file and are renamed
 * into place, so a crash never leaves a partial file under a final name.
 */
#ifndef DP_DOCDB_H
#define DP_DOCDB_H

#include <libpq-fe.h>
#include <stddef.h>

#include "dp_error.h"
#include "stage.h"

#define DP_STORAGE_PATH_SIZE 128

/* Marks the job failed (unless it is already complete or failed), with
 * last_error {error, error_type, failed_at, correlation_id} and an error
 * event.  Used from a stage's dead_letter hook. */
dp_err dp_doc_fail(PGconn *db, const char *document_id, const char *failed_state,
                   const char *stage, dp_err category, const char *error,
                   const char *correlation_id, char *err, size_t errlen);

/* The dead_letter hook shared by the document stages: the record key is the
 * document id; failed_state comes from the stage. */
dp_err dp_doc_dead_letter(const char *stage, const char *failed_state,
                          PGconn *db, const dp_record *rec, dp_err category,
                          const char *error, char *err, size_t errlen);

/* Whether status is one of states (NULL-terminated). */
int dp_status_in(const char *status, const char *const *states);

/* Whether record i, whose document's job is in `status` ("" if none), may
 * be handled (1) under `accepted` (NULL-terminated).  A status behind the
 * accepted ones means the upstream stage published before committing and
 * has not committed (yet): the record is deferred, without spending its
 * retry budget.  A status past them (a replay, a failed document) means
 * skip (0).  Stages reach this through dp_docstage_ready. */
int dp_doc_accept(dp_batch *b, size_t i, const char *document_id,
                  const char *status, const char *const *accepted);

/* The earliest of the states a stage takes: where a replay moves a job. */
const char *dp_doc_entry_state(const char *const *accepted);

/* Whether a replayed record of a document in `status` starts its work over
 * at a stage taking `accepted`: the document went past the stage (or
 * failed at it or after it).  One still before it, or in it, is not moved. */
int dp_doc_replay_restarts(const char *status, const char *const *accepted);

/* Removes what the stages from the one taking to_state on wrote for the
 * documents (ids: a uuid[] literal), before their work starts over there:
 * from embed-plan on, the stored batches and vectors; from chunk on, the
 * chunks too.  The final rows (document_chunks) stay until finalize
 * replaces them in one statement, so a document is searchable under one
 * generation at every moment.  Shared by replay (docstage.c) and retry. */
dp_err dp_doc_clear_from(PGconn *db, const char *ids, const char *to_state,
                         char *err, size_t errlen);

/* Applies a batch's transitions in one statement.  jobs_json: a JSON array
 * of {job, doc, status, progress[, parsed_path][, batches]}, one per job,
 * with its final status, the progress of all its moves merged in order, and
 * the columns its stage set (parsed_path, the document's too;
 * embed_batches_total; generation); moves_json: a JSON array
 * of {n, job, doc, from_s, to_s, stage, code, corr[, type]}, one event each,
 * written in the order of n; job_ids, doc_ids: the jobs' ids and their
 * documents' as uuid[] literals.  The caller holds the job rows locked and
 * knows their statuses (see dp_docstage_transition). */
dp_err dp_doc_transitions_apply(PGconn *db, const char *jobs_json,
                                const char *moves_json, const char *job_ids,
                                const char *doc_ids, char *err, size_t errlen);

/* finalize's promotion of buffered chunks and their vectors ($2: the
 * embedding model) into document_chunks; the caller names the documents
 * (" WHERE c.document_id ...").  The lateral subquery, kept apart by OFFSET
 * 0, reads each chunk's vector through the buffer's primary key; without
 * it the planner read every vector of the model (docs/benchmarks.md,
 * seventh round). */
#define DP_SQL_PROMOTE_CHUNKS \
    "INSERT INTO upload_pipeline.document_chunks (chunk_id, document_id," \
    "   chunker_name, chunker_version, chunk_ord, text, chunk_sha, meta," \
    "   embed_model, embed_version, embedding, vector_dim, vector_sha)" \
    " SELECT c.chunk_id, c.document_id, c.chunker_name, c.chunker_version," \
    "   c.chunk_ord, c.text, c.chunk_sha, c.meta, v.embed_model," \
    "   v.embed_version, v.vector, cardinality(v.vector), v.vector_sha" \
    " FROM upload_pipeline.document_chunk_buffer c" \
    " CROSS JOIN LATERAL (SELECT v.embed_model, v.embed_version, v.vector," \
    "     v.vector_sha FROM upload_pipeline.document_vector_buffer v" \
    "   WHERE v.chunk_id = c.chunk_id AND v.embed_model = $2" \
    "   AND v.embed_version = '1' OFFSET 0) v"

/* Stores data content-addressed under <dir>/<kind>/<sha256>; writes the
 * storage:// path and the sha256 hex (both may be NULL). */
dp_err dp_storage_put(const char *dir, const char *kind, const void *data,
                      size_t len, char path[DP_STORAGE_PATH_SIZE],
                      char sha[65], char *err, size_t errlen);

/* Files written now and made durable together by dp_storage_sync: the
 * first fsync commits the filesystem's journal, and with it the other files
 * of the batch, so a batch costs about one flush instead of one per file.
 * Until then they sit under temporary names; a final name appears only
 * once its file is durable.  Zero-initialise; dp_storage_discard frees (and
 * removes the temporaries of a batch never synced). */
typedef struct dp_storage_batch {
    struct dp_stored *files;
    size_t n, cap;
} dp_storage_batch;

/* dp_storage_put's write, made durable by dp_storage_sync. */
dp_err dp_storage_write(dp_storage_batch *sb, const char *dir, const char *kind,
                        const void *data, size_t len,
                        char path[DP_STORAGE_PATH_SIZE], char sha[65], char *err,
                        size_t errlen);
dp_err dp_storage_sync(dp_storage_batch *sb, char *err, size_t errlen);
void dp_storage_discard(dp_storage_batch *sb);

/* The size of a storage:// path; a missing file is DP_ERR_PERMANENT. */
dp_err dp_storage_size(const char *dir, const char *path, size_t *len, char *err,
                       size_t errlen);

/* Reads a storage:// path; over max_bytes is DP_ERR_PERMANENT, a missing
 * file too (the reference is wrong).  *data is malloc'd and NUL-terminated. */
dp_err dp_storage_get(const char *dir, const char *path, size_t max_bytes,
                      char **data, size_t *len, char *err, size_t errlen);

/* Filesystem path of a storage:// path. */
void dp_storage_file(const char *dir, const char *path, char *out, size_t outlen);

#endif

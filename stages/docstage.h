/*
 * docstage: the part every document stage shares.
 *
 * A document stage reads one topic (its Avro schema named in_schema),
 * writes one topic, and on a dead letter marks the document failed_<x>.
 * dp_docstage_init wires decoding, freeing and the dead-letter hook into a
 * dp_stage; the stage file adds only its handler.  Records are keyed by
 * document id on every topic, so one document's records stay in order on
 * one partition.
 */
#ifndef DP_DOCSTAGE_H
#define DP_DOCSTAGE_H

#include "config.h"
#include "docmsg.h"
#include "stage.h"

typedef struct dp_docstage {
    const dp_config *cfg;
    dp_msgcodec *codec;
    const char *name;
    const char *in_schema;
    const char *failed_state;
    char *in_topic, *out_topic, *dlq_topic;
    const char *outputs[2];
    void *impl;                  /* the stage's own state */
    dp_err (*handle)(void *state, dp_batch *batch, char *err, size_t errlen);
    /* The documents of the handler pass under way (see
     * dp_docstage_ready) and its transitions not yet written. */
    struct ds_doc *docs;
    size_t ndocs, docs_cap;
    int docs_loaded, docs_sorted;
    struct json_t *moves;
} dp_docstage;

typedef struct dp_docstage_spec {
    const char *name;            /* stage and group name, e.g. "parse" */
    const char *in_suffix;       /* topic after the prefix, e.g. "parse-queued" */
    const char *in_schema;       /* e.g. "ParseRequested" */
    const char *out_suffix;      /* NULL: no output topic */
    const char *failed_state;    /* e.g. "failed_parse" */
    int batch_max;
    dp_err (*handle)(void *state, dp_batch *batch, char *err, size_t errlen);
} dp_docstage_spec;

/* Allocates the dp_docstage (stage->state) and fills stage. */
dp_err dp_docstage_init(const dp_config *cfg, const dp_docstage_spec *spec,
                        void *impl, dp_stage *stage, char *err, size_t errlen);
/* Frees what init allocated; returns impl for the caller to free. */
void *dp_docstage_close(dp_stage *stage);

/* The decoded Avro value of record i. */
avro_value_t *dp_docstage_msg(dp_batch *b, size_t i);

/*
 * Job states, a batch at a time.  A stage's handler asks, per record,
 * whether the document's job is in a state the stage accepts
 * (dp_docstage_ready), and moves it on (dp_docstage_transition).  The
 * first question of a handler pass reads and locks the jobs of every
 * document in the batch, in one statement, in document id order (which
 * also waits for an upstream commit still in progress); the answers and
 * the moves come from that view.  The moves are written together, one
 * statement for the batch, when the handler returns: each job its last
 * state, each move its event, in order.  The rows stay locked until the
 * batch commits, so the view stays true.
 */

/* *go = 1 if record i (of document_id) may be handled; see dp_doc_accept
 * for the records deferred or skipped. */
dp_err dp_docstage_ready(dp_docstage *ds, dp_batch *b, size_t i,
                         const char *document_id, const char *const *accepted,
                         int *go, char *err, size_t errlen);

/* Moves the job of document_id from any state in `from` (NULL-terminated)
 * to `to`, merging progress_json (a JSON object, may be NULL) into its
 * progress, with a stage_done event (finalized for complete) of code and
 * the correlation id.  *moved = 0 (nothing changes) if the job is not in
 * one of `from`: a replay of a document that moved on, a duplicate
 * upload.  A document not read by dp_docstage_ready is read (and locked)
 * first. */
dp_err dp_docstage_transition(dp_docstage *ds, dp_batch *b,
                              const char *document_id, const char *const *from,
                              const char *to, const char *code,
                              const char *correlation_id,
                              const char *progress_json, int *moved, char *err,
                              size_t errlen);

/* Columns of document_id's job written with the pass's moves, instead of
 * a statement of their own: parsed_path (NULL: unchanged; the document's
 * too) and embed_batches_total (-1: unchanged).  Only for a job that
 * dp_docstage_transition moved in this pass; otherwise nothing is written. */
void dp_docstage_set_job(dp_docstage *ds, const char *document_id,
                         const char *parsed_path, long batches_total);

/* Tells the view that this pass created document_id's job, in status. */
void dp_docstage_adopt(dp_docstage *ds, const char *document_id,
                       const char *job_id, const char *status);

/* Encodes a message of schema and emits it for record i on topic, keyed by
 * document_id.  An encoding failure fails record i permanently. */
void dp_docstage_emit(dp_docstage *ds, dp_batch *b, size_t i,
                      const char *topic, const char *schema,
                      const char *document_id, const dp_field *fields,
                      size_t n);

#endif

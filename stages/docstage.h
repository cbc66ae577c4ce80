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

/* Encodes a message of schema and emits it for record i on topic, keyed by
 * document_id.  An encoding failure fails record i permanently. */
void dp_docstage_emit(dp_docstage *ds, dp_batch *b, size_t i,
                      const char *topic, const char *schema,
                      const char *document_id, const dp_field *fields,
                      size_t n);

#endif

/* docstage: shared wiring of the document stages (see docstage.h). */
#include "docstage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docdb.h"
#include "stages.h"

static dp_err ds_decode(void *state, const void *value, size_t len, void **out,
                        char *err, size_t errlen)
{
    dp_docstage *ds = state;
    avro_value_t *v;
    dp_err e = dp_msg_decode(ds->codec, ds->in_schema, value, len, &v, err,
                             errlen);
    if (e)
        return DP_ERR_POISON;
    *out = v;
    return DP_OK;
}

static void ds_free_decoded(void *state, void *decoded)
{
    (void)state;
    dp_msg_free(decoded);
}

static dp_err ds_dead_letter(void *state, PGconn *db, const dp_record *rec,
                             dp_err category, const char *error, char *err,
                             size_t errlen)
{
    dp_docstage *ds = state;
    return dp_doc_dead_letter(ds->name, ds->failed_state, db, rec, category,
                              error, err, errlen);
}

dp_err dp_docstage_init(const dp_config *cfg, const dp_docstage_spec *spec,
                        void *impl, dp_stage *stage, char *err, size_t errlen)
{
    dp_docstage *ds = calloc(1, sizeof(*ds));
    dp_err e = dp_msgcodec_open(cfg->schema_dir, &ds->codec, err, errlen);
    if (e) {
        free(ds);
        return e;
    }
    char dlq[256];
    snprintf(dlq, sizeof(dlq), "%s.dlq", spec->name);
    ds->cfg = cfg;
    ds->name = spec->name;
    ds->in_schema = spec->in_schema;
    ds->failed_state = spec->failed_state;
    ds->in_topic = dp_topic_name(cfg, spec->in_suffix);
    ds->out_topic = spec->out_suffix ? dp_topic_name(cfg, spec->out_suffix) : NULL;
    ds->dlq_topic = dp_topic_name(cfg, dlq);
    ds->outputs[0] = ds->out_topic;
    ds->impl = impl;
    stage->name = spec->name;
    stage->input_topic = ds->in_topic;
    stage->output_topics = ds->outputs;
    stage->dlq_topic = ds->dlq_topic;
    stage->batch_max = spec->batch_max;
    stage->state = ds;
    stage->decode = ds_decode;
    stage->free_decoded = ds_free_decoded;
    stage->handle = spec->handle;
    stage->dead_letter = ds_dead_letter;
    return DP_OK;
}

void *dp_docstage_close(dp_stage *stage)
{
    dp_docstage *ds = stage->state;
    if (!ds)
        return NULL;
    void *impl = ds->impl;
    dp_msgcodec_free(ds->codec);
    free(ds->in_topic);
    free(ds->out_topic);
    free(ds->dlq_topic);
    free(ds);
    stage->state = NULL;
    return impl;
}

avro_value_t *dp_docstage_msg(dp_batch *b, size_t i)
{
    return dp_batch_record(b, i)->decoded;
}

void dp_docstage_emit(dp_docstage *ds, dp_batch *b, size_t i,
                      const char *topic, const char *schema,
                      const char *document_id, const dp_field *fields,
                      size_t n)
{
    void *buf = NULL;
    size_t len = 0;
    char err[512];
    if (dp_msg_encode(ds->codec, schema, fields, n, &buf, &len, err,
                      sizeof(err)) != DP_OK) {
        dp_batch_fail(b, i, DP_ERR_PERMANENT, "encode %s: %s", schema, err);
        return;
    }
    dp_batch_emit(b, i, topic, document_id, strlen(document_id), buf, len);
    free(buf);
}

/* docstage: shared wiring of the document stages (see docstage.h). */
#include "docstage.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "docdb.h"
#include "ids.h"
#include "pg.h"
#include "stages.h"

/* One document of the handler pass: its job as read (and locked), then as
 * the pass's moves left it. */
typedef struct ds_doc {
    char id[DP_UUID_STR_SIZE];
    char job[DP_UUID_STR_SIZE];
    char status[32];          /* "": no job */
    json_t *progress;         /* merged progress of its moves, or NULL */
    int unread;               /* its job not read yet */
    int moved;                /* has moves to write */
    char parsed_path[DP_STORAGE_PATH_SIZE]; /* to write with them, "" none */
    long batches_total;       /* embed_batches_total to write, -1 none */
    long generation;          /* the job's, as the pass left it */
    int generation_set;       /* a replay started a new one: write it */
} ds_doc;

/* Document ids as PostgreSQL prints them: a record may spell one in
 * capitals. */
static void id_key(char out[DP_UUID_STR_SIZE], const char *id)
{
    size_t k = 0;
    for (; id[k] && k + 1 < DP_UUID_STR_SIZE; k++)
        out[k] = (char)(id[k] >= 'A' && id[k] <= 'Z' ? id[k] - 'A' + 'a' : id[k]);
    out[k] = '\0';
}

static int doc_cmp(const void *a, const void *b)
{
    return strcmp(((const ds_doc *)a)->id, ((const ds_doc *)b)->id);
}

static void docs_reset(dp_docstage *ds)
{
    for (size_t k = 0; k < ds->ndocs; k++)
        json_decref(ds->docs[k].progress);
    ds->ndocs = 0;
    ds->docs_loaded = 0;
    ds->docs_sorted = 1;
    json_decref(ds->moves);
    ds->moves = NULL;
}

static ds_doc *doc_add(dp_docstage *ds, const char *id)
{
    if (ds->ndocs == ds->docs_cap) {
        ds->docs_cap = ds->docs_cap ? 2 * ds->docs_cap : 64;
        ds->docs = realloc(ds->docs, ds->docs_cap * sizeof(*ds->docs));
    }
    ds_doc *d = &ds->docs[ds->ndocs++];
    memset(d, 0, sizeof(*d));
    id_key(d->id, id);
    d->unread = 1;
    d->batches_total = -1;
    ds->docs_sorted = 0;
    return d;
}

static ds_doc *doc_find(dp_docstage *ds, const char *id)
{
    if (ds->ndocs == 0)
        return NULL; /* (and docs may be NULL: not for qsort or bsearch) */
    if (!ds->docs_sorted) {
        qsort(ds->docs, ds->ndocs, sizeof(*ds->docs), doc_cmp);
        ds->docs_sorted = 1;
    }
    ds_doc key;
    id_key(key.id, id);
    return bsearch(&key, ds->docs, ds->ndocs, sizeof(*ds->docs), doc_cmp);
}

/* Sorts the view and keeps one entry per document: the one already read
 * (it may carry moves), else the first. */
static void docs_unique(dp_docstage *ds)
{
    if (ds->ndocs == 0)
        return;
    qsort(ds->docs, ds->ndocs, sizeof(*ds->docs), doc_cmp);
    size_t n = 0;
    for (size_t k = 0; k < ds->ndocs; k++) {
        if (n > 0 && strcmp(ds->docs[n - 1].id, ds->docs[k].id) == 0) {
            if (ds->docs[n - 1].unread && !ds->docs[k].unread)
                ds->docs[n - 1] = ds->docs[k];
            else
                json_decref(ds->docs[k].progress);
            continue;
        }
        ds->docs[n++] = ds->docs[k];
    }
    ds->ndocs = n;
    ds->docs_sorted = 1;
}

/* Reads and locks the jobs of the documents not read yet, in one
 * statement, in document id order (the order every stage locks in). */
static dp_err docs_load(dp_docstage *ds, PGconn *db, char *err, size_t errlen)
{
    dp_buf ids = {0};
    dp_buf_append(&ids, "{", 1);
    for (size_t k = 0; k < ds->ndocs; k++) {
        if (ds->docs[k].unread)
            dp_buf_appendf(&ids, "%s%s", ids.len > 1 ? "," : "", ds->docs[k].id);
        ds->docs[k].unread = 0;
    }
    dp_buf_append(&ids, "}", 1);
    if (ids.len == 2) {
        dp_buf_free(&ids);
        return DP_OK;
    }
    const char *params[1] = {ids.data};
    PGresult *res = dp_pg_execp(db,
        "SELECT document_id, job_id, status, generation FROM upload_pipeline.upload_jobs"
        " WHERE document_id = ANY ($1::uuid[]) ORDER BY document_id FOR UPDATE",
        1, NULL, params, NULL, NULL, 0);
    dp_buf_free(&ids);
    dp_err e = dp_pg_check(db, res, PGRES_TUPLES_OK, "read job states", err,
                           errlen);
    if (e)
        return e;
    for (int r = 0; r < PQntuples(res); r++) {
        ds_doc *d = doc_find(ds, PQgetvalue(res, r, 0));
        if (!d)
            continue;
        snprintf(d->job, sizeof(d->job), "%s", PQgetvalue(res, r, 1));
        snprintf(d->status, sizeof(d->status), "%s", PQgetvalue(res, r, 2));
        d->generation = strtol(PQgetvalue(res, r, 3), NULL, 10);
    }
    PQclear(res);
    return DP_OK;
}

/* The view of document_id, read first if it is new to the pass. */
static dp_err doc_get(dp_docstage *ds, dp_batch *b, const char *document_id,
                      ds_doc **out, char *err, size_t errlen)
{
    ds_doc *d = doc_find(ds, document_id);
    if (!d || d->unread) {
        if (!d)
            doc_add(ds, document_id);
        dp_err e = docs_load(ds, dp_batch_db(b), err, errlen);
        if (e)
            return e;
        d = doc_find(ds, document_id);
    }
    *out = d;
    return DP_OK;
}

/* A replayed record of a document past the stage: what the stages from
 * here on wrote is removed (final rows excepted), the job moves back to
 * `to` with a `replay` event, and its generation grows. */
static dp_err replay_restart(dp_docstage *ds, dp_batch *b, ds_doc *d,
                             const char *to, const char *corr, char *err,
                             size_t errlen)
{
    char ids[DP_UUID_STR_SIZE + 2];
    snprintf(ids, sizeof(ids), "{%s}", d->id);
    dp_err e = dp_doc_clear_from(dp_batch_db(b), ids, to, err, errlen);
    if (e)
        return e;
    if (!ds->moves)
        ds->moves = json_array();
    json_array_append_new(ds->moves, json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s}",
        "n", (json_int_t)json_array_size(ds->moves), "job", d->job, "doc", d->id,
        "from_s", d->status, "to_s", to, "stage", ds->name, "code", "JOB_REPLAYED",
        "corr", corr ? corr : "", "type", "replay"));
    snprintf(d->status, sizeof(d->status), "%s", to);
    d->generation++;
    d->generation_set = 1;
    d->moved = 1;
    return DP_OK;
}

dp_err dp_docstage_ready(dp_docstage *ds, dp_batch *b, size_t i,
                         const char *document_id, const char *const *accepted,
                         int *go, char *err, size_t errlen)
{
    *go = 0;
    if (!ds->docs_loaded) {
        /* The first question of the pass reads the whole batch's jobs:
         * every id added, then one sort that drops the repeats. */
        for (size_t k = 0; k < dp_batch_count(b); k++)
            doc_add(ds, dp_msg_str(dp_docstage_msg(b, k), "document_id"));
        docs_unique(ds);
        ds->docs_loaded = 1;
    }
    ds_doc *d;
    dp_err e = doc_get(ds, b, document_id, &d, err, errlen);
    if (e)
        return e;
    const dp_record *rec = dp_batch_record(b, i);
    if (rec->replay && *d->job) {
        /* `docpipe replay` moved this stage back over the record: a
         * document that went past the stage starts over here, under a new
         * generation; one still upstream will come by on its own. */
        if (dp_doc_replay_restarts(d->status, accepted)) {
            if ((e = replay_restart(ds, b, d, dp_doc_entry_state(accepted),
                                    rec->correlation_id,
                                    err, errlen)))
                return e;
        } else if (!dp_status_in(d->status, accepted)) {
            return DP_OK;
        }
    } else if (*d->job && rec->generation < d->generation) {
        /* Work of an earlier generation, still in flight when a replay or
         * a retry started the document over: discarded. */
        return DP_OK;
    } else if (*d->job && rec->generation > d->generation) {
        dp_batch_defer(b, i, 500, "document %s is at generation %ld, the record"
                       " at %lld: waiting for the commit that started it over",
                       document_id, d->generation, (long long)rec->generation);
        return DP_OK;
    }
    *go = dp_doc_accept(b, i, document_id, d->status, accepted);
    if (*go)
        dp_batch_set_generation(b, i, d->generation);
    return DP_OK;
}

void dp_docstage_adopt(dp_docstage *ds, const char *document_id,
                       const char *job_id, const char *status)
{
    ds_doc *d = doc_find(ds, document_id);
    if (!d)
        d = doc_add(ds, document_id);
    snprintf(d->job, sizeof(d->job), "%s", job_id);
    snprintf(d->status, sizeof(d->status), "%s", status);
    d->unread = 0;
}

dp_err dp_docstage_transition(dp_docstage *ds, dp_batch *b,
                              const char *document_id, const char *const *from,
                              const char *to, const char *code,
                              const char *correlation_id,
                              const char *progress_json, int *moved, char *err,
                              size_t errlen)
{
    ds_doc *d;
    dp_err e = doc_get(ds, b, document_id, &d, err, errlen);
    if (e)
        return e;
    *moved = *d->job && dp_status_in(d->status, from);
    if (!*moved)
        return DP_OK;
    if (progress_json) {
        json_error_t je;
        json_t *p = json_loads(progress_json, 0, &je);
        if (!json_is_object(p)) {
            json_decref(p);
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "progress of %s is not a JSON object: %s", document_id,
                           progress_json);
        }
        if (!d->progress)
            d->progress = p;
        else {
            json_object_update(d->progress, p);
            json_decref(p);
        }
    }
    if (!ds->moves)
        ds->moves = json_array();
    json_array_append_new(ds->moves, json_pack("{s:I,s:s,s:s,s:s,s:s,s:s,s:s,s:s}",
        "n", (json_int_t)json_array_size(ds->moves), "job", d->job, "doc", d->id,
        "from_s", d->status, "to_s", to, "stage", ds->name, "code", code,
        "corr", correlation_id ? correlation_id : ""));
    snprintf(d->status, sizeof(d->status), "%s", to);
    d->moved = 1;
    return DP_OK;
}

void dp_docstage_set_job(dp_docstage *ds, const char *document_id,
                         const char *parsed_path, long batches_total)
{
    ds_doc *d = doc_find(ds, document_id);
    if (!d || !d->moved)
        return;
    if (parsed_path)
        snprintf(d->parsed_path, sizeof(d->parsed_path), "%s", parsed_path);
    if (batches_total >= 0)
        d->batches_total = batches_total;
}

/* Writes the pass's moves (dp_doc_transitions_apply). */
static dp_err moves_write(dp_docstage *ds, PGconn *db, char *err, size_t errlen)
{
    if (!ds->moves)
        return DP_OK;
    json_t *jobs = json_array();
    dp_buf job_ids = {0}, doc_ids = {0};
    for (size_t k = 0; k < ds->ndocs; k++) {
        ds_doc *d = &ds->docs[k];
        if (!d->moved)
            continue;
        dp_buf_appendf(&job_ids, "%s%s", job_ids.len ? "," : "{", d->job);
        dp_buf_appendf(&doc_ids, "%s%s", doc_ids.len ? "," : "{", d->id);
        json_t *row = json_pack("{s:s,s:s,s:s,s:o}", "job", d->job, "doc", d->id,
            "status", d->status, "progress",
            d->progress ? json_incref(d->progress) : json_object());
        if (*d->parsed_path)
            json_object_set_new(row, "parsed_path", json_string(d->parsed_path));
        if (d->batches_total >= 0)
            json_object_set_new(row, "batches", json_integer(d->batches_total));
        if (d->generation_set)
            json_object_set_new(row, "generation", json_integer(d->generation));
        json_array_append_new(jobs, row);
    }
    char *j = json_dumps(jobs, JSON_COMPACT);
    char *m = json_dumps(ds->moves, JSON_COMPACT);
    json_decref(jobs);
    dp_buf_append(&job_ids, "}", 1);
    dp_buf_append(&doc_ids, "}", 1);
    dp_err e = j && m ? dp_doc_transitions_apply(db, j, m, job_ids.data, doc_ids.data,
                                                 err, errlen)
                      : dp_errf(DP_ERR_PERMANENT, err, errlen,
                                "encoding the state transitions failed");
    free(j);
    free(m);
    dp_buf_free(&job_ids);
    dp_buf_free(&doc_ids);
    return e;
}

/* A handler pass of the stage, between a fresh view and its writes. */
static dp_err ds_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    docs_reset(ds);
    dp_err e = ds->handle(ds, b, err, errlen);
    if (e == DP_OK)
        e = moves_write(ds, dp_batch_db(b), err, errlen);
    docs_reset(ds);
    return e;
}

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
    ds->handle = spec->handle;
    ds->docs_sorted = 1;
    stage->handle = ds_handle;
    stage->dead_letter = ds_dead_letter;
    return DP_OK;
}

void *dp_docstage_close(dp_stage *stage)
{
    dp_docstage *ds = stage->state;
    if (!ds)
        return NULL;
    void *impl = ds->impl;
    docs_reset(ds);
    free(ds->docs);
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

/*
 * embed (stage 6): calls the embedding service for each batch and stores
 * the vectors.
 *
 * In: <prefix>embed-batches (EmbedBatch).  A Kafka batch holds up to 512
 * of them, several times the requests in flight (embed_inflight, libcurl
 * multi): a request leaves as soon as a slot frees, so the service's latency
 * overlaps the storing of earlier answers.  A batch's chunk texts are read
 * when its request is about to leave (prepare_job), together with those of
 * the next few (EMBED_READ_AHEAD), so only the batches in flight and those
 * few hold theirs (and embed_buffer_kb bounds the replies held).  Each
 * batch's vectors go to document_vector_buffer as soon as its answer arrives
 * (with vector_sha: sha256 of the Python float.hex() strings, as the
 * original), sent without waiting: PostgreSQL stores one batch while this
 * process reads and decodes the next answers.  Once all are answered a
 * BatchEmbedded per batch goes to <prefix>embedded.  The job moves to embedding_in_progress.
 * 408/429/5xx/timeouts are retryable and other 4xx or a wrong dimension
 * permanent (failed_embedding).  While the embedding service's circuit
 * breaker is open, or when every request of a run failed retryably and the
 * service does not answer GET /v1/models either, the whole batch waits
 * (partitions paused) and no record's retry budget is spent, so an outage
 * dead-letters nothing.  A retryable failure spends the record's budget only
 * while the service is up.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <librdkafka/rdkafka.h>

#include "breaker.h"
#include "clock.h"
#include "docdb.h"
#include "docstage.h"
#include "embed_client.h"
#include "ids.h"
#include "log.h"
#include "pg.h"
#include "stages.h"

#define EMBED_READ_AHEAD 16 /* batches whose texts one query reads */

static const char *const embed_from[] = {"embedding_queued",
                                         "embedding_in_progress", NULL};

typedef struct embed_state {
    dp_embed_client *client;
    dp_buf vec;      /* binary real[] parameter */
    dp_buf ids, shas;
    int64_t pass_ms;  /* longest a pass sends (pass_budget_ms) */
} embed_state;

typedef struct embed_item {
    size_t rec;                /* index in the batch */
    char *blob;                /* its chunk ids and texts, NUL-separated */
    const char **ids, **texts; /* into blob, chunk_ord order */
    int read;                  /* texts read (or their reading failed) */
} embed_item;

/* Sends the insert of a batch's vectors; the caller collects its result
 * (store_wait) before the connection's next query. */
static dp_err store_vectors(PGconn *db, embed_state *st, const char *doc,
                            const char *model, int batch_index,
                            const embed_item *it, const dp_embed_job *job,
                            char *err, size_t errlen)
{
    size_t n = job->n, dim = (size_t)job->dim;
    dp_buf_reset(&st->vec);
    dp_buf_reset(&st->ids);
    dp_buf_reset(&st->shas);
    dp_buf_float4_array(&st->vec, job->vectors, n * dim);
    for (size_t k = 0; k < n; k++) {
        dp_buf_appendf(&st->ids, "%s%s", k ? "," : "{", it->ids[k]);
        dp_buf_appendf(&st->shas, "%s%s", k ? "," : "{",
                       job->shas + k * DP_SHA256_HEX_SIZE);
    }
    dp_buf_append(&st->ids, "}", 1);
    dp_buf_append(&st->shas, "}", 1);
    char bi[16], ds[16];
    snprintf(bi, sizeof(bi), "%d", batch_index);
    snprintf(ds, sizeof(ds), "%zu", dim);
    const char *params[7] = {doc, model, bi, st->vec.data, ds, st->ids.data,
                             st->shas.data};
    Oid types[7] = {0, 0, 0, DP_FLOAT4_ARRAY_OID, 0, 0, 0};
    int lens[7] = {0, 0, 0, (int)st->vec.len, 0, 0, 0};
    int fmts[7] = {0, 0, 0, 1, 0, 0, 0};
    PGresult *res = dp_pg_sendp(db,
        "INSERT INTO upload_pipeline.document_vector_buffer AS v (document_id,"
        " chunk_id, embed_model, embed_version, batch_index, vector, vector_sha)"
        " SELECT $1::uuid, c.id, $2, '1', $3::int,"
        "   $4[(c.i - 1) * $5::int + 1 : c.i * $5::int], c.sha"
        " FROM unnest($6::uuid[], $7::text[]) WITH ORDINALITY AS c(id, sha, i)"
        " ON CONFLICT (chunk_id, embed_model, embed_version) DO UPDATE"
        "   SET vector = EXCLUDED.vector, vector_sha = EXCLUDED.vector_sha,"
        "       created_at = now() WHERE v.vector_sha <> EXCLUDED.vector_sha",
        7, types, params, lens, fmts, 0);
    return res ? dp_pg_check(db, res, PGRES_COMMAND_OK, "store vectors", err, errlen)
               : DP_OK;
}

static void free_items(embed_item *items, dp_embed_job *jobs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        free(items[k].blob);
        free(items[k].ids);
        free(items[k].texts);
        free(jobs[k].vectors);
        free(jobs[k].shas);
    }
    free(items);
    free(jobs);
}

/* Stores each job's vectors as its answer arrives (dp_embed_run_each), so
 * the stage holds one job's vectors at a time, not the whole batch's, and
 * PostgreSQL works while the other requests are still out. */
typedef struct store_ctx {
    PGconn *db;
    dp_docstage *ds;
    dp_batch *b;
    embed_item *items;
    dp_embed_job *jobs;
    size_t n;           /* jobs */
    dp_err e;           /* the first storing error: the pass fails with it */
    int store_sent;     /* a store's result is still to collect */
    int64_t store_ms;   /* spent storing, for the debug timings */
    char *err;
    size_t errlen;
} store_ctx;

/* Collects the result of the store in flight, if any. */
static void store_wait(store_ctx *x)
{
    if (!x->store_sent)
        return;
    x->store_sent = 0;
    int64_t t0 = dp_clock_mono_ms(NULL);
    PGresult *res = dp_pg_collect(x->db);
    dp_err e = dp_pg_check(x->db, res, PGRES_COMMAND_OK, "store vectors",
                           x->e ? NULL : x->err, x->e ? 0 : x->errlen);
    if (e == DP_OK)
        PQclear(res);
    else if (x->e == DP_OK)
        x->e = e;
    x->store_ms += dp_clock_mono_ms(NULL) - t0;
}

static void job_refuse(dp_embed_job *job, dp_err result, const char *why)
{
    job->result = result;
    snprintf(job->error, sizeof(job->error), "%s", why);
}

/* Reads the chunk texts of jobs [k, k + EMBED_READ_AHEAD) not read yet, in
 * one query.  A job whose chunks are not all there fails on its own. */
static void read_texts(store_ctx *x, size_t k)
{
    dp_buf docs = {0}, firsts = {0}, counts = {0};
    size_t want[EMBED_READ_AHEAD], nw = 0;
    for (size_t j = k; j < x->n && nw < EMBED_READ_AHEAD; j++) {
        if (x->items[j].read)
            continue;
        avro_value_t *m = dp_docstage_msg(x->b, x->items[j].rec);
        dp_buf_appendf(&docs, "%s%s", nw ? "," : "{", dp_msg_str(m, "document_id"));
        dp_buf_appendf(&firsts, "%s%lld", nw ? "," : "{",
                       (long long)dp_msg_long(m, "first_ord"));
        dp_buf_appendf(&counts, "%s%zu", nw ? "," : "{", x->jobs[j].n);
        x->items[j].read = 1;
        want[nw++] = j;
    }
    dp_buf_append(&docs, "}", 1);
    dp_buf_append(&firsts, "}", 1);
    dp_buf_append(&counts, "}", 1);
    const char *params[3] = {docs.data, firsts.data, counts.data};
    PGresult *res = dp_pg_execp(x->db,
        "SELECT q.i, c.chunk_id, c.text"
        " FROM unnest($1::uuid[], $2::int[], $3::int[]) WITH ORDINALITY"
        "   AS q(doc, first, cnt, i)"
        " JOIN upload_pipeline.document_chunk_buffer c ON c.document_id = q.doc"
        "   AND c.chunk_ord >= q.first AND c.chunk_ord < q.first + q.cnt"
        " ORDER BY q.i, c.chunk_ord",
        3, NULL, params, NULL, NULL, 0);
    dp_buf_free(&docs);
    dp_buf_free(&firsts);
    dp_buf_free(&counts);
    if ((x->e = dp_pg_check(x->db, res, PGRES_TUPLES_OK, "read chunk texts", x->err,
                            x->errlen)))
        return; /* prepare_job refuses the jobs */
    int rows = PQntuples(res), r = 0;
    for (size_t w = 0; w < nw; w++) {
        int from = r;
        while (r < rows && atoi(PQgetvalue(res, r, 0)) == (int)w + 1)
            r++;
        dp_embed_job *job = &x->jobs[want[w]];
        embed_item *it = &x->items[want[w]];
        if (r - from != (int)job->n) {
            char why[160];
            snprintf(why, sizeof(why), "batch names %zu chunks, %d found", job->n,
                     r - from);
            job_refuse(job, DP_ERR_PERMANENT, why);
            continue;
        }
        size_t bytes = 0;
        for (int q = from; q < r; q++)
            bytes += (size_t)PQgetlength(res, q, 2) + DP_UUID_STR_SIZE + 1;
        char *p = it->blob = malloc(bytes);
        it->ids = malloc(job->n * sizeof(char *));
        it->texts = malloc(job->n * sizeof(char *));
        for (int q = from; q < r; q++) {
            size_t len = (size_t)PQgetlength(res, q, 2);
            it->ids[q - from] = p;
            p += snprintf(p, DP_UUID_STR_SIZE, "%s", PQgetvalue(res, q, 1)) + 1;
            it->texts[q - from] = p;
            memcpy(p, PQgetvalue(res, q, 2), len + 1);
            p += len + 1;
        }
    }
    PQclear(res);
}

/* Gives a job its chunk texts just before its request goes out. */
static int prepare_job(dp_embed_job *job, void *arg)
{
    store_ctx *x = arg;
    size_t k = (size_t)(job - x->jobs);
    embed_item *it = &x->items[k];
    if (!it->read && x->e == DP_OK) {
        store_wait(x); /* the connection's next query */
        if (x->e == DP_OK)
            read_texts(x, k);
    }
    if (x->e != DP_OK) {
        /* The pass already failed (the database): send nothing more. */
        job_refuse(job, DP_ERR_RETRYABLE, x->err);
        return -1;
    }
    if (!it->texts)
        return -1; /* read_texts refused it */
    job->texts = it->texts;
    return 0;
}

static void store_done(dp_embed_job *job, void *arg)
{
    store_ctx *x = arg;
    size_t k = (size_t)(job - x->jobs);
    embed_state *st = x->ds->impl;
    store_wait(x); /* one store in flight at a time */
    if (x->e == DP_OK) {
        int64_t t0 = dp_clock_mono_ms(NULL);
        avro_value_t *m = dp_docstage_msg(x->b, x->items[k].rec);
        x->e = store_vectors(x->db, st, dp_msg_str(m, "document_id"),
                             x->ds->cfg->embed_model,
                             (int)dp_msg_long(m, "batch_index"), &x->items[k], job,
                             x->err, x->errlen);
        x->store_sent = x->e == DP_OK;
        x->store_ms += dp_clock_mono_ms(NULL) - t0;
    }
    free(job->vectors);
    free(job->shas);
    job->vectors = NULL;
    job->shas = NULL;
    /* Its texts were sent and its chunk ids handed to libpq: a batch larger
     * than the requests in flight holds the texts only of those still to
     * answer (and of the few read ahead). */
    free(x->items[k].blob);
    free(x->items[k].ids);
    free(x->items[k].texts);
    x->items[k].blob = NULL;
    x->items[k].ids = x->items[k].texts = NULL;
}

/* Whether record i's job, as read without a lock (peek_jobs), would let
 * dp_docstage_ready go on: only those are sent.  A record of an upstream
 * batch is handed to the handler only once that batch committed, so the
 * unlocked read already sees what it wrote; the lock is taken after the
 * calls, and what it finds then decides (see embed_handle). */
static int worth_sending(const dp_record *rec, PGresult *jobs, const char *doc)
{
    for (int r = 0; jobs && r < PQntuples(jobs); r++) {
        if (strcasecmp(PQgetvalue(jobs, r, 0), doc) != 0)
            continue;
        const char *status = PQgetvalue(jobs, r, 1);
        long gen = strtol(PQgetvalue(jobs, r, 2), NULL, 10);
        if (rec->replay)
            return dp_status_in(status, embed_from) ||
                   dp_doc_replay_restarts(status, embed_from);
        return rec->generation == gen && dp_status_in(status, embed_from);
    }
    return 0;
}

/* The jobs of the batch's documents, read without locking them. */
static dp_err peek_jobs(PGconn *db, dp_batch *b, PGresult **out, char *err,
                        size_t errlen)
{
    dp_buf ids = {0};
    dp_buf_append(&ids, "{", 1);
    for (size_t i = 0; i < dp_batch_count(b); i++)
        dp_buf_appendf(&ids, "%s%s", i ? "," : "",
                       dp_msg_str(dp_docstage_msg(b, i), "document_id"));
    dp_buf_append(&ids, "}", 1);
    const char *params[1] = {ids.data};
    PGresult *res = dp_pg_execp(db,
        "SELECT document_id, status, generation FROM upload_pipeline.upload_jobs"
        " WHERE document_id = ANY ($1::uuid[])", 1, NULL, params, NULL, NULL, 0);
    dp_buf_free(&ids);
    dp_err e = dp_pg_check(db, res, PGRES_TUPLES_OK, "read job states", err, errlen);
    *out = e ? NULL : res;
    return e;
}

/* The batch's records, round robin over their partitions and in offset
 * order within each: the requests of a pass cut short by its deadline are
 * then a prefix of every partition's records, and the rest a suffix the
 * runtime can take back (dp_batch_leave).  Writes count indices to order. */
static void fair_order(dp_batch *b, size_t *order)
{
    size_t count = dp_batch_count(b), n = 0;
    char *taken = calloc(count + 1, 1);
    while (n < count) {
        int32_t done_parts[64];
        size_t nd = 0;
        for (size_t i = 0; i < count; i++) {
            if (taken[i])
                continue;
            int32_t p = dp_batch_record(b, i)->partition;
            int seen = 0;
            for (size_t k = 0; k < nd && !seen; k++)
                seen = done_parts[k] == p;
            if (seen)
                continue;
            /* this partition's lowest offset not taken yet */
            size_t best = i;
            for (size_t j = i + 1; j < count; j++)
                if (!taken[j] && dp_batch_record(b, j)->partition == p &&
                    dp_batch_record(b, j)->offset < dp_batch_record(b, best)->offset)
                    best = j;
            taken[best] = 1;
            order[n++] = best;
            if (nd < 64)
                done_parts[nd++] = p;
            else
                break;
        }
    }
    free(taken);
}

/* The pass's bound on sending: embed_pass_ms, and a quarter of the
 * consumer's max.poll.interval.ms and of the idle-transaction timeout, so
 * that the pass plus the answers in flight at its end stay well within
 * both (docs/design.md, "Fair shares and bounded passes"). */
static int64_t pass_budget_ms(const dp_config *cfg)
{
    int64_t ms = cfg->embed_pass_ms;
    int64_t poll = 300000;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char kerr[256], v[64];
    size_t vlen = sizeof(v);
    if (dp_config_apply_kafka(cfg, conf, 0, kerr, sizeof(kerr)) == DP_OK &&
        rd_kafka_conf_get(conf, "max.poll.interval.ms", v, &vlen) == RD_KAFKA_CONF_OK)
        poll = strtoll(v, NULL, 10);
    rd_kafka_conf_destroy(conf);
    if (poll / 4 < ms)
        ms = poll / 4;
    if (cfg->idle_txn_timeout_ms / 4 < ms)
        ms = cfg->idle_txn_timeout_ms / 4;
    return ms > 100 ? ms : 100;
}

static dp_err embed_handle(void *state, dp_batch *b, char *err, size_t errlen)
{
    dp_docstage *ds = state;
    embed_state *st = ds->impl;
    PGconn *db = dp_batch_db(b);
    size_t count = dp_batch_count(b), n = 0;
    embed_item *items = calloc(count + 1, sizeof(*items));
    dp_embed_job *jobs = calloc(count + 1, sizeof(*jobs));
    size_t *order = calloc(count + 1, sizeof(*order));
    long *job_of = malloc((count + 1) * sizeof(*job_of)); /* record -> job, -1 */
    dp_err e = DP_OK, run = DP_OK;
    int64_t t_start = dp_clock_mono_ms(NULL), t_sent = 0, t_answered = 0;
    store_ctx x = {0};
    PGresult *peek = NULL;

    /* No row lock while the service is called: the jobs are read without
     * one, the requests go out, and only then are the jobs locked and
     * moved (dp_docstage_ready, below), for the few ms to the commit.
     * Other embed instances and gather working on the same documents do
     * not wait for this pass's calls. */
    if ((e = peek_jobs(db, b, &peek, err, errlen)))
        goto out;
    fair_order(b, order);
    for (size_t o = 0; o < count; o++) {
        size_t i = order[o];
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        job_of[i] = -1;
        if (!worth_sending(dp_batch_record(b, i), peek, doc))
            continue;
        long long count_in = dp_msg_long(m, "count");
        if (count_in <= 0)
            continue; /* failed below, once its job is locked */
        /* The texts are read by prepare_job, when the request is sent. */
        items[n].rec = i;
        jobs[n].n = (size_t)count_in;
        job_of[i] = (long)n;
        n++;
    }
    PQclear(peek);

    dp_breaker *br = dp_embed_client_breaker(st->client);
    x = (store_ctx){db, ds, b, items, jobs, n, DP_OK, 0, 0, err, errlen};
    t_sent = dp_clock_mono_ms(NULL);
    if (n > 0)
        run = dp_embed_run_until(st->client, jobs, n, prepare_job, store_done, &x,
                                 t_sent + st->pass_ms);
    store_wait(&x);
    t_answered = dp_clock_mono_ms(NULL);
    if ((e = x.e))
        goto out;
    int open_now = dp_breaker_state_now(br) == DP_BREAKER_OPEN;
    /* Whether the service answered anything but a retryable failure in this
     * run: only then is a retryable failure the record's own. */
    int answered = 0, failed = 0;
    for (size_t k = 0; k < n; k++) {
        if (jobs[k].not_sent)
            continue;
        if (!jobs[k].texts && jobs[k].result == DP_ERR_PERMANENT)
            continue; /* its chunks were missing: nothing was asked */
        failed |= jobs[k].result == DP_ERR_RETRYABLE;
        answered |= jobs[k].result != DP_ERR_RETRYABLE;
    }
    int transient = run != DP_OK || (failed && open_now);
    if (failed && !transient && !answered)
        /* Every request failed: an outage, or records the service chokes
         * on?  Ask whether it is up (a "no" also counts on the breaker). */
        transient = !dp_embed_client_alive(st->client);
    if (transient) {
        /* The service is down: wait for it (the breaker opens after enough
         * of these), spend no record's budget.  So an outage that begins
         * with fewer records in flight than the breaker's threshold
         * dead-letters nothing either. */
        int64_t wait = dp_breaker_retry_in_ms(br);
        dp_batch_retry_after(b, wait > 0 ? wait : 1000);
        e = dp_errf(DP_ERR_RETRYABLE, err, errlen,
                    "embedding service unavailable (breaker %s): %s",
                    dp_breaker_state_name(dp_breaker_state_now(br)),
                    n ? jobs[0].error : "");
        goto out;
    }
    /* Now the jobs are locked (the first dp_docstage_ready reads them all),
     * in the same order.  Once a record of a partition is left for a later
     * pass, so are the ones after it: a partition goes back as a suffix. */
    int32_t left_parts[256];
    size_t nleft = 0;
    for (size_t o = 0; o < count; o++) {
        size_t i = order[o];
        const dp_record *rec = dp_batch_record(b, i);
        avro_value_t *m = dp_docstage_msg(b, i);
        const char *doc = dp_msg_str(m, "document_id");
        const char *corr = dp_msg_str(m, "correlation_id");
        long k = job_of[i];
        int after_left = 0;
        for (size_t q = 0; q < nleft && !after_left; q++)
            after_left = left_parts[q] == rec->partition;
        if (after_left || (k >= 0 && jobs[k].not_sent)) {
            /* At most 5 s: the next pass asks the limiter again, which keeps
             * the wait reported (dp_service_status, `docpipe wait`: "at its
             * rate limit") for as long as it lasts. */
            int64_t wait = k >= 0 && jobs[k].retry_after_ms > 0 ? jobs[k].retry_after_ms
                                                               : 100;
            if (wait > 5000)
                wait = 5000;
            dp_batch_leave(b, i, wait);
            if (!after_left && nleft < 256)
                left_parts[nleft++] = rec->partition;
            continue;
        }
        int go;
        if ((e = dp_docstage_ready(ds, b, i, doc, embed_from, &go, err, errlen)))
            goto out;
        if (!go) {
            if (k >= 0 && jobs[k].result == DP_OK) {
                /* Its vectors were stored, and the job moved on meanwhile
                 * (a replay, a failure elsewhere): the pass is undone and
                 * tried again, when the unlocked read sees the move. */
                dp_batch_retry_after(b, 500);
                e = dp_errf(DP_ERR_RETRYABLE, err, errlen,
                            "embed %s: the job moved while its batch was embedded", doc);
                goto out;
            }
            continue;
        }
        long long count_in = dp_msg_long(m, "count");
        if (count_in <= 0) {
            dp_batch_fail(b, i, DP_ERR_PERMANENT, "embed %s: batch names %lld chunks",
                          doc, count_in);
            continue;
        }
        if (k < 0) {
            /* Not sent: the unlocked read saw the job in another state than
             * the lock now does.  Another pass will embed it. */
            dp_batch_defer(b, i, 100, "embed %s: job state changed before its lock",
                           doc);
            continue;
        }
        if (jobs[k].result != DP_OK) {
            dp_batch_fail(b, i, jobs[k].result, "embed %s batch %lld: %s", doc,
                          (long long)dp_msg_long(m, "batch_index"), jobs[k].error);
            if (jobs[k].retry_after_ms > 0)
                dp_batch_retry_in(b, i, jobs[k].retry_after_ms);
            continue;
        }
        int batch_index = (int)dp_msg_long(m, "batch_index");
        int moved;
        if ((e = dp_docstage_transition(ds, b, doc, embed_from, "embedding_in_progress",
                                        "EMBED_BATCH_STORED", corr, NULL,
                                        &moved, err, errlen)))
            goto out;
        dp_field f[] = {DP_FS("document_id", doc),
                        DP_FS("job_id", dp_msg_str(m, "job_id")),
                        DP_FL("batch_index", batch_index),
                        DP_FL("batches_total", dp_msg_long(m, "batches_total")),
                        DP_FL("vectors", jobs[k].n), DP_FS("correlation_id", corr)};
        dp_docstage_emit(ds, b, i, ds->out_topic, "BatchEmbedded", doc, f, 6);
    }
out:
    if (t_answered && dp_log_enabled(DP_LOG_DEBUG)) {
        int64_t t_end = dp_clock_mono_ms(NULL);
        dp_logj(DP_LOG_DEBUG, NULL, json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "stage",
                "embed", "batches", (json_int_t)n, "prepare_ms",
                (json_int_t)(t_sent - t_start), "run_ms", (json_int_t)(t_answered - t_sent),
                "store_ms", (json_int_t)x.store_ms, "finish_ms",
                (json_int_t)(t_end - t_answered)), "embedded a Kafka batch");
    }
    free_items(items, jobs, n);
    free(order);
    free(job_of);
    return e;
}

dp_err dp_embed_open(const dp_config *cfg, dp_stage *stage, char *err,
                     size_t errlen)
{
    embed_state *st = calloc(1, sizeof(*st));
    dp_err e = dp_embed_client_new(cfg, &st->client, err, errlen);
    if (e) {
        free(st);
        return e;
    }
    st->pass_ms = pass_budget_ms(cfg);
    dp_docstage_spec spec = {"embed", "embed-batches", "EmbedBatch", "embedded",
                             "failed_embedding", 512, embed_handle};
    e = dp_docstage_init(cfg, &spec, st, stage, err, errlen);
    if (e) {
        dp_embed_client_free(st->client);
        free(st);
    }
    return e;
}

void dp_embed_close(dp_stage *stage)
{
    embed_state *st = dp_docstage_close(stage);
    if (!st)
        return;
    dp_embed_client_free(st->client);
    dp_buf_free(&st->vec);
    dp_buf_free(&st->ids);
    dp_buf_free(&st->shas);
    free(st);
}

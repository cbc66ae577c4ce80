/*
 * retry: sends failed documents through the pipeline again, after a fix.
 *
 * A document that failed permanently (a parser or embedding service that
 * refused it, a bad key, a bug since fixed) stays in its failed state and
 * its record sits on a dead-letter topic.  Replaying that topic is not
 * enough: for an embedding failure only the first failing batch is
 * dead-lettered (the document's other batches are skipped once it has
 * failed), and the runtime drops records at or below its deduplication
 * watermark.  So retry works from PostgreSQL instead: for each failed
 * document it builds, from the rows the stages left, the input record of
 * the stage to start again from, and publishes it keyed by the document:
 *
 *   failed_parse      -> parse-queued (ParseRequested): parse, then validate
 *   failed_chunking   -> validated (DocumentValidated): chunk
 *   failed_embedding  -> chunked (ChunksStored): embed-plan plans every
 *                        batch again (embed, gather or finalize failed)
 *
 * With --from STAGE the selected documents start again at that stage
 * whatever they ended in, complete included: a fix to the parser, the
 * chunker or the embedding model then reaches documents already done.
 * Documents still in flight are left alone.  Which documents: see
 * retry_select.h.
 *
 * The job goes back to the state that stage takes (parse_queued,
 * parse_validated, chunks_stored), so the document's events stay one chain
 * and a second retry finds nothing to do.  What the stages from there on
 * wrote for the document is removed first (its final rows, vectors,
 * stored-batch rows, and from parse or chunk its chunks), so a run that
 * makes fewer chunks, or other vectors, leaves nothing stale behind.  The
 * records carry no upstream stream header, so no watermark hides them
 * (like submit's uploads).  failed_upload is not retried: intake refused
 * the upload itself; submit the file again once it is fixed.
 *
 * Documents go in chunks (--batch, in document id order).  A chunk's job
 * rows are locked (FOR UPDATE) for its transaction; their rows removed,
 * state moved back, retry_count raised, a `retry` event recorded and the
 * run's cursor moved past the chunk (retry_runs.h) in that transaction,
 * which commits only once Kafka has acknowledged every record of the
 * chunk.  A stage that receives a record early waits on the lock, then
 * finds the state it takes.  (parse, chunk and embed-plan also take the
 * failed state itself, so a record published by a run that died before
 * its commit is not lost on them.)  If a record is not delivered, the
 * chunk rolls back and the command fails: run it again, and it continues
 * with that chunk (a record that did reach the topic only repeats work
 * that is idempotent).  SIGINT and SIGTERM end the command after the chunk
 * in hand.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "clock.h"
#include "config.h"
#include "docdb.h"
#include "docmsg.h"
#include "ids.h"
#include "pg.h"
#include "publish.h"
#include "retry_runs.h"
#include "retry_select.h"
#include "stages.h"

/* Where each failed state starts again. */
typedef struct retry_route {
    const char *failed;
    const char *queued; /* the state that stage takes: the job's, again */
    const char *stage;  /* the stage that takes the record */
    const char *topic;  /* its input topic (suffix) */
    const char *schema; /* the record's schema name */
} retry_route;

static const retry_route routes[] = {
    {"failed_parse", "parse_queued", "parse", "parse-queued", "ParseRequested"},
    {"failed_chunking", "parse_validated", "chunk", "validated", "DocumentValidated"},
    {"failed_embedding", "chunks_stored", "embed-plan", "chunked", "ChunksStored"},
    {NULL, NULL, NULL, NULL, NULL}};

static const retry_route *route_of(const char *status)
{
    for (const retry_route *r = routes; r->failed; r++)
        if (strcmp(r->failed, status) == 0)
            return r;
    return NULL;
}

/* --from's route: a stage's name ("embed" for embed-plan). */
static const retry_route *route_from(const char *stage)
{
    if (strcmp(stage, "embed") == 0)
        stage = "embed-plan";
    for (const retry_route *r = routes; r->failed; r++)
        if (strcmp(r->stage, stage) == 0)
            return r;
    return NULL;
}

/* The command's state while it works through a selection. */
typedef struct retry_cmd {
    const dp_config *cfg;
    dp_retry_sel *sel;
    const retry_route *from; /* --from's route, or NULL */
    dp_msgcodec *codec;
    dp_publisher *pub;       /* NULL for a dry run */
    PGconn *db;
    dp_retry_run run;
    int rc;                  /* 1 once a document could not be sent */
    long long done, sent, upload; /* this session's */
    long long total;         /* the run's documents, done and to do */
    int64_t progress_at;     /* when progress was last printed */
} retry_cmd;

/* One chunk's moves, gathered as its documents are sent: PostgreSQL array
 * literals for the statements that record them, and its output lines. */
typedef struct retry_chunk {
    dp_buf docs, stages, states, queued, rechunk, out;
    long long done, sent;
} retry_chunk;

/* Encodes the record that starts document d again at its route. */
static dp_err build_record(dp_msgcodec *codec, const retry_route *rt,
                           const dp_retry_doc *d, void **buf, size_t *len,
                           char *err, size_t errlen)
{
    if (strcmp(rt->stage, "parse") == 0) {
        dp_field f[] = {DP_FS("document_id", d->document_id),
                        DP_FS("job_id", d->job_id),
                        DP_FS("raw_path", d->raw_path), DP_FS("mime", d->mime),
                        DP_FS("correlation_id", d->correlation_id)};
        return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
    }
    if (strcmp(rt->stage, "chunk") == 0) {
        if (!d->parsed_path || !d->parsed_sha256) {
            snprintf(err, errlen, "no validated text is recorded");
            return DP_ERR_PERMANENT;
        }
        dp_field f[] = {DP_FS("document_id", d->document_id),
                        DP_FS("job_id", d->job_id),
                        DP_FS("parsed_path", d->parsed_path),
                        DP_FS("parsed_sha256", d->parsed_sha256),
                        DP_FS("correlation_id", d->correlation_id)};
        return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
    }
    dp_field f[] = {DP_FS("document_id", d->document_id), DP_FS("job_id", d->job_id),
                    DP_FS("chunker_version", d->chunks_version),
                    DP_FL("chunks_total", d->chunks),
                    DP_FS("correlation_id", d->correlation_id)};
    return dp_msg_encode(codec, rt->schema, f, 5, buf, len, err, errlen);
}

/* dp_pg_command, its failure reported; 0 on success. */
static int exec_cmd(PGconn *db, const char *what, const char *sql, int n,
                    const char *const *params)
{
    char err[1024];
    if (dp_pg_command(db, sql, n, params, what, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        return -1;
    }
    return 0;
}

/*
 * Sends one document through again: the record that starts it at the
 * stage its state calls for (or --from's) is published, and its move back
 * joins the chunk's, recorded when the chunk commits.  A document that is
 * not to be sent (refused at intake, in flight, not failed) is reported
 * and left alone.  Returns 1 when sent, 0 when left alone, -1 when the
 * record could not be handed to the producer (the chunk must not commit).
 */
static int send_again(retry_cmd *c, retry_chunk *ch, const dp_retry_doc *d)
{
    char err[1024];
    const retry_route *rt = route_of(d->status);
    if (c->from && (rt || strcmp(d->status, "complete") == 0))
        rt = c->from;
    if (!rt) {
        if (strcmp(d->status, "failed_upload") == 0) {
            fprintf(stderr, "docpipe retry: %s failed at intake (failed_upload):"
                    " submit the file again\n", d->document_id);
            c->upload++;
        } else
            fprintf(stderr, "docpipe retry: %s is %s (%s)\n", d->document_id,
                    c->from ? "in flight" : "not failed", d->status);
        if (c->sel->named)
            c->rc = 1;
        return 0;
    }
    void *buf = NULL;
    size_t len = 0;
    if (build_record(c->codec, rt, d, &buf, &len, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s (%s): %s\n", d->document_id, d->status, err);
        c->rc = 1;
        return 0;
    }
    if (!c->pub)
        free(buf);
    else {
        char *topic = dp_topic_name(c->cfg, rt->topic), gen[32];
        /* The document's next generation: work of the failed (or done)
         * one still in flight is discarded by the stages. */
        snprintf(gen, sizeof(gen), "%lld", d->generation + 1);
        const char *h[] = {"docpipe-correlation-id", d->correlation_id,
                           "docpipe-generation", gen, NULL};
        int bad = dp_publisher_send_headers(c->pub, topic, d->document_id,
                                            strlen(d->document_id), buf, len, h,
                                            err, sizeof(err));
        free(topic);
        if (bad) {
            fprintf(stderr, "docpipe retry: %s: %s\n", d->document_id, err);
            return -1;
        }
    }
    const char *sep = ch->sent ? "," : "";
    dp_buf_appendf(&ch->docs, "%s%s", sep, d->document_id);
    dp_buf_appendf(&ch->stages, "%s\"%s\"", sep, rt->stage);
    dp_buf_appendf(&ch->states, "%s%s", sep, d->status);
    dp_buf_appendf(&ch->queued, "%s%s", sep, rt->queued);
    if (strcmp(rt->stage, "embed-plan") != 0)
        dp_buf_appendf(&ch->rechunk, "%s%s", ch->rechunk.len > 1 ? "," : "",
                       d->document_id);
    dp_buf_appendf(&ch->out, "%s\t%s\t%s\n", d->document_id, d->status, rt->stage);
    ch->sent++;
    return 1;
}

/* In the chunk's transaction: what the stages from the restart on wrote is
 * removed, the jobs move back with their retry events. */
static int record_moves(retry_cmd *c, retry_chunk *ch)
{
    char run[32];
    snprintf(run, sizeof(run), "%lld", c->run.id);
    const char *p_rechunk[1] = {ch->rechunk.data};
    const char *p_docs[5] = {ch->docs.data, ch->stages.data, ch->states.data,
                             ch->queued.data, run};
    /* As a replay does (docdb.h): the final rows stay until finalize
     * replaces them, so the document stays searchable meanwhile. */
    char err[1024];
    if (dp_doc_clear_from(c->db, p_docs[0], "chunks_stored", err, sizeof(err)) ||
        dp_doc_clear_from(c->db, p_rechunk[0], "parse_validated", err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        return -1;
    }
    if (exec_cmd(c->db, "record retries",
                 "WITH r AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[],"
                 "   $4::text[]) AS r(document_id, stage, status, queued)),"
                 " j AS (UPDATE upload_pipeline.upload_jobs j SET status = r.queued,"
                 "   retry_count = j.retry_count + 1, updated_at = now(),"
                 "   generation = j.generation + 1,"
                 "   processing_completed_at = NULL"
                 "   FROM r WHERE j.document_id = r.document_id"
                 "   AND j.document_id = ANY ($1::uuid[])"
                 "   RETURNING j.job_id, j.document_id, j.retry_count, j.correlation_id),"
                 " d AS (UPDATE upload_pipeline.documents d SET processing_status ="
                 "   r.queued, updated_at = now() FROM r"
                 "   WHERE d.document_id = r.document_id"
                 "   AND d.document_id = ANY ($1::uuid[]))"
                 " INSERT INTO upload_pipeline.events (job_id, document_id, type,"
                 "   severity, code, stage, from_status, to_status, payload,"
                 "   correlation_id)"
                 " SELECT j.job_id, j.document_id, 'retry', 'info', 'JOB_RETRY_REQUESTED',"
                 "   'retry', r.status, r.queued, jsonb_build_object('retry_count',"
                 "   j.retry_count, 'restart_stage', r.stage, 'retry_run', $5::bigint),"
                 "   j.correlation_id"
                 " FROM j JOIN r USING (document_id)", 5, p_docs))
        return -1;
    return 0;
}

/* Named documents of the chunk (sorted, as its rows are) that it does not
 * hold: not there, or not chosen by the filters. */
static void report_missing(retry_cmd *c, const PGresult *res, size_t first,
                           size_t n)
{
    int r = 0, rows = PQntuples(res), filtered = c->sel->user[0] ||
        c->sel->nstates || c->sel->since || c->sel->until;
    for (size_t i = first; i < first + n; i++) {
        const char *name = c->sel->ids[i];
        while (r < rows && strcmp(PQgetvalue(res, r, 0), name) < 0)
            r++;
        if (r < rows && strcmp(PQgetvalue(res, r, 0), name) == 0)
            continue;
        fprintf(stderr, "docpipe retry: no document %s%s\n", name,
                filtered ? " chosen by --user, --state, --since and --until" : "");
        c->rc = 1;
    }
}

static void progress(retry_cmd *c, int force)
{
    int64_t now = dp_clock_mono_ms(NULL);
    if (!force && now - c->progress_at < 1000)
        return;
    c->progress_at = now;
    long long done = c->run.done + c->done, total = c->total;
    if (total < done)
        total = done;
    fprintf(stderr, "docpipe retry: %lld/%lld documents done (%lld%%), %lld %s\n",
            done, total, total ? done * 100 / total : 100, c->run.sent + c->sent,
            c->pub ? "sent again" : "would be sent again");
}

static void chunk_free(retry_chunk *ch)
{
    dp_buf *b[] = {&ch->docs, &ch->stages, &ch->states, &ch->queued, &ch->rechunk,
                   &ch->out};
    for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++)
        dp_buf_free(b[i]);
}

/*
 * The next chunk: read and locked, each document sent again, the moves
 * and the run's cursor recorded; committed once Kafka has acknowledged
 * every record (a dry run rolls back).  *end: the selection is done.
 * Returns 0, or 1 on a failure that rolled the chunk back.
 */
static int run_chunk(retry_cmd *c, int *end)
{
    char err[1024], last[DP_UUID_STR_SIZE];
    retry_chunk ch = {0};
    dp_buf *lists[] = {&ch.docs, &ch.stages, &ch.states, &ch.queued, &ch.rechunk};
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
        dp_buf_append(lists[i], "{", 1);
    dp_buf_append(&ch.out, "", 0);
    size_t first = 0, nnames = 0;
    dp_retry_bounds b = {c->run.after, c->run.since, c->run.until};
    PGresult *res = NULL;
    int rc = 1;
    if (exec_cmd(c->db, "begin", "BEGIN", 0, NULL))
        goto out;
    if (!(res = dp_retry_sel_chunk(c->db, c->sel, &b, last, end, &first, &nnames,
                                   err, sizeof(err)))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        goto out;
    }
    if (!last[0]) { /* nothing was left */
        *end = 1;
        snprintf(last, sizeof(last), "%s", c->run.after);
    }
    for (int r = 0; r < PQntuples(res); r++) {
        dp_retry_doc d;
        dp_retry_doc_read(res, r, &d);
        if (send_again(c, &ch, &d) < 0)
            goto out;
        ch.done++;
    }
    if (c->sel->named)
        report_missing(c, res, first, nnames);
    for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
        dp_buf_append(lists[i], "}", 1);
    if (!c->pub) {
        if (exec_cmd(c->db, "roll back", "ROLLBACK", 0, NULL))
            goto out;
    } else {
        if (ch.sent && record_moves(c, &ch))
            goto out;
        if (dp_retry_run_advance(c->db, &c->run, last, ch.done, ch.sent, *end, err,
                                 sizeof(err))) {
            fprintf(stderr, "docpipe retry: %s\n", err);
            goto out;
        }
        uint64_t lost = ch.sent ? dp_publisher_finish(c->pub, 60000, 5, err,
                                                      sizeof(err)) : 0;
        if (lost) {
            fprintf(stderr, "docpipe retry: %" PRIu64 " of %lld record(s) not"
                    " delivered (%s); this chunk is not recorded\n", lost, ch.sent,
                    err);
            goto out; /* rolls back */
        }
        if (exec_cmd(c->db, "commit", "COMMIT", 0, NULL))
            goto out;
    }
    fputs(ch.out.data, stdout);
    fflush(stdout);
    snprintf(c->run.after, sizeof(c->run.after), "%s", last);
    c->done += ch.done;
    c->sent += ch.sent;
    rc = 0;
out:
    if (rc)
        PQclear(PQexec(c->db, "ROLLBACK"));
    PQclear(res);
    chunk_free(&ch);
    return rc;
}

/* Checks --from and --state against the routes: 0, or 2 after a usage
 * error. */
static int check_selection(retry_cmd *c)
{
    dp_retry_sel *s = c->sel;
    if (s->from) {
        if (!(c->from = route_from(s->from))) {
            fprintf(stderr, "docpipe retry: --from takes parse, chunk or embed,"
                    " not '%s'\n", s->from);
            return 2;
        }
        s->from = c->from->stage;
    }
    for (int i = 0; i < s->nstates; i++) {
        const char *st = s->states[i];
        if (route_of(st) || (c->from && strcmp(st, "complete") == 0))
            continue;
        if (strcmp(st, "failed_upload") == 0)
            fprintf(stderr, "docpipe retry: --state failed_upload: intake refused"
                    " the upload itself; submit the file again\n");
        else if (strcmp(st, "complete") == 0)
            fprintf(stderr, "docpipe retry: --state complete needs --from (the"
                    " stage to send complete documents through again)\n");
        else
            fprintf(stderr, "docpipe retry: --state takes failed_parse,"
                    " failed_chunking or failed_embedding (with --from also"
                    " complete), not '%s'\n", st);
        return 2;
    }
    return 0;
}

/* The states a selection by filters or --all takes by default: the failed
 * ones (failed_upload only to say it is not retried), with --from the
 * complete ones too. */
static void default_states(retry_cmd *c)
{
    dp_retry_sel *s = c->sel;
    if (s->named || s->nstates)
        return;
    static const char *const failed[] = {"failed_chunking", "failed_embedding",
                                         "failed_parse", "failed_upload"};
    if (c->from)
        s->states[s->nstates++] = "complete";
    for (size_t i = 0; i < sizeof(failed) / sizeof(failed[0]); i++)
        s->states[s->nstates++] = failed[i];
}

int dp_cmd_retry(const dp_config *cfg, int argc, char **argv,
                 volatile sig_atomic_t *stop)
{
    dp_retry_sel sel;
    int rc = dp_retry_sel_parse(&sel, argc, argv, stdin);
    retry_cmd c = {.cfg = cfg, .sel = &sel};
    if (rc || (rc = check_selection(&c))) {
        dp_retry_sel_free(&sel);
        return rc == DP_RETRY_HELP ? 0 : rc;
    }
    dp_buf key = {0};
    dp_retry_sel_key(&sel, &key);
    default_states(&c);

    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-retry", &c.db, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        rc = 1;
        goto out;
    }
    if ((rc = dp_retry_run_bounds(c.db, sel.since, sel.until, &c.run, err,
                                  sizeof(err)))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        goto out;
    }
    if (dp_retry_run_open(c.db, key.data, sel.restart, sel.dry_run, &c.run, err,
                          sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        rc = 1;
        goto out;
    }
    if (c.run.resumed)
        fprintf(stderr, "docpipe retry: %s run %lld, after document %s (%lld done,"
                " %lld sent)\n", sel.dry_run ? "would continue" : "continuing",
                c.run.id, c.run.after, c.run.done, c.run.sent);
    if (dp_msgcodec_open(cfg->schema_dir, &c.codec, err, sizeof(err))) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        rc = 1;
        goto out;
    }
    if (!sel.dry_run) {
        rd_kafka_conf_t *conf = dp_publisher_conf(cfg, "5", "murmur2_random",
                                                  err, sizeof(err));
        char kerr[512];
        if (!conf || !(c.pub = dp_publisher_new(conf, kerr, sizeof(kerr)))) {
            fprintf(stderr, "docpipe retry: %s\n", conf ? kerr : err);
            rc = 1;
            goto out;
        }
    }
    dp_retry_bounds b = {c.run.after, c.run.since, c.run.until};
    long long left = dp_retry_sel_count(c.db, &sel, &b, err, sizeof(err));
    if (left < 0) {
        fprintf(stderr, "docpipe retry: %s\n", err);
        rc = 1;
        goto out;
    }
    c.total = c.run.done + left;
    c.progress_at = dp_clock_mono_ms(NULL);

    int end = 0, stopped = 0;
    while (!end) {
        if (*stop) {
            stopped = 1;
            break;
        }
        if (run_chunk(&c, &end)) {
            if (c.pub)
                fprintf(stderr, "docpipe retry: the chunk after document %s is not"
                        " recorded; run the same command again to continue run"
                        " %lld there\n", c.run.after, c.run.id);
            rc = 1;
            goto out;
        }
        if (!end)
            progress(&c, 0);
    }
    if (stopped) {
        progress(&c, 1);
        fprintf(stderr, "docpipe retry: stopped by a signal after document %s"
                " (run %lld): the same command continues it\n", c.run.after,
                c.run.id);
        rc = 1;
        goto out;
    }
    rc = c.rc;
    if (sel.dry_run)
        fprintf(stderr, "docpipe retry: %lld document(s) would be sent again, %lld"
                " failed at intake\n", c.sent, c.upload);
    else if (c.run.resumed)
        fprintf(stderr, "docpipe retry: %lld document(s) sent again, %lld failed"
                " at intake (run %lld: %lld sent in all)\n", c.sent, c.upload,
                c.run.id, c.run.sent + c.sent);
    else
        fprintf(stderr, "docpipe retry: %lld document(s) sent again, %lld failed"
                " at intake\n", c.sent, c.upload);
out:
    if (c.pub)
        dp_publisher_free(c.pub);
    if (c.db)
        PQfinish(c.db); /* an open transaction rolls back */
    dp_msgcodec_free(c.codec);
    dp_retry_sel_free(&sel);
    dp_buf_free(&key);
    return rc;
}

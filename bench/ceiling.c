/* ceiling: the pipeline's data work without the pipeline (see ceiling.h). */
#include "ceiling.h"

#include <libpq-fe.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "chunker.h"
#include "config.h"
#include "docdb.h"
#include "embed_client.h"
#include "ids.h"
#include "pg.h"


typedef struct cdoc {
    char id[DP_UUID_STR_SIZE], job[DP_UUID_STR_SIZE], corr[DP_UUID_STR_SIZE];
    char name[32];
    char raw[DP_STORAGE_PATH_SIZE], sha[65], psha[DP_SHA256_HEX_SIZE];
    size_t len;
    char *norm;                      /* the normalised text the chunks point into */
    dp_chunk_list chunks;
    char (*chunk_ids)[DP_UUID_STR_SIZE];
    const char **texts;
} cdoc;

static void cdoc_free(cdoc *d)
{
    free(d->norm);
    dp_chunk_list_free(&d->chunks);
    free(d->chunk_ids);
    free(d->texts);
    memset(d, 0, sizeof(*d));
}

/* Reads, stores, hashes, normalises and chunks document i. */
static int load_doc(const ceiling_opts *o, long i, cdoc *d, dp_storage_batch *sb,
                    char *err, size_t errlen)
{
    char path[1024];
    snprintf(d->name, sizeof(d->name), "doc-%06ld.md", i);
    snprintf(path, sizeof(path), "%s/%s", o->docs_dir, d->name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %.900s", path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *data = malloc((size_t)len + 1);
    size_t got = fread(data, 1, (size_t)len, f);
    fclose(f);
    if (len <= 0 || got != (size_t)len) {
        free(data);
        snprintf(err, errlen, "cannot read %.900s", path);
        return -1;
    }
    d->len = (size_t)len;
    dp_uuid4(d->id);
    dp_uuid4(d->job);
    dp_uuid4(d->corr);
    int rc = -1;
    if (dp_storage_write(sb, o->storage_dir, "raw", data, d->len, d->raw, d->sha, err,
                         errlen) ||
        dp_parsed_sha256(data, d->len, d->psha, err, errlen))
        goto out;
    d->norm = malloc(d->len + 1);
    size_t nlen = dp_normalize_text(data, d->len, d->norm);
    if (dp_chunk_markdown(d->norm, nlen, &d->chunks, err, errlen))
        goto out;
    size_t nc = d->chunks.count;
    d->chunk_ids = malloc(nc * sizeof(*d->chunk_ids));
    d->texts = malloc(nc * sizeof(*d->texts));
    for (size_t c = 0; c < nc; c++) {
        d->texts[c] = d->chunks.items[c].text;
        if (dp_chunk_id(d->id, DP_CHUNKER_NAME, DP_CHUNKER_DEFAULT_VERSION,
                        d->chunks.items[c].ord, d->chunk_ids[c], err, errlen))
            goto out;
    }
    rc = 0;
out:
    free(data);
    return rc;
}

static int run_sql(PGconn *db, const char *sql, int n, const char *const *params,
                   const char *what, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);
    ExecStatusType s = PQresultStatus(r);
    int ok = s == PGRES_COMMAND_OK || s == PGRES_TUPLES_OK;
    if (!ok)
        snprintf(err, errlen, "%s: %s", what, PQerrorMessage(db));
    PQclear(r);
    return ok ? 0 : -1;
}

/* One document's vectors into the vector buffer, as embed writes them. */
static int store_vectors(PGconn *db, const char *model, const cdoc *d,
                         const dp_embed_job *job, dp_buf *vec, dp_buf *ids,
                         dp_buf *shas, char *err, size_t errlen)
{
    size_t n = job->n, dim = (size_t)job->dim;
    dp_buf_reset(vec);
    dp_buf_reset(ids);
    dp_buf_reset(shas);
    dp_buf_float4_array(vec, job->vectors, n * dim);
    for (size_t k = 0; k < n; k++) {
        dp_buf_appendf(ids, "%s%s", k ? "," : "{", d->chunk_ids[k]);
        dp_buf_appendf(shas, "%s%s", k ? "," : "{", job->shas + k * DP_SHA256_HEX_SIZE);
    }
    dp_buf_append(ids, "}", 1);
    dp_buf_append(shas, "}", 1);
    char ds[16];
    snprintf(ds, sizeof(ds), "%zu", dim);
    const char *params[6] = {d->id, model, vec->data, ds, ids->data, shas->data};
    Oid types[6] = {0, 0, DP_FLOAT4_ARRAY_OID, 0, 0, 0};
    int lens[6] = {0, 0, (int)vec->len, 0, 0, 0};
    int fmts[6] = {0, 0, 1, 0, 0, 0};
    PGresult *r = PQexecParams(db,
        "INSERT INTO upload_pipeline.document_vector_buffer (document_id, chunk_id,"
        " embed_model, embed_version, batch_index, vector, vector_sha)"
        " SELECT $1::uuid, c.id, $2, '1', 0,"
        "   $3[(c.i - 1) * $4::int + 1 : c.i * $4::int], c.sha"
        " FROM unnest($5::uuid[], $6::text[]) WITH ORDINALITY AS c(id, sha, i)",
        6, types, params, lens, fmts, 0);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "store vectors: %s", PQerrorMessage(db));
    PQclear(r);
    return ok ? 0 : -1;
}

typedef struct group_bufs {
    dp_buf ids, names, lens, shas, pshas, raws, jobs, corrs, counts;
    dp_buf c_ids, c_docs, c_ords, c_shas, c_texts, c_metas;
    dp_buf vec, v_ids, v_shas;
} group_bufs;

#define N_GROUP_BUFS (sizeof(group_bufs) / sizeof(dp_buf))

static void open_arrays(group_bufs *gb)
{
    dp_buf *all = (dp_buf *)gb;
    for (size_t k = 0; k < N_GROUP_BUFS; k++) {
        dp_buf_reset(&all[k]);
        dp_buf_append(&all[k], "{", 1);
    }
}

static void close_arrays(group_bufs *gb)
{
    dp_buf *all = (dp_buf *)gb;
    for (size_t k = 0; k < N_GROUP_BUFS; k++)
        dp_buf_append(&all[k], "}", 1);
}

/* Every row of g documents, in one transaction. */
static int write_group(PGconn *db, dp_embed_client *ec, const char *model,
                       const ceiling_opts *o, cdoc *docs, size_t g, group_bufs *gb,
                       dp_embed_job *jobs, long *chunks, char *err, size_t errlen)
{
    open_arrays(gb);
    size_t nch = 0;
    for (size_t k = 0; k < g; k++) {
        const cdoc *d = &docs[k];
        const char *sep = k ? "," : "";
        dp_buf_appendf(&gb->ids, "%s%s", sep, d->id);
        dp_buf_appendf(&gb->names, "%s%s", sep, d->name);
        dp_buf_appendf(&gb->lens, "%s%zu", sep, d->len);
        dp_buf_appendf(&gb->shas, "%s%s", sep, d->sha);
        dp_buf_appendf(&gb->pshas, "%s%s", sep, d->psha);
        dp_buf_appendf(&gb->raws, "%s%s", sep, d->raw);
        dp_buf_appendf(&gb->jobs, "%s%s", sep, d->job);
        dp_buf_appendf(&gb->corrs, "%s%s", sep, d->corr);
        dp_buf_appendf(&gb->counts, "%s%zu", sep, d->chunks.count);
        for (size_t c = 0; c < d->chunks.count; c++, nch++) {
            const dp_chunk *ch = &d->chunks.items[c];
            const char *cs = nch ? "," : "";
            char meta[128];
            int ml = snprintf(meta, sizeof(meta),
                              "{\"start_line\": %zu, \"end_line\": %zu, \"type\": \"markdown\"}",
                              ch->start_line, ch->end_line);
            dp_buf_appendf(&gb->c_ids, "%s%s", cs, d->chunk_ids[c]);
            dp_buf_appendf(&gb->c_docs, "%s%s", cs, d->id);
            dp_buf_appendf(&gb->c_ords, "%s%u", cs, ch->ord);
            dp_buf_appendf(&gb->c_shas, "%s%s", cs, ch->sha256);
            dp_buf_append(&gb->c_texts, cs, strlen(cs));
            dp_buf_array_text(&gb->c_texts, ch->text, ch->text_len);
            dp_buf_append(&gb->c_metas, cs, strlen(cs));
            dp_buf_array_text(&gb->c_metas, meta, (size_t)ml);
        }
    }
    close_arrays(gb);
    *chunks += (long)nch;

    if (run_sql(db, "BEGIN", 0, NULL, "begin", err, errlen))
        return -1;
    const char *pd[7] = {o->user, gb->ids.data, gb->names.data, gb->lens.data,
                         gb->shas.data, gb->pshas.data, gb->raws.data};
    if (run_sql(db,
            "INSERT INTO upload_pipeline.documents (document_id, user_id, filename,"
            " mime, bytes_len, file_sha256, parsed_sha256, raw_path, parsed_path,"
            " processing_status)"
            " SELECT d, $1::uuid, f, 'text/markdown', l, s, p, r, r, 'chunks_stored'"
            " FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::text[], $6::text[],"
            "   $7::text[]) AS t(d, f, l, s, p, r)",
            7, pd, "insert documents", err, errlen))
        return -1;
    const char *pj[6] = {o->user, gb->jobs.data, gb->ids.data, gb->raws.data,
                         gb->pshas.data, gb->corrs.data};
    if (run_sql(db,
            "INSERT INTO upload_pipeline.upload_jobs (job_id, user_id, document_id,"
            " status, raw_path, parsed_path, parsed_sha256, correlation_id,"
            " processing_started_at)"
            " SELECT j, $1::uuid, d, 'chunks_stored', r, r, p, c, now()"
            " FROM unnest($2::uuid[], $3::uuid[], $4::text[], $5::text[], $6::uuid[])"
            "   AS t(j, d, r, p, c)",
            6, pj, "insert jobs", err, errlen))
        return -1;
    const char *pc[6] = {gb->c_ids.data, gb->c_docs.data, gb->c_ords.data,
                         gb->c_shas.data, gb->c_texts.data, gb->c_metas.data};
    if (run_sql(db,
            "INSERT INTO upload_pipeline.document_chunk_buffer (chunk_id, document_id,"
            " chunk_ord, chunker_name, chunker_version, chunk_sha, text, meta)"
            " SELECT u.id, u.doc, u.ord, 'markdown-simple', 'markdown-simple@1', u.sha,"
            "   u.txt, u.meta::jsonb"
            " FROM unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::text[],"
            "   $6::text[]) AS u(id, doc, ord, sha, txt, meta)",
            6, pc, "insert chunks", err, errlen))
        return -1;

    for (size_t k = 0; k < g; k++) {
        memset(&jobs[k], 0, sizeof(jobs[k]));
        jobs[k].texts = docs[k].texts;
        jobs[k].n = docs[k].chunks.count;
    }
    dp_embed_run(ec, jobs, g);
    int failed = 0;
    for (size_t k = 0; k < g; k++) {
        if (!failed && jobs[k].result != DP_OK) {
            snprintf(err, errlen, "embed %s: %s", docs[k].name, jobs[k].error);
            failed = 1;
        }
        if (!failed && store_vectors(db, model, &docs[k], &jobs[k], &gb->vec,
                                     &gb->v_ids, &gb->v_shas, err, errlen))
            failed = 1;
        free(jobs[k].vectors);
        free(jobs[k].shas);
        jobs[k].vectors = NULL;
        jobs[k].shas = NULL;
    }
    if (failed)
        return -1;

    const char *pb[2] = {gb->ids.data, gb->counts.data};
    if (run_sql(db,
            "INSERT INTO upload_pipeline.embedding_batches (document_id, batch_index,"
            " vectors) SELECT d, 0, n FROM unnest($1::uuid[], $2::int[]) AS t(d, n)",
            2, pb, "insert embedding batches", err, errlen))
        return -1;
    const char *pp[2] = {gb->ids.data, model};
    if (run_sql(db,
            DP_SQL_PROMOTE_CHUNKS
            " WHERE c.document_id = ANY ($1::uuid[])",
            2, pp, "promote chunks", err, errlen))
        return -1;
    if (run_sql(db,
            "UPDATE upload_pipeline.documents SET processing_status = 'complete',"
            " updated_at = now() WHERE document_id = ANY ($1::uuid[])",
            1, pb, "complete documents", err, errlen) ||
        run_sql(db,
            "UPDATE upload_pipeline.upload_jobs j SET status = 'complete',"
            " embed_batches_total = 1, processing_completed_at = now(),"
            " updated_at = now(), progress = jsonb_build_object('parse',"
            "   jsonb_build_object('parser', 'none'), 'chunk',"
            "   jsonb_build_object('chunks', t.n), 'finalize',"
            "   jsonb_build_object('chunks', t.n))"
            " FROM unnest($1::uuid[], $2::int[]) AS t(d, n) WHERE j.document_id = t.d",
            2, pb, "complete jobs", err, errlen))
        return -1;
    if (run_sql(db,
            "INSERT INTO upload_pipeline.events (job_id, document_id, type, severity,"
            " code, stage, from_status, to_status, correlation_id)"
            " SELECT j.job_id, j.document_id, s.type, 'info', s.code, s.stage, s.f,"
            "   s.t, j.correlation_id"
            " FROM upload_pipeline.upload_jobs j CROSS JOIN (VALUES"
            "   (1, 'stage_done', 'UPLOAD_ACCEPTED', 'intake', 'uploaded', 'parse_queued'),"
            "   (2, 'stage_done', 'PARSED', 'parse', 'parse_queued', 'parsed'),"
            "   (3, 'stage_done', 'PARSE_VALIDATED', 'validate', 'parsed', 'parse_validated'),"
            "   (4, 'stage_done', 'CHUNKING', 'chunk', 'parse_validated', 'chunking'),"
            "   (5, 'stage_done', 'CHUNKS_STORED', 'chunk', 'chunking', 'chunks_stored'),"
            "   (6, 'stage_done', 'EMBED_PLANNED', 'embed-plan', 'chunks_stored',"
            "     'embedding_queued'),"
            "   (7, 'stage_done', 'EMBED_BATCH_STORED', 'embed', 'embedding_queued',"
            "     'embedding_in_progress'),"
            "   (8, 'stage_done', 'EMBEDDINGS_STORED', 'gather', 'embedding_in_progress',"
            "     'embeddings_stored'),"
            "   (9, 'finalized', 'COMPLETE', 'finalize', 'embeddings_stored', 'complete'))"
            "   AS s(k, type, code, stage, f, t)"
            " WHERE j.document_id = ANY ($1::uuid[]) ORDER BY j.document_id, s.k",
            1, pb, "insert events", err, errlen))
        return -1;
    return run_sql(db, "COMMIT", 0, NULL, "commit", err, errlen);
}

static double proc_cpu_seconds(int pid)
{
    return pid > 0 ? bench_cpu_seconds((pid_t)pid) : -1;
}

/* One worker: documents w, w + workers, ...; reports "chunks backend_cpu"
 * or "error: ..." on fd. */
static int worker(const ceiling_opts *o, int w, int fd)
{
    char err[1024] = "";
    dp_config cfg;
    dp_embed_client *ec = NULL;
    PGconn *db = NULL;
    long chunks = 0;
    int rc = -1;
    size_t gmax = (size_t)o->group;
    cdoc *docs = calloc(gmax, sizeof(*docs));
    dp_embed_job *jobs = calloc(gmax, sizeof(*jobs));
    group_bufs gb;
    memset(&gb, 0, sizeof(gb));
    memset(&cfg, 0, sizeof(cfg));

    setenv("DOCPIPE_EMBED_URL", o->embed_url, 1);
    setenv("DOCPIPE_EMBED_TPM", "1000000000", 1);
    setenv("DOCPIPE_EMBED_RPM", "100000000", 1);
    if (dp_config_load(&cfg, err, sizeof(err)) ||
        dp_embed_client_new(&cfg, &ec, err, sizeof(err)))
        goto out;
    db = PQconnectdb(o->dburl);
    if (PQstatus(db) != CONNECTION_OK) {
        snprintf(err, sizeof(err), "%s", PQerrorMessage(db));
        goto out;
    }
    long stride = o->workers;
    for (long i = w; i < o->n;) {
        dp_storage_batch sb = {0};
        size_t g = 0;
        int bad = 0;
        for (; i < o->n && g < gmax; i += stride, g++)
            if (load_doc(o, i, &docs[g], &sb, err, sizeof(err))) {
                bad = 1;
                g++;
                break;
            }
        if (!bad && dp_storage_sync(&sb, err, sizeof(err)))
            bad = 1;
        dp_storage_discard(&sb);
        if (!bad && write_group(db, ec, cfg.embed_model, o, docs, g, &gb, jobs, &chunks,
                                err, sizeof(err))) {
            bad = 1;
            PQclear(PQexec(db, "ROLLBACK"));
        }
        for (size_t k = 0; k < g; k++)
            cdoc_free(&docs[k]);
        if (bad)
            goto out;
    }
    rc = 0;
out:;
    char line[1200];
    int len = rc == 0
        ? snprintf(line, sizeof(line), "%ld %.3f\n", chunks,
                   proc_cpu_seconds(db ? PQbackendPID(db) : 0))
        : snprintf(line, sizeof(line), "error: worker %d: %s\n", w, err);
    if (write(fd, line, (size_t)len) != len)
        rc = -1;
    dp_buf *all = (dp_buf *)&gb;
    for (size_t k = 0; k < N_GROUP_BUFS; k++)
        dp_buf_free(&all[k]);
    free(docs);
    free(jobs);
    if (db)
        PQfinish(db);
    dp_embed_client_free(ec);
    dp_config_free(&cfg);
    return rc;
}

int ceiling_run(const ceiling_opts *o, ceiling_result *r, char *err, size_t errlen)
{
    memset(r, 0, sizeof(*r));
    if (o->workers < 1 || o->workers > 64 || o->group < 1) {
        snprintf(err, errlen, "ceiling: bad workers or group");
        return -1;
    }
    pid_t pids[64];
    int fds[64];
    fflush(NULL);
    double t0 = bench_now();
    int started = 0, rc = 0;
    for (int w = 0; w < o->workers; w++) {
        int p[2];
        if (pipe(p)) {
            snprintf(err, errlen, "ceiling: pipe failed");
            rc = -1;
            break;
        }
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid == 0) {
            prctl(PR_SET_PDEATHSIG, SIGTERM);
            if (getppid() != parent)
                _exit(127);
            close(p[0]);
            _exit(worker(o, w, p[1]) == 0 ? 0 : 1);
        }
        close(p[1]);
        if (pid < 0) {
            close(p[0]);
            snprintf(err, errlen, "ceiling: fork failed");
            rc = -1;
            break;
        }
        pids[started] = pid;
        fds[started++] = p[0];
    }
    r->backend_cpu_s = 0;
    for (int k = 0; k < started; k++) {
        char line[1200] = "";
        ssize_t got = 0, n;
        while (got < (ssize_t)sizeof(line) - 1 &&
               (n = read(fds[k], line + got, sizeof(line) - 1 - (size_t)got)) > 0)
            got += n;
        line[got > 0 ? got : 0] = '\0';
        close(fds[k]);
        int st;
        struct rusage ru;
        if (wait4(pids[k], &st, 0, &ru) == pids[k])
            r->worker_cpu_s += (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                               (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        long ch = 0;
        double cpu = -1;
        if (WIFEXITED(st) && WEXITSTATUS(st) == 0 &&
            sscanf(line, "%ld %lf", &ch, &cpu) == 2) {
            r->chunks += ch;
            if (cpu < 0 || r->backend_cpu_s < 0)
                r->backend_cpu_s = -1;
            else
                r->backend_cpu_s += cpu;
        } else if (rc == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(err, errlen, "%s", *line ? line : "ceiling: a worker died");
            rc = -1;
        }
    }
    r->span_s = bench_now() - t0;
    if (rc == 0) {
        r->docs = o->n;
        r->docs_s = r->span_s > 0 ? (double)o->n / r->span_s : 0;
    }
    return rc;
}

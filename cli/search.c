/*
 * search: `docpipe search "text" [--k N] [--user UUID] [--json]`, the chunks
 * nearest to a text.
 *
 * The query is embedded by the same client the embed stage uses
 * (stages/embed_client.h: embed_url, embed_model, embed_dim, its breaker
 * and rate limit), so query and chunks are vectors of one model.  Scoring
 * is exact: the cosine of the query with every final vector of that model
 * (upload_pipeline.document_chunks.embedding, a real[]).  The vectors stream
 * from PostgreSQL in binary, a row at a time, and are scored in C with the
 * top k kept on the side (cli/search_score.c; measured against scoring in
 * SQL in docs/benchmarks.md, "Search"); texts and file names are read for
 * the k winners alone.  Its cost grows with the number of chunks;
 * pgvector's index would make it
 * sublinear, but pgvector is not packaged for Debian 12 (see
 * docs/operations.md, "Search").
 *
 * Output: one line per chunk, best first:
 *   rank<TAB>score<TAB>document_id<TAB>chunk_ord<TAB>file<TAB>snippet
 * (file escaped as submit does; the snippet's whitespace folded to single
 * spaces, at most 100 characters), or with --json an array of
 * {rank, score, document_id, chunk_ord, file, snippet}.  Exit 0 (also
 * when nothing matches), 1 when the embedding service or the database
 * failed, 2 for a usage error.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cli.h"
#include "embed_client.h"
#include "ids.h"
#include "pg.h"
#include "search_sql.h"

static void usage_search(FILE *out)
{
    fprintf(out,
        "usage: docpipe search [--k N] [--user UUID] [--json] TEXT\n"
        "  the chunks nearest to TEXT by cosine similarity of their embeddings\n"
        "  (TEXT embedded with embed_model at embed_url), best first:\n"
        "  rank, score, document, chunk ordinal, file name, snippet\n"
        "  --k N        how many (10; 1..1000)\n"
        "  --user UUID  only that user's documents\n"
        "  --json       an array of {rank, score, document_id, chunk_ord, file,\n"
        "               snippet}\n");
}

static void print_escaped(const char *s)
{
    for (const char *c = s; *c; c++) {
        switch (*c) {
        case '\t': fputs("\\t", stdout); break;
        case '\n': fputs("\\n", stdout); break;
        case '\r': fputs("\\r", stdout); break;
        case '\\': fputs("\\\\", stdout); break;
        default: putchar(*c);
        }
    }
}

/* Embeds text as a chunk would be; the vector is malloc'd (caller frees). */
static int embed_query(const dp_config *cfg, const char *text, float **vec, int *dim)
{
    char err[1024];
    dp_embed_client *c;
    if (dp_embed_client_new(cfg, &c, err, sizeof(err))) {
        fprintf(stderr, "docpipe search: embedding client: %s\n", err);
        return 1;
    }
    const char *texts[1] = {text};
    dp_embed_job job = {.texts = texts, .n = 1};
    dp_embed_run(c, &job, 1);
    dp_embed_client_free(c);
    if (job.result != DP_OK) {
        fprintf(stderr, "docpipe search: embedding the query with %s at %s failed"
                " (%s): %s\n", cfg->embed_model, cfg->embed_url,
                dp_err2str(job.result), job.error);
        free(job.vectors);
        free(job.shas);
        return 1;
    }
    free(job.shas);
    *vec = job.vectors;
    *dim = job.dim;
    return 0;
}

/* argv[0] is the command's name. */
int dp_cmd_search(const dp_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"k", required_argument, NULL, 'k'}, {"user", required_argument, NULL, 'u'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *user = "";
    int k = 10, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "hk:", opts, NULL)) != -1) {
        switch (c) {
        case 'k': {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 1 || v > 1000) {
                fprintf(stderr, "docpipe search: --k '%s' is not a number from 1"
                        " to 1000\n", optarg);
                return DP_EXIT_USAGE;
            }
            k = (int)v;
            break;
        }
        case 'u': user = optarg; break;
        case 'j': json = 1; break;
        case 'h': usage_search(stdout); return DP_EXIT_OK;
        default: usage_search(stderr); return DP_EXIT_USAGE;
        }
    }
    uint8_t raw[16];
    if (*user && dp_uuid_parse(user, raw) != 0) {
        fprintf(stderr, "docpipe search: user id '%s' is not a UUID\n", user);
        return DP_EXIT_USAGE;
    }
    int rest = argc - optind;
    const char *text = rest == 1 ? argv[optind] : NULL;
    if (!text || !*text || strspn(text, " \t\r\n") == strlen(text)) {
        fprintf(stderr, "docpipe search: %s\n", rest > 1 ? "one TEXT only (quote it)"
                                                         : "TEXT to search for is missing");
        usage_search(stderr);
        return DP_EXIT_USAGE;
    }

    float *vec;
    int dim;
    if (embed_query(cfg, text, &vec, &dim))
        return DP_EXIT_FAILED;
    double norm = 0;
    for (int i = 0; i < dim; i++)
        norm += (double)vec[i] * vec[i];
    if (norm == 0) {
        fprintf(stderr, "docpipe search: the embedding service gave the query a zero"
                " vector: no direction to compare\n");
        free(vec);
        return DP_EXIT_FAILED;
    }
    char err[1024];
    PGconn *db;
    if (dp_pg_connect(cfg, "docpipe-search", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe search: %s\n", err);
        free(vec);
        return DP_EXIT_FAILED;
    }
    /* Only vectors of the query's model and dimension are comparable. */
    dp_search_hit *hits = calloc((size_t)k, sizeof(*hits));
    int nhits = 0;
    int failed = dp_search_topk(db, cfg->embed_model, user, vec, dim, k, hits, &nhits,
                                err, sizeof(err));
    free(vec);
    if (failed) {
        fprintf(stderr, "docpipe search: %s\n", err);
        free(hits);
        PQfinish(db);
        return DP_EXIT_FAILED;
    }
    /* The winners' documents, file names and snippets. */
    dp_buf ids = {0};
    dp_buf_append(&ids, "{", 1);
    for (int i = 0; i < nhits; i++) {
        if (i)
            dp_buf_append(&ids, ",", 1);
        dp_buf_append(&ids, hits[i].chunk_id, strlen(hits[i].chunk_id));
    }
    dp_buf_append(&ids, "}", 1);
    const char *params[1] = {ids.data};
    PGresult *res = dp_pg_execp(db,
        "SELECT f.chunk_id::text, f.document_id::text, d.filename, f.chunk_ord,"
        "   left(btrim(regexp_replace(f.text, '\\s+', ' ', 'g')), 100)"
        " FROM upload_pipeline.document_chunks f"
        " JOIN upload_pipeline.documents d ON d.document_id = f.document_id"
        " WHERE f.chunk_id = ANY ($1::uuid[])", 1, NULL, params, NULL, NULL, 0);
    dp_buf_free(&ids);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read the chunks found", err, sizeof(err))) {
        fprintf(stderr, "docpipe search: %s\n", err);
        free(hits);
        PQfinish(db);
        return DP_EXIT_FAILED;
    }
    json_t *arr = json ? json_array() : NULL;
    int rank = 0;
    for (int h = 0; h < nhits; h++) {
        int r = 0; /* a chunk removed since it was scored is left out */
        while (r < PQntuples(res) && strcmp(PQgetvalue(res, r, 0), hits[h].chunk_id))
            r++;
        if (r == PQntuples(res))
            continue;
        const char *doc = PQgetvalue(res, r, 1), *file = PQgetvalue(res, r, 2);
        const char *ord = PQgetvalue(res, r, 3), *snip = PQgetvalue(res, r, 4);
        double score = hits[h].score;
        rank++;
        if (json) {
            json_array_append_new(arr, json_pack("{s:i,s:f,s:s,s:i,s:s,s:s}",
                "rank", rank, "score", score, "document_id", doc, "chunk_ord",
                atoi(ord), "file", file, "snippet", snip));
        } else {
            printf("%d\t%.4f\t%s\t%s\t", rank, score, doc, ord);
            print_escaped(file);
            putchar('\t');
            print_escaped(snip);
            putchar('\n');
        }
    }
    free(hits);
    PQclear(res);
    PQfinish(db);
    if (json) {
        json_dumpf(arr, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(arr);
    }
    return fflush(stdout) != 0 ? DP_EXIT_FAILED : DP_EXIT_OK;
}

/*
 * bench_search: query latency of `docpipe search`'s exact scoring at a
 * given number of stored chunks.
 *
 *   bench_search [--chunks N] [--dim D] [--sql-queries Q] [--client-queries C]
 *
 * Fills upload_pipeline.document_chunks with N chunks (100 per document,
 * documents of one user of its own) of random unit-free vectors of D
 * dimensions under a model name of its own ("bench-search"), generated
 * inside PostgreSQL (in a database of its own, docpipe_bench_search,
 * migrated, dropped at the end), then times Q queries of random vectors through
 * DP_SQL_SEARCH_EXACT (cli/search_sql.h: scored in SQL,
 * k = 10) and prints median and p95, then C queries through
 * dp_search_topk (cli/search_score.c: vectors streamed in binary and
 * scored in C, what `docpipe search` runs).  The embedding service is not involved: one query's
 * embedding is one request, measured elsewhere (docs/benchmarks.md).
 *
 * Settings as docpipe reads them (DOCPIPE_DATABASE_URL).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "../cli/search_sql.h"
#include "bench_util.h"
#include "config.h"
#include "migrate.h"
#include "pg.h"

#define BENCH_USER "00000000-0000-4000-8000-00000000be5c"
#define BENCH_MODEL "bench-search"
#define BENCH_DB "docpipe_bench_search"

static void die_pg(PGconn *db, PGresult *res, const char *what)
{
    fprintf(stderr, "bench_search: %s: %s", what, PQerrorMessage(db));
    PQclear(res);
    PQfinish(db);
    exit(1);
}

static void run(PGconn *db, const char *sql, int n, const char *const *p, const char *what)
{
    PGresult *res = PQexecParams(db, sql, n, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK)
        die_pg(db, res, what);
    PQclear(res);
}

static double frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*s >> 11) / 9007199254740992.0 - 0.5;
}

static double pct(double *v, int n, double p)
{
    qsort(v, (size_t)n, sizeof(double), bench_cmp_double);
    int i = (int)ceil(p * n) - 1;
    return v[i < 0 ? 0 : i];
}

int main(int argc, char **argv)
{
    long chunks = 100000;
    int dim = 1536, queries = 20, client_queries = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--sql-queries") || !strcmp(argv[i], "--queries"))
            queries = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--chunks"))
            chunks = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--dim"))
            dim = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--client-queries"))
            client_queries = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: bench_search [--chunks N] [--dim D] [--sql-queries Q]"
                    " [--client-queries C]\n");
            return 2;
        }
    }
    if (chunks < 100 || dim < 1 || queries < 0 || client_queries < 0 ||
        queries + client_queries < 1) {
        fprintf(stderr, "bench_search: --chunks >= 100, --dim >= 1, some queries\n");
        return 2;
    }
    dp_config cfg;
    char err[1024];
    if (dp_config_load(&cfg, err, sizeof(err))) {
        fprintf(stderr, "bench_search: %s\n", err);
        return 2;
    }
    /* A database of its own, so the figures are of N chunks and not of
     * whatever else the server's table holds (a scan reads every row). */
    PGconn *admin;
    if (dp_pg_connect(&cfg, "bench-search", &admin, err, sizeof(err))) {
        fprintf(stderr, "bench_search: %s\n", err);
        return 1;
    }
    PQclear(PQexec(admin, "SET client_min_messages = warning"));
    PQclear(PQexec(admin, "DROP DATABASE IF EXISTS " BENCH_DB));
    run(admin, "CREATE DATABASE " BENCH_DB, 0, NULL, "create " BENCH_DB);
    const char *keys[] = {"dbname", "dbname", "application_name", NULL};
    const char *vals[] = {cfg.database_url, BENCH_DB, "bench-search", NULL};
    PGconn *db = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(db) != CONNECTION_OK)
        die_pg(db, NULL, "connect to " BENCH_DB);
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s/sql", cfg.schema_dir);
    if (dp_migrate(db, dir, NULL, NULL, err, sizeof(err))) {
        fprintf(stderr, "bench_search: migrate: %s\n", err);
        return 1;
    }

    /* Documents of 100 chunks each; each vector random, made by the
     * server (the lateral subquery refers to the row, so it runs per row). */
    char docs_s[32], dim_s[16], chunks_s[32];
    snprintf(docs_s, sizeof(docs_s), "%ld", chunks / 100);
    snprintf(dim_s, sizeof(dim_s), "%d", dim);
    snprintf(chunks_s, sizeof(chunks_s), "%ld", chunks);
    double t0 = bench_now();
    const char *pd[2] = {BENCH_USER, docs_s};
    run(db, "INSERT INTO upload_pipeline.documents (document_id, user_id, filename, mime,"
            " bytes_len, file_sha256, raw_path)"
            " SELECT md5('bench-search-doc' || g)::uuid, $1::uuid, 'bench-' || g || '.md',"
            " 'text/markdown', 1, md5('bench-search-doc' || g), 'storage://raw/bench'"
            " FROM generate_series(1, $2::int) g", 2, pd, "insert documents");
    const char *pc[2] = {chunks_s, dim_s};
    run(db, "INSERT INTO upload_pipeline.document_chunks (chunk_id, document_id,"
            " chunker_name, chunker_version, chunk_ord, text, chunk_sha, embed_model,"
            " embed_version, embedding, vector_dim, vector_sha)"
            " SELECT md5('bench-search-chunk' || g)::uuid,"
            " md5('bench-search-doc' || (g / 100 + 1))::uuid, 'bench', '1', g % 100,"
            " 'chunk ' || g, '', '" BENCH_MODEL "', '1', v.e, $2::int, ''"
            " FROM generate_series(0, $1::int - 1) g CROSS JOIN LATERAL"
            " (SELECT array_agg((random() - 0.5)::real) AS e"
            "  FROM generate_series(1, $2::int) WHERE g >= 0) v", 2, pc, "insert chunks");
    run(db, "VACUUM ANALYZE upload_pipeline.document_chunks", 0, NULL, "vacuum");
    double fill = bench_now() - t0;
    printf("bench_search: %ld chunks of %d dimensions stored in %.1f s\n", chunks, dim,
           fill);

    uint64_t seed = 42;
    size_t cap = (size_t)dim * 20 + 3;
    char *lit = malloc(cap);
    float *q = malloc((size_t)dim * sizeof(float));
    double *lat = malloc((size_t)(queries > client_queries ? queries : client_queries) *
                         sizeof(double) + 1);
    char norm_s[40];
    for (int r = 0; r < queries; r++) {
        size_t len = 0;
        double ss = 0;
        lit[len++] = '{';
        for (int i = 0; i < dim; i++) {
            q[i] = (float)frand(&seed);
            ss += (double)q[i] * q[i];
            len += (size_t)snprintf(lit + len, cap - len, "%s%.9g", i ? "," : "", q[i]);
        }
        lit[len++] = '}';
        lit[len] = '\0';
        snprintf(norm_s, sizeof(norm_s), "%.17g", sqrt(ss));
        const char *p[6] = {lit, BENCH_MODEL, "", norm_s, dim_s, "10"};
        double s = bench_now();
        PGresult *res = PQexecParams(db, DP_SQL_SEARCH_EXACT, 6, NULL, p, NULL, NULL, 0);
        lat[r] = bench_now() - s;
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 10)
            die_pg(db, res, "search");
        PQclear(res);
    }
    double med = queries ? bench_median(lat, queries) : 0;
    double p95 = queries ? pct(lat, queries, 0.95) : 0;
    if (queries)
        printf("bench_search: exact in PostgreSQL, k=10, %d queries: median %.0f ms,"
           " p95 %.0f ms (%.0f chunks/s)\n", queries, med * 1e3, p95 * 1e3,
           (double)chunks / med);

    /* What the command does: every vector streamed to the client in
     * binary and scored in C (cli/search_score.c). */
    dp_search_hit hits[10];
    for (int r = 0; r < client_queries; r++) {
        for (int i = 0; i < dim; i++)
            q[i] = (float)frand(&seed);
        int n = 0;
        double s = bench_now();
        if (dp_search_topk(db, BENCH_MODEL, "", q, dim, 10, hits, &n, err, sizeof(err)) ||
            n != 10) {
            fprintf(stderr, "bench_search: %s\n", err);
            return 1;
        }
        lat[r] = bench_now() - s;
    }
    if (client_queries > 0)
        printf("bench_search: streamed and scored in C (docpipe search), k=10, %d queries:"
               " median %.0f ms, p95 %.0f ms\n", client_queries,
               bench_median(lat, client_queries) * 1e3, pct(lat, client_queries, 0.95) * 1e3);
    free(lit);
    free(q);
    free(lat);
    PQfinish(db);
    run(admin, "DROP DATABASE " BENCH_DB, 0, NULL, "drop " BENCH_DB);
    PQfinish(admin);
    dp_config_free(&cfg);
    return 0;
}

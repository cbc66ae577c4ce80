/*
 * search_sql: how `docpipe search` scores chunks, shared by cli/search.c and
 * bench/bench_search.c so the benchmark measures what the command runs.
 *
 * Exact cosine over every final vector of the model and dimension.  Two
 * ways, measured (docs/benchmarks.md, "Search"):
 *  - dp_search_topk (cli/search_score.c), what the command uses: the
 *    vectors stream to the client in PostgreSQL's binary array form, one
 *    row at a time (memory: one row), and are scored in C with a top-k
 *    kept on the side.  PostgreSQL only reads and sends.
 *  - DP_SQL_SEARCH_EXACT: scored inside PostgreSQL (unnest of both arrays
 *    per row).  Nothing leaves the database but the k winners, but the
 *    executor's per-element cost made it 2x (loaded machine) to several
 *    times slower; kept for the benchmark's comparison.
 */
#ifndef DP_SEARCH_SQL_H
#define DP_SEARCH_SQL_H

#include <stddef.h>

#include <libpq-fe.h>

/* $1 the query vector (real[] text), $2 the embedding model, $3 a user id
 * or '' for all, $4 the query's norm, $5 its dimension, $6 k.  Returns k
 * rows (document_id, filename, chunk_ord, score, snippet), best first. */
#define DP_SQL_SEARCH_EXACT \
    "WITH top AS (SELECT f.chunk_id, s.score" \
    "   FROM upload_pipeline.document_chunks f" \
    "   CROSS JOIN LATERAL (SELECT sum(a::float8 * b) / nullif(sqrt(sum(a::float8" \
    "     * a)) * $4::float8, 0) AS score FROM unnest(f.embedding, $1::real[])" \
    "     AS t (a, b)) s" \
    "   WHERE f.embed_model = $2 AND f.vector_dim = $5::int" \
    "   AND ($3 = '' OR f.document_id IN (SELECT document_id FROM" \
    "     upload_pipeline.documents WHERE user_id = $3::uuid))" \
    "   ORDER BY s.score DESC NULLS LAST, f.chunk_id LIMIT $6::int)" \
    " SELECT f.document_id::text, d.filename, f.chunk_ord, top.score," \
    "   left(btrim(regexp_replace(f.text, '\\s+', ' ', 'g')), 100)" \
    " FROM top JOIN upload_pipeline.document_chunks f USING (chunk_id)" \
    " JOIN upload_pipeline.documents d ON d.document_id = f.document_id" \
    " ORDER BY top.score DESC NULLS LAST, f.chunk_id"

/* One scored chunk. */
typedef struct dp_search_hit {
    char chunk_id[37];
    double score;
} dp_search_hit;

/* The k (<= 1000) chunks of model (and of user, unless "") whose vectors of
 * dim floats are nearest to q by cosine, best first (ties: lower chunk id),
 * into hits; *n gets how many (fewer when fewer are stored).  Vectors of
 * zero norm score 0.  Returns 0, or -1 with err set. */
int dp_search_topk(PGconn *db, const char *model, const char *user, const float *q,
                   int dim, int k, dp_search_hit *hits, int *n, char *err,
                   size_t errlen);

#endif

/*
 * search_sql: the statement `docpipe search` scores chunks with, shared by
 * cli/search.c and bench/bench_search.c so the benchmark measures what the
 * command runs.
 *
 * $1 the query vector (real[] text), $2 the embedding model, $3 a user id
 * or '' for all, $4 the query's norm, $5 its dimension, $6 k.  Returns k
 * rows (document_id, filename, chunk_ord, score, snippet), best first.
 * Exact cosine: every final vector of the model and dimension is scored in
 * PostgreSQL (products in float8: a float4 sum over 1536 terms loses
 * digits); only chunk ids and scores go through the top-N sort, and texts
 * and file names are read for the k winners alone.
 */
#ifndef DP_SEARCH_SQL_H
#define DP_SEARCH_SQL_H

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

#endif

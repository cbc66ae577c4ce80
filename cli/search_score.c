/*
 * search_score: exact cosine scoring in C over vectors streamed from
 * PostgreSQL (see search_sql.h for why here and not in SQL).
 *
 * The rows come in single-row mode and binary format, so the client holds
 * one vector at a time whatever the table's size, and no float goes
 * through text.  A real[] in binary is: ndim, has-nulls flag, element
 * type, then per dimension its length and lower bound, then each element
 * as a 4-byte length and a big-endian float4.
 */
#include <arpa/inet.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "search_sql.h"

static uint32_t be32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return ntohl(v);
}

/* hits[0..n) sorted best first; whether a is better than b. */
static int better(double sa, const char *ia, double sb, const char *ib)
{
    return sa > sb || (sa == sb && strcmp(ia, ib) < 0);
}

static void offer(dp_search_hit *hits, int *n, int k, const char *id, double score)
{
    if (*n == k && !better(score, id, hits[k - 1].score, hits[k - 1].chunk_id))
        return;
    int i = *n < k ? (*n)++ : k - 1;
    while (i > 0 && better(score, id, hits[i - 1].score, hits[i - 1].chunk_id)) {
        hits[i] = hits[i - 1];
        i--;
    }
    snprintf(hits[i].chunk_id, sizeof(hits[i].chunk_id), "%s", id);
    hits[i].score = score;
}

int dp_search_topk(PGconn *db, const char *model, const char *user, const float *q,
                   int dim, int k, dp_search_hit *hits, int *n, char *err,
                   size_t errlen)
{
    *n = 0;
    double qn = 0;
    for (int i = 0; i < dim; i++)
        qn += (double)q[i] * q[i];
    qn = sqrt(qn);
    char dim_s[16];
    snprintf(dim_s, sizeof(dim_s), "%d", dim);
    const char *params[3] = {model, dim_s, user};
    if (!PQsendQueryParams(db,
            "SELECT f.chunk_id::text, f.embedding FROM upload_pipeline.document_chunks f"
            " WHERE f.embed_model = $1 AND f.vector_dim = $2::int"
            " AND ($3 = '' OR f.document_id IN (SELECT document_id FROM"
            "   upload_pipeline.documents WHERE user_id = $3::uuid))",
            3, NULL, params, NULL, NULL, 1) || !PQsetSingleRowMode(db)) {
        snprintf(err, errlen, "read vectors: %s", PQerrorMessage(db));
        while (PQgetResult(db)) /* drain */
            ;
        return -1;
    }
    int rc = 0;
    PGresult *res;
    while ((res = PQgetResult(db))) {
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_SINGLE_TUPLE && rc == 0) {
            const unsigned char *b = (const unsigned char *)PQgetvalue(res, 0, 1);
            int len = PQgetlength(res, 0, 1);
            /* chunk_id::text arrives as its text bytes in binary mode */
            char id[37];
            snprintf(id, sizeof(id), "%.*s", PQgetlength(res, 0, 0), PQgetvalue(res, 0, 0));
            if (len < 20 || be32(b) != 1 || (int)be32(b + 12) != dim ||
                len != 20 + 8 * dim) {
                snprintf(err, errlen, "chunk %s: its embedding is not %d floats"
                         " without NULLs", id, dim);
                rc = -1;
            } else {
                const unsigned char *e = b + 20;
                double dot = 0, vn = 0;
                for (int i = 0; i < dim; i++, e += 8) {
                    uint32_t u = be32(e + 4);
                    float f;
                    memcpy(&f, &u, 4);
                    dot += (double)f * q[i];
                    vn += (double)f * f;
                }
                offer(hits, n, k, id, vn > 0 && qn > 0 ? dot / (sqrt(vn) * qn) : 0);
            }
        } else if (st != PGRES_SINGLE_TUPLE && st != PGRES_TUPLES_OK && rc == 0) {
            snprintf(err, errlen, "read vectors: %s", PQresultErrorMessage(res));
            rc = -1;
        }
        PQclear(res);
    }
    return rc;
}

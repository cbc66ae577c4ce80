/* offsets: PostgreSQL offset store with epoch fencing (see offsets.h). */
#include "offsets.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

dp_err dp_offsets_claim(PGconn *conn, const char *group, const char *topic,
                        const char *owner, dp_offset_claim *claims, int n,
                        char *err, size_t errlen)
{
    if (n == 0)
        return DP_OK;
    dp_buf parts = {0};
    dp_buf_append(&parts, "{", 1);
    for (int i = 0; i < n; i++)
        dp_buf_appendf(&parts, "%s%d", i ? "," : "", claims[i].partition);
    dp_buf_append(&parts, "}", 1);
    const char *params[4] = {group, topic, owner, parts.data};
    /* Sorted so two claimants lock rows in the same order. */
    PGresult *res = dp_pg_execp(conn,
        "INSERT INTO docpipe.dp_offsets AS o"
        " (group_id, topic, partition, next_offset, epoch, owner)"
        " SELECT $1, $2, p, NULL, 1, $3"
        "   FROM unnest($4::int[]) AS p ORDER BY p"
        " ON CONFLICT (group_id, topic, partition) DO UPDATE"
        "   SET epoch = o.epoch + 1, owner = EXCLUDED.owner, claimed_at = now()"
        " RETURNING partition, coalesce(next_offset, -1), epoch,"
        "   coalesce(replay_until, -1)",
        4, NULL, params, NULL, NULL, 0);
    dp_buf_free(&parts);
    dp_err e = dp_pg_check(conn, res, PGRES_TUPLES_OK, "claim partitions", err,
                           errlen);
    if (e)
        return e;
    int rows = PQntuples(res);
    for (int r = 0; r < rows; r++) {
        int32_t p = (int32_t)atoi(PQgetvalue(res, r, 0));
        for (int i = 0; i < n; i++) {
            if (claims[i].partition == p) {
                claims[i].next_offset = strtoll(PQgetvalue(res, r, 1), NULL, 10);
                claims[i].epoch = strtoll(PQgetvalue(res, r, 2), NULL, 10);
                claims[i].replay_until = strtoll(PQgetvalue(res, r, 3), NULL, 10);
            }
        }
    }
    PQclear(res);
    if (rows != n)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                       "claim partitions: %d of %d rows returned", rows, n);
    return DP_OK;
}

dp_err dp_offsets_advance(PGconn *conn, const char *group, const char *topic,
                          const dp_offset_advance *adv, int n,
                          int64_t attempt_id, char *err, size_t errlen)
{
    if (n == 0)
        return DP_OK;
    dp_buf p = {0}, ep = {0}, ex = {0}, nx = {0};
    dp_buf_append(&p, "{", 1);
    dp_buf_append(&ep, "{", 1);
    dp_buf_append(&ex, "{", 1);
    dp_buf_append(&nx, "{", 1);
    for (int i = 0; i < n; i++) {
        const char *sep = i ? "," : "";
        dp_buf_appendf(&p, "%s%d", sep, adv[i].partition);
        dp_buf_appendf(&ep, "%s%" PRId64, sep, adv[i].epoch);
        dp_buf_appendf(&ex, "%s%" PRId64, sep, adv[i].expected);
        dp_buf_appendf(&nx, "%s%" PRId64, sep, adv[i].next_offset);
    }
    dp_buf_append(&p, "}", 1);
    dp_buf_append(&ep, "}", 1);
    dp_buf_append(&ex, "}", 1);
    dp_buf_append(&nx, "}", 1);
    char att[32];
    snprintf(att, sizeof(att), "%" PRId64, attempt_id);
    const char *params[7] = {group, topic, p.data, ep.data, ex.data, nx.data, att};
    /* The attempt's row goes in with the offsets, in the same statement:
     * it exists if and only if this transaction commits. */
    PGresult *res = dp_pg_execp(conn,
        "WITH u AS (UPDATE docpipe.dp_offsets o"
        "   SET next_offset = u.next, updated_at = now()"
        "  FROM unnest($3::int[], $4::bigint[], $5::bigint[], $6::bigint[])"
        "       AS u(p, epoch, expected, next)"
        " WHERE o.group_id = $1 AND o.topic = $2 AND o.partition = u.p"
        "   AND o.epoch = u.epoch"
        "   AND coalesce(o.next_offset, -1) = u.expected RETURNING 1),"
        " a AS (INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic)"
        "   VALUES ($7::bigint, $1, $2))"
        " SELECT count(*) FROM u",
        7, NULL, params, NULL, NULL, 0);
    dp_buf_free(&p);
    dp_buf_free(&ep);
    dp_buf_free(&ex);
    dp_buf_free(&nx);
    dp_err e = dp_pg_check(conn, res, PGRES_TUPLES_OK, "advance offsets", err,
                           errlen);
    if (e)
        return e;
    int rows = atoi(PQgetvalue(res, 0, 0));
    PQclear(res);
    if (rows != n)
        return dp_errf(DP_ERR_FENCED, err, errlen,
                       "advance offsets of %s/%s: %d of %d partitions are no "
                       "longer ours (claimed by another instance)", group,
                       topic, n - rows, n);
    return DP_OK;
}

dp_err dp_offsets_reset(PGconn *conn, const char *group, const char *topic,
                        int32_t partition, int64_t next_offset, char *err,
                        size_t errlen)
{
    char ps[16], os[32];
    snprintf(ps, sizeof(ps), "%d", partition);
    snprintf(os, sizeof(os), "%" PRId64, next_offset);
    const char *params[4] = {group, topic, ps, next_offset < 0 ? NULL : os};
    PGresult *res = dp_pg_execp(conn,
        "INSERT INTO docpipe.dp_offsets AS o"
        " (group_id, topic, partition, next_offset, epoch, owner)"
        " VALUES ($1, $2, $3::int, $4::bigint, 1, 'reset')"
        " ON CONFLICT (group_id, topic, partition) DO UPDATE"
        "   SET next_offset = EXCLUDED.next_offset, epoch = o.epoch + 1,"
        "       owner = 'reset', updated_at = now()",
        4, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(conn, res, PGRES_COMMAND_OK, "reset offset", err,
                           errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

dp_err dp_offsets_epochs(PGconn *conn, const char *group, const char *topic,
                         const int32_t *parts, int64_t *epochs, int n,
                         char *err, size_t errlen)
{
    dp_buf p = {0};
    dp_buf_append(&p, "{", 1);
    for (int i = 0; i < n; i++) {
        dp_buf_appendf(&p, "%s%d", i ? "," : "", parts[i]);
        epochs[i] = -1;
    }
    dp_buf_append(&p, "}", 1);
    const char *params[3] = {group, topic, p.data};
    PGresult *res = dp_pg_execp(conn,
        "SELECT partition, epoch FROM docpipe.dp_offsets"
        " WHERE group_id = $1 AND topic = $2 AND partition = ANY ($3::int[])",
        3, NULL, params, NULL, NULL, 0);
    dp_buf_free(&p);
    dp_err e = dp_pg_check(conn, res, PGRES_TUPLES_OK, "read epochs", err, errlen);
    if (e)
        return e;
    for (int r = 0; r < PQntuples(res); r++) {
        int32_t part = (int32_t)atoi(PQgetvalue(res, r, 0));
        for (int i = 0; i < n; i++)
            if (parts[i] == part)
                epochs[i] = strtoll(PQgetvalue(res, r, 1), NULL, 10);
    }
    PQclear(res);
    return DP_OK;
}

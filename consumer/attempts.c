/* attempts: commit visibility (see attempts.h). */
#include "attempts.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "pg.h"

int64_t dp_attempt_new_id(void)
{
    uint64_t v = 0;
    while (v == 0) {
        if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
            abort(); /* the kernel always has 8 random bytes after boot */
        v &= INT64_MAX;
    }
    return (int64_t)v;
}

void dp_attempt_format(int64_t id, int64_t epoch, int64_t expected, char *out,
                       size_t outlen)
{
    snprintf(out, outlen, "%" PRId64 ":%" PRId64 ":%" PRId64, id, epoch, expected);
}

int dp_attempt_parse(const char *attempt, char *stream_buf, dp_attempt_ref *ref)
{
    memset(ref, 0, sizeof(*ref));
    if (sscanf(attempt, "%" SCNd64 ":%" SCNd64 ":%" SCNd64, &ref->id, &ref->epoch,
               &ref->expected) != 3 || ref->id <= 0)
        return 0;
    /* Topic names cannot hold '/', so read the stream from the right. */
    char *p = strrchr(stream_buf, '/');
    if (!p || p == stream_buf)
        return 0;
    *p = '\0';
    char *end;
    long part = strtol(p + 1, &end, 10);
    char *t = strrchr(stream_buf, '/');
    if (*end || part < 0 || !t || t == stream_buf)
        return 0;
    *t = '\0';
    ref->partition = (int32_t)part;
    ref->topic = t + 1;
    ref->group = stream_buf;
    return 1;
}

/* The refs' columns as array parameters. */
static void refs_arrays(const dp_attempt_ref *refs, size_t n, int only_undecided,
                        dp_buf *ids, dp_buf *groups, dp_buf *topics,
                        dp_buf *parts, dp_buf *epochs, dp_buf *expected)
{
    dp_buf *all[6] = {ids, groups, topics, parts, epochs, expected};
    for (int k = 0; k < 6; k++)
        dp_buf_append(all[k], "{", 1);
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        if (only_undecided && refs[i].state != DP_ATTEMPT_UNDECIDED)
            continue;
        const char *sep = first ? "" : ",";
        first = 0;
        dp_buf_appendf(ids, "%s%" PRId64, sep, refs[i].id);
        dp_buf_append(groups, sep, strlen(sep));
        dp_buf_array_text(groups, refs[i].group, strlen(refs[i].group));
        dp_buf_append(topics, sep, strlen(sep));
        dp_buf_array_text(topics, refs[i].topic, strlen(refs[i].topic));
        dp_buf_appendf(parts, "%s%d", sep, refs[i].partition);
        dp_buf_appendf(epochs, "%s%" PRId64, sep, refs[i].epoch);
        dp_buf_appendf(expected, "%s%" PRId64, sep, refs[i].expected);
    }
    for (int k = 0; k < 6; k++)
        dp_buf_append(all[k], "}", 1);
}

dp_err dp_attempts_resolve(PGconn *db, dp_attempt_ref *refs, size_t n,
                           char *err, size_t errlen)
{
    if (n == 0)
        return DP_OK;
    dp_buf ids = {0}, groups = {0}, topics = {0}, parts = {0}, epochs = {0},
           expected = {0};
    refs_arrays(refs, n, 0, &ids, &groups, &topics, &parts, &epochs, &expected);
    const char *params[6] = {ids.data, groups.data, topics.data, parts.data,
                             epochs.data, expected.data};
    /* One statement, one snapshot: an attempt commits its row and its
     * offset move together, so both are seen, or neither.  A missing
     * offsets row cannot be advanced by anyone: aborted. */
    PGresult *res = dp_pg_execp(db,
        "SELECT r.ord, CASE"
        "   WHEN EXISTS (SELECT 1 FROM docpipe.dp_attempts a"
        "                 WHERE a.attempt_id = r.id) THEN 'c'"
        "   WHEN o.epoch IS NULL OR o.epoch <> r.epoch"
        "     OR coalesce(o.next_offset, -1) <> r.expected THEN 'a'"
        "   ELSE 'u' END"
        " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[],"
        "             $5::bigint[], $6::bigint[])"
        "      WITH ORDINALITY AS r(id, grp, topic, part, epoch, expected, ord)"
        " LEFT JOIN docpipe.dp_offsets o ON o.group_id = r.grp"
        "   AND o.topic = r.topic AND o.partition = r.part",
        6, NULL, params, NULL, NULL, 0);
    dp_buf_free(&ids);
    dp_buf_free(&groups);
    dp_buf_free(&topics);
    dp_buf_free(&parts);
    dp_buf_free(&epochs);
    dp_buf_free(&expected);
    dp_err e = dp_pg_check(db, res, PGRES_TUPLES_OK, "decide upstream attempts",
                           err, errlen);
    if (e)
        return e;
    for (int r = 0; r < PQntuples(res); r++) {
        long ord = strtol(PQgetvalue(res, r, 0), NULL, 10);
        if (ord < 1 || (size_t)ord > n)
            continue;
        char c = PQgetvalue(res, r, 1)[0];
        refs[ord - 1].state = c == 'c' ? DP_ATTEMPT_COMMITTED
                              : c == 'a' ? DP_ATTEMPT_ABORTED
                                         : DP_ATTEMPT_UNDECIDED;
    }
    PQclear(res);
    return DP_OK;
}

dp_err dp_attempts_wait(PGconn *db, const dp_attempt_ref *refs, size_t n,
                        char *err, size_t errlen)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += refs[i].state == DP_ATTEMPT_UNDECIDED;
    if (k == 0)
        return DP_OK;
    dp_buf ids = {0}, groups = {0}, topics = {0}, parts = {0}, epochs = {0},
           expected = {0};
    refs_arrays(refs, n, 1, &ids, &groups, &topics, &parts, &epochs, &expected);
    const char *params[3] = {groups.data, topics.data, parts.data};
    /* FOR SHARE waits for a transaction that updated the row (an attempt
     * between its offset update and its COMMIT); in autocommit the lock is
     * released as the statement ends. */
    PGresult *res = dp_pg_execp(db,
        "SELECT 1 FROM docpipe.dp_offsets o"
        " WHERE (o.group_id, o.topic, o.partition) IN"
        "   (SELECT * FROM unnest($1::text[], $2::text[], $3::int[]))"
        " FOR SHARE",
        3, NULL, params, NULL, NULL, 0);
    dp_buf_free(&ids);
    dp_buf_free(&groups);
    dp_buf_free(&topics);
    dp_buf_free(&parts);
    dp_buf_free(&epochs);
    dp_buf_free(&expected);
    if (PQresultStatus(res) == PGRES_FATAL_ERROR) {
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state && strcmp(state, "55P03") == 0) { /* lock_not_available */
            PQclear(res);
            return DP_OK;
        }
    }
    dp_err e = dp_pg_check(db, res, PGRES_TUPLES_OK, "wait for upstream attempts",
                           err, errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

/*
 * visibility: which records of a batch are acted on (docs/design.md,
 * "Acting only on committed batches" and "Downstream deduplication").
 *
 * First every record's upstream attempt is decided (attempts.h): records of
 * aborted attempts are skipped, records of open ones deferred.  Then, per
 * input partition and upstream stream, a mark (epoch, offset, index) of what
 * was acted on and committed: a committed record at or below it is a copy
 * (a producer retry).  Marks are recomputed by every settle (b_*), written
 * only for the batch's own partitions in its transaction, and made the
 * committed ones after COMMIT.
 */
#include "runtime_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

dp_mark *dp_dedup_mark(dp_part *pt, const char *stream, int create)
{
    for (int i = 0; i < pt->nmarks; i++)
        if (strcmp(pt->marks[i].stream, stream) == 0)
            return &pt->marks[i];
    if (!create)
        return NULL;
    pt->marks = realloc(pt->marks, (size_t)(pt->nmarks + 1) * sizeof(dp_mark));
    dp_mark *m = &pt->marks[pt->nmarks++];
    m->stream = strdup(stream);
    m->epoch = m->b_epoch = -1;
    m->offset = m->b_offset = -1;
    m->index = m->b_index = -1;
    return m;
}
/* (e1, o1, i1) <= (e2, o2, i2), lexicographically. */
static int seq_le(int64_t e1, int64_t o1, int32_t i1, int64_t e2, int64_t o2,
                  int32_t i2)
{
    return e1 < e2 || (e1 == e2 && (o1 < o2 || (o1 == o2 && i1 <= i2)));
}
dp_err dp_dedup_load(dp_runtime *rt, int32_t p, char *err, size_t errlen)
{
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", p);
    const char *params[3] = {rt->group, rt->stage->input_topic, ps};
    PGresult *res = dp_pg_execp(rt->db,
        "SELECT stream, src_offset, src_index, src_epoch FROM docpipe.dp_dedup"
        " WHERE group_id = $1 AND topic = $2 AND partition = $3::int",
        3, NULL, params, NULL, NULL, 0);
    dp_err e = dp_pg_check(rt->db, res, PGRES_TUPLES_OK, "load dedup marks",
                           err, errlen);
    if (e)
        return e;
    dp_part *pt = dp_part_get(rt, p);
    for (int r = 0; r < PQntuples(res); r++) {
        dp_mark *m = dp_dedup_mark(pt, PQgetvalue(res, r, 0), 1);
        m->offset = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        m->index = atoi(PQgetvalue(res, r, 2));
        m->epoch = strtoll(PQgetvalue(res, r, 3), NULL, 10);
    }
    PQclear(res);
    return DP_OK;
}
/*
 * Commit visibility (attempts.h): every slot whose record names its
 * upstream attempt gets that attempt decided before the batch is handled.
 * An undecided one may belong to an attempt between its offset update and
 * its COMMIT, so the row locks are waited for and the question asked once
 * more; still undecided (an attempt that died with nobody to take its
 * partition yet), the record is deferred.  Decisions are final, so a slot
 * keeps its answer across the settle attempts of its batch.
 */
dp_err dp_dedup_decide(dp_runtime *rt, size_t from, size_t to, char *err,
                       size_t errlen)
{
    size_t n = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->att.id && s->att.state != DP_ATTEMPT_COMMITTED &&
            s->att.state != DP_ATTEMPT_ABORTED &&
            (s->state == RS_PENDING || s->state == RS_DLQ))
            n++;
    }
    if (n == 0)
        return DP_OK;
    dp_attempt_ref *refs = malloc(n * sizeof(*refs));
    size_t *idx = malloc(n * sizeof(*idx));
    size_t k = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (!(s->att.id && s->att.state != DP_ATTEMPT_COMMITTED &&
              s->att.state != DP_ATTEMPT_ABORTED &&
              (s->state == RS_PENDING || s->state == RS_DLQ)))
            continue;
        /* The slots may have moved (the array grows): re-point. */
        s->att.group = s->att_stream;
        s->att.topic = s->att_stream + strlen(s->att_stream) + 1;
        refs[k] = s->att;
        refs[k].state = DP_ATTEMPT_UNKNOWN;
        idx[k++] = i;
    }
    dp_err e = dp_attempts_resolve(rt->db, refs, n, err, errlen);
    int undecided = 0;
    for (size_t j = 0; e == DP_OK && j < n; j++)
        undecided |= refs[j].state == DP_ATTEMPT_UNDECIDED;
    if (e == DP_OK && undecided) {
        e = dp_attempts_wait(rt->db, refs, n, err, errlen);
        if (e == DP_OK)
            e = dp_attempts_resolve(rt->db, refs, n, err, errlen);
    }
    for (size_t j = 0; e == DP_OK && j < n; j++) {
        dp_slot *s = &rt->slots[idx[j]];
        s->att.state = refs[j].state;
        if (refs[j].state != DP_ATTEMPT_UNDECIDED || s->state == RS_DROPPED)
            continue;
        dp_log_ctx ctx = dp_rt_slot_ctx(rt, s);
        dp_log(DP_LOG_DEBUG, &ctx, "upstream attempt %" PRId64 " of %s/%s/%d is "
               "neither committed nor aborted yet: record deferred",
               refs[j].id, refs[j].group, refs[j].topic, refs[j].partition);
        rt->stats.undecided++;
        dp_part_defer_from(rt, s, UNDECIDED_DEFER_MS);
    }
    free(refs);
    free(idx);
    return e;
}
/*
 * Marks what the batch acts on.  A record of an aborted attempt is skipped
 * (its offset moves on, nothing else happens).  Among committed records,
 * an upstream stream's outputs reach this partition in the order their
 * attempts committed, and (epoch, offset, index) grows along that order: a
 * new owner or a replay of the upstream partition has a higher epoch.  So
 * a record at or below its stream's mark (committed, or held by an earlier
 * record of this batch) is a copy of one already acted on (a producer
 * retry): skipped.  Recomputed by every settle from the committed marks.
 */
void dp_dedup_pass(dp_runtime *rt, size_t from, size_t to)
{
    for (int p = 0; p < rt->nparts; p++)
        for (int i = 0; i < rt->parts[p].nmarks; i++) {
            dp_mark *m = &rt->parts[p].marks[i];
            m->b_epoch = m->epoch;
            m->b_offset = m->offset;
            m->b_index = m->index;
        }
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state != RS_PENDING && s->state != RS_DLQ)
            continue;
        if (s->att.id && s->att.state == DP_ATTEMPT_ABORTED) {
            s->state = RS_ABORTED;
            continue;
        }
        if (!s->stream)
            continue;
        dp_mark *m = dp_dedup_mark(dp_part_get(rt, s->rec.partition), s->stream, 1);
        if (seq_le(s->src_epoch, s->src_offset, s->src_index, m->b_epoch,
                   m->b_offset, m->b_index)) {
            s->state = RS_DUP;
            continue;
        }
        m->b_epoch = s->src_epoch;
        m->b_offset = s->src_offset;
        m->b_index = s->src_index;
    }
}
/* Writes the marks this batch moves, for its own partitions only: their
 * offsets' compare-and-set is in the same transaction, so a fenced
 * partition's marks never commit. */
dp_err dp_dedup_store(dp_runtime *rt, const dp_offset_advance *adv, int nadv,
                      char *err, size_t errlen)
{
    for (int k = 0; k < nadv; k++) {
        int p = adv[k].partition;
        dp_part *pt = dp_part_get(rt, p);
        for (int i = 0; i < pt->nmarks; i++) {
            dp_mark *m = &pt->marks[i];
            if (m->b_epoch == m->epoch && m->b_offset == m->offset &&
                m->b_index == m->index)
                continue;
            char ps[16], os[32], is[16], es[32];
            snprintf(ps, sizeof(ps), "%d", p);
            snprintf(os, sizeof(os), "%" PRId64, m->b_offset);
            snprintf(is, sizeof(is), "%d", m->b_index);
            snprintf(es, sizeof(es), "%" PRId64, m->b_epoch);
            const char *params[7] = {rt->group, rt->stage->input_topic, ps,
                                     m->stream, os, is, es};
            dp_err e = dp_pg_command(rt->db,
                "INSERT INTO docpipe.dp_dedup AS d (group_id, topic, partition,"
                " stream, src_offset, src_index, src_epoch) VALUES ($1, $2,"
                " $3::int, $4, $5::bigint, $6::int, $7::bigint)"
                " ON CONFLICT (group_id, topic, partition, stream) DO UPDATE"
                " SET src_offset = EXCLUDED.src_offset,"
                " src_index = EXCLUDED.src_index, src_epoch = EXCLUDED.src_epoch",
                7, params, "store dedup marks", err, errlen);
            if (e)
                return e;
        }
    }
    return DP_OK;
}

void dp_dedup_commit(dp_part *pt)
{
    for (int i = 0; i < pt->nmarks; i++) {
        dp_mark *m = &pt->marks[i];
        m->epoch = m->b_epoch;
        m->offset = m->b_offset;
        m->index = m->b_index;
    }
}

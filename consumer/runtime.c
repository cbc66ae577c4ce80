/*
 * runtime: the stage loop (see runtime.h and docs/design.md).
 *
 * One thread drives one consumer, one producer and one PostgreSQL
 * connection (a helper thread only sends the early fetch nudge, see
 * nudge_early()).  Records are polled into a batch until it holds batch_max
 * records or batch_wait_ms passed since its first record; then run_batch()
 * settles it.  Rebalance callbacks run inside poll, never during a batch:
 * an assignment claims the partitions in PostgreSQL (bumping their epoch) and
 * assigns at the stored offsets; a revocation drops the uncommitted batch.
 *
 * A record that fails retryably halts its partition: the records after it in
 * the batch are dropped, the partition is paused and rewound to it, and it is
 * tried again after base * 2^n ms (with jitter) while the consumer keeps
 * polling the others.  Per-partition retry state lives here, so a new owner
 * after a rebalance starts that record's budget afresh.
 */
#include "runtime.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


#include "attempts.h"
#include "backoff.h"
#include "clock.h"
#include "fault.h"
#include "log.h"
#include "offsets.h"
#include "pg.h"
#include "publish.h"

#define NUDGE_LAGGING_MS 1   /* see nudge_fetcher() */
#define NUDGE_IDLE_MS 250
#define NUDGE_WAIT_MS 50     /* longest wait for the watermarks: the wake-up is the point */

#define HDR_STREAM "docpipe-stream"
#define HDR_SEQ "docpipe-seq"
#define HDR_EVENT "docpipe-event-id"
#define HDR_CORR "docpipe-correlation-id"
#define HDR_GEN "docpipe-generation"
#define UNDECIDED_DEFER_MS 300   /* an upstream attempt neither committed nor aborted */
#define EPOCH_CHECK_MS 2000      /* idle owners look for a replay this often */

typedef struct dp_output {
    char *topic;
    void *key;
    size_t key_len;
    void *value;
    size_t value_len;
} dp_output;

/* A bump allocator for one batch's bytes (record copies, outputs): one
 * reset per batch instead of a free per record.  Chunks of the standard
 * size are kept for reuse up to ARENA_KEEP bytes; bigger ones are freed. */
#define ARENA_CHUNK (64 * 1024)
#define ARENA_KEEP (1024 * 1024)

typedef struct arena_chunk {
    struct arena_chunk *next;
    size_t cap, used, pad_;   /* 32 bytes: what follows stays 16-aligned */
} arena_chunk;

typedef struct arena {
    arena_chunk *cur;          /* in use, newest first */
    arena_chunk *spare;        /* standard-size chunks kept for reuse */
    size_t spare_bytes;
} arena;

static void *arena_alloc(arena *a, size_t n)
{
    n = (n + 15) & ~(size_t)15;
    arena_chunk *c = a->cur;
    if (!c || c->cap - c->used < n) {
        if (n <= ARENA_CHUNK && a->spare) {
            c = a->spare;
            a->spare = c->next;
            a->spare_bytes -= c->cap;
        } else {
            size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
            c = malloc(sizeof(*c) + cap);
            if (!c)
                abort(); /* as the rest of the runtime: no recovery from OOM */
            c->cap = cap;
        }
        c->used = 0;
        c->next = a->cur;
        a->cur = c;
    }
    void *p = (char *)(c + 1) + c->used;
    c->used += n;
    return p;
}

static void arena_reset(arena *a)
{
    while (a->cur) {
        arena_chunk *c = a->cur;
        a->cur = c->next;
        if (c->cap == ARENA_CHUNK && a->spare_bytes + c->cap <= ARENA_KEEP) {
            c->next = a->spare;
            a->spare = c;
            a->spare_bytes += c->cap;
        } else {
            free(c);
        }
    }
}

static void arena_free(arena *a)
{
    arena_reset(a);
    while (a->spare) {
        arena_chunk *c = a->spare;
        a->spare = c->next;
        free(c);
    }
    a->spare_bytes = 0;
}

typedef enum {
    RS_PENDING,   /* to be handled */
    RS_DUP,       /* already seen upstream duplicate: skip, commit offset */
    RS_DLQ,       /* dead-letter it, commit offset */
    RS_DROPPED,   /* behind a retrying record: not part of this batch */
    RS_ABORTED,   /* published by an upstream attempt that never committed:
                     skip, commit offset */
} rec_state;

typedef struct dp_slot {
    dp_record rec;
    rd_kafka_message_t *msg;     /* only while the slot is being prepared */
    char *data;                  /* key then value, copied (rt->recs) */
    rec_state state;
    dp_err verdict;              /* handler's verdict in the current pass */
    int64_t defer_ms;            /* with verdict retryable: no budget spent */
    int64_t retry_min_ms;        /* a service asked us to wait this long */
    char *error;
    dp_err dlq_category;
    int64_t first_failure_ms, last_failure_ms;
    char corr[40];
    const char *stream;          /* NULL: no upstream identity; else the
                                    partition's mark's copy of the name */
    int64_t src_epoch;           /* upstream epoch (docpipe-attempt), 0: none */
    int64_t src_offset;
    int32_t src_index;
    dp_attempt_ref att;          /* att.id 0: no docpipe-attempt header */
    char att_stream[256];        /* att.group and att.topic point here */
    int64_t out_gen;             /* generation of the outputs */
    dp_output *outs;             /* in rt->outs, valid for one pass */
    size_t nouts, capouts;
} dp_slot;

struct dp_batch {
    dp_runtime *rt;
    dp_slot **live;
    size_t n;
};

/* Per (input partition, upstream stream): the highest (epoch, offset,
 * index) acted on and committed, and the same as the batch being settled
 * would leave it (b_*; recomputed by every settle, see dedup_pass). */
typedef struct dp_mark {
    char *stream;
    int64_t epoch, offset;
    int32_t index;
    int64_t b_epoch, b_offset;
    int32_t b_index;
} dp_mark;

typedef struct dp_part {
    int assigned;
    int64_t epoch;
    int64_t committed;           /* next offset stored in PostgreSQL, -1 none */
    int64_t retry_offset;        /* record being retried, -1 none */
    int retry_attempts;          /* failed attempts of retry_offset */
    int64_t first_failure_ms, last_failure_ms;
    char last_error[512];
    int64_t paused_until_ms;     /* 0: running; >0 to apply; <0 applied */
    int64_t first_seen;          /* first offset polled, -1: none yet */
    int64_t next_poll;           /* offset after the last one polled, -1: none */
    int64_t replay_until;        /* offsets below are replays, -1: none */
    dp_mark *marks;
    int nmarks;
} dp_part;

struct dp_runtime {
    const dp_config *cfg;
    const dp_stage *stage;
    char group[256];
    rd_kafka_t *consumer;
    rd_kafka_t *producer;
    PGconn *db;
    dp_part *parts;
    int nparts;
    dp_slot *slots;
    size_t nslots, capslots;
    arena recs;                  /* record copies of the batch being built */
    arena outs;                  /* outputs of the current handler pass */
    rd_kafka_queue_t *cq;        /* the consumer's queue */
    int batch_max;
    int64_t batch_deadline_ms;
    int delivery_failures;
    char delivery_error[256];
    int rejoin;                  /* fenced or unsure: re-subscribe */
    int batch_failures;          /* consecutive batch-wide failures */
    int64_t retry_hint_ms;       /* from dp_batch_retry_after */
    int64_t t_handler, t_flush, t_commit, t_settle; /* ms spent, for debug */
    int64_t last_nudge_ms;       /* see nudge_fetcher() */
    int64_t nudges, early_nudges; /* watermark queries sent, for the debug timings */
    int64_t last_replan_ms;      /* last DISCARD PLANS (pg_replan_ms) */
    int64_t nudge_every_ms;      /* NUDGE_LAGGING_MS up to NUDGE_IDLE_MS */
    uint64_t polled;             /* records polled, ever */
    uint64_t polled_at_nudge;    /* ... at the last nudge */
    /* The early nudge (see nudge_early()): a helper thread that sends the
     * watermark query while this one settles a batch. */
    pthread_t nudger;
    int nudger_running;
    pthread_mutex_t nudge_mu;
    pthread_cond_t nudge_cv;
    rd_kafka_topic_partition_list_t *nudge_req; /* to send; NULL: none */
    int nudge_busy;              /* a query is being sent */
    int nudger_stop;
    dp_runtime_stats stats;
    unsigned int rand_state;
    uint64_t assign_gen;         /* bumped by every assignment and revocation */
    int producer_fatal;          /* error_cb saw a fatal producer error */
    int consumer_fatal;          /* ... a fatal consumer error: stop */
    char fatal_error[512];
    int64_t last_epoch_check_ms; /* see check_epochs() */
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t mono_ms(void) { return dp_clock_mono_ms(NULL); }

/* Decimal digits of v at p; returns the end (no NUL).  The hot path formats
 * a few numbers per record, where snprintf showed in profiles. */
static char *fmt_u64(char *p, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        *p++ = tmp[--n];
    return p;
}

static dp_log_ctx slot_ctx(const dp_runtime *rt, const dp_slot *s)
{
    dp_log_ctx c = {rt->stage->name, s->corr, s->rec.topic, s->rec.partition,
                    s->rec.offset};
    return c;
}

/* ---- the handler's view ------------------------------------------------ */

size_t dp_batch_count(const dp_batch *b) { return b->n; }
dp_record *dp_batch_record(dp_batch *b, size_t i) { return &b->live[i]->rec; }
PGconn *dp_batch_db(dp_batch *b) { return b->rt->db; }
const char *dp_batch_instance(const dp_batch *b) { return b->rt->cfg->instance_id; }
const dp_config *dp_batch_config(const dp_batch *b) { return b->rt->cfg; }

void dp_batch_fail(dp_batch *b, size_t i, dp_err verdict, const char *fmt, ...)
{
    dp_slot *s = b->live[i];
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s->verdict = verdict == DP_ERR_RETRYABLE ? DP_ERR_RETRYABLE
                                             : DP_ERR_PERMANENT;
    free(s->error);
    s->error = strdup(msg);
}

void dp_batch_defer(dp_batch *b, size_t i, int64_t ms, const char *fmt, ...)
{
    dp_slot *s = b->live[i];
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    s->verdict = DP_ERR_RETRYABLE;
    s->defer_ms = ms > 0 ? ms : 1;
    free(s->error);
    s->error = strdup(msg);
}

void dp_batch_retry_in(dp_batch *b, size_t i, int64_t ms)
{
    if (ms > b->live[i]->retry_min_ms)
        b->live[i]->retry_min_ms = ms;
}

void dp_batch_set_generation(dp_batch *b, size_t i, int64_t generation)
{
    b->live[i]->out_gen = generation;
}

void dp_batch_retry_after(dp_batch *b, int64_t ms)
{
    if (ms > b->rt->retry_hint_ms)
        b->rt->retry_hint_ms = ms;
}

void dp_batch_emit(dp_batch *b, size_t i, const char *topic, const void *key,
                   size_t key_len, const void *value, size_t value_len)
{
    dp_slot *s = b->live[i];
    arena *a = &b->rt->outs;
    if (s->nouts == s->capouts) {
        size_t cap = s->capouts ? s->capouts * 2 : 2;
        dp_output *outs = arena_alloc(a, cap * sizeof(dp_output));
        if (s->nouts)
            memcpy(outs, s->outs, s->nouts * sizeof(dp_output));
        s->outs = outs;
        s->capouts = cap;
    }
    dp_output *o = &s->outs[s->nouts++];
    size_t tlen = strlen(topic) + 1;
    char *mem = arena_alloc(a, tlen + key_len + value_len);
    o->topic = memcpy(mem, topic, tlen);
    o->key = mem + tlen;
    if (key_len)
        memcpy(o->key, key, key_len);
    o->key_len = key_len;
    o->value = mem + tlen + key_len;
    if (value_len)
        memcpy(o->value, value, value_len);
    o->value_len = value_len;
}

/* Outputs live in rt->outs, which each handler pass resets. */
static void slot_clear_outputs(dp_slot *s)
{
    s->outs = NULL;
    s->nouts = s->capouts = 0;
}

static void slot_release(dp_runtime *rt, dp_slot *s)
{
    slot_clear_outputs(s);
    free(s->error);
    if (s->rec.decoded && rt->stage->free_decoded)
        rt->stage->free_decoded(rt->stage->state, s->rec.decoded);
    if (s->msg)
        rd_kafka_message_destroy(s->msg);
    s->error = NULL;
    s->rec.decoded = NULL;
    s->msg = NULL;
    s->data = NULL;
}

static void batch_clear(dp_runtime *rt)
{
    for (size_t i = 0; i < rt->nslots; i++)
        slot_release(rt, &rt->slots[i]);
    rt->nslots = 0;
    arena_reset(&rt->recs);
    arena_reset(&rt->outs);
}

/* ---- partitions -------------------------------------------------------- */

static dp_part *part_get(dp_runtime *rt, int32_t p)
{
    if (p >= rt->nparts) {
        int n = p + 1;
        rt->parts = realloc(rt->parts, (size_t)n * sizeof(dp_part));
        memset(rt->parts + rt->nparts, 0,
               (size_t)(n - rt->nparts) * sizeof(dp_part));
        for (int i = rt->nparts; i < n; i++) {
            rt->parts[i].retry_offset = -1;
            rt->parts[i].committed = -1;
            rt->parts[i].first_seen = -1;
            rt->parts[i].next_poll = -1;
            rt->parts[i].replay_until = -1;
        }
        rt->nparts = n;
    }
    return &rt->parts[p];
}

static void part_reset(dp_part *pt)
{
    for (int i = 0; i < pt->nmarks; i++)
        free(pt->marks[i].stream);
    free(pt->marks);
    memset(pt, 0, sizeof(*pt));
    pt->retry_offset = -1;
    pt->committed = -1;
    pt->first_seen = -1;
    pt->next_poll = -1;
    pt->replay_until = -1;
}

static dp_mark *mark_find(dp_part *pt, const char *stream, int create)
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

static dp_err load_marks(dp_runtime *rt, int32_t p, char *err, size_t errlen)
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
    dp_part *pt = part_get(rt, p);
    for (int r = 0; r < PQntuples(res); r++) {
        dp_mark *m = mark_find(pt, PQgetvalue(res, r, 0), 1);
        m->offset = strtoll(PQgetvalue(res, r, 1), NULL, 10);
        m->index = atoi(PQgetvalue(res, r, 2));
        m->epoch = strtoll(PQgetvalue(res, r, 3), NULL, 10);
    }
    PQclear(res);
    return DP_OK;
}

static dp_err db_ensure(dp_runtime *rt, char *err, size_t errlen)
{
    if (rt->db && PQstatus(rt->db) == CONNECTION_OK)
        return DP_OK;
    if (rt->db) {
        PQreset(rt->db);
        if (PQstatus(rt->db) == CONNECTION_OK)
            return DP_OK;
        dp_pg_finish(rt->db);
        rt->db = NULL;
    }
    return dp_pg_connect(rt->cfg, rt->cfg->instance_id, &rt->db, err, errlen);
}

/* ---- rebalance --------------------------------------------------------- */

static void on_assign(dp_runtime *rt, rd_kafka_topic_partition_list_t *parts)
{
    int n = parts->cnt;
    dp_offset_claim *claims = calloc((size_t)(n ? n : 1), sizeof(*claims));
    for (int i = 0; i < n; i++)
        claims[i].partition = parts->elems[i].partition;
    char err[512];
    dp_err e;
    int64_t delay = 200;
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    /* Without a claim nothing may be processed, so insist (with backoff). */
    for (;;) {
        e = db_ensure(rt, err, sizeof(err));
        if (e == DP_OK)
            e = dp_offsets_claim(rt->db, rt->group, rt->stage->input_topic,
                                 rt->cfg->instance_id, claims, n, err,
                                 sizeof(err));
        for (int i = 0; e == DP_OK && i < n; i++)
            e = load_marks(rt, claims[i].partition, err, sizeof(err));
        if (e == DP_OK)
            break;
        dp_log(DP_LOG_WARN, &ctx, "claiming partitions failed, retrying in "
               "%" PRId64 " ms: %s", delay, err);
        for (int i = 0; i < n; i++)
            part_reset(part_get(rt, claims[i].partition));
        usleep((useconds_t)delay * 1000);
        if (delay < 5000)
            delay *= 2;
    }
    json_t *assigned = json_array();
    for (int i = 0; i < n; i++) {
        dp_part *pt = part_get(rt, claims[i].partition);
        pt->assigned = 1;
        pt->epoch = claims[i].epoch;
        pt->committed = claims[i].next_offset;
        pt->first_seen = -1;
        pt->next_poll = -1;
        pt->retry_offset = -1;
        pt->paused_until_ms = 0;
        pt->replay_until = claims[i].replay_until;
        parts->elems[i].offset =
            claims[i].next_offset >= 0 ? claims[i].next_offset
            : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                         : RD_KAFKA_OFFSET_BEGINNING;
        json_array_append_new(assigned, json_pack("{s:i,s:I,s:I}",
            "partition", claims[i].partition, "offset",
            (json_int_t)claims[i].next_offset, "epoch",
            (json_int_t)claims[i].epoch));
    }
    free(claims);
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:o}", "partitions", assigned),
            "partitions assigned and claimed");
    DP_FAULT(rt->stage->name, "in-claim");
    rt->assign_gen++;
    rt->last_epoch_check_ms = mono_ms();
    rd_kafka_assign(rt->consumer, parts);
    /* A pause outlives the assignment in librdkafka: partitions paused for
     * a batch-wide wait that a rebalance ended would never fetch again. */
    rd_kafka_resume_partitions(rt->consumer, parts);
}

static void on_revoke(dp_runtime *rt)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    if (rt->nslots)
        dp_log(DP_LOG_INFO, &ctx, "revoked: dropping %zu uncommitted records",
               rt->nslots);
    batch_clear(rt);
    for (int i = 0; i < rt->nparts; i++)
        part_reset(&rt->parts[i]);
    rt->assign_gen++;
    rd_kafka_assign(rt->consumer, NULL);
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS)
        on_assign(rt, parts);
    else
        on_revoke(rt);
}

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    /* Success without an offset is librdkafka's implicit ack, which can
     * stand for a record that was never written (publish.h): the batch
     * rolls back and publishes again; downstream drops a copy by event id. */
    if (!dp_delivery_confirmed(m)) {
        rt->delivery_failures++;
        snprintf(rt->delivery_error, sizeof(rt->delivery_error), "%s",
                 m->err ? rd_kafka_err2str(m->err)
                        : "acknowledged without an offset (implicit ack)");
    }
}

/* A fatal error leaves a client unusable: an idempotent producer whose
 * sequence broke fails every later produce.  The producer is recreated
 * between batches (nothing of an unacknowledged batch commits); a fatal
 * consumer error stops the stage with the error. */
static void error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    dp_runtime *rt = opaque;
    if (err != RD_KAFKA_RESP_ERR__FATAL)
        return; /* transient: log_cb has it, librdkafka retries */
    char why[256];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, why, sizeof(why));
    snprintf(rt->fatal_error, sizeof(rt->fatal_error), "%s: %s (%s)",
             rd_kafka_err2name(orig), why, reason);
    if (rk == rt->producer)
        rt->producer_fatal = 1;
    else
        rt->consumer_fatal = 1;
    dp_log_ctx ctx = {rt->stage->name, NULL, NULL, -1, -1};
    dp_log(DP_LOG_ERROR, &ctx, "fatal Kafka %s error: %s",
           rk == rt->producer ? "producer" : "consumer", rt->fatal_error);
}

/* The outcome of commit_to_kafka()'s commits: monitoring only, so a
 * failure (a rebalance under way, say) is noted and otherwise ignored. */
static void offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                             rd_kafka_topic_partition_list_t *offsets,
                             void *opaque)
{
    (void)rk;
    dp_runtime *rt = opaque;
    for (int i = 0; !err && offsets && i < offsets->cnt; i++)
        err = offsets->elems[i].err;
    if (err && err != RD_KAFKA_RESP_ERR__NO_OFFSET) {
        dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
        dp_log(DP_LOG_DEBUG, &ctx, "positions not committed to Kafka "
               "(monitoring only): %s", rd_kafka_err2str(err));
    }
}

static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
                   const char *buf)
{
    (void)rk;
    dp_log(strcmp(fac, "CONFWARN") == 0 ? DP_LOG_DEBUG
           : level <= 3 ? DP_LOG_ERROR : level <= 4 ? DP_LOG_WARN : DP_LOG_DEBUG,
           NULL, "kafka %s: %s", fac, buf);
}

/* ---- building the clients ---------------------------------------------- */

static dp_err kafka_conf(dp_runtime *rt, int producer, rd_kafka_conf_t **out,
                         char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char kerr[256];
    struct { const char *k, *v; } base_consumer[] = {
        {"bootstrap.servers", rt->cfg->brokers},
        {"group.id", rt->group},
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"partition.assignment.strategy", "range"},
        {"isolation.level", "read_committed"},
        /* A position no longer in the log is reported, never jumped over
         * silently: see offset_out_of_range(). */
        {"auto.offset.reset", "error"},
        /* A small prefetch: nudge_fetcher() makes librdkafka refill it at
         * once instead of after its one-second backoff, so 256 KB keeps a
         * 1000-record batch fed and the process small. */
        {"queued.max.messages.kbytes", "256"},
        {"fetch.max.bytes", "1048576"},
        {"max.partition.fetch.bytes", "262144"},
        /* A fetch holding only caught-up partitions waits this long at the
         * broker, and everything else on the connection (the nudge, the
         * lagging partitions' next fetch) waits behind it. */
        {"fetch.wait.max.ms", "100"},
        {"client.id", rt->cfg->instance_id},
        {NULL, NULL}}, base_producer[] = {
        {"bootstrap.servers", rt->cfg->brokers},
        {"enable.idempotence", "true"},
        {"acks", "all"},
        /* One request in flight: with more, librdkafka 2.0.2 counts a
         * failed request as delivered when a later one of the same
         * partition succeeds (an "implicit ack"), and a broker without
         * producer state for the partition had accepted that later one
         * over the gap.  A gap would then be hidden for good by the
         * downstream watermark (docs/design.md, "Delivery reports"). */
        {"max.in.flight.requests.per.connection", "1"},
        {"linger.ms", "5"},
        {"partitioner", "murmur2_random"},
        {"client.id", rt->cfg->instance_id},
        {NULL, NULL}};
    for (int i = 0; (producer ? base_producer : base_consumer)[i].k; i++) {
        const char *k = (producer ? base_producer : base_consumer)[i].k;
        const char *v = (producer ? base_producer : base_consumer)[i].v;
        if (rd_kafka_conf_set(conf, k, v, kerr, sizeof(kerr)) != RD_KAFKA_CONF_OK) {
            rd_kafka_conf_destroy(conf);
            return dp_errf(DP_ERR_PERMANENT, err, errlen, "Kafka %s=%s: %s", k,
                           v, kerr);
        }
    }
    dp_err e = dp_config_apply_kafka(rt->cfg, conf, producer, err, errlen);
    if (e) {
        rd_kafka_conf_destroy(conf);
        return e;
    }
    rd_kafka_conf_set_log_cb(conf, log_cb);
    rd_kafka_conf_set_error_cb(conf, error_cb);
    rd_kafka_conf_set_opaque(conf, rt);
    *out = conf;
    return DP_OK;
}

static dp_err producer_new(dp_runtime *rt, char *err, size_t errlen)
{
    rd_kafka_conf_t *pc = NULL;
    char kerr[512];
    dp_err e = kafka_conf(rt, 1, &pc, err, errlen);
    if (e)
        return e;
    rd_kafka_conf_set_dr_msg_cb(pc, dr_cb);
    rt->producer = rd_kafka_new(RD_KAFKA_PRODUCER, pc, kerr, sizeof(kerr));
    if (!rt->producer)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "producer: %s", kerr);
    rt->producer_fatal = 0;
    return DP_OK;
}

/* Whether the producer is in a fatal state: error_cb reports it only when
 * the producer is polled, while produce calls fail with __FATAL at once. */
static int producer_is_fatal(dp_runtime *rt)
{
    if (rt->producer_fatal)
        return 1;
    char why[256];
    rd_kafka_resp_err_t fe = rd_kafka_fatal_error(rt->producer, why, sizeof(why));
    if (fe == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    snprintf(rt->fatal_error, sizeof(rt->fatal_error), "%s: %s",
             rd_kafka_err2name(fe), why);
    rt->producer_fatal = 1;
    return 1;
}

/* After a fatal producer error: whatever it still holds belongs to a batch
 * that will not commit, so it is purged and a new producer (new producer
 * id, fresh sequences) takes over. */
static dp_err producer_reset(dp_runtime *rt, char *err, size_t errlen)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, NULL, -1, -1};
    dp_log(DP_LOG_WARN, &ctx, "recreating the producer after a fatal error: %s",
           rt->fatal_error);
    rd_kafka_purge(rt->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    rd_kafka_flush(rt->producer, 1000);
    rd_kafka_destroy(rt->producer);
    rt->producer = NULL;
    rt->stats.producer_resets++;
    return producer_new(rt, err, errlen);
}

dp_err dp_runtime_new(const dp_config *cfg, const dp_stage *stage,
                      dp_runtime **out, char *err, size_t errlen)
{
    dp_runtime *rt = calloc(1, sizeof(*rt));
    rt->cfg = cfg;
    rt->stage = stage;
    rt->rand_state = (unsigned int)(getpid() ^ now_ms());
    rt->nudge_every_ms = NUDGE_LAGGING_MS;
    snprintf(rt->group, sizeof(rt->group), "%s%s", cfg->topic_prefix,
             stage->name);
    rt->batch_max = cfg->batch_max > 0 ? cfg->batch_max
                    : stage->batch_max > 0 ? stage->batch_max : 500;
    rd_kafka_conf_t *cc = NULL, *pc = NULL;
    char kerr[512];
    dp_err e = kafka_conf(rt, 0, &cc, err, errlen);
    if (e == DP_OK)
        e = kafka_conf(rt, 1, &pc, err, errlen);
    if (e)
        goto fail;
    rd_kafka_conf_set_rebalance_cb(cc, rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(cc, offset_commit_cb);
    rd_kafka_conf_destroy(pc);
    rt->consumer = rd_kafka_new(RD_KAFKA_CONSUMER, cc, kerr, sizeof(kerr));
    if (!rt->consumer) {
        e = dp_errf(DP_ERR_PERMANENT, err, errlen, "consumer: %s", kerr);
        goto fail;
    }
    cc = NULL;
    rd_kafka_poll_set_consumer(rt->consumer);
    rt->cq = rd_kafka_queue_get_consumer(rt->consumer);
    if ((e = producer_new(rt, err, errlen)))
        goto fail;
    e = dp_pg_connect(cfg, cfg->instance_id, &rt->db, err, errlen);
    if (e)
        goto fail;
    *out = rt;
    return DP_OK;
fail:
    if (cc)
        rd_kafka_conf_destroy(cc);
    dp_runtime_free(rt);
    *out = NULL;
    return e;
}

/* ---- one batch --------------------------------------------------------- */

static const char *header_str(rd_kafka_headers_t *h, const char *name,
                              char *buf, size_t buflen)
{
    const void *v;
    size_t len;
    if (!h || rd_kafka_header_get_last(h, name, &v, &len) != RD_KAFKA_RESP_ERR_NO_ERROR
        || !v || len >= buflen)
        return NULL;
    memcpy(buf, v, len);
    buf[len] = '\0';
    return buf;
}

/* A correlation id for a record that came without one: a UUID-shaped
 * digest of its position (two FNV-1a passes, version 8 "custom"), so every
 * replay of it logs the same id.  Not OpenSSL: a stage that never hashes
 * otherwise should not pay for initialising it. */
static void derive_corr(const char *topic, int32_t p, int64_t off, char out[40])
{
    char name[300];
    size_t tl = strnlen(topic, 260);
    memcpy(name, topic, tl);
    char *q = name + tl;
    *q++ = '/';
    q = fmt_u64(q, (uint64_t)p);
    *q++ = '/';
    q = fmt_u64(q, (uint64_t)off);
    int n = (int)(q - name);
    uint64_t h1 = 14695981039346656037ULL, h2 = 1099511628211ULL * 31u;
    for (int i = 0; i < n; i++) {
        h1 = (h1 ^ (unsigned char)name[i]) * 1099511628211ULL;
        h2 = (h2 ^ (unsigned char)name[n - 1 - i]) * 1099511628211ULL;
    }
    unsigned char md[16];
    for (int i = 0; i < 8; i++) {
        md[i] = (unsigned char)(h1 >> (56 - 8 * i));
        md[8 + i] = (unsigned char)(h2 >> (56 - 8 * i));
    }
    md[6] = (unsigned char)((md[6] & 0x0f) | 0x80);
    md[8] = (unsigned char)((md[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            *o++ = '-';
        *o++ = hex[md[i] >> 4];
        *o++ = hex[md[i] & 15];
    }
    *o = '\0';
}

/* Fills a slot from a polled message: identity, correlation id, upstream
 * attempt and position (decided and deduplicated when the batch is
 * settled: see decide_attempts() and dedup_pass()), decoding. */
static void slot_prepare(dp_runtime *rt, dp_slot *s, rd_kafka_message_t *m)
{
    s->msg = m;
    s->rec.topic = rt->stage->input_topic;
    s->rec.partition = m->partition;
    s->rec.offset = m->offset;
    rd_kafka_timestamp_type_t tst;
    s->rec.timestamp_ms = rd_kafka_message_timestamp(m, &tst);
    /* Key and value are copied so the message (and the fetch buffer it
     * pins inside librdkafka) is released at once: a batch then costs its
     * records' bytes, not the fetch responses they came in. */
    s->data = arena_alloc(&rt->recs, m->key_len + m->len + 1);
    if (m->key)
        memcpy(s->data, m->key, m->key_len);
    if (m->payload)
        memcpy(s->data + m->key_len, m->payload, m->len);
    s->rec.key = m->key ? s->data : NULL;
    s->rec.key_len = m->key_len;
    s->rec.value = m->payload ? s->data + m->key_len : NULL;
    s->rec.value_len = m->len;
    s->state = RS_PENDING;
    s->src_epoch = 0;
    s->src_offset = -1;
    s->src_index = -1;

    rd_kafka_headers_t *h = NULL;
    rd_kafka_message_headers(m, &h);
    char buf[64];
    if (!header_str(h, HDR_CORR, s->corr, sizeof(s->corr)))
        derive_corr(s->rec.topic, m->partition, m->offset, s->corr);
    s->rec.correlation_id = s->corr;
    dp_part *pt = part_get(rt, m->partition);
    s->rec.attempts = pt->retry_offset == m->offset ? pt->retry_attempts + 1 : 1;
    s->rec.replay = pt->replay_until >= 0 && m->offset < pt->replay_until;
    s->rec.generation = header_str(h, HDR_GEN, buf, sizeof(buf))
                            ? strtoll(buf, NULL, 10) : 0;
    s->out_gen = s->rec.generation;

    char stream[256], att[96];
    s->stream = NULL;
    if (header_str(h, HDR_STREAM, stream, sizeof(stream)) &&
        header_str(h, HDR_SEQ, buf, sizeof(buf)) &&
        sscanf(buf, "%" SCNd64 ":%" SCNd32, &s->src_offset, &s->src_index) == 2) {
        s->stream = mark_find(pt, stream, 1)->stream;
        /* Records of releases before commit visibility carry no attempt:
         * they are taken as committed, as they were then. */
        memcpy(s->att_stream, stream, sizeof(s->att_stream));
        if (header_str(h, DP_HDR_ATTEMPT, att, sizeof(att)) &&
            dp_attempt_parse(att, s->att_stream, &s->att))
            s->src_epoch = s->att.epoch;
        else
            memset(&s->att, 0, sizeof(s->att));
    }

    if (rt->stage->decode) {
        char err[512] = "";
        dp_err e = rt->stage->decode(rt->stage->state, m->payload, m->len,
                                     &s->rec.decoded, err, sizeof(err));
        if (e != DP_OK) {
            s->state = RS_DLQ;
            s->dlq_category = DP_ERR_POISON;
            s->error = strdup(*err ? err : "record cannot be decoded");
            s->first_failure_ms = s->last_failure_ms = now_ms();
        }
    }
}

/* Record s waits ms before it is tried again, its budget unspent: its
 * partition is paused and rewound to it, and the slots after it in the
 * partition leave this batch. */
static void defer_from(dp_runtime *rt, dp_slot *s, int64_t ms)
{
    dp_part *pt = part_get(rt, s->rec.partition);
    if (pt->retry_offset != s->rec.offset) {
        pt->retry_offset = s->rec.offset;
        pt->retry_attempts = s->rec.attempts - 1;
    }
    pt->paused_until_ms = mono_ms() + ms;
    for (size_t k = 0; k < rt->nslots; k++) {
        dp_slot *o = &rt->slots[k];
        if (o->rec.partition == s->rec.partition && o->rec.offset >= s->rec.offset)
            o->state = RS_DROPPED;
    }
}

/* Moves the failures of one handler pass into slot states; returns 1 if any
 * record failed (so the pass must be rolled back and re-run). */
static int settle_failures(dp_runtime *rt, dp_batch *b)
{
    int any = 0;
    for (size_t i = 0; i < b->n; i++) {
        dp_slot *s = b->live[i];
        if (s->verdict == DP_OK)
            continue;
        any = 1;
        if (s->state == RS_DROPPED) {
            /* Behind an earlier failure of its partition: not settled now. */
            s->verdict = DP_OK;
            s->defer_ms = 0;
            continue;
        }
        dp_part *pt = part_get(rt, s->rec.partition);
        dp_log_ctx ctx = slot_ctx(rt, s);
        int64_t t = now_ms();
        if (pt->retry_offset != s->rec.offset) {
            pt->retry_offset = s->rec.offset;
            pt->retry_attempts = 0;
            pt->first_failure_ms = t;
        }
        pt->retry_attempts = s->rec.attempts;
        pt->last_failure_ms = t;
        snprintf(pt->last_error, sizeof(pt->last_error), "%s",
                 s->error ? s->error : "");
        if (s->defer_ms > 0) {
            /* Not a failure of the record: wait, keep its budget. */
            pt->retry_attempts = s->rec.attempts - 1;
            dp_log(DP_LOG_DEBUG, &ctx, "record deferred %" PRId64 " ms: %s",
                   s->defer_ms, s->error ? s->error : "");
            defer_from(rt, s, s->defer_ms);
        } else if (s->verdict == DP_ERR_RETRYABLE && s->rec.attempts <= rt->cfg->retry_max) {
            int64_t delay = dp_backoff_ms(rt->cfg->retry_base_ms,
                                          s->rec.attempts - 1,
                                          rt->cfg->retry_jitter, &rt->rand_state);
            if (s->retry_min_ms > delay)
                delay = s->retry_min_ms;
            pt->paused_until_ms = mono_ms() + delay;
            rt->stats.retries++;
            dp_logj(DP_LOG_WARN, &ctx, json_pack("{s:i,s:I,s:s}", "attempt",
                    s->rec.attempts, "retry_in_ms", (json_int_t)delay, "error",
                    s->error ? s->error : ""),
                    "record failed retryably; partition paused until retry");
            /* This record and everything after it in its partition wait. */
            for (size_t k = 0; k < rt->nslots; k++) {
                dp_slot *o = &rt->slots[k];
                if (o->rec.partition == s->rec.partition &&
                    o->rec.offset >= s->rec.offset)
                    o->state = RS_DROPPED;
            }
        } else {
            s->state = RS_DLQ;
            s->dlq_category = s->verdict == DP_ERR_RETRYABLE ? DP_ERR_RETRYABLE
                                                             : DP_ERR_PERMANENT;
            s->first_failure_ms = pt->first_failure_ms;
            s->last_failure_ms = t;
            if (s->verdict == DP_ERR_RETRYABLE) {
                char *msg = NULL;
                if (asprintf(&msg, "retries exhausted after %d attempts: %s",
                             s->rec.attempts, s->error ? s->error : "") > 0) {
                    free(s->error);
                    s->error = msg;
                }
            }
        }
        s->verdict = DP_OK;
        s->defer_ms = 0;
        s->retry_min_ms = 0;
    }
    return any;
}

static dp_err insert_dead_letter(dp_runtime *rt, dp_slot *s, char *err,
                                 size_t errlen)
{
    char ps[16], os[32], att[16], ts[32], ff[32], lf[32];
    snprintf(ps, sizeof(ps), "%d", s->rec.partition);
    snprintf(os, sizeof(os), "%" PRId64, s->rec.offset);
    snprintf(att, sizeof(att), "%d", s->rec.attempts);
    snprintf(ts, sizeof(ts), "%" PRId64, s->rec.timestamp_ms);
    snprintf(ff, sizeof(ff), "%" PRId64, s->first_failure_ms);
    snprintf(lf, sizeof(lf), "%" PRId64, s->last_failure_ms);
    const char *params[15] = {rt->group, s->rec.topic, ps, os, rt->stage->name,
        rt->stage->dlq_topic, s->rec.key, s->rec.value,
        s->rec.timestamp_ms >= 0 ? ts : NULL, att,
        dp_err2str(s->dlq_category), s->error ? s->error : "", ff, lf, s->corr};
    int lens[15] = {0};
    int fmts[15] = {0};
    lens[6] = (int)s->rec.key_len;
    lens[7] = (int)s->rec.value_len;
    fmts[6] = fmts[7] = 1;
    if (!s->rec.key)
        params[6] = NULL;
    if (!s->rec.value)
        params[7] = NULL;
    PGresult *res = dp_pg_execp(rt->db,
        "INSERT INTO docpipe.dp_dead_letters (group_id, topic, partition,"
        " \"offset\", stage, dlq_topic, record_key, record_value, record_ts,"
        " attempts, category, error, first_failure, last_failure,"
        " correlation_id) VALUES ($1, $2, $3::int, $4::bigint, $5, $6, $7,"
        " $8, to_timestamp($9::bigint / 1000.0), $10::int, $11, $12,"
        " to_timestamp($13::bigint / 1000.0), to_timestamp($14::bigint / 1000.0),"
        " $15)", 15, NULL, params, lens, fmts, 0);
    dp_err e = dp_pg_check(rt->db, res, PGRES_COMMAND_OK, "record dead letter",
                           err, errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

/* The stage's own record of a dead letter runs under a savepoint: if it
 * fails for a reason of its own, the dead letter still goes out (and the
 * failure is logged) rather than stalling the partition on it. */
static dp_err dead_letter_hook(dp_runtime *rt, dp_slot *s, char *err,
                               size_t errlen)
{
    dp_err e = dp_pg_exec(rt->db, "SAVEPOINT dp_dead_letter", err, errlen);
    if (e)
        return e;
    e = rt->stage->dead_letter(rt->stage->state, rt->db, &s->rec,
                               s->dlq_category, s->error ? s->error : "", err,
                               errlen);
    if (e == DP_OK)
        return dp_pg_exec(rt->db, "RELEASE SAVEPOINT dp_dead_letter", err, errlen);
    if (e == DP_ERR_RETRYABLE)
        return e;
    dp_log_ctx ctx = slot_ctx(rt, s);
    dp_log(DP_LOG_ERROR, &ctx, "recording the dead letter in the stage's tables"
           " failed (dead-lettering anyway): %s", err);
    return dp_pg_exec(rt->db, "ROLLBACK TO SAVEPOINT dp_dead_letter", err, errlen);
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
static dp_err decide_attempts(dp_runtime *rt, size_t from, size_t to, char *err,
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
        dp_log_ctx ctx = slot_ctx(rt, s);
        dp_log(DP_LOG_DEBUG, &ctx, "upstream attempt %" PRId64 " of %s/%s/%d is "
               "neither committed nor aborted yet: record deferred",
               refs[j].id, refs[j].group, refs[j].topic, refs[j].partition);
        rt->stats.undecided++;
        defer_from(rt, s, UNDECIDED_DEFER_MS);
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
static void dedup_pass(dp_runtime *rt, size_t from, size_t to)
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
        dp_mark *m = mark_find(part_get(rt, s->rec.partition), s->stream, 1);
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
static dp_err store_marks(dp_runtime *rt, const dp_offset_advance *adv, int nadv,
                          char *err, size_t errlen)
{
    for (int k = 0; k < nadv; k++) {
        int p = adv[k].partition;
        dp_part *pt = part_get(rt, p);
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

static void add_header(rd_kafka_headers_t *h, const char *name, const char *v)
{
    rd_kafka_header_add(h, name, -1, v, -1);
}

static dp_err produce_one(dp_runtime *rt, const char *topic, const void *key,
                          size_t klen, const void *value, size_t vlen,
                          rd_kafka_headers_t *h, char *err, size_t errlen)
{
    for (;;) {
        rd_kafka_resp_err_t ke = rd_kafka_producev(rt->producer,
            RD_KAFKA_V_TOPIC(topic),
            RD_KAFKA_V_KEY((void *)key, klen),
            RD_KAFKA_V_VALUE((void *)value, vlen),
            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS(h),
            RD_KAFKA_V_END);
        if (ke == RD_KAFKA_RESP_ERR_NO_ERROR)
            return DP_OK;
        if (ke == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            rd_kafka_poll(rt->producer, 10);
            continue;
        }
        rd_kafka_headers_destroy(h);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "produce to %s: %s",
                       topic, rd_kafka_err2str(ke));
    }
}

/* The docpipe-attempt value of slot s's outputs in attempt id. */
static void attempt_header(dp_runtime *rt, const dp_slot *s, int64_t id,
                           char out[96])
{
    const dp_part *pt = part_get(rt, s->rec.partition);
    dp_attempt_format(id, pt->epoch, pt->committed, out, 96);
}

static dp_err produce_outputs(dp_runtime *rt, dp_slot *s, int64_t attempt,
                              char *err, size_t errlen)
{
    if (s->nouts == 0)
        return DP_OK;
    char att[96], gen[32];
    attempt_header(rt, s, attempt, att);
    snprintf(gen, sizeof(gen), "%" PRId64, s->out_gen);
    char event[600];
    int slen = snprintf(event, 300, "%s/%s/%d", rt->group, s->rec.topic,
                        s->rec.partition);
    if (slen < 0 || slen >= 300)
        slen = 299;
    event[slen] = '\0';
    char *seq = event + slen + 1; /* event is "<stream>/<seq>" */
    for (size_t i = 0; i < s->nouts; i++) {
        dp_output *o = &s->outs[i];
        char *p = fmt_u64(seq, (uint64_t)s->rec.offset);
        *p++ = ':';
        p = fmt_u64(p, i);
        *p = '\0';
        rd_kafka_headers_t *h = rd_kafka_headers_new(6);
        rd_kafka_header_add(h, HDR_STREAM, -1, event, slen);
        rd_kafka_header_add(h, HDR_SEQ, -1, seq, p - seq);
        event[slen] = '/';
        rd_kafka_header_add(h, HDR_EVENT, -1, event, p - event);
        event[slen] = '\0';
        rd_kafka_header_add(h, HDR_CORR, -1, s->corr, -1);
        rd_kafka_header_add(h, DP_HDR_ATTEMPT, -1, att, -1);
        if (s->out_gen)
            rd_kafka_header_add(h, HDR_GEN, -1, gen, -1);
        dp_err e = produce_one(rt, o->topic, o->key, o->key_len, o->value,
                               o->value_len, h, err, errlen);
        if (e)
            return e;
    }
    return DP_OK;
}

static void iso_time(int64_t ms, char out[64])
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(out, 64, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
             tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
             (int)(ms % 1000));
}

static dp_err produce_dead_letter(dp_runtime *rt, dp_slot *s, int64_t attempt,
                                  char *err, size_t errlen)
{
    char buf[64], ff[64], lf[64], ts[64], event[400], att[96];
    rd_kafka_headers_t *h = rd_kafka_headers_new(18);
    /* Like an output, a dead letter counts only if its attempt committed
     * (it is a row of dp_dead_letters then); its stream names the input. */
    attempt_header(rt, s, attempt, att);
    add_header(h, DP_HDR_ATTEMPT, att);
    snprintf(event, sizeof(event), "%s/%s/%d", rt->group, s->rec.topic,
             s->rec.partition);
    add_header(h, HDR_STREAM, event);
    snprintf(event, sizeof(event), "%s/%s/%d/%" PRId64 ":dlq", rt->group,
             s->rec.topic, s->rec.partition, s->rec.offset);
    add_header(h, HDR_EVENT, event);
    add_header(h, "docpipe-stage", rt->stage->name);
    add_header(h, "docpipe-group", rt->group);
    add_header(h, "docpipe-original-topic", s->rec.topic);
    snprintf(buf, sizeof(buf), "%d", s->rec.partition);
    add_header(h, "docpipe-original-partition", buf);
    snprintf(buf, sizeof(buf), "%" PRId64, s->rec.offset);
    add_header(h, "docpipe-original-offset", buf);
    if (s->rec.timestamp_ms >= 0) {
        iso_time(s->rec.timestamp_ms, ts);
        add_header(h, "docpipe-original-timestamp", ts);
    }
    if (s->rec.key)
        rd_kafka_header_add(h, "docpipe-original-key", -1, s->rec.key,
                            (ssize_t)s->rec.key_len);
    snprintf(buf, sizeof(buf), "%d", s->rec.attempts);
    add_header(h, "docpipe-attempts", buf);
    add_header(h, "docpipe-error-category", dp_err2str(s->dlq_category));
    add_header(h, "docpipe-error-message", s->error ? s->error : "");
    iso_time(s->first_failure_ms, ff);
    iso_time(s->last_failure_ms, lf);
    add_header(h, "docpipe-first-failure", ff);
    add_header(h, "docpipe-last-failure", lf);
    add_header(h, HDR_CORR, s->corr);
    return produce_one(rt, rt->stage->dlq_topic, s->rec.key, s->rec.key_len,
                       s->rec.value, s->rec.value_len, h, err, errlen);
}

typedef enum { BATCH_DONE, BATCH_RETRY, BATCH_SPLIT, BATCH_FENCED } batch_result;

/* The offset moves of slots [from, to): per partition, from the committed
 * position (under the claimed epoch) to after its last settled record. */
static dp_err plan_advance(dp_runtime *rt, size_t from, size_t to,
                           dp_offset_advance *adv, int cap, int *nadv,
                           char *err, size_t errlen)
{
    *nadv = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state == RS_DROPPED)
            continue;
        int k;
        for (k = 0; k < *nadv && adv[k].partition != s->rec.partition; k++)
            ;
        if (k == *nadv) {
            if (*nadv == cap)
                return dp_errf(DP_ERR_PERMANENT, err, errlen,
                               "more than %d partitions in one batch", cap);
            dp_part *pt = part_get(rt, s->rec.partition);
            adv[k].partition = s->rec.partition;
            adv[k].epoch = pt->epoch;
            adv[k].expected = pt->committed;
            (*nadv)++;
        }
        adv[k].next_offset = s->rec.offset + 1;
    }
    return DP_OK;
}

/* Handler passes over the live slots of [from, to) until every one is ok
 * (failed records leave the pass, see settle_failures), inside an open
 * transaction on return (DP_OK), or the transaction rolled back. */
static dp_err handle_passes(dp_runtime *rt, dp_batch *b, size_t from, size_t to,
                            batch_result *result, char *err, size_t errlen)
{
    dp_err e;
    for (;;) {
        /* A pass starts afresh: outputs of an earlier pass (rolled back)
         * and of slots already settled (acknowledged) are not needed. */
        arena_reset(&rt->outs);
        b->n = 0;
        for (size_t i = from; i < to; i++) {
            dp_slot *s = &rt->slots[i];
            slot_clear_outputs(s);
            s->verdict = DP_OK;
            if (s->state == RS_PENDING)
                b->live[b->n++] = s;
        }
        if ((e = dp_pg_exec(rt->db, "BEGIN", err, errlen)))
            return e;
        if (b->n == 0)
            return DP_OK;
        int64_t t_h = mono_ms();
        e = DP_FAULT(rt->stage->name, "batch-retry")
                ? dp_errf(DP_ERR_RETRYABLE, err, errlen, "fault point batch-retry")
                : rt->stage->handle(rt->stage->state, b, err, errlen);
        rt->t_handler += mono_ms() - t_h;
        if (e != DP_OK) {
            PQclear(PQexec(rt->db, "ROLLBACK"));
            rt->stats.rollbacks++;
            if (e == DP_ERR_RETRYABLE)
                return e;
            if (b->n > 1) {
                dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
                dp_log(DP_LOG_WARN, &ctx, "batch of %zu failed (%s); "
                       "retrying its records one at a time", b->n, err);
                *result = BATCH_SPLIT;
                return e;
            }
            dp_batch_fail(b, 0, DP_ERR_PERMANENT, "%s", err);
        }
        if (!settle_failures(rt, b))
            return DP_OK;
        if (e == DP_OK) {
            PQclear(PQexec(rt->db, "ROLLBACK"));
            rt->stats.rollbacks++;
        }
    }
}

/* For monitoring only (docs/design.md, "Offsets in Kafka, for monitoring
 * only"): the positions just committed in PostgreSQL are committed to the
 * group in Kafka too, asynchronously, so that Kafka's own tools show the
 * stage's lag.  Nothing reads them back (on_assign() assigns explicit
 * offsets from PostgreSQL), so a failure changes nothing: it is logged at
 * debug, here or in offset_commit_cb(). */
static void commit_to_kafka(dp_runtime *rt, const dp_offset_advance *adv,
                            int nadv)
{
    if (nadv == 0)
        return;
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(nadv);
    for (int k = 0; k < nadv; k++)
        rd_kafka_topic_partition_list_add(l, rt->stage->input_topic,
                                          adv[k].partition)->offset = adv[k].next_offset;
    rd_kafka_resp_err_t ke = rd_kafka_commit(rt->consumer, l, 1 /* async */);
    rd_kafka_topic_partition_list_destroy(l);
    if (ke) {
        dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
        dp_log(DP_LOG_DEBUG, &ctx, "positions not committed to Kafka "
               "(monitoring only): %s", rd_kafka_err2str(ke));
    }
}

/* Once committed: our view of the partitions and their marks moves on. */
static void settled(dp_runtime *rt, size_t from, size_t to,
                    const dp_offset_advance *adv, int nadv)
{
    commit_to_kafka(rt, adv, nadv);
    for (int k = 0; k < nadv; k++) {
        dp_part *pt = part_get(rt, adv[k].partition);
        pt->committed = adv[k].next_offset;
        if (pt->retry_offset >= 0 && pt->retry_offset < pt->committed) {
            pt->retry_offset = -1;
            pt->retry_attempts = 0;
        }
        for (int i = 0; i < pt->nmarks; i++) {
            dp_mark *m = &pt->marks[i];
            m->epoch = m->b_epoch;
            m->offset = m->b_offset;
            m->index = m->b_index;
        }
    }
    uint64_t dlq = 0, done = 0, dups = 0, aborted = 0;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        done += s->state == RS_PENDING;
        dups += s->state == RS_DUP;
        aborted += s->state == RS_ABORTED;
        if (s->state != RS_DLQ)
            continue;
        dlq++;
        dp_log_ctx c = slot_ctx(rt, s);
        dp_logj(DP_LOG_WARN, &c, json_pack("{s:s,s:i,s:s,s:s}", "category",
                dp_err2str(s->dlq_category), "attempts", s->rec.attempts,
                "error", s->error ? s->error : "", "dlq_topic",
                rt->stage->dlq_topic), "record dead-lettered");
    }
    rt->stats.batches++;
    rt->stats.records += done;
    rt->stats.dead_letters += dlq;
    rt->stats.duplicates += dups;
    rt->stats.aborted += aborted;
    rt->batch_failures = 0;
}

/*
 * One attempt to settle slots[from, to) (docs/design.md, "One transaction
 * per batch", lists these steps):
 *   1. decide the upstream attempts of the records; 2. skip duplicates and
 *   records of aborted attempts; 3. handler passes until every live record
 *   is ok; 4. dead-letter rows; 5. dedup marks; 6. the fenced offset move
 *   with this attempt's row (it now holds the partitions' row locks);
 *   7. outputs and dead letters handed to the producer, with this attempt's
 *   id; 8. every acknowledgement awaited; 9. COMMIT.
 * Outputs go out only after step 6, so a consumer that sees one while the
 * attempt is still open finds the lock held and waits for the outcome.
 */
static batch_result settle(dp_runtime *rt, size_t from, size_t to)
{
    char err[1024] = "";
    dp_err e;
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    dp_batch b = {rt, calloc(to - from + 1, sizeof(dp_slot *)), 0};
    batch_result result = BATCH_RETRY;
    dp_offset_advance adv[64];
    int nadv = 0;

    /* Slots may have moved (the array grows): re-point into them. */
    for (size_t i = from; i < to; i++)
        rt->slots[i].rec.correlation_id = rt->slots[i].corr;
    if (producer_is_fatal(rt) && (e = producer_reset(rt, err, sizeof(err))))
        goto retry;
    if ((e = db_ensure(rt, err, sizeof(err))))
        goto retry;
    /* Plans cached while the tables were small are made again now and
     * then, for their present size (pg_replan_ms). */
    int64_t now = mono_ms();
    if (rt->cfg->pg_replan_ms > 0 && now - rt->last_replan_ms >= rt->cfg->pg_replan_ms) {
        if ((e = dp_pg_replan(rt->db, err, sizeof(err))))
            goto retry;
        rt->last_replan_ms = now;
    }
    if ((e = decide_attempts(rt, from, to, err, sizeof(err))))
        goto retry;
    dedup_pass(rt, from, to);
    if ((e = handle_passes(rt, &b, from, to, &result, err, sizeof(err)))) {
        if (result == BATCH_SPLIT)
            goto out;
        goto retry;
    }
    if (DP_FAULT(rt->stage->name, "after-handler")) {
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err), "fault point after-handler");
        goto rollback;
    }

    /* Every live record is ok. */
    int64_t attempt = dp_attempt_new_id();
    if ((e = plan_advance(rt, from, to, adv, 64, &nadv, err, sizeof(err))))
        goto rollback;
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state != RS_DLQ)
            continue;
        if ((e = insert_dead_letter(rt, s, err, sizeof(err))))
            goto rollback;
        if (rt->stage->dead_letter && (e = dead_letter_hook(rt, s, err, sizeof(err))))
            goto rollback;
    }
    if ((e = store_marks(rt, adv, nadv, err, sizeof(err))))
        goto rollback;
    e = dp_offsets_advance(rt->db, rt->group, rt->stage->input_topic, adv,
                           nadv, attempt, err, sizeof(err));
    if (e == DP_ERR_FENCED) {
        PQclear(PQexec(rt->db, "ROLLBACK"));
        rt->stats.fenced++;
        rt->stats.rollbacks++;
        dp_log(DP_LOG_ERROR, &ctx, "commit refused, batch rolled back: %s",
               err);
        rt->rejoin = 1;
        result = BATCH_FENCED;
        goto out;
    }
    if (e)
        goto rollback;

    /* Outputs and dead letters out, with the attempt's id; their
     * acknowledgements are awaited before COMMIT. */
    rt->delivery_failures = 0;
    if (DP_FAULT(rt->stage->name, "producer-fatal"))
        rd_kafka_test_fatal_error(rt->producer,
                                  RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                  "fault point producer-fatal");
    for (size_t i = from; i < to; i++) {
        dp_slot *s = &rt->slots[i];
        if (s->state == RS_PENDING)
            e = produce_outputs(rt, s, attempt, err, sizeof(err));
        else if (s->state == RS_DLQ)
            e = produce_dead_letter(rt, s, attempt, err, sizeof(err));
        if (e)
            goto rollback;
    }
    int64_t t_flush = mono_ms();
    rd_kafka_resp_err_t fe = rd_kafka_flush(rt->producer, rt->cfg->produce_timeout_ms);
    rt->t_flush += mono_ms() - t_flush;
    if (fe != RD_KAFKA_RESP_ERR_NO_ERROR || rt->delivery_failures ||
        producer_is_fatal(rt)) {
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err),
                    "outputs not acknowledged by Kafka: %s",
                    rt->producer_fatal ? rt->fatal_error
                    : rt->delivery_failures ? rt->delivery_error : "timed out");
        goto rollback;
    }
    DP_FAULT(rt->stage->name, "after-produce");
    int64_t t_c = mono_ms();
    e = dp_pg_exec(rt->db, "COMMIT", err, sizeof(err));
    rt->t_commit += mono_ms() - t_c;
    if (e == DP_OK && DP_FAULT(rt->stage->name, "commit-lost"))
        e = dp_errf(DP_ERR_RETRYABLE, err, sizeof(err),
                    "fault point commit-lost: COMMIT's reply taken as lost");
    if (e) {
        /* The commit may or may not have happened: re-claim to find out. */
        dp_log(DP_LOG_ERROR, &ctx, "commit outcome unknown: %s", err);
        rt->rejoin = 1;
        result = BATCH_FENCED;
        goto out;
    }
    DP_FAULT(rt->stage->name, "after-commit");
    settled(rt, from, to, adv, nadv);
    result = BATCH_DONE;
    goto out;

rollback:
    PQclear(PQexec(rt->db, "ROLLBACK"));
    rt->stats.rollbacks++;
retry:
    rt->batch_failures++;
    dp_log(DP_LOG_WARN, &ctx, "batch failed (%s), will retry: %s",
           dp_err2str(e), err);
    result = BATCH_RETRY;
out:
    free(b.live);
    return result;
}

/* Rewinds every partition whose record waits for a retry, and pauses it.
 *
 * The rewind is a re-assignment of every partition we own at the offset its
 * next record must have: the retrying record for a waiting partition, the
 * committed offset for the others (everything polled from them is settled,
 * so nothing is skipped or repeated).  An assignment discards whatever was
 * fetched before it, which a seek of a paused partition does not promise. */
static void apply_deferrals(dp_runtime *rt)
{
    int any = 0;
    for (int p = 0; p < rt->nparts; p++)
        if (rt->parts[p].assigned && rt->parts[p].paused_until_ms > 0 &&
            rt->parts[p].retry_offset >= 0)
            any = 1;
    if (!any || rt->rejoin)
        return;
    rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_new(rt->nparts);
    rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int p = 0; p < rt->nparts; p++) {
        dp_part *pt = &rt->parts[p];
        if (!pt->assigned)
            continue;
        int64_t at = pt->paused_until_ms && pt->retry_offset >= 0 ? pt->retry_offset
                     : pt->committed >= 0 ? pt->committed
                     : pt->first_seen >= 0 ? pt->first_seen
                     : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                                  : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(all, rt->stage->input_topic, p)->offset = at;
        if (pt->paused_until_ms) {
            rd_kafka_topic_partition_list_add(paused, rt->stage->input_topic, p);
            if (pt->paused_until_ms > 0)
                pt->paused_until_ms = -pt->paused_until_ms; /* negative: applied */
        }
    }
    rd_kafka_resp_err_t ke = rd_kafka_assign(rt->consumer, all);
    if (ke == RD_KAFKA_RESP_ERR_NO_ERROR)
        ke = rd_kafka_pause_partitions(rt->consumer, paused);
    if (ke) {
        dp_log(DP_LOG_ERROR, NULL, "rewinding partitions for a retry failed: %s",
               rd_kafka_err2str(ke));
        rt->rejoin = 1;
    }
    rd_kafka_topic_partition_list_destroy(all);
    rd_kafka_topic_partition_list_destroy(paused);
}

/* The partitions assigned and running (not waiting for a record's retry),
 * each with the given offset. */
static rd_kafka_topic_partition_list_t *running_partitions(dp_runtime *rt, int64_t offset)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int p = 0; p < rt->nparts; p++)
        if (rt->parts[p].assigned && !rt->parts[p].paused_until_ms)
            rd_kafka_topic_partition_list_add(l, rt->stage->input_topic, p)->offset = offset;
    return l;
}

/*
 * Resumes the partitions in l, each at the offset given in l, or at the
 * one after the last record polled from it when that is negative.
 *
 * librdkafka resumes a partition at the offset after the last record the
 * application polled before the pause took effect.  Records polled (and
 * dropped, the partition being paused on our side) between the pause call
 * and that moment move this position past them: resumed plainly, the
 * partition would skip them, and a later commit would pass them by.  So
 * every resume is followed by a seek to the offset we expect next.
 */
static void resume_at(dp_runtime *rt, rd_kafka_topic_partition_list_t *l)
{
    rd_kafka_resume_partitions(rt->consumer, l);
    rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(l->cnt);
    for (int i = 0; i < l->cnt; i++) {
        dp_part *pt = part_get(rt, l->elems[i].partition);
        int64_t at = l->elems[i].offset >= 0 ? l->elems[i].offset
                     : pt->next_poll >= 0   ? pt->next_poll
                                            : pt->committed;
        if (pt->assigned && at >= 0) {
            rd_kafka_topic_partition_list_add(seek, rt->stage->input_topic,
                                              l->elems[i].partition)->offset = at;
            pt->next_poll = at;
        }
    }
    if (seek->cnt) {
        rd_kafka_error_t *e = rd_kafka_seek_partitions(rt->consumer, seek, 5000);
        for (int i = 0; !e && i < seek->cnt; i++)
            if (seek->elems[i].err) {
                dp_log(DP_LOG_WARN, NULL, "resuming partition %d at offset %" PRId64
                       ": %s; rejoining the group", (int)seek->elems[i].partition,
                       seek->elems[i].offset, rd_kafka_err2str(seek->elems[i].err));
                rt->rejoin = 1;
            }
        if (e) {
            dp_log(DP_LOG_WARN, NULL, "resuming partitions: %s; rejoining the group",
                   rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            rt->rejoin = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(seek);
}

static void resume_due(dp_runtime *rt)
{
    int64_t t = mono_ms();
    for (int p = 0; p < rt->nparts; p++) {
        dp_part *pt = &rt->parts[p];
        if (pt->paused_until_ms < 0 && -pt->paused_until_ms <= t) {
            rd_kafka_topic_partition_list_t *l =
                rd_kafka_topic_partition_list_new(1);
            rd_kafka_topic_partition_list_add(l, rt->stage->input_topic, p)->offset =
                pt->retry_offset >= 0 ? pt->retry_offset : -1;
            pt->paused_until_ms = 0;
            resume_at(rt, l);
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
}

static void take_message(dp_runtime *rt, rd_kafka_message_t *m);

/* Split mode: a batch-wide permanent error that no record was blamed for;
 * each record is settled alone, which finds the culprit.  A fence ends it
 * (the partitions are no longer ours: nothing after may commit). */
static void settle_one_by_one(dp_runtime *rt, volatile sig_atomic_t *stop)
{
    for (size_t i = 0; i < rt->nslots && !rt->rejoin && !*stop; i++) {
        while (rt->slots[i].state != RS_DROPPED) {
            batch_result ri = settle(rt, i, i + 1);
            if (ri == BATCH_DONE || ri == BATCH_FENCED || *stop || rt->rejoin)
                break;
            usleep(200 * 1000);
        }
        DP_FAULT(rt->stage->name, "split-record");
    }
}

static void process_batch(dp_runtime *rt, volatile sig_atomic_t *stop)
{
    int64_t t0 = mono_ms();
    while (rt->nslots) {
        batch_result r = settle(rt, 0, rt->nslots);
        if (r == BATCH_SPLIT) {
            settle_one_by_one(rt, stop);
            r = rt->rejoin ? BATCH_FENCED : BATCH_DONE;
        }
        if (r == BATCH_FENCED)
            rt->rejoin = 1;
        if (r != BATCH_RETRY || rt->rejoin || *stop)
            break;
        /* A batch-wide transient failure (database or Kafka down, a
         * service's breaker open): keep the batch, keep polling. */
        int64_t delay = dp_backoff_ms(rt->cfg->retry_base_ms < 1000
                                          ? rt->cfg->retry_base_ms : 1000,
                                      rt->batch_failures - 1 < 6
                                          ? rt->batch_failures - 1 : 6,
                                      rt->cfg->retry_jitter, &rt->rand_state);
        if (rt->retry_hint_ms > delay)
            delay = rt->retry_hint_ms;
        rt->retry_hint_ms = 0;
        /* Those waiting for a record's retry stay as they are (resume_due
         * resumes them); the others resume after their last record polled. */
        rd_kafka_topic_partition_list_t *l = running_partitions(rt, -1);
        rd_kafka_pause_partitions(rt->consumer, l);
        int64_t until = mono_ms() + delay;
        uint64_t gen = rt->assign_gen;
        DP_FAULT(rt->stage->name, "in-retry-wait");
        while (mono_ms() < until && !*stop && rt->assign_gen == gen) {
            rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 100);
            if (!m)
                continue;
            if (rt->assign_gen != gen) {
                /* A rebalance inside this poll dropped the batch, and m is
                 * the first record of the new assignment: it is kept. */
                take_message(rt, m);
                break;
            }
            rd_kafka_message_destroy(m); /* paused: stale prefetch */
        }
        if (rt->assign_gen != gen) {
            rd_kafka_topic_partition_list_destroy(l);
            rt->t_settle += mono_ms() - t0;
            return; /* the batch went with the old assignment */
        }
        resume_at(rt, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    apply_deferrals(rt);
    batch_clear(rt);
    rt->t_settle += mono_ms() - t0;
}

static void rejoin_group(dp_runtime *rt)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    dp_log(DP_LOG_WARN, &ctx, "rejoining the group to re-claim partitions");
    batch_clear(rt);
    rd_kafka_unsubscribe(rt->consumer);
    for (int i = 0; i < 20; i++) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, 50);
        if (m)
            rd_kafka_message_destroy(m);
    }
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, rt->stage->input_topic,
                                      RD_KAFKA_PARTITION_UA);
    rd_kafka_subscribe(rt->consumer, t);
    rd_kafka_topic_partition_list_destroy(t);
    rt->rejoin = 0;
}

/*
 * librdkafka 2.0.2 stops fetching a partition while the consumer's prefetch
 * queue is over queued.max.messages.kbytes, and looks again only when its
 * broker thread next wakes: after up to a second (fetch.queue.backoff.ms,
 * which later versions added, does not exist yet).  A small prefetch then
 * caps the rate at about one queue per second.  Any request to the broker
 * wakes that thread, which then finds the queue drained and fetches at once;
 * so when a poll comes back empty, a watermark query per partition (one
 * ListOffsets round trip) both wakes it and tells whether records are still
 * waiting (lagging: poll briefly and nudge again soon) or the partitions are
 * caught up (nudge rarely; new records arrive through the fetch the broker
 * holds open).  A lag that brings no records (a transactional producer's
 * last marker is never delivered) doubles the interval up to the idle one.
 */

static void nudge_fetcher(dp_runtime *rt)
{
    int64_t t = mono_ms();
    if (t - rt->last_nudge_ms < rt->nudge_every_ms)
        return;
    rt->last_nudge_ms = t;
    rt->nudges++;
    int fruitless = rt->polled == rt->polled_at_nudge;
    rt->polled_at_nudge = rt->polled;
    rd_kafka_topic_partition_list_t *l = running_partitions(rt, RD_KAFKA_OFFSET_END);
    int lagging = 0;
    /* One ListOffsets per leader, sent in parallel. */
    if (l->cnt && rd_kafka_offsets_for_times(rt->consumer, l, NUDGE_WAIT_MS) ==
                      RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < l->cnt; i++) {
            dp_part *pt = part_get(rt, l->elems[i].partition);
            int64_t next = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
            if (!l->elems[i].err && next >= 0 && l->elems[i].offset > next)
                lagging = 1;
        }
    }
    rd_kafka_topic_partition_list_destroy(l);
    if (!lagging)
        rt->nudge_every_ms = NUDGE_IDLE_MS;
    else if (!fruitless)
        rt->nudge_every_ms = NUDGE_LAGGING_MS;
    else if ((rt->nudge_every_ms *= 2) > NUDGE_IDLE_MS)
        rt->nudge_every_ms = NUDGE_IDLE_MS;
}

/* The fetch woken after an empty poll arrives one round trip later, while
 * PostgreSQL waits for the next batch.  So when a batch is about to be
 * settled and the prefetch queue no longer holds the next one, a helper
 * thread sends the same query now: the broker thread fetches while this
 * thread settles, and the next poll finds records waiting. */
static void *nudger_main(void *arg)
{
    dp_runtime *rt = arg;
    pthread_mutex_lock(&rt->nudge_mu);
    for (;;) {
        while (!rt->nudger_stop && !rt->nudge_req)
            pthread_cond_wait(&rt->nudge_cv, &rt->nudge_mu);
        if (rt->nudger_stop)
            break;
        rd_kafka_topic_partition_list_t *l = rt->nudge_req;
        rt->nudge_req = NULL;
        rt->nudge_busy = 1;
        rt->early_nudges++;
        pthread_mutex_unlock(&rt->nudge_mu);
        rd_kafka_offsets_for_times(rt->consumer, l, 1000);
        rd_kafka_topic_partition_list_destroy(l);
        pthread_mutex_lock(&rt->nudge_mu);
        rt->nudge_busy = 0;
    }
    pthread_mutex_unlock(&rt->nudge_mu);
    return NULL;
}

static void nudge_early(dp_runtime *rt)
{
    if (!rt->nudger_running ||
        rd_kafka_queue_length(rt->cq) >= (size_t)rt->batch_max)
        return;
    pthread_mutex_lock(&rt->nudge_mu);
    if (!rt->nudge_req && !rt->nudge_busy) {
        rd_kafka_topic_partition_list_t *l = running_partitions(rt, RD_KAFKA_OFFSET_END);
        if (l->cnt) {
            rt->nudge_req = l;
            pthread_cond_signal(&rt->nudge_cv);
        } else {
            rd_kafka_topic_partition_list_destroy(l);
        }
    }
    pthread_mutex_unlock(&rt->nudge_mu);
}

static void nudger_start(dp_runtime *rt)
{
    pthread_mutex_init(&rt->nudge_mu, NULL);
    pthread_cond_init(&rt->nudge_cv, NULL);
    rt->nudger_running = pthread_create(&rt->nudger, NULL, nudger_main, rt) == 0;
}

static void nudger_join(dp_runtime *rt)
{
    if (!rt->nudger_running)
        return;
    pthread_mutex_lock(&rt->nudge_mu);
    rt->nudger_stop = 1;
    pthread_cond_signal(&rt->nudge_cv);
    pthread_mutex_unlock(&rt->nudge_mu);
    pthread_join(rt->nudger, NULL);
    if (rt->nudge_req)
        rd_kafka_topic_partition_list_destroy(rt->nudge_req);
    rt->nudge_req = NULL;
    rt->nudger_running = 0;
    pthread_mutex_destroy(&rt->nudge_mu);
    pthread_cond_destroy(&rt->nudge_cv);
}

/*
 * A partition's position is no longer in the log (auto.offset.reset is
 * "error", so librdkafka reports it instead of jumping): records were
 * deleted before this stage read them (retention, DeleteRecords), or the
 * topic was recreated shorter.  With offset_gap "earliest" the stage
 * resumes at the earliest record kept, logs the gap at WARN and writes it
 * into docpipe.dp_offset_gaps; with "fail" it stops with the error.
 */
static void offset_out_of_range(dp_runtime *rt, int32_t p, const char *why)
{
    dp_part *pt = part_get(rt, p);
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, p, -1};
    if (!pt->assigned)
        return;
    int64_t from = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
    int64_t lo = -1, hi = -1;
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
        rt->consumer, rt->stage->input_topic, p, &lo, &hi, 10000);
    if (ke) {
        dp_log(DP_LOG_WARN, &ctx, "offset %" PRId64 " is out of range (%s) and "
               "the log's bounds are unknown (%s); rejoining the group", from,
               why, rd_kafka_err2str(ke));
        rt->rejoin = 1;
        return;
    }
    if (strcmp(rt->cfg->offset_gap, "fail") == 0) {
        snprintf(rt->fatal_error, sizeof(rt->fatal_error),
                 "%s partition %d: stored offset %" PRId64 " is no longer in the"
                 " log (it holds %" PRId64 "..%" PRId64 "); records were deleted"
                 " before this stage read them (offset_gap=fail)",
                 rt->stage->input_topic, p, from, lo, hi - 1);
        rt->consumer_fatal = 1;
        return;
    }
    int64_t lost = from >= 0 && from < lo ? lo - from : 0;
    rt->stats.gaps += (uint64_t)lost;
    dp_logj(DP_LOG_WARN, &ctx, json_pack("{s:I,s:I,s:I,s:I}", "from",
            (json_int_t)from, "resume_at", (json_int_t)lo, "log_end",
            (json_int_t)hi, "lost", (json_int_t)lost),
            "stored offset no longer in the log: resuming at the earliest record"
            " kept; the offsets between were never processed");
    char ps[16], fs[32], ts[32], err[512];
    snprintf(ps, sizeof(ps), "%d", p);
    snprintf(fs, sizeof(fs), "%" PRId64, from);
    snprintf(ts, sizeof(ts), "%" PRId64, lo);
    const char *params[6] = {rt->group, rt->stage->input_topic, ps, fs, ts,
                             rt->cfg->instance_id};
    if (db_ensure(rt, err, sizeof(err)) ||
        dp_pg_command(rt->db, "INSERT INTO docpipe.dp_offset_gaps (group_id,"
            " topic, partition, from_offset, to_offset, owner) VALUES ($1, $2,"
            " $3::int, $4::bigint, $5::bigint, $6)", 6, params,
            "record offset gap", err, sizeof(err)))
        dp_log(DP_LOG_WARN, &ctx, "the gap could not be recorded: %s", err);
    /* A partition whose fetch stopped on the error is not seekable in
     * librdkafka 2.0.2: the assignment is made again, this partition at lo
     * and every other at the offset it expects next (paused ones paused
     * again), which also restarts the fetch. */
    rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_new(rt->nparts);
    rd_kafka_topic_partition_list_t *paused = rd_kafka_topic_partition_list_new(rt->nparts);
    for (int q = 0; q < rt->nparts; q++) {
        dp_part *o = &rt->parts[q];
        if (!o->assigned)
            continue;
        int64_t at = q == p ? lo
                     : o->paused_until_ms && o->retry_offset >= 0 ? o->retry_offset
                     : o->next_poll >= 0 ? o->next_poll
                     : o->committed >= 0 ? o->committed
                     : strcmp(rt->cfg->offset_reset, "latest") == 0 ? RD_KAFKA_OFFSET_END
                                                                  : RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_list_add(all, rt->stage->input_topic, q)->offset = at;
        if (o->paused_until_ms)
            rd_kafka_topic_partition_list_add(paused, rt->stage->input_topic, q);
    }
    rd_kafka_resp_err_t ae = rd_kafka_assign(rt->consumer, all);
    if (ae == RD_KAFKA_RESP_ERR_NO_ERROR && paused->cnt)
        ae = rd_kafka_pause_partitions(rt->consumer, paused);
    if (ae) {
        dp_log(DP_LOG_WARN, &ctx, "resuming at %" PRId64 " failed (%s); rejoining",
               lo, rd_kafka_err2str(ae));
        rt->rejoin = 1;
    }
    rd_kafka_topic_partition_list_destroy(all);
    rd_kafka_topic_partition_list_destroy(paused);
    pt->next_poll = lo;
    if (pt->first_seen < 0)
        pt->first_seen = lo;
}

/* Takes one polled message into the batch being built, or drops it (an
 * error, or a partition paused on our side, rewound to be fetched again). */
static void take_message(dp_runtime *rt, rd_kafka_message_t *m)
{
    if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__AUTO_OFFSET_RESET ||
            m->err == RD_KAFKA_RESP_ERR_OFFSET_OUT_OF_RANGE) {
            offset_out_of_range(rt, m->partition, rd_kafka_message_errstr(m));
        } else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
            dp_log(DP_LOG_WARN, &ctx, "consumer: %s", rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
        return;
    }
    dp_part *pt = part_get(rt, m->partition);
    if (pt->first_seen < 0)
        pt->first_seen = m->offset;
    /* Offsets are dense in topics written without transactions (and
     * not compacted): a jump means a record was never polled. */
    int64_t expect = pt->next_poll >= 0 ? pt->next_poll : pt->committed;
    if (expect >= 0 && m->offset > expect) {
        rt->stats.gaps++;
        dp_log_ctx gc = {rt->stage->name, NULL, rt->stage->input_topic,
                         m->partition, m->offset};
        dp_log(DP_LOG_WARN, &gc, "offsets %" PRId64 "..%" PRId64
               " were never polled", expect, m->offset - 1);
    }
    pt->next_poll = m->offset + 1;
    if (!pt->assigned || pt->paused_until_ms) {
        rd_kafka_message_destroy(m); /* rewound: refetched later */
        return;
    }
    if (rt->nslots == rt->capslots) {
        /* One batch's worth at once: no copies while it fills. */
        rt->capslots = rt->capslots ? rt->capslots * 2
                       : rt->batch_max < 4096 ? (size_t)rt->batch_max : 4096;
        rt->slots = realloc(rt->slots, rt->capslots * sizeof(dp_slot));
    }
    if (rt->nslots == 0)
        rt->batch_deadline_ms = mono_ms() + rt->cfg->batch_wait_ms;
    dp_slot *s = &rt->slots[rt->nslots++];
    memset(s, 0, sizeof(*s));
    slot_prepare(rt, s, m);
    rd_kafka_message_destroy(m);
    s->msg = NULL;
}

/* An owner with nothing to commit would never notice that `docpipe
 * replay` (or anyone) took its partitions: while idle it compares its
 * epochs with the stored ones now and then, and rejoins if one moved. */
static void check_epochs(dp_runtime *rt)
{
    int64_t t = mono_ms();
    if (rt->nslots || t - rt->last_epoch_check_ms < EPOCH_CHECK_MS)
        return;
    rt->last_epoch_check_ms = t;
    int32_t parts[256];
    int64_t epochs[256];
    int n = 0;
    for (int p = 0; p < rt->nparts && n < 256; p++)
        if (rt->parts[p].assigned)
            parts[n++] = p;
    char err[512];
    if (n == 0 || db_ensure(rt, err, sizeof(err)) ||
        dp_offsets_epochs(rt->db, rt->group, rt->stage->input_topic, parts,
                          epochs, n, err, sizeof(err)))
        return;
    for (int i = 0; i < n; i++)
        if (epochs[i] != rt->parts[parts[i]].epoch) {
            dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic,
                              parts[i], -1};
            dp_log(DP_LOG_INFO, &ctx, "partition taken (epoch %" PRId64 " now, "
                   "ours %" PRId64 "): rejoining to claim it again", epochs[i],
                   rt->parts[parts[i]].epoch);
            rt->rejoin = 1;
            return;
        }
}

dp_err dp_runtime_run(dp_runtime *rt, volatile sig_atomic_t *stop, char *err,
                      size_t errlen)
{
    dp_log_ctx ctx = {rt->stage->name, NULL, rt->stage->input_topic, -1, -1};
    rd_kafka_topic_partition_list_t *t = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(t, rt->stage->input_topic,
                                      RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t ke = rd_kafka_subscribe(rt->consumer, t);
    rd_kafka_topic_partition_list_destroy(t);
    if (ke)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "subscribe to %s: %s",
                       rt->stage->input_topic, rd_kafka_err2str(ke));
    /* Learn the output topics now, not on the first batch's flush. */
    const char *warm[34];
    int nw = 0;
    for (int i = 0; rt->stage->output_topics && rt->stage->output_topics[i] && nw < 32; i++)
        warm[nw++] = rt->stage->output_topics[i];
    if (rt->stage->dlq_topic)
        warm[nw++] = rt->stage->dlq_topic;
    for (int i = 0; i < nw; i++) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(rt->producer, warm[i], NULL);
        const rd_kafka_metadata_t *md = NULL;
        if (rd_kafka_metadata(rt->producer, 0, rkt, &md, 5000) == 0 && md)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:s,s:i,s:i}", "group", rt->group,
            "batch_max", rt->batch_max, "batch_wait_ms", rt->cfg->batch_wait_ms),
            "stage started");
    nudger_start(rt);

    while (!*stop) {
        if (rt->consumer_fatal)
            break;
        if (rt->rejoin)
            rejoin_group(rt);
        resume_due(rt);
        int timeout = 100;
        if (rt->nslots) {
            int64_t left = rt->batch_deadline_ms - mono_ms();
            timeout = left < 0 ? 0 : (int)left;
        }
        if (timeout > rt->nudge_every_ms)
            timeout = (int)rt->nudge_every_ms;
        /* Wait for one record, then take whatever else is already queued.
         * Not with rd_kafka_consume_batch_queue(): in librdkafka 2.0.2 it
         * can drop records next to an assignment, pause, resume or seek
         * (fixed in 2.1.0), and a dropped record is a lost one, since the
         * offsets committed after it pass it by. */
        rd_kafka_message_t *ms[256];
        size_t nm = 0;
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rt->consumer, timeout);
        if (m) {
            ms[nm++] = m;
            size_t want = rt->batch_max > (int)rt->nslots + 1
                              ? (size_t)rt->batch_max - rt->nslots - 1 : 0;
            if (want > sizeof(ms) / sizeof(ms[0]) - 1)
                want = sizeof(ms) / sizeof(ms[0]) - 1;
            for (size_t k = 0; k < want; k++) {
                if (!(m = rd_kafka_consumer_poll(rt->consumer, 0)))
                    break;
                ms[nm++] = m;
            }
        }
        rt->polled += nm;
        if (nm == 0) {
            nudge_fetcher(rt);
            check_epochs(rt);
        }
        for (size_t k = 0; k < nm; k++)
            take_message(rt, ms[k]);
        if (rt->nslots && ((int)rt->nslots >= rt->batch_max ||
                           mono_ms() >= rt->batch_deadline_ms)) {
            nudge_early(rt);
            process_batch(rt, stop);
        }
    }
    /* Stopping: settle what we hold, then leave the group cleanly. */
    if (rt->nslots && !rt->rejoin && !rt->consumer_fatal)
        process_batch(rt, stop);
    batch_clear(rt);
    nudger_join(rt);
    dp_log(DP_LOG_INFO, &ctx, "stopping: leaving the group");
    rd_kafka_consumer_close(rt->consumer);
    rd_kafka_flush(rt->producer, rt->cfg->produce_timeout_ms);
    dp_runtime_stats s = rt->stats;
    dp_logj(DP_LOG_DEBUG, &ctx, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "settle_ms",
            (json_int_t)rt->t_settle, "handler_ms", (json_int_t)rt->t_handler,
            "flush_ms", (json_int_t)rt->t_flush, "commit_ms",
            (json_int_t)rt->t_commit, "nudges", (json_int_t)rt->nudges,
            "early_nudges", (json_int_t)rt->early_nudges),
            "time spent settling batches");
    dp_logj(DP_LOG_INFO, &ctx, json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
            "batches", (json_int_t)s.batches, "records", (json_int_t)s.records,
            "duplicates", (json_int_t)s.duplicates, "dead_letters",
            (json_int_t)s.dead_letters, "retries", (json_int_t)s.retries,
            "fenced", (json_int_t)s.fenced, "offset_gaps", (json_int_t)s.gaps,
            "aborted_upstream", (json_int_t)s.aborted, "undecided_deferrals",
            (json_int_t)s.undecided, "producer_resets",
            (json_int_t)s.producer_resets), "stage stopped");
    if (rt->consumer_fatal)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "%s", rt->fatal_error);
    return DP_OK;
}

void dp_runtime_get_stats(dp_runtime *rt, dp_runtime_stats *out)
{
    *out = rt->stats;
}

void dp_runtime_free(dp_runtime *rt)
{
    if (!rt)
        return;
    nudger_join(rt);
    batch_clear(rt);
    arena_free(&rt->recs);
    arena_free(&rt->outs);
    free(rt->slots);
    if (rt->cq)
        rd_kafka_queue_destroy(rt->cq);
    for (int i = 0; i < rt->nparts; i++)
        part_reset(&rt->parts[i]);
    free(rt->parts);
    if (rt->consumer)
        rd_kafka_destroy(rt->consumer);
    if (rt->producer)
        rd_kafka_destroy(rt->producer);
    if (rt->db)
        dp_pg_finish(rt->db);
    free(rt);
}

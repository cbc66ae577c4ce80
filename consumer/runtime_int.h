/*
 * runtime_int: what the runtime's rooms share (runtime.c the loop and the
 * batch API; partitions.c, visibility.c, deadletters.c, clients.c, fetch.c,
 * dp_arena.c).  Not for stages: their contract is stage.h.
 *
 * One dp_runtime is driven by one thread (fetch.c's nudger thread only
 * sends watermark queries).  A batch is an array of slots, one per polled
 * record, settled by runtime.c's settle() in the steps docs/design.md
 * lists.
 */
#ifndef DP_RUNTIME_INT_H
#define DP_RUNTIME_INT_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <jansson.h>

#include "arena.h"
#include "attempts.h"
#include "backoff.h"
#include "clock.h"
#include "fault.h"
#include "log.h"
#include "offsets.h"
#include "pg.h"
#include "publish.h"
#include "runtime.h"

#define NUDGE_LAGGING_MS 1   /* see dp_fetch_nudge() */
#define NUDGE_IDLE_MS 250
#define NUDGE_WAIT_MS 50     /* longest wait for the watermarks: the wake-up is the point */
#define STALL_MS 20000       /* a running partition behind its log end that
                                polls nothing this long is fetched again
                                (dp_fetch_nudge) */

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
    int64_t leave_ms;            /* dp_batch_leave: not handled, no effect */
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
 * would leave it (b_*; recomputed by every settle, see dp_dedup_pass). */
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
    int paused_by_assign;        /* paused as it was assigned at its retry
                                    offset (dp_part_apply_deferrals): nothing
                                    polled from it since */
    int64_t first_seen;          /* first offset polled, -1: none yet */
    int64_t next_poll;           /* offset after the last one polled, -1: none */
    int64_t replay_until;        /* offsets below are replays, -1: none */
    int64_t stall_at;            /* next_poll when it was last seen lagging */
    int64_t stall_since_ms;      /* since then, 0: not lagging */
    int stall_refetched;         /* assigned again for this stall already */
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
    dp_arena recs;                  /* record copies of the batch being built */
    dp_arena outs;                  /* outputs of the current handler pass */
    rd_kafka_queue_t *cq;        /* the consumer's queue */
    int batch_max;
    int64_t batch_deadline_ms;
    int delivery_failures;
    char delivery_error[256];
    int rejoin;                  /* fenced or unsure: re-subscribe */
    int batch_failures;          /* consecutive batch-wide failures */
    int64_t retry_hint_ms;       /* from dp_batch_retry_after */
    int64_t t_handler, t_flush, t_commit, t_settle; /* ms spent, for debug */
    int64_t last_nudge_ms;       /* see dp_fetch_nudge() */
    int64_t nudges, early_nudges; /* watermark queries sent, for the debug timings */
    int64_t last_replan_ms;      /* last DISCARD PLANS (pg_replan_ms) */
    int64_t nudge_every_ms;      /* NUDGE_LAGGING_MS up to NUDGE_IDLE_MS */
    uint64_t polled;             /* records polled, ever */
    uint64_t polled_at_nudge;    /* ... at the last nudge */
    /* The early nudge (see dp_fetch_nudge_early()): a helper thread that sends the
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
    int64_t last_epoch_check_ms; /* see dp_part_check_epochs() */
    /* What metrics and health read (runtime.h), under view_mu: the stage
     * thread publishes it each loop turn; stats_cb writes its part. */
    pthread_mutex_t view_mu;
    dp_runtime_view view;
    int64_t last_lag_ms;         /* lag is measured once a second */
};

typedef enum { BATCH_DONE, BATCH_RETRY, BATCH_SPLIT, BATCH_FENCED } batch_result;

static inline int64_t dp_rt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline int64_t dp_rt_mono_ms(void) { return dp_clock_mono_ms(NULL); }

/* Decimal digits of v at p; returns the end (no NUL).  The hot path formats
 * a few numbers per record, where snprintf showed in profiles. */
static inline char *dp_rt_fmt_u64(char *p, uint64_t v)
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

static inline dp_log_ctx dp_rt_slot_ctx(const dp_runtime *rt, const dp_slot *s)
{
    dp_log_ctx c = {rt->stage->name, s->corr, s->rec.topic, s->rec.partition,
                    s->rec.offset};
    return c;
}

/* partitions.c */
dp_part *dp_part_get(dp_runtime *rt, int32_t p);
void dp_part_reset(dp_part *pt);
void dp_part_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                          rd_kafka_topic_partition_list_t *parts, void *opaque);
void dp_part_defer_from(dp_runtime *rt, dp_slot *s, int64_t ms);
void dp_part_apply_deferrals(dp_runtime *rt);
rd_kafka_topic_partition_list_t *dp_part_running(dp_runtime *rt, int64_t offset);
void dp_part_resume_at(dp_runtime *rt, rd_kafka_topic_partition_list_t *l);
void dp_part_resume_due(dp_runtime *rt);
/* The assignment made again at the offsets expected next (paused
 * partitions at their retry, paused again): every fetch restarts. */
void dp_part_refetch(dp_runtime *rt);
void dp_part_rejoin(dp_runtime *rt);
void dp_part_out_of_range(dp_runtime *rt, int32_t p, const char *why);
void dp_part_check_epochs(dp_runtime *rt);

/* visibility.c */
dp_mark *dp_dedup_mark(dp_part *pt, const char *stream, int create);
dp_err dp_dedup_load(dp_runtime *rt, int32_t p, char *err, size_t errlen);
dp_err dp_dedup_decide(dp_runtime *rt, size_t from, size_t to, char *err,
                       size_t errlen);
void dp_dedup_pass(dp_runtime *rt, size_t from, size_t to);
/* After COMMIT: the partition's marks as the batch left them. */
void dp_dedup_commit(dp_part *pt);
dp_err dp_dedup_store(dp_runtime *rt, const dp_offset_advance *adv, int nadv,
                      char *err, size_t errlen);

/* deadletters.c */
dp_err dp_dlq_record(dp_runtime *rt, dp_slot *s, int64_t attempt, char *err,
                     size_t errlen);
dp_err dp_dlq_hook(dp_runtime *rt, dp_slot *s, char *err, size_t errlen);
dp_err dp_dlq_publish(dp_runtime *rt, dp_slot *s, int64_t attempt,
                      char *err, size_t errlen);

/* clients.c */
dp_err dp_kafka_conf(dp_runtime *rt, int producer, rd_kafka_conf_t **out,
                     char *err, size_t errlen);
void dp_kafka_offset_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                               rd_kafka_topic_partition_list_t *offsets,
                               void *opaque);
dp_err dp_kafka_producer_new(dp_runtime *rt, char *err, size_t errlen);
int dp_kafka_producer_fatal(dp_runtime *rt);
dp_err dp_kafka_producer_reset(dp_runtime *rt, char *err, size_t errlen);
const char *dp_kafka_header_str(rd_kafka_headers_t *h, const char *name,
                                char *buf, size_t buflen);
void dp_kafka_header_add(rd_kafka_headers_t *h, const char *name, const char *v);
dp_err dp_kafka_produce(dp_runtime *rt, const char *topic, const void *key,
                        size_t klen, const void *value, size_t vlen,
                        rd_kafka_headers_t *h, char *err, size_t errlen);
void dp_kafka_attempt_header(dp_runtime *rt, const dp_slot *s, int64_t id,
                             char out[96]);
dp_err dp_kafka_publish_outputs(dp_runtime *rt, dp_slot *s, int64_t attempt,
                                char *err, size_t errlen);

/* fetch.c */
void dp_fetch_take(dp_runtime *rt, rd_kafka_message_t *m);
void dp_fetch_nudge(dp_runtime *rt);
void dp_fetch_nudge_early(dp_runtime *rt);
void dp_fetch_nudger_start(dp_runtime *rt);
void dp_fetch_nudger_join(dp_runtime *rt);

/* runtime.c */
void dp_rt_batch_clear(dp_runtime *rt);
dp_err dp_rt_db_ensure(dp_runtime *rt, char *err, size_t errlen);

#endif

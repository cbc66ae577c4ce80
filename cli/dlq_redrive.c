/*
 * dlq_redrive: `docpipe dlq redrive`, dead letters sent back to their
 * stage's input topic, each exactly once, and marked resolved.
 *
 * What is sent is the original record: its key and value unchanged, to the
 * topic and partition it was read from, with its correlation id, a
 * docpipe-redriven-from header naming the dead letter
 * (<group>/<topic>/<partition>/<offset>) and a docpipe-redrive-id header,
 * and none of the upstream stream headers (docpipe-stream, docpipe-seq,
 * docpipe-event-id) nor any docpipe-attempt* header.  The stage takes it as
 * a fresh record, like `docpipe retry`'s; a copy carrying its old stream and
 * sequence would sit below the stage's deduplication watermark and be
 * skipped.
 *
 * Exactly once, whatever instruction the command dies on, rests on three
 * things (docs/design.md, "Sending dead letters back"):
 *   - a ledger row per send (docpipe.dp_dlq_redrives), committed as
 *     'sending', with the partition's end offset, BEFORE the record is
 *     produced: the record can only be at or after that offset;
 *   - a transactional producer with one transactional.id per topic prefix.
 *     Each run first fences the one before it (init_transactions): a
 *     transaction a dead run left open is aborted, and the broker refuses
 *     whatever its producer still had in flight, so nothing of it can
 *     appear later;
 *   - so a run can settle every row left 'sending': it reads the partition
 *     from the recorded offset to its end, read_committed as every stage
 *     reads, for the row's redrive id.  Found: the row is 'sent' and the
 *     dead letter resolved.  Not found: that attempt is 'lost' and the dead
 *     letter goes out again.
 * Records go out in Kafka transactions of --batch records.  Once the
 * transaction has committed, the rows of the records acknowledged with an
 * offset become 'sent' and their dead letters resolved, in one statement.
 * A record acknowledged without one (librdkafka's "implicit ack", see
 * consumer/publish.h) stays 'sending' and is settled like a dead run's.
 *
 * One redrive (or purge) runs per prefix at a time (an advisory lock).
 * SIGINT/SIGTERM end the run between transactions, exit status 1.
 */
#include "dlq.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "ids.h"
#include "log.h"
#include "pg.h"
#include "publish.h"
#include "stages.h"

#define HDR_CORR "docpipe-correlation-id"
#define HDR_REDRIVE "docpipe-redrive-id"
#define HDR_FROM "docpipe-redriven-from"
#define DEFAULT_BATCH 500
#define COMMIT_TRIES 5

typedef struct rd_item {
    const char *id;            /* the dead letter's (text, in the page) */
    const char *stage;
    const char *topic;
    int32_t partition;
    const char *key, *value;   /* NULL: none */
    size_t key_len, value_len;
    const char *corr;          /* NULL: none */
    const char *from;          /* docpipe-redriven-from */
    char redrive_id[DP_UUID_STR_SIZE];
    int64_t scan_from;
    int64_t offset;            /* acknowledged at, or -1 */
    int reported;              /* its delivery report came */
    rd_kafka_resp_err_t err;
} rd_item;

typedef struct redrive {
    const dp_config *cfg;
    PGconn *db;
    rd_kafka_t *producer;      /* transactional */
    rd_kafka_t *reader;        /* end offsets, and the scans that settle */
    volatile sig_atomic_t *stop;
    rd_item *items;            /* the batch being sent (NULL between batches) */
    size_t nitems;
    int fatal;                 /* the producer can do nothing more */
    size_t acked;              /* records acknowledged with an offset */
    size_t sent, found, lost, failed, pending;
} redrive;

#ifdef DOCPIPE_FAULTS
/* DOCPIPE_TEST_DLQ_KILL_AFTER=N[:uncommitted] (test builds only; the
 * window tests/integration/test_dlq.c kills the command in): SIGKILL once
 * N records were acknowledged.  By default after their Kafka transaction
 * committed and before the ledger records them; with ":uncommitted" at the
 * N-th acknowledgement, inside the open transaction. */
static void test_kill_point(const redrive *r, int committed)
{
    const char *v = getenv("DOCPIPE_TEST_DLQ_KILL_AFTER");
    if (!v || !*v)
        return;
    char *end;
    long n = strtol(v, &end, 10);
    int at_commit = strcmp(end, ":uncommitted") != 0;
    if (n > 0 && at_commit == committed && r->acked >= (size_t)n) {
        fprintf(stderr, "docpipe dlq redrive: test kill after %zu acknowledged"
                " record(s)\n", r->acked);
        raise(SIGKILL);
    }
}
#else
#define test_kill_point(r, committed) ((void)0)
#endif

/* ---- Kafka ---------------------------------------------------------------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    (void)rk;
    redrive *r = opaque;
    /* The message's opaque is its index in the batch, plus one.  A report
     * that comes after its batch (the purge of a producer that failed) is
     * of no more use. */
    size_t i = (size_t)(uintptr_t)m->_private;
    if (!r->items || i == 0 || i > r->nitems)
        return;
    rd_item *it = &r->items[i - 1];
    it->reported = 1;
    it->err = m->err;
    if (dp_delivery_confirmed(m)) {
        it->offset = m->offset;
        r->acked++;
        test_kill_point(r, 0);
    }
}

/* librdkafka's own retries (a coordinator still loading, a fenced
 * transaction being aborted) are routine here: only its errors are shown
 * unless the log level is debug. */
static void kafka_log(const rd_kafka_t *rk, int level, const char *fac,
                      const char *buf)
{
    (void)rk;
    dp_log(level <= 3 ? DP_LOG_ERROR : DP_LOG_DEBUG, NULL, "kafka %s: %s", fac, buf);
}

static int conf_set(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char err[512];
    if (rd_kafka_conf_set(conf, k, v, err, sizeof(err)) == RD_KAFKA_CONF_OK)
        return 0;
    fprintf(stderr, "docpipe dlq redrive: Kafka %s=%s: %s\n", k, v, err);
    return -1;
}

/* The producer, initialised for transactions (which fences the previous
 * run's), and the reader.  0, or -1 with the reason told. */
static int open_kafka(redrive *r)
{
    char err[512], name[512];
    const dp_config *cfg = r->cfg;
    snprintf(name, sizeof(name), "%sdlq-redrive", cfg->topic_prefix);
    rd_kafka_conf_t *conf = dp_publisher_conf(cfg, "5", NULL, err, sizeof(err));
    if (!conf) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return -1;
    }
    if (conf_set(conf, "transactional.id", name)) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    rd_kafka_conf_set_opaque(conf, r);
    if (!(r->producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err)))) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "docpipe dlq redrive: producer: %s\n", err);
        return -1;
    }

    conf = rd_kafka_conf_new();
    if (conf_set(conf, "bootstrap.servers", cfg->brokers) ||
        conf_set(conf, "group.id", name) ||     /* never joined: assign() only */
        conf_set(conf, "enable.auto.commit", "false") ||
        conf_set(conf, "enable.partition.eof", "true") ||
        conf_set(conf, "isolation.level", "read_committed") ||
        conf_set(conf, "auto.offset.reset", "error")) {
        rd_kafka_conf_destroy(conf);
        return -1;
    }
    if (dp_config_apply_kafka(cfg, conf, 0, err, sizeof(err))) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return -1;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log);
    if (!(r->reader = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err)))) {
        rd_kafka_conf_destroy(conf);
        fprintf(stderr, "docpipe dlq redrive: reader: %s\n", err);
        return -1;
    }
    rd_kafka_poll_set_consumer(r->reader);

    rd_kafka_error_t *e = rd_kafka_init_transactions(r->producer, cfg->produce_timeout_ms);
    if (e) {
        fprintf(stderr, "docpipe dlq redrive: Kafka transactions (%s): %s\n", name,
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        return -1;
    }
    return 0;
}

static void close_kafka(redrive *r)
{
    if (r->producer) {
        rd_kafka_purge(r->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(r->producer, 1000);
        rd_kafka_destroy(r->producer);
    }
    if (r->reader) {
        rd_kafka_consumer_close(r->reader);
        rd_kafka_destroy(r->reader);
    }
}

static rd_kafka_resp_err_t end_offset(redrive *r, const char *topic,
                                      int32_t partition, int64_t *lo, int64_t *hi)
{
    rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
        r->reader, topic, partition, lo, hi, r->cfg->produce_timeout_ms);
    if (ke != RD_KAFKA_RESP_ERR_NO_ERROR)
        fprintf(stderr, "docpipe dlq redrive: end offset of %s/%d: %s\n", topic,
                (int)partition, rd_kafka_err2str(ke));
    return ke;
}

/* The partition is not there (its topic deleted, or fewer partitions than
 * when the record was read): no use asking again. */
static int no_such_partition(rd_kafka_resp_err_t ke)
{
    return ke == RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION ||
           ke == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ||
           ke == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Reads topic/partition from offset `from` to its end for records whose
 * redrive id is one of ids[0..n); offsets[i] gets the offset of ids[i]'s
 * record, or stays -1.  Only committed records are seen (read_committed),
 * and the end is the partition's end when the scan starts, so a record
 * another run had produced is found once its transaction committed and is
 * never found if it was aborted.  0 when the end was reached; -1 (told)
 * when it was not (partition not readable, records from `from` deleted,
 * stopped, no progress for produce_timeout_ms). */
static int scan_partition(redrive *r, const char *topic, int32_t partition,
                          int64_t from, char **ids, int64_t *offsets, size_t n)
{
    int64_t lo, hi;
    for (size_t i = 0; i < n; i++)
        offsets[i] = -1;
    if (end_offset(r, topic, partition, &lo, &hi))
        return -1; /* gone or unreachable: the rows stay 'sending', in doubt */
    if (from >= hi)
        return 0; /* nothing was written after the row */
    if (from < lo) {
        fprintf(stderr, "docpipe dlq redrive: %s/%d holds no records before %"
                PRId64 " any more, so whether a record was sent from %" PRId64
                " cannot be read back: the ledger rows stay 'sending'\n", topic,
                (int)partition, lo, from);
        return -1;
    }
    /* ids sorted, with their positions, for bsearch. */
    char **sorted = malloc(n * sizeof(char *));
    memcpy(sorted, ids, n * sizeof(char *));
    qsort(sorted, n, sizeof(char *), cmp_str);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, topic, partition)->offset = from;
    rd_kafka_resp_err_t ke = rd_kafka_assign(r->reader, l);
    rd_kafka_topic_partition_list_destroy(l);
    int rc = -1;
    if (ke) {
        fprintf(stderr, "docpipe dlq redrive: read %s/%d: %s\n", topic,
                (int)partition, rd_kafka_err2str(ke));
        free(sorted);
        return -1;
    }
    int64_t idle_ms = 0;
    while (!*r->stop && idle_ms < r->cfg->produce_timeout_ms) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(r->reader, 200);
        if (!m) {
            idle_ms += 200;
            continue;
        }
        idle_ms = 0;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            /* read_committed stops at the last stable offset: until a
             * commit or abort marker is written that is before hi. */
            int at_end = m->offset >= hi;
            rd_kafka_message_destroy(m);
            if (at_end) {
                rc = 0;
                break;
            }
            continue;
        }
        if (m->err) {
            fprintf(stderr, "docpipe dlq redrive: read %s/%d: %s\n", topic,
                    (int)partition, rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            break;
        }
        rd_kafka_headers_t *h;
        const void *v;
        size_t len;
        char id[DP_UUID_STR_SIZE];
        if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
            rd_kafka_header_get_last(h, HDR_REDRIVE, &v, &len) ==
                RD_KAFKA_RESP_ERR_NO_ERROR && v && len == DP_UUID_STR_SIZE - 1) {
            memcpy(id, v, len);
            id[len] = '\0';
            const char *key = id;
            char **hit = bsearch(&key, sorted, n, sizeof(char *), cmp_str);
            for (size_t i = 0; hit && i < n; i++)
                if (strcmp(ids[i], id) == 0 && offsets[i] < 0)
                    offsets[i] = m->offset;
        }
        rd_kafka_message_destroy(m);
    }
    if (rc && *r->stop)
        fprintf(stderr, "docpipe dlq redrive: interrupted while reading %s/%d\n",
                topic, (int)partition);
    else if (rc && idle_ms >= r->cfg->produce_timeout_ms)
        fprintf(stderr, "docpipe dlq redrive: %s/%d: its end (%" PRId64 ") not"
                " reached within %d ms (a transaction still open?)\n", topic,
                (int)partition, hi, r->cfg->produce_timeout_ms);
    rd_kafka_assign(r->reader, NULL);
    free(sorted);
    return rc;
}

/* ---- the ledger ----------------------------------------------------------- */

/* n redrive ids (and for 'sent', their offsets) as array parameters. */
static void id_array(dp_buf *b, char **ids, const int64_t *offsets, size_t n,
                     int want_found)
{
    dp_buf_append(b, "{", 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (offsets && (offsets[i] >= 0) != want_found)
            continue;
        dp_buf_appendf(b, "%s%s", k++ ? "," : "", ids[i]);
    }
    dp_buf_append(b, "}", 1);
}

/* Rows whose record is in the log at offsets[i] (the others are left
 * alone): 'sent', and their dead letters resolved, in one statement. */
static int mark_sent(redrive *r, char **ids, const int64_t *offsets, size_t n)
{
    dp_buf a = {0}, o = {0};
    id_array(&a, ids, offsets, n, 1);
    dp_buf_append(&o, "{", 1);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (offsets[i] >= 0)
            dp_buf_appendf(&o, "%s%" PRId64, k++ ? "," : "", offsets[i]);
    dp_buf_append(&o, "}", 1);
    const char *params[2] = {a.data, o.data};
    char err[1024];
    dp_err e = dp_pg_command(r->db,
        "WITH s AS (SELECT * FROM unnest($1::uuid[], $2::bigint[])"
        "   AS s(redrive_id, sent_offset)),"
        " l AS (UPDATE docpipe.dp_dlq_redrives l SET state = 'sent',"
        "   sent_offset = s.sent_offset, finished_at = now() FROM s"
        "   WHERE l.redrive_id = s.redrive_id AND l.state = 'sending'"
        "   RETURNING l.dead_letter_id)"
        " UPDATE docpipe.dp_dead_letters d SET resolved_at = now(),"
        "   resolution = 'redriven' FROM l WHERE d.id = l.dead_letter_id",
        2, params, "record the records sent", err, sizeof(err));
    dp_buf_free(&a);
    dp_buf_free(&o);
    if (e) {
        fprintf(stderr, "docpipe dlq redrive: %s (the next run finds them sent)\n", err);
        return -1;
    }
    return 0;
}

/* Rows whose record is proven not in the log (not found after a fence, or
 * its transaction aborted): 'lost'; the dead letter may be sent again. */
static int mark_lost(redrive *r, char **ids, const int64_t *offsets, size_t n)
{
    dp_buf a = {0};
    id_array(&a, ids, offsets, n, 0);
    const char *params[1] = {a.data};
    char err[1024];
    dp_err e = dp_pg_command(r->db,
        "UPDATE docpipe.dp_dlq_redrives SET state = 'lost', finished_at = now()"
        " WHERE redrive_id = ANY ($1::uuid[]) AND state = 'sending'",
        1, params, "record the records not sent", err, sizeof(err));
    dp_buf_free(&a);
    if (e) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return -1;
    }
    return 0;
}

static void print_sent(const char *id, const char *stage, const char *topic,
                       int32_t partition, int64_t offset)
{
    printf("%s\t%s\t%s\t%d\t%" PRId64 "\n", id, stage, topic, (int)partition, offset);
}

/* Settles every ledger row of the prefix left 'sending', by a run that
 * died or by this one (acknowledged without an offset).  Only after
 * open_kafka() fenced the producer of earlier runs: from then on nothing
 * of theirs can reach the log, so not found means never sent.  0, or -1
 * when some partition could not be read (its rows stay 'sending'). */
static int settle_sending(redrive *r)
{
    const char *params[1] = {r->cfg->topic_prefix};
    PGresult *res = dp_pg_execp(r->db,
        "SELECT l.redrive_id::text, l.dead_letter_id::text, d.stage, l.topic,"
        " l.partition::text, l.scan_from::text"
        " FROM docpipe.dp_dlq_redrives l"
        " JOIN docpipe.dp_dead_letters d ON d.id = l.dead_letter_id"
        " WHERE l.state = 'sending' AND starts_with(l.topic, $1)"
        " ORDER BY l.topic, l.partition, l.scan_from", 1, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(r->db, res, PGRES_TUPLES_OK, "read unfinished redrives", err,
                    sizeof(err))) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return -1;
    }
    int n = PQntuples(res), rc = 0;
    char **ids = malloc(((size_t)n + 1) * sizeof(char *));
    int64_t *offsets = malloc(((size_t)n + 1) * sizeof(int64_t));
    for (int i = 0; i < n; i++)
        ids[i] = PQgetvalue(res, i, 0);
    for (int i = 0, j; i < n; i = j) {
        const char *topic = PQgetvalue(res, i, 3);
        int32_t part = (int32_t)atoi(PQgetvalue(res, i, 4));
        for (j = i + 1; j < n && strcmp(PQgetvalue(res, j, 3), topic) == 0 &&
                        atoi(PQgetvalue(res, j, 4)) == part; j++)
            ;
        size_t k = (size_t)(j - i);
        int64_t from = strtoll(PQgetvalue(res, i, 5), NULL, 10); /* the smallest */
        if (scan_partition(r, topic, part, from, ids + i, offsets + i, k)) {
            rc = -1;
            continue;
        }
        if (mark_sent(r, ids + i, offsets + i, k) || mark_lost(r, ids + i, offsets + i, k)) {
            rc = -1;
            continue;
        }
        for (int x = i; x < j; x++) {
            if (offsets[x] >= 0) {
                r->found++;
                print_sent(PQgetvalue(res, x, 1), PQgetvalue(res, x, 2), topic, part,
                           offsets[x]);
                fprintf(stderr, "docpipe dlq redrive: dead letter %s: found sent"
                        " (redrive %s) at %s/%d/%" PRId64 "; resolved\n",
                        PQgetvalue(res, x, 1), ids[x], topic, (int)part, offsets[x]);
            } else {
                r->lost++;
                fprintf(stderr, "docpipe dlq redrive: dead letter %s: an earlier"
                        " send (redrive %s) is not in %s/%d (never produced, or its"
                        " transaction aborted); it can be sent again\n",
                        PQgetvalue(res, x, 1), ids[x], topic, (int)part);
            }
        }
    }
    free(ids);
    free(offsets);
    PQclear(res);
    return rc;
}

/* ---- sending -------------------------------------------------------------- */

static int produce(redrive *r, size_t i)
{
    rd_item *it = &r->items[i];
    rd_kafka_headers_t *h = rd_kafka_headers_new(3);
    if (it->corr)
        rd_kafka_header_add(h, HDR_CORR, -1, it->corr, -1);
    rd_kafka_header_add(h, HDR_REDRIVE, -1, it->redrive_id, -1);
    rd_kafka_header_add(h, HDR_FROM, -1, it->from, -1);
    rd_kafka_resp_err_t ke;
    while ((ke = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(it->topic),
                RD_KAFKA_V_PARTITION(it->partition),
                RD_KAFKA_V_KEY((void *)it->key, it->key_len),
                RD_KAFKA_V_VALUE((void *)it->value, it->value_len),
                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE((void *)(uintptr_t)(i + 1)),
                RD_KAFKA_V_END)) == RD_KAFKA_RESP_ERR__QUEUE_FULL)
        rd_kafka_poll(r->producer, 10);
    if (ke == RD_KAFKA_RESP_ERR_NO_ERROR)
        return 0;
    rd_kafka_headers_destroy(h);
    it->err = ke;
    fprintf(stderr, "docpipe dlq redrive: dead letter %s to %s/%d: %s\n", it->id,
            it->topic, (int)it->partition, rd_kafka_err2str(ke));
    return -1;
}

/* After a failure inside the transaction: abort it, which proves its
 * records will never be read; their rows become 'lost'.  If even the abort
 * fails the rows stay 'sending' for the next run to settle. */
static void abort_batch(redrive *r, char **ids, size_t n)
{
    rd_kafka_error_t *e = rd_kafka_abort_transaction(r->producer, r->cfg->produce_timeout_ms);
    if (e) {
        fprintf(stderr, "docpipe dlq redrive: abort the Kafka transaction: %s;"
                " the next run finds out what was sent\n", rd_kafka_error_string(e));
        r->fatal = 1;
        rd_kafka_error_destroy(e);
        return;
    }
    mark_lost(r, ids, NULL, n);
}

static int commit_batch(redrive *r, char **ids, size_t n)
{
    for (int tries = 1;; tries++) {
        rd_kafka_error_t *e = rd_kafka_commit_transaction(r->producer,
                                                          r->cfg->produce_timeout_ms);
        if (!e)
            return 0;
        fprintf(stderr, "docpipe dlq redrive: commit the Kafka transaction: %s\n",
                rd_kafka_error_string(e));
        int abortable = rd_kafka_error_txn_requires_abort(e);
        int again = rd_kafka_error_is_retriable(e) && tries < COMMIT_TRIES;
        if (rd_kafka_error_is_fatal(e))
            r->fatal = 1;
        rd_kafka_error_destroy(e);
        if (abortable) {
            abort_batch(r, ids, n);
            return -1;
        }
        if (!again) {
            /* Committed or not, the next run's fence and scan tell. */
            r->fatal = 1;
            return -1;
        }
    }
}

/* Sends one batch: end offsets, ledger rows committed as 'sending', one
 * Kafka transaction, then the acknowledged ones resolved.  0, or -1 (told;
 * r->fatal when nothing more can be sent). */
static int send_batch(redrive *r, rd_item *items, size_t n)
{
    char **ids = malloc(n * sizeof(char *));
    int64_t *offsets = malloc(n * sizeof(int64_t));
    dp_buf a_id = {0}, a_dl = {0}, a_topic = {0}, a_part = {0}, a_from = {0};
    int rc = -1;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        rd_item *it = &items[i];
        size_t j = 0;
        while (j < kept && (items[j].partition != it->partition ||
                            strcmp(items[j].topic, it->topic) != 0))
            j++;
        int64_t lo;
        rd_kafka_resp_err_t ke = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (j < kept)
            it->scan_from = items[j].scan_from;
        else if ((ke = end_offset(r, it->topic, it->partition, &lo, &it->scan_from))) {
            if (!no_such_partition(ke))
                goto out; /* Kafka unavailable: the batch waits for another run */
            fprintf(stderr, "docpipe dlq redrive: dead letter %s is not sent: %s/%d"
                    " does not exist\n", it->id, it->topic, (int)it->partition);
            r->failed++;
            continue;
        }
        it = &items[kept];
        if (kept != i)
            *it = items[i];
        kept++;
        dp_uuid4(it->redrive_id);
        ids[kept - 1] = it->redrive_id;
        const char *sep = kept > 1 ? "," : "{";
        dp_buf_appendf(&a_id, "%s%s", sep, it->redrive_id);
        dp_buf_appendf(&a_dl, "%s%s", sep, it->id);
        dp_buf_append(&a_topic, sep, 1);
        dp_buf_array_text(&a_topic, it->topic, strlen(it->topic));
        dp_buf_appendf(&a_part, "%s%d", sep, (int)it->partition);
        dp_buf_appendf(&a_from, "%s%" PRId64, sep, it->scan_from);
    }
    n = kept;
    if (n == 0) {
        rc = 0;
        goto out;
    }
    dp_buf_append(&a_id, "}", 1);
    dp_buf_append(&a_dl, "}", 1);
    dp_buf_append(&a_topic, "}", 1);
    dp_buf_append(&a_part, "}", 1);
    dp_buf_append(&a_from, "}", 1);
    const char *params[5] = {a_id.data, a_dl.data, a_topic.data, a_part.data, a_from.data};
    char err[1024];
    if (dp_pg_command(r->db,
            "INSERT INTO docpipe.dp_dlq_redrives (redrive_id, dead_letter_id, topic,"
            " partition, scan_from, state)"
            " SELECT *, 'sending' FROM unnest($1::uuid[], $2::bigint[], $3::text[],"
            "   $4::int[], $5::bigint[])",
            5, params, "record the sends in the ledger", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        goto out;
    }

    rd_kafka_error_t *e = rd_kafka_begin_transaction(r->producer);
    if (e) {
        fprintf(stderr, "docpipe dlq redrive: begin a Kafka transaction: %s\n",
                rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
        r->fatal = 1;
        mark_lost(r, ids, NULL, n); /* nothing was produced */
        goto out;
    }
    int bad = 0;
    r->items = items;
    r->nitems = n;
    for (size_t i = 0; i < n && !bad; i++)
        bad = produce(r, i);
    if (!bad && rd_kafka_flush(r->producer, r->cfg->produce_timeout_ms)) {
        fprintf(stderr, "docpipe dlq redrive: records not acknowledged within %d ms\n",
                r->cfg->produce_timeout_ms);
        bad = 1;
    }
    for (size_t i = 0; i < n && !bad; i++)
        if (!items[i].reported || items[i].err) {
            fprintf(stderr, "docpipe dlq redrive: dead letter %s to %s/%d: %s\n",
                    items[i].id, items[i].topic, (int)items[i].partition,
                    rd_kafka_err2str(items[i].err));
            bad = 1;
        }
    if (bad) {
        abort_batch(r, ids, n);
        r->failed += n;
        goto out;
    }
    if (commit_batch(r, ids, n)) {
        r->failed += n;
        goto out;
    }
    test_kill_point(r, 1);

    for (size_t i = 0; i < n; i++)
        offsets[i] = items[i].offset;
    if (mark_sent(r, ids, offsets, n))
        goto out;
    for (size_t i = 0; i < n; i++) {
        if (items[i].offset >= 0) {
            r->sent++;
            print_sent(items[i].id, items[i].stage, items[i].topic, items[i].partition,
                       items[i].offset);
        } else {
            r->pending++; /* acknowledged without an offset: settled at the end */
        }
    }
    rc = 0;
out:
    r->items = NULL;
    r->nitems = 0;
    dp_buf_free(&a_id);
    dp_buf_free(&a_dl);
    dp_buf_free(&a_topic);
    dp_buf_free(&a_part);
    dp_buf_free(&a_from);
    free(ids);
    free(offsets);
    return rc;
}

/* ---- selection ------------------------------------------------------------ */

enum { K_ID, K_TOPIC, K_PART, K_KEY, K_VALUE, K_CORR, K_FROM, K_STAGE };

/* The next page of dead letters to send, after id `after`: unresolved,
 * with no send 'sending' or 'sent', in id order (the order the runtime
 * recorded them in, so a partition's keep their offset order).  Binary
 * results: text columns are their bytes, bytea its. */
static PGresult *next_page(redrive *r, const char *after, const char *ids,
                           const char *stage, const char *since, const char *limit)
{
    const char *params[6] = {r->cfg->topic_prefix, after, ids, stage, since, limit};
    PGresult *res = dp_pg_execp(r->db,
        "SELECT d.id::text, d.topic, d.partition::text, d.record_key, d.record_value,"
        " d.correlation_id,"
        " d.group_id || '/' || d.topic || '/' || d.partition || '/' || d.\"offset\","
        " d.stage"
        " FROM docpipe.dp_dead_letters d"
        " WHERE starts_with(d.topic, $1) AND d.resolved_at IS NULL"
        " AND d.id > $2::bigint"
        " AND CASE WHEN $3::bigint[] IS NOT NULL THEN d.id = ANY ($3::bigint[])"
        "   ELSE ($4 = '' OR d.stage = $4)"
        "     AND ($5::timestamptz IS NULL OR d.created_at >= $5::timestamptz) END"
        " AND NOT EXISTS (SELECT 1 FROM docpipe.dp_dlq_redrives l"
        "   WHERE l.dead_letter_id = d.id AND l.state <> 'lost')"
        " ORDER BY d.id LIMIT $6::int", 6, NULL, params, NULL, NULL, 1);
    char err[1024];
    if (dp_pg_check(r->db, res, PGRES_TUPLES_OK, "read dead letters", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return NULL;
    }
    return res;
}

static const char *bin(PGresult *res, int row, int col, size_t *len)
{
    if (PQgetisnull(res, row, col)) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = (size_t)PQgetlength(res, row, col);
    return PQgetvalue(res, row, col);
}

/* Named dead letters that will not be sent: not there (a failure), or
 * already resolved (said, not a failure: what was asked is done). */
static int check_named(redrive *r, const char *ids, int argc, char **argv, int first)
{
    const char *params[2] = {ids, r->cfg->topic_prefix};
    PGresult *res = PQexecParams(r->db,
        "SELECT id::text, resolution FROM docpipe.dp_dead_letters"
        " WHERE id = ANY ($1::bigint[]) AND starts_with(topic, $2)",
        2, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(r->db, res, PGRES_TUPLES_OK, "read dead letters", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        return 1;
    }
    int rc = 0;
    for (int i = first; i < argc; i++) {
        int row = -1;
        for (int k = 0; k < PQntuples(res) && row < 0; k++)
            if (strtoll(PQgetvalue(res, k, 0), NULL, 10) == strtoll(argv[i], NULL, 10))
                row = k;
        if (row < 0) {
            fprintf(stderr, "docpipe dlq redrive: no dead letter %s (of topic prefix"
                    " '%s')\n", argv[i], r->cfg->topic_prefix);
            rc = 1;
        } else if (!PQgetisnull(res, row, 1)) {
            fprintf(stderr, "docpipe dlq redrive: dead letter %s is already resolved"
                    " (%s): not sent again\n", argv[i], PQgetvalue(res, row, 1));
        }
    }
    PQclear(res);
    return rc;
}

/* ---- the command ---------------------------------------------------------- */

static void usage_redrive(FILE *out)
{
    fprintf(out,
        "usage: docpipe dlq redrive [--dry-run] [--batch N] ID...\n"
        "       docpipe dlq redrive [--dry-run] [--batch N] --all | --stage S [--since T]\n"
        "  sends each selected unresolved dead letter's record (key and value\n"
        "  unchanged) back to its stage's input topic, exactly once, and marks the\n"
        "  dead letter resolved; prints id, stage, topic, partition, offset of each\n"
        "  --all        every unresolved dead letter\n"
        "  --stage S    those of stage S\n"
        "  --since T    those recorded at or after T (ISO 8601 timestamp)\n"
        "  --batch N    records per Kafka transaction (default %d)\n"
        "  --dry-run    print what would be sent, send nothing\n", DEFAULT_BATCH);
}

int dp_dlq_redrive(const dp_config *cfg, volatile sig_atomic_t *stop, int argc,
                   char **argv)
{
    static const struct option opts[] = {
        {"all", no_argument, NULL, 'a'}, {"stage", required_argument, NULL, 's'},
        {"since", required_argument, NULL, 't'}, {"batch", required_argument, NULL, 'b'},
        {"dry-run", no_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *stage = "", *since = NULL;
    int all = 0, dry = 0, c;
    long batch = DEFAULT_BATCH;
    char *end;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'a': all = 1; break;
        case 's': stage = optarg; break;
        case 't': since = optarg; break;
        case 'n': dry = 1; break;
        case 'b':
            batch = strtol(optarg, &end, 10);
            if (*end || batch < 1 || batch > 100000) {
                fprintf(stderr, "docpipe dlq redrive: --batch takes 1 to 100000,"
                        " not '%s'\n", optarg);
                return DP_DLQ_EXIT_USAGE;
            }
            break;
        case 'h': usage_redrive(stdout); return 0;
        default: usage_redrive(stderr); return DP_DLQ_EXIT_USAGE;
        }
    }
    int named = optind < argc, filtered = all || *stage || since;
    if (named == filtered) {
        fprintf(stderr, named ? "docpipe dlq redrive: name dead letters, or select"
                " them with --all, --stage or --since, not both\n"
                : "docpipe dlq redrive: which dead letters? name them, or use --all,"
                " --stage or --since\n");
        usage_redrive(stderr);
        return DP_DLQ_EXIT_USAGE;
    }
    if (*stage && !dp_stages_find(stage)) {
        fprintf(stderr, "docpipe dlq redrive: unknown stage '%s' (see docpipe help)\n",
                stage);
        return DP_DLQ_EXIT_USAGE;
    }
    dp_buf ids = {0};
    for (int i = optind; i < argc; i++) {
        if (dp_dlq_parse_id(argv[i])) {
            fprintf(stderr, "docpipe dlq redrive: '%s' is not a dead letter id"
                    " (a number, see docpipe dlq list)\n", argv[i]);
            dp_buf_free(&ids);
            return DP_DLQ_EXIT_USAGE;
        }
        dp_buf_appendf(&ids, "%s%s", i > optind ? "," : "{", argv[i]);
    }
    if (named)
        dp_buf_append(&ids, "}", 1);

    redrive r = {.cfg = cfg, .stop = stop};
    char err[1024], since_ts[128], after[32] = "0", limit[16];
    snprintf(limit, sizeof(limit), "%ld", batch);
    int rc = 0;
    if (dp_pg_connect(cfg, "docpipe-dlq-redrive", &r.db, err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq redrive: %s\n", err);
        dp_buf_free(&ids);
        return 1;
    }
    if ((since && (rc = dp_dlq_instant(r.db, "redrive", "--since", since, 0, since_ts,
                                       sizeof(since_ts)))) ||
        (!dry && (rc = dp_dlq_lock(r.db, "redrive", cfg->topic_prefix))))
        goto out;
    if (dry) {
        const char *params[1] = {cfg->topic_prefix};
        PGresult *res = PQexecParams(r.db, "SELECT count(*) FROM docpipe.dp_dlq_redrives"
            " WHERE state = 'sending' AND starts_with(topic, $1)", 1, NULL, params,
            NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK && atoi(PQgetvalue(res, 0, 0)) > 0)
            fprintf(stderr, "docpipe dlq redrive: %s send(s) of an interrupted run to"
                    " settle first (found sent, or sent again)\n", PQgetvalue(res, 0, 0));
        PQclear(res);
    } else if (open_kafka(&r)) {
        rc = 1;
        goto out;
    } else if (settle_sending(&r)) {
        rc = 1; /* rows in doubt stay so, their dead letters unselected; the rest go */
    }
    if (named && check_named(&r, ids.data, argc, argv, optind))
        rc = 1;

    size_t would = 0;
    int cut_short = 0; /* dead letters may be left unselected */
    while (!r.fatal) {
        if (*stop) {
            fprintf(stderr, "docpipe dlq redrive: interrupted; what was sent is"
                    " recorded\n");
            rc = cut_short = 1;
            break;
        }
        PGresult *page = next_page(&r, after, named ? ids.data : NULL, stage,
                                   since ? since_ts : NULL, limit);
        if (!page) {
            rc = cut_short = 1;
            break;
        }
        int n = PQntuples(page);
        if (n == 0) {
            PQclear(page);
            break;
        }
        rd_item *items = calloc((size_t)n, sizeof(rd_item));
        for (int i = 0; i < n; i++) {
            rd_item *it = &items[i];
            it->id = PQgetvalue(page, i, K_ID);
            it->stage = PQgetvalue(page, i, K_STAGE);
            it->topic = PQgetvalue(page, i, K_TOPIC);
            it->partition = (int32_t)atoi(PQgetvalue(page, i, K_PART));
            it->key = bin(page, i, K_KEY, &it->key_len);
            it->value = bin(page, i, K_VALUE, &it->value_len);
            it->corr = bin(page, i, K_CORR, NULL);
            it->from = PQgetvalue(page, i, K_FROM);
            it->offset = -1;
            if (dry)
                printf("%s\t%s\t%s\t%d\t-\n", it->id, it->stage, it->topic,
                       (int)it->partition);
        }
        snprintf(after, sizeof(after), "%s", items[n - 1].id);
        int failed = 0;
        if (dry)
            would += (size_t)n;
        else
            failed = send_batch(&r, items, (size_t)n) != 0;
        free(items);
        PQclear(page);
        if (failed) { /* Kafka or PostgreSQL failing: run again later */
            rc = cut_short = 1;
            break;
        }
    }
    cut_short |= r.fatal;
    size_t lost_before = r.lost;
    if (!dry && r.pending && !r.fatal && settle_sending(&r))
        rc = 1;
    if (r.lost > lost_before) { /* acknowledged without an offset, and not in the log */
        r.failed += r.lost - lost_before;
        rc = 1;
    }
    if (r.failed)
        rc = 1;
    if (dry)
        fprintf(stderr, "docpipe dlq redrive: %zu dead letter(s) would be sent back\n",
                would);
    else
        fprintf(stderr, "docpipe dlq redrive: %zu sent back, %zu found sent by an"
                " earlier run, %zu not sent%s\n", r.sent, r.found, r.failed,
                cut_short ? "; run again for the rest" : "");
out:
    if (fflush(stdout) != 0)
        rc = 1;
    close_kafka(&r);
    PQfinish(r.db);
    dp_buf_free(&ids);
    return rc;
}

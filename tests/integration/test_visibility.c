/*
 * Commit visibility and the windows of a batch, against the real Kafka
 * broker and PostgreSQL, through the demonstration stage (stages/demo.c).
 *
 * An upstream stage is played by the test where the exact interleaving
 * matters: its records go straight into demo.in with the headers a stage
 * writes (docpipe-stream, docpipe-seq, docpipe-attempt), and its offsets
 * and committed attempts are rows the test writes.  Crash windows are hit
 * with the test builds' fault points (DOCPIPE_FAULT, consumer/fault.h).
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include "support_env.h"

int dp_test_demo_encode(const char *srcdir, const char *id, long seq,
                        const char *body, void **buf, size_t *len, char *err,
                        size_t errlen);

static tenv T;

static void teardown(void) { tenv_teardown(&T); }

TestSuite(visibility, .fini = teardown, .timeout = 400);

static char in_topic[256];

static void setup_named(const char *name)
{
    tenv_setup(&T, name);
    snprintf(in_topic, sizeof(in_topic), "%sdemo.in", T.prefix);
}

/* Produces DemoRecords to one partition of demo.in, in order; headers as
 * name/value pairs (NULL-terminated) shared by all of them. */
static void produce_at(int32_t partition, long first, long n, const char *body,
                       const char *const *headers)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    cr_assert(rk, "producer: %s", err);
    for (long i = first; i < first + n; i++) {
        char id[64];
        snprintf(id, sizeof(id), "p%d-%ld", partition, i);
        void *buf;
        size_t len;
        cr_assert_eq(dp_test_demo_encode(T.srcdir, id, i, body, &buf, &len, err,
                                         sizeof(err)), 0, "%s", err);
        rd_kafka_headers_t *h = rd_kafka_headers_new(8);
        for (int k = 0; headers && headers[k]; k += 2)
            rd_kafka_header_add(h, headers[k], -1, headers[k + 1], -1);
        cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(in_topic),
                     RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(id, strlen(id)),
                     RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                     RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END), 0);
        free(buf);
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    rd_kafka_destroy(rk);
}

/* One record as an upstream stage's output: stream, seq and attempt. */
static void produce_output(int32_t partition, const char *up_partition,
                           const char *seq, const char *attempt, const char *body)
{
    char stream[256], err[256];
    snprintf(stream, sizeof(stream), "%sup/%sup.in/%s", T.prefix, T.prefix,
             up_partition);
    void *buf;
    size_t len;
    cr_assert_eq(dp_test_demo_encode(T.srcdir, body, 0, body, &buf, &len, err,
                                     sizeof(err)), 0, "%s", err);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    rd_kafka_headers_t *h = rd_kafka_headers_new(4);
    rd_kafka_header_add(h, "docpipe-stream", -1, stream, -1);
    rd_kafka_header_add(h, "docpipe-seq", -1, seq, -1);
    if (attempt)
        rd_kafka_header_add(h, "docpipe-attempt", -1, attempt, -1);
    cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(in_topic),
                 RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY("k", 1),
                 RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                 RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END), 0);
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0);
    rd_kafka_destroy(rk);
    free(buf);
}

static void sql_exec(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void sql_exec(const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    PGresult *r = PQexec(T.db, sql);
    cr_assert(PQresultStatus(r) == PGRES_COMMAND_OK ||
              PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql,
              PQresultErrorMessage(r));
    PQclear(r);
}

static long long scalar(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static long long scalar(const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    return tenv_scalar(&T, sql);
}

static long long wait_for(long long want, int timeout_ms, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static long long wait_for(long long want, int timeout_ms, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    return tenv_wait_scalar(&T, sql, want, timeout_ms);
}

static long long rows(void)
{
    return scalar("SELECT count(*) FROM docpipe.demo_results WHERE topic = '%s'",
                  in_topic);
}

static long long body_rows(const char *body)
{
    return scalar("SELECT count(*) FROM docpipe.demo_results WHERE topic = '%s'"
                  " AND body = '%s'", in_topic, body);
}

static void logpath(char *out, size_t len, const char *who)
{
    snprintf(out, len, "/tmp/docpipe-%s%s.log", T.prefix, who);
    unlink(out);
}

/*
 * The differing attempts: upstream attempt A1 published 101's output and
 * died uncommitted; attempt A2 then committed 100 and 101.  A3 is still
 * open.  A second upstream partition feeds the same partition.  Only
 * committed outputs are acted on, each once; A3's waits until it commits.
 */
/* Attempt ids are global (docpipe.dp_attempts): each test takes its own. */
static long long id_base(void)
{
    return ((long long)getpid() * 1000003LL + (long long)time(NULL)) % 1000000000LL
           * 1000;
}

static const char *att(char *buf, long long id, int epoch, int expected)
{
    snprintf(buf, 64, "%lld:%d:%d", id, epoch, expected);
    return buf;
}

Test(visibility, test_only_outputs_of_committed_upstream_attempts_are_acted_on)
{
    setup_named("vis");
    long long b = id_base(), a1 = b + 1, a2 = b + 2, b1 = b + 3, a3 = b + 4;
    char h[64];
    /* Upstream partition 0: A2 moved it from 100 to 102 under epoch 1;
     * partition 1 at 7 under epoch 3 (B1 committed 5 and 6). */
    sql_exec("INSERT INTO docpipe.dp_offsets (group_id, topic, partition,"
             " next_offset, epoch, owner) VALUES ('%sup', '%sup.in', 0, 102, 1,"
             " 'up-a'), ('%sup', '%sup.in', 1, 7, 3, 'up-b')", T.prefix, T.prefix,
             T.prefix, T.prefix);
    sql_exec("INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic) VALUES"
             " (%lld, '%sup', '%sup.in'), (%lld, '%sup', '%sup.in')", a2, T.prefix,
             T.prefix, b1, T.prefix, T.prefix);
    produce_output(0, "0", "101:0", att(h, a1, 1, 100), "a1-101");  /* aborted */
    produce_output(0, "1", "5:0", att(h, b1, 3, 5), "b1-5");
    produce_output(0, "0", "100:0", att(h, a2, 1, 100), "a2-100");
    produce_output(0, "0", "101:0", att(h, a2, 1, 100), "a2-101");
    produce_output(0, "0", "101:0", att(h, a2, 1, 100), "a2-101");  /* producer retry */
    produce_output(0, "0", "102:0", att(h, a3, 1, 102), "a3-102");  /* still open */
    produce_output(0, "1", "6:0", att(h, b1, 3, 5), "b1-6");
    char log[512];
    logpath(log, sizeof(log), "A");
    pid_t a = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(3, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 3);
    sleep(3);
    cr_assert_eq(body_rows("a2-100"), 1, "committed 100 acted on");
    cr_assert_eq(body_rows("a2-101"), 1, "committed 101 acted on once");
    cr_assert_eq(body_rows("b1-5"), 1, "another upstream partition's output");
    cr_assert_eq(body_rows("a1-101"), 0, "the aborted attempt's output skipped");
    cr_assert_eq(body_rows("a3-102"), 0, "an open attempt's output waits");
    cr_assert_eq(body_rows("b1-6"), 0, "and what follows it in the partition");

    /* A3 commits: its output, and what waited behind it, go through. */
    sql_exec("BEGIN; INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic)"
             " VALUES (%lld, '%sup', '%sup.in'); UPDATE docpipe.dp_offsets SET"
             " next_offset = 103 WHERE group_id = '%sup' AND partition = 0; COMMIT",
             a3, T.prefix, T.prefix, T.prefix);
    cr_assert_eq(wait_for(5, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 5);
    sleep(1);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 5);
    cr_assert_eq(body_rows("a3-102"), 1);
    cr_assert_eq(body_rows("b1-6"), 1);
    cr_assert_eq(body_rows("a1-101"), 0);
    cr_assert_eq(scalar("SELECT src_epoch * 1000 + src_offset FROM docpipe.dp_dedup"
                        " WHERE group_id = '%sdemo' AND stream LIKE '%%/0'", T.prefix),
                 1102, "the mark is (epoch 1, offset 102)");
    /* Every record's offset moved on: nothing is read again. */
    cr_assert_eq(scalar("SELECT next_offset FROM docpipe.dp_offsets WHERE"
                        " group_id = '%sdemo' AND partition = 0", T.prefix), 7);
}

/* A replay of the upstream partition publishes its outputs again under a
 * new epoch: they are acted on again, not taken for duplicates. */
Test(visibility, test_outputs_of_a_replayed_upstream_are_acted_on_again)
{
    setup_named("visrep");
    long long b = id_base(), first = b + 1, again = b + 2;
    char h[64];
    sql_exec("INSERT INTO docpipe.dp_offsets (group_id, topic, partition,"
             " next_offset, epoch, owner) VALUES ('%sup', '%sup.in', 0, 2, 2,"
             " 'up-a')", T.prefix, T.prefix);
    sql_exec("INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic) VALUES"
             " (%lld, '%sup', '%sup.in'), (%lld, '%sup', '%sup.in')", first,
             T.prefix, T.prefix, again, T.prefix, T.prefix);
    /* Attempt `first` committed under epoch 1; the partition was then
     * replayed from 0 under epoch 2, where `again` committed the same
     * offsets. */
    produce_output(1, "0", "0:0", att(h, first, 1, 0), "first-0");
    produce_output(1, "0", "1:0", att(h, first, 1, 0), "first-1");
    produce_output(1, "0", "0:0", att(h, again, 2, 0), "again-0");
    produce_output(1, "0", "1:0", att(h, again, 2, 0), "again-1");
    char log[512];
    logpath(log, sizeof(log), "A");
    pid_t a = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(4, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 4);
    sleep(1);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 4, "both generations acted on, each once");
}

static void delete_records_below(int32_t partition_count, int64_t offset)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof(err));
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int32_t p = 0; p < partition_count; p++)
        rd_kafka_topic_partition_list_add(l, in_topic, p)->offset = offset;
    rd_kafka_DeleteRecords_t *dr = rd_kafka_DeleteRecords_new(l);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_DeleteRecords(rk, &dr, 1, NULL, q);
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
    cr_assert(ev, "DeleteRecords answered");
    cr_assert_eq(rd_kafka_event_error(ev), 0, "DeleteRecords: %s",
                 rd_kafka_event_error_string(ev));
    const rd_kafka_DeleteRecords_result_t *res = rd_kafka_event_DeleteRecords_result(ev);
    const rd_kafka_topic_partition_list_t *out = rd_kafka_DeleteRecords_result_offsets(res);
    for (int i = 0; i < out->cnt; i++)
        cr_assert_eq(out->elems[i].err, 0, "partition %d: %s", out->elems[i].partition,
                     rd_kafka_err2str(out->elems[i].err));
    rd_kafka_event_destroy(ev);
    rd_kafka_DeleteRecords_destroy(dr);
    rd_kafka_queue_destroy(q);
    rd_kafka_topic_partition_list_destroy(l);
    rd_kafka_destroy(rk);
}

/* The stage was stopped at 25 per partition; records 0-29 were deleted
 * (Kafka's DeleteRecords), 30-49 kept.  It resumes at 30, not at the end
 * of the log, and writes the gap down. */
Test(visibility, test_records_deleted_below_stored_offset_resume_at_earliest_kept)
{
    setup_named("gap");
    for (int p = 0; p < 4; p++)
        produce_at(p, 0, 25, "payload", NULL);
    char log[512];
    logpath(log, sizeof(log), "A");
    pid_t a = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(100, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 100);
    sleep(1);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    for (int p = 0; p < 4; p++)
        produce_at(p, 25, 25, "payload", NULL);
    delete_records_below(4, 30);
    logpath(log, sizeof(log), "B");
    pid_t b = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(180, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 180,
                 "the 20 kept records of each partition are processed");
    sleep(1);
    cr_assert_eq(tenv_stop(b, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 180);
    cr_assert_eq(scalar("SELECT count(*) FROM docpipe.demo_results WHERE topic = '%s'"
                        " AND \"offset\" BETWEEN 25 AND 29", in_topic), 0);
    cr_assert_eq(scalar("SELECT count(*) FROM docpipe.dp_offset_gaps WHERE"
                        " group_id = '%sdemo' AND from_offset = 25 AND to_offset = 30",
                        T.prefix), 4, "each partition's gap recorded");
    char *text = tenv_slurp(log);
    cr_assert(strstr(text, "stored offset no longer in the log"), "gap logged");
    free(text);
    cr_assert_eq(scalar("SELECT sum(next_offset) FROM docpipe.dp_offsets WHERE"
                        " group_id = '%sdemo'", T.prefix), 200);
}

/* The same with offset_gap=fail: the stage stops with a clear error and
 * moves no offset. */
Test(visibility, test_records_deleted_below_stored_offset_stop_the_stage_when_asked)
{
    setup_named("gapfail");
    produce_at(0, 0, 10, "payload", NULL);
    char log[512];
    logpath(log, sizeof(log), "A");
    pid_t a = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(10, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 10);
    sleep(1);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    produce_at(0, 10, 10, "payload", NULL);
    delete_records_below(1, 15);
    logpath(log, sizeof(log), "B");
    const char *env[] = {"DOCPIPE_OFFSET_GAP=fail", NULL};
    pid_t b = tenv_spawn_stage(&T, "demo", log, env);
    int status = tenv_stop(b, 0, 60000);
    cr_assert_eq(status, 1, "the stage exits with an error (status %d)", status);
    char *text = tenv_slurp(log);
    cr_assert(strstr(text, "is no longer in the log"), "the error says why:\n%s", text);
    free(text);
    cr_assert_eq(rows(), 10);
    cr_assert_eq(scalar("SELECT next_offset FROM docpipe.dp_offsets WHERE"
                        " group_id = '%sdemo' AND partition = 0", T.prefix), 10);
}

/* A fatal error of the idempotent producer: the stage makes a new
 * producer and goes on; every record once. */
Test(visibility, test_fatal_producer_error_recreates_the_producer)
{
    setup_named("fatal");
    for (int p = 0; p < 4; p++)
        produce_at(p, 0, 100, "payload", NULL);
    char log[512];
    logpath(log, sizeof(log), "A");
    const char *env[] = {"DOCPIPE_FAULT=demo:producer-fatal:fail:1", NULL};
    pid_t a = tenv_spawn_stage(&T, "demo", log, env);
    cr_assert_eq(wait_for(400, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 400);
    sleep(1);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0, "it exits cleanly");
    cr_assert_eq(rows(), 400);
    cr_assert_eq(scalar("SELECT count(DISTINCT (partition, \"offset\"))"
                        " FROM docpipe.demo_results WHERE topic = '%s'", in_topic), 400);
    char *text = tenv_slurp(log);
    cr_assert(strstr(text, "recreating the producer after a fatal error: "
                           "OUT_OF_ORDER_SEQUENCE_NUMBER"), "the producer recreated");
    cr_assert(strstr(text, "\"producer_resets\":1"), "once");
    free(text);
}

/*
 * Split mode (a batch-wide error no record was blamed for: records settled
 * one at a time) is fenced in the middle: another claim of the first
 * record's partition.  The instance stops settling there and rejoins;
 * nothing of the fenced partition (its marks included) commits behind the
 * new owner's back.
 */
Test(visibility, test_split_mode_honours_a_fence)
{
    setup_named("split");
    char stream0[256], stream1[256];
    snprintf(stream0, sizeof(stream0), "%sup/%sup.in/0", T.prefix, T.prefix);
    snprintf(stream1, sizeof(stream1), "%sup/%sup.in/1", T.prefix, T.prefix);
    /* Records with upstream identities (a release before attempts), so
     * each partition keeps marks. */
    for (int p = 0; p < 2; p++)
        for (int i = 0; i < 5; i++) {
            char seq[32];
            snprintf(seq, sizeof(seq), "%d:0", i);
            const char *h[] = {"docpipe-stream", p ? stream1 : stream0,
                               "docpipe-seq", seq, NULL};
            produce_at(p, i, 1, "payload", h);
        }
    produce_at(1, 5, 1, "fail:batch", NULL);
    char log[512];
    logpath(log, sizeof(log), "A");
    const char *env[] = {"DOCPIPE_FAULT=demo:split-record:stall:1",
                         "DOCPIPE_FAULT_STALL_MS=6000", "DOCPIPE_BATCH_WAIT_MS=3000",
                         NULL};
    pid_t a = tenv_spawn_stage(&T, "demo", log, env);
    /* The first record settled alone moved its partition's offset. */
    cr_assert_eq(wait_for(1, 60000, "SELECT count(*) FROM docpipe.dp_offsets WHERE"
                          " group_id = '%sdemo' AND next_offset IS NOT NULL",
                          T.prefix), 1);
    long long p = scalar("SELECT partition FROM docpipe.dp_offsets WHERE"
                         " group_id = '%sdemo' AND next_offset IS NOT NULL", T.prefix);
    sql_exec("UPDATE docpipe.dp_offsets SET epoch = epoch + 1, owner = 'other'"
             " WHERE group_id = '%sdemo' AND partition = %lld", T.prefix, p);
    /* The stall ends; the instance must notice the fence, not go on. */
    cr_assert_eq(wait_for(10, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 10);
    sleep(2);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    /* A new owner of everything finds nothing left and nothing lost. */
    logpath(log, sizeof(log), "B");
    pid_t b = tenv_spawn_stage(&T, "demo", log, NULL);
    sleep(4);
    cr_assert_eq(tenv_stop(b, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 10, "every good record once");
    cr_assert_eq(scalar("SELECT count(DISTINCT (partition, \"offset\"))"
                        " FROM docpipe.demo_results WHERE topic = '%s'", in_topic), 10);
    cr_assert_eq(scalar("SELECT count(*) FROM docpipe.dp_dead_letters WHERE"
                        " group_id = '%sdemo'", T.prefix), 1, "the culprit");
}

/* A batch-wide retry wait (the batch fails 8 times, 0.1 s doubling) while
 * two other instances join and leave: every rebalance inside the wait
 * loses no record. */
Test(visibility, test_rebalances_during_a_batch_retry_wait_lose_no_record)
{
    setup_named("waitreb");
    for (int p = 0; p < 4; p++)
        produce_at(p, 0, 300, "payload", NULL);
    char la[512], lb[512], lc[512];
    logpath(la, sizeof(la), "A");
    logpath(lb, sizeof(lb), "B");
    logpath(lc, sizeof(lc), "C");
    const char *env[] = {"DOCPIPE_FAULT=demo:batch-retry:fail:-8",
                         "DOCPIPE_RETRY_BASE_MS=100", NULL};
    pid_t a = tenv_spawn_stage(&T, "demo", la, env);
    cr_assert_eq(wait_for(1, 60000, "SELECT (count(*) > 0)::int FROM docpipe.dp_offsets"
                          " WHERE group_id = '%sdemo'", T.prefix), 1);
    sleep(2);
    pid_t b = tenv_spawn_stage(&T, "demo", lb, env);
    sleep(3);
    cr_assert_eq(tenv_stop(b, SIGTERM, 30000), 0);
    pid_t c = tenv_spawn_stage(&T, "demo", lc, env);
    cr_assert_eq(wait_for(1200, 120000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 1200);
    sleep(1);
    cr_assert_eq(tenv_stop(c, SIGTERM, 30000), 0);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 1200);
    cr_assert_eq(scalar("SELECT count(DISTINCT (partition, \"offset\"))"
                        " FROM docpipe.demo_results WHERE topic = '%s'", in_topic), 1200);
    const char *logs[] = {la, lb, lc};
    for (int i = 0; i < 3; i++) {
        char *text = tenv_slurp(logs[i]);
        cr_assert(!strstr(text, "were never polled"), "no record skipped:\n%s", logs[i]);
        free(text);
    }
}

/* The demo stage is killed at each window of a batch in turn (the second
 * batch there, so the first committed), or told its COMMIT's reply was
 * lost, then runs on without faults: every record once, whatever the
 * window.  Its outputs on demo.out are then each acted on once by a
 * consumer of committed attempts only: counted here through the attempts
 * that carry them. */
Test(visibility, test_every_window_of_a_batch_loses_and_repeats_nothing)
{
    setup_named("windows");
    static const char *points[] = {"after-handler", "after-produce",
                                   "after-commit", "in-claim", NULL};
    long long total = 0;
    char log[512];
    for (int k = 0; points[k]; k++) {
        for (int p = 0; p < 4; p++)
            produce_at(p, total / 4 + 0, 50, "payload", NULL);
        total += 200;
        char fault[128];
        /* in-claim: the second claim is the one after a rebalance; the
         * first claim of a fresh process is hit 1. */
        snprintf(fault, sizeof(fault), "DOCPIPE_FAULT=demo:%s:kill:%d", points[k],
                 strcmp(points[k], "in-claim") == 0 ? 1 : 2);
        /* A short session: the group gives the killed instance's
         * partitions away after 6 s instead of Kafka's default 45. */
        const char *env[] = {fault, "DOCPIPE_BATCH_MAX=60",
                             "DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000", NULL};
        logpath(log, sizeof(log), points[k]);
        pid_t a = tenv_spawn_stage(&T, "demo", log, env);
        cr_assert_eq(tenv_stop(a, 0, 60000), 128 + SIGKILL, "%s: killed there",
                     points[k]);
        logpath(log, sizeof(log), "after");
        pid_t b = tenv_spawn_stage(&T, "demo", log, NULL);
        cr_assert_eq(wait_for(total, 90000, "SELECT count(*) FROM docpipe.demo_results"
                              " WHERE topic = '%s'", in_topic), total, "%s", points[k]);
        sleep(1);
        cr_assert_eq(tenv_stop(b, SIGTERM, 30000), 0);
        cr_assert_eq(rows(), total, "%s: nothing repeated", points[k]);
        cr_assert_eq(scalar("SELECT count(DISTINCT (partition, \"offset\"))"
                            " FROM docpipe.demo_results WHERE topic = '%s'", in_topic),
                     total, "%s: nothing lost", points[k]);
    }
    /* COMMIT's reply lost: the instance cannot know; it rejoins and reads
     * the truth back. */
    for (int p = 0; p < 4; p++)
        produce_at(p, total / 4, 50, "payload", NULL);
    total += 200;
    const char *env[] = {"DOCPIPE_FAULT=demo:commit-lost:fail:2", "DOCPIPE_BATCH_MAX=60",
                         NULL};
    logpath(log, sizeof(log), "commit-lost");
    pid_t c = tenv_spawn_stage(&T, "demo", log, env);
    cr_assert_eq(wait_for(total, 90000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), total);
    sleep(1);
    cr_assert_eq(tenv_stop(c, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), total, "commit-lost: nothing repeated");
    char *text = tenv_slurp(log);
    cr_assert(strstr(text, "commit outcome unknown"), "the unknown outcome is logged");
    free(text);
    /* Of demo.out's records, those of committed attempts (what a stage
     * downstream acts on) are exactly one per input record. */
    tmsg *msgs;
    char out_topic[256];
    snprintf(out_topic, sizeof(out_topic), "%sdemo.out", T.prefix);
    int n = tenv_consume_all(&T, out_topic, &msgs, 30000);
    cr_assert(n >= total, "every record published at least once (%d)", n);
    size_t cap = (size_t)n * 48 + 64, used = 0;
    char *vals = malloc(cap);
    used += (size_t)snprintf(vals, cap, "VALUES ");
    for (int i = 0; i < n; i++) {
        char buf[96];
        const char *a = tenv_header(&msgs[i], "docpipe-attempt", buf, sizeof(buf));
        cr_assert(a, "every output names its attempt");
        used += (size_t)snprintf(vals + used, cap - used, "%s(%lld, '%.*s')",
                                 i ? ", " : "", strtoll(a, NULL, 10),
                                 (int)msgs[i].key_len, msgs[i].key);
    }
    tenv_free_msgs(msgs, n);
    size_t qcap = used + 512;
    char *sql = malloc(qcap);
    snprintf(sql, qcap, "SELECT count(*) FROM (SELECT o.k FROM (%s) AS o(a, k)"
             " JOIN docpipe.dp_attempts t ON t.attempt_id = o.a GROUP BY o.k"
             " HAVING count(*) = 1) x", vals);
    cr_assert_eq(tenv_scalar(&T, sql), total, "one committed output per record");
    snprintf(sql, qcap, "SELECT count(*) FROM (%s) AS o(a, k) JOIN"
             " docpipe.dp_attempts t ON t.attempt_id = o.a", vals);
    cr_assert_eq(tenv_scalar(&T, sql), total, "and no other");
    free(sql);
    free(vals);
}

/* docpipe replay killed before its COMMIT changes nothing. */
Test(visibility, test_replay_killed_before_commit_changes_nothing)
{
    setup_named("replaykill");
    produce_at(0, 0, 20, "payload", NULL);
    char log[512];
    logpath(log, sizeof(log), "A");
    pid_t a = tenv_spawn_stage(&T, "demo", log, NULL);
    cr_assert_eq(wait_for(20, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 20);
    const char *args[] = {"replay", "demo", "--to-earliest", "--execute", NULL};
    const char *env[] = {"DOCPIPE_FAULT=replay:before-commit:kill", NULL};
    cr_assert_eq(tenv_docpipe(&T, args, env), 128 + SIGKILL);
    sleep(3);
    cr_assert_eq(rows(), 20, "nothing replayed");
    cr_assert_eq(scalar("SELECT count(*) FROM docpipe.dp_replays WHERE"
                        " group_id = '%sdemo'", T.prefix), 0);
    /* The same command, whole: every record once more, while it runs. */
    cr_assert_eq(tenv_docpipe(&T, args, NULL), 0);
    cr_assert_eq(wait_for(40, 60000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 40, "replayed once");
    sleep(2);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 40);
}

/*
 * A record that fails retryably and a record deferred (its upstream
 * attempt still open) in one partition at once: the partition is paused
 * for both, and both must come back.  Partition 0: the retrying record
 * before the deferred one; partition 1: the deferred one first, and the
 * retrying one behind it.  The retrying record comes back (before the
 * dedup marks were computed again after the handler it was taken for a
 * copy of itself and passed by).  Each wait re-assigns the partitions
 * while another one's wait ends: a resume racing librdkafka's start of the
 * re-assigned partition was lost, or its seek failed and forced a rejoin
 * (docs/reliability.md).  Every record is acted on once the attempt
 * commits, each once, every offset moves on, and no partition is claimed
 * again.
 */
Test(visibility, test_a_retry_and_a_deferral_in_one_partition_both_come_back)
{
    setup_named("visretdef");
    long long b = id_base(), a1 = b + 1, a2 = b + 2;
    char h[64];
    sql_exec("INSERT INTO docpipe.dp_offsets (group_id, topic, partition,"
             " next_offset, epoch, owner) VALUES ('%sup', '%sup.in', 0, 102, 1,"
             " 'up-a')", T.prefix, T.prefix);
    sql_exec("INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic) VALUES"
             " (%lld, '%sup', '%sup.in')", a1, T.prefix, T.prefix);
    /* Partition 0: committed, retrying, open, open. */
    produce_output(0, "0", "100:0", att(h, a1, 1, 100), "p0-first");
    produce_output(0, "0", "101:0", att(h, a1, 1, 100), "fail:retry-until:3");
    produce_output(0, "0", "102:0", att(h, a2, 1, 102), "p0-open-a");
    produce_output(0, "0", "103:0", att(h, a2, 1, 102), "p0-open-b");
    /* Partition 1: open, then a retrying record behind it. */
    produce_output(1, "0", "102:1", att(h, a2, 1, 102), "p1-open");
    produce_output(1, "0", "103:1", att(h, a2, 1, 102), "fail:retry-until:2");
    produce_output(1, "0", "103:2", att(h, a2, 1, 102), "p1-last");
    char log[512];
    logpath(log, sizeof(log), "A");
    const char *env[] = {"DOCPIPE_RETRY_BASE_MS=300", "DOCPIPE_BATCH_WAIT_MS=200",
                         NULL};
    pid_t a = tenv_spawn_stage(&T, "demo", log, env);
    /* The committed record and, after its retries, the retrying one. */
    cr_assert_eq(wait_for(2, 90000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 2, "log: %s", log);
    cr_assert_eq(body_rows("p0-first"), 1);
    cr_assert_eq(body_rows("fail:retry-until:3"), 1,
                 "the retrying record comes back while the next one is deferred");
    cr_assert_eq(body_rows("p0-open-a") + body_rows("p1-open"), 0,
                 "an open attempt's outputs wait");
    sql_exec("BEGIN; INSERT INTO docpipe.dp_attempts (attempt_id, group_id, topic)"
             " VALUES (%lld, '%sup', '%sup.in'); UPDATE docpipe.dp_offsets SET"
             " next_offset = 104 WHERE group_id = '%sup' AND partition = 0; COMMIT",
             a2, T.prefix, T.prefix, T.prefix);
    cr_assert_eq(wait_for(7, 90000, "SELECT count(*) FROM docpipe.demo_results"
                          " WHERE topic = '%s'", in_topic), 7, "log: %s", log);
    cr_assert_eq(wait_for(4, 30000, "SELECT next_offset FROM docpipe.dp_offsets"
                          " WHERE group_id = '%sdemo' AND partition = 0", T.prefix), 4);
    cr_assert_eq(wait_for(3, 30000, "SELECT next_offset FROM docpipe.dp_offsets"
                          " WHERE group_id = '%sdemo' AND partition = 1", T.prefix), 3);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0);
    cr_assert_eq(rows(), 7, "each record once");
    cr_assert_eq(body_rows("fail:retry-until:2"), 1);
    cr_assert_eq(body_rows("p1-last"), 1);
    /* Waiting partitions came back by themselves: none had to be claimed
     * again (a rejoin, which a resume racing the re-assignment forced). */
    cr_assert_eq(scalar("SELECT max(epoch) FROM docpipe.dp_offsets WHERE"
                        " group_id = '%sdemo'", T.prefix), 1,
                 "the partitions were claimed once (log: %s)", log);
}

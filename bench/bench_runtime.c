/*
 * bench_runtime: the stage runtime's throughput beside its ceilings.
 *
 * For each batch size (1, 100, 1000) it measures, in the same run:
 *   stage    `docpipe run demo` (a separate process, DOCPIPE_BATCH_MAX=B)
 *            passing N records through: one row per record (COPY) plus,
 *            unless --publish 0 (a sink), its output record; offsets fenced
 *            and committed per batch.  --prefetch-kb sets the consumer's
 *            queued.max.messages.kbytes (docs/benchmarks.md says why it
 *            bounds the rate with librdkafka 2.0.2);
 *   pg       the same rows COPYed straight into PostgreSQL, one
 *            transaction per B rows (the database ceiling);
 *   kafka    a bare librdkafka consumer reading the same N records.
 * Each figure is the median of --runs runs; the stage's peak resident
 * memory (VmHWM) is read from /proc.  Needs Kafka and PostgreSQL
 * (scripts/test-env.sh up) and the docpipe binary (--bin).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "config.h"
#include "migrate.h"
#include "pg.h"
#include "topics.h"

static const char *bin = "./docpipe";
static const char *publish = "1";    /* demo_publish of the stage */
static const char *prefetch_kb;      /* queued.max.messages.kbytes, NULL: default */
static const char *brokers = "127.0.0.1:39092";
static const char *dburl = "postgresql://postgres@127.0.0.1:55432/docpipe";

static int run(const char *const *argv, const char *prefix, const char *batch)
{
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DOCPIPE_TOPIC_PREFIX", prefix, 1);
        if (batch)
            setenv("DOCPIPE_BATCH_MAX", batch, 1);
        int fd = open("/dev/null", 1);
        dup2(fd, 1);
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 1;
}

static long long scalar(PGconn *db, const char *sql)
{
    PGresult *r = PQexec(db, sql);
    long long v = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r)
                      ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
    PQclear(r);
    return v;
}

/* Produces n demo records under prefix, then times `docpipe run demo`
 * from its first committed row to its last. */
static double bench_stage(PGconn *db, const char *prefix, long n, int batch,
                          long *rss_kb)
{
    char ns[32], bs[32];
    snprintf(ns, sizeof(ns), "%ld", n);
    snprintf(bs, sizeof(bs), "%d", batch);
    const char *topics[] = {bin, "topics", NULL};
    const char *produce[] = {bin, "demo-produce", ns, "--body",
        "a pass-through record of about one hundred bytes, like a small event",
        NULL};
    if (run(topics, prefix, NULL) || run(produce, prefix, NULL)) {
        fprintf(stderr, "bench: cannot prepare %s\n", prefix);
        exit(1);
    }
    /* Progress from the committed offsets (a primary-key read), not from
     * counting result rows, which would load the database being measured. */
    char sql[512];
    snprintf(sql, sizeof(sql), "SELECT coalesce(sum(next_offset), 0) FROM"
             " docpipe.dp_offsets WHERE group_id = '%sdemo'", prefix);
    pid_t pid = fork();
    if (pid == 0) {
        setenv("DOCPIPE_TOPIC_PREFIX", prefix, 1);
        setenv("DOCPIPE_BATCH_MAX", bs, 1);
        setenv("DOCPIPE_LOG_LEVEL", "warn", 1);
        setenv("DOCPIPE_DEMO_PUBLISH", publish, 1);
        if (prefetch_kb)
            setenv("DOCPIPE_CONSUMER_QUEUED_MAX_MESSAGES_KBYTES", prefetch_kb, 1);
        const char *argv[] = {bin, "run", "demo", NULL};
        execv(bin, (char *const *)argv);
        _exit(127);
    }
    double first = 0, last = 0;
    long long c = 0;
    double deadline = bench_now() + 600;
    while (bench_now() < deadline) {
        c = scalar(db, sql);
        double t = bench_now();
        if (c > 0 && first == 0)
            first = t;
        if (c >= n) {
            last = t;
            break;
        }
        *rss_kb = bench_vm_hwm_kb(pid);
        usleep(batch == 1 ? 50000 : 20000);
    }
    long hwm = bench_vm_hwm_kb(pid);
    if (hwm > *rss_kb)
        *rss_kb = hwm;
    kill(pid, SIGTERM);
    int st;
    waitpid(pid, &st, 0);
    if (c < n) {
        fprintf(stderr, "bench: stage processed %lld of %ld\n", c, n);
        return 0;
    }
    /* The first poll that saw rows already missed that first batch. */
    double secs = last - first;
    return secs > 0 ? (double)(n - (n >= batch ? batch : 0)) / secs : 0;
}

static double bench_pg(PGconn *db, long n, int batch)
{
    PQclear(PQexec(db, "SET client_min_messages = warning"));
    PQclear(PQexec(db, "CREATE TABLE IF NOT EXISTS docpipe.bench_ceiling"
                       " (LIKE docpipe.demo_results INCLUDING DEFAULTS)"));
    PQclear(PQexec(db, "TRUNCATE docpipe.bench_ceiling"));
    dp_buf b = {0};
    double t0 = bench_now();
    for (long i = 0; i < n; i += batch) {
        dp_buf_reset(&b);
        for (long k = i; k < i + batch && k < n; k++)
            dp_buf_appendf(&b, "rec-%ld\t%ld\tbench.demo.in\t%ld\t%ld\ta pass-through"
                           " record of about one hundred bytes, like a small event"
                           "\tbench\n", k, k, k % 4, k / 4);
        PQclear(PQexec(db, "BEGIN"));
        PQclear(PQexec(db, "COPY docpipe.bench_ceiling (id, seq, topic, partition,"
                           " \"offset\", body, instance) FROM STDIN"));
        PQputCopyData(db, b.data, (int)b.len);
        PQputCopyEnd(db, NULL);
        PGresult *r;
        while ((r = PQgetResult(db)))
            PQclear(r);
        PQclear(PQexec(db, "COMMIT"));
    }
    double secs = bench_now() - t0;
    dp_buf_free(&b);
    return (double)n / secs;
}

static double bench_kafka(const char *topic, long n)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof(err));
    rd_kafka_conf_set(conf, "group.id", "docpipe-bench-raw", err, sizeof(err));
    rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof(err));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof(err));
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(4);
    for (int p = 0; p < 4; p++)
        rd_kafka_topic_partition_list_add(l, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    long got = 0;
    double t0 = 0, deadline = bench_now() + 120;
    while (got < n && bench_now() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        if (!m)
            continue;
        if (!m->err) {
            if (got++ == 0)
                t0 = bench_now();
        }
        rd_kafka_message_destroy(m);
    }
    double secs = bench_now() - t0;
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    return got > 1 ? (double)(got - 1) / secs : 0;
}

int main(int argc, char **argv)
{
    long n = 200000, n1 = 2000;
    int runs = 3;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bin") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--records") && i + 1 < argc)
            n = atol(argv[++i]);
        else if (!strcmp(argv[i], "--records-batch1") && i + 1 < argc)
            n1 = atol(argv[++i]);
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--publish") && i + 1 < argc)
            publish = argv[++i];
        else if (!strcmp(argv[i], "--prefetch-kb") && i + 1 < argc)
            prefetch_kb = argv[++i];
        else {
            fprintf(stderr, "usage: bench_runtime [--bin PATH] [--records N]"
                            " [--records-batch1 N] [--runs R] [--publish 0|1]"
                            " [--prefetch-kb KB]\n");
            return 2;
        }
    }
    if (getenv("DOCPIPE_BROKERS"))
        brokers = getenv("DOCPIPE_BROKERS");
    if (getenv("DOCPIPE_DATABASE_URL"))
        dburl = getenv("DOCPIPE_DATABASE_URL");
    PGconn *db = PQconnectdb(dburl);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "bench: %s", PQerrorMessage(db));
        return 1;
    }
    const char *migrate[] = {bin, "migrate", NULL};
    if (run(migrate, "docpipe.", NULL)) {
        fprintf(stderr, "bench: migrate failed (is %s built?)\n", bin);
        return 1;
    }
    printf("docpipe runtime benchmark: pass-through stage, one row%s per record,"
           " consumer prefetch %s KB\n", strcmp(publish, "0") ? " + one output" : " (sink)",
           prefetch_kb ? prefetch_kb : "256 (default)");
    printf("%-6s %10s %12s %12s %7s %14s %9s\n", "batch", "records", "stage rec/s",
           "pg rec/s", "ratio", "kafka rec/s", "RSS MB");
    static const int batches[] = {1, 100, 1000};
    for (int bi = 0; bi < 3; bi++) {
        int batch = batches[bi];
        long count = batch == 1 ? n1 : n;
        double st[16], pg[16], kf[16], ratio[16];
        long rss_max = 0;
        int r;
        for (r = 0; r < runs && r < 16; r++) {
            char prefix[64];
            snprintf(prefix, sizeof(prefix), "bench%d_%ld_%d_%d.", (int)getpid(),
                     (long)time(NULL) % 100000, batch, r);
            long rss = 0;
            st[r] = bench_stage(db, prefix, count, batch, &rss);
            pg[r] = bench_pg(db, count, batch);
            char topic[128];
            snprintf(topic, sizeof(topic), "%sdemo.in", prefix);
            kf[r] = bench_kafka(topic, count);
            char err[512];
            if (dp_topics_delete_prefix(brokers, prefix, NULL, err, sizeof(err)))
                fprintf(stderr, "bench: %s\n", err);
            /* The stage's rows go too: the next run writes into a table
             * (and index) of the same size as the ceiling's, which starts
             * empty. */
            char sql[512];
            snprintf(sql, sizeof(sql), "DELETE FROM docpipe.demo_results WHERE topic ="
                     " '%sdemo.in'", prefix);
            PQclear(PQexec(db, sql));
            snprintf(sql, sizeof(sql), "DELETE FROM docpipe.dp_offsets WHERE group_id ="
                     " '%sdemo'", prefix);
            PQclear(PQexec(db, sql));
            PQclear(PQexec(db, "VACUUM docpipe.demo_results"));
            ratio[r] = pg[r] > 0 ? st[r] / pg[r] : 0;
            fprintf(stderr, "  batch %d run %d: stage %.0f, pg %.0f, kafka %.0f rec/s\n",
                    batch, r + 1, st[r], pg[r], kf[r]);
            if (rss > rss_max)
                rss_max = rss;
        }
        printf("%-6d %10ld %12.0f %12.0f %6.0f%% %14.0f %9.1f\n", batch, count,
               bench_median(st, r), bench_median(pg, r), 100 * bench_median(ratio, r),
               bench_median(kf, r),
               (double)rss_max / 1024.0);
        fflush(stdout);
    }
    printf("(medians of %d runs; ratio = median of per-run stage/pg)\n", runs);
    PQfinish(db);
    return 0;
}

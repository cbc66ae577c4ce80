/* metrics: Prometheus text exposition of the stages (see metrics.h). */
#include "metrics.h"

#include "services.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct family {
    const char *name, *type, *help;
} family;

static void head(dp_buf *out, const family *f)
{
    dp_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name,
                   f->type);
}

/* One sample per stage of a value taken from its view. */
typedef double (*getter)(const dp_runtime_view *v);

#define G(field) static double g_##field(const dp_runtime_view *v) { return (double)v->stats.field; }
G(records) G(batches) G(duplicates) G(retries) G(fenced) G(rollbacks) G(gaps)
G(aborted) G(undecided) G(producer_resets)
#undef G
static double g_rebalances(const dp_runtime_view *v) { return (double)v->rebalances; }
static double g_assigned(const dp_runtime_view *v) { return v->assigned; }
static double g_lag(const dp_runtime_view *v) { return (double)v->lag; }
static double g_joined(const dp_runtime_view *v) { return v->joined; }

static const struct {
    family f;
    getter get;
} per_stage[] = {
    {{"docpipe_records_total", "counter", "Records whose processing committed."}, g_records},
    {{"docpipe_batches_total", "counter", "Batches committed."}, g_batches},
    {{"docpipe_duplicates_total", "counter",
      "Records skipped as copies of records already acted on."}, g_duplicates},
    {{"docpipe_aborted_upstream_total", "counter",
      "Records skipped: their upstream batch never committed."}, g_aborted},
    {{"docpipe_undecided_deferrals_total", "counter",
      "Records deferred while their upstream batch was still open."}, g_undecided},
    {{"docpipe_retries_total", "counter", "Record attempts that failed retryably."}, g_retries},
    {{"docpipe_fenced_total", "counter",
      "Commits refused because another instance took the partitions."}, g_fenced},
    {{"docpipe_rollbacks_total", "counter", "Batch transactions rolled back."}, g_rollbacks},
    {{"docpipe_rebalances_total", "counter", "Partition assignments received."}, g_rebalances},
    {{"docpipe_offset_gaps_total", "counter",
      "Offsets never read: deleted from the log before the stage read them."}, g_gaps},
    {{"docpipe_producer_resets_total", "counter",
      "Producers recreated after a fatal error."}, g_producer_resets},
    {{"docpipe_assigned_partitions", "gauge", "Input partitions this process owns."}, g_assigned},
    {{"docpipe_lag_records", "gauge",
      "Records of the owned partitions not committed yet (-1: unknown)."}, g_lag},
    {{"docpipe_group_joined", "gauge", "1 once the group gave an assignment."}, g_joined},
};

static void kafka_samples(dp_buf *out, const char *name, const char *stage,
                          int64_t consumer, int64_t producer)
{
    dp_buf_appendf(out, "%s{stage=\"%s\",client=\"consumer\"} %lld\n", name, stage,
                   (long long)consumer);
    dp_buf_appendf(out, "%s{stage=\"%s\",client=\"producer\"} %lld\n", name, stage,
                   (long long)producer);
}

static long resident_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * sysconf(_SC_PAGESIZE);
}

void dp_metrics_render(dp_runtime *const *rts, int n, dp_buf *out)
{
    dp_runtime_view *v = calloc((size_t)(n ? n : 1), sizeof(*v));
    for (int i = 0; i < n; i++)
        dp_runtime_view_get(rts[i], &v[i]);
    for (size_t k = 0; k < sizeof(per_stage) / sizeof(per_stage[0]); k++) {
        head(out, &per_stage[k].f);
        for (int i = 0; i < n; i++)
            dp_buf_appendf(out, "%s{stage=\"%s\"} %.17g\n", per_stage[k].f.name,
                           dp_runtime_stage(rts[i]), per_stage[k].get(&v[i]));
    }
    static const family dl = {"docpipe_dead_letters_total", "counter",
                              "Records dead-lettered, by category."};
    static const char *const cats[3] = {"permanent", "retryable", "poison"};
    head(out, &dl);
    for (int i = 0; i < n; i++)
        for (int c = 0; c < 3; c++)
            dp_buf_appendf(out, "%s{stage=\"%s\",category=\"%s\"} %llu\n", dl.name,
                           dp_runtime_stage(rts[i]), cats[c],
                           (unsigned long long)v[i].dead_letters_by[c]);
    static const family bh = {"docpipe_batch_duration_seconds", "histogram",
                              "Time to settle a polled batch, retries included."};
    head(out, &bh);
    for (int i = 0; i < n; i++) {
        const char *st = dp_runtime_stage(rts[i]);
        uint64_t cum = 0;
        for (int b = 0; b <= DP_HIST_BUCKETS; b++) {
            cum += v[i].batch_seconds.counts[b];
            if (b < DP_HIST_BUCKETS)
                dp_buf_appendf(out, "%s_bucket{stage=\"%s\",le=\"%g\"} %llu\n", bh.name,
                               st, dp_hist_bounds[b], (unsigned long long)cum);
            else
                dp_buf_appendf(out, "%s_bucket{stage=\"%s\",le=\"+Inf\"} %llu\n",
                               bh.name, st, (unsigned long long)cum);
        }
        dp_buf_appendf(out, "%s_sum{stage=\"%s\"} %.9g\n%s_count{stage=\"%s\"} %llu\n",
                       bh.name, st, v[i].batch_seconds.sum, bh.name, st,
                       (unsigned long long)v[i].batch_seconds.count);
    }
    static const struct { family f; int which; } kf[] = {
        {{"docpipe_kafka_requests_sent_total", "counter",
          "Requests sent to Kafka brokers (librdkafka statistics)."}, 0},
        {{"docpipe_kafka_responses_received_total", "counter",
          "Responses received from Kafka brokers (librdkafka statistics)."}, 1},
        {{"docpipe_kafka_sent_bytes_total", "counter",
          "Bytes sent to Kafka brokers (librdkafka statistics)."}, 2},
        {{"docpipe_kafka_received_bytes_total", "counter",
          "Bytes received from Kafka brokers (librdkafka statistics)."}, 3},
        {{"docpipe_kafka_messages_sent_total", "counter",
          "Messages sent to Kafka (librdkafka statistics)."}, 4},
        {{"docpipe_kafka_messages_received_total", "counter",
          "Messages received from Kafka (librdkafka statistics)."}, 5},
        {{"docpipe_kafka_queued_messages", "gauge",
          "Messages in librdkafka's queues (librdkafka statistics)."}, 6},
    };
    for (size_t k = 0; k < sizeof(kf) / sizeof(kf[0]); k++) {
        head(out, &kf[k].f);
        for (int i = 0; i < n; i++) {
            const dp_kafka_view *c = &v[i].consumer, *p = &v[i].producer;
            int64_t a[7] = {c->tx, c->rx, c->tx_bytes, c->rx_bytes, c->txmsgs,
                            c->rxmsgs, c->msg_cnt};
            int64_t b[7] = {p->tx, p->rx, p->tx_bytes, p->rx_bytes, p->txmsgs,
                            p->rxmsgs, p->msg_cnt};
            kafka_samples(out, kf[k].f.name, dp_runtime_stage(rts[i]), a[kf[k].which],
                          b[kf[k].which]);
        }
    }
    dp_services_render(out);
    static const family rss = {"docpipe_process_resident_memory_bytes", "gauge",
                               "Resident memory of the process."};
    head(out, &rss);
    dp_buf_appendf(out, "%s %ld\n", rss.name, resident_bytes());
    free(v);
}

/*
 * docpipe lag, and the positions the stages commit to their groups in
 * Kafka for monitoring (docs/design.md, "Offsets in Kafka, for monitoring
 * only"), against the real broker and PostgreSQL, through the demo stage.
 *
 * Kafka's side is read with Kafka's own consumer-group command, run from
 * the broker's jars: DOCPIPE_TEST_KAFKA_JARS (a folder of jars, exported
 * by scripts/env.sh; not DOCPIPE_KAFKA_*, which docpipe passes to
 * librdkafka), else the folder scripts/kafka.sh fetched into
 * $DOCPIPE_CACHE_DIR or <source>/.cache.  Without java or the jars the test
 * fails and says so: CI has both.
 */
#include <criterion/criterion.h>
#include <glob.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "support_env.h"

int dp_test_demo_encode(const char *srcdir, const char *id, long seq,
                        const char *body, void **buf, size_t *len, char *err,
                        size_t errlen);

static tenv T;

static void teardown(void) { tenv_teardown(&T); }

TestSuite(lag, .fini = teardown, .timeout = 300);

#define NPARTS 4

static char in_topic[256], group[256];

/* Produces n DemoRecords to one partition of demo.in. */
static void produce_at(int32_t partition, long first, long n)
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
        cr_assert_eq(dp_test_demo_encode(T.srcdir, id, i, "lag", &buf, &len, err,
                                         sizeof(err)), 0, "%s", err);
        cr_assert_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(in_topic),
                     RD_KAFKA_V_PARTITION(partition), RD_KAFKA_V_KEY(id, strlen(id)),
                     RD_KAFKA_V_VALUE(buf, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                     RD_KAFKA_V_END), 0);
        free(buf);
    }
    cr_assert_eq(rd_kafka_flush(rk, 30000), 0, "flush timed out");
    rd_kafka_destroy(rk);
}

/* The folder of the broker's jars, found as scripts/kafka.sh leaves it. */
static void kafka_jars(char *out, size_t len)
{
    const char *env = getenv("DOCPIPE_TEST_KAFKA_JARS");
    if (env && *env) {
        snprintf(out, len, "%s", env);
        return;
    }
    const char *cache = getenv("DOCPIPE_CACHE_DIR");
    char pattern[1200];
    if (cache && *cache)
        snprintf(pattern, sizeof(pattern), "%s/kafka-[0-9]*/.complete", cache);
    else
        snprintf(pattern, sizeof(pattern), "%s/.cache/kafka-[0-9]*/.complete", T.srcdir);
    glob_t g;
    int found = glob(pattern, 0, NULL, &g) == 0 && g.gl_pathc > 0;
    if (found) { /* the last in name order: the newest version */
        snprintf(out, len, "%s", g.gl_pathv[g.gl_pathc - 1]);
        strcpy(strrchr(out, '/'), "/jars");
    }
    globfree(&g);
    cr_assert(found, "Kafka's jars not found: set DOCPIPE_TEST_KAFKA_JARS to "
              "the folder of the broker's jars (scripts/env.sh exports it once "
              "scripts/kafka.sh fetched them), none matched %s", pattern);
}

/* One partition as both tools report it; -1: "-" or not reported. */
typedef struct lagrow {
    long long current, log_end, lag;
} lagrow;

/* Kafka's consumer-group command --describe of the demo group, parsed by
 * its header (CURRENT-OFFSET, LOG-END-OFFSET, LAG); partitions it does not
 * list stay -1. */
static void kafka_describe(lagrow rows[NPARTS])
{
    for (int p = 0; p < NPARTS; p++)
        rows[p] = (lagrow){-1, -1, -1};
    cr_assert_eq(system("command -v java >/dev/null 2>&1"), 0,
                 "java not found: Kafka's consumer-group command needs it "
                 "(scripts/deps.sh installs it)");
    char jars[1024], out[300], errf[300], cmd[4096];
    kafka_jars(jars, sizeof(jars));
    snprintf(out, sizeof(out), "/tmp/docpipe-%skafka-describe.out", T.prefix);
    snprintf(errf, sizeof(errf), "/tmp/docpipe-%skafka-describe.err", T.prefix);
    snprintf(cmd, sizeof(cmd),
             "java -Xmx256m -cp '%s/*' "
             "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "
             "--bootstrap-server '%s' --describe --group '%s' >'%s' 2>'%s'",
             jars, T.brokers, group, out, errf);
    int rc = system(cmd);
    char *text = tenv_slurp(out);
    char *etext = tenv_slurp(errf);
    cr_assert_eq(rc, 0, "%s\nfailed (%d): %s", cmd, rc, etext ? etext : "");
    cr_assert(text, "no output from %s", cmd);
    int c_topic = -1, c_part = -1, c_cur = -1, c_end = -1, c_lag = -1, rows_seen = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        char *cols[16], *s2 = NULL;
        int n = 0;
        for (char *w = strtok_r(line, " \t", &s2); w && n < 16;
             w = strtok_r(NULL, " \t", &s2))
            cols[n++] = w;
        if (n > 0 && strcmp(cols[0], "GROUP") == 0) {
            for (int i = 0; i < n; i++) {
                if (!strcmp(cols[i], "TOPIC")) c_topic = i;
                if (!strcmp(cols[i], "PARTITION")) c_part = i;
                if (!strcmp(cols[i], "CURRENT-OFFSET")) c_cur = i;
                if (!strcmp(cols[i], "LOG-END-OFFSET")) c_end = i;
                if (!strcmp(cols[i], "LAG")) c_lag = i;
            }
            continue;
        }
        if (c_lag < 0 || n <= c_lag || strcmp(cols[c_topic], in_topic) != 0)
            continue;
        int p = atoi(cols[c_part]);
        cr_assert(p >= 0 && p < NPARTS, "partition %d in Kafka's output", p);
        rows[p].current = strcmp(cols[c_cur], "-") ? atoll(cols[c_cur]) : -1;
        rows[p].log_end = strcmp(cols[c_end], "-") ? atoll(cols[c_end]) : -1;
        rows[p].lag = strcmp(cols[c_lag], "-") ? atoll(cols[c_lag]) : -1;
        rows_seen++;
    }
    cr_assert(c_lag >= 0 && rows_seen > 0,
              "Kafka's consumer-group command shows no offsets for %s:\n%s\n%s",
              group, tenv_slurp(out), etext ? etext : "");
    free(text);
    free(etext);
}

/* `docpipe lag --stage demo --json`, parsed. */
static json_t *docpipe_lag_json(void)
{
    char out[300];
    snprintf(out, sizeof(out), "/tmp/docpipe-%slag.json", T.prefix);
    const char *args[] = {"lag", "--stage", "demo", "--json", NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, NULL, out), 0, "docpipe lag --json failed");
    json_error_t je;
    json_t *doc = json_load_file(out, 0, &je);
    cr_assert(doc, "docpipe lag --json: not JSON: %s", je.text);
    json_t *stages = json_object_get(doc, "stages");
    cr_assert_eq(json_array_size(stages), 1);
    json_t *st = json_array_get(stages, 0);
    cr_assert_str_eq(json_string_value(json_object_get(st, "stage")), "demo");
    cr_assert_str_eq(json_string_value(json_object_get(st, "group")), group);
    cr_assert_str_eq(json_string_value(json_object_get(st, "topic")), in_topic);
    cr_assert_eq(json_array_size(json_object_get(st, "partitions")), NPARTS);
    json_incref(st);
    json_decref(doc);
    return st;
}

static long long jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v) : -1;
}

/* Before the stop: 10, 8 and 12 records on partitions 0-2, none on 3; after
 * it, 3 more on each.  Expected per partition: position, log end, lag
 * (position -1: none, lag then counted from the log's start). */
static const long before[NPARTS] = {10, 8, 12, 0}, after = 3;

/* N records processed by the demo stage, which then stops; M more
 * produced.  Returns nothing: the state the tests read. */
static void process_then_produce_more(const char *name)
{
    tenv_setup(&T, name);
    snprintf(in_topic, sizeof(in_topic), "%sdemo.in", T.prefix);
    snprintf(group, sizeof(group), "%sdemo", T.prefix);
    long n = 0;
    for (int p = 0; p < NPARTS; p++) {
        produce_at(p, 0, before[p]);
        n += before[p];
    }
    char log[512], sql[1024];
    snprintf(log, sizeof(log), "/tmp/docpipe-%sdemo.log", T.prefix);
    const char *env[] = {"DOCPIPE_INSTANCE_ID=lag-a", NULL};
    pid_t a = tenv_spawn_stage(&T, "demo", log, env);
    snprintf(sql, sizeof(sql), "SELECT coalesce(sum(next_offset), 0) FROM "
             "docpipe.dp_offsets WHERE group_id = '%s'", group);
    cr_assert_eq(tenv_wait_scalar(&T, sql, n, 60000), n,
                 "the demo stage did not commit %ld records (log: %s)", n, log);
    cr_assert_eq(tenv_stop(a, SIGTERM, 30000), 0, "the stage did not stop cleanly");
    for (int p = 0; p < NPARTS; p++)
        produce_at(p, before[p], after);
}

Test(lag, test_kafka_consumer_group_command_reports_the_same_lag_as_docpipe_lag)
{
    process_then_produce_more("lagk");
    json_t *st = docpipe_lag_json();
    lagrow k[NPARTS];
    kafka_describe(k);
    json_t *parts = json_object_get(st, "partitions");
    for (int p = 0; p < NPARTS; p++) {
        json_t *jp = json_array_get(parts, (size_t)p);
        cr_assert_eq(jint(jp, "partition"), p);
        long long want_pos = before[p] > 0 ? before[p] : -1;
        cr_assert_eq(jint(jp, "position"), want_pos, "partition %d position", p);
        cr_assert_eq(jint(jp, "log_end"), before[p] + after, "partition %d end", p);
        cr_assert_eq(jint(jp, "lag"), after, "partition %d lag", p);
        if (want_pos < 0) {
            /* Never committed: Kafka has no position either (it lists the
             * partition with "-" or not at all); docpipe counts the lag
             * from the log's start. */
            cr_assert_eq(k[p].current, -1, "partition %d: Kafka has a position", p);
            continue;
        }
        cr_assert_eq(k[p].current, jint(jp, "position"),
                     "partition %d: Kafka CURRENT-OFFSET %lld, docpipe %lld", p,
                     k[p].current, jint(jp, "position"));
        cr_assert_eq(k[p].log_end, jint(jp, "log_end"),
                     "partition %d: Kafka LOG-END-OFFSET %lld, docpipe %lld", p,
                     k[p].log_end, jint(jp, "log_end"));
        cr_assert_eq(k[p].lag, jint(jp, "lag"), "partition %d: Kafka LAG %lld, "
                     "docpipe %lld", p, k[p].lag, jint(jp, "lag"));
    }
    json_decref(st);
}

Test(lag, test_lag_shows_owner_times_and_totals_in_json_and_tsv)
{
    process_then_produce_more("lagt");
    json_t *st = docpipe_lag_json();
    json_t *parts = json_object_get(st, "partitions");
    long long end = 0, lag = 0;
    for (int p = 0; p < NPARTS; p++) {
        json_t *jp = json_array_get(parts, (size_t)p);
        end += jint(jp, "log_end");
        lag += jint(jp, "lag");
        /* The stage claimed every partition, records or not. */
        cr_assert_str_eq(json_string_value(json_object_get(jp, "owner")), "lag-a");
        cr_assert(json_is_string(json_object_get(jp, "since")));
        cr_assert_eq(json_is_string(json_object_get(jp, "last_commit")),
                     before[p] > 0, "partition %d last_commit", p);
    }
    json_t *tot = json_object_get(st, "total");
    cr_assert_eq(jint(tot, "partitions"), NPARTS);
    cr_assert_eq(jint(tot, "log_end"), 30 + NPARTS * after);
    cr_assert_eq(jint(tot, "lag"), NPARTS * after);
    cr_assert_eq(jint(tot, "log_end"), end);
    cr_assert_eq(jint(tot, "lag"), lag);
    const char *latest = json_string_value(json_object_get(tot, "last_commit"));
    cr_assert(latest, "total has no last_commit");

    char out[300];
    snprintf(out, sizeof(out), "/tmp/docpipe-%slag.tsv", T.prefix);
    const char *args[] = {"lag", "--stage", "demo", NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, NULL, out), 0, "docpipe lag failed");
    char *tsv = tenv_slurp(out);
    char want[4096];
    int w = snprintf(want, sizeof(want),
                     "STAGE\tPARTITION\tLOG-END\tPOSITION\tLAG\tOWNER\tSINCE\tLAST-COMMIT\n");
    for (int p = 0; p < NPARTS; p++) {
        json_t *jp = json_array_get(parts, (size_t)p);
        char pos[32] = "-";
        if (before[p] > 0)
            snprintf(pos, sizeof(pos), "%ld", before[p]);
        const char *lc = json_string_value(json_object_get(jp, "last_commit"));
        w += snprintf(want + w, sizeof(want) - (size_t)w,
                      "demo\t%d\t%ld\t%s\t%ld\tlag-a\t%s\t%s\n", p, before[p] + after,
                      pos, after, json_string_value(json_object_get(jp, "since")),
                      lc ? lc : "-");
    }
    snprintf(want + w, sizeof(want) - (size_t)w, "demo\ttotal\t%ld\t-\t%ld\t-\t-\t%s\n",
             30 + NPARTS * after, NPARTS * after, latest);
    cr_assert_str_eq(tsv, want);
    free(tsv);
    json_decref(st);
}

Test(lag, test_lag_covers_every_document_stage_but_not_demo_by_default)
{
    tenv_setup(&T, "lagd");
    char out[300];
    snprintf(out, sizeof(out), "/tmp/docpipe-%slag-all.json", T.prefix);
    const char *args[] = {"lag", "--json", NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, NULL, out), 0, "docpipe lag failed");
    json_error_t je;
    json_t *doc = json_load_file(out, 0, &je);
    cr_assert(doc, "not JSON: %s", je.text);
    static const char *const want[] = {"intake", "parse", "validate", "chunk",
                                       "embed-plan", "embed", "gather", "finalize"};
    json_t *stages = json_object_get(doc, "stages");
    cr_assert_eq(json_array_size(stages), 8);
    for (size_t i = 0; i < 8; i++) {
        json_t *st = json_array_get(stages, i);
        cr_assert_str_eq(json_string_value(json_object_get(st, "stage")), want[i]);
        /* Nothing produced, nothing claimed: no lag, no owner. */
        cr_assert_eq(jint(json_object_get(st, "total"), "lag"), 0);
        json_t *p0 = json_array_get(json_object_get(st, "partitions"), 0);
        cr_assert(json_is_null(json_object_get(p0, "position")));
        cr_assert(json_is_null(json_object_get(p0, "owner")));
    }
    json_decref(doc);
}

Test(lag, test_lag_refuses_unknown_stages_and_arguments)
{
    tenv_setup(&T, "lagu");
    const char *a1[] = {"lag", "--stage", "nope", NULL};
    cr_assert_eq(tenv_docpipe(&T, a1, NULL), 2);
    const char *a2[] = {"lag", "demo", NULL};
    cr_assert_eq(tenv_docpipe(&T, a2, NULL), 2);
    const char *a3[] = {"lag", "--help", NULL};
    cr_assert_eq(tenv_docpipe(&T, a3, NULL), 0);
}

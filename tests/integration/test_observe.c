/*
 * `docpipe run --http`: /metrics read with a real parser of the Prometheus
 * text format (python3-prometheus-client) and checked against what went
 * through; /livez; /readyz while PostgreSQL is stopped and after.
 */
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support_env.h"

static tenv T;
static pid_t stage_pid;

static void teardown(void)
{
    if (stage_pid > 0)
        tenv_stop(stage_pid, SIGTERM, 30000);
    stage_pid = 0;
    tenv_teardown(&T);
}

TestSuite(observe, .fini = teardown, .timeout = 300);

typedef struct reply {
    long status;
    char *body;
    size_t len;
} reply;

static size_t collect(char *p, size_t sz, size_t n, void *ud)
{
    reply *r = ud;
    r->body = realloc(r->body, r->len + sz * n + 1);
    memcpy(r->body + r->len, p, sz * n);
    r->len += sz * n;
    r->body[r->len] = '\0';
    return sz * n;
}

/* GET url: status (0: no answer) and body (malloc'd, "" if none). */
static reply get(int port, const char *path)
{
    char url[256];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    reply r = {0, calloc(1, 1), 0};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_easy_cleanup(c);
    return r;
}

/* /metrics parsed by prometheus_client: one line per sample,
 * "name{k=v,...} value" with the labels sorted, into a file; the file's
 * text is returned (malloc'd). */
static char *scrape(int port)
{
    reply r = get(port, "/metrics");
    cr_assert_eq(r.status, 200, "/metrics answered %ld", r.status);
    char in[600], out[600], cmd[2000];
    snprintf(in, sizeof(in), "/tmp/docpipe-%smetrics.txt", T.prefix);
    snprintf(out, sizeof(out), "/tmp/docpipe-%smetrics.parsed", T.prefix);
    FILE *f = fopen(in, "w");
    fwrite(r.body, 1, r.len, f);
    fclose(f);
    free(r.body);
    /* Debian's python3, which has the package (another python3 may come
     * first on PATH). */
    snprintf(cmd, sizeof(cmd),
             "/usr/bin/python3 -c 'import sys\n"
             "from prometheus_client.parser import text_string_to_metric_families as p\n"
             "for f in p(open(sys.argv[1]).read()):\n"
             "    for s in f.samples:\n"
             "        l=\",\".join(\"%%s=%%s\" %% kv for kv in sorted(s.labels.items()))\n"
             "        print(\"%%s{%%s} %%r\" %% (s.name, l, s.value))\n"
             "' %s > %s", in, out);
    cr_assert_eq(system(cmd), 0, "the Prometheus parser rejected /metrics (%s)", in);
    return tenv_slurp(out);
}

/* The value of one sample ("name{labels}"), or -1e300 if absent. */
static double sample(const char *parsed, const char *key)
{
    char pat[512];
    snprintf(pat, sizeof(pat), "%s ", key);
    for (const char *p = parsed; (p = strstr(p, pat)); p++)
        if (p == parsed || p[-1] == '\n')
            return strtod(p + strlen(pat), NULL);
    return -1e300;
}

static double wait_sample(int port, const char *key, double want, int timeout_s)
{
    double v = -1e300;
    for (int i = 0; i < timeout_s * 5; i++) {
        char *m = scrape(port);
        v = sample(m, key);
        free(m);
        if (v == want)
            break;
        usleep(200 * 1000);
    }
    return v;
}


static void produce(long n, long start, const char *body)
{
    char ns[32], ss[32];
    snprintf(ns, sizeof(ns), "%ld", n);
    snprintf(ss, sizeof(ss), "%ld", start);
    const char *args[] = {"demo-produce", ns, "--start", ss, "--body", body, NULL};
    cr_assert_eq(tenv_docpipe(&T, args, NULL), 0);
}

static int postgres(const char *what)
{
    char cmd[1500];
    snprintf(cmd, sizeof(cmd), "%s/scripts/postgres.sh %s >/dev/null 2>&1", T.srcdir,
             what);
    return system(cmd);
}

Test(observe, test_metrics_count_what_went_through_and_readyz_follows_postgres)
{
    tenv_setup(&T, "observe");
    int port = tenv_free_port();
    char addr[64], log[600];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
    snprintf(log, sizeof(log), "/tmp/docpipe-%sdemo.log", T.prefix);
    const char *args[] = {"run", "--http", addr, "demo", NULL};
    const char *env[] = {"DOCPIPE_STATS_INTERVAL_MS=1000", NULL};
    stage_pid = tenv_spawn(&T, args, log, env);
    cr_assert_eq(tenv_http_wait_status(port, "/readyz", 200, 60), 200, "ready once joined");
    cr_assert_eq(tenv_http_wait_status(port, "/livez", 200, 10), 200);

    produce(300, 0, "payload");
    produce(3, 1000, "fail:permanent");
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.demo_results"
             " WHERE topic = '%sdemo.in'", T.prefix);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 300, 60000), 300);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters"
             " WHERE group_id = '%sdemo'", T.prefix);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 3, 60000), 3);

    cr_assert_eq(wait_sample(port, "docpipe_records_total{stage=demo}", 300, 20), 300);
    cr_assert_eq(wait_sample(port, "docpipe_lag_records{stage=demo}", 0, 20), 0,
                 "nothing left behind");
    /* librdkafka's statistics come once a second (DOCPIPE_STATS_INTERVAL_MS). */
    sleep(2);
    char *m = scrape(port);
    cr_assert_eq(sample(m, "docpipe_dead_letters_total{category=permanent,stage=demo}"), 3);
    cr_assert_eq(sample(m, "docpipe_dead_letters_total{category=poison,stage=demo}"), 0);
    cr_assert_eq(sample(m, "docpipe_assigned_partitions{stage=demo}"), 4);
    cr_assert_eq(sample(m, "docpipe_group_joined{stage=demo}"), 1);
    cr_assert_eq(sample(m, "docpipe_rebalances_total{stage=demo}"), 1);
    double batches = sample(m, "docpipe_batches_total{stage=demo}");
    cr_assert(batches >= 1, "batches committed: %g", batches);
    cr_assert_eq(sample(m, "docpipe_batch_duration_seconds_count{stage=demo}"), batches,
                 "every batch timed once");
    cr_assert_eq(sample(m, "docpipe_batch_duration_seconds_bucket{le=+Inf,stage=demo}"),
                 batches);
    cr_assert(sample(m, "docpipe_batch_duration_seconds_sum{stage=demo}") > 0);
    cr_assert(sample(m, "docpipe_process_resident_memory_bytes{}") > 1e6, "%s", m);
    cr_assert(sample(m, "docpipe_kafka_messages_received_total{client=consumer,stage=demo}")
              >= 303, "librdkafka's statistics reach the metrics:\n%s", m);
    cr_assert(sample(m, "docpipe_kafka_messages_sent_total{client=producer,stage=demo}")
              >= 300, "the outputs and dead letters sent");
    free(m);

    /* PostgreSQL stops: not ready (the reason given), still live; back:
     * ready again, and the stage carries on. */
    cr_assert_eq(postgres("stop"), 0, "scripts/postgres.sh stop");
    long st = tenv_http_wait_status(port, "/readyz", 503, 30);
    reply r = get(port, "/readyz");
    int said = strstr(r.body, "PostgreSQL") != NULL;
    free(r.body);
    long live = tenv_http_wait_status(port, "/livez", 200, 5);
    int restarted = postgres("start");
    cr_assert_eq(restarted, 0, "scripts/postgres.sh start");
    cr_assert_eq(st, 503, "unready while PostgreSQL is stopped");
    cr_assert(said, "and says why");
    cr_assert_eq(live, 200, "live all the same");
    /* The test's own connection went with the server. */
    PQfinish(T.db);
    T.db = PQconnectdb(T.dburl);
    cr_assert_eq(PQstatus(T.db), CONNECTION_OK);
    cr_assert_eq(tenv_http_wait_status(port, "/readyz", 200, 60), 200, "ready again");
    produce(10, 2000, "payload");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.demo_results"
             " WHERE topic = '%sdemo.in'", T.prefix);
    cr_assert_eq(tenv_wait_scalar(&T, sql, 310, 60000), 310, "the stage carries on");
    cr_assert_eq(wait_sample(port, "docpipe_records_total{stage=demo}", 310, 20), 310);
    cr_assert_eq(tenv_stop(stage_pid, SIGTERM, 30000), 0);
    stage_pid = 0;
}

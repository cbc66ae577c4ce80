/*
 * docpipe lag: how far each stage is behind its input topic.
 *
 *   docpipe lag [--stage S]... [--json]
 *
 * Per document stage (the stage table, stages/stages.c; demo only when
 * named) and per partition of its input topic: the log's end offset
 * (Kafka's high watermark), the committed position (docpipe.dp_offsets,
 * the only source of truth), the lag between them, the instance that
 * claimed the partition last and since when, and the time of its last
 * commit; then a total per stage.  A partition without a committed
 * position counts its lag from the log's start, since the stage will read
 * it from there (offset_reset=earliest, the default).
 *
 * The stages also commit their positions to their consumer groups in Kafka
 * after each batch, for monitoring only (docs/design.md, "Offsets in
 * Kafka, for monitoring only"), so Kafka's tools show the same lag; this
 * command reads PostgreSQL, which is right even just after a replay.
 *
 * Everything is read before anything is printed: on an error nothing goes
 * to stdout, the error to stderr, exit 1.  TSV with a header, or one JSON
 * document with --json.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <librdkafka/rdkafka.h>

#include "cli.h"
#include "config.h"
#include "pg.h"
#include "stages.h"

#define EXIT_USAGE 2
#define LAG_MAX_STAGES 32
#define LAG_TIMEOUT_MS 10000
#define LAG_RETRIES 20     /* transient errors: asked again for 4 s */
#define LAG_RETRY_MS 200

static void usage_lag(FILE *out)
{
    fprintf(out,
        "usage: docpipe lag [--stage S]... [--json]\n\n"
        "Per stage and partition of its input topic: the log's end offset,\n"
        "the committed position (PostgreSQL), the lag, the instance that\n"
        "claimed the partition last, since when, and its last commit; then a\n"
        "total line per stage.  Every document stage by default; --stage\n"
        "names some (demo only this way).  A partition with no position yet\n"
        "counts its lag from the log's start.  TSV with a header, or a JSON\n"
        "document with --json.\n");
}

/* The partitions of topic, sorted; -1 and err on failure. */
static int topic_partitions(rd_kafka_t *rk, const char *topic, int32_t **out,
                            char *err, size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t ke;
    /* A topic just made is unknown to the broker's metadata for a moment:
     * a missing topic is reported after a few seconds. */
    for (int tries = 0;; tries++) {
        ke = rd_kafka_metadata(rk, 0, rkt, &md, LAG_TIMEOUT_MS);
        if (!ke && md && md->topic_cnt == 1)
            ke = md->topics[0].err;
        if (tries == LAG_RETRIES || (ke != RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART &&
                                     ke != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE))
            break;
        if (md)
            rd_kafka_metadata_destroy(md);
        md = NULL;
        usleep(LAG_RETRY_MS * 1000);
    }
    rd_kafka_topic_destroy(rkt);
    if (ke || !md || md->topic_cnt != 1) {
        if (!ke)
            ke = RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC;
        snprintf(err, errlen, "metadata of %s: %s%s", topic, rd_kafka_err2str(ke),
                 ke == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ||
                 ke == RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC ? " (docpipe topics makes it)" : "");
        if (md)
            rd_kafka_metadata_destroy(md);
        return -1;
    }
    int n = md->topics[0].partition_cnt;
    int32_t *p = calloc((size_t)(n ? n : 1), sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        int32_t id = md->topics[0].partitions[i].id;
        int k = i;
        for (; k > 0 && p[k - 1] > id; k--) /* insertion: a handful */
            p[k] = p[k - 1];
        p[k] = id;
    }
    rd_kafka_metadata_destroy(md);
    *out = p;
    return n;
}

/* The log's bounds; a partition between leaders (a new topic, a broker
 * restarting) is asked again for a few seconds. */
static rd_kafka_resp_err_t watermarks(rd_kafka_t *rk, const char *topic,
                                      int32_t partition, int64_t *lo, int64_t *hi)
{
    rd_kafka_resp_err_t ke;
    for (int tries = 0;; tries++) {
        ke = rd_kafka_query_watermark_offsets(rk, topic, partition, lo, hi,
                                              LAG_TIMEOUT_MS);
        if (tries == LAG_RETRIES || (ke != RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION &&
                            ke != RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE))
            return ke;
        usleep(LAG_RETRY_MS * 1000);
    }
}

/* A nullable text column as a JSON string or null. */
static json_t *col(PGresult *res, int row, int c)
{
    return PQgetisnull(res, row, c) ? json_null()
                                    : json_string(PQgetvalue(res, row, c));
}

/* One stage's object: group, topic, partitions[], total.  NULL and err on
 * failure. */
static json_t *stage_lag(rd_kafka_t *rk, PGconn *db, const dp_config *cfg,
                         const char *name, char *err, size_t errlen)
{
    dp_stage stage;
    memset(&stage, 0, sizeof(stage));
    if (dp_stages_open(cfg, name, &stage, err, errlen))
        return NULL;
    char group[512], topic[512];
    snprintf(group, sizeof(group), "%s%s", cfg->topic_prefix, stage.name);
    snprintf(topic, sizeof(topic), "%s", stage.input_topic);
    dp_stages_close(name, &stage);

    int32_t *parts = NULL;
    int n = topic_partitions(rk, topic, &parts, err, errlen);
    if (n < 0)
        return NULL;
    const char *p2[2] = {group, topic};
    PGresult *res = dp_pg_execp(db,
        "SELECT partition, next_offset, owner,"
        " to_char(claimed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"
        " CASE WHEN next_offset IS NOT NULL THEN"
        "   to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
        " END"
        " FROM docpipe.dp_offsets WHERE group_id = $1 AND topic = $2",
        2, NULL, p2, NULL, NULL, 0);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read positions", err, errlen)) {
        free(parts);
        return NULL;
    }
    json_t *arr = json_array();
    int64_t sum_end = 0, sum_lag = 0;
    const char *latest = NULL; /* ISO times in UTC order as text */
    for (int i = 0; i < n; i++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t ke = watermarks(rk, topic, parts[i], &lo, &hi);
        if (ke) {
            snprintf(err, errlen, "end of %s/%d: %s", topic, parts[i],
                     rd_kafka_err2str(ke));
            json_decref(arr);
            arr = NULL;
            break;
        }
        int row = -1;
        for (int r = 0; r < PQntuples(res) && row < 0; r++)
            if (atoi(PQgetvalue(res, r, 0)) == parts[i])
                row = r;
        int has_pos = row >= 0 && !PQgetisnull(res, row, 1);
        int64_t pos = has_pos ? strtoll(PQgetvalue(res, row, 1), NULL, 10) : -1;
        /* As Kafka's tools count it: end minus position (never below 0,
         * should the topic have been made again under the stage). */
        int64_t lag = hi - (has_pos ? pos : lo);
        if (lag < 0)
            lag = 0;
        sum_end += hi;
        sum_lag += lag;
        if (row >= 0 && !PQgetisnull(res, row, 4) &&
            (!latest || strcmp(PQgetvalue(res, row, 4), latest) > 0))
            latest = PQgetvalue(res, row, 4);
        json_array_append_new(arr, json_pack("{s:i,s:I,s:I,s:o,s:I,s:o,s:o,s:o}",
            "partition", (int)parts[i], "log_start", (json_int_t)lo,
            "log_end", (json_int_t)hi,
            "position", has_pos ? json_integer(pos) : json_null(),
            "lag", (json_int_t)lag,
            "owner", row >= 0 ? col(res, row, 2) : json_null(),
            "since", row >= 0 ? col(res, row, 3) : json_null(),
            "last_commit", row >= 0 ? col(res, row, 4) : json_null()));
    }
    json_t *out = NULL;
    if (arr)
        out = json_pack("{s:s,s:s,s:s,s:o,s:{s:i,s:I,s:I,s:o}}", "stage", name,
            "group", group, "topic", topic, "partitions", arr, "total",
            "partitions", n, "log_end", (json_int_t)sum_end, "lag",
            (json_int_t)sum_lag, "last_commit",
            latest ? json_string(latest) : json_null());
    PQclear(res);
    free(parts);
    return out;
}

static const char *or_dash(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "-";
}

static void print_tsv(json_t *doc)
{
    printf("STAGE\tPARTITION\tLOG-END\tPOSITION\tLAG\tOWNER\tSINCE\tLAST-COMMIT\n");
    size_t i, k;
    json_t *st, *p;
    json_array_foreach(json_object_get(doc, "stages"), i, st) {
        const char *name = json_string_value(json_object_get(st, "stage"));
        json_array_foreach(json_object_get(st, "partitions"), k, p) {
            char pos[32] = "-";
            json_t *jp = json_object_get(p, "position");
            if (json_is_integer(jp))
                snprintf(pos, sizeof(pos), "%" JSON_INTEGER_FORMAT,
                         json_integer_value(jp));
            printf("%s\t%" JSON_INTEGER_FORMAT "\t%" JSON_INTEGER_FORMAT
                   "\t%s\t%" JSON_INTEGER_FORMAT "\t%s\t%s\t%s\n", name,
                   json_integer_value(json_object_get(p, "partition")),
                   json_integer_value(json_object_get(p, "log_end")), pos,
                   json_integer_value(json_object_get(p, "lag")),
                   or_dash(p, "owner"), or_dash(p, "since"),
                   or_dash(p, "last_commit"));
        }
        json_t *t = json_object_get(st, "total");
        printf("%s\ttotal\t%" JSON_INTEGER_FORMAT "\t-\t%" JSON_INTEGER_FORMAT
               "\t-\t-\t%s\n", name,
               json_integer_value(json_object_get(t, "log_end")),
               json_integer_value(json_object_get(t, "lag")),
               or_dash(t, "last_commit"));
    }
}

rd_kafka_t *dp_lag_client(const dp_config *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_t *rk = NULL;
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->brokers, err,
                          errlen) == RD_KAFKA_CONF_OK &&
        dp_config_apply_kafka(cfg, conf, 0, err, errlen) == DP_OK)
        rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
    if (!rk)
        rd_kafka_conf_destroy(conf);
    return rk;
}

json_t *dp_lag_read(rd_kafka_t *rk, PGconn *db, const dp_config *cfg,
                    const char *const *names, int n, char *err, size_t errlen)
{
    json_t *stages = json_array();
    for (int i = 0; i < n; i++) {
        json_t *st = stage_lag(rk, db, cfg, names[i], err, errlen);
        if (!st) {
            size_t len = strlen(err);
            snprintf(err + len, errlen - len, " (stage %s)", names[i]);
            json_decref(stages);
            return NULL;
        }
        json_array_append_new(stages, st);
    }
    return json_pack("{s:o}", "stages", stages);
}

int dp_cmd_lag(const dp_config *cfg, int argc, char **argv)
{
    const char *names[LAG_MAX_STAGES];
    int nnames = 0, as_json = 0;
    static const struct option opts[] = {
        {"stage", required_argument, NULL, 's'}, {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    /* argv[0] is the first argument after "lag": getopt starts at 1. */
    char **av = argv - 1;
    int ac = argc + 1;
    optind = 1;
    int c;
    while ((c = getopt_long(ac, av, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's':
            if (!dp_stages_find(optarg)) {
                fprintf(stderr, "docpipe lag: unknown stage '%s' (see docpipe help)\n",
                        optarg);
                return EXIT_USAGE;
            }
            if (nnames == LAG_MAX_STAGES) {
                fprintf(stderr, "docpipe lag: too many --stage\n");
                return EXIT_USAGE;
            }
            names[nnames++] = optarg;
            break;
        case 'j': as_json = 1; break;
        case 'h': usage_lag(stdout); return 0;
        default: usage_lag(stderr); return EXIT_USAGE;
        }
    }
    if (optind != ac) {
        fprintf(stderr, "docpipe lag: unexpected argument '%s'\n", av[optind]);
        usage_lag(stderr);
        return EXIT_USAGE;
    }
    if (nnames == 0)
        for (const dp_stage_def *d = dp_stage_defs; d->name; d++)
            if (strcmp(d->name, "demo") != 0 && nnames < LAG_MAX_STAGES)
                names[nnames++] = d->name;

    char err[1024];
    rd_kafka_t *rk = dp_lag_client(cfg, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "docpipe lag: Kafka: %s\n", err);
        return 1;
    }
    int rc = 1;
    PGconn *db = NULL;
    json_t *doc = NULL;
    if (dp_pg_connect(cfg, "docpipe-lag", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe lag: %s\n", err);
        goto out;
    }
    doc = dp_lag_read(rk, db, cfg, names, nnames, err, sizeof(err));
    if (!doc) {
        fprintf(stderr, "docpipe lag: %s\n", err);
        goto out;
    }
    if (as_json) {
        json_dumpf(doc, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
    } else {
        print_tsv(doc);
    }
    rc = fflush(stdout) == 0 ? 0 : 1;
out:
    json_decref(doc);
    if (db)
        dp_pg_finish(db);
    rd_kafka_destroy(rk);
    return rc;
}

/*
 * docpipe replay: move a stage's position in its input topic, in the
 * manner of Kafka's consumer-group offset reset, so that records are really
 * processed again (docs/design.md, "Replaying a stage").
 *
 *   docpipe replay <stage> (--to-earliest | --to-latest | --to-datetime T |
 *                           --to-offset N | --shift-by N)
 *                          [--partition P]... [--dry-run | --execute]
 *
 * A dry run (the default) prints, per partition, the current position, the
 * new one and the log's bounds.  --execute writes them in one transaction:
 * each partition's offset row gets the new position and a new epoch (so
 * the instance that owns it is fenced: it notices at its next commit, or
 * within seconds when idle, and claims the partition again at the new
 * position); replay_until remembers where the stage had been, so records
 * below it reach the stage marked as replays; the stage's dedup marks for
 * those partitions go (they would hide the records); dp_replays keeps the
 * history.  Running instances need not stop.
 *
 * What a replayed record does to a document that went past the stage is
 * the document stages' business (docstage.c): it starts over at the stage
 * under a new generation, and older work still in flight is discarded.
 * embed and gather read a document as many records (its batches) and
 * intake deduplicates uploads, so those three are not replayed: replay
 * embed-plan or parse instead.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <librdkafka/rdkafka.h>

#include "config.h"
#include "fault.h"
#include "pg.h"
#include "stages.h"

#define EXIT_USAGE 2

static void usage_replay(FILE *out)
{
    fprintf(out,
        "usage: docpipe replay <stage> (--to-earliest | --to-latest |\n"
        "         --to-datetime T | --to-offset N | --shift-by N)\n"
        "         [--partition P]... [--dry-run | --execute]\n\n"
        "Moves the stage's position in its input topic so that the records\n"
        "from there on are processed again (a document already past the stage\n"
        "starts over there, under a new generation).  Prints, per partition,\n"
        "the current and the new position; changes nothing unless --execute.\n"
        "T is an ISO-8601 time (2026-12-06T10:00:00Z); --shift-by N moves by N\n"
        "records (negative: back).  Positions are kept within the log.\n"
        "Not for embed, gather (replay embed-plan) or intake (replay parse).\n");
}

typedef struct part_pos {
    int32_t partition;
    int64_t current;  /* -1: never committed */
    int64_t lo, hi;   /* the log's bounds */
    int64_t target;
} part_pos;

static rd_kafka_t *kafka_client(const dp_config *cfg, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "bootstrap.servers", cfg->brokers, err, errlen) ||
        dp_config_apply_kafka(cfg, conf, 0, err, errlen)) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, errlen);
    return rk;
}

/* Partitions of topic, in order. */
static int topic_partitions(rd_kafka_t *rk, const char *topic, int32_t **out,
                            char *err, size_t errlen)
{
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t ke = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
    rd_kafka_topic_destroy(rkt);
    if (ke || !md || md->topic_cnt != 1 || md->topics[0].err) {
        snprintf(err, errlen, "metadata of %s: %s", topic,
                 rd_kafka_err2str(ke ? ke : md && md->topic_cnt ? md->topics[0].err
                                                               : RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC));
        if (md)
            rd_kafka_metadata_destroy(md);
        return -1;
    }
    int n = md->topics[0].partition_cnt;
    *out = calloc((size_t)(n ? n : 1), sizeof(int32_t));
    for (int i = 0; i < n; i++)
        (*out)[i] = md->topics[0].partitions[i].id;
    rd_kafka_metadata_destroy(md);
    for (int i = 1; i < n; i++) /* insertion sort: a handful of partitions */
        for (int k = i; k > 0 && (*out)[k - 1] > (*out)[k]; k--) {
            int32_t t = (*out)[k];
            (*out)[k] = (*out)[k - 1];
            (*out)[k - 1] = t;
        }
    return n;
}

static int64_t clamp(int64_t v, int64_t lo, int64_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

int dp_cmd_replay(const dp_config *cfg, int argc, char **argv);
int dp_cmd_replay(const dp_config *cfg, int argc, char **argv)
{
    enum { TO_NONE, TO_EARLIEST, TO_LATEST, TO_DATETIME, TO_OFFSET, SHIFT_BY } mode = TO_NONE;
    int modes = 0, execute = 0, dry = 0;
    const char *when = NULL;
    int64_t number = 0;
    int32_t only[256];
    int nonly = 0;
    static const struct option opts[] = {
        {"to-earliest", no_argument, NULL, 'e'}, {"to-latest", no_argument, NULL, 'l'},
        {"to-datetime", required_argument, NULL, 't'},
        {"to-offset", required_argument, NULL, 'o'},
        {"shift-by", required_argument, NULL, 's'},
        {"partition", required_argument, NULL, 'p'},
        {"dry-run", no_argument, NULL, 'n'}, {"execute", no_argument, NULL, 'x'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    /* argv[0] is the first argument after "replay": getopt starts at 1. */
    char **av = argv - 1;
    int ac = argc + 1;
    optind = 1;
    int c;
    char *end;
    while ((c = getopt_long(ac, av, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'e': mode = TO_EARLIEST; modes++; break;
        case 'l': mode = TO_LATEST; modes++; break;
        case 't': mode = TO_DATETIME; modes++; when = optarg; break;
        case 'o':
        case 's':
            number = strtoll(optarg, &end, 10);
            if (*end || !*optarg || (c == 'o' && number < 0)) {
                fprintf(stderr, "docpipe replay: '%s' is not %s\n", optarg,
                        c == 'o' ? "an offset" : "a number of records");
                return EXIT_USAGE;
            }
            mode = c == 'o' ? TO_OFFSET : SHIFT_BY;
            modes++;
            break;
        case 'p': {
            long p = strtol(optarg, &end, 10);
            if (*end || !*optarg || p < 0 || nonly == 256) {
                fprintf(stderr, "docpipe replay: '%s' is not a partition\n", optarg);
                return EXIT_USAGE;
            }
            only[nonly++] = (int32_t)p;
            break;
        }
        case 'n': dry = 1; break;
        case 'x': execute = 1; break;
        case 'h': usage_replay(stdout); return 0;
        default: usage_replay(stderr); return EXIT_USAGE;
        }
    }
    if (optind != ac - 1 || modes != 1 || (dry && execute)) {
        fprintf(stderr, "docpipe replay: name one stage and exactly one of "
                        "--to-earliest, --to-latest, --to-datetime, --to-offset, "
                        "--shift-by%s\n", dry && execute ? " (and not both --dry-run"
                                                           " and --execute)" : "");
        usage_replay(stderr);
        return EXIT_USAGE;
    }
    const char *name = av[optind];
    if (!dp_stages_find(name)) {
        fprintf(stderr, "docpipe replay: unknown stage '%s' (see docpipe help)\n", name);
        return EXIT_USAGE;
    }
    if (!strcmp(name, "embed") || !strcmp(name, "gather") || !strcmp(name, "intake")) {
        fprintf(stderr, "docpipe replay: %s is not replayed on its own: %s\n", name,
                strcmp(name, "intake") == 0
                    ? "uploads are deduplicated by document; replay parse to start "
                      "documents over"
                    : "a document is many records there (its embedding batches); "
                      "replay embed-plan to embed documents again");
        return EXIT_USAGE;
    }

    char err[1024];
    dp_stage stage;
    memset(&stage, 0, sizeof(stage));
    if (dp_stages_open(cfg, name, &stage, err, sizeof(err))) {
        fprintf(stderr, "docpipe replay: %s\n", err);
        return 1;
    }
    char group[512], topic[512];
    snprintf(group, sizeof(group), "%s%s", cfg->topic_prefix, stage.name);
    snprintf(topic, sizeof(topic), "%s", stage.input_topic);
    dp_stages_close(name, &stage);

    int rc = 1;
    PGconn *db = NULL;
    PGresult *res = NULL;
    int32_t *parts = NULL;
    part_pos *pos = NULL;
    rd_kafka_t *rk = kafka_client(cfg, err, sizeof(err));
    if (!rk) {
        fprintf(stderr, "docpipe replay: Kafka: %s\n", err);
        return 1;
    }
    if (dp_pg_connect(cfg, "docpipe-replay", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe replay: %s\n", err);
        goto out;
    }
    int n = topic_partitions(rk, topic, &parts, err, sizeof(err));
    if (n < 0) {
        fprintf(stderr, "docpipe replay: %s\n", err);
        goto out;
    }
    for (int k = 0; k < nonly; k++) {
        int found = 0;
        for (int i = 0; i < n; i++)
            found |= parts[i] == only[k];
        if (!found) {
            fprintf(stderr, "docpipe replay: %s has no partition %d\n", topic, only[k]);
            rc = EXIT_USAGE;
            goto out;
        }
    }
    int64_t when_ms = -1;
    if (mode == TO_DATETIME) {
        const char *p1[1] = {when};
        res = dp_pg_execp(db, "SELECT (extract(epoch FROM $1::timestamptz) * 1000)::bigint",
                          1, NULL, p1, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            fprintf(stderr, "docpipe replay: '%s' is not a time: %s", when,
                    PQresultErrorMessage(res));
            rc = EXIT_USAGE;
            goto out;
        }
        when_ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        res = NULL;
    }
    pos = calloc((size_t)(n ? n : 1), sizeof(*pos));
    int np = 0;
    for (int i = 0; i < n; i++) {
        int want = nonly == 0;
        for (int k = 0; k < nonly; k++)
            want |= only[k] == parts[i];
        if (!want)
            continue;
        part_pos *pp = &pos[np++];
        pp->partition = parts[i];
        pp->current = -1;
        rd_kafka_resp_err_t ke = rd_kafka_query_watermark_offsets(
            rk, topic, parts[i], &pp->lo, &pp->hi, 10000);
        if (ke) {
            fprintf(stderr, "docpipe replay: bounds of %s/%d: %s\n", topic, parts[i],
                    rd_kafka_err2str(ke));
            goto out;
        }
    }
    /* Current positions, from the offset store. */
    const char *p2[2] = {group, topic};
    res = dp_pg_execp(db, "SELECT partition, next_offset FROM docpipe.dp_offsets"
                          " WHERE group_id = $1 AND topic = $2 AND next_offset IS NOT NULL",
                      2, NULL, p2, NULL, NULL, 0);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read positions", err, sizeof(err))) {
        res = NULL;
        fprintf(stderr, "docpipe replay: %s\n", err);
        goto out;
    }
    for (int r = 0; r < PQntuples(res); r++)
        for (int i = 0; i < np; i++)
            if (pos[i].partition == atoi(PQgetvalue(res, r, 0)))
                pos[i].current = strtoll(PQgetvalue(res, r, 1), NULL, 10);
    PQclear(res);
    res = NULL;
    if (mode == TO_DATETIME) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(np);
        for (int i = 0; i < np; i++)
            rd_kafka_topic_partition_list_add(l, topic, pos[i].partition)->offset = when_ms;
        rd_kafka_resp_err_t ke = rd_kafka_offsets_for_times(rk, l, 10000);
        for (int i = 0; !ke && i < np; i++) {
            rd_kafka_topic_partition_t *e = &l->elems[i];
            if (e->err)
                ke = e->err;
            /* -1: no record at or after T: the end of the log. */
            pos[i].target = e->offset < 0 ? pos[i].hi : e->offset;
        }
        rd_kafka_topic_partition_list_destroy(l);
        if (ke) {
            fprintf(stderr, "docpipe replay: offsets at %s: %s\n", when,
                    rd_kafka_err2str(ke));
            goto out;
        }
    }
    for (int i = 0; i < np; i++) {
        part_pos *pp = &pos[i];
        int64_t cur = pp->current >= 0 ? pp->current : pp->lo;
        switch (mode) {
        case TO_EARLIEST: pp->target = pp->lo; break;
        case TO_LATEST: pp->target = pp->hi; break;
        case TO_OFFSET: pp->target = number; break;
        case SHIFT_BY: pp->target = cur + number; break;
        default: break;
        }
        pp->target = clamp(pp->target, pp->lo, pp->hi);
    }

    printf("STAGE\tPARTITION\tCURRENT\tNEW\tLOG-START\tLOG-END\n");
    for (int i = 0; i < np; i++) {
        char cur[32] = "-";
        if (pos[i].current >= 0)
            snprintf(cur, sizeof(cur), "%" PRId64, pos[i].current);
        printf("%s\t%d\t%s\t%" PRId64 "\t%" PRId64 "\t%" PRId64 "\n", name,
               pos[i].partition, cur, pos[i].target, pos[i].lo, pos[i].hi);
    }
    fflush(stdout);
    if (!execute) {
        fprintf(stderr, "docpipe replay: dry run, nothing changed (add --execute)\n");
        rc = 0;
        goto out;
    }

    /* One transaction: every partition moves, or none. */
    if (dp_pg_exec(db, "BEGIN", err, sizeof(err)))
        goto fail;
    for (int i = 0; i < np; i++) {
        char ps[16], ts[32];
        snprintf(ps, sizeof(ps), "%d", pos[i].partition);
        snprintf(ts, sizeof(ts), "%" PRId64, pos[i].target);
        const char *p4[4] = {group, topic, ps, ts};
        if (dp_pg_command(db,
                "WITH old AS (SELECT next_offset FROM docpipe.dp_offsets"
                "   WHERE group_id = $1 AND topic = $2 AND partition = $3::int"
                "   FOR UPDATE),"
                " h AS (INSERT INTO docpipe.dp_replays (group_id, topic, partition,"
                "   from_offset, to_offset) SELECT $1, $2, $3::int,"
                "   (SELECT next_offset FROM old), $4::bigint)"
                " INSERT INTO docpipe.dp_offsets AS o (group_id, topic, partition,"
                "   next_offset, epoch, owner) VALUES ($1, $2, $3::int, $4::bigint, 1,"
                "   'replay')"
                " ON CONFLICT (group_id, topic, partition) DO UPDATE SET"
                "   next_offset = EXCLUDED.next_offset, epoch = o.epoch + 1,"
                "   owner = 'replay', claimed_at = now(), updated_at = now(),"
                "   replay_until = CASE WHEN o.next_offset > EXCLUDED.next_offset"
                "     THEN greatest(o.next_offset, o.replay_until) ELSE o.replay_until END",
                4, p4, "move the position", err, sizeof(err)) ||
            dp_pg_command(db,
                "DELETE FROM docpipe.dp_dedup WHERE group_id = $1 AND topic = $2"
                " AND partition = $3::int", 3, p4, "drop the dedup marks", err,
                sizeof(err)))
            goto fail;
    }
    if (DP_FAULT("replay", "before-commit")) {
        snprintf(err, sizeof(err), "fault point before-commit");
        goto fail;
    }
    if (dp_pg_exec(db, "COMMIT", err, sizeof(err)))
        goto fail;
    fprintf(stderr, "docpipe replay: %d partition(s) of %s moved; the instances "
                    "running it take them again at the new position\n", np, group);
    rc = 0;
    goto out;
fail:
    fprintf(stderr, "docpipe replay: %s (nothing changed)\n", err);
    PQclear(PQexec(db, "ROLLBACK"));
out:
    if (res)
        PQclear(res);
    free(parts);
    free(pos);
    if (db)
        PQfinish(db);
    rd_kafka_destroy(rk);
    return rc;
}

/*
 * gc: `docpipe gc [--older-than DURATION] [--dry-run] [--json]`, removing
 * what nothing needs any more (docs/operations.md, "Retention").
 *
 *  - temporary files: `<storage_dir>/<kind>/<sha>.tmp.<pid>.<n>` older than
 *    gc_file_grace.  A stage writes a file under such a name and renames it
 *    once durable (stages/docdb.c); one still there after the grace was
 *    left by a process that died.
 *  - unreferenced files: a stored file no document or job refers to
 *    (raw_path, parsed_path), older than gc_file_grace: the parsed text of
 *    a document parsed again differently, an upload never taken in.  The
 *    grace covers an upload written by submit whose intake has not
 *    committed yet; a file asked for again is touched by dp_storage_write,
 *    so its age is its last use.
 *  - events (upload_pipeline.events) older than gc_event_retention.
 *  - dead letters of the topic prefix resolved (redriven) more than
 *    gc_dlq_retention ago, with their redrive ledger; unresolved ones stay
 *    (`docpipe dlq purge --include-unresolved` removes those by hand).
 *  - rows of docpipe.dp_attempts no consumer can need: older than
 *    gc_attempt_retention and behind a satisfied mark (schemas/sql/0016;
 *    the argument is in mark_attempts below).
 *
 * --older-than overrides the four ages for this run.  --dry-run counts
 * and removes nothing (and leaves no mark).  Output: one line per kind,
 * `kind<TAB>count`, or one JSON object.  Exit 0, 1 when a part failed (the
 * others are still done), 2 usage.
 */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cli.h"
#include "dlq.h"
#include "pg.h"
#include "stages.h"

#define GC_MAX_STAGES 32

static void usage_gc(FILE *out)
{
    fprintf(out,
        "usage: docpipe gc [--older-than DURATION] [--dry-run] [--json]\n"
        "  removes what nothing needs any more and prints how much, per kind:\n"
        "    temp_files         temporary files of writes that never finished\n"
        "    unreferenced_files stored files no document or job refers to\n"
        "    events             document events older than gc_event_retention\n"
        "    dead_letters       dead letters resolved before gc_dlq_retention\n"
        "    attempts           batch attempts every stage has read past\n"
        "                       (and older than gc_attempt_retention)\n"
        "  files count only past gc_file_grace\n"
        "  --older-than D  one age for all four this time (\"30 days\", \"12h\")\n"
        "  --dry-run       count, remove nothing\n"
        "  --json          {temp_files, unreferenced_files, events, dead_letters,\n"
        "                   attempts, dry_run}\n");
}

typedef struct gc_run {
    const dp_config *cfg;
    PGconn *db;
    int dry;
    long long temp_files, unref_files, events, dead_letters, attempts;
    int failed;
} gc_run;

/* The instant `age` ago as timestamptz text; 0, or 1/2 (told on stderr). */
static int cutoff(gc_run *g, const char *setting, const char *age, char *out,
                  size_t outlen)
{
    return dp_dlq_instant(g->db, "gc", setting, age, 1, out, outlen) ? 1 : 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* ---- files ---------------------------------------------------------------- */

/* Every storage:// path a row refers to, sorted; NULL on failure. */
static char **referenced_paths(gc_run *g, size_t *n)
{
    PGresult *res = PQexec(g->db,
        "SELECT raw_path FROM upload_pipeline.documents"
        " UNION SELECT parsed_path FROM upload_pipeline.documents WHERE parsed_path IS NOT NULL"
        " UNION SELECT raw_path FROM upload_pipeline.upload_jobs"
        " UNION SELECT parsed_path FROM upload_pipeline.upload_jobs WHERE parsed_path IS NOT NULL");
    char err[1024];
    if (dp_pg_check(g->db, res, PGRES_TUPLES_OK, "read stored paths", err, sizeof(err))) {
        fprintf(stderr, "docpipe gc: %s\n", err);
        return NULL;
    }
    *n = (size_t)PQntuples(res);
    char **paths = malloc((*n + 1) * sizeof(char *));
    for (size_t i = 0; i < *n; i++)
        paths[i] = strdup(PQgetvalue(res, (int)i, 0));
    PQclear(res);
    qsort(paths, *n, sizeof(char *), cmp_str);
    return paths;
}

/* One kind's folder: temporary files past the grace go, and final ones no
 * row names. */
static void sweep_kind(gc_run *g, const char *kind, time_t before, char **refs,
                       size_t nrefs)
{
    char folder[4096];
    snprintf(folder, sizeof(folder), "%s/%s", g->cfg->storage_dir, kind);
    DIR *d = opendir(folder);
    if (!d) {
        if (errno != ENOENT) {
            fprintf(stderr, "docpipe gc: read %s: %s\n", folder, strerror(errno));
            g->failed = 1;
        }
        return;
    }
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char file[4400], ref[512];
        snprintf(file, sizeof(file), "%s/%s", folder, de->d_name);
        struct stat st;
        if (lstat(file, &st) != 0 || !S_ISREG(st.st_mode) || st.st_mtime >= before)
            continue;
        int temp = strstr(de->d_name, ".tmp.") != NULL;
        if (!temp) {
            snprintf(ref, sizeof(ref), "storage://%s/%s", kind, de->d_name);
            const char *key = ref;
            if (bsearch(&key, refs, nrefs, sizeof(char *), cmp_str))
                continue;
            /* Asked for again since it was read (dp_storage_write touches
             * a file it finds): young once more. */
            if (stat(file, &st) != 0 || st.st_mtime >= before)
                continue;
        }
        if (!g->dry && unlink(file) != 0) {
            if (errno != ENOENT) {
                fprintf(stderr, "docpipe gc: remove %s: %s\n", file, strerror(errno));
                g->failed = 1;
            }
            continue;
        }
        if (temp)
            g->temp_files++;
        else
            g->unref_files++;
    }
    closedir(d);
}

static void gc_files(gc_run *g, const char *age)
{
    /* The grace's instant as the database reads it (a duration back from
     * now, or a timestamp), in the file system's seconds. */
    char at[128];
    if (cutoff(g, "gc_file_grace", age, at, sizeof(at))) {
        g->failed = 1;
        return;
    }
    const char *p[1] = {at};
    PGresult *res = PQexecParams(g->db, "SELECT floor(extract(epoch FROM"
                                 " $1::timestamptz))::bigint", 1, NULL, p, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(g->db, res, PGRES_TUPLES_OK, "read gc_file_grace", err, sizeof(err))) {
        fprintf(stderr, "docpipe gc: %s\n", err);
        g->failed = 1;
        return;
    }
    time_t before = (time_t)strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    size_t nrefs = 0;
    char **refs = referenced_paths(g, &nrefs);
    if (!refs) {
        g->failed = 1;
        return;
    }
    sweep_kind(g, "raw", before, refs, nrefs);
    sweep_kind(g, "parsed", before, refs, nrefs);
    for (size_t i = 0; i < nrefs; i++)
        free(refs[i]);
    free(refs);
}

/* ---- rows ----------------------------------------------------------------- */

/* Runs a counting statement (the count in column 0); adds it to *count. */
static void count_rows(gc_run *g, const char *what, const char *sql, int n,
                       const char *const *params, long long *count)
{
    PGresult *res = PQexecParams(g->db, sql, n, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(g->db, res, PGRES_TUPLES_OK, what, err, sizeof(err))) {
        fprintf(stderr, "docpipe gc: %s\n", err);
        g->failed = 1;
        return;
    }
    *count += strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
}

static void gc_events(gc_run *g, const char *age)
{
    char before[128];
    if (cutoff(g, "gc_event_retention", age, before, sizeof(before))) {
        g->failed = 1;
        return;
    }
    const char *p[1] = {before};
    count_rows(g, "remove old events", g->dry
        ? "SELECT count(*) FROM upload_pipeline.events WHERE ts < $1::timestamptz"
        : "WITH gone AS (DELETE FROM upload_pipeline.events WHERE ts < $1::timestamptz"
          " RETURNING 1) SELECT count(*) FROM gone", 1, p, &g->events);
}

static void gc_dead_letters(gc_run *g, const char *age)
{
    char before[128];
    if (cutoff(g, "gc_dlq_retention", age, before, sizeof(before))) {
        g->failed = 1;
        return;
    }
    /* The lock of redrive and purge: a redrive settling a dead letter now
     * is not raced. */
    if (!g->dry && dp_dlq_lock(g->db, "gc", g->cfg->topic_prefix)) {
        g->failed = 1;
        return;
    }
    const char *p[2] = {g->cfg->topic_prefix, before};
    count_rows(g, "remove resolved dead letters", g->dry
        ? "SELECT count(*) FROM docpipe.dp_dead_letters d"
          " WHERE starts_with(d.topic, $1) AND d.resolved_at < $2::timestamptz"
        : "WITH gone AS (DELETE FROM docpipe.dp_dead_letters d"
          " WHERE starts_with(d.topic, $1) AND d.resolved_at < $2::timestamptz"
          " RETURNING 1) SELECT count(*) FROM gone", 2, p, &g->dead_letters);
    if (!g->dry) {
        PGresult *res = PQexecParams(g->db, "SELECT pg_advisory_unlock(4242002,"
                                     " hashtext($1))", 1, NULL, p, NULL, NULL, 0);
        PQclear(res);
    }
}

/*
 * Attempts.  A row of dp_attempts says its attempt committed; a consumer
 * reading a record of that attempt and finding no row would decide it
 * aborted (its partition has moved on) and skip it.  So a row may go only
 * when no consumer will read such a record again:
 *
 *  1. The horizon H: the earliest start of any transaction running now, or
 *     now.  An attempt's row carries its transaction's start
 *     (committed_at), so an attempt with committed_at < H is not running:
 *     it committed, and its outputs were acknowledged, before now.
 *  2. The mark: every stage's input partitions' log ends, read after H.
 *     Each output of those attempts is below them.
 *  3. Once every stage's committed position in dp_offsets has reached the
 *     ends of a mark (a later gc finds it so; at once when nothing lags),
 *     each of those outputs has been read, decided and committed past.
 *     Only `docpipe replay` reads them again: rows younger than
 *     gc_attempt_retention stay for that.
 *
 * Reading other sessions' transaction starts needs pg_read_all_stats (or
 * a superuser); without it no horizon can be proved and no row goes.
 */
static void gc_attempts(gc_run *g, const char *age)
{
    char before[128], err[1024];
    if (cutoff(g, "gc_attempt_retention", age, before, sizeof(before))) {
        g->failed = 1;
        return;
    }
    const char *pfx = g->cfg->topic_prefix;
    PGresult *res = PQexec(g->db,
        "SELECT least(clock_timestamp(), min(xact_start) FILTER (WHERE pid <>"
        "   pg_backend_pid()))::text,"
        " count(*) FILTER (WHERE query = '<insufficient privilege>')"
        " FROM pg_stat_activity");
    if (dp_pg_check(g->db, res, PGRES_TUPLES_OK, "read running transactions", err,
                    sizeof(err))) {
        fprintf(stderr, "docpipe gc: %s\n", err);
        g->failed = 1;
        return;
    }
    char horizon[64];
    snprintf(horizon, sizeof(horizon), "%s", PQgetvalue(res, 0, 0));
    int hidden = atoi(PQgetvalue(res, 0, 1));
    PQclear(res);
    if (hidden) {
        fprintf(stderr, "docpipe gc: attempts kept: %d session(s) of other users are"
                " hidden from this one (grant it pg_read_all_stats)\n", hidden);
        return;
    }
    if (!g->dry) {
        const char *names[GC_MAX_STAGES];
        int n = 0;
        for (const dp_stage_def *d = dp_stage_defs; d->name && n < GC_MAX_STAGES; d++)
            if (strcmp(d->name, "demo") != 0)
                names[n++] = d->name;
        rd_kafka_t *rk = dp_lag_client(g->cfg, err, sizeof(err));
        json_t *lag = rk ? dp_lag_read(rk, g->db, g->cfg, names, n, err, sizeof(err))
                         : NULL;
        if (rk)
            rd_kafka_destroy(rk);
        if (!lag) {
            fprintf(stderr, "docpipe gc: attempts kept: the topics' ends: %s\n", err);
            g->failed = 1;
            return;
        }
        char *marks = json_dumps(json_object_get(lag, "stages"), JSON_COMPACT);
        json_decref(lag);
        const char *p[3] = {pfx, horizon, marks};
        res = PQexecParams(g->db,
            "INSERT INTO docpipe.dp_gc_marks (prefix, horizon, group_id, topic,"
            "   partition, log_start, log_end)"
            " SELECT $1, $2::timestamptz, s->>'group', s->>'topic',"
            "   (p->>'partition')::int, (p->>'log_start')::bigint, (p->>'log_end')::bigint"
            " FROM jsonb_array_elements($3::jsonb) s,"
            "   jsonb_array_elements(s->'partitions') p"
            " ON CONFLICT DO NOTHING", 3, NULL, p, NULL, NULL, 0);
        free(marks);
        if (dp_pg_check(g->db, res, PGRES_COMMAND_OK, "store a mark", err, sizeof(err))) {
            fprintf(stderr, "docpipe gc: %s\n", err);
            g->failed = 1;
            return;
        }
        PQclear(res);
    }
    /* The newest satisfied mark: every partition consumed to its end then
     * (or holding nothing then). */
    const char *p[2] = {pfx, before};
    static const char satisfied[] =
        "WITH ok AS (SELECT max(horizon) AS h FROM (SELECT m.horizon"
        "   FROM docpipe.dp_gc_marks m WHERE m.prefix = $1 GROUP BY m.horizon"
        "   HAVING bool_and(m.log_end <= m.log_start OR EXISTS (SELECT 1"
        "     FROM docpipe.dp_offsets o WHERE o.group_id = m.group_id"
        "     AND o.topic = m.topic AND o.partition = m.partition"
        "     AND o.next_offset >= m.log_end))) s)";
    char sql[2048];
    snprintf(sql, sizeof(sql), g->dry
        ? "%s SELECT count(*) FROM docpipe.dp_attempts a, ok"
          " WHERE ok.h IS NOT NULL AND starts_with(a.topic, $1)"
          " AND a.committed_at < least(ok.h, $2::timestamptz)"
        : "%s, gone AS (DELETE FROM docpipe.dp_attempts a USING ok"
          " WHERE ok.h IS NOT NULL AND starts_with(a.topic, $1)"
          " AND a.committed_at < least(ok.h, $2::timestamptz) RETURNING 1),"
          " old AS (DELETE FROM docpipe.dp_gc_marks m USING ok"
          " WHERE m.prefix = $1 AND m.horizon < ok.h)"
          " SELECT count(*) FROM gone", satisfied);
    count_rows(g, "remove consumed attempts", sql, 2, p, &g->attempts);
}

/* ---- command -------------------------------------------------------------- */

int dp_cmd_gc(const dp_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"older-than", required_argument, NULL, 'o'}, {"dry-run", no_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *older = NULL;
    int dry = 0, json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': older = optarg; break;
        case 'n': dry = 1; break;
        case 'j': json = 1; break;
        case 'h': usage_gc(stdout); return DP_EXIT_OK;
        default: usage_gc(stderr); return DP_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "docpipe gc: unexpected argument '%s'\n", argv[optind]);
        usage_gc(stderr);
        return DP_EXIT_USAGE;
    }
    gc_run g = {.cfg = cfg, .dry = dry};
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-gc", &g.db, err, sizeof(err))) {
        fprintf(stderr, "docpipe gc: %s\n", err);
        return DP_EXIT_FAILED;
    }
    /* Every age read first: a bad one is a usage error before anything goes. */
    const char *ages[4] = {older ? older : cfg->gc_file_grace,
                           older ? older : cfg->gc_event_retention,
                           older ? older : cfg->gc_dlq_retention,
                           older ? older : cfg->gc_attempt_retention};
    static const char *const names[4] = {"gc_file_grace", "gc_event_retention",
                                         "gc_dlq_retention", "gc_attempt_retention"};
    for (int i = 0; i < 4; i++) {
        char t[128];
        int rc = dp_dlq_instant(g.db, "gc", older ? "--older-than" : names[i], ages[i],
                                1, t, sizeof(t));
        if (rc) {
            PQfinish(g.db);
            return rc;
        }
    }
    gc_files(&g, ages[0]);
    gc_events(&g, ages[1]);
    gc_dead_letters(&g, ages[2]);
    gc_attempts(&g, ages[3]);
    PQfinish(g.db);
    if (json) {
        json_t *o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:b}", "temp_files",
            (json_int_t)g.temp_files, "unreferenced_files", (json_int_t)g.unref_files,
            "events", (json_int_t)g.events, "dead_letters", (json_int_t)g.dead_letters,
            "attempts", (json_int_t)g.attempts, "dry_run", dry);
        json_dumpf(o, stdout, JSON_INDENT(2));
        putchar('\n');
        json_decref(o);
    } else {
        printf("temp_files\t%lld\nunreferenced_files\t%lld\nevents\t%lld\n"
               "dead_letters\t%lld\nattempts\t%lld\n", g.temp_files, g.unref_files,
               g.events, g.dead_letters, g.attempts);
    }
    if (dry)
        fprintf(stderr, "docpipe gc: dry run: counted, nothing removed\n");
    if (fflush(stdout) != 0)
        return DP_EXIT_FAILED;
    return g.failed ? DP_EXIT_FAILED : DP_EXIT_OK;
}

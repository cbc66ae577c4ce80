/*
 * submit, status, wait: the operator's side of the document pipeline.
 *
 * submit stores each file content-addressed under storage_dir/raw and
 * publishes an UploadRequested keyed by its document id, which is
 * UUIDv5("doc:{user}:{sha256}") so that the same file from the same user
 * is the same document (intake deduplicates it).  Files are written in
 * groups of SUBMIT_GROUP and made durable together (one filesystem flush,
 * dp_storage_sync) before their uploads are published.  Its TSV lines escape
 * tab, newline, carriage return and backslash in file names, so one line
 * is one record; --json gives the same as one array.  A stop signal
 * (SIGINT/SIGTERM) ends it between files: the group not yet handed to
 * Kafka is dropped, what was handed over is acknowledged and listed.
 * status reads the domain tables (TSV, or --json); wait (its loop is
 * wait.c's) polls them until documents are complete or failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

#include <jansson.h>

#include "cli.h"
#include "config.h"
#include "docdb.h"
#include "docmsg.h"
#include "ids.h"
#include "pg.h"
#include "publish.h"
#include "stages.h"

#define SUBMIT_MAX_BYTES (100u * 1024 * 1024)
#define DEFAULT_USER "00000000-0000-0000-0000-000000000001"

static const char *mime_of(const char *path, const char *data, size_t len)
{
    const char *dot = strrchr(path, '.');
    if (dot) {
        if (!strcasecmp(dot, ".pdf")) return "application/pdf";
        if (!strcasecmp(dot, ".html") || !strcasecmp(dot, ".htm")) return "text/html";
        if (!strcasecmp(dot, ".md") || !strcasecmp(dot, ".markdown")) return "text/markdown";
        if (!strcasecmp(dot, ".txt") || !strcasecmp(dot, ".text")) return "text/plain";
    }
    if (len >= 5 && memcmp(data, "%PDF-", 5) == 0)
        return "application/pdf";
    return "application/octet-stream";
}

#define SUBMIT_GROUP 64

/* An upload whose file is written but not yet durable. */
typedef struct upload {
    char *path;
    const char *mime;
    char doc[DP_UUID_STR_SIZE], corr[DP_UUID_STR_SIZE];
    void *buf;
    size_t blen;
} upload;

typedef struct submitter {
    const dp_config *cfg;
    const char *user;
    dp_publisher *pub;
    char *topic;
    dp_msgcodec *codec;
    int failures;
    int json;                    /* --json: results collected, printed at the end */
    json_t *results;             /* [{document_id, file, status}] */
    dp_buf ids;                  /* submitted document ids, NUL-separated */
    int nids;
    volatile sig_atomic_t *stop; /* SIGINT/SIGTERM: no new file is taken */
    dp_storage_batch files;
    upload group[SUBMIT_GROUP];
    int ngroup;
} submitter;

/* A file name on one TSV line: tab, newline, carriage return and
 * backslash written as \t, \n, \r and \\ (the rest as it is). */
static void print_escaped(FILE *out, const char *name)
{
    for (const char *c = name; *c; c++) {
        switch (*c) {
        case '\t': fputs("\\t", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\\': fputs("\\\\", out); break;
        default: fputc(*c, out);
        }
    }
}

/* One file's outcome: a TSV line on stdout, or kept for the JSON array. */
static void report(submitter *s, const char *doc, const char *mime,
                   const char *path, const char *status)
{
    if (s->json) {
        json_array_append_new(s->results, json_pack("{s:o,s:s,s:s}",
            "document_id", doc ? json_string(doc) : json_null(), "file", path,
            "status", status));
    } else if (doc) {
        printf("%s\t%s\t", doc, mime);
        print_escaped(stdout, path);
        fputc('\n', stdout);
    }
    if (doc) {
        dp_buf_append(&s->ids, doc, strlen(doc) + 1);
        s->nids++;
    }
}

/* Makes the group's files durable, then publishes their uploads.  After a
 * stop signal nothing more is handed to Kafka: the group is dropped (its
 * stored files are content-addressed, a later submit finds them again). */
static void submit_group(submitter *s)
{
    char err[1024];
    dp_err e = *s->stop ? DP_OK : dp_storage_sync(&s->files, err, sizeof(err));
    for (int i = 0; i < s->ngroup; i++) {
        upload *u = &s->group[i];
        /* The publisher takes the record's bytes, also on failure. */
        if (e != DP_OK || *s->stop) {
            free(u->buf);
            if (*s->stop)
                report(s, NULL, u->mime, u->path, "not submitted");
        }
        if (*s->stop) {
        } else if (e == DP_OK &&
            dp_publisher_send(s->pub, s->topic, u->doc, strlen(u->doc), u->buf,
                              u->blen, "docpipe-correlation-id", u->corr, err,
                              sizeof(err)) == 0) {
            report(s, u->doc, u->mime, u->path, "submitted");
        } else {
            fprintf(stderr, "docpipe submit: %s: %s\n", u->path, err);
            report(s, NULL, u->mime, u->path, "failed");
            s->failures++;
        }
        free(u->path);
    }
    s->ngroup = 0;
}

static int read_all(const char *path, char **data, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    struct stat st;
    if (fstat(fd, &st) != 0 || (size_t)st.st_size > SUBMIT_MAX_BYTES) {
        close(fd);
        errno = EFBIG;
        return -1;
    }
    *data = malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, *data + got, (size_t)st.st_size - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    *len = got;
    return 0;
}

static void submit_file(submitter *s, const char *path)
{
    char *data;
    size_t len;
    char err[1024];
    if (read_all(path, &data, &len) != 0) {
        fprintf(stderr, "docpipe submit: %s: %s\n", path, strerror(errno));
        report(s, NULL, NULL, path, "failed");
        s->failures++;
        return;
    }
    char rawpath[DP_STORAGE_PATH_SIZE], sha[65], doc[DP_UUID_STR_SIZE],
        corr[DP_UUID_STR_SIZE], name[200];
    const char *mime = mime_of(path, data, len);
    dp_err e = dp_storage_write(&s->files, s->cfg->storage_dir, "raw", data, len,
                                rawpath, sha, err, sizeof(err));
    free(data);
    if (e) {
        fprintf(stderr, "docpipe submit: %s: %s\n", path, err);
        report(s, NULL, NULL, path, "failed");
        s->failures++;
        return;
    }
    int n = snprintf(name, sizeof(name), "doc:%s:%s", s->user, sha);
    dp_uuid5(DP_CHUNK_ID_NAMESPACE, name, (size_t)n, doc);
    dp_uuid4(corr);
    const char *base = strrchr(path, '/');
    base = base ? base + 1 : path;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    dp_field f[] = {DP_FS("document_id", doc), DP_FS("user_id", s->user),
                    DP_FS("filename", base), DP_FS("mime", mime),
                    DP_FL("bytes_len", len), DP_FS("file_sha256", sha),
                    DP_FS("raw_path", rawpath),
                    DP_FL("submitted_at_ms", (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000),
                    DP_FS("correlation_id", corr)};
    void *buf;
    size_t blen;
    if (dp_msg_encode(s->codec, "UploadRequested", f, 9, &buf, &blen, err,
                      sizeof(err))) {
        fprintf(stderr, "docpipe submit: %s: %s\n", path, err);
        report(s, NULL, NULL, path, "failed");
        s->failures++;
        return;
    }
    upload *u = &s->group[s->ngroup++];
    u->path = strdup(path);
    u->mime = mime;
    memcpy(u->doc, doc, sizeof(u->doc));
    memcpy(u->corr, corr, sizeof(u->corr));
    u->buf = buf;
    u->blen = blen;
    if (s->ngroup == SUBMIT_GROUP)
        submit_group(s);
}

static void submit_path(submitter *s, const char *path)
{
    if (*s->stop)
        return;
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "docpipe submit: %s: %s\n", path, strerror(errno));
        report(s, NULL, NULL, path, "failed");
        s->failures++;
        return;
    }
    if (!S_ISDIR(st.st_mode)) {
        submit_file(s, path);
        return;
    }
    struct dirent **names;
    int n = scandir(path, &names, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        if (names[i]->d_name[0] != '.' && !*s->stop) {
            char child[4096];
            snprintf(child, sizeof(child), "%s/%s", path, names[i]->d_name);
            submit_path(s, child);
        }
        free(names[i]);
    }
    free(names);
}

static void usage_submit(FILE *out)
{
    fprintf(out,
        "usage: docpipe submit [--user UUID] [--json] [--wait [--timeout S]\n"
        "                      [--progress-every S]] <file|dir>...\n\n"
        "Stores the files and publishes their uploads.  Prints one line per file\n"
        "submitted: document id, MIME type, file name, tab-separated; in the name\n"
        "a tab, newline, carriage return or backslash is written \\t, \\n, \\r, \\\\.\n"
        "--json: one array of {document_id, file, status} instead (status:\n"
        "submitted, failed, not submitted); with --wait, an object {submitted,\n"
        "wait}.  --wait: then waits for those documents as docpipe wait does\n"
        "(its progress, its exit codes).  SIGINT/SIGTERM: no further file is\n"
        "taken, those handed to Kafka are acknowledged and listed, exit 130/143.\n");
}

int dp_cmd_submit(const dp_config *cfg, int argc, char **argv,
                  volatile sig_atomic_t *stop)
{
    static submitter s; /* large (the group): not on the stack */
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.stop = stop;
    s.user = getenv("DOCPIPE_USER_ID") ? getenv("DOCPIPE_USER_ID") : DEFAULT_USER;
    dp_wait_opts wo = {.timeout_s = 600, .progress_every_s = 10};
    int wait = 0;
    static const struct option opts[] = {
        {"user", required_argument, NULL, 'u'}, {"json", no_argument, NULL, 'j'},
        {"wait", no_argument, NULL, 'w'}, {"timeout", required_argument, NULL, 't'},
        {"progress-every", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    char **av = argv - 1; /* getopt starts at 1 */
    int ac = argc + 1, c;
    optind = 1;
    /* "+": options before the files, so a file may be named like one. */
    while ((c = getopt_long(ac, av, "+h", opts, NULL)) != -1) {
        char *end;
        long v;
        switch (c) {
        case 'u': s.user = optarg; break;
        case 'j': s.json = 1; break;
        case 'w': wait = 1; break;
        case 't':
        case 'p':
            v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 0 || v > 100000000) {
                fprintf(stderr, "docpipe submit: '%s' is not a number of seconds\n",
                        optarg);
                return DP_EXIT_USAGE;
            }
            *(c == 't' ? &wo.timeout_s : &wo.progress_every_s) = (int)v;
            break;
        case 'h': usage_submit(stdout); return 0;
        default: usage_submit(stderr); return DP_EXIT_USAGE;
        }
    }
    int first = optind;
    argv = av;
    argc = ac;
    uint8_t raw[16];
    if (dp_uuid_parse(s.user, raw) != 0) {
        fprintf(stderr, "docpipe submit: user id '%s' is not a UUID\n", s.user);
        return DP_EXIT_USAGE;
    }
    if (first >= argc) {
        usage_submit(stderr);
        return DP_EXIT_USAGE;
    }
    char err[1024], kerr[512];
    if (dp_msgcodec_open(cfg->schema_dir, &s.codec, err, sizeof(err))) {
        fprintf(stderr, "docpipe submit: %s\n", err);
        return 1;
    }
    rd_kafka_conf_t *conf = dp_publisher_conf(cfg, "10", "murmur2_random", err,
                                              sizeof(err));
    if (!conf) {
        fprintf(stderr, "docpipe submit: %s\n", err);
        dp_msgcodec_free(s.codec);
        return 1;
    }
    s.pub = dp_publisher_new(conf, kerr, sizeof(kerr));
    if (!s.pub) {
        fprintf(stderr, "docpipe submit: %s\n", kerr);
        dp_msgcodec_free(s.codec);
        return 1;
    }
    s.results = json_array();
    s.topic = dp_topic_name(cfg, "uploaded");
    for (int i = first; i < argc && !*stop; i++)
        submit_path(&s, argv[i]);
    submit_group(&s);
    dp_storage_discard(&s.files);
    /* A report without an offset is no proof of delivery (publish.h): those
     * uploads are sent again; intake drops a second copy by document id.
     * Also after a stop signal: what was handed to Kafka is seen through. */
    uint64_t lost = dp_publisher_finish(s.pub, 60000, 5, err, sizeof(err));
    dp_publish_stats st = dp_publisher_stats(s.pub);
    if (lost)
        fprintf(stderr, "docpipe submit: %" PRIu64 " upload(s) not delivered: %s\n",
                lost, err);
    if (st.resent)
        fprintf(stderr, "docpipe submit: %" PRIu64 " upload(s) sent again: Kafka's"
                " acknowledgement carried no offset\n", st.unconfirmed);
    dp_publisher_free(s.pub);
    free(s.topic);
    dp_msgcodec_free(s.codec);
    fprintf(stderr, "docpipe submit: %" PRIu64 " submitted, %" PRIu64 " failed%s\n",
            st.confirmed, (uint64_t)s.failures + lost,
            *stop ? ", interrupted" : "");
    s.failures += (int)lost;
    int rc = s.failures ? DP_EXIT_FAILED : DP_EXIT_OK;
    json_t *waited = NULL;
    if (*stop) {
        rc = DP_EXIT_SIGNAL_BASE + (int)*stop;
    } else if (wait && s.nids > 0) {
        fflush(stdout); /* the ids before the wait's progress */
        const char **ids = malloc(sizeof(*ids) * (size_t)s.nids);
        const char *id = s.ids.data;
        for (int i = 0; i < s.nids; i++, id += strlen(id) + 1)
            ids[i] = id;
        int wrc = dp_wait_docs(cfg, ids, s.nids, &wo, stop, &waited);
        free(ids);
        if (!(wrc == DP_EXIT_OK && rc != DP_EXIT_OK))
            rc = wrc;
        if (waited && !s.json) {
            json_int_t done = json_integer_value(json_object_get(waited, "complete")),
                       failed = json_integer_value(json_object_get(waited, "failed"));
            /* stderr: stdout keeps one line per document */
            fprintf(stderr, "docpipe submit: %s: %" JSON_INTEGER_FORMAT " complete, %"
                    JSON_INTEGER_FORMAT " failed\n",
                    json_string_value(json_object_get(waited, "result")), done, failed);
        }
    }
    if (s.json) {
        json_t *out = wait ? json_pack("{s:O,s:o}", "submitted", s.results, "wait",
                                       waited ? waited : json_null())
                           : json_incref(s.results);
        waited = NULL;
        json_dumpf(out, stdout, JSON_INDENT(2));
        fputc('\n', stdout);
        json_decref(out);
    }
    json_decref(waited);
    json_decref(s.results);
    dp_buf_free(&s.ids);
    return rc;
}

static int print_query(PGconn *db, const char *sql, int nparams,
                       const char *const *params)
{
    PGresult *res = PQexecParams(db, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "docpipe status: %s", PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    int rows = PQntuples(res);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < PQnfields(res); c++)
            printf("%s%s", c ? "\t" : "", PQgetvalue(res, r, c));
        printf("\n");
    }
    PQclear(res);
    return rows;
}

/* A query's rows as JSON objects named by its columns; NULL on error. */
static json_t *query_json(PGconn *db, const char *sql, int nparams,
                          const char *const *params)
{
    PGresult *res = PQexecParams(db, sql, nparams, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "docpipe status: %s", PQresultErrorMessage(res));
        PQclear(res);
        return NULL;
    }
    json_t *rows = json_array();
    for (int r = 0; r < PQntuples(res); r++) {
        json_t *o = json_object();
        for (int c = 0; c < PQnfields(res); c++) {
            json_t *v = json_null();
            if (!PQgetisnull(res, r, c)) {
                const char *name = PQfname(res, c);
                /* jsonb columns and counts keep their types */
                if (strcmp(name, "documents") == 0 || strcmp(name, "retries") == 0 ||
                    strcmp(name, "bytes") == 0)
                    v = json_integer(atoll(PQgetvalue(res, r, c)));
                else if (strcmp(name, "progress") == 0 || strcmp(name, "error") == 0)
                    v = json_loads(PQgetvalue(res, r, c), JSON_DECODE_ANY, NULL);
                if (!v || json_is_null(v))
                    v = json_string(PQgetvalue(res, r, c));
            }
            json_object_set_new(o, PQfname(res, c), v);
        }
        json_array_append_new(rows, o);
    }
    PQclear(res);
    return rows;
}

static int status_json(PGconn *db, int argc, char **argv)
{
    json_t *out;
    if (argc == 0) {
        json_t *rows = query_json(db, "SELECT status AS state, count(*) AS documents"
            " FROM upload_pipeline.upload_jobs GROUP BY status ORDER BY min(created_at)",
            0, NULL);
        if (!rows)
            return 1;
        json_t *states = json_object();
        json_int_t total = 0;
        size_t i;
        json_t *r;
        json_array_foreach(rows, i, r) {
            json_int_t k = json_integer_value(json_object_get(r, "documents"));
            json_object_set_new(states, json_string_value(json_object_get(r, "state")),
                                json_integer(k));
            total += k;
        }
        json_decref(rows);
        out = json_pack("{s:o,s:I}", "states", states, "total", total);
    } else {
        out = json_array();
        for (int i = 0; i < argc; i++) {
            uint8_t raw[16];
            if (dp_uuid_parse(argv[i], raw) != 0) {
                fprintf(stderr, "docpipe status: '%s' is not a document id\n", argv[i]);
                json_decref(out);
                return 2;
            }
            const char *p[1] = {argv[i]};
            json_t *rows = query_json(db,
                "SELECT j.document_id::text AS document_id, j.status AS state,"
                " d.filename AS file, d.mime, d.bytes_len::text AS bytes,"
                " j.progress::text AS progress, j.retry_count AS retries,"
                " j.last_error::text AS error, j.correlation_id::text AS correlation_id"
                " FROM upload_pipeline.upload_jobs j LEFT JOIN upload_pipeline.documents d"
                " USING (document_id) WHERE j.document_id = $1::uuid", 1, p);
            json_t *tl = rows && json_array_size(rows) ? query_json(db,
                "SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                " AS ts, stage, to_status AS state, code FROM upload_pipeline.events"
                " WHERE document_id = $1::uuid ORDER BY ts, event_id", 1, p) : NULL;
            if (!tl) {
                if (rows)
                    fprintf(stderr, "docpipe status: no document %s\n", argv[i]);
                json_decref(rows);
                json_decref(out);
                return 1;
            }
            json_t *doc = json_incref(json_array_get(rows, 0));
            json_object_set_new(doc, "timeline", tl);
            json_array_append_new(out, doc);
            json_decref(rows);
        }
    }
    json_dumpf(out, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(out);
    return 0;
}

int dp_cmd_status(const dp_config *cfg, int argc, char **argv,
                  volatile sig_atomic_t *stop)
{
    int json = 0;
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {NULL, 0, NULL, 0}};
    char **av = argv - 1;
    int ac = argc + 1, c;
    optind = 1;
    while ((c = getopt_long(ac, av, "", opts, NULL)) != -1) {
        if (c != 'j') {
            fprintf(stderr, "usage: docpipe status [--json] [<document>...]\n");
            return DP_EXIT_USAGE;
        }
        json = 1;
    }
    argc = ac - optind;
    argv = av + optind;
    PGconn *db;
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-status", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe status: %s\n", err);
        return 1;
    }
    if (json) {
        int rc = status_json(db, argc, argv);
        PQfinish(db);
        return rc;
    }
    int rc = 0;
    if (argc == 0) {
        printf("state\tdocuments\n");
        if (print_query(db, "SELECT status, count(*) FROM upload_pipeline.upload_jobs"
                            " GROUP BY status ORDER BY min(created_at)", 0, NULL) < 0)
            rc = 1;
        else
            print_query(db, "SELECT 'total', count(*) FROM upload_pipeline.upload_jobs",
                        0, NULL);
    }
    for (int i = 0; i < argc && rc == 0; i++) {
        if (*stop) {
            rc = DP_EXIT_SIGNAL_BASE + (int)*stop;
            break;
        }
        uint8_t raw[16];
        if (dp_uuid_parse(argv[i], raw) != 0) {
            fprintf(stderr, "docpipe status: '%s' is not a document id\n", argv[i]);
            rc = 2;
            break;
        }
        const char *p[1] = {argv[i]};
        printf("document\t%s\n", argv[i]);
        int n = print_query(db,
            "SELECT 'state', j.status FROM upload_pipeline.upload_jobs j"
            "  WHERE document_id = $1::uuid"
            " UNION ALL SELECT 'file', d.filename || ' (' || d.mime || ', '"
            "  || d.bytes_len || ' bytes)' FROM upload_pipeline.documents d"
            "  WHERE document_id = $1::uuid"
            " UNION ALL SELECT 'progress', j.progress::text FROM"
            "  upload_pipeline.upload_jobs j WHERE document_id = $1::uuid"
            " UNION ALL SELECT 'retries', j.retry_count::text FROM"
            "  upload_pipeline.upload_jobs j WHERE document_id = $1::uuid"
            "  AND j.retry_count > 0"
            " UNION ALL SELECT 'last_error', j.last_error::text FROM"
            "  upload_pipeline.upload_jobs j WHERE document_id = $1::uuid"
            "  AND j.last_error IS NOT NULL"
            " UNION ALL SELECT 'correlation_id', j.correlation_id::text FROM"
            "  upload_pipeline.upload_jobs j WHERE document_id = $1::uuid",
            1, p);
        if (n <= 0) {
            fprintf(stderr, "docpipe status: no document %s\n", argv[i]);
            rc = 1;
            break;
        }
        printf("timeline\n");
        print_query(db,
            "SELECT '  ' || to_char(ts, 'YYYY-MM-DD HH24:MI:SS.MS'), stage,"
            " coalesce(to_status, ''), code FROM upload_pipeline.events"
            " WHERE document_id = $1::uuid ORDER BY ts, event_id", 1, p);
    }
    PQfinish(db);
    return rc;
}

static void usage_wait(FILE *out)
{
    fprintf(out,
        "usage: docpipe wait [--timeout S] [--progress-every S] [--json] [<document>...]\n\n"
        "Until the documents (default: every one known) are complete or failed.\n"
        "Progress on stderr: on a terminal a line redrawn every second, else a\n"
        "plain line every --progress-every seconds (default 10; 0: none).  The\n"
        "end on stdout: \"N complete, M failed\", or a JSON summary with --json.\n"
        "Exit 0 all complete, 1 some failed (or an error), 2 usage, 3 timed out\n"
        "(--timeout, default 600 s), 130 on SIGINT, 143 on SIGTERM.\n");
}

/* Parses wait's options from av[1..]: returns -1 to go on, else an exit. */
static int wait_options(int ac, char **av, dp_wait_opts *o, int *json)
{
    static const struct option opts[] = {
        {"timeout", required_argument, NULL, 't'},
        {"progress-every", required_argument, NULL, 'p'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    char *end;
    while ((c = getopt_long(ac, av, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't':
        case 'p': {
            long v = strtol(optarg, &end, 10);
            if (*end || end == optarg || v < 0 || v > 100000000) {
                fprintf(stderr, "docpipe wait: '%s' is not a number of seconds\n",
                        optarg);
                return DP_EXIT_USAGE;
            }
            if (c == 't')
                o->timeout_s = (int)v;
            else
                o->progress_every_s = (int)v;
            break;
        }
        case 'j': *json = 1; break;
        case 'h': usage_wait(stdout); return 0;
        default: usage_wait(stderr); return DP_EXIT_USAGE;
        }
    }
    return -1;
}

int dp_cmd_wait(const dp_config *cfg, int argc, char **argv,
                volatile sig_atomic_t *stop)
{
    dp_wait_opts o = {.timeout_s = 600, .progress_every_s = 10};
    char **av = argv - 1; /* getopt starts at 1 */
    int ac = argc + 1;
    optind = 1;
    int rc = wait_options(ac, av, &o, &o.json);
    if (rc >= 0)
        return rc;
    for (int i = optind; i < ac; i++) {
        uint8_t raw[16];
        if (dp_uuid_parse(av[i], raw) != 0) {
            fprintf(stderr, "docpipe wait: '%s' is not a document id\n", av[i]);
            return DP_EXIT_USAGE;
        }
    }
    return dp_wait_docs(cfg, (const char *const *)av + optind, ac - optind, &o,
                        stop, NULL);
}

/*
 * submit, status, wait: the operator's side of the document pipeline.
 *
 * submit stores each file content-addressed under storage_dir/raw and
 * publishes an UploadRequested keyed by its document id, which is
 * UUIDv5("doc:{user}:{sha256}") so that the same file from the same user
 * is the same document (intake deduplicates it).  Files are written in
 * groups of SUBMIT_GROUP and made durable together (one filesystem flush,
 * dp_storage_sync) before their uploads are published.  status reads the domain
 * tables; wait polls them until documents are complete or failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>

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
    dp_storage_batch files;
    upload group[SUBMIT_GROUP];
    int ngroup;
} submitter;

/* Makes the group's files durable, then publishes their uploads. */
static void submit_group(submitter *s)
{
    char err[1024];
    dp_err e = dp_storage_sync(&s->files, err, sizeof(err));
    for (int i = 0; i < s->ngroup; i++) {
        upload *u = &s->group[i];
        /* The publisher takes the record's bytes, also on failure. */
        if (e != DP_OK)
            free(u->buf);
        if (e == DP_OK &&
            dp_publisher_send(s->pub, s->topic, u->doc, strlen(u->doc), u->buf,
                              u->blen, "docpipe-correlation-id", u->corr, err,
                              sizeof(err)) == 0)
            printf("%s\t%s\t%s\n", u->doc, u->mime, u->path);
        else {
            fprintf(stderr, "docpipe submit: %s: %s\n", u->path, err);
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
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "docpipe submit: %s: %s\n", path, strerror(errno));
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
        if (names[i]->d_name[0] != '.') {
            char child[4096];
            snprintf(child, sizeof(child), "%s/%s", path, names[i]->d_name);
            submit_path(s, child);
        }
        free(names[i]);
    }
    free(names);
}

int dp_cmd_submit(const dp_config *cfg, int argc, char **argv)
{
    static submitter s; /* large (the group): not on the stack */
    memset(&s, 0, sizeof(s));
    s.cfg = cfg;
    s.user = getenv("DOCPIPE_USER_ID") ? getenv("DOCPIPE_USER_ID") : DEFAULT_USER;
    int first = 0;
    if (argc >= 2 && strcmp(argv[0], "--user") == 0) {
        s.user = argv[1];
        first = 2;
    }
    uint8_t raw[16];
    if (dp_uuid_parse(s.user, raw) != 0) {
        fprintf(stderr, "docpipe submit: user id '%s' is not a UUID\n", s.user);
        return 2;
    }
    if (first >= argc) {
        fprintf(stderr, "usage: docpipe submit [--user UUID] <file|dir>...\n");
        return 2;
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
    s.topic = dp_topic_name(cfg, "uploaded");
    for (int i = first; i < argc; i++)
        submit_path(&s, argv[i]);
    submit_group(&s);
    dp_storage_discard(&s.files);
    /* A report without an offset is no proof of delivery (publish.h): those
     * uploads are sent again; intake drops a second copy by document id. */
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
    fprintf(stderr, "docpipe submit: %" PRIu64 " submitted, %" PRIu64 " failed\n",
            st.confirmed, (uint64_t)s.failures + lost);
    s.failures += (int)lost;
    return s.failures ? 1 : 0;
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

int dp_cmd_status(const dp_config *cfg, int argc, char **argv)
{
    PGconn *db;
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-status", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe status: %s\n", err);
        return 1;
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

int dp_cmd_wait(const dp_config *cfg, int argc, char **argv)
{
    int timeout_s = 600;
    int first = 0;
    if (argc >= 2 && strcmp(argv[0], "--timeout") == 0) {
        timeout_s = atoi(argv[1]);
        first = 2;
    }
    PGconn *db;
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-wait", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe wait: %s\n", err);
        return 1;
    }
    /* Without ids: every document known. */
    dp_buf ids = {0};
    dp_buf_append(&ids, "{", 1);
    for (int i = first; i < argc; i++)
        dp_buf_appendf(&ids, "%s%s", i > first ? "," : "", argv[i]);
    dp_buf_append(&ids, "}", 1);
    const char *p[2] = {ids.data, argc > first ? "1" : "0"};
    time_t until = time(NULL) + timeout_s;
    int rc = 1;
    for (;;) {
        PGresult *res = PQexecParams(db,
            "SELECT count(*) FILTER (WHERE status = 'complete'),"
            " count(*) FILTER (WHERE status LIKE 'failed_%'), count(*)"
            " FROM upload_pipeline.upload_jobs"
            " WHERE $2 = '0' OR document_id = ANY($1::uuid[])",
            2, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            fprintf(stderr, "docpipe wait: %s", PQresultErrorMessage(res));
            PQclear(res);
            break;
        }
        long done = atol(PQgetvalue(res, 0, 0)), failed = atol(PQgetvalue(res, 0, 1)),
             known = atol(PQgetvalue(res, 0, 2));
        PQclear(res);
        long want = argc > first ? argc - first : known;
        if (want > 0 && known >= want && done + failed >= want) {
            printf("%ld complete, %ld failed\n", done, failed);
            rc = failed ? 1 : 0;
            break;
        }
        if (time(NULL) >= until) {
            printf("timed out: %ld complete, %ld failed, %ld of %ld known\n",
                   done, failed, known, want);
            break;
        }
        usleep(200 * 1000);
    }
    dp_buf_free(&ids);
    PQfinish(db);
    return rc;
}

/*
 * dlq: `docpipe dlq`, the dead letters of docpipe.dp_dead_letters for an
 * operator: list them, show one, send them back (cli/dlq_redrive.c), purge
 * old ones.
 *
 *   list [--stage S] [--since T] [--unresolved|--all] [--json]
 *   show [--json] ID
 *   redrive [--dry-run] [--batch N] ID... | --all | --stage S [--since T]
 *   purge --older-than DURATION|T [--include-unresolved] [--dry-run]
 *
 * A dead letter is named by its id (a number given by the database, shown
 * by list).  What show prints is what the runtime recorded with the dead
 * letter (consumer/runtime.c, insert_dead_letter): the headers of the copy
 * on the dead-letter topic are built again from those facts, in the order
 * produce_dead_letter sends them, and the value is decoded from Avro with
 * the writer schema its fingerprint names (the .avsc files of schemas/).
 *
 * Data goes to stdout (aligned columns, or JSON with --json), diagnostics to
 * stderr; exit status 0, 1 on failure, 2 on a usage error.  These commands
 * read or delete rows in one statement each, so an interrupt (Ctrl-C) has
 * nothing to clean up; redrive checks for it between steps.
 */
#include "dlq.h"

#include <dirent.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "avro_codec.h"
#include "pg.h"
#include "stages.h"

/* An instant as list and show print it: UTC, milliseconds, ISO 8601 (the
 * form of the runtime's dead-letter headers). */
#define ISO(x) "to_char(" x " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

/* Columns of a dead letter, for list and show (show adds key and value). */
#define DL_COLUMNS \
    "d.id::text, d.stage, d.group_id, d.topic, d.partition::text," \
    " d.\"offset\"::text, d.dlq_topic, d.category, d.attempts::text, d.error," \
    " d.correlation_id, " ISO("d.record_ts") ", " ISO("d.first_failure") "," \
    " " ISO("d.last_failure") ", " ISO("d.created_at") ", " ISO("d.resolved_at") "," \
    " d.resolution, CASE WHEN d.resolved_at IS NOT NULL THEN d.resolution" \
    "   WHEN EXISTS (SELECT 1 FROM docpipe.dp_dlq_redrives l" \
    "     WHERE l.dead_letter_id = d.id AND l.state = 'sending') THEN 'sending'" \
    "   ELSE 'unresolved' END"
enum { C_ID, C_STAGE, C_GROUP, C_TOPIC, C_PART, C_OFFSET, C_DLQ, C_CATEGORY,
       C_ATTEMPTS, C_ERROR, C_CORR, C_RECORD_TS, C_FIRST, C_LAST, C_CREATED,
       C_RESOLVED_AT, C_RESOLUTION, C_STATE, C_KEY, C_VALUE, C_ATTEMPT };

/* ---- shared helpers ------------------------------------------------------ */

int dp_dlq_parse_id(const char *text)
{
    if (!*text || strspn(text, "0123456789") != strlen(text) || strlen(text) > 18)
        return -1;
    return strtoll(text, NULL, 10) > 0 ? 0 : -1;
}

int dp_dlq_instant(PGconn *db, const char *cmd, const char *what,
                   const char *text, int durations, char *out, size_t outlen)
{
    /* A bare number would be read as seconds (an interval) or not at all: ask
     * for a unit instead of guessing. */
    int bare = *text && strspn(text, "0123456789. ") == strlen(text);
    for (int pass = durations ? 0 : 1; pass < 2 && !bare; pass++) {
        const char *params[1] = {text};
        PGresult *res = pass == 0
            ? PQexecParams(db, "SELECT (now() - $1::interval)::text,"
                           " $1::interval < interval '0'", 1, NULL, params, NULL,
                           NULL, 0)
            : PQexecParams(db, "SELECT $1::timestamptz::text, false", 1, NULL,
                           params, NULL, NULL, 0);
        if (PQresultStatus(res) == PGRES_TUPLES_OK) {
            int negative = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
            snprintf(out, outlen, "%s", PQgetvalue(res, 0, 0));
            PQclear(res);
            if (!negative)
                return 0;
            fprintf(stderr, "docpipe dlq %s: %s '%s': a duration back from now is"
                    " not negative\n", cmd, what, text);
            return DP_DLQ_EXIT_USAGE;
        }
        const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        int data_error = state && strncmp(state, "22", 2) == 0;
        if (!data_error) {
            fprintf(stderr, "docpipe dlq %s: read %s: %s", cmd, what,
                    PQerrorMessage(db));
            PQclear(res);
            return 1;
        }
        PQclear(res);
    }
    fprintf(stderr, "docpipe dlq %s: %s '%s' is not %s\n", cmd, what, text,
            durations ? "a duration (\"30 days\", \"12h\") or a timestamp"
                      : "a timestamp (ISO 8601, e.g. 2024-05-01T12:00:00Z)");
    return DP_DLQ_EXIT_USAGE;
}

int dp_dlq_lock(PGconn *db, const char *cmd, const char *prefix)
{
    const char *params[1] = {prefix};
    PGresult *res = PQexecParams(db, "SELECT pg_try_advisory_lock(4242002,"
                                 " hashtext($1))", 1, NULL, params, NULL, NULL, 0);
    int rc = 0;
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        fprintf(stderr, "docpipe dlq %s: lock: %s", cmd, PQerrorMessage(db));
        rc = 1;
    } else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        fprintf(stderr, "docpipe dlq %s: another docpipe dlq redrive or purge is"
                " running on the dead letters of '%s'; try again when it is done\n",
                cmd, prefix);
        rc = 1;
    }
    PQclear(res);
    return rc;
}

static int connect_db(const dp_config *cfg, const char *cmd, PGconn **db)
{
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-dlq", db, err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq %s: %s\n", cmd, err);
        return 1;
    }
    return 0;
}

static const char *val(PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? NULL : PQgetvalue(res, r, c);
}

/* A JSON string of text that should be UTF-8; bytes that are not are shown
 * as '?' rather than dropping the whole value. */
static json_t *json_text(const char *s, size_t len)
{
    json_t *j = json_stringn(s, len);
    if (j)
        return j;
    char *copy = malloc(len + 1);
    for (size_t i = 0; i < len; i++)
        copy[i] = (unsigned char)s[i] < 0x80 ? s[i] : '?';
    j = json_stringn(copy, len);
    free(copy);
    return j;
}

static json_t *col_json(PGresult *res, int r, int c)
{
    if (PQgetisnull(res, r, c))
        return json_null();
    return json_text(PQgetvalue(res, r, c), (size_t)PQgetlength(res, r, c));
}

static json_t *col_int(PGresult *res, int r, int c)
{
    return PQgetisnull(res, r, c) ? json_null()
                                  : json_integer(strtoll(PQgetvalue(res, r, c), NULL, 10));
}

/* One dead letter (DL_COLUMNS of row r) as a JSON object. */
static json_t *dead_letter_json(PGresult *res, int r)
{
    json_t *o = json_object();
    json_object_set_new(o, "id", col_int(res, r, C_ID));
    json_object_set_new(o, "stage", col_json(res, r, C_STAGE));
    json_object_set_new(o, "group", col_json(res, r, C_GROUP));
    json_object_set_new(o, "topic", col_json(res, r, C_TOPIC));
    json_object_set_new(o, "partition", col_int(res, r, C_PART));
    json_object_set_new(o, "offset", col_int(res, r, C_OFFSET));
    json_object_set_new(o, "dlq_topic", col_json(res, r, C_DLQ));
    json_object_set_new(o, "category", col_json(res, r, C_CATEGORY));
    json_object_set_new(o, "attempts", col_int(res, r, C_ATTEMPTS));
    json_object_set_new(o, "error", col_json(res, r, C_ERROR));
    json_object_set_new(o, "correlation_id", col_json(res, r, C_CORR));
    json_object_set_new(o, "record_timestamp", col_json(res, r, C_RECORD_TS));
    json_object_set_new(o, "first_failure", col_json(res, r, C_FIRST));
    json_object_set_new(o, "last_failure", col_json(res, r, C_LAST));
    json_object_set_new(o, "created_at", col_json(res, r, C_CREATED));
    json_object_set_new(o, "resolved", json_boolean(!PQgetisnull(res, r, C_RESOLVED_AT)));
    json_object_set_new(o, "resolved_at", col_json(res, r, C_RESOLVED_AT));
    json_object_set_new(o, "resolution", col_json(res, r, C_RESOLUTION));
    /* unresolved, sending (a redrive was interrupted: the next one settles
     * it), or the resolution */
    json_object_set_new(o, "state", col_json(res, r, C_STATE));
    return o;
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s && *s ? s : "-";
}

static int print_json(json_t *j, size_t flags)
{
    int bad = json_dumpf(j, stdout, flags | JSON_ENCODE_ANY) != 0;
    fputc('\n', stdout);
    return bad;
}

/* One line of a column meant for a terminal: tabs, newlines and other
 * control characters become spaces. */
static void one_line(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = ' ';
}

/* ---- list ---------------------------------------------------------------- */

static void usage_list(FILE *out)
{
    fprintf(out,
        "usage: docpipe dlq list [--stage S] [--since T] [--unresolved|--all] [--json]\n"
        "  --stage S      only the dead letters of stage S\n"
        "  --since T      only those recorded at or after T (ISO 8601 timestamp)\n"
        "  --unresolved   only those not yet redriven (the default)\n"
        "  --all          resolved ones too\n"
        "  --json         a JSON array of objects instead of columns\n");
}

enum { L_ID, L_STAGE, L_GROUP, L_SOURCE, L_CATEGORY, L_ATTEMPTS, L_STATE,
       L_CREATED, L_CORR, L_ERROR, L_N };

/* One dead letter as the cells of a list line. */
static void list_cells(json_t *o, char *cell[L_N])
{
    if (asprintf(&cell[L_ID], "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(o, "id"))) < 0 ||
        asprintf(&cell[L_SOURCE], "%s/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
                 jstr(o, "topic"), json_integer_value(json_object_get(o, "partition")),
                 json_integer_value(json_object_get(o, "offset"))) < 0 ||
        asprintf(&cell[L_ATTEMPTS], "%" JSON_INTEGER_FORMAT,
                 json_integer_value(json_object_get(o, "attempts"))) < 0)
        abort();
    cell[L_STAGE] = strdup(jstr(o, "stage"));
    cell[L_GROUP] = strdup(jstr(o, "group"));
    cell[L_CATEGORY] = strdup(jstr(o, "category"));
    cell[L_STATE] = strdup(jstr(o, "state"));
    cell[L_CREATED] = strdup(jstr(o, "created_at"));
    cell[L_CORR] = strdup(jstr(o, "correlation_id"));
    cell[L_ERROR] = strdup(jstr(o, "error"));
}

/* A header line, then a line per dead letter, each column padded to its
 * widest cell but the error, last and whole.  Every cell but the error is
 * one word ("-" when empty), so `awk '{print $1}'` finds the ids. */
static void print_columns(json_t *rows)
{
    static const char *head[L_N] = {"ID", "STAGE", "GROUP", "SOURCE", "CATEGORY",
        "ATTEMPTS", "STATE", "CREATED", "CORRELATION", "ERROR"};
    size_t n = json_array_size(rows) + 1;
    char *(*cell)[L_N] = calloc(n, sizeof(*cell));
    size_t width[L_N] = {0};
    for (int c = 0; c < L_N; c++)
        cell[0][c] = strdup(head[c]);
    for (size_t i = 1; i < n; i++)
        list_cells(json_array_get(rows, i - 1), cell[i]);
    for (size_t i = 0; i < n; i++)
        for (int c = 0; c < L_N; c++) {
            one_line(cell[i][c]);
            size_t w = strlen(cell[i][c]);
            if (w > width[c])
                width[c] = w;
        }
    for (size_t i = 0; i < n; i++) {
        for (int c = 0; c < L_N - 1; c++)
            printf("%-*s  ", (int)width[c], cell[i][c]);
        printf("%s\n", cell[i][L_N - 1]);
        for (int c = 0; c < L_N; c++)
            free(cell[i][c]);
    }
    free(cell);
}

static int cmd_list(const dp_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"stage", required_argument, NULL, 's'}, {"since", required_argument, NULL, 't'},
        {"unresolved", no_argument, NULL, 'u'}, {"all", no_argument, NULL, 'a'},
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *stage = "", *since = NULL;
    int all = 0, json = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 's': stage = optarg; break;
        case 't': since = optarg; break;
        case 'u': all = 0; break;
        case 'a': all = 1; break;
        case 'j': json = 1; break;
        case 'h': usage_list(stdout); return 0;
        default: usage_list(stderr); return DP_DLQ_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "docpipe dlq list: unexpected argument '%s'\n", argv[optind]);
        usage_list(stderr);
        return DP_DLQ_EXIT_USAGE;
    }
    if (*stage && !dp_stages_find(stage)) {
        fprintf(stderr, "docpipe dlq list: unknown stage '%s' (see docpipe help)\n", stage);
        return DP_DLQ_EXIT_USAGE;
    }
    PGconn *db;
    if (connect_db(cfg, "list", &db))
        return 1;
    char since_ts[128];
    int rc = since ? dp_dlq_instant(db, "list", "--since", since, 0, since_ts,
                                    sizeof(since_ts)) : 0;
    if (rc) {
        PQfinish(db);
        return rc;
    }
    const char *params[4] = {cfg->topic_prefix, stage, since ? since_ts : NULL,
                             all ? "1" : "0"};
    PGresult *res = PQexecParams(db,
        "SELECT " DL_COLUMNS " FROM docpipe.dp_dead_letters d"
        " WHERE starts_with(d.topic, $1) AND ($2 = '' OR d.stage = $2)"
        " AND ($3::timestamptz IS NULL OR d.created_at >= $3::timestamptz)"
        " AND ($4::int = 1 OR d.resolved_at IS NULL)"
        " ORDER BY d.created_at, d.id", 4, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read dead letters", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq list: %s\n", err);
        PQfinish(db);
        return 1;
    }
    json_t *rows = json_array();
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(rows, dead_letter_json(res, r));
    PQclear(res);
    PQfinish(db);
    if (json)
        rc = print_json(rows, JSON_INDENT(2));
    else
        print_columns(rows);
    fprintf(stderr, "docpipe dlq list: %zu dead letter(s)%s\n", json_array_size(rows),
            all ? "" : " not yet resolved");
    json_decref(rows);
    return rc || fflush(stdout) != 0;
}

/* ---- show ---------------------------------------------------------------- */

static void usage_show(FILE *out)
{
    fprintf(out,
        "usage: docpipe dlq show [--json] ID\n"
        "  every recorded fact of dead letter ID, the headers its copy on the\n"
        "  dead-letter topic carries, its key, and its value decoded from Avro\n"
        "  --json   one JSON object instead of text\n");
}

static char *base64(const void *data, size_t len)
{
    char *out = malloc(4 * ((len + 2) / 3) + 1);
    EVP_EncodeBlock((unsigned char *)out, data, (int)len);
    return out;
}

/* Bytes as {"text": ...} when they are printable UTF-8, else
 * {"base64": ...}. */
static json_t *bytes_json(const char *data, size_t len)
{
    int printable = 1;
    for (size_t i = 0; i < len && printable; i++)
        printable = (unsigned char)data[i] >= 0x20 && data[i] != 0x7f;
    json_t *text = printable ? json_stringn(data, len) : NULL;
    if (text)
        return json_pack("{s:o}", "text", text);
    char *b = base64(data, len);
    json_t *o = json_pack("{s:s}", "base64", b);
    free(b);
    return o;
}

/* The value: decoded with the writer schema its fingerprint names, or its
 * bytes in base64 with the reason it could not be. */
static json_t *value_json(dp_avro_registry *reg, const char *data, size_t len)
{
    char err[512] = "";
    uint64_t fp = 0;
    avro_schema_t schema = NULL;
    avro_value_t v = {0};
    char fps[32] = "";
    if (dp_avro_peek_fingerprint(data, len, &fp, err, sizeof(err)) == DP_OK) {
        snprintf(fps, sizeof(fps), "%016" PRIx64, fp);
        if (!(schema = dp_avro_registry_schema(reg, fp)))
            snprintf(err, sizeof(err), "no schema in the schema folder has"
                     " fingerprint %s", fps);
    }
    if (schema && dp_avro_decode(reg, fp, data, len, &v, err, sizeof(err)) == DP_OK) {
        char *text = NULL;
        json_t *decoded = NULL;
        if (avro_value_to_json(&v, 1, &text) == 0)
            decoded = json_loads(text, JSON_DECODE_ANY, NULL);
        free(text);
        avro_value_decref(&v);
        if (decoded) {
            const char *ns = avro_schema_namespace(schema);
            char name[512];
            snprintf(name, sizeof(name), "%s%s%s", ns ? ns : "", ns ? "." : "",
                     avro_schema_name(schema));
            return json_pack("{s:s, s:s, s:o}", "schema", name, "fingerprint", fps,
                             "json", decoded);
        }
        snprintf(err, sizeof(err), "decoded, but not expressible as JSON");
    }
    char *b = base64(data, len);
    json_t *o = json_pack("{s:s, s:s}", "base64", b, "note", err);
    if (*fps)
        json_object_set_new(o, "fingerprint", json_string(fps));
    free(b);
    return o;
}

static dp_avro_registry *load_schemas(const char *dir, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        snprintf(err, errlen, "open %s: %m", dir);
        return NULL;
    }
    dp_avro_registry *reg = dp_avro_registry_new();
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        if (len < 6 || strcmp(de->d_name + len - 5, ".avsc") != 0)
            continue;
        char path[4096];
        uint64_t fp;
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        if (dp_avro_registry_add_file(reg, path, &fp, err, errlen)) {
            closedir(d);
            dp_avro_registry_free(reg);
            return NULL;
        }
    }
    closedir(d);
    return reg;
}

static void add_header(json_t *h, const char *name, json_t *value)
{
    json_array_append_new(h, json_pack("{s:s, s:o}", "name", name, "value", value));
}

/* The headers produce_dead_letter (consumer/runtime.c) sent with the dead
 * letter, in its order, from the facts the row holds. */
static json_t *headers_json(PGresult *res)
{
    json_t *h = json_array();
    char event[2048];
    /* Dead letters of releases before commit visibility have no attempt. */
    if (!PQgetisnull(res, 0, C_ATTEMPT)) {
        add_header(h, "docpipe-attempt", col_json(res, 0, C_ATTEMPT));
        snprintf(event, sizeof(event), "%s/%s/%s", val(res, 0, C_GROUP),
                 val(res, 0, C_TOPIC), val(res, 0, C_PART));
        add_header(h, "docpipe-stream", json_text(event, strlen(event)));
    }
    snprintf(event, sizeof(event), "%s/%s/%s/%s:dlq", val(res, 0, C_GROUP),
             val(res, 0, C_TOPIC), val(res, 0, C_PART), val(res, 0, C_OFFSET));
    add_header(h, "docpipe-event-id", json_text(event, strlen(event)));
    add_header(h, "docpipe-stage", col_json(res, 0, C_STAGE));
    add_header(h, "docpipe-group", col_json(res, 0, C_GROUP));
    add_header(h, "docpipe-original-topic", col_json(res, 0, C_TOPIC));
    add_header(h, "docpipe-original-partition", col_json(res, 0, C_PART));
    add_header(h, "docpipe-original-offset", col_json(res, 0, C_OFFSET));
    if (!PQgetisnull(res, 0, C_RECORD_TS))
        add_header(h, "docpipe-original-timestamp", col_json(res, 0, C_RECORD_TS));
    if (!PQgetisnull(res, 0, C_KEY)) {
        json_t *k = bytes_json(PQgetvalue(res, 0, C_KEY), (size_t)PQgetlength(res, 0, C_KEY));
        json_t *text = json_object_get(k, "text");
        add_header(h, "docpipe-original-key", text ? json_incref(text) : json_incref(k));
        json_decref(k);
    }
    add_header(h, "docpipe-attempts", col_json(res, 0, C_ATTEMPTS));
    add_header(h, "docpipe-error-category", col_json(res, 0, C_CATEGORY));
    add_header(h, "docpipe-error-message", col_json(res, 0, C_ERROR));
    add_header(h, "docpipe-first-failure", col_json(res, 0, C_FIRST));
    add_header(h, "docpipe-last-failure", col_json(res, 0, C_LAST));
    add_header(h, "docpipe-correlation-id", col_json(res, 0, C_CORR));
    return h;
}

static json_t *redrives_json(PGresult *res)
{
    json_t *a = json_array();
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(a, json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}",
            "redrive_id", col_json(res, r, 0), "state", col_json(res, r, 1),
            "topic", col_json(res, r, 2), "partition", col_int(res, r, 3),
            "offset", col_int(res, r, 4), "started_at", col_json(res, r, 5),
            "finished_at", col_json(res, r, 6)));
    return a;
}

static void print_field(const char *name, const char *value)
{
    char *v = strdup(value && *value ? value : "-");
    one_line(v);
    printf("%-18s %s\n", name, v);
    free(v);
}

static void print_int_field(const char *name, json_t *v)
{
    char buf[32];
    snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    print_field(name, buf);
}

/* Bytes printed as bytes_json made them: text, or base64 said so. */
static void print_bytes(const char *name, json_t *b)
{
    if (json_is_null(b) || !b) {
        print_field(name, "(null)");
        return;
    }
    const char *text = json_string_value(json_object_get(b, "text"));
    char *line = NULL;
    if (!text && asprintf(&line, "(not printable, base64) %s",
                          json_string_value(json_object_get(b, "base64"))) < 0)
        abort();
    print_field(name, text ? text : line);
    free(line);
}

static void print_show(json_t *o)
{
    char buf[2048];
    print_int_field("id", json_object_get(o, "id"));
    print_field("stage", jstr(o, "stage"));
    print_field("group", jstr(o, "group"));
    snprintf(buf, sizeof(buf), "%s/%" JSON_INTEGER_FORMAT "/%" JSON_INTEGER_FORMAT,
             jstr(o, "topic"), json_integer_value(json_object_get(o, "partition")),
             json_integer_value(json_object_get(o, "offset")));
    print_field("source", buf);
    print_field("dead-letter topic", jstr(o, "dlq_topic"));
    print_field("category", jstr(o, "category"));
    print_int_field("attempts", json_object_get(o, "attempts"));
    print_field("error", jstr(o, "error"));
    print_field("correlation id", jstr(o, "correlation_id"));
    print_field("record time", jstr(o, "record_timestamp"));
    print_field("first failure", jstr(o, "first_failure"));
    print_field("last failure", jstr(o, "last_failure"));
    print_field("recorded", jstr(o, "created_at"));
    if (json_is_true(json_object_get(o, "resolved")))
        snprintf(buf, sizeof(buf), "%s at %s", jstr(o, "resolution"),
                 jstr(o, "resolved_at"));
    else if (strcmp(jstr(o, "state"), "sending") == 0)
        snprintf(buf, sizeof(buf), "unresolved, a redrive interrupted while sending"
                 " (the next redrive finds out whether it was sent)");
    else
        snprintf(buf, sizeof(buf), "unresolved");
    print_field("state", buf);
    size_t i;
    json_t *r;
    json_array_foreach(json_object_get(o, "redrives"), i, r) {
        json_t *off = json_object_get(r, "offset");
        char at[64] = "";
        if (json_is_integer(off))
            snprintf(at, sizeof(at), "/%" JSON_INTEGER_FORMAT, json_integer_value(off));
        snprintf(buf, sizeof(buf), "%s %s to %s/%" JSON_INTEGER_FORMAT "%s, %s .. %s",
                 jstr(r, "redrive_id"), jstr(r, "state"), jstr(r, "topic"),
                 json_integer_value(json_object_get(r, "partition")), at,
                 jstr(r, "started_at"), jstr(r, "finished_at"));
        print_field("redrive", buf);
    }
    printf("headers (as sent to %s):\n", jstr(o, "dlq_topic"));
    json_array_foreach(json_object_get(o, "headers"), i, r) {
        json_t *v = json_object_get(r, "value");
        char *line = NULL;
        if (json_is_string(v))
            line = strdup(json_string_value(v));
        else if (json_is_null(v))
            line = strdup("(null)");
        else if (asprintf(&line, "(not printable, base64) %s",
                          json_string_value(json_object_get(v, "base64"))) < 0)
            abort();
        one_line(line);
        printf("  %s: %s\n", jstr(r, "name"), line);
        free(line);
    }
    print_bytes("key", json_object_get(o, "key"));
    json_t *v = json_object_get(o, "value");
    json_t *decoded = json_object_get(v, "json");
    if (decoded) {
        snprintf(buf, sizeof(buf), "Avro %s (writer schema fingerprint %s):",
                 jstr(v, "schema"), jstr(v, "fingerprint"));
        print_field("value", buf);
        print_json(decoded, JSON_INDENT(2));
    } else if (v && !json_is_null(v)) {
        snprintf(buf, sizeof(buf), "not decodable (%s); its bytes in base64:",
                 jstr(v, "note"));
        print_field("value", buf);
        printf("%s\n", jstr(v, "base64"));
    } else {
        print_field("value", "(null)");
    }
}

static int cmd_show(const dp_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int json = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h': usage_show(stdout); return 0;
        default: usage_show(stderr); return DP_DLQ_EXIT_USAGE;
        }
    }
    if (optind != argc - 1 || dp_dlq_parse_id(argv[optind])) {
        if (optind < argc)
            fprintf(stderr, "docpipe dlq show: name one dead letter by its id"
                    " (a number, see docpipe dlq list)\n");
        usage_show(stderr);
        return DP_DLQ_EXIT_USAGE;
    }
    const char *id = argv[optind];
    char err[1024];
    dp_avro_registry *reg = load_schemas(cfg->schema_dir, err, sizeof(err));
    if (!reg) {
        fprintf(stderr, "docpipe dlq show: schemas: %s\n", err);
        return 1;
    }
    PGconn *db;
    if (connect_db(cfg, "show", &db)) {
        dp_avro_registry_free(reg);
        return 1;
    }
    const char *params[2] = {id, cfg->topic_prefix};
    /* Binary results: text columns arrive as their bytes, bytea as its. */
    PGresult *res = PQexecParams(db,
        "SELECT " DL_COLUMNS ", d.record_key, d.record_value, d.attempt"
        " FROM docpipe.dp_dead_letters d"
        " WHERE d.id = $1::bigint AND starts_with(d.topic, $2)",
        2, NULL, params, NULL, NULL, 1);
    PGresult *led = NULL;
    json_t *o = NULL;
    int rc = 1;
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read the dead letter", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq show: %s\n", err);
        res = NULL;
        goto out;
    }
    if (PQntuples(res) == 0) {
        fprintf(stderr, "docpipe dlq show: no dead letter %s (of topic prefix '%s')\n",
                id, cfg->topic_prefix);
        goto out;
    }
    led = PQexecParams(db,
        "SELECT redrive_id::text, state, topic, partition::text,"
        " coalesce(sent_offset::text, ''), " ISO("started_at") ", " ISO("finished_at")
        " FROM docpipe.dp_dlq_redrives WHERE dead_letter_id = $1::bigint"
        " ORDER BY started_at", 1, NULL, params, NULL, NULL, 0);
    if (dp_pg_check(db, led, PGRES_TUPLES_OK, "read its redrives", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq show: %s\n", err);
        led = NULL;
        goto out;
    }
    o = dead_letter_json(res, 0);
    json_object_set_new(o, "redrives", redrives_json(led));
    json_object_set_new(o, "headers", headers_json(res));
    json_object_set_new(o, "key", PQgetisnull(res, 0, C_KEY) ? json_null()
        : bytes_json(PQgetvalue(res, 0, C_KEY), (size_t)PQgetlength(res, 0, C_KEY)));
    json_object_set_new(o, "value", PQgetisnull(res, 0, C_VALUE) ? json_null()
        : value_json(reg, PQgetvalue(res, 0, C_VALUE), (size_t)PQgetlength(res, 0, C_VALUE)));
    rc = json ? print_json(o, JSON_INDENT(2)) : (print_show(o), 0);
    rc |= fflush(stdout) != 0;
out:
    json_decref(o);
    PQclear(led);
    PQclear(res);
    PQfinish(db);
    dp_avro_registry_free(reg);
    return rc;
}

/* ---- purge --------------------------------------------------------------- */

static void usage_purge(FILE *out)
{
    fprintf(out,
        "usage: docpipe dlq purge --older-than DURATION|T [--include-unresolved] [--dry-run]\n"
        "  deletes the dead letters recorded before T, or more than DURATION ago\n"
        "  (\"30 days\", \"12h\", \"P2W\"), with their redrive ledger; prints how many\n"
        "  --include-unresolved   unresolved ones too (default: only those already\n"
        "                         redriven); never one whose redrive is in doubt\n"
        "  --dry-run              count them, delete nothing\n");
}

static int cmd_purge(const dp_config *cfg, int argc, char **argv)
{
    static const struct option opts[] = {
        {"older-than", required_argument, NULL, 'o'},
        {"include-unresolved", no_argument, NULL, 'u'},
        {"dry-run", no_argument, NULL, 'n'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    const char *older = NULL;
    int unresolved = 0, dry = 0, c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': older = optarg; break;
        case 'u': unresolved = 1; break;
        case 'n': dry = 1; break;
        case 'h': usage_purge(stdout); return 0;
        default: usage_purge(stderr); return DP_DLQ_EXIT_USAGE;
        }
    }
    if (optind < argc)
        fprintf(stderr, "docpipe dlq purge: unexpected argument '%s'\n", argv[optind]);
    else if (!older)
        fprintf(stderr, "docpipe dlq purge: --older-than is required\n");
    if (!older || optind < argc) {
        usage_purge(stderr);
        return DP_DLQ_EXIT_USAGE;
    }
    PGconn *db;
    if (connect_db(cfg, "purge", &db))
        return 1;
    char cutoff[128];
    int rc = dp_dlq_instant(db, "purge", "--older-than", older, 1, cutoff, sizeof(cutoff));
    if (rc == 0 && !dry)
        rc = dp_dlq_lock(db, "purge", cfg->topic_prefix);
    if (rc) {
        PQfinish(db);
        return rc;
    }
    /* A dead letter whose redrive is 'sending' stays whatever the flags: its
     * ledger row is what tells the next redrive whether it was sent. */
    const char *params[3] = {cfg->topic_prefix, cutoff, unresolved ? "1" : "0"};
    PGresult *res = dry
        ? PQexecParams(db,
            "SELECT count(*)::text, count(*) FILTER (WHERE d.resolved_at IS NULL)::text"
            " FROM docpipe.dp_dead_letters d"
            " WHERE starts_with(d.topic, $1) AND d.created_at < $2::timestamptz"
            " AND ($3::int = 1 OR d.resolved_at IS NOT NULL)"
            " AND NOT EXISTS (SELECT 1 FROM docpipe.dp_dlq_redrives l"
            "   WHERE l.dead_letter_id = d.id AND l.state = 'sending')",
            3, NULL, params, NULL, NULL, 0)
        : PQexecParams(db,
            "WITH gone AS (DELETE FROM docpipe.dp_dead_letters d"
            " WHERE starts_with(d.topic, $1) AND d.created_at < $2::timestamptz"
            " AND ($3::int = 1 OR d.resolved_at IS NOT NULL)"
            " AND NOT EXISTS (SELECT 1 FROM docpipe.dp_dlq_redrives l"
            "   WHERE l.dead_letter_id = d.id AND l.state = 'sending')"
            " RETURNING d.resolved_at IS NULL AS unresolved)"
            " SELECT count(*)::text, count(*) FILTER (WHERE unresolved)::text FROM gone",
            3, NULL, params, NULL, NULL, 0);
    char err[1024];
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "purge dead letters", err, sizeof(err))) {
        fprintf(stderr, "docpipe dlq purge: %s\n", err);
        PQfinish(db);
        return 1;
    }
    printf("%s dead letter(s) %s\n", PQgetvalue(res, 0, 0),
           dry ? "would be purged" : "purged");
    fprintf(stderr, "docpipe dlq purge: recorded before %s, %s of them unresolved\n",
            cutoff, PQgetvalue(res, 0, 1));
    PQclear(res);
    PQfinish(db);
    return fflush(stdout) != 0;
}

/* ---- dispatch ------------------------------------------------------------ */

static void usage_dlq(FILE *out)
{
    fprintf(out,
        "usage: docpipe dlq <command> [options]   (docpipe dlq <command> --help)\n"
        "  list [--stage S] [--since T] [--unresolved|--all] [--json]\n"
        "                      dead letters: id, stage, source, error, state\n"
        "  show [--json] ID    every fact of one, its headers, its value as JSON\n"
        "  redrive [--dry-run] [--batch N] ID... | --all | --stage S [--since T]\n"
        "                      send the original records back to their stage's\n"
        "                      input topic, each exactly once, and resolve them\n"
        "  purge --older-than DURATION|T [--include-unresolved] [--dry-run]\n"
        "                      delete old (by default resolved) dead letters\n"
        "Dead letters of the configured topic prefix only (DOCPIPE_TOPIC_PREFIX).\n");
}

int dp_cmd_dlq(const dp_config *cfg, volatile sig_atomic_t *stop, int argc, char **argv)
{
    if (argc < 1) {
        usage_dlq(stderr);
        return DP_DLQ_EXIT_USAGE;
    }
    const char *sub = argv[0];
    if (strcmp(sub, "help") == 0 || strcmp(sub, "--help") == 0 ||
        strcmp(sub, "-h") == 0) {
        usage_dlq(stdout);
        return 0;
    }
    /* getopt_long reads argv from index 1 and names argv[0] in its
     * messages: "docpipe dlq list: unrecognized option ...". */
    char prog[64];
    snprintf(prog, sizeof(prog), "docpipe dlq %s", sub);
    argv[0] = prog;
    optind = 0; /* glibc: start afresh */
    if (strcmp(sub, "list") == 0)
        return cmd_list(cfg, argc, argv);
    if (strcmp(sub, "show") == 0)
        return cmd_show(cfg, argc, argv);
    if (strcmp(sub, "redrive") == 0)
        return dp_dlq_redrive(cfg, stop, argc, argv);
    if (strcmp(sub, "purge") == 0)
        return cmd_purge(cfg, argc, argv);
    fprintf(stderr, "docpipe dlq: unknown command '%s'\n", sub);
    usage_dlq(stderr);
    return DP_DLQ_EXIT_USAGE;
}

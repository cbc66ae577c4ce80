/* retry_select: docpipe retry's selection and its chunks (see retry_select.h). */
#include "retry_select.h"

#include <ctype.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#include "chunker.h"

void dp_retry_usage(FILE *out)
{
    fprintf(out,
        "usage: docpipe retry [--from parse|chunk|embed] [--dry-run] [--batch N]\n"
        "                     [--restart] <which documents>\n\n"
        "Sends failed documents through the pipeline again, from the stage that\n"
        "failed, after a fix; with --from, complete ones too, from that stage.\n\n"
        "Which documents (at least one of these; filters combine):\n"
        "  <document>...    these documents; - reads ids from standard input,\n"
        "                   one per line\n"
        "  --all            every failed document (with --from: every complete or\n"
        "                   failed one)\n"
        "  --user UUID      the user's documents\n"
        "  --state S        documents in state S (repeatable): failed_parse,\n"
        "                   failed_chunking, failed_embedding; with --from also\n"
        "                   complete\n"
        "  --since T        whose job reached its state (failed, complete) at or\n"
        "                   after T, a PostgreSQL timestamp ('2024-05-01 12:00+02',\n"
        "                   'yesterday'); the job's updated_at\n"
        "  --until T        ... before T\n\n"
        "How:\n"
        "  --from STAGE     start at parse, chunk or embed, complete documents too\n"
        "  --batch N        documents per transaction (default %d)\n"
        "  --dry-run        list what would be sent; change nothing\n"
        "  --restart        abandon the unfinished run of this selection and start\n"
        "                   over\n\n"
        "Documents go in chunks of N, in document id order: each chunk is locked,\n"
        "moved back, recorded and published in its own transaction, committed\n"
        "once Kafka has acknowledged its records. SIGINT or SIGTERM stops after\n"
        "the chunk in hand; the same command again continues where the run\n"
        "stopped. Prints document, state and stage of each document sent (once\n"
        "its chunk committed); progress on stderr. Exit status: 0 done, 1 a\n"
        "failure or stopped, 2 a usage error.\n",
        DP_RETRY_DEFAULT_BATCH);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "docpipe retry: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (docpipe retry --help)\n");
    return 2;
}

/* Adds one document id, canonical; 0, or -1 if text is not one. */
static int add_id(dp_retry_sel *s, size_t *cap, const char *text)
{
    uint8_t raw[16];
    if (dp_uuid_parse(text, raw) != 0)
        return -1;
    if (s->nids == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        s->ids = realloc(s->ids, *cap * sizeof(*s->ids));
    }
    dp_uuid_format(raw, s->ids[s->nids++]);
    return 0;
}

/* Ids one per line (surrounding blanks ignored, empty lines skipped). */
static int read_ids(dp_retry_sel *s, size_t *cap, FILE *in)
{
    char *line = NULL;
    size_t len = 0;
    long lineno = 0;
    int rc = 0;
    while (getline(&line, &len, in) >= 0) {
        lineno++;
        char *p = line, *e = line + strlen(line);
        while (p < e && isspace((unsigned char)*p))
            p++;
        while (e > p && isspace((unsigned char)e[-1]))
            *--e = '\0';
        if (!*p)
            continue;
        if (add_id(s, cap, p) != 0) {
            char at[32];
            snprintf(at, sizeof(at), "%ld", lineno);
            fprintf(stderr, "docpipe retry: standard input, line %s: '%s' is not"
                    " a document id\n", at, p);
            rc = 2;
            break;
        }
    }
    free(line);
    return rc;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int dp_retry_sel_parse(dp_retry_sel *s, int argc, char **argv, FILE *in)
{
    memset(s, 0, sizeof(*s));
    s->batch = DP_RETRY_DEFAULT_BATCH;
    enum { O_ALL = 256, O_STATE, O_SINCE, O_UNTIL, O_BATCH, O_RESTART, O_DRY,
           O_USER, O_FROM, O_HELP };
    static const struct option opts[] = {
        {"all", no_argument, NULL, O_ALL},
        {"state", required_argument, NULL, O_STATE},
        {"since", required_argument, NULL, O_SINCE},
        {"until", required_argument, NULL, O_UNTIL},
        {"batch", required_argument, NULL, O_BATCH},
        {"restart", no_argument, NULL, O_RESTART},
        {"dry-run", no_argument, NULL, O_DRY},
        {"user", required_argument, NULL, O_USER},
        {"from", required_argument, NULL, O_FROM},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0}};
    /* getopt_long wants the program's name first; it permutes its own
     * copy of the vector, so options and ids may come in any order. */
    char **av = calloc((size_t)argc + 2, sizeof(char *));
    av[0] = "docpipe retry";
    memcpy(av + 1, argv, (size_t)argc * sizeof(char *));
    optind = 0;
    opterr = 1;
    int c, rc = 0;
    uint8_t raw[16];
    char *end;
    while (rc == 0 && (c = getopt_long(argc + 1, av, "", opts, NULL)) != -1) {
        switch (c) {
        case O_ALL: s->all = 1; break;
        case O_RESTART: s->restart = 1; break;
        case O_DRY: s->dry_run = 1; break;
        case O_FROM: s->from = optarg; break;
        case O_SINCE: s->since = optarg; break;
        case O_UNTIL: s->until = optarg; break;
        case O_HELP:
            dp_retry_usage(stdout);
            rc = DP_RETRY_HELP;
            break;
        case O_USER:
            if (dp_uuid_parse(optarg, raw) != 0)
                rc = usage_error("'%s' is not a user id", optarg);
            else
                dp_uuid_format(raw, s->user);
            break;
        case O_STATE:
            if (s->nstates == DP_RETRY_MAX_STATES)
                rc = usage_error("too many --state options (at %s)", optarg);
            else
                s->states[s->nstates++] = optarg;
            break;
        case O_BATCH:
            s->batch = strtol(optarg, &end, 10);
            if (*end || end == optarg || s->batch < 1 || s->batch > 100000)
                rc = usage_error("--batch takes a number of documents from 1 to"
                                 " 100000, not '%s'", optarg);
            break;
        default: /* getopt_long said what was wrong */
            fprintf(stderr, "docpipe retry: see docpipe retry --help\n");
            rc = 2;
            break;
        }
    }
    size_t cap = 0;
    int stdin_read = 0;
    for (int i = optind; rc == 0 && i < argc + 1; i++) {
        s->named = 1;
        if (strcmp(av[i], "-") == 0) {
            if (stdin_read++)
                rc = usage_error("%s reads standard input once", "-");
            else
                rc = read_ids(s, &cap, in);
        } else if (add_id(s, &cap, av[i]) != 0)
            rc = usage_error("'%s' is not a document id", av[i]);
    }
    free(av);
    if (rc)
        return rc;

    int filters = s->user[0] || s->nstates || s->since || s->until;
    if (s->all && (filters || s->named))
        return usage_error("%s selects every document: leave out the documents,"
                           " --user, --state, --since and --until, or --all", "--all");
    if (!s->all && !filters && !s->named)
        return usage_error("%s", "say which documents: name them (or - to read ids"
                           " from standard input), choose them with --user, --state,"
                           " --since or --until, or give --all for every one");
    if (s->restart && s->dry_run)
        return usage_error("%s changes nothing: --restart does not go with it",
                           "--dry-run");
    if (s->nids)
        qsort(s->ids, s->nids, sizeof(*s->ids), cmp_id);
    size_t n = 0;
    for (size_t i = 0; i < s->nids; i++)
        if (n == 0 || strcmp(s->ids[n - 1], s->ids[i]) != 0)
            memmove(s->ids[n++], s->ids[i], sizeof(*s->ids));
    s->nids = n;
    qsort(s->states, (size_t)s->nstates, sizeof(s->states[0]), cmp_str);
    int k = 0;
    for (int i = 0; i < s->nstates; i++)
        if (k == 0 || strcmp(s->states[k - 1], s->states[i]) != 0)
            s->states[k++] = s->states[i];
    s->nstates = k;
    return 0;
}

void dp_retry_sel_free(dp_retry_sel *s)
{
    free(s->ids);
    s->ids = NULL;
    s->nids = 0;
}

void dp_retry_sel_key(const dp_retry_sel *s, dp_buf *out)
{
    dp_buf_appendf(out, "from=%s", s->from ? s->from : "");
    if (s->all)
        dp_buf_appendf(out, " all");
    if (s->user[0])
        dp_buf_appendf(out, " user=%s", s->user);
    for (int i = 0; i < s->nstates; i++)
        dp_buf_appendf(out, "%s%s", i ? "," : " states=", s->states[i]);
    if (s->since)
        dp_buf_appendf(out, " since=%s", s->since);
    if (s->until)
        dp_buf_appendf(out, " until=%s", s->until);
    if (s->named) {
        char sha[DP_SHA256_HEX_SIZE] = "";
        dp_sha256_hex(s->nids ? (const void *)s->ids : "", s->nids * sizeof(*s->ids),
                      sha);
        dp_buf_appendf(out, " ids=%zu:%s", s->nids, sha);
    }
}

/* Columns of the chunk queries, in order. */
enum { C_DOC, C_JOB, C_STATUS, C_RAW, C_MIME, C_PARSED, C_PSHA, C_VERSION,
       C_CORR, C_CHUNKS, C_GEN };

void dp_retry_doc_read(const PGresult *res, int row, dp_retry_doc *d)
{
#define COL(c) PQgetvalue(res, row, (c))
#define COL_OR_NULL(c) (PQgetisnull(res, row, (c)) ? NULL : COL(c))
    d->document_id = COL(C_DOC);
    d->job_id = COL(C_JOB);
    d->status = COL(C_STATUS);
    d->raw_path = COL(C_RAW);
    d->mime = COL(C_MIME);
    d->parsed_path = COL_OR_NULL(C_PARSED);
    d->parsed_sha256 = COL_OR_NULL(C_PSHA);
    d->chunks_version = COL(C_VERSION);
    d->correlation_id = COL(C_CORR);
    d->chunks = strtoll(COL(C_CHUNKS), NULL, 10);
    d->generation = strtoll(COL(C_GEN), NULL, 10);
#undef COL
#undef COL_OR_NULL
}

/* The selected columns of a chunk; $6 is the chunker's name. */
#define CHUNK_COLUMNS                                                        \
    "SELECT j.document_id, j.job_id, j.status, j.raw_path, d.mime,"          \
    "   j.parsed_path, j.parsed_sha256, j.chunks_version, j.correlation_id," \
    "   (SELECT count(*) FROM upload_pipeline.document_chunk_buffer c"       \
    "     WHERE c.document_id = j.document_id AND c.chunker_name = $6"       \
    "     AND c.chunker_version = j.chunks_version), j.generation"           \
    " FROM upload_pipeline.upload_jobs j"                                    \
    " JOIN upload_pipeline.documents d USING (document_id)"
/* The filters every query shares: $1 states (NULL: any), $2 user ("": any),
 * $3 since, $4 until (NULL: none). */
#define FILTERS                                                              \
    " ($1::text[] IS NULL OR j.status = ANY ($1::text[]))"                   \
    " AND ($2 = '' OR j.user_id = nullif($2, '')::uuid)"                     \
    " AND ($3::timestamptz IS NULL OR j.updated_at >= $3::timestamptz)"      \
    " AND ($4::timestamptz IS NULL OR j.updated_at < $4::timestamptz)"

/* The parameters $1..$4 (p[0..3]); the states array is built in buf. */
static void filter_params(const dp_retry_sel *s, const dp_retry_bounds *b,
                          dp_buf *buf, const char **p)
{
    dp_buf_reset(buf);
    dp_buf_append(buf, "{", 1);
    for (int i = 0; i < s->nstates; i++) {
        if (i)
            dp_buf_append(buf, ",", 1);
        dp_buf_array_text(buf, s->states[i], strlen(s->states[i]));
    }
    dp_buf_append(buf, "}", 1);
    p[0] = s->nstates ? buf->data : NULL;
    p[1] = s->user;
    p[2] = b->since && *b->since ? b->since : NULL;
    p[3] = b->until && *b->until ? b->until : NULL;
}

/* The first named id after `after` (nids if none). */
static size_t first_after(const dp_retry_sel *s, const char *after)
{
    size_t lo = 0, hi = s->nids;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(s->ids[mid], after) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

PGresult *dp_retry_sel_chunk(PGconn *db, const dp_retry_sel *s,
                             const dp_retry_bounds *b, char last[DP_UUID_STR_SIZE],
                             int *end, size_t *first_name, size_t *nnames,
                             char *err, size_t errlen)
{
    dp_buf states = {0}, ids = {0};
    const char *p[7];
    filter_params(s, b, &states, p);
    p[5] = DP_CHUNKER_NAME;
    char limit[32];
    PGresult *res;
    last[0] = '\0';
    *first_name = *nnames = 0;
    if (s->named) {
        size_t from = first_after(s, b->after), n = s->nids - from;
        if (n > (size_t)s->batch)
            n = (size_t)s->batch;
        dp_buf_append(&ids, "{", 1);
        for (size_t i = 0; i < n; i++)
            dp_buf_appendf(&ids, "%s%s", i ? "," : "", s->ids[from + i]);
        dp_buf_append(&ids, "}", 1);
        p[4] = ids.data;
        *first_name = from;
        *nnames = n;
        *end = from + n == s->nids;
        if (n)
            snprintf(last, DP_UUID_STR_SIZE, "%s", s->ids[from + n - 1]);
        res = dp_pg_execp(db, CHUNK_COLUMNS
            " WHERE j.document_id = ANY ($5::uuid[]) AND" FILTERS
            " ORDER BY j.document_id FOR UPDATE OF j", 6, NULL, p, NULL, NULL, 0);
    } else {
        /* The documents' side starts at the cursor too: a merge join of the
         * two tables' keys would otherwise read the documents from the
         * first one at every chunk. */
        snprintf(limit, sizeof(limit), "%ld", s->batch);
        p[4] = b->after;
        p[6] = limit;
        res = dp_pg_execp(db, CHUNK_COLUMNS
            " WHERE j.document_id > $5::uuid AND d.document_id > $5::uuid AND"
            FILTERS " ORDER BY j.document_id LIMIT $7::int FOR UPDATE OF j", 7, NULL, p,
            NULL, NULL, 0);
    }
    dp_buf_free(&states);
    dp_buf_free(&ids);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "read the next documents", err,
                    errlen))
        return NULL;
    if (!s->named) {
        int n = PQntuples(res);
        *end = n < s->batch;
        if (n)
            snprintf(last, DP_UUID_STR_SIZE, "%s", PQgetvalue(res, n - 1, C_DOC));
    }
    return res;
}

long long dp_retry_sel_count(PGconn *db, const dp_retry_sel *s,
                             const dp_retry_bounds *b, char *err, size_t errlen)
{
    if (s->named)
        return (long long)(s->nids - first_after(s, b->after));
    dp_buf states = {0};
    const char *p[5];
    filter_params(s, b, &states, p);
    p[4] = b->after;
    PGresult *res = dp_pg_execp(db,
        "SELECT count(*) FROM upload_pipeline.upload_jobs j"
        " WHERE j.document_id > $5::uuid AND" FILTERS,
        5, NULL, p, NULL, NULL, 0);
    dp_buf_free(&states);
    if (dp_pg_check(db, res, PGRES_TUPLES_OK, "count the documents", err, errlen))
        return -1;
    long long n = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return n;
}

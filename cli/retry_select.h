/*
 * retry_select: which documents `docpipe retry` sends again, and the
 * chunks it reads them in.
 *
 * The arguments (getopt_long) become a selection: named documents (as
 * arguments, or "-" for ids one per line on standard input), or filters
 * (--user, --state, --since, --until) that combine, or --all.  Nothing is
 * selected by default: a command without a selector is a usage error, so a
 * typo cannot send every document in the database again.
 *
 * A selection is read in chunks in document id order (keyset pagination):
 * each chunk is the next `batch` documents after the last id of the chunk
 * before, locked FOR UPDATE in that order (the order every stage locks
 * in).  Named documents are sorted and deduplicated first, and a chunk is
 * the next `batch` of them.
 */
#ifndef DP_RETRY_SELECT_H
#define DP_RETRY_SELECT_H

#include <stdio.h>

#include <libpq-fe.h>

#include "ids.h"
#include "pg.h"

#define DP_RETRY_MAX_STATES 8
#define DP_RETRY_DEFAULT_BATCH 500
/* The cursor before the first document: no document id is the nil UUID
 * (submit's ids are UUIDv5, whose version bits are never zero). */
#define DP_RETRY_NIL_ID "00000000-0000-0000-0000-000000000000"

typedef struct dp_retry_sel {
    int dry_run, restart;
    int all;            /* --all: every document the states allow */
    long batch;         /* documents per chunk (transaction) */
    const char *from;   /* --from's stage, as given; NULL: the failed stage */
    char user[DP_UUID_STR_SIZE];           /* "" for every user */
    const char *states[DP_RETRY_MAX_STATES]; /* --state, sorted, unique */
    int nstates;
    const char *since, *until; /* as given, or NULL */
    /* Named documents, canonical (lower case), sorted, unique; owned. */
    char (*ids)[DP_UUID_STR_SIZE];
    size_t nids;
    int named;          /* documents were named (arguments or "-") */
} dp_retry_sel;

/* Parses retry's arguments (argv[0] is the first argument after "retry");
 * "-" reads ids from in.  Returns 0, DP_RETRY_HELP after printing the help
 * on stdout, or 2 after printing a usage error on stderr. */
#define DP_RETRY_HELP 3
int dp_retry_sel_parse(dp_retry_sel *s, int argc, char **argv, FILE *in);
void dp_retry_sel_free(dp_retry_sel *s);
void dp_retry_usage(FILE *out);

/* The selection's identity for its run: a canonical text of everything
 * that chooses documents (not --batch, --dry-run or --restart); the named
 * ids go in as their count and SHA-256. */
void dp_retry_sel_key(const dp_retry_sel *s, dp_buf *out);

/* One selected document, as the stages left its job (pointers into the
 * chunk's result). */
typedef struct dp_retry_doc {
    const char *document_id, *job_id, *status, *raw_path, *mime,
        *parsed_path, *parsed_sha256, /* NULL when not recorded */
        *chunks_version, *correlation_id;
    long long chunks; /* its chunks of the job's chunker version */
    long long generation; /* the job's; the retry starts the next one */
} dp_retry_doc;

void dp_retry_doc_read(const PGresult *res, int row, dp_retry_doc *d);

/* A chunk's bounds: the selection's documents after `after`, up to
 * `batch` of them.  since and until are the resolved bounds ("" for
 * none). */
typedef struct dp_retry_bounds {
    const char *after;
    const char *since, *until;
} dp_retry_bounds;

/* Reads and locks (FOR UPDATE of the jobs) the next chunk, in document id
 * order.  *last gets the id to continue after (the chunk's last row, or
 * for named documents its last name; "" when nothing was left), *end
 * whether the selection ends with this chunk.  For named documents,
 * *first_name and *nnames give the names the chunk covers.  NULL with err
 * set on failure. */
PGresult *dp_retry_sel_chunk(PGconn *db, const dp_retry_sel *s,
                             const dp_retry_bounds *b, char last[DP_UUID_STR_SIZE],
                             int *end, size_t *first_name, size_t *nnames,
                             char *err, size_t errlen);

/* How many documents of the selection lie after b->after (for progress);
 * -1 with err set on failure. */
long long dp_retry_sel_count(PGconn *db, const dp_retry_sel *s,
                             const dp_retry_bounds *b, char *err, size_t errlen);

#endif

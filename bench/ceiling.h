/*
 * ceiling: what the pipeline's data work costs on this machine with no
 * Kafka, no stages and no per-stage transactions, as a raw ceiling to set
 * bench_pipeline's scenario a beside.
 *
 * For every document it does the work the pipeline has to do, once:
 * reads and hashes the file, stores it content-addressed (one fsync pass per
 * group), normalises and hashes the text, chunks it with markdown-simple@1
 * and computes the chunk ids, asks the embedding service for its vectors
 * (the project's libcurl client: base64, vector_sha of every vector), and
 * writes the rows the pipeline leaves behind: the document, its job, its
 * chunks in the chunk buffer, its vectors in the vector buffer, its
 * embedding batch, the final rows of document_chunks and its nine events.
 *
 * What it leaves out is the pipeline's own machinery: Kafka records, a
 * transaction per stage and batch, job-state checks, dead-letter and
 * offset bookkeeping.  Each worker is a process with its own connection
 * and embedding client; it takes every workers-th document, `group` at a
 * time, with all of a group's statements in one transaction and all its
 * embedding requests in flight together.
 */
#ifndef DP_BENCH_CEILING_H
#define DP_BENCH_CEILING_H

#include <stddef.h>

typedef struct ceiling_opts {
    const char *dburl;
    const char *docs_dir;    /* doc-000000.md ... doc-<n-1>.md */
    const char *storage_dir; /* raw files go to <storage_dir>/raw */
    const char *embed_url;
    const char *user;        /* user_id of every row written */
    long n;
    int workers;
    int group;               /* documents per transaction */
} ceiling_opts;

typedef struct ceiling_result {
    long docs, chunks;
    double span_s;           /* first fork to the last worker's exit */
    double docs_s;
    double worker_cpu_s;     /* the worker processes */
    double backend_cpu_s;    /* their PostgreSQL backends (-1 if unknown) */
    double cpu_per_k;        /* for the caller: CPU-s per 1000 documents, all counted */
} ceiling_result;

/* Runs the workers and waits for them; 0 when every document was written,
 * else -1 with the first worker's error in err. */
int ceiling_run(const ceiling_opts *o, ceiling_result *r, char *err, size_t errlen);

#endif

/*
 * support_pipe: the pipeline run as an operator runs it, for the system
 * tests of embedding under real rate limits (test_fair, test_liveness):
 * the local embedding service, stage processes with their own logs,
 * documents written and submitted, and what PostgreSQL and the service
 * say about them.
 */
#ifndef DP_SUPPORT_PIPE_H
#define DP_SUPPORT_PIPE_H

#include <stddef.h>
#include <sys/types.h>

#include "support_env.h"

#define PIPE_MAX_PROCS 8

typedef struct tpipe {
    tenv t;
    char storage[1200];
    char user[64];
    char embed_url[256];
    pid_t embed_pid;
    pid_t procs[PIPE_MAX_PROCS];
    char logs[PIPE_MAX_PROCS][600];
    int nprocs;
    char env_embed[300], env_storage[1300];
} tpipe;

/* Prefix, migrations, topics, storage, a user of its own and the local
 * embedding service. */
void tpipe_setup(tpipe *p, const char *name);
/* Stops every process it started and drops the prefix's topics. */
void tpipe_teardown(tpipe *p);

/* Starts `docpipe run <stages...>` (stages separated by spaces) with the
 * embedding service and storage set and extra "K=V" entries (NULL-
 * terminated, may be NULL); returns its index (its log is logs[index]). */
int tpipe_run(tpipe *p, const char *stages, const char *const *env);
/* SIGTERM to process i, waiting for it; returns its exit status. */
int tpipe_stop(tpipe *p, int i);

/* Writes a markdown file of `lines` lines of `width` characters under
 * dir; heading lines (every line when headings is set) end a chunk. */
void tpipe_write_md(const char *path, long lines, int width, int headings,
                    unsigned seed);
/* `docpipe submit --user` of the files: their document ids, in order,
 * into ids (n of them, 37 bytes each). */
void tpipe_submit(tpipe *p, const char *const *files, size_t n, char (*ids)[40]);

/* A document's job status into out. */
void tpipe_status(tpipe *p, const char *doc, char *out, size_t outlen);
/* One integer from sql with $1 = arg (may be NULL: no parameter). */
long long tpipe_q(tpipe *p, const char *sql, const char *arg);
/* A counter of the embedding service's /admin/stats ("requests", "inputs"). */
long long tpipe_service_count(tpipe *p, const char *name);
/* How many times needle occurs in process i's log. */
int tpipe_log_count(tpipe *p, int i, const char *needle);

/* Seconds on the monotonic clock. */
double tpipe_now(void);

#endif

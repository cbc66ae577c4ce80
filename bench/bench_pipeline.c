/*
 * bench_pipeline: the whole document pipeline, end to end, beside its targets.
 *
 * It writes --docs N markdown documents of about 10 KB (headings and
 * paragraphs, deterministic, every one different) and runs, per scenario,
 * the eight stages as separate processes (`docpipe run <stage>`; embed as
 * K of them) against the local embedding service answering after a fixed
 * delay (docpipe-embedserver --latency-ms L).  Each scenario has its own
 * topic prefix (so fresh topics and consumer groups), storage folder and
 * user id, so nothing is shared or deduplicated between scenarios.  Once
 * every stage holds its partitions (docpipe.dp_offsets) and one warm-up
 * document has gone through, the N files are submitted in one burst
 * (`docpipe submit --user U dir`) and PostgreSQL is polled until every job
 * of U is complete.
 *
 *   a   latency 0 ms, 1 embed instance: the pipeline's own ceiling;
 *   b   latency 1000 ms, 1 embed instance;
 *   c   latency 1000 ms, 1, 2 and 4 embed instances, started only once all
 *       N documents are chunked, so upstream stages cannot starve them: the
 *       embed stage's own throughput, and how it scales.  The instances join
 *       their group before embed-plan queues the first embedding batch, so
 *       each starts on its own share of the backlog.
 *
 * Beside a (first, in the same run) it measures a raw ceiling (ceiling.h):
 * the same documents' files, rows and embedding requests written by a few
 * plain worker processes with no Kafka and no stages, so a's rate can be
 * read as a share of what this machine can do at all.  Every scenario also
 * reports how busy the machine's cores were over its window (/proc/stat):
 * near 100%, more speed or more instances need more cores.
 *
 * What the figures mean:
 *   - end to end: N / (last processing_completed_at - submit start);
 *     chunks the same with the rows of upload_pipeline.document_chunks;
 *   - latency of a document: processing_completed_at (finalize) minus the
 *     moment `docpipe submit` started.  All N are submitted at once, so it
 *     includes waiting behind the rest of the burst: a backlog figure, not
 *     an idle pipeline's;
 *   - per stage: when it finished its last document and the step time per
 *     document (its event minus the previous stage's event, from the
 *     upload_pipeline.events timeline), which shows where documents wait;
 *   - peak memory: VmHWM of every process, read from /proc just before it
 *     is stopped (SIGTERM; each must exit 0); CPU seconds of each process
 *     and, when PostgreSQL runs on this machine, of its database backend.
 *
 * Every child is stopped (SIGTERM, SIGKILL after 30 s), also when a run
 * fails or the benchmark is interrupted; its documents, database rows and
 * topics are removed unless --keep.  Needs Kafka and PostgreSQL
 * (scripts/test-env.sh up), the docpipe binary (--bin) and the embedding
 * service (--embedserver, default next to --bin in tools/).
 */
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "ceiling.h"
#include "ids.h"
#include "pg.h"
#include "topics.h"

#define STOP_GRACE_S 30.0     /* SIGTERM, then SIGKILL after this */
#define JOIN_TIMEOUT_S 90.0   /* stages claiming their partitions */
#define STALL_S 60.0          /* no job moved for this long: give up */
#define MAX_CHILDREN 16
#define DOC_BYTES 10240
#define CEILING_GROUP 16     /* documents per transaction in the raw ceiling */

static const char *bin = "./docpipe";
static const char *embedserver = NULL;
static const char *brokers = "127.0.0.1:39092";
static const char *dburl = "postgresql://postgres@127.0.0.1:55432/docpipe";
static int show_progress = 0;
static int partitions = 4;
static volatile sig_atomic_t interrupted = 0;

/* The stages in pipeline order: process names, consumer groups and the
 * `stage` column of upload_pipeline.events. */
static const char *const stage_names[] = {"intake", "parse", "validate", "chunk",
    "embed-plan", "embed", "gather", "finalize"};
#define N_STAGES 8

static int stage_index(const char *name)
{
    for (int i = 0; i < N_STAGES; i++)
        if (!strcmp(stage_names[i], name))
            return i;
    return -1;
}

/* Job states in pipeline order (the progress line and stall detection). */
static const char *const job_states[] = {"uploaded", "parse_queued", "parsed",
    "parse_validated", "chunking", "chunks_stored", "embedding_queued",
    "embedding_in_progress", "embeddings_stored", "complete", "failed_upload",
    "failed_parse", "failed_chunking", "failed_embedding"};
#define N_STATES 14

typedef struct scenario {
    const char *name;       /* a, b, c1, c2, c4 */
    int latency_ms;
    int instances;          /* embed processes */
    int prefill;            /* embed starts once every document waits for it */
    /* filled in by run_scenario */
    char dir[512], storage[600], logs[600];
    char prefix[96], user[DP_UUID_STR_SIZE], warm_user[DP_UUID_STR_SIZE];
    char embed_url[64];
} scenario;

typedef struct result {
    int ran, ok;
    long complete, failed, chunks;
    double submit_s;        /* how long `docpipe submit` ran */
    double e2e_docs_s, e2e_chunks_s, span_s;
    double embed_docs_s;    /* prefill: over the embed stage's own window */
    long embed_docs;
    double embed_window_s;
    double busy;            /* share of the cores busy over its window, -1 unknown */
    double kafka_cpu_s;     /* the broker's, submit start to the last completion */
    double cpu_per_k;       /* CPU-s per 1000 documents, everything counted */
} result;

/* ---- clocks, /proc ---------------------------------------------------- */

static double now_real(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double load_1min(void)
{
    double l = -1;
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (fscanf(f, "%lf", &l) != 1)
            l = -1;
        fclose(f);
    }
    return l;
}

/* The machine's CPU (/proc/stat), sampled while a scenario runs, to tell
 * how busy the cores were over a window: at 100% the figures are bounded by
 * this machine's cores, not by waiting. */
#define MAX_CPU_SAMPLES 8192
static struct cpu_sample {
    double t;                    /* now_real() */
    unsigned long long idle, total;
} cpu_samples[MAX_CPU_SAMPLES];
static int n_cpu_samples;

static void cpu_sample(void)
{
    FILE *f = fopen("/proc/stat", "r");
    unsigned long long v[8] = {0};
    int got = f ? fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
                         &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) : 0;
    if (f)
        fclose(f);
    if (got < 5 || n_cpu_samples == MAX_CPU_SAMPLES)
        return;
    struct cpu_sample *c = &cpu_samples[n_cpu_samples++];
    c->t = now_real();
    c->idle = v[3] + v[4];       /* idle + iowait */
    c->total = 0;
    for (int k = 0; k < 8; k++)
        c->total += v[k];
}

/* Busy share of all cores between the first sample at or after from and
 * the last at or before to; -1 without two such samples. */
static double cpu_busy(double from, double to)
{
    int a = -1, b = -1;
    for (int k = 0; k < n_cpu_samples; k++) {
        if (a < 0 && cpu_samples[k].t >= from)
            a = k;
        if (cpu_samples[k].t <= to)
            b = k;
    }
    if (a < 0 || b <= a || cpu_samples[b].total == cpu_samples[a].total)
        return -1;
    double total = (double)(cpu_samples[b].total - cpu_samples[a].total);
    double idle = (double)(cpu_samples[b].idle - cpu_samples[a].idle);
    return 1.0 - idle / total;
}

/* The local Kafka broker's process (its command line names kafka.Kafka),
 * 0 if it does not run on this machine: its CPU counts with the
 * pipeline's. */
static pid_t kafka_pid;

static pid_t find_kafka(void)
{
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && !found && (e = readdir(d))) {
        char path[300], cmd[4096];
        if (e->d_name[0] < '1' || e->d_name[0] > '9')
            continue;
        snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
        FILE *f = fopen(path, "rb");
        size_t len = f ? fread(cmd, 1, sizeof(cmd) - 1, f) : 0;
        if (f)
            fclose(f);
        for (size_t k = 0; k < len; k++)
            if (!cmd[k])
                cmd[k] = ' ';
        cmd[len] = '\0';
        if (strstr(cmd, " kafka.Kafka "))
            found = (pid_t)atoi(e->d_name);
    }
    if (d)
        closedir(d);
    return found;
}

static double kafka_cpu(void)
{
    return kafka_pid > 0 ? bench_cpu_seconds(kafka_pid) : -1;
}

static void print_busy(const char *what, double busy)
{
    if (busy >= 0)
        printf("  machine      cores %.0f%% busy %s\n", 100 * busy, what);
}

/* ---- documents -------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static const char *const words[] = {"pipeline", "document", "stage", "kafka",
    "offset", "partition", "consumer", "group", "batch", "record", "schema",
    "chunk", "vector", "embedding", "search", "index", "query", "table",
    "commit", "transaction", "replay", "fence", "epoch", "retry", "backoff",
    "breaker", "letter", "topic", "broker", "leader", "replica", "segment",
    "the", "a", "of", "and", "to", "in", "is", "for", "with", "that", "on",
    "each", "every", "one", "many", "after", "before", "while", "never",
    "always", "stored", "parsed", "validated", "normalised", "hashed",
    "written", "read", "sent", "acknowledged", "rolled", "back", "forward"};
#define N_WORDS (sizeof(words) / sizeof(words[0]))

static void add_words(dp_buf *b, uint64_t *s, int n)
{
    for (int k = 0; k < n; k++)
        dp_buf_appendf(b, "%s%s", k ? " " : "", words[splitmix64(s) % N_WORDS]);
}

/* Document i: a title, then sections of a heading and two to four
 * paragraphs of wrapped lines, until about DOC_BYTES.  The seed and the
 * numbers in title and headings make every document different. */
static void make_document(long i, dp_buf *b)
{
    uint64_t s = 0x5eed0000ULL + (uint64_t)i;
    dp_buf_reset(b);
    dp_buf_appendf(b, "# Benchmark document %06ld: ", i);
    add_words(b, &s, 4);
    dp_buf_append(b, "\n\n", 2);
    for (int sec = 1; b->len < DOC_BYTES - 400; sec++) {
        dp_buf_appendf(b, "## Section %d.%ld ", sec, i);
        add_words(b, &s, 3);
        dp_buf_append(b, "\n\n", 2);
        int paras = 2 + (int)(splitmix64(&s) % 3);
        for (int p = 0; p < paras && b->len < DOC_BYTES - 100; p++) {
            int lines = 2 + (int)(splitmix64(&s) % 4);
            for (int l = 0; l < lines; l++) {
                add_words(b, &s, 8 + (int)(splitmix64(&s) % 5));
                dp_buf_append(b, l + 1 < lines ? "\n" : ".\n\n", l + 1 < lines ? 1 : 3);
            }
        }
    }
}

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

static int make_documents(const char *dir, long n, long first)
{
    dp_buf b = {0};
    char path[PATH_MAX];
    int rc = mkdir(dir, 0755);
    for (long i = 0; rc == 0 && i < n; i++) {
        make_document(first + i, &b);
        snprintf(path, sizeof(path), "%s/doc-%06ld.md", dir, first + i);
        rc = write_file(path, b.data, b.len);
    }
    dp_buf_free(&b);
    return rc;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

static void rm_tree(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- child processes -------------------------------------------------- */

/* Every process the benchmark started and has not reaped yet.  kids[0] is
 * the embedding service, then the stages in pipeline order. */
typedef struct child {
    char name[24];
    pid_t pid;              /* 0 once reaped */
    int status;             /* wait status once reaped */
    long hwm_kb;            /* largest VmHWM seen */
    double cpu_s;
    pid_t pg_pid[4];        /* its PostgreSQL backends (a reconnect adds one) */
    double pg_cpu[4];       /* and their CPU seconds */
    int npg;
    char log[PATH_MAX];     /* its stderr */
} child;

static child kids[MAX_CHILDREN];
static int nkids;

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static void sample(child *c)
{
    if (c->pid <= 0)
        return;
    long kb = bench_vm_hwm_kb(c->pid);
    if (kb > c->hwm_kb)
        c->hwm_kb = kb;
    double cpu = bench_cpu_seconds(c->pid);
    if (cpu >= 0)
        c->cpu_s = cpu;
}

/* CPU of each stage's PostgreSQL backend (application_name is the stage's
 * instance id), when the server runs on this machine: a stage's database
 * work is done there, not in the stage process. */
static void sample_backends(PGconn *db, const scenario *sc)
{
    char app[128];
    snprintf(app, sizeof(app), "%.*s-", (int)strlen(sc->prefix) - 1, sc->prefix);
    const char *p[1] = {app};
    PGresult *r = PQexecParams(db, "SELECT substr(application_name, length($1) + 1),"
                               " pid FROM pg_stat_activity"
                               " WHERE left(application_name, length($1)) = $1",
                               1, NULL, p, NULL, NULL, 0);
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
        for (int k = 0; k < nkids; k++) {
            child *c = &kids[k];
            if (strcmp(c->name, PQgetvalue(r, i, 0)))
                continue;
            pid_t pid = (pid_t)atoi(PQgetvalue(r, i, 1));
            int j = 0;
            while (j < c->npg && c->pg_pid[j] != pid)
                j++;
            if (j == 4)
                continue;
            double cpu = bench_cpu_seconds(pid);
            if (cpu >= 0) {
                c->pg_pid[j] = pid;
                c->pg_cpu[j] = cpu;
                c->npg += j == c->npg;
            }
        }
    PQclear(r);
}

static double backend_cpu(const child *c)
{
    double sum = c->npg ? 0 : -1;
    for (int j = 0; j < c->npg; j++)
        sum += c->pg_cpu[j];
    return sum;
}

/* Starts argv with the scenario's settings in its environment, stdout to
 * out (NULL: /dev/null) and stderr to <logs>/<name>.log.  The child gets
 * SIGTERM should the benchmark die first. */
static child *spawn(const scenario *sc, const char *name, char *const argv[],
                    const char *out)
{
    if (nkids == MAX_CHILDREN)
        return NULL;
    child *c = &kids[nkids];
    memset(c, 0, sizeof(*c));
    snprintf(c->name, sizeof(c->name), "%s", name);
    snprintf(c->log, sizeof(c->log), "%s/%s.log", sc->logs, name);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0)
        return NULL;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent)
            _exit(127);
        char instance[160];
        snprintf(instance, sizeof(instance), "%.*s-%s", (int)strlen(sc->prefix) - 1,
                 sc->prefix, name);
        if (*sc->prefix) {
            setenv("DOCPIPE_TOPIC_PREFIX", sc->prefix, 1);
            setenv("DOCPIPE_STORAGE_DIR", sc->storage, 1);
            setenv("DOCPIPE_INSTANCE_ID", instance, 1);
        }
        /* Quiet stages unless BENCH_LOG_LEVEL asks (debug: their timers). */
        setenv("DOCPIPE_LOG_LEVEL", getenv("BENCH_LOG_LEVEL") ? getenv("BENCH_LOG_LEVEL")
                                                               : "warn", 1);
        setenv("DOCPIPE_EMBED_TPM", "1000000000", 1);
        setenv("DOCPIPE_EMBED_RPM", "100000000", 1);
        if (*sc->embed_url)
            setenv("DOCPIPE_EMBED_URL", sc->embed_url, 1);
        int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(c->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(127);
        execv(argv[0], argv);
        _exit(127);
    }
    c->pid = pid;
    nkids++;
    return c;
}

static void reaped(child *c, int status)
{
    c->status = status;
    c->pid = 0;
}

/* The first child that is no longer running, or NULL. */
static child *find_dead(void)
{
    for (int i = 0; i < nkids; i++) {
        int st;
        if (kids[i].pid > 0 && waitpid(kids[i].pid, &st, WNOHANG) == kids[i].pid) {
            reaped(&kids[i], st);
            return &kids[i];
        }
        if (kids[i].pid == 0)
            return &kids[i];
    }
    return NULL;
}

static void describe_status(int st, char *out, size_t n)
{
    if (WIFEXITED(st))
        snprintf(out, n, "%d", WEXITSTATUS(st));
    else if (WIFSIGNALED(st))
        snprintf(out, n, "sig %d", WTERMSIG(st));
    else
        snprintf(out, n, "?");
}

/* SIGTERM to kids[from..to), SIGKILL to whatever still runs after
 * STOP_GRACE_S; reaps them all.  Memory and CPU are read just before. */
static void stop_range(int from, int to)
{
    for (int i = from; i < to; i++) {
        sample(&kids[i]);
        if (kids[i].pid > 0)
            kill(kids[i].pid, SIGTERM);
    }
    double until = bench_now() + STOP_GRACE_S;
    for (;;) {
        int left = 0;
        for (int i = from; i < to; i++) {
            int st;
            if (kids[i].pid > 0 && waitpid(kids[i].pid, &st, WNOHANG) == kids[i].pid)
                reaped(&kids[i], st);
            left += kids[i].pid > 0;
        }
        if (!left)
            return;
        if (bench_now() >= until)
            break;
        usleep(50 * 1000);
    }
    for (int i = from; i < to; i++)
        if (kids[i].pid > 0) {
            fprintf(stderr, "bench: %s (pid %d) ignored SIGTERM for %.0f s: SIGKILL\n",
                    kids[i].name, (int)kids[i].pid, STOP_GRACE_S);
            kill(kids[i].pid, SIGKILL);
            int st;
            waitpid(kids[i].pid, &st, 0);
            reaped(&kids[i], st);
        }
}

/* The stages first (they talk to the embedding service), then the rest. */
static void stop_all(void)
{
    if (nkids > 1)
        stop_range(1, nkids);
    stop_range(0, nkids > 0 ? 1 : 0);
}

/* Runs a short command to its end (at most timeout_s); its exit code, or
 * -1 if it was killed. */
static int run_cmd(const scenario *sc, const char *name, char *const argv[],
                   const char *out, double timeout_s)
{
    child *c = spawn(sc, name, argv, out);
    if (!c)
        return -1;
    double until = bench_now() + timeout_s;
    int st = 0;
    while (waitpid(c->pid, &st, WNOHANG) == 0) {
        if (interrupted || bench_now() >= until) {
            fprintf(stderr, "bench: %s %s, stopping it\n", name,
                    interrupted ? "interrupted" : "timed out");
            stop_range((int)(c - kids), (int)(c - kids) + 1);
            nkids--;
            return -1;
        }
        usleep(10 * 1000);
    }
    nkids--;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* How many lines a child wrote to stderr (at warn level: its warnings), and
 * the first of them. */
static long log_lines(const char *path, char *first, size_t n)
{
    FILE *f = fopen(path, "r");
    long lines = 0;
    char line[4096];
    *first = '\0';
    while (f && fgets(line, sizeof(line), f))
        if (lines++ == 0) {
            line[strcspn(line, "\n")] = '\0';
            snprintf(first, n, "%.*s", (int)n - 1, line);
        }
    if (f)
        fclose(f);
    return lines;
}

/* ---- PostgreSQL ------------------------------------------------------- */

static PGresult *query(PGconn *db, const char *sql, int n, const char *const *p)
{
    PGresult *r = PQexecParams(db, sql, n, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK) {
        fprintf(stderr, "bench: query failed: %s", PQresultErrorMessage(r));
        PQclear(r);
        if (PQstatus(db) != CONNECTION_OK)
            PQreset(db);
        return NULL;
    }
    return r;
}

static double getd(PGresult *r, int row, int col)
{
    return PQgetisnull(r, row, col) ? -1 : strtod(PQgetvalue(r, row, col), NULL);
}

/* Jobs of a user by state: counts[k] for job_states[k]; returns the total,
 * -1 on a query failure. */
static long job_counts(PGconn *db, const char *user, long counts[N_STATES])
{
    const char *p[1] = {user};
    PGresult *r = query(db, "SELECT status, count(*) FROM upload_pipeline.upload_jobs"
                            " WHERE user_id = $1::uuid GROUP BY status", 1, p);
    if (!r)
        return -1;
    long total = 0;
    memset(counts, 0, N_STATES * sizeof(long));
    for (int i = 0; i < PQntuples(r); i++)
        for (int k = 0; k < N_STATES; k++)
            if (!strcmp(PQgetvalue(r, i, 0), job_states[k])) {
                counts[k] = atol(PQgetvalue(r, i, 1));
                total += counts[k];
            }
    PQclear(r);
    return total;
}

static int state_index(const char *s)
{
    for (int k = 0; k < N_STATES; k++)
        if (!strcmp(job_states[k], s))
            return k;
    return -1;
}

static void print_progress(const scenario *sc, double t0, const long counts[N_STATES])
{
    fprintf(stderr, "  [%s %6.1fs]", sc->name, now_real() - t0);
    for (int k = 0; k < N_STATES; k++)
        if (counts[k])
            fprintf(stderr, " %s %ld", job_states[k], counts[k]);
    fprintf(stderr, "\n");
}

/* Waits until n jobs of user are in state `target` or failed.  Fails when a
 * child dies, nothing moves for STALL_S, or cap_s passes.  Samples the
 * children's memory on the way. */
static int wait_jobs(PGconn *db, const scenario *sc, const char *user, long n,
                     const char *target, double cap_s, double t0)
{
    long counts[N_STATES], last[N_STATES] = {0};
    int ti = state_index(target);
    double start = bench_now(), moved = start, shown = 0;
    for (;;) {
        if (interrupted)
            return -1;
        child *dead = find_dead();
        if (dead) {
            char st[16];
            describe_status(dead->status, st, sizeof(st));
            fprintf(stderr, "bench: %s: %s stopped on its own (exit %s), see %s\n",
                    sc->name, dead->name, st, dead->log);
            return -1;
        }
        for (int i = 0; i < nkids; i++)
            sample(&kids[i]);
        sample_backends(db, sc);
        cpu_sample();
        long known = job_counts(db, user, counts);
        if (known >= 0) {
            long failed = counts[10] + counts[11] + counts[12] + counts[13];
            if (known >= n && counts[ti] + failed >= n)
                return 0;
            if (memcmp(counts, last, sizeof(counts))) {
                memcpy(last, counts, sizeof(counts));
                moved = bench_now();
            }
            if (show_progress && bench_now() - shown >= 1.0) {
                print_progress(sc, t0, counts);
                shown = bench_now();
            }
        }
        if (bench_now() - moved > STALL_S || bench_now() - start > cap_s) {
            fprintf(stderr, "bench: %s: %s waiting for %ld jobs to be %s; states now:",
                    sc->name, bench_now() - moved > STALL_S ? "stalled" : "timed out",
                    n, target);
            for (int k = 0; k < N_STATES; k++)
                if (last[k])
                    fprintf(stderr, " %s %ld", job_states[k], last[k]);
            fprintf(stderr, "\n");
            return -1;
        }
        usleep(200 * 1000);
    }
}

/* Waits until each named stage's group has claimed every partition, the
 * embed group by `embeds` distinct instances. */
static int wait_joined(PGconn *db, const scenario *sc, const char *const *stages,
                       int n, int embeds)
{
    const char *p[1] = {sc->prefix};
    double until = bench_now() + JOIN_TIMEOUT_S;
    while (bench_now() < until && !interrupted) {
        child *dead = find_dead();
        if (dead) {
            fprintf(stderr, "bench: %s: %s stopped on its own, see %s\n", sc->name,
                    dead->name, dead->log);
            return -1;
        }
        PGresult *r = query(db, "SELECT substr(group_id, length($1) + 1), count(*),"
                                " count(DISTINCT owner) FROM docpipe.dp_offsets"
                                " WHERE left(group_id, length($1)) = $1 GROUP BY 1",
                            1, p);
        int ready = 0;
        for (int s = 0; r && s < n; s++) {
            int want = strcmp(stages[s], "embed") ? 1
                       : embeds < partitions ? embeds : partitions;
            for (int i = 0; i < PQntuples(r); i++)
                if (!strcmp(PQgetvalue(r, i, 0), stages[s]) &&
                    atoi(PQgetvalue(r, i, 1)) == partitions &&
                    atoi(PQgetvalue(r, i, 2)) == want)
                    ready++;
        }
        PQclear(r);
        if (ready == n)
            return 0;
        usleep(100 * 1000);
    }
    fprintf(stderr, "bench: %s: the stages did not all claim their partitions"
                    " within %.0f s\n", sc->name, JOIN_TIMEOUT_S);
    return -1;
}

/* Nearest-rank percentile of sorted v. */
static double pct(const double *v, int n, double q)
{
    if (n == 0)
        return -1;
    int k = (int)(q * n + 0.999999) - 1;
    return v[k < 0 ? 0 : k >= n ? n - 1 : k];
}

/* ---- the report ------------------------------------------------------- */

static const char *verdict(double value, double target, int higher_is_better)
{
    if (value < 0)
        return "n/a";
    return (higher_is_better ? value >= target : value < target) ? "met" : "MISSED";
}

/* Latency and the per-stage timeline from PostgreSQL; fills res. */
static void report_figures(PGconn *db, const scenario *sc, double t0, result *res)
{
    char t0s[32];
    snprintf(t0s, sizeof(t0s), "%.6f", t0);
    const char *p[2] = {sc->user, t0s};
    PGresult *r = query(db,
        "SELECT extract(epoch FROM processing_completed_at)::float8,"
        " extract(epoch FROM created_at)::float8 FROM upload_pipeline.upload_jobs"
        " WHERE user_id = $1::uuid AND status = 'complete'", 1, p);
    int n = r ? PQntuples(r) : 0;
    double *sub = malloc((size_t)(n + 1) * sizeof(double));
    double *in = malloc((size_t)(n + 1) * sizeof(double));
    double last = t0;
    for (int i = 0; i < n; i++) {
        double done = getd(r, i, 0);
        sub[i] = done - t0;
        in[i] = done - getd(r, i, 1);
        if (done > last)
            last = done;
    }
    PQclear(r);
    qsort(sub, (size_t)n, sizeof(double), bench_cmp_double);
    qsort(in, (size_t)n, sizeof(double), bench_cmp_double);
    res->complete = n;
    res->span_s = last - t0;
    r = query(db, "SELECT count(*) FILTER (WHERE status LIKE 'failed%'),"
                  " (SELECT count(*) FROM upload_pipeline.document_chunks c"
                  "  WHERE c.document_id IN (SELECT document_id FROM"
                  "  upload_pipeline.documents WHERE user_id = $1::uuid))"
                  " FROM upload_pipeline.upload_jobs WHERE user_id = $1::uuid", 1, p);
    if (r) {
        res->failed = atol(PQgetvalue(r, 0, 0));
        res->chunks = atol(PQgetvalue(r, 0, 1));
        PQclear(r);
    }
    if (res->span_s > 0) {
        res->e2e_docs_s = n / res->span_s;
        res->e2e_chunks_s = (double)res->chunks / res->span_s;
    }
    printf("  documents    %ld complete, %ld failed; %ld chunks (%.1f per document);"
           " submit ran %.2f s\n", res->complete, res->failed, res->chunks,
           n ? (double)res->chunks / n : 0, res->submit_s);
    if (!sc->prefill) {
        printf("  end to end   %.1f documents/s, %.0f chunks/s (%ld documents in %.2f s"
               " from submit start to the last completion)\n", res->e2e_docs_s,
               res->e2e_chunks_s, res->complete, res->span_s);
        printf("  latency      from submit start: p50 %.2f s, p99 %.2f s;"
               " from intake (upload_jobs.created_at): p50 %.2f s, p99 %.2f s\n",
               pct(sub, n, 0.5), pct(sub, n, 0.99), pct(in, n, 0.5), pct(in, n, 0.99));
        res->busy = cpu_busy(t0, last);
        print_busy("from submit start to the last completion", res->busy);
    }
    free(sub);
    free(in);

    /* Where documents waited: per stage, its last event and the time since
     * the previous stage's event (intake: since submit start). */
    r = query(db,
        "WITH d AS (SELECT document_id FROM upload_pipeline.upload_jobs"
        "   WHERE user_id = $1::uuid),"
        " s AS (SELECT e.document_id, e.stage, max(e.ts) AS ts"
        "   FROM upload_pipeline.events e JOIN d USING (document_id) GROUP BY 1, 2),"
        " t AS (SELECT stage, ts, coalesce(extract(epoch FROM ts - lag(ts) OVER"
        "   (PARTITION BY document_id ORDER BY ts))::float8,"
        "   extract(epoch FROM ts)::float8 - $2::float8) AS step FROM s)"
        " SELECT stage, count(*), extract(epoch FROM min(ts))::float8 - $2::float8,"
        "   extract(epoch FROM max(ts))::float8 - $2::float8,"
        "   percentile_cont(0.5) WITHIN GROUP (ORDER BY step),"
        "   percentile_cont(0.99) WITHIN GROUP (ORDER BY step)"
        " FROM t GROUP BY stage", 2, p);
    printf("  %-11s %6s %9s %9s %9s %9s | %-12s %8s %7s %8s %5s\n", "stage", "docs",
           "first s", "last s", "step p50", "step p99", "process", "peak MB",
           "CPU s", "PG CPU s", "exit");
    for (int s = 0; s <= N_STAGES; s++) {
        /* Each stage's processes, then the embedding service. */
        const char *want = s < N_STAGES ? stage_names[s] : "embedserver";
        int row = -1, shown = 0;
        for (int i = 0; s < N_STAGES && r && i < PQntuples(r); i++)
            if (!strcmp(PQgetvalue(r, i, 0), want))
                row = i;
        for (int k = 0; k < nkids; k++) {
            size_t len = strlen(want);
            if (strncmp(kids[k].name, want, len) ||
                (kids[k].name[len] && kids[k].name[len] != '#'))
                continue;
            if (shown++ || s == N_STAGES)
                printf("  %-11s %6s %9s %9s %9s %9s |", "", "", "", "", "", "");
            else if (row >= 0)
                printf("  %-11s %6s %9.2f %9.2f %9.2f %9.2f |", want,
                       PQgetvalue(r, row, 1), getd(r, row, 2), getd(r, row, 3),
                       getd(r, row, 4), getd(r, row, 5));
            else
                printf("  %-11s %6s %9s %9s %9s %9s |", want, "0", "-", "-", "-", "-");
            char st[16];
            describe_status(kids[k].status, st, sizeof(st));
            char pg[16] = "-";
            if (backend_cpu(&kids[k]) >= 0)
                snprintf(pg, sizeof(pg), "%.2f", backend_cpu(&kids[k]));
            printf(" %-12s %8.1f %7.2f %8s %5s\n", kids[k].name,
                   (double)kids[k].hwm_kb / 1024.0, kids[k].cpu_s, pg, st);
        }
    }
    PQclear(r);
    long worst = 0;
    const char *worst_name = "";
    for (int k = 1; k < nkids; k++)
        if (kids[k].hwm_kb > worst) {
            worst = kids[k].hwm_kb;
            worst_name = kids[k].name;
        }
    printf("  memory       largest stage process %s %.1f MB (target < 30 MB each: %s)\n",
           worst_name, (double)worst / 1024.0, verdict(worst / 1024.0, 30, 0));
    /* CPU per 1000 documents: the stage processes and their backends over
     * their lives (warm-up included), the service, the broker over the
     * window.  `docpipe submit` is left out. */
    double stages = 0, backends = 0, service = 0;
    for (int k = 0; k < nkids; k++) {
        if (!strcmp(kids[k].name, "embedserver"))
            service += kids[k].cpu_s;
        else if (kids[k].npg || strchr(kids[k].name, '#') ||
                 stage_index(kids[k].name) >= 0) {
            stages += kids[k].cpu_s;
            if (backend_cpu(&kids[k]) > 0)
                backends += backend_cpu(&kids[k]);
        }
    }
    if (n > 0 && !sc->prefill) {
        double k = 1000.0 / n, kafka = res->kafka_cpu_s > 0 ? res->kafka_cpu_s : 0;
        res->cpu_per_k = (stages + backends + service + kafka) * k;
        printf("  CPU-s/1000   stages %.1f, their backends %.1f, embedding service %.1f,"
               " Kafka broker %s%.1f: %.1f in all\n", stages * k, backends * k,
               service * k, res->kafka_cpu_s >= 0 ? "" : "(not local) ", kafka * k,
               res->cpu_per_k);
    }
    int bad = 0;
    for (int k = 0; k < nkids; k++)
        bad += !(WIFEXITED(kids[k].status) && WEXITSTATUS(kids[k].status) == 0);
    if (bad)
        printf("  exit         %d process(es) did not exit 0 after SIGTERM\n", bad);
    for (int k = 0; k < nkids; k++) {
        char first[200];
        long lines = log_lines(kids[k].log, first, sizeof(first));
        if (lines && strcmp(kids[k].name, "embedserver"))
            printf("  log          %s wrote %ld line(s) at warn or above; first: %s\n",
                   kids[k].name, lines, first);
    }
}

/* Embed stage throughput on a backlog: documents embedded from the first
 * embedding batch queued (or the group's last partition claim, if later)
 * to the last one stored. */
static void embed_window(PGconn *db, const scenario *sc, result *res)
{
    char group[128];
    snprintf(group, sizeof(group), "%sembed", sc->prefix);
    const char *p1[1] = {group};
    PGresult *r = query(db, "SELECT extract(epoch FROM max(claimed_at))::float8"
                            " FROM docpipe.dp_offsets WHERE group_id = $1", 1, p1);
    if (!r)
        return;
    double start = getd(r, 0, 0);
    PQclear(r);
    /* The group joined before its backlog existed: the window opens when
     * the first embedding batch was queued, if that is later. */
    const char *pu[1] = {sc->user};
    r = query(db, "SELECT coalesce(extract(epoch FROM min(e.ts)), 0)::float8"
                  " FROM upload_pipeline.events e WHERE e.code = 'EMBEDDING_QUEUED'"
                  " AND e.document_id IN (SELECT document_id FROM upload_pipeline.documents"
                  "  WHERE user_id = $1::uuid)", 1, pu);
    if (!r)
        return;
    if (getd(r, 0, 0) > start)
        start = getd(r, 0, 0);
    PQclear(r);
    char starts[32];
    snprintf(starts, sizeof(starts), "%.6f", start);
    const char *p2[2] = {sc->user, starts};
    r = query(db, "SELECT count(DISTINCT e.document_id),"
                  " extract(epoch FROM max(e.ts))::float8"
                  " FROM upload_pipeline.events e WHERE e.stage = 'embed'"
                  " AND e.code = 'EMBED_BATCH_STORED'"
                  " AND e.ts >= to_timestamp($2::float8) AND e.document_id IN"
                  " (SELECT document_id FROM upload_pipeline.documents"
                  "  WHERE user_id = $1::uuid)", 2, p2);
    if (!r)
        return;
    res->embed_docs = atol(PQgetvalue(r, 0, 0));
    res->embed_window_s = getd(r, 0, 1) - start;
    PQclear(r);
    if (res->embed_window_s > 0)
        res->embed_docs_s = (double)res->embed_docs / res->embed_window_s;
    printf("  embed stage  %.1f documents/s with %d instance(s) (%ld documents in %.2f s"
           " from the first embedding batch queued, or the group's last partition claim"
           " if later, to the last EMBED_BATCH_STORED)\n",
           res->embed_docs_s, sc->instances, res->embed_docs, res->embed_window_s);
    res->busy = cpu_busy(start, start + res->embed_window_s);
    print_busy("over that window", res->busy);
}

/* ---- cleanup of what a scenario made ---------------------------------- */

static void delete_rows(PGconn *db, const scenario *sc)
{
    char users[96];
    snprintf(users, sizeof(users), "{%s,%s}", sc->user, sc->warm_user);
    const char *pu[1] = {users}, *pp[1] = {sc->prefix};
    static const char *const by_doc[] = {"document_chunks", "document_vector_buffer",
        "document_chunk_buffer", "embedding_batches", "events", "upload_jobs"};
    char sql[512];
    for (size_t i = 0; i < sizeof(by_doc) / sizeof(by_doc[0]); i++) {
        snprintf(sql, sizeof(sql), "DELETE FROM upload_pipeline.%s WHERE document_id IN"
                 " (SELECT document_id FROM upload_pipeline.documents"
                 "  WHERE user_id = ANY($1::uuid[]))", by_doc[i]);
        PQclear(query(db, sql, 1, pu));
    }
    PQclear(query(db, "DELETE FROM upload_pipeline.documents"
                      " WHERE user_id = ANY($1::uuid[])", 1, pu));
    static const char *const runtime[] = {"dp_offsets", "dp_dedup", "dp_dead_letters"};
    for (size_t i = 0; i < sizeof(runtime) / sizeof(runtime[0]); i++) {
        snprintf(sql, sizeof(sql), "DELETE FROM docpipe.%s"
                 " WHERE left(group_id, length($1)) = $1", runtime[i]);
        PQclear(query(db, sql, 1, pp));
    }
    /* The next scenario should not pay for this one's deletions: without
     * this, autovacuum cleaned up after it inside the next one's window
     * (up to 2.3 CPU-s of the 2 cores' 20 in one run). */
    PQclear(PQexec(db, "VACUUM (ANALYZE) upload_pipeline.document_chunks,"
                       " upload_pipeline.document_vector_buffer,"
                       " upload_pipeline.document_chunk_buffer,"
                       " upload_pipeline.embedding_batches, upload_pipeline.events,"
                       " upload_pipeline.upload_jobs, upload_pipeline.documents,"
                       " docpipe.dp_offsets, docpipe.dp_dedup, docpipe.dp_dead_letters"));
}

static void delete_topics(const char *prefix)
{
    char err[512];
    if (dp_topics_delete_prefix(brokers, prefix, NULL, err, sizeof(err)))
        fprintf(stderr, "bench: deleting topics %s*: %s\n", prefix, err);
}

/* ---- one scenario ----------------------------------------------------- */

/* A scenario's folders (documents' storage, logs), topic prefix and users. */
static void scenario_prepare(scenario *sc, const char *tmp)
{
    snprintf(sc->dir, sizeof(sc->dir), "%s/%s", tmp, sc->name);
    snprintf(sc->storage, sizeof(sc->storage), "%s/storage", sc->dir);
    snprintf(sc->logs, sizeof(sc->logs), "%s/logs", sc->dir);
    snprintf(sc->prefix, sizeof(sc->prefix), "benchp%d_%ld_%s.", (int)getpid(),
             (long)time(NULL) % 100000, sc->name);
    sc->embed_url[0] = '\0';
    dp_uuid4(sc->user);
    dp_uuid4(sc->warm_user);
    mkdir(sc->dir, 0755);
    mkdir(sc->storage, 0755);
    mkdir(sc->logs, 0755);
}

static int start_embedserver(scenario *sc)
{
    char lat[16], out[PATH_MAX];
    snprintf(lat, sizeof(lat), "%d", sc->latency_ms);
    snprintf(out, sizeof(out), "%s/embedserver.out", sc->logs);
    char *argv[] = {(char *)embedserver, "--port", "0", "--quiet", "--latency-ms",
                    lat, NULL};
    if (!spawn(sc, "embedserver", argv, out))
        return -1;
    double until = bench_now() + 15;
    while (bench_now() < until && !interrupted) {
        FILE *f = fopen(out, "r");
        char line[256];
        unsigned port = 0;
        int got = f && fgets(line, sizeof(line), f) &&
                  sscanf(line, "listening on 127.0.0.1:%u", &port) == 1;
        if (f)
            fclose(f);
        if (got) {
            snprintf(sc->embed_url, sizeof(sc->embed_url), "http://127.0.0.1:%u", port);
            return 0;
        }
        if (find_dead())
            break;
        usleep(20 * 1000);
    }
    fprintf(stderr, "bench: %s: the embedding service did not start (see %s/"
                    "embedserver.log)\n", sc->name, sc->logs);
    return -1;
}

static int start_stage(const scenario *sc, const char *stage, int instance)
{
    char name[24];
    if (!strcmp(stage, "embed"))
        snprintf(name, sizeof(name), "embed#%d", instance);
    else
        snprintf(name, sizeof(name), "%s", stage);
    char *argv[] = {(char *)bin, "run", (char *)stage, NULL};
    return spawn(sc, name, argv, NULL) ? 0 : -1;
}

static int submit(const scenario *sc, const char *user, const char *path,
                  const char *tag)
{
    char out[PATH_MAX], name[32];
    snprintf(out, sizeof(out), "%s/%s.out", sc->logs, tag);
    snprintf(name, sizeof(name), "%s", tag);
    char *argv[] = {(char *)bin, "submit", "--user", (char *)user, (char *)path, NULL};
    int rc = run_cmd(sc, name, argv, out, 300);
    if (rc != 0)
        fprintf(stderr, "bench: %s: docpipe submit exited %d (see %s/%s.log)\n",
                sc->name, rc, sc->logs, tag);
    return rc;
}

static int run_scenario(PGconn *db, scenario *sc, const char *tmp, const char *docs,
                        const char *warm, long n, int keep, result *res)
{
    memset(res, 0, sizeof(*res));
    res->busy = -1;
    nkids = 0;
    n_cpu_samples = 0;
    scenario_prepare(sc, tmp);

    printf("\nscenario %s: embedding latency %d ms, %d embed instance(s)%s;"
           " load average %.2f\n", sc->name, sc->latency_ms, sc->instances,
           sc->prefill ? ", embed joined before its backlog" : "", load_1min());
    fflush(stdout);

    int rc = -1;
    double t0 = now_real();
    char topics_out[PATH_MAX];
    snprintf(topics_out, sizeof(topics_out), "%s/topics.out", sc->logs);
    char *targv[] = {(char *)bin, "topics", NULL};
    if (run_cmd(sc, "topics", targv, topics_out, 120) != 0) {
        fprintf(stderr, "bench: %s: docpipe topics failed (see %s/topics.log)\n",
                sc->name, sc->logs);
        goto out;
    }
    if (start_embedserver(sc))
        goto out;
    const char *joined[N_STAGES];
    int nj = 0;
    for (int s = 0; s < N_STAGES; s++) {
        int embed = !strcmp(stage_names[s], "embed");
        /* prefill: embed-plan too waits, so that every embed instance has
         * joined before the first embedding batch exists (see below). */
        if (sc->prefill && (embed || !strcmp(stage_names[s], "embed-plan")))
            continue;
        for (int k = 1; k <= (embed ? sc->instances : 1); k++)
            if (start_stage(sc, stage_names[s], k))
                goto out;
        joined[nj++] = stage_names[s];
    }
    if (wait_joined(db, sc, joined, nj, sc->instances))
        goto out;
    /* One document through everything that runs: connections made, code
     * paged in, every stage's first batch done. */
    const char *warm_state = sc->prefill ? "chunks_stored" : "complete";
    if (submit(sc, sc->warm_user, warm, "warmup") ||
        wait_jobs(db, sc, sc->warm_user, 1, warm_state, 120, now_real()))
        goto out;

    t0 = now_real();
    double kafka0 = kafka_cpu();
    if (submit(sc, sc->user, docs, "submit"))
        goto out;
    res->submit_s = now_real() - t0;
    double cap = 120 + (double)n * (sc->latency_ms ? 1.0 : 0.5);
    if (sc->prefill) {
        /* Every document chunked; then all embed instances join while their
         * topic is still empty (so the first to join cannot take a
         * partition's whole backlog before the others have theirs); then
         * embed-plan turns the chunked documents into embedding batches, at
         * several hundred documents/s, ahead of embed. */
        if (wait_jobs(db, sc, sc->user, n, "chunks_stored", cap, t0))
            goto out;
        for (int k = 1; k <= sc->instances; k++)
            if (start_stage(sc, "embed", k))
                goto out;
        const char *embed_only[] = {"embed"};
        if (wait_joined(db, sc, embed_only, 1, sc->instances))
            goto out;
        printf("  backlog      %ld documents chunked %.2f s after submit start; %d embed"
               " instance(s) joined, starting embed-plan (embed steps below include"
               " that wait)\n", n, now_real() - t0, sc->instances);
        if (start_stage(sc, "embed-plan", 1))
            goto out;
    }
    if (wait_jobs(db, sc, sc->user, n, "complete", cap, t0))
        goto out;
    if (kafka0 >= 0 && kafka_cpu() >= kafka0)
        res->kafka_cpu_s = kafka_cpu() - kafka0;
    else
        res->kafka_cpu_s = -1;
    rc = 0;
out:
    sample_backends(db, sc);
    stop_all();
    if (rc == 0) {
        report_figures(db, sc, t0, res);
        if (sc->prefill)
            embed_window(db, sc, res);
        for (int k = 0; k < nkids; k++)
            if (!(WIFEXITED(kids[k].status) && WEXITSTATUS(kids[k].status) == 0))
                rc = -1;
    } else {
        printf("  FAILED (%s; %s)\n", interrupted ? "interrupted" : "see the messages above",
               keep ? sc->logs : "rerun with --keep to keep the logs");
    }
    res->ran = 1;
    res->ok = rc == 0;
    fflush(stdout);
    if (!keep) {
        delete_rows(db, sc);
        delete_topics(sc->prefix);
        rm_tree(sc->dir);
    }
    nkids = 0;
    return rc;
}

/* ---- the raw ceiling --------------------------------------------------- */

/* The same documents through ceiling.h's workers: no Kafka, no stages, the
 * embedding service at 0 ms as in scenario a. */
static int run_ceiling(PGconn *db, const char *tmp, const char *docs, long n,
                       int workers, int keep, ceiling_result *cr)
{
    memset(cr, 0, sizeof(*cr));
    nkids = 0;
    scenario sc = {.name = "ceiling"};
    scenario_prepare(&sc, tmp); /* (its prefix names no topic: none is made) */
    printf("\nceiling: the same documents' work with no Kafka and no stages: %d worker"
           " processes, one transaction per %d documents, embedding latency 0 ms;"
           " load average %.2f\n", workers, CEILING_GROUP, load_1min());
    fflush(stdout);
    int rc = start_embedserver(&sc);
    char err[1200] = "";
    double cr_busy = -1, cr_kafka = -1;
    if (rc == 0) {
        ceiling_opts o = {dburl, docs, sc.storage, sc.embed_url, sc.user, n, workers,
                          CEILING_GROUP};
        n_cpu_samples = 0;
        double from = now_real(), kafka0 = kafka_cpu();
        cpu_sample();
        rc = ceiling_run(&o, cr, err, sizeof(err));
        cpu_sample();
        cr_busy = cpu_busy(from, now_real());
        if (kafka0 >= 0 && kafka_cpu() >= kafka0)
            cr_kafka = kafka_cpu() - kafka0;
    }
    stop_all();
    if (rc == 0) {
        char pg[32] = "-";
        if (cr->backend_cpu_s >= 0)
            snprintf(pg, sizeof(pg), "%.2f", cr->backend_cpu_s);
        printf("  documents    %ld written; %ld chunks (%.1f per document)\n", cr->docs,
               cr->chunks, (double)cr->chunks / (double)cr->docs);
        printf("  rate         %.1f documents/s, %.0f chunks/s (%ld documents in %.2f s)\n",
               cr->docs_s, (double)cr->chunks / cr->span_s, cr->docs, cr->span_s);
        printf("  CPU s        workers %.2f, their PostgreSQL backends %s, embedserver"
               " %.2f\n", cr->worker_cpu_s, pg, kids[0].cpu_s);
        print_busy("while the workers ran", cr_busy);
        double k = 1000.0 / (double)cr->docs;
        double kafka = cr_kafka > 0 ? cr_kafka : 0;
        cr->cpu_per_k = (cr->worker_cpu_s + (cr->backend_cpu_s > 0 ? cr->backend_cpu_s : 0) +
                         kids[0].cpu_s + kafka) * k;
        printf("  CPU-s/1000   workers %.1f, their backends %.1f, embedding service %.1f,"
               " Kafka broker (idle here) %.1f: %.1f in all\n", cr->worker_cpu_s * k,
               (cr->backend_cpu_s > 0 ? cr->backend_cpu_s : 0) * k, kids[0].cpu_s * k,
               kafka * k, cr->cpu_per_k);
    } else {
        printf("  FAILED: %s\n", *err ? err : "the embedding service did not start");
    }
    fflush(stdout);
    if (!keep) {
        delete_rows(db, &sc);
        rm_tree(sc.dir);
    }
    nkids = 0;
    return rc;
}

/* ---- main ------------------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: bench_pipeline [--bin PATH] [--embedserver PATH] [--docs N]"
                    " [--only a|b|c|ceiling] [--ceiling-workers N] [--keep] [--progress]\n");
}

int main(int argc, char **argv)
{
    long n = 1000;
    const char *only = NULL;
    int keep = 0, ceiling_workers = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--bin") && i + 1 < argc)
            bin = argv[++i];
        else if (!strcmp(argv[i], "--embedserver") && i + 1 < argc)
            embedserver = argv[++i];
        else if (!strcmp(argv[i], "--docs") && i + 1 < argc)
            n = atol(argv[++i]);
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--ceiling-workers") && i + 1 < argc)
            ceiling_workers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--keep"))
            keep = 1;
        else if (!strcmp(argv[i], "--progress"))
            show_progress = 1;
        else {
            usage();
            return 2;
        }
    }
    if (n < 1 || ceiling_workers < 1 || ceiling_workers > 64 ||
        (only && strcmp(only, "a") && strcmp(only, "b") && strcmp(only, "c") &&
         strcmp(only, "ceiling"))) {
        usage();
        return 2;
    }
    static char server_default[PATH_MAX];
    if (!embedserver) {
        const char *slash = strrchr(bin, '/');
        snprintf(server_default, sizeof(server_default), "%.*stools/docpipe-embedserver",
                 slash ? (int)(slash - bin + 1) : 0, bin);
        embedserver = server_default;
    }
    if (access(bin, X_OK) || access(embedserver, X_OK)) {
        fprintf(stderr, "bench: %s or %s is not an executable (--bin, --embedserver)\n",
                bin, embedserver);
        return 2;
    }
    if (getenv("DOCPIPE_BROKERS"))
        brokers = getenv("DOCPIPE_BROKERS");
    if (getenv("DOCPIPE_DATABASE_URL"))
        dburl = getenv("DOCPIPE_DATABASE_URL");
    if (getenv("DOCPIPE_TOPIC_PARTITIONS"))
        partitions = atoi(getenv("DOCPIPE_TOPIC_PARTITIONS"));
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    PGconn *db = PQconnectdb(dburl);
    if (PQstatus(db) != CONNECTION_OK) {
        fprintf(stderr, "bench: %s", PQerrorMessage(db));
        return 1;
    }
    kafka_pid = find_kafka();
    char tmp[] = "/tmp/bench_pipeline.XXXXXX";
    if (!mkdtemp(tmp)) {
        fprintf(stderr, "bench: mkdtemp: %s\n", strerror(errno));
        return 1;
    }
    scenario setup = {.name = "setup"};
    snprintf(setup.logs, sizeof(setup.logs), "%s", tmp);
    char *margv[] = {(char *)bin, "migrate", NULL};
    if (run_cmd(&setup, "migrate", margv, NULL, 120) != 0) {
        fprintf(stderr, "bench: docpipe migrate failed (see %s/migrate.log)\n", tmp);
        return 1;
    }
    char docs[512], warm[512];
    snprintf(docs, sizeof(docs), "%s/docs", tmp);
    snprintf(warm, sizeof(warm), "%s/warm", tmp);
    if (make_documents(docs, n, 0) || make_documents(warm, 1, 900000)) {
        fprintf(stderr, "bench: cannot write documents into %s\n", tmp);
        return 1;
    }
    struct stat st;
    char first[PATH_MAX];
    snprintf(first, sizeof(first), "%s/doc-000000.md", docs);
    stat(first, &st);

    printf("docpipe pipeline benchmark: %ld markdown documents (~%.1f KB each), eight"
           " stages as separate processes, %d partitions per topic, %ld CPUs\n",
           n, (double)st.st_size / 1024.0, partitions, sysconf(_SC_NPROCESSORS_ONLN));
    printf("latency = processing_completed_at (finalize) - the moment `docpipe submit`"
           " started; all documents are\nsubmitted in one burst, so it includes"
           " queueing behind the rest of the burst.  Step = a stage's event minus the\n"
           "previous stage's (intake: minus submit start), per document; first/last s ="
           " since submit start.\n");
    fflush(stdout);

    scenario all[] = {{.name = "a", .latency_ms = 0, .instances = 1},
                      {.name = "b", .latency_ms = 1000, .instances = 1},
                      {.name = "c1", .latency_ms = 1000, .instances = 1, .prefill = 1},
                      {.name = "c2", .latency_ms = 1000, .instances = 2, .prefill = 1},
                      {.name = "c4", .latency_ms = 1000, .instances = 4, .prefill = 1}};
    result res[5];
    int failures = 0;
    /* The raw ceiling runs first, beside scenario a (--only a runs both). */
    ceiling_result cres;
    int ceiling_ok = 0;
    memset(&cres, 0, sizeof(cres));
    if (!only || !strcmp(only, "a") || !strcmp(only, "ceiling")) {
        if (run_ceiling(db, tmp, docs, n, ceiling_workers, keep, &cres))
            failures++;
        else
            ceiling_ok = 1;
    }
    for (int i = 0; i < 5 && !interrupted; i++) {
        memset(&res[i], 0, sizeof(res[i]));
        if (only && (!strcmp(only, "ceiling") || all[i].name[0] != only[0]))
            continue;
        if (run_scenario(db, &all[i], tmp, docs, warm, n, keep, &res[i]))
            failures++;
    }

    printf("\nsummary (one run each; other work on this machine makes these noisy)\n");
    for (int i = 0; i < 5; i++)
        if (res[i].ran && !res[i].ok)
            printf("  %-2s FAILED: no figures\n", all[i].name);
    if (ceiling_ok)
        printf("  ceiling (no Kafka, no stages): %7.1f documents/s on this machine\n",
               cres.docs_s);
    if (res[0].ok)
        printf("  a  latency 0 ms, 1 embed:     %7.1f documents/s end to end"
               " (target >= 200: %s)\n", res[0].e2e_docs_s,
               verdict(res[0].e2e_docs_s, 200, 1));
    if (res[0].ok && ceiling_ok) {
        printf("     a / ceiling = %.0f%%; the target is %.2fx the ceiling\n",
               100.0 * res[0].e2e_docs_s / cres.docs_s, 200.0 / cres.docs_s);
        if (res[0].cpu_per_k > 0 && cres.cpu_per_k > 0)
            printf("     CPU-s per 1000 documents: a %.1f, ceiling %.1f (%.2fx)\n",
                   res[0].cpu_per_k, cres.cpu_per_k, res[0].cpu_per_k / cres.cpu_per_k);
    }
    if (res[1].ok)
        printf("  b  latency 1000 ms, 1 embed:  %7.1f documents/s end to end"
               " (target >= 30 per embed instance: %s)\n", res[1].e2e_docs_s,
               verdict(res[1].e2e_docs_s, 30, 1));
    if (res[2].ok || res[3].ok || res[4].ok) {
        printf("  c  latency 1000 ms, embed stage alone on a backlog:\n");
        printf("     %9s %12s %14s %9s %11s %10s\n", "instances", "documents/s",
               "per instance", "scaling", "linear", "cores busy");
        for (int i = 2; i < 5; i++) {
            if (!res[i].ok)
                continue;
            double ratio = res[2].ok && res[2].embed_docs_s > 0
                           ? res[i].embed_docs_s / res[2].embed_docs_s : -1;
            char busy[16] = "-";
            if (res[i].busy >= 0)
                snprintf(busy, sizeof(busy), "%.0f%%", 100 * res[i].busy);
            printf("     %9d %12.1f %14.1f %8.2fx %10d%% %10s   (per instance >= 30: %s)\n",
                   all[i].instances, res[i].embed_docs_s,
                   res[i].embed_docs_s / all[i].instances, ratio,
                   ratio > 0 ? (int)(100 * ratio / all[i].instances + 0.5) : 0, busy,
                   verdict(res[i].embed_docs_s / all[i].instances, 30, 1));
        }
    }
    if (keep)
        printf("kept: documents, logs and storage in %s; rows of each scenario's user"
               " and topics with its prefix\n", tmp);
    else
        rm_tree(tmp);
    stop_all();
    PQfinish(db);
    return failures || interrupted ? 1 : 0;
}

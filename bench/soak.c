/*
 * docpipe-soak: the pipeline under chaos, and what it lost or did twice.
 *
 * It starts a PostgreSQL cluster and a Kafka broker of its own (the
 * service scripts with DOCPIPE_RUN_DIR under --workdir and their own ports,
 * 55532 and 39592/39593 by default, so servers others use are never
 * touched), the embedding service answering 10% of requests with 500 and
 * 2% with 429 and Retry-After (docpipe-embedserver --fail-mix), and
 * --instances processes of every stage (`docpipe run <stage>`).  It submits
 * --documents markdown documents in waves over the first half of the chaos
 * window; --permanent of them are PNG images named .md, which intake refuses
 * for good (failed_upload and one dead letter each).  While the window
 * lasts a schedule SIGKILLs a random stage process every --kill-every-ms
 * MIN-MAX (a supervisor starts it again at once, as a restart policy
 * would), SIGKILLs the broker once (a third of the way) and stops
 * PostgreSQL in immediate mode once (two thirds of the way); both are
 * started again at once.  Then it waits for every document to settle and
 * every stage's lag to reach zero, and reports:
 *
 *   documents complete, lost (not complete, not an injected failure),
 *   failed unexpectedly, repeated rows (document_chunks per document beyond
 *   one per chunk position; missing positions too), repeated events
 *   (stage_done/finalized of one step more than once), repeated completions
 *   (more than one JOB_COMPLETED per document), dead letters (exactly one
 *   per injected failure, none other), and the kills it made.
 *
 * Exit status 0 only when nothing was lost, repeated or dead-lettered
 * beyond the injected failures; 1 otherwise; 2 on a usage error.
 * The retry budget is sized for the injected error rate (retry_max 10), so
 * a batch dead-letters only if the service fails it eleven times running.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_util.h"
#include "ids.h"
#include "pg.h"

#define N_STAGES 8
#define MAX_INSTANCES 4
#define MAX_WAVES 64
#define PREFIX "soak."

static const char *const stage_names[N_STAGES] = {"intake", "parse", "validate", "chunk",
    "embed-plan", "embed", "gather", "finalize"};

/* ---- options ---------------------------------------------------------- */

static long n_docs = 200, n_perm = 4;
static long kill_min_ms = 2000, kill_max_ms = 5000;
static double chaos_s = 75, drain_s = 600;
static int instances = 2;
static uint64_t seed = 1;
static int keep = 0, broker_kill = 1, pg_stop = 1;
static int pg_port = 55532, broker_port = 39592, controller_port = 39593;
static const char *bin, *embedserver, *source_dir, *workdir_opt;
static char workdir[2048], dburl[256], brokers[64]; /* workdir: room for file names */
static volatile sig_atomic_t interrupted;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: docpipe-soak [options]\n"
        "  --documents N         documents to run through (200)\n"
        "  --permanent N         of them made to fail permanently (4)\n"
        "  --kill-every-ms A-B   SIGKILL a random stage process every A..B ms (2000-5000)\n"
        "  --duration S          the chaos window in seconds (75)\n"
        "  --drain-timeout S     then at most this long for documents to settle (600)\n"
        "  --instances N         processes per stage (2, at most %d)\n"
        "  --seed N              the schedule's and the documents' seed (1)\n"
        "  --no-broker-kill      do not SIGKILL the broker\n"
        "  --no-pg-stop          do not stop PostgreSQL\n"
        "  --pg-port N --broker-port N --controller-port N   (55532, 39592, 39593)\n"
        "  --workdir DIR         servers, files and logs (a fresh /tmp folder)\n"
        "  --keep                leave the workdir (and its servers stopped)\n"
        "  --bin PATH            docpipe (DOCPIPE_BIN, ./docpipe)\n"
        "  --embedserver PATH    (DOCPIPE_EMBEDSERVER_BIN, tools/ beside --bin)\n"
        "  --source-dir DIR      the tree with scripts/ (DOCPIPE_SOURCE_DIR, built-in)\n",
        MAX_INSTANCES);
}

/* ---- small things ----------------------------------------------------- */

static uint64_t rng_state;

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static long rnd(long lo, long hi) /* uniform in [lo, hi] */
{
    return lo + (long)(splitmix64(&rng_state) % (uint64_t)(hi - lo + 1));
}

static double t_start;
static double elapsed(void) { return bench_now() - t_start; }

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "soak [%6.1fs] ", elapsed());
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static void on_signal(int sig)
{
    (void)sig;
    interrupted = 1;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)flag, (void)f;
    return remove(path);
}

/* ---- processes -------------------------------------------------------- */

typedef struct proc {
    char name[32];
    pid_t pid;          /* 0: not running */
    int stage;          /* index into stage_names, -1: not a stage */
    double restart_at;  /* > 0: start again then */
    char log[PATH_MAX];
} proc;

static proc stages[N_STAGES * MAX_INSTANCES];
static int n_stage_procs;
static pid_t embed_pid;
static long kills, exits, restarts;

/* Starts argv, stdout to out (NULL: /dev/null), stderr appended to log.
 * The child gets SIGKILL should the soak die first. */
static pid_t spawn(char *const argv[], const char *out, const char *log,
                   const char *const *env)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    for (int i = 0; env && env[i]; i += 2)
        setenv(env[i], env[i + 1], 1);
    int fo = open(out ? out : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int fe = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
        _exit(127);
    execv(argv[0], argv);
    _exit(127);
}

/* Runs argv to its end (at most timeout_s); its exit code, -1 if killed or
 * timed out. */
static int run(char *const argv[], const char *out, double timeout_s)
{
    char log[PATH_MAX];
    snprintf(log, sizeof(log), "%s/commands.log", workdir);
    pid_t pid = spawn(argv, out, log, NULL);
    if (pid < 0)
        return -1;
    double until = bench_now() + timeout_s;
    int st = 0;
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (bench_now() > until || interrupted) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        usleep(50 * 1000);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int script(const char *name, const char *cmd, double timeout_s)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/scripts/%s", source_dir, name);
    char *argv[] = {"/bin/bash", path, (char *)cmd, NULL};
    return run(argv, NULL, timeout_s);
}

/* A server script run in the background (a restart while the chaos goes
 * on); reaped by the main loop. */
typedef struct bg {
    const char *what;
    pid_t pid;
    double started;
} bg;

static bg bgs[4];

static void bg_start(const char *what, const char *name, const char *cmd)
{
    char path[PATH_MAX], log[PATH_MAX];
    snprintf(path, sizeof(path), "%s/scripts/%s", source_dir, name);
    snprintf(log, sizeof(log), "%s/commands.log", workdir);
    char *argv[] = {"/bin/bash", path, (char *)cmd, NULL};
    for (int i = 0; i < 4; i++)
        if (!bgs[i].pid) {
            bgs[i] = (bg){what, spawn(argv, NULL, log, NULL), bench_now()};
            return;
        }
}

/* Reaps finished background scripts; -1 if one failed, else how many run. */
static int bg_poll(void)
{
    int running = 0;
    for (int i = 0; i < 4; i++) {
        int st;
        if (!bgs[i].pid)
            continue;
        if (waitpid(bgs[i].pid, &st, WNOHANG) == bgs[i].pid) {
            bgs[i].pid = 0;
            if (!WIFEXITED(st) || WEXITSTATUS(st)) {
                say("%s failed (see %s/commands.log)", bgs[i].what, workdir);
                return -1;
            }
            say("%s done in %.1f s", bgs[i].what, bench_now() - bgs[i].started);
        } else {
            running++;
        }
    }
    return running;
}

static void stage_start(proc *p)
{
    char instance[96];
    snprintf(instance, sizeof(instance), "soak-%.40s", p->name);
    const char *env[] = {"DOCPIPE_INSTANCE_ID", instance, NULL};
    char *argv[] = {(char *)bin, "run", (char *)stage_names[p->stage], NULL};
    p->pid = spawn(argv, NULL, p->log, env);
    p->restart_at = 0;
}

/* Reaps stage processes; one that went without being killed is counted,
 * and every one is started again (at once after a kill, after a second
 * after an exit of its own, as a restart policy would). */
static void stages_poll(void)
{
    for (int i = 0; i < n_stage_procs; i++) {
        proc *p = &stages[i];
        int st;
        if (p->pid > 0 && waitpid(p->pid, &st, WNOHANG) == p->pid) {
            p->pid = 0;
            if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)) {
                exits++;
                say("%s exited on its own (%s %d), see %s", p->name,
                    WIFEXITED(st) ? "status" : "signal",
                    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), p->log);
                p->restart_at = bench_now() + 1.0;
            } else {
                p->restart_at = bench_now();
            }
        }
        if (!p->pid && p->restart_at > 0 && bench_now() >= p->restart_at) {
            stage_start(p);
            restarts++;
        }
    }
}

static void stop_all(void)
{
    for (int i = 0; i < n_stage_procs; i++)
        if (stages[i].pid > 0)
            kill(stages[i].pid, SIGTERM);
    double until = bench_now() + 30;
    for (int i = 0; i < n_stage_procs; i++) {
        while (stages[i].pid > 0) {
            int st;
            if (waitpid(stages[i].pid, &st, WNOHANG) == stages[i].pid)
                stages[i].pid = 0;
            else if (bench_now() > until) {
                kill(stages[i].pid, SIGKILL);
                waitpid(stages[i].pid, &st, 0);
                stages[i].pid = 0;
            } else
                usleep(50 * 1000);
        }
    }
    if (embed_pid > 0) {
        kill(embed_pid, SIGTERM);
        waitpid(embed_pid, NULL, 0);
        embed_pid = 0;
    }
    for (int i = 0; i < 4; i++)
        if (bgs[i].pid > 0)
            waitpid(bgs[i].pid, NULL, 0);
}

/* ---- PostgreSQL ------------------------------------------------------- */

static PGconn *db;

static void no_notices(void *arg, const char *message)
{
    (void)arg, (void)message; /* "terminating connection due to immediate shutdown" */
}

/* One value of a query (text, copied into out); -1 if it failed (the
 * server restarting, say: the connection is made again next time). */
static int q1(char *out, size_t n, const char *sql, const char *p1)
{
    if (!db || PQstatus(db) != CONNECTION_OK) {
        if (db)
            PQfinish(db);
        db = PQconnectdb(dburl);
        if (PQstatus(db) != CONNECTION_OK)
            return -1;
        PQsetNoticeProcessor(db, no_notices, NULL);
    }
    const char *params[1] = {p1};
    PGresult *r = PQexecParams(db, sql, p1 ? 1 : 0, NULL, params, NULL, NULL, 0);
    int ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
    if (ok)
        snprintf(out, n, "%s", PQgetvalue(r, 0, 0));
    else if (PQstatus(db) != CONNECTION_OK) {
        PQfinish(db);
        db = NULL;
    } else
        fprintf(stderr, "soak: query failed: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok ? 0 : -1;
}

static long q1l(const char *sql, const char *p1)
{
    char v[64];
    return q1(v, sizeof(v), sql, p1) ? -1 : atol(v);
}

/* ---- documents -------------------------------------------------------- */

static const char *const words[] = {"pipeline", "document", "stage", "kafka",
    "offset", "partition", "consumer", "group", "batch", "record", "schema",
    "chunk", "vector", "embedding", "search", "index", "query", "table",
    "commit", "transaction", "fence", "epoch", "retry", "backoff", "breaker",
    "the", "a", "of", "and", "to", "in", "is", "for", "with", "that", "on",
    "each", "every", "after", "before", "while", "never", "always", "stored"};
#define N_WORDS (sizeof(words) / sizeof(words[0]))

static int write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    return fclose(f) == 0 && w == len ? 0 : -1;
}

/* Document i of the run: about 3 KB of markdown, different for every i and
 * seed; or, when permanent, a PNG image named .md (refused at intake), with
 * trailing bytes that make each one different. */
static int make_document(const char *dir, long i, int permanent)
{
    char path[PATH_MAX + 64];
    dp_buf b = {0};
    if (permanent) {
        static const char png[] = "\x89PNG\r\n\x1A\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01"
                                  "\x08\x06\0\0\0\x1F\x15\xC4\x89\0\0\0\rIDATx\x9C"
                                  "c\xF8\x0F\0\x01\x01\x01\0\x18\xDD\x8D\xB0\0\0\0\0"
                                  "IEND\xAE\x42\x60\x82";
        dp_buf_append(&b, png, sizeof(png) - 1);
        dp_buf_appendf(&b, "soak %llu %ld", (unsigned long long)seed, i);
        snprintf(path, sizeof(path), "%s/picture-%06ld.md", dir, i);
    } else {
        uint64_t s = seed * 1000003ULL + (uint64_t)i;
        dp_buf_appendf(&b, "# Soak document %06ld (seed %llu)\n\n", i,
                       (unsigned long long)seed);
        for (int sec = 1; b.len < 3000; sec++) {
            dp_buf_appendf(&b, "## Section %d of %ld\n\n", sec, i);
            for (int p = 0; p < 3; p++) {
                for (int w = 0; w < 40; w++)
                    dp_buf_appendf(&b, "%s%s", w ? " " : "",
                                   words[splitmix64(&s) % N_WORDS]);
                dp_buf_append(&b, ".\n\n", 3);
            }
        }
        snprintf(path, sizeof(path), "%s/doc-%06ld.md", dir, i);
    }
    int rc = write_file(path, b.data, b.len);
    dp_buf_free(&b);
    return rc;
}

typedef struct wave {
    char dir[PATH_MAX];
    double at;          /* seconds into the chaos window */
    pid_t pid;          /* submit running */
    int done, tries;
    double retry_at;
} wave;

static wave waves[MAX_WAVES];
static int n_waves;
static char user[DP_UUID_STR_SIZE];

static void wave_submit(wave *w)
{
    char out[PATH_MAX + 16], log[PATH_MAX];
    snprintf(out, sizeof(out), "%s.out", w->dir);
    snprintf(log, sizeof(log), "%s/submit.log", workdir);
    char *argv[] = {(char *)bin, "submit", "--user", user, w->dir, NULL};
    w->pid = spawn(argv, out, log, NULL);
    w->tries++;
}

/* Reaps submits; a failed one (the broker down, say) goes again in 3 s:
 * the same file takes its document over. */
static void waves_poll(double chaos_t)
{
    for (int i = 0; i < n_waves; i++) {
        wave *w = &waves[i];
        int st;
        if (w->pid > 0 && waitpid(w->pid, &st, WNOHANG) == w->pid) {
            w->pid = 0;
            if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
                w->done = 1;
            else {
                say("submit of wave %d failed (try %d), again in 3 s", i, w->tries);
                w->retry_at = bench_now() + 3;
            }
        }
        if (!w->done && !w->pid && chaos_t >= w->at && bench_now() >= w->retry_at)
            wave_submit(w);
    }
}

static int waves_done(void)
{
    for (int i = 0; i < n_waves; i++)
        if (!waves[i].done)
            return 0;
    return 1;
}

/* ---- lag -------------------------------------------------------------- */

/* The sum of every stage's lag (docpipe lag --json), -1 if unknown. */
static long total_lag(void)
{
    char out[PATH_MAX];
    snprintf(out, sizeof(out), "%s/lag.json", workdir);
    char *argv[] = {(char *)bin, "lag", "--json", NULL};
    if (run(argv, out, 60) != 0)
        return -1;
    json_error_t e;
    json_t *doc = json_load_file(out, 0, &e);
    json_t *arr = json_object_get(doc, "stages"), *s;
    size_t i;
    long sum = json_is_array(arr) && json_array_size(arr) == N_STAGES ? 0 : -1;
    json_array_foreach(arr, i, s)
    {
        json_t *lag = json_object_get(json_object_get(s, "total"), "lag");
        if (sum >= 0 && json_is_integer(lag))
            sum += (long)json_integer_value(lag);
        else
            sum = -1;
    }
    json_decref(doc);
    return sum;
}

/* ---- the run ---------------------------------------------------------- */

static int parse_range(const char *s, long *a, long *b)
{
    char *end;
    *a = strtol(s, &end, 10);
    if (*end == '-')
        *b = strtol(end + 1, &end, 10);
    else
        *b = *a;
    return *end || *a < 100 || *b < *a ? -1 : 0;
}

static int parse_args(int argc, char **argv)
{
    bin = getenv("DOCPIPE_BIN") ? getenv("DOCPIPE_BIN") : "./docpipe";
    embedserver = getenv("DOCPIPE_EMBEDSERVER_BIN");
    source_dir = getenv("DOCPIPE_SOURCE_DIR") ? getenv("DOCPIPE_SOURCE_DIR")
                                              : DOCPIPE_SOURCE_DIR;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
#define VAL (v ? (i++, v) : (fprintf(stderr, "soak: %s needs a value\n", a), (char *)NULL))
        if (!strcmp(a, "--help")) {
            usage(stdout);
            exit(0);
        } else if (!strcmp(a, "--keep")) {
            keep = 1;
        } else if (!strcmp(a, "--no-broker-kill")) {
            broker_kill = 0;
        } else if (!strcmp(a, "--no-pg-stop")) {
            pg_stop = 0;
        } else {
            const char *x = VAL;
            if (!x)
                return -1;
            if (!strcmp(a, "--documents"))
                n_docs = atol(x);
            else if (!strcmp(a, "--permanent"))
                n_perm = atol(x);
            else if (!strcmp(a, "--kill-every-ms")) {
                if (parse_range(x, &kill_min_ms, &kill_max_ms)) {
                    fprintf(stderr, "soak: --kill-every-ms wants MIN-MAX ms (>= 100)\n");
                    return -1;
                }
            } else if (!strcmp(a, "--duration"))
                chaos_s = atof(x);
            else if (!strcmp(a, "--drain-timeout"))
                drain_s = atof(x);
            else if (!strcmp(a, "--instances"))
                instances = atoi(x);
            else if (!strcmp(a, "--seed"))
                seed = strtoull(x, NULL, 10);
            else if (!strcmp(a, "--pg-port"))
                pg_port = atoi(x);
            else if (!strcmp(a, "--broker-port"))
                broker_port = atoi(x);
            else if (!strcmp(a, "--controller-port"))
                controller_port = atoi(x);
            else if (!strcmp(a, "--workdir"))
                workdir_opt = x;
            else if (!strcmp(a, "--bin"))
                bin = x;
            else if (!strcmp(a, "--embedserver"))
                embedserver = x;
            else if (!strcmp(a, "--source-dir"))
                source_dir = x;
            else {
                fprintf(stderr, "soak: unknown option %s\n", a);
                usage(stderr);
                return -1;
            }
        }
#undef VAL
    }
    if (n_docs < 1 || n_perm < 0 || n_perm >= n_docs || chaos_s < 10 || drain_s < 10 ||
        instances < 1 || instances > MAX_INSTANCES || pg_port < 1 || broker_port < 1 ||
        controller_port < 1) {
        fprintf(stderr, "soak: --documents >= 1, 0 <= --permanent < documents, "
                        "--duration and --drain-timeout >= 10, --instances 1..%d\n",
                MAX_INSTANCES);
        return -1;
    }
    return 0;
}

/* Whether something answers on 127.0.0.1:port (the soak's servers must be
 * its own: it kills them). */
static int port_answers(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int ok = fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    if (fd >= 0)
        close(fd);
    return ok;
}

/* Server environment and the pipeline's settings, inherited by every child. */
static void set_environment(void)
{
    char v[PATH_MAX + 16];
    snprintf(v, sizeof(v), "%s/run", workdir);
    setenv("DOCPIPE_RUN_DIR", v, 1);
    snprintf(v, sizeof(v), "%d", pg_port);
    setenv("DOCPIPE_PG_PORT", v, 1);
    snprintf(v, sizeof(v), "%d", broker_port);
    setenv("DOCPIPE_BROKER_PORT", v, 1);
    snprintf(v, sizeof(v), "%d", controller_port);
    setenv("DOCPIPE_CONTROLLER_PORT", v, 1);
    if (!getenv("KAFKA_HEAP_OPTS"))
        setenv("KAFKA_HEAP_OPTS", "-Xmx512m -Xms256m", 1);
    snprintf(dburl, sizeof(dburl), "postgresql://postgres@127.0.0.1:%d/docpipe", pg_port);
    snprintf(brokers, sizeof(brokers), "127.0.0.1:%d", broker_port);
    setenv("DOCPIPE_DATABASE_URL", dburl, 1);
    setenv("DOCPIPE_BROKERS", brokers, 1);
    setenv("DOCPIPE_TOPIC_PREFIX", PREFIX, 1);
    snprintf(v, sizeof(v), "%s/storage", workdir);
    setenv("DOCPIPE_STORAGE_DIR", v, 1);
    setenv("DOCPIPE_LOG_LEVEL", "warn", 1);
    /* A killed process's partitions go after 6 s, not 45. */
    setenv("DOCPIPE_KAFKA_SESSION_TIMEOUT_MS", "6000", 1);
    /* 12% of requests fail on purpose: a budget for that, retried soon. */
    setenv("DOCPIPE_RETRY_MAX", "10", 1);
    setenv("DOCPIPE_RETRY_BASE_MS", "300", 1);
    setenv("DOCPIPE_BREAKER_RESET_MS", "2000", 1);
    setenv("DOCPIPE_EMBED_TPM", "1000000000", 1);
    setenv("DOCPIPE_EMBED_RPM", "100000000", 1);
    setenv("DOCPIPE_EMBED_DIM", "256", 1);
    unsetenv("DOCPIPE_CONFIG");
}

static int start_embedserver(void)
{
    char out[PATH_MAX], log[PATH_MAX], path[PATH_MAX];
    if (!embedserver) {
        const char *slash = strrchr(bin, '/');
        snprintf(path, sizeof(path), "%.*stools/docpipe-embedserver",
                 slash ? (int)(slash - bin + 1) : 0, bin);
        embedserver = path;
    }
    snprintf(out, sizeof(out), "%s/embedserver.out", workdir);
    snprintf(log, sizeof(log), "%s/embedserver.log", workdir);
    char *argv[] = {(char *)embedserver, "--port", "0", "--quiet", "--fail-mix",
                    "500:0.10,429:0.02", "--retry-after-s", "1", "--dim", "256", NULL};
    embed_pid = spawn(argv, out, log, NULL);
    for (double until = bench_now() + 30; bench_now() < until;) {
        char line[256] = "";
        FILE *f = fopen(out, "r");
        if (f && fgets(line, sizeof(line), f)) {
            char host[64];
            int port;
            if (sscanf(line, "listening on %63[^:]:%d", host, &port) == 2) {
                char url[128];
                snprintf(url, sizeof(url), "http://%s:%d", host, port);
                setenv("DOCPIPE_EMBED_URL", url, 1);
                fclose(f);
                return 0;
            }
        }
        if (f)
            fclose(f);
        if (waitpid(embed_pid, NULL, WNOHANG) == embed_pid) {
            embed_pid = 0;
            break;
        }
        usleep(50 * 1000);
    }
    fprintf(stderr, "soak: %s did not start (see %s)\n", embedserver, log);
    return -1;
}

/* Every stage's group holds every partition of its input. */
static int wait_joined(double timeout_s)
{
    double until = bench_now() + timeout_s;
    while (bench_now() < until && !interrupted) {
        stages_poll();
        long n = q1l("SELECT count(DISTINCT group_id) FROM (SELECT group_id, count(*) c"
                     " FROM docpipe.dp_offsets WHERE left(group_id, length($1)) = $1"
                     " GROUP BY group_id) g WHERE c >= 4", PREFIX);
        if (n >= N_STAGES)
            return 0;
        usleep(500 * 1000);
    }
    return -1;
}

/* The figures, printed; 0 if they are what they must be. */
typedef struct report {
    long submitted, complete, lost, failed_unexpected, failed_injected;
    long rows, repeated_rows, missing_rows, vectors, repeated_events,
        repeated_completions, dead_letters, dead_letters_injected;
} report;

static int measure(report *r)
{
    char v[64];
    const char *u = user;
#define Q(field, sql) \
    if (q1(v, sizeof(v), sql, u)) \
        return -1; \
    r->field = atol(v)
    Q(submitted, "SELECT count(*) FROM upload_pipeline.upload_jobs WHERE user_id = $1::uuid");
    Q(complete, "SELECT count(*) FROM upload_pipeline.upload_jobs WHERE user_id = $1::uuid"
                " AND status = 'complete'");
    Q(failed_injected,
      "SELECT count(*) FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d"
      " USING (document_id) WHERE j.user_id = $1::uuid AND j.status = 'failed_upload'"
      " AND d.filename LIKE 'picture-%'");
    Q(failed_unexpected,
      "SELECT count(*) FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d"
      " USING (document_id) WHERE j.user_id = $1::uuid AND j.status LIKE 'failed_%'"
      " AND NOT (j.status = 'failed_upload' AND d.filename LIKE 'picture-%')");
    Q(rows, "SELECT count(*) FROM upload_pipeline.document_chunks c JOIN"
            " upload_pipeline.upload_jobs j USING (document_id) WHERE j.user_id = $1::uuid");
    Q(repeated_rows,
      "SELECT coalesce(sum(n - positions), 0) FROM (SELECT count(*) n,"
      " count(DISTINCT chunk_ord) positions FROM upload_pipeline.document_chunks c"
      " JOIN upload_pipeline.upload_jobs j USING (document_id)"
      " WHERE j.user_id = $1::uuid GROUP BY document_id) d");
    /* A complete document has chunks 0..max, none missing, and at least one. */
    Q(missing_rows,
      "SELECT coalesce(sum(coalesce(c.top + 1 - c.positions, 1)), 0)"
      " FROM upload_pipeline.upload_jobs j LEFT JOIN (SELECT document_id,"
      " max(chunk_ord) top, count(DISTINCT chunk_ord) positions"
      " FROM upload_pipeline.document_chunks GROUP BY document_id) c USING (document_id)"
      " WHERE j.user_id = $1::uuid AND j.status = 'complete'");
    Q(vectors, "SELECT count(*) FROM upload_pipeline.document_chunks c JOIN"
               " upload_pipeline.upload_jobs j USING (document_id) WHERE j.user_id = $1::uuid"
               " AND c.vector_dim = 256 AND cardinality(c.embedding) = 256");
    Q(repeated_events,
      "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM upload_pipeline.events e"
      " JOIN upload_pipeline.upload_jobs j USING (document_id) WHERE j.user_id = $1::uuid"
      " AND e.type IN ('stage_done', 'finalized', 'error') GROUP BY e.document_id, e.type,"
      " e.code, e.stage, e.from_status, e.to_status) g WHERE n > 1");
    Q(repeated_completions,
      "SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) n FROM upload_pipeline.events e"
      " JOIN upload_pipeline.upload_jobs j USING (document_id) WHERE j.user_id = $1::uuid"
      " AND e.to_status = 'complete' GROUP BY e.document_id) g WHERE n > 1");
    Q(dead_letters, "SELECT count(*) FROM docpipe.dp_dead_letters"
                    " WHERE left(group_id, length('" PREFIX "')) = '" PREFIX "'"
                    " AND $1::text IS NOT NULL");
    /* One per injected document: its key, refused by intake for good. */
    Q(dead_letters_injected,
      "SELECT count(DISTINCT l.record_key) FROM docpipe.dp_dead_letters l"
      " JOIN upload_pipeline.documents d ON l.record_key = convert_to(d.document_id::text,"
      " 'UTF8') WHERE d.user_id = $1::uuid AND d.filename LIKE 'picture-%'"
      " AND l.group_id = '" PREFIX "intake' AND l.category = 'permanent'");
#undef Q
    r->lost = (n_docs - n_perm) - r->complete;
    return 0;
}

int main(int argc, char **argv)
{
    if (parse_args(argc, argv))
        return 2;
    t_start = bench_now();
    rng_state = seed;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGPIPE, SIG_IGN);
    if (workdir_opt) {
        if (strlen(workdir_opt) >= sizeof(workdir) - 1) {
            fprintf(stderr, "soak: --workdir is too long\n");
            return 2;
        }
        snprintf(workdir, sizeof(workdir), "%s", workdir_opt);
        mkdir(workdir, 0755);
    } else {
        snprintf(workdir, sizeof(workdir), "/tmp/docpipe-soak-XXXXXX");
        if (!mkdtemp(workdir)) {
            perror("soak: mkdtemp");
            return 1;
        }
        chmod(workdir, 0755); /* the postgres user creates its cluster inside */
    }
    int ports[3] = {pg_port, broker_port, controller_port};
    for (int i = 0; i < 3; i++)
        if (port_answers(ports[i])) {
            fprintf(stderr, "soak: something already listens on 127.0.0.1:%d; the soak "
                            "kills its servers, so it starts its own on free ports "
                            "(--pg-port, --broker-port, --controller-port)\n", ports[i]);
            if (!workdir_opt)
                rmdir(workdir);
            return 1;
        }
    set_environment();
    int rc = 1, servers = 0;
    double chaos_t0 = 0, drain_t0 = 0, drain_end = 0;
    double broker_killed_at = -1, pg_stopped_at = -1;
    report r = {0};

    say("workdir %s; PostgreSQL 127.0.0.1:%d, Kafka %s of its own", workdir, pg_port,
        brokers);
    /* Both servers at once: the broker's JVM takes the longer. */
    bg_start("PostgreSQL start", "postgres.sh", "start");
    bg_start("Kafka start", "kafka.sh", "start");
    servers = 1;
    int left;
    while ((left = bg_poll()) > 0 && !interrupted)
        usleep(100 * 1000);
    if (left < 0 || interrupted)
        goto out;

    char *migrate[] = {(char *)bin, "migrate", NULL};
    char *topics[] = {(char *)bin, "topics", NULL};
    if (run(migrate, NULL, 120) || run(topics, NULL, 120)) {
        say("docpipe migrate/topics failed (see %s/commands.log)", workdir);
        goto out;
    }
    if (start_embedserver())
        goto out;

    /* Documents, in waves over the first half of the chaos window. */
    dp_uuid4(user);
    n_waves = (int)(chaos_s / 8);
    n_waves = n_waves < 1 ? 1 : n_waves > MAX_WAVES ? MAX_WAVES : n_waves;
    if (n_waves > n_docs)
        n_waves = (int)n_docs;
    for (int w = 0; w < n_waves; w++) {
        snprintf(waves[w].dir, sizeof(waves[w].dir), "%s/docs-%02d", workdir, w);
        mkdir(waves[w].dir, 0755);
        waves[w].at = n_waves > 1 ? chaos_s * 0.5 * w / (n_waves - 1) : 0;
    }
    /* Permanent failures spread evenly over the documents. */
    for (long i = 0; i < n_docs; i++) {
        int perm = n_perm > 0 && i % (n_docs / n_perm) == 0 && i / (n_docs / n_perm) < n_perm;
        if (make_document(waves[i % n_waves].dir, i, perm)) {
            say("cannot write documents under %s", workdir);
            goto out;
        }
    }

    for (int s = 0; s < N_STAGES; s++)
        for (int k = 0; k < instances; k++) {
            proc *p = &stages[n_stage_procs++];
            p->stage = s;
            snprintf(p->name, sizeof(p->name), "%s-%d", stage_names[s], k + 1);
            snprintf(p->log, sizeof(p->log), "%s/%s-%d.log", workdir, stage_names[s], k + 1);
            stage_start(p);
        }
    if (wait_joined(180)) {
        say("the stages did not take their partitions in 180 s (logs in %s)", workdir);
        goto out;
    }
    say("%d stage processes hold their partitions; chaos for %.0f s, %ld documents "
        "in %d waves, a kill every %ld-%ld ms", n_stage_procs, chaos_s, n_docs, n_waves,
        kill_min_ms, kill_max_ms);

    chaos_t0 = bench_now();
    double next_kill = chaos_t0 + (double)rnd(kill_min_ms, kill_max_ms) / 1000;
    double next_show = chaos_t0;
    double settled_at = 0;
    for (;;) {
        if (interrupted)
            goto out;
        double now = bench_now(), t = now - chaos_t0;
        stages_poll();
        waves_poll(t);
        if (bg_poll() < 0)
            goto out;
        if (embed_pid > 0 && waitpid(embed_pid, NULL, WNOHANG) == embed_pid) {
            say("the embedding service died (see %s/embedserver.log)", workdir);
            embed_pid = 0;
            goto out;
        }
        if (t < chaos_s) {
            if (now >= next_kill) {
                proc *p = &stages[rnd(0, n_stage_procs - 1)];
                if (p->pid > 0) {
                    say("SIGKILL %s (pid %d)", p->name, (int)p->pid);
                    kill(p->pid, SIGKILL);
                    kills++;
                }
                next_kill = now + (double)rnd(kill_min_ms, kill_max_ms) / 1000;
            }
            if (broker_kill && broker_killed_at < 0 && t >= chaos_s / 3) {
                say("SIGKILL the broker, then start it again");
                if (script("kafka.sh", "kill", 60)) {
                    say("could not kill the broker (see %s/commands.log)", workdir);
                    goto out;
                }
                broker_killed_at = t;
                bg_start("Kafka restart", "kafka.sh", "start");
            }
            if (pg_stop && pg_stopped_at < 0 && t >= chaos_s * 2 / 3) {
                say("stop PostgreSQL in immediate mode, then start it again");
                if (script("postgres.sh", "crash", 60)) {
                    say("could not stop PostgreSQL (see %s/commands.log)", workdir);
                    goto out;
                }
                pg_stopped_at = t;
                bg_start("PostgreSQL restart", "postgres.sh", "start");
            }
        } else if (!drain_t0) {
            drain_t0 = now;
            say("chaos over: %ld stage kills; draining", kills);
        }
        if (now >= next_show) {
            char states[512] = "";
            q1(states, sizeof(states),
               "SELECT coalesce(string_agg(status || ' ' || n, ', ' ORDER BY status), 'none')"
               " FROM (SELECT status, count(*) n FROM upload_pipeline.upload_jobs"
               " WHERE user_id = $1::uuid GROUP BY status) s", user);
            say("%s", *states ? states : "(PostgreSQL unreachable)");
            next_show = now + 5;
        }
        if (drain_t0) {
            long settled = q1l("SELECT count(*) FROM upload_pipeline.upload_jobs WHERE"
                               " user_id = $1::uuid AND (status = 'complete'"
                               " OR status LIKE 'failed_%')", user);
            int bg_running = bg_poll();
            if (settled == n_docs && waves_done() && bg_running == 0) {
                if (!settled_at) {
                    settled_at = now;
                    say("every document settled; waiting for every stage's lag to be 0");
                }
                long lag = total_lag();
                if (lag == 0) {
                    drain_end = bench_now();
                    break;
                }
            }
            if (now - drain_t0 > drain_s) {
                say("drain timed out after %.0f s", drain_s);
                break;
            }
        }
        usleep(100 * 1000);
    }

    if (measure(&r)) {
        say("could not read the figures from PostgreSQL");
        goto out;
    }
    int ok = r.lost == 0 && r.failed_unexpected == 0 && r.repeated_rows == 0 &&
             r.missing_rows == 0 && r.vectors == r.rows && r.repeated_events == 0 &&
             r.repeated_completions == 0 && r.dead_letters == n_perm &&
             r.dead_letters_injected == n_perm && r.failed_injected == n_perm && r.submitted == n_docs &&
             drain_end > 0;
    printf("soak: %ld documents (%ld made to fail permanently), %d processes of each of "
           "%d stages, seed %llu\n", n_docs, n_perm, instances, N_STAGES,
           (unsigned long long)seed);
    printf("documents submitted: %ld\n", r.submitted);
    printf("documents complete: %ld of %ld\n", r.complete, n_docs - n_perm);
    printf("documents lost: %ld\n", r.lost);
    printf("documents failed unexpectedly: %ld\n", r.failed_unexpected);
    printf("injected permanent failures: %ld of %ld failed_upload\n", r.failed_injected,
           n_perm);
    printf("chunk rows: %ld (with their vector: %ld)\n", r.rows, r.vectors);
    printf("repeated rows: %ld\n", r.repeated_rows);
    printf("missing rows: %ld\n", r.missing_rows);
    printf("repeated events: %ld\n", r.repeated_events);
    printf("repeated completions: %ld\n", r.repeated_completions);
    printf("dead letters: %ld (for injected failures: %ld, expected %ld, other: %ld)\n",
           r.dead_letters, r.dead_letters_injected, n_perm,
           r.dead_letters - r.dead_letters_injected);
    printf("kills: %ld stage processes (SIGKILL), broker %d (SIGKILL at %.1f s), "
           "PostgreSQL %d (immediate stop at %.1f s)\n", kills, broker_killed_at >= 0,
           broker_killed_at, pg_stopped_at >= 0, pg_stopped_at);
    printf("stage processes exited on their own: %ld (restarted: %ld)\n", exits, restarts);
    printf("time: chaos %.0f s, drain %.1f s%s\n", chaos_s,
           (drain_end > 0 ? drain_end : bench_now()) - (drain_t0 ? drain_t0 : bench_now()),
           drain_end > 0 ? "" : " (timed out)");
    printf("result: %s\n", ok ? "PASS" : "FAIL");
    fflush(stdout);
    rc = ok ? 0 : 1;

out:;
    /* Cleaning up runs to its end even after Ctrl-C. */
    int was_interrupted = interrupted;
    interrupted = 0;
    stop_all();
    if (db)
        PQfinish(db);
    if (servers) {
        script("kafka.sh", "stop", 120);
        script("postgres.sh", "stop", 120);
    }
    if (!keep && rc == 0)
        nftw(workdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    else
        say("logs and files kept in %s", workdir);
    return was_interrupted ? 130 : rc;
}

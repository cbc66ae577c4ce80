/*
 * docpipe: the command line.
 *
 *   docpipe migrate                 apply schemas/sql migrations
 *   docpipe topics                  create every stage's topics
 *   docpipe run <stage>... | all    run stages, each its own consumer group
 *   docpipe submit <file|dir>...    store files and publish their uploads
 *   docpipe status [<document>...]  counts by state, or one document's story
 *   docpipe wait [<document>...]    until complete or failed
 *   docpipe retry <selection>       failed documents through again, after a fix
 *   docpipe replay <stage> ...      a stage's records processed again
 *   docpipe lag [--stage S]...      how far each stage is behind its input
 *   docpipe dlq <command>           dead letters: list, show, redrive, purge
 *   docpipe search TEXT             the chunks nearest to a text
 *   docpipe gc                      remove what is no longer needed
 *   docpipe demo-produce N [...]    publish demonstration records
 *   docpipe config-doc              print docs/configuration.md
 *
 * Data goes to stdout, diagnostics (JSON lines) to stderr.  Exit codes
 * (cli.h): 0 success, 1 failure, 2 usage error, 3 timed out (wait,
 * submit --wait), 130 after SIGINT and 143 after SIGTERM.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "http.h"
#include "services.h"
#include "log.h"
#include "migrate.h"
#include "pg.h"
#include "publish.h"
#include "runtime.h"
#include "stages.h"
#include "topics.h"

#define EXIT_USAGE 2

static volatile sig_atomic_t dp_stop;

/* The signal's number: commands exit 128 plus it (cli.h). */
static void on_signal(int sig)
{
    dp_stop = sig;
}

static void usage(FILE *out)
{
    fprintf(out,
        "usage: docpipe <command> [arguments]\n\n"
        "Commands:\n"
        "  migrate                  apply pending SQL migrations\n"
        "  topics [--partitions N] [--replication-factor N] [--config K=V]...\n"
        "         [--dlq-retention-ms MS]\n"
        "                           create every stage's input, output and\n"
        "                           dead-letter topics (existing ones are kept);\n"
        "                           defaults: topic_partitions, topic_replication,\n"
        "                           topic_configs, dlq_retention_ms\n"
        "  run [--http ADDR] <stage>... | all\n"
        "                           run stages in this process, each its own\n"
        "                           consumer group; SIGTERM/SIGINT stop cleanly;\n"
        "                           --http: dashboard, /metrics, /livez, /readyz\n"
        "  submit [--user UUID] [--json] [--wait [--timeout S]] <file|dir>...\n"
        "                           store files (PDF, HTML, text, markdown) and\n"
        "                           publish their uploads; prints document id,\n"
        "                           type, name (tab, newline, backslash in it as\n"
        "                           \\t \\n \\\\); --wait: then as wait does\n"
        "                           (docpipe submit --help)\n"
        "  status [--json] [<document>...]\n"
        "                           documents by state, or per document: state,\n"
        "                           progress, error and the timeline of stages\n"
        "  wait [--timeout S] [--progress-every S] [--json] [<document>...]\n"
        "                           until the documents (default: all) are complete\n"
        "                           or failed, with progress on stderr; exit 0 all\n"
        "                           complete, 1 some failed, 3 timed out\n"
        "  retry [--from parse|chunk|embed] [--dry-run] [--batch N] [--restart]\n"
        "        <document>... | - | --all | --user UUID | --state S |\n"
        "        --since T | --until T\n"
        "                           send the chosen failed documents through\n"
        "                           again from the stage that failed, after a\n"
        "                           fix; --from: complete ones too, from that\n"
        "                           stage; in chunks of N, resumable; prints\n"
        "                           document, state, stage (docpipe retry --help)\n"
        "  replay <stage> (--to-earliest | --to-latest | --to-datetime T |\n"
        "         --to-offset N | --shift-by N) [--partition P]... [--execute]\n"
        "                           move a stage back (or on) in its input topic:\n"
        "                           its records are processed again, documents\n"
        "                           past it start over there; a dry run unless\n"
        "                           --execute (docpipe replay --help)\n"
        "  lag [--stage S]... [--json]\n"
        "                           per stage and partition: log end, committed\n"
        "                           position, lag, owner, since, last commit;\n"
        "                           a total per stage (demo only if named)\n"
        "  dlq list [--stage S] [--since T] [--unresolved|--all] [--json]\n"
        "                           dead letters of the topic prefix: id, stage,\n"
        "                           source, category, attempts, state, error\n"
        "  dlq show [--json] ID     one dead letter: its facts, the headers it was\n"
        "                           sent with, its value decoded from Avro\n"
        "  dlq redrive [--dry-run] [--batch N] ID... | --all | --stage S [--since T]\n"
        "                           send the original records back to their stage's\n"
        "                           input topic, each exactly once (even if\n"
        "                           interrupted and run again), and resolve them\n"
        "  dlq purge --older-than DURATION|T [--include-unresolved] [--dry-run]\n"
        "                           delete old dead letters (by default resolved\n"
        "                           ones only); prints how many\n"
        "  search [--k N] [--user UUID] [--json] TEXT\n"
        "                           the chunks nearest to TEXT (cosine of the\n"
        "                           embeddings): rank, score, document, ordinal,\n"
        "                           file, snippet (docpipe search --help)\n"
        "  gc [--older-than DURATION] [--dry-run] [--json]\n"
        "                           remove what nothing needs any more: temporary\n"
        "                           and unreferenced files, old events, resolved\n"
        "                           dead letters, consumed attempts (docpipe gc --help)\n"
        "  demo-produce N [--start I] [--body TEXT] [--key K] [--garbage]\n"
        "                           publish N demonstration records to the demo\n"
        "                           stage's input topic\n"
        "  config-doc               print the settings as Markdown\n"
        "  help                     this text\n\n"
        "Exit status: 0 done, 1 failed, 2 usage error, 3 timed out (wait,\n"
        "submit --wait); SIGINT or SIGTERM end a command cleanly: 130 or 143.\n\n"
        "Stages:\n");
    for (const dp_stage_def *d = dp_stage_defs; d->name; d++)
        fprintf(out, "  %-24s %s\n", d->name, d->help);
    fprintf(out, "\n");
    dp_config_print_help(out);
}

int dp_cmd_submit(const dp_config *cfg, int argc, char **argv,
                  volatile sig_atomic_t *stop);
int dp_cmd_status(const dp_config *cfg, int argc, char **argv,
                  volatile sig_atomic_t *stop);
int dp_cmd_wait(const dp_config *cfg, int argc, char **argv,
                volatile sig_atomic_t *stop);
int dp_cmd_retry(const dp_config *cfg, int argc, char **argv,
                 volatile sig_atomic_t *stop);
void dp_retry_usage(FILE *out);
int dp_cmd_replay(const dp_config *cfg, int argc, char **argv);
int dp_cmd_lag(const dp_config *cfg, int argc, char **argv);
int dp_cmd_dlq(const dp_config *cfg, volatile sig_atomic_t *stop, int argc, char **argv);
int dp_cmd_search(const dp_config *cfg, int argc, char **argv);
int dp_cmd_gc(const dp_config *cfg, int argc, char **argv);

static int cmd_migrate(const dp_config *cfg)
{
    char err[1024], dir[4096];
    PGconn *db;
    if (dp_pg_connect(cfg, "docpipe-migrate", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe migrate: %s\n", err);
        return 1;
    }
    snprintf(dir, sizeof(dir), "%s/sql", cfg->schema_dir);
    int applied = 0;
    dp_err e = dp_migrate(db, dir, stdout, &applied, err, sizeof(err));
    PQfinish(db);
    if (e) {
        fprintf(stderr, "docpipe migrate: %s\n", err);
        return 1;
    }
    printf("%d migration(s) applied, schema up to date\n", applied);
    return 0;
}

static int cmd_topics(const dp_config *cfg, int argc, char **argv)
{
    static const struct option lopts[] = {
        {"partitions", required_argument, NULL, 'p'},
        {"replication-factor", required_argument, NULL, 'r'},
        {"config", required_argument, NULL, 'c'},
        {"dlq-retention-ms", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0}};
    dp_topic_spec spec = {cfg->topic_partitions, cfg->topic_replication, NULL,
                          cfg->dlq_retention_ms};
    dp_buf configs = {0};
    if (cfg->topic_configs && *cfg->topic_configs)
        dp_buf_appendf(&configs, "%s", cfg->topic_configs);
    /* getopt_long names argv[0] in its messages. */
    char prog[] = "docpipe topics";
    argv[0] = prog;
    optind = 0; /* glibc: start afresh */
    int c;
    while ((c = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        char *end = NULL;
        long long v = 0;
        if (c != 'c' && c != '?') {
            v = strtoll(optarg, &end, 10);
            if (!*optarg || *end || (c != 'd' && (v < 1 || v > 1024)) ||
                (c == 'd' && v < -1)) {
                fprintf(stderr, "docpipe topics: bad value '%s'\n", optarg);
                dp_buf_free(&configs);
                return EXIT_USAGE;
            }
        }
        switch (c) {
        case 'p': spec.partitions = (int)v; break;
        case 'r': spec.replication = (int)v; break;
        case 'd': spec.dlq_retention_ms = v; break;
        case 'c':
            if (!strchr(optarg, '=') || strchr(optarg, ',')) {
                fprintf(stderr, "docpipe topics: --config wants NAME=VALUE, got '%s'\n",
                        optarg);
                dp_buf_free(&configs);
                return EXIT_USAGE;
            }
            dp_buf_appendf(&configs, "%s%s", configs.len ? "," : "", optarg);
            break;
        default:
            dp_buf_free(&configs);
            return EXIT_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "docpipe topics: unexpected argument '%s'\n", argv[optind]);
        dp_buf_free(&configs);
        return EXIT_USAGE;
    }
    spec.configs = configs.data;
    const char *names[256];
    int dlq[256];
    int n = 0;
    dp_stage stages[32];
    int nst = 0;
    char err[1024];
    for (const dp_stage_def *d = dp_stage_defs; d->name && nst < 32; d++) {
        if (dp_stages_open(cfg, d->name, &stages[nst], err, sizeof(err))) {
            fprintf(stderr, "docpipe topics: %s\n", err);
            for (int i = 0; i < nst; i++)
                dp_stages_close(dp_stage_defs[i].name, &stages[i]);
            dp_buf_free(&configs);
            return 1;
        }
        dp_stage *s = &stages[nst++];
        const char *mine[3] = {s->input_topic, s->dlq_topic, NULL};
        for (int i = 0; mine[i] && n < 250; i++) {
            dlq[n] = mine[i] == s->dlq_topic;
            names[n++] = mine[i];
        }
        for (int i = 0; s->output_topics && s->output_topics[i] && n < 250; i++) {
            dlq[n] = 0;
            names[n++] = s->output_topics[i];
        }
    }
    /* Topics shared by two stages appear twice: drop the repeats. */
    int m = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int j = 0; j < m; j++)
            seen |= strcmp(names[j], names[i]) == 0;
        if (!seen) {
            dlq[m] = dlq[i];
            names[m++] = names[i];
        }
    }
    int created = 0;
    dp_err e = dp_topics_ensure(cfg, names, dlq, m, &spec, &created, err, sizeof(err));
    dp_buf_free(&configs);
    for (int i = 0; i < nst; i++)
        dp_stages_close(dp_stage_defs[i].name, &stages[i]);
    if (e) {
        fprintf(stderr, "docpipe topics: %s\n", err);
        return 1;
    }
    printf("%d topic(s) checked, %d created\n", m, created);
    return 0;
}

typedef struct stage_thread {
    const dp_config *cfg;
    const char *name;
    dp_stage stage;
    dp_runtime *rt;
    pthread_t tid;
    int rc;
    char err[1024];
} stage_thread;

static void *stage_main(void *arg)
{
    stage_thread *t = arg;
    if (dp_runtime_run(t->rt, &dp_stop, t->err, sizeof(t->err)) != DP_OK) {
        t->rc = 1;
        dp_stop = 1;
    }
    return NULL;
}

static int cmd_run(dp_config *cfg, int argc, char **argv)
{
    const char *names[32];
    int n = 0;
    for (int i = 0; i < argc && n < 32; i++) {
        if (strcmp(argv[i], "--http") == 0) {
            if (i + 1 == argc) {
                fprintf(stderr, "docpipe run: --http needs an address (host:port)\n");
                return EXIT_USAGE;
            }
            free(cfg->http_addr);
            cfg->http_addr = strdup(argv[++i]);
        } else if (strcmp(argv[i], "all") == 0) {
            for (const dp_stage_def *d = dp_stage_defs; d->name && n < 32; d++)
                if (strcmp(d->name, "demo") != 0)
                    names[n++] = d->name;
        } else if (!dp_stages_find(argv[i])) {
            fprintf(stderr, "docpipe run: unknown stage '%s' (see docpipe help)\n",
                    argv[i]);
            return EXIT_USAGE;
        } else {
            names[n++] = argv[i];
        }
    }
    if (n == 0) {
        fprintf(stderr, "docpipe run: name at least one stage, or all\n");
        return EXIT_USAGE;
    }
    dp_log_init(n == 1 ? names[0] : "docpipe", cfg->instance_id, cfg->log_level);
    stage_thread *t = calloc((size_t)n, sizeof(*t));
    int rc = 0;
    for (int i = 0; i < n; i++) {
        t[i].cfg = cfg;
        t[i].name = names[i];
        if (dp_stages_open(cfg, names[i], &t[i].stage, t[i].err,
                           sizeof(t[i].err)) ||
            dp_runtime_new(cfg, &t[i].stage, &t[i].rt, t[i].err,
                           sizeof(t[i].err))) {
            dp_log(DP_LOG_ERROR, NULL, "cannot start stage %s: %s", names[i],
                   t[i].err);
            rc = 1;
            n = i + 1;
            break;
        }
    }
    dp_http *http = NULL;
    /* What holds the services up, for `docpipe wait` and the dashboard. */
    dp_services_publisher *svc_status = rc == 0 ? dp_services_publisher_start(cfg) : NULL;
    /* Read by the listener's thread until dp_http_stop: it lives as long. */
    dp_runtime *rts[32];
    if (rc == 0 && cfg->http_addr && *cfg->http_addr) {
        for (int i = 0; i < n; i++)
            rts[i] = t[i].rt;
        char err[512];
        if (dp_http_start(cfg, cfg->http_addr, rts, n, &http, err, sizeof(err))) {
            dp_log(DP_LOG_ERROR, NULL, "%s", err);
            rc = 1;
        } else {
            dp_log(DP_LOG_INFO, NULL, "serving the dashboard, /metrics, /livez and /readyz on %s",
                   cfg->http_addr);
        }
    }
    if (rc == 0) {
        if (n == 1) {
            stage_main(&t[0]);
        } else {
            for (int i = 0; i < n; i++)
                pthread_create(&t[i].tid, NULL, stage_main, &t[i]);
            for (int i = 0; i < n; i++)
                pthread_join(t[i].tid, NULL);
        }
        for (int i = 0; i < n; i++)
            if (t[i].rc) {
                dp_log(DP_LOG_ERROR, NULL, "stage %s failed: %s", t[i].name,
                       t[i].err);
                rc = 1;
            }
    }
    dp_http_stop(http); /* before the runtimes it reads */
    dp_services_publisher_stop(svc_status);
    for (int i = 0; i < n; i++) {
        dp_runtime_free(t[i].rt);
        if (t[i].stage.name)
            dp_stages_close(t[i].name, &t[i].stage);
    }
    free(t);
    return rc;
}

dp_err dp_demo_encode(const dp_config *cfg, const char *id, int64_t seq,
                      const char *body, void **buf, size_t *len, char *err,
                      size_t errlen);

static int cmd_demo_produce(const dp_config *cfg, int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "docpipe demo-produce: how many records?\n");
        return EXIT_USAGE;
    }
    char *end;
    long n = strtol(argv[0], &end, 10);
    if (*end || n < 0) {
        fprintf(stderr, "docpipe demo-produce: '%s' is not a count\n", argv[0]);
        return EXIT_USAGE;
    }
    const char *body = "hello from docpipe";
    const char *key = NULL;
    int garbage = 0;
    long start = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--body") == 0 && i + 1 < argc)
            body = argv[++i];
        else if (strcmp(argv[i], "--start") == 0 && i + 1 < argc)
            start = strtol(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--key") == 0 && i + 1 < argc)
            key = argv[++i];
        else if (strcmp(argv[i], "--garbage") == 0)
            garbage = 1;
        else {
            fprintf(stderr, "docpipe demo-produce: unknown option '%s'\n", argv[i]);
            return EXIT_USAGE;
        }
    }
    char err[1024], kerr[512];
    rd_kafka_conf_t *conf = dp_publisher_conf(cfg, "20", NULL, err, sizeof(err));
    if (!conf) {
        fprintf(stderr, "docpipe demo-produce: %s\n", err);
        return 1;
    }
    dp_publisher *pub = dp_publisher_new(conf, kerr, sizeof(kerr));
    if (!pub) {
        fprintf(stderr, "docpipe demo-produce: %s\n", kerr);
        return 1;
    }
    char *topic = dp_topic_name(cfg, "demo.in");
    int rc = 0;
    for (long i = start; i < start + n; i++) {
        char id[32];
        snprintf(id, sizeof(id), "rec-%ld", i);
        void *buf = NULL;
        size_t len = 0;
        if (garbage) {
            buf = strdup("\x01not avro at all");
            len = strlen(buf);
        } else if (dp_demo_encode(cfg, id, i, body, &buf, &len, err, sizeof(err))) {
            fprintf(stderr, "docpipe demo-produce: %s\n", err);
            rc = 1;
            break;
        }
        const char *k = key ? key : id;
        if (dp_publisher_send(pub, topic, k, strlen(k), buf, len, NULL, NULL, err,
                              sizeof(err))) {
            fprintf(stderr, "docpipe demo-produce: %s\n", err);
            rc = 1;
            break;
        }
    }
    uint64_t lost = dp_publisher_finish(pub, 60000, 5, err, sizeof(err));
    if (lost) {
        fprintf(stderr, "docpipe demo-produce: %" PRIu64 " record(s) not delivered: %s\n",
                lost, err);
        rc = 1;
    }
    dp_publisher_free(pub);
    if (rc == 0)
        printf("%ld record(s) published to %s\n", n, topic);
    free(topic);
    return rc;
}

int main(int argc, char **argv)
{
    /* glibc gives each thread that allocates its own heap arena; a stage
     * has a handful of librdkafka threads whose arenas each keep freed
     * memory resident.  Two arenas are plenty for its light contention
     * (MALLOC_ARENA_MAX, if set, wins). */
    if (!getenv("MALLOC_ARENA_MAX"))
        mallopt(M_ARENA_MAX, 2);
    if (argc < 2 || strcmp(argv[1], "help") == 0 ||
        strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? EXIT_USAGE : 0;
    }
    /* dlq, replay, lag, submit, wait, search and gc answer --help themselves. */
    for (int i = 2; i < argc && strcmp(argv[1], "dlq") != 0 &&
                    strcmp(argv[1], "replay") != 0 && strcmp(argv[1], "lag") != 0 &&
                    strcmp(argv[1], "submit") != 0 && strcmp(argv[1], "wait") != 0 &&
                    strcmp(argv[1], "search") != 0 && strcmp(argv[1], "gc") != 0; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            if (strcmp(argv[1], "retry") == 0)
                dp_retry_usage(stdout);
            else
                usage(stdout);
            return 0;
        }
    dp_config cfg;
    char err[1024];
    if (dp_config_load(&cfg, err, sizeof(err)) != DP_OK) {
        fprintf(stderr, "docpipe: %s\n", err);
        dp_config_free(&cfg);
        return EXIT_USAGE;
    }
    dp_log_init("docpipe", cfg.instance_id, cfg.log_level);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int rc;
    const char *cmd = argv[1];
    if (strcmp(cmd, "migrate") == 0)
        rc = cmd_migrate(&cfg);
    else if (strcmp(cmd, "topics") == 0)
        rc = cmd_topics(&cfg, argc - 1, argv + 1);
    else if (strcmp(cmd, "run") == 0)
        rc = cmd_run(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "submit") == 0)
        rc = dp_cmd_submit(&cfg, argc - 2, argv + 2, &dp_stop);
    else if (strcmp(cmd, "status") == 0)
        rc = dp_cmd_status(&cfg, argc - 2, argv + 2, &dp_stop);
    else if (strcmp(cmd, "wait") == 0)
        rc = dp_cmd_wait(&cfg, argc - 2, argv + 2, &dp_stop);
    else if (strcmp(cmd, "retry") == 0)
        rc = dp_cmd_retry(&cfg, argc - 2, argv + 2, &dp_stop);
    else if (strcmp(cmd, "replay") == 0)
        rc = dp_cmd_replay(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "lag") == 0)
        rc = dp_cmd_lag(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "dlq") == 0)
        rc = dp_cmd_dlq(&cfg, &dp_stop, argc - 2, argv + 2);
    else if (strcmp(cmd, "search") == 0)
        rc = dp_cmd_search(&cfg, argc - 1, argv + 1);
    else if (strcmp(cmd, "gc") == 0)
        rc = dp_cmd_gc(&cfg, argc - 1, argv + 1);
    else if (strcmp(cmd, "demo-produce") == 0)
        rc = cmd_demo_produce(&cfg, argc - 2, argv + 2);
    else if (strcmp(cmd, "config-doc") == 0) {
        dp_config_print_markdown(stdout);
        rc = 0;
    } else {
        fprintf(stderr, "docpipe: unknown command '%s' (see docpipe help)\n", cmd);
        rc = EXIT_USAGE;
    }
    dp_config_free(&cfg);
    return rc;
}

/*
 * test_cluster: the pipeline on a three-broker KRaft cluster
 * (scripts/kafka-cluster.sh) survives a broker crash and a rolling restart
 * without losing, repeating or dead-lettering a document.
 *
 * `docpipe topics` creates the test's topics on the cluster with three
 * replicas and min.insync.replicas=2 (read back from the brokers); two
 * `docpipe run all` processes make two instances of every stage; the
 * producers write at acks=all with idempotence (consumer/clients.c).  Half
 * the documents are submitted, and while they are being processed the
 * broker leading the busiest partitions is SIGKILLed, then started again
 * once the others have taken its partitions over; the other half is
 * submitted and all three brokers are restarted one at a time, each one
 * back in every partition's in-sync set before the next goes.  Then every
 * document is complete with exactly the chunks the chunker makes, was
 * completed once (one 'complete' event), and nothing was dead-lettered.
 *
 * Documents: 300 by default (150 in the sanitizer build), within CI's
 * time; 2,000 with DOCPIPE_LONG=1, or DOCPIPE_CLUSTER_DOCS=N.  The cluster is started by the script if it is
 * not running and left running (scripts/test.sh stops it if it started it).
 */
#include <criterion/criterion.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "support_docs.h"
#include "support_env.h"

#define CLUSTER_BROKERS "127.0.0.1:39192,127.0.0.1:39193,127.0.0.1:39194"
#define NBROKERS 3

static tenv T;
static pid_t embed_pid, run_pid[2], submit_pid;
static char embed_url[256], storage[1200], user[64], env_embed[300], env_storage[1300];
static const char *run_env[8];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Runs scripts/kafka-cluster.sh with the arguments formatted: its exit
 * status. */
static int cluster(const char *fmt, ...)
{
    const char *src = getenv("DOCPIPE_SOURCE_DIR");
    char args[128], cmd[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "'%s/scripts/kafka-cluster.sh' %s",
             src && *src ? src : DOCPIPE_SOURCE_DIR, args);
    fflush(NULL);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void teardown(void)
{
    for (int i = 0; i < 2; i++)
        if (run_pid[i] > 0)
            tenv_stop(run_pid[i], SIGTERM, 60000);
    if (submit_pid > 0)
        tenv_stop(submit_pid, SIGKILL, 10000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    run_pid[0] = run_pid[1] = submit_pid = embed_pid = 0;
    /* A node a failed assertion left down is started again: the next run
     * reuses a whole cluster. */
    if (T.db)
        cluster("start");
    tenv_teardown(&T);
}

TestSuite(cluster, .fini = teardown, .timeout = 3600);

static rd_kafka_t *admin(void)
{
    char kerr[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", T.brokers, kerr, sizeof(kerr));
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kerr, sizeof(kerr));
    cr_assert_not_null(rk, "%s", kerr);
    return rk;
}

/* The cluster's metadata of every topic, asked until a broker answers. */
static const rd_kafka_metadata_t *metadata(rd_kafka_t *rk)
{
    const rd_kafka_metadata_t *md = NULL;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    for (int tries = 0; tries < 30; tries++) {
        e = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
        if (!e)
            return md;
        usleep(500000);
    }
    cr_assert_fail("cluster metadata: %s", rd_kafka_err2str(e));
    return NULL;
}

static int has_prefix(const char *topic, const char *prefix)
{
    return strncmp(topic, prefix, strlen(prefix)) == 0;
}
static int ours(const char *topic) { return has_prefix(topic, T.prefix); }

/* The value of config name of topic, as the brokers describe it, in buf
 * ("" if none).  A topic just created may not be known yet to the broker
 * asked, or be described without its configs: asked again for up to 10 s. */
static const char *topic_config(rd_kafka_t *rk, const char *topic, const char *name,
                                char *buf, size_t buflen)
{
    buf[0] = '\0';
    for (int tries = 0; tries < 50 && !buf[0]; tries++) {
        if (tries)
            usleep(200000);
        rd_kafka_ConfigResource_t *res =
            rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topic);
        rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
        rd_kafka_DescribeConfigs(rk, &res, 1, NULL, q);
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
        cr_assert_not_null(ev, "DescribeConfigs %s: no answer", topic);
        size_t nres = 0, n = 0;
        const rd_kafka_ConfigResource_t **rs = NULL;
        if (!rd_kafka_event_error(ev))
            rs = rd_kafka_DescribeConfigs_result_resources(
                rd_kafka_event_DescribeConfigs_result(ev), &nres);
        if (nres == 1 && !rd_kafka_ConfigResource_error(rs[0])) {
            const rd_kafka_ConfigEntry_t **ents = rd_kafka_ConfigResource_configs(rs[0], &n);
            for (size_t i = 0; i < n; i++)
                if (strcmp(rd_kafka_ConfigEntry_name(ents[i]), name) == 0 &&
                    rd_kafka_ConfigEntry_value(ents[i]))
                    snprintf(buf, buflen, "%s", rd_kafka_ConfigEntry_value(ents[i]));
        }
        rd_kafka_event_destroy(ev);
        rd_kafka_queue_destroy(q);
        rd_kafka_ConfigResource_destroy(res);
    }
    return buf;
}

/* Every topic of prefix has `replicas` replicas per partition (0: not
 * checked), each on its own broker, and min.insync.replicas=min_isr (NULL:
 * not checked).
 * Returns how many topics. */
static int assert_topics_replicated(const char *prefix, int replicas, const char *min_isr)
{
    rd_kafka_t *rk = admin();
    int n = 0;
    /* A topic just created may take a moment to show on every broker. */
    for (int tries = 0; tries < 50 && n < 2; tries++) {
        const rd_kafka_metadata_t *md = metadata(rk);
        n = 0;
        for (int i = 0; i < md->topic_cnt; i++)
            n += has_prefix(md->topics[i].topic, prefix) && md->topics[i].partition_cnt > 0;
        rd_kafka_metadata_destroy(md);
        if (n < 2)
            usleep(200000);
    }
    cr_assert(n >= 2, "topics of %s on the cluster: %d", prefix, n);
    const rd_kafka_metadata_t *md = metadata(rk);
    n = 0;
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &md->topics[i];
        if (!has_prefix(t->topic, prefix))
            continue;
        n++;
        cr_assert_eq(t->err, 0, "%s: %s", t->topic, rd_kafka_err2str(t->err));
        for (int p = 0; p < t->partition_cnt; p++) {
            const rd_kafka_metadata_partition_t *pp = &t->partitions[p];
            if (replicas > 0)
                cr_assert_eq(pp->replica_cnt, replicas, "%s [%d]: %d replicas, not %d", t->topic,
                         pp->id, pp->replica_cnt, replicas);
            for (int a = 0; a < pp->replica_cnt; a++)
                for (int b = a + 1; b < pp->replica_cnt; b++)
                    cr_assert_neq(pp->replicas[a], pp->replicas[b],
                                  "%s [%d]: two replicas on broker %d", t->topic, pp->id,
                                  pp->replicas[a]);
        }
        char v[64];
        if (min_isr)
            cr_assert_str_eq(topic_config(rk, t->topic, "min.insync.replicas", v, sizeof(v)),
                             min_isr, "%s: min.insync.replicas %s, not %s", t->topic, v,
                             min_isr);
    }
    rd_kafka_metadata_destroy(md);
    rd_kafka_destroy(rk);
    return n;
}

/* Leaders of the prefix's partitions, in metadata order, into lead[]
 * (at most max); returns how many.  Sums the records of each leader's
 * partitions into load[1..3] when load is given. */
static int leaders(rd_kafka_t *rk, int32_t *lead, int max, int64_t *load)
{
    const rd_kafka_metadata_t *md = metadata(rk);
    int n = 0;
    for (int i = 0; i < md->topic_cnt; i++) {
        const rd_kafka_metadata_topic_t *t = &md->topics[i];
        if (!ours(t->topic))
            continue;
        for (int p = 0; p < t->partition_cnt && n < max; p++) {
            lead[n++] = t->partitions[p].leader;
            if (load && t->partitions[p].leader >= 1 && t->partitions[p].leader <= NBROKERS) {
                int64_t lo = 0, hi = 0;
                if (rd_kafka_query_watermark_offsets(rk, t->topic, t->partitions[p].id, &lo,
                                                     &hi, 10000) == 0)
                    load[t->partitions[p].leader] += hi - lo;
            }
        }
    }
    rd_kafka_metadata_destroy(md);
    return n;
}

/* Polls until every partition of every topic (the cluster's own included)
 * has a leader other than `not` and, when full, three in-sync replicas.
 * Returns the seconds it took. */
static double wait_partitions(int32_t not, int full, int timeout_s)
{
    rd_kafka_t *rk = admin();
    double t0 = now_s();
    char last[300] = "";
    for (;;) {
        const rd_kafka_metadata_t *md = metadata(rk);
        int ok = 1;
        for (int i = 0; i < md->topic_cnt && ok; i++) {
            const rd_kafka_metadata_topic_t *t = &md->topics[i];
            if (!ours(t->topic) && strcmp(t->topic, "__consumer_offsets") != 0)
                continue;
            for (int p = 0; p < t->partition_cnt && ok; p++) {
                const rd_kafka_metadata_partition_t *pp = &t->partitions[p];
                if (pp->leader < 0 || pp->leader == not || (full && pp->isr_cnt < 3)) {
                    snprintf(last, sizeof(last), "%s [%d]: leader %d, %d in sync", t->topic,
                             pp->id, pp->leader, pp->isr_cnt);
                    ok = 0;
                }
            }
        }
        rd_kafka_metadata_destroy(md);
        if (ok)
            break;
        cr_assert(now_s() - t0 < timeout_s, "after %d s still %s", timeout_s, last);
        usleep(500000);
    }
    rd_kafka_destroy(rk);
    return now_s() - t0;
}

static long long user_count(const char *where)
{
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND %s", user, where);
    return tenv_scalar(&T, sql);
}

/* Waits until at least want documents of ours are complete; the count. */
static long long wait_complete(long long want, int timeout_s)
{
    double t0 = now_s();
    long long got;
    while ((got = user_count("status = 'complete'")) < want) {
        cr_assert(now_s() - t0 < timeout_s, "after %d s %lld of %lld documents complete",
                  timeout_s, got, want);
        for (int i = 0; i < 2; i++)
            cr_assert_eq(waitpid(run_pid[i], NULL, WNOHANG), 0, "run all #%d exited", i + 1);
        usleep(500000);
    }
    return got;
}

/* `docpipe submit --user U dir`, in the background, stdout to out. */
static pid_t start_submit(const char *dir, const char *out)
{
    const char *args[] = {"submit", "--user", user, dir, NULL};
    const char *env[] = {env_storage, NULL};
    char err[720];
    snprintf(err, sizeof(err), "%s.err", out);
    return tenv_spawn_io(&T, args, env, NULL, out, err);
}

/* Reads submit's output: ids in the order of its lines (directory order);
 * the file name of each into names. */
static int read_ids(const char *out, char ids[][40], char names[][1024], int max)
{
    FILE *f = fopen(out, "r");
    cr_assert(f, "no submit output %s", out);
    char line[2048];
    int n = 0;
    while (n < max && fgets(line, sizeof(line), f)) {
        char mime[64], file[1024];
        if (sscanf(line, "%39s\t%63s\t%1023s", ids[n], mime, file) == 3) {
            const char *slash = strrchr(file, '/');
            snprintf(names[n], 1024, "%s", slash ? slash + 1 : file);
            n++;
        }
    }
    fclose(f);
    return n;
}

static int docs_wanted(void)
{
    const char *n = getenv("DOCPIPE_CLUSTER_DOCS");
    if (n && atoi(n) > 0)
        return atoi(n);
    const char *l = getenv("DOCPIPE_LONG");
    if (l && strcmp(l, "1") == 0)
        return 2000;
#if defined(__SANITIZE_ADDRESS__)
    return 150; /* the sanitizer build: the same faults, fewer documents */
#else
    return 300;
#endif
}

/* The flags do what the settings do: on the same cluster, `docpipe topics`
 * without them makes single-replica topics (the default), with
 * --replication-factor 3 --config min.insync.replicas=2 replicated ones. */
Test(cluster, test_topics_flags_create_replicated_topics_on_the_cluster)
{
    cr_assert_eq(cluster("start"), 0, "scripts/kafka-cluster.sh start failed");
    setenv("DOCPIPE_BROKERS", CLUSTER_BROKERS, 1);
    unsetenv("DOCPIPE_TOPIC_REPLICATION");
    unsetenv("DOCPIPE_TOPIC_CONFIGS");
    tenv_setup(&T, "clustertopics");
    char plain[128], env_prefix[200];
    snprintf(plain, sizeof(plain), "%s", T.prefix);
    assert_topics_replicated(plain, 1, "1");
    /* A second prefix inside the first: teardown deletes both. */
    char replicated[128];
    snprintf(replicated, sizeof(replicated), "%srf3.", T.prefix);
    snprintf(env_prefix, sizeof(env_prefix), "DOCPIPE_TOPIC_PREFIX=%s", replicated);
    const char *args[] = {"topics", "--replication-factor", "3", "--config",
                          "min.insync.replicas=2", NULL};
    const char *env[] = {env_prefix, NULL};
    cr_assert_eq(tenv_docpipe(&T, args, env), 0, "docpipe topics with flags failed");
    int n = assert_topics_replicated(replicated, 3, "2");
    cr_assert_eq(n * 2, assert_topics_replicated(plain, 0, NULL), "as many topics each");
}

Test(cluster, test_documents_complete_once_through_a_leader_kill_and_a_rolling_restart)
{
    double t_start = now_s();
    cr_assert_eq(cluster("start"), 0, "scripts/kafka-cluster.sh start failed");
    /* The test's topics go to the cluster, made by `docpipe topics` with
     * the settings an operator would give it. */
    setenv("DOCPIPE_BROKERS", CLUSTER_BROKERS, 1);
    setenv("DOCPIPE_TOPIC_REPLICATION", "3", 1);
    setenv("DOCPIPE_TOPIC_CONFIGS", "min.insync.replicas=2", 1);
    tenv_setup(&T, "cluster");
    int ntopics = assert_topics_replicated(T.prefix, 3, "2");

    int n = docs_wanted();
    char dir[2][1300];
    static tdoc *docs;
    docs = calloc((size_t)n, sizeof(*docs));
    for (int h = 0; h < 2; h++) {
        snprintf(dir[h], sizeof(dir[h]), "/tmp/docpipe-%sdocs%d", T.prefix, h);
        mkdir(dir[h], 0755);
    }
    /* Small markdown and text documents (1-8 KB, one to a few chunks):
     * the chunker's own count is the expected one. */
    for (int i = 0; i < n; i++)
        tdoc_make(&docs[i], dir[i < n / 2 ? 0 : 1], i % 2 ? "txt" : "md",
                  1000 + (size_t)(i * 733) % 7000, 7000u + (unsigned)i);

    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", (unsigned)time(NULL),
             (unsigned)getpid());
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    const char *env[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                         "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20", NULL};
    memcpy(run_env, env, sizeof(env));
    /* Two instances of every stage: two processes running all of them. */
    for (int i = 0; i < 2; i++) {
        char log[700];
        snprintf(log, sizeof(log), "/tmp/docpipe-%srun%d.log", T.prefix, i + 1);
        unlink(log);
        const char *args[] = {"run", "all", NULL};
        run_pid[i] = tenv_spawn(&T, args, log, run_env);
    }

    /* First half, and a crash while it is processed: the broker leading
     * the partitions that hold the most records is SIGKILLed. */
    char out[2][700];
    for (int h = 0; h < 2; h++)
        snprintf(out[h], sizeof(out[h]), "/tmp/docpipe-%ssubmit%d.out", T.prefix, h);
    double t0 = now_s();
    submit_pid = start_submit(dir[0], out[0]);
    cr_assert_eq(tenv_wait(submit_pid), 0, "submit of the first half failed");
    submit_pid = 0;
    wait_complete(n / 8 > 0 ? n / 8 : 1, 900);

    rd_kafka_t *rk = admin();
    enum { MAXP = 4096 };
    static int32_t before[MAXP], after[MAXP];
    int64_t load[NBROKERS + 1] = {0};
    int np = leaders(rk, before, MAXP, load);
    int32_t victim = 1;
    for (int32_t b = 2; b <= NBROKERS; b++)
        if (load[b] > load[victim])
            victim = b;
    int led = 0;
    for (int i = 0; i < np; i++)
        led += before[i] == victim;
    cr_assert(led > 0, "broker %d leads none of the test's partitions", (int)victim);
    long long done_at_kill = user_count("status = 'complete'");
    cr_assert_eq(cluster("kill %d", (int)victim), 0, "kill of broker %d failed", (int)victim);
    double t_kill = now_s();
    double failover = wait_partitions(victim, 0, 300);
    int np2 = leaders(rk, after, MAXP, NULL);
    cr_assert_eq(np2, np);
    int moved = 0;
    for (int i = 0; i < np; i++) {
        cr_assert_neq(after[i], victim, "a partition is still led by the dead broker");
        moved += before[i] == victim;
    }
    cr_assert_eq(moved, led);
    /* With one broker down (two in sync: still writable at acks=all) the
     * pipeline goes on: more documents complete. */
    wait_complete(done_at_kill < n / 2 ? done_at_kill + 1 : n / 2, 900);
    double progress_down = now_s() - t_kill;
    double t_restart = now_s();
    cr_assert_eq(cluster("start-node %d", (int)victim), 0, "broker %d did not come back",
                 (int)victim);
    wait_partitions(-1, 1, 300);
    double rejoin = now_s() - t_restart;
    double t_crash_phase = now_s() - t_kill;

    /* Second half, and a rolling restart while it is processed: each
     * broker stopped and started in turn, the next only once every
     * partition has three in-sync replicas again. */
    submit_pid = start_submit(dir[1], out[1]);
    double t_roll = now_s();
    long long done_roll0 = user_count("status = 'complete'");
    int roll_moves = 0;
    for (int b = 1; b <= NBROKERS; b++) {
        leaders(rk, before, MAXP, NULL);
        cr_assert_eq(cluster("stop-node %d", b), 0, "stop of broker %d failed", b);
        wait_partitions(b, 0, 300);
        leaders(rk, after, MAXP, NULL);
        for (int i = 0; i < np; i++)
            roll_moves += before[i] != after[i];
        cr_assert_eq(cluster("start-node %d", b), 0, "broker %d did not come back", b);
        wait_partitions(-1, 1, 300);
    }
    double t_roll_phase = now_s() - t_roll;
    long long done_roll1 = user_count("status = 'complete'");
    rd_kafka_destroy(rk);
    cr_assert_eq(tenv_wait(submit_pid), 0, "submit of the second half failed");
    submit_pid = 0;

    wait_complete(n, 1800);
    double t_all = now_s() - t0;

    /* Every document submitted once and complete with exactly its chunks. */
    static char (*ids)[40], (*names)[1024];
    ids = calloc((size_t)n, sizeof(*ids));
    names = calloc((size_t)n, sizeof(*names));
    int got = read_ids(out[0], ids, names, n);
    got += read_ids(out[1], ids + got, names + got, n - got);
    cr_assert_eq(got, n, "submitted %d of %d", got, n);
    cr_assert_eq(user_count("true"), n, "one job per document");
    cr_assert_eq(user_count("status = 'complete'"), n, "every document complete");
    for (int i = 0; i < n; i++) {
        const tdoc *d = NULL;
        for (int k = 0; k < n && !d; k++) {
            const char *slash = strrchr(docs[k].path, '/');
            if (strcmp(slash + 1, names[i]) == 0)
                d = &docs[k];
        }
        cr_assert_not_null(d, "submit named %s, not one of ours", names[i]);
        char sql[600];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.document_chunks"
                 " WHERE document_id = '%s' AND vector_dim = 1536", ids[i]);
        long long chunks = tenv_scalar(&T, sql);
        cr_assert_eq(chunks, tdoc_expected_chunks(d), "%s: %lld chunks, the chunker makes %ld",
                     d->path, chunks, tdoc_expected_chunks(d));
    }
    /* One completion each: one transition to complete per document. */
    char sql[800];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM (SELECT j.document_id FROM upload_pipeline.upload_jobs j"
             " LEFT JOIN upload_pipeline.events e ON e.document_id = j.document_id"
             "   AND e.to_status = 'complete'"
             " WHERE j.user_id = '%s' GROUP BY j.document_id HAVING count(e.*) <> 1) x", user);
    cr_assert_eq(tenv_scalar(&T, sql), 0, "documents not completed exactly once");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters"
             " WHERE group_id LIKE '%s%%'", T.prefix);
    cr_assert_eq(tenv_scalar(&T, sql), 0, "nothing dead-lettered");
    for (int i = 0; i < 2; i++)
        cr_assert_eq(waitpid(run_pid[i], NULL, WNOHANG), 0, "run all #%d exited", i + 1);

    fprintf(stderr,
            "cluster: %d documents, %d topics (RF 3, min.insync.replicas=2), 2 instances"
            " per stage\n"
            "cluster: SIGKILL of broker %d (led %d of %d partitions; records: %lld/%lld/%lld"
            " by leader 1/2/3) after %lld documents complete: leaders moved in %.1f s,"
            " documents completing again %.1f s after the kill, every partition in sync"
            " again %.1f s after its restart began; phase %.1f s\n"
            "cluster: rolling restart of 3 brokers: %d leader moves, %.1f s; documents"
            " complete %lld at its start, %lld at its end\n"
            "cluster: all complete %.1f s after the first submit; whole test %.1f s\n",
            n, ntopics, (int)victim, led, np, (long long)load[1], (long long)load[2],
            (long long)load[3], done_at_kill, failover, progress_down, rejoin, t_crash_phase,
            roll_moves, t_roll_phase, done_roll0, done_roll1, t_all, now_s() - t_start);
    for (int i = 0; i < n; i++)
        tdoc_free(&docs[i]);
    free(docs);
    free(ids);
    free(names);
}

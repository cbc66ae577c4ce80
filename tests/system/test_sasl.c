/*
 * The pipeline against a broker that asks for SASL/SCRAM-SHA-512
 * (scripts/kafka-sasl.sh, 127.0.0.1:39292), configured only through
 * DOCPIPE_KAFKA_SECURITY_PROTOCOL, _SASL_MECHANISM, _SASL_USERNAME and
 * _SASL_PASSWORD: `docpipe topics` creates the topics, every stage runs,
 * documents complete. With a wrong password, `docpipe topics` fails at once
 * with an error that says the broker refused the credentials, and neither
 * it nor a running stage prints the password.
 *
 * The test starts the broker with the script when it does not answer
 * (reusing one that does); scripts/test.sh stops it at the end.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "support_env.h"

#define SASL_BROKERS "127.0.0.1:39292"
#define SASL_USER "docpipe"
/* scripts/kafka-sasl.sh's default password of its test user. */
#define SASL_PASSWORD "sasl-docpipe-SECRET-PASSWORD-5d1e"
#define WRONG_PASSWORD "sasl-docpipe-WRONG-PASSWORD-77e0"

static tenv T;
static pid_t embed_pid, pipe_pid;
static char dir[700];

static rd_kafka_conf_t *sasl_conf(void)
{
    char err[256];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const char *kv[][2] = {{"bootstrap.servers", SASL_BROKERS},
                           {"security.protocol", "SASL_PLAINTEXT"},
                           {"sasl.mechanisms", "SCRAM-SHA-512"},
                           {"sasl.username", SASL_USER},
                           {"sasl.password", SASL_PASSWORD}};
    for (size_t i = 0; i < sizeof(kv) / sizeof(kv[0]); i++)
        cr_assert_eq(rd_kafka_conf_set(conf, kv[i][0], kv[i][1], err, sizeof(err)),
                     RD_KAFKA_CONF_OK, "%s", err);
    return conf;
}

/* The test's topics go with it (tenv_teardown's deletion speaks PLAINTEXT). */
static void delete_topics(void)
{
    char err[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, sasl_conf(), err, sizeof(err));
    if (!rk)
        return;
    const rd_kafka_metadata_t *md;
    if (rd_kafka_metadata(rk, 1, NULL, &md, 10000) == 0) {
        rd_kafka_DeleteTopic_t *dt[64];
        size_t n = 0;
        for (int i = 0; i < md->topic_cnt && n < 64; i++)
            if (strncmp(md->topics[i].topic, T.prefix, strlen(T.prefix)) == 0)
                dt[n++] = rd_kafka_DeleteTopic_new(md->topics[i].topic);
        rd_kafka_metadata_destroy(md);
        if (n) {
            rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
            rd_kafka_DeleteTopics(rk, dt, n, NULL, q);
            rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 30000);
            if (ev)
                rd_kafka_event_destroy(ev);
            rd_kafka_queue_destroy(q);
            rd_kafka_DeleteTopic_destroy_array(dt, n);
        }
    }
    rd_kafka_destroy(rk);
}

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    if (T.prefix[0])
        delete_topics();
    T.prefix[0] = '\0';
    tenv_teardown(&T);
}

TestSuite(sasl, .fini = teardown, .timeout = 900);

/* Starts (or reuses) the SASL broker, and points every docpipe child of
 * this test at it through the environment alone. */
static void use_sasl_broker(void)
{
    const char *src = getenv("DOCPIPE_SOURCE_DIR");
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "'%s/scripts/kafka-sasl.sh' start >&2",
             src && *src ? src : DOCPIPE_SOURCE_DIR);
    cr_assert_eq(system(cmd), 0, "scripts/kafka-sasl.sh start failed");
    setenv("DOCPIPE_BROKERS", SASL_BROKERS, 1);
    setenv("DOCPIPE_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT", 1);
    setenv("DOCPIPE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", 1);
    setenv("DOCPIPE_KAFKA_SASL_USERNAME", SASL_USER, 1);
    setenv("DOCPIPE_KAFKA_SASL_PASSWORD", SASL_PASSWORD, 1);
}

static int command(const char *tag, const char *const *args, const char *const *env)
{
    char out[900], errf[900];
    snprintf(out, sizeof(out), "%s/%s.out", dir, tag);
    snprintf(errf, sizeof(errf), "%s/%s.err", dir, tag);
    return tenv_wait(tenv_spawn_io(&T, args, env, NULL, out, errf));
}

static char *slurp(const char *tag)
{
    char path[900];
    snprintf(path, sizeof(path), "%s/%s", dir, tag);
    char *s = tenv_slurp(path);
    cr_assert(s, "%s was not written", path);
    return s;
}

Test(sasl, test_pipeline_runs_end_to_end_against_a_scram_broker_and_a_wrong_password_fails_clearly)
{
    use_sasl_broker();
    tenv_setup(&T, "sasl"); /* migrate, and `docpipe topics` through SASL */
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sfiles", T.prefix);
    mkdir(dir, 0755);

    char embed_url[256], env_embed[300], env_storage[800], user[64];
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    snprintf(env_embed, sizeof(env_embed), "DOCPIPE_EMBED_URL=%s", embed_url);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s/storage", dir);
    snprintf(user, sizeof(user), "5a5100c0-0000-4000-8000-%012x", (unsigned)getpid());
    const char *env[] = {env_embed, env_storage, "DOCPIPE_EMBED_TPM=100000000",
                         "DOCPIPE_EMBED_RPM=1000000", "DOCPIPE_BATCH_WAIT_MS=20", NULL};

    /* `docpipe topics` again: every topic is there already. */
    const char *topics[] = {"topics", NULL};
    cr_assert_eq(command("topics", topics, env), 0);
    char *out = slurp("topics.out");
    cr_assert(strstr(out, "0 created"), "topics: %s", out);
    free(out);

    char log[900];
    snprintf(log, sizeof(log), "%s/run.log", dir);
    const char *run[] = {"run", "all", NULL};
    pipe_pid = tenv_spawn(&T, run, log, env);

    enum { NDOCS = 3 };
    char docs[NDOCS][900];
    for (int i = 0; i < NDOCS; i++) {
        snprintf(docs[i], sizeof(docs[i]), "%s/doc%d.md", dir, i);
        FILE *f = fopen(docs[i], "w");
        cr_assert(f);
        fprintf(f, "# Over SASL %d\n\nDocument %d of %s, through a broker that asks who"
                   " we are.\n\n## Part two\n\nMore text for another chunk, %d.\n",
                i, i, T.prefix, i);
        fclose(f);
    }
    const char *submit[] = {"submit", "--user", user, docs[0], docs[1], docs[2], NULL};
    cr_assert_eq(command("submit", submit, env), 0, "submit through SASL failed");
    char sql[600];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'complete'", user);
    long long done = tenv_wait_scalar(&T, sql, NDOCS, 240000);
    cr_assert_eq(done, NDOCS, "%lld of %d documents complete (log: %s)", done, NDOCS, log);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.document_chunks c"
             " JOIN upload_pipeline.documents d USING (document_id)"
             " WHERE d.user_id = '%s' AND c.embedding IS NOT NULL", user);
    cr_assert_geq(tenv_scalar(&T, sql), NDOCS, "no embedded chunks stored");
    const char *lag[] = {"lag", "--json", NULL};
    cr_assert_eq(command("lag", lag, env), 0, "lag through SASL failed");

    /* A wrong password: topics fails at once, saying why, not showing it. */
    const char *wrong[] = {env_embed, "DOCPIPE_KAFKA_SASL_PASSWORD=" WRONG_PASSWORD, NULL};
    cr_assert_eq(command("topics-wrong", topics, wrong), 1);
    char *err = slurp("topics-wrong.err");
    cr_assert(strstr(err, "refused the credentials"), "no clear error: %s", err);
    cr_assert(strstr(err, "SASL authentication"), "no reason: %s", err);
    cr_assert_null(strstr(err, WRONG_PASSWORD), "the password was printed: %s", err);
    cr_assert_null(strstr(err, SASL_PASSWORD), "a password was printed: %s", err);
    free(err);
    /* ...and a stage started with it logs the refusal, without the password. */
    char wlog[900];
    snprintf(wlog, sizeof(wlog), "%s/run-wrong.log", dir);
    const char *parse[] = {"run", "parse", NULL};
    pid_t wpid = tenv_spawn(&T, parse, wlog, wrong);
    int seen = 0;
    for (int i = 0; i < 600 && !seen; i++) {
        char *s = tenv_slurp(wlog);
        seen = s && strstr(s, "SASL authentication") != NULL;
        free(s);
        if (!seen)
            usleep(100000);
    }
    tenv_stop(wpid, SIGKILL, 10000);
    cr_assert(seen, "the stage did not log the refused credentials");
    char *wl = tenv_slurp(wlog);
    cr_assert_null(strstr(wl, WRONG_PASSWORD), "the stage logged the password");
    free(wl);
    char *rl = tenv_slurp(log);
    cr_assert_null(strstr(rl, SASL_PASSWORD), "the pipeline logged the password");
    free(rl);

    cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0);
    pipe_pid = 0;
}

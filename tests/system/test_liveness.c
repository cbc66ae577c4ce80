/*
 * test_liveness: the embed stage stays alive in its consumer group under a
 * rate limit that holds most of its work back, and holds no lock that
 * gather waits on.
 *
 * Two embed processes share the embed-batches partitions; gather runs in a
 * process of its own, the other stages in a third.  Documents are
 * submitted together, more tokens than the embed instances' limits let
 * through in a minute.  An embed pass bounded only by its batch would
 * wait in the rate limiter for a minute inside one handler call: far past
 * max.poll.interval.ms (15 s here), so the group would evict the instance,
 * and with the jobs locked meanwhile gather's lock would time out.  With
 * bounded passes (at most a quarter of max.poll.interval.ms and of the
 * idle-transaction timeout) what the limit holds back is left for later
 * passes instead.  Checked: every document completes; neither embed
 * instance is assigned partitions again after the two settled (no
 * eviction, no fencing, no "maximum poll interval" from librdkafka); the
 * embedding service received exactly one request per planned batch;
 * gather never hit a lock timeout nor retried.
 *
 * The CI version: 30 documents of 2 KB (about 500 estimated tokens each,
 * 15,000 in all) at 6,000 tokens a minute per embed instance: about a
 * minute.  DOCPIPE_LONG=1: the case, 300 documents of 10 KB (about
 * 750,000 tokens) at the default limits and the default
 * max.poll.interval.ms and idle-transaction timeout (five minutes each).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support_pipe.h"

static tpipe P;

static void teardown(void) { tpipe_teardown(&P); }

TestSuite(liveness, .fini = teardown, .timeout = 3000);

/* Partitions named in the last assignment line of process i's log. */
static int last_assignment(int i)
{
    char *text = tenv_slurp(P.logs[i]);
    if (!text)
        return 0;
    char *last = NULL;
    for (char *s = text; (s = strstr(s, "partitions assigned and claimed")); s++)
        last = s;
    int n = 0;
    if (last) {
        char *bol = last;
        while (bol > text && bol[-1] != '\n')
            bol--;
        char *eol = strchr(bol, '\n');
        if (eol)
            *eol = '\0';
        for (char *s = bol; (s = strstr(s, "\"partition\":")); s++)
            n++;
    }
    free(text);
    return n;
}

/* The number after "key": in the last line of process i's log holding it. */
static long long log_number(int i, const char *key)
{
    char *text = tenv_slurp(P.logs[i]);
    char needle[64];
    snprintf(needle, sizeof(needle), "\"%s\":", key);
    long long v = -1;
    for (char *s = text; s && (s = strstr(s, needle)); s += strlen(needle))
        v = atoll(s + strlen(needle));
    free(text);
    return v;
}

Test(liveness, two_embed_instances_under_the_token_limit_stay_in_the_group_and_embed_each_batch_once)
{
    const char *long_run = getenv("DOCPIPE_LONG");
    int lng = long_run && *long_run && strcmp(long_run, "0") != 0;
    int ndocs = lng ? 300 : 30;
    int lines = lng ? 200 : 40; /* 50 characters a line: 10 KB or 2 KB */
    tpipe_setup(&P, "liveness");

    /* Every process: sessions of 6 s (a process that stopped loses its
     * partitions soon); in CI a short poll interval and idle-transaction
     * timeout, so that an unbounded pass would be evicted within the run. */
    const char *ci_env[] = {"DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000",
                            "DOCPIPE_KAFKA_MAX_POLL_INTERVAL_MS=15000",
                            "DOCPIPE_IDLE_TXN_TIMEOUT_MS=10000", NULL};
    /* Each embed instance at its own limit (embed_rate_scope=process), as
     * the figures below were measured; test_sharedrl tests the shared one. */
    const char *long_env[] = {"DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000",
                              "DOCPIPE_EMBED_RATE_SCOPE=process", NULL};
    const char *const *env = lng ? long_env : ci_env;
    const char *embed_ci[] = {"DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000",
                              "DOCPIPE_KAFKA_MAX_POLL_INTERVAL_MS=15000",
                              "DOCPIPE_IDLE_TXN_TIMEOUT_MS=10000",
                              "DOCPIPE_EMBED_TPM=6000",
                              "DOCPIPE_EMBED_RATE_SCOPE=process", NULL};
    const char *const *embed_env = lng ? long_env : embed_ci;

    int e1 = tpipe_run(&P, "embed", embed_env);
    int e2 = tpipe_run(&P, "embed", embed_env);
    /* The two share the four partitions before any work arrives. */
    double t_join = tpipe_now();
    while ((last_assignment(e1) != 2 || last_assignment(e2) != 2) &&
           tpipe_now() - t_join < 120)
        usleep(200000);
    cr_assert(last_assignment(e1) == 2 && last_assignment(e2) == 2,
              "the embed instances did not share the partitions (%d, %d)",
              last_assignment(e1), last_assignment(e2));
    int joins1 = tpipe_log_count(&P, e1, "partitions assigned and claimed");
    int joins2 = tpipe_log_count(&P, e2, "partitions assigned and claimed");
    int g = tpipe_run(&P, "gather", env);
    int rest = tpipe_run(&P, "intake parse validate chunk embed-plan finalize", env);

    char (*ids)[40] = calloc((size_t)ndocs, sizeof(*ids));
    char (*paths)[1300] = calloc((size_t)ndocs, sizeof(*paths));
    const char **files = calloc((size_t)ndocs, sizeof(*files));
    for (int k = 0; k < ndocs; k++) {
        snprintf(paths[k], sizeof(paths[k]), "%s/doc%03d.md", P.storage, k);
        tpipe_write_md(paths[k], lines, 50, 0, 1000 + (unsigned)k);
        files[k] = paths[k];
    }
    double t0 = tpipe_now();
    tpipe_submit(&P, files, (size_t)ndocs, ids);

    const char *by_user = "SELECT count(*) FROM upload_pipeline.upload_jobs"
                          " WHERE user_id = $1::uuid AND status = 'complete'";
    double limit = lng ? 1800 : 400;
    long long done = 0;
    while ((done = tpipe_q(&P, by_user, P.user)) < ndocs && tpipe_now() - t0 < limit) {
        cr_assert_eq(tpipe_q(&P, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                             " WHERE user_id = $1::uuid AND status LIKE 'failed%'", P.user),
                     0, "a document failed");
        usleep(500000);
    }
    double took = tpipe_now() - t0;
    cr_assert_eq(done, ndocs, "%lld of %d documents complete after %.0f s", done, ndocs,
                 took);

    /* Each planned batch reached the service once. */
    long long planned = tpipe_q(&P, "SELECT sum(embed_batches_total) FROM"
                                " upload_pipeline.upload_jobs WHERE user_id = $1::uuid",
                                P.user);
    long long chunks = tpipe_q(&P, "SELECT count(*) FROM"
                               " upload_pipeline.document_chunk_buffer c JOIN"
                               " upload_pipeline.upload_jobs j USING (document_id)"
                               " WHERE j.user_id = $1::uuid", P.user);
    long long requests = tpipe_service_count(&P, "requests");
    long long inputs = tpipe_service_count(&P, "inputs");
    cr_assert_eq(requests, planned, "the service got %lld requests for %lld planned"
                 " batches", requests, planned);
    cr_assert_eq(inputs, chunks, "the service embedded %lld texts of %lld chunks",
                 inputs, chunks);

    /* Nobody was evicted: no assignment since the two settled. */
    cr_assert_eq(tpipe_log_count(&P, e1, "partitions assigned and claimed"), joins1,
                 "embed 1 was assigned partitions again (evicted?)");
    cr_assert_eq(tpipe_log_count(&P, e2, "partitions assigned and claimed"), joins2,
                 "embed 2 was assigned partitions again (evicted?)");
    for (int i = 0; i < P.nprocs; i++)
        cr_assert_eq(tpipe_log_count(&P, i, "maximum poll interval"), 0,
                     "%s: librdkafka saw a poll interval exceeded", P.logs[i]);
    cr_assert_eq(tpipe_log_count(&P, g, "lock timeout"), 0, "gather hit a lock timeout");

    cr_assert_eq(tpipe_stop(&P, rest), 0);
    cr_assert_eq(tpipe_stop(&P, g), 0);
    cr_assert_eq(tpipe_stop(&P, e1), 0);
    cr_assert_eq(tpipe_stop(&P, e2), 0);
    cr_assert_eq(log_number(e1, "fenced"), 0);
    cr_assert_eq(log_number(e2, "fenced"), 0);
    cr_assert_eq(log_number(g, "retries"), 0, "gather retried a record");
    cr_assert_eq(log_number(g, "fenced"), 0);
    long long left = log_number(e1, "left") + log_number(e2, "left");
    /* The limit did hold work back: passes left records for later ones. */
    cr_assert_gt(left, 0, "no pass was bounded: the test did not exercise it");
    fprintf(stderr, "liveness: %d documents, %lld batches, %lld requests, %lld texts,"
            " %.0f s; records left for a later pass: %lld\n", ndocs, planned,
            requests, inputs, took, left);
    free(ids);
    free(paths);
    free(files);
}

/*
 * test_sharedrl: two embed instances together keep to one rate limit, as a
 * provider's per-account limit counts it (embed_rate_scope=shared, the
 * default; ratelimit.h, schemas/sql/0015).
 *
 * Two `docpipe run embed` processes share the embed-batches partitions at
 * embed_tpm 6,000; gather and the other stages run in a third process.
 * Documents of about 9,000 estimated tokens in all are submitted together:
 * more than a minute's budget, which either instance alone would let
 * through at once.  The embedding service's count of the tokens it
 * received (docpipe's estimate, /admin/stats "tokens") is sampled every
 * 250 ms; between any two samples at most 57 s apart it grew by at most
 * 6,000 (the 3 s spare are for requests admitted in one minute reaching
 * the service later than the ones after them, on a loaded machine).  And
 * every document completes, each batch embedded once.
 *
 * With DOCPIPE_SHAREDRL_SCOPE=process (each instance its own limit, the
 * previous release's behaviour) the same run sends some 9,000 tokens in
 * the first seconds and the test fails.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "support_pipe.h"

static tpipe P;

static void teardown(void) { tpipe_teardown(&P); }

TestSuite(sharedrl, .fini = teardown, .timeout = 900);

#define TPM 6000
#define NDOCS 12
#define SAMPLES 4000
#define WINDOW_S 57.0

/* Partitions named in the last assignment line of process i's log. */
static int assigned(int i)
{
    char *text = tenv_slurp(P.logs[i]);
    if (!text)
        return 0;
    char *last = NULL;
    for (char *s = text; (s = strstr(s, "partitions assigned and claimed")); s++)
        last = s;
    int n = 0;
    if (last) {
        char *eol = strchr(last, '\n');
        if (eol)
            *eol = '\0';
        char *bol = last;
        while (bol > text && bol[-1] != '\n')
            bol--;
        for (char *s = bol; (s = strstr(s, "\"partition\":")); s++)
            n++;
    }
    free(text);
    return n;
}

Test(sharedrl, two_embed_instances_together_send_at_most_the_token_limit_a_minute)
{
    const char *sc = getenv("DOCPIPE_SHAREDRL_SCOPE");
    const char *scope = sc && *sc ? sc : "shared";
    tpipe_setup(&P, "sharedrl");
    char scope_env[64], tpm_env[64];
    snprintf(scope_env, sizeof(scope_env), "DOCPIPE_EMBED_RATE_SCOPE=%s", scope);
    snprintf(tpm_env, sizeof(tpm_env), "DOCPIPE_EMBED_TPM=%d", TPM);
    const char *embed_env[] = {"DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000", scope_env,
                               tpm_env, NULL};
    int e1 = tpipe_run(&P, "embed", embed_env);
    int e2 = tpipe_run(&P, "embed", embed_env);
    /* Both instances have work: they share the four partitions first. */
    double tj = tpipe_now();
    while ((assigned(e1) != 2 || assigned(e2) != 2) && tpipe_now() - tj < 120)
        usleep(200000);
    cr_assert(assigned(e1) == 2 && assigned(e2) == 2,
              "the embed instances did not share the partitions (%d, %d)",
              assigned(e1), assigned(e2));
    const char *env[] = {"DOCPIPE_KAFKA_SESSION_TIMEOUT_MS=6000", tpm_env, NULL};
    int rest = tpipe_run(&P, "intake parse validate chunk embed-plan gather finalize", env);

    char paths[NDOCS][1300], ids[NDOCS][40];
    const char *files[NDOCS];
    for (int k = 0; k < NDOCS; k++) {
        /* 60 lines of 50 characters: about 750 estimated tokens. */
        snprintf(paths[k], sizeof(paths[k]), "%s/doc%02d.md", P.storage, k);
        tpipe_write_md(paths[k], 60, 50, 0, 500 + (unsigned)k);
        files[k] = paths[k];
    }
    static double at[SAMPLES];
    static long long tok[SAMPLES];
    int n = 0;
    at[n] = tpipe_now();
    tok[n++] = tpipe_service_count(&P, "tokens");
    double t0 = at[0];
    tpipe_submit(&P, files, NDOCS, ids);

    const char *by_user = "SELECT count(*) FROM upload_pipeline.upload_jobs"
                          " WHERE user_id = $1::uuid AND status = 'complete'";
    long long done = 0;
    while ((done = tpipe_q(&P, by_user, P.user)) < NDOCS && tpipe_now() - t0 < 600 &&
           n < SAMPLES) {
        cr_assert_eq(tpipe_q(&P, "SELECT count(*) FROM upload_pipeline.upload_jobs"
                             " WHERE user_id = $1::uuid AND status LIKE 'failed%'", P.user),
                     0, "a document failed");
        usleep(250000);
        at[n] = tpipe_now();
        tok[n++] = tpipe_service_count(&P, "tokens");
    }
    double took = tpipe_now() - t0;
    cr_assert_eq(done, NDOCS, "%lld of %d documents complete after %.0f s", done, NDOCS,
                 took);

    /* The most tokens the service received within WINDOW_S. */
    long long worst = 0;
    double worst_from = 0, worst_to = 0;
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n && at[j] - at[i] <= WINDOW_S; j++)
            if (tok[j] - tok[i] > worst) {
                worst = tok[j] - tok[i];
                worst_from = at[i] - t0;
                worst_to = at[j] - t0;
            }
    long long total = tok[n - 1] - tok[0];
    fprintf(stderr, "sharedrl (%s): %d documents, %lld estimated tokens in %.0f s; at"
            " most %lld within %.0f s (%.1f-%.1f s), limit %d a minute\n", scope, NDOCS,
            total, took, worst, WINDOW_S, worst_from, worst_to, TPM);
    /* The run asked for more than a minute's budget: the limit was tested. */
    cr_assert_gt(total, TPM, "only %lld tokens: the limit was not exercised", total);
    cr_assert_leq(worst, TPM, "the service received %lld tokens between %.1f s and"
                  " %.1f s, over the %d a minute both instances share", worst, worst_from,
                  worst_to, TPM);

    /* Each planned batch reached the service once. */
    long long planned = tpipe_q(&P, "SELECT sum(embed_batches_total) FROM"
                                " upload_pipeline.upload_jobs WHERE user_id = $1::uuid",
                                P.user);
    cr_assert_eq(tpipe_service_count(&P, "requests"), planned);
    cr_assert_eq(tpipe_q(&P, "SELECT count(*) FROM upload_pipeline.embedding_batches b"
                         " JOIN upload_pipeline.upload_jobs j USING (document_id)"
                         " WHERE j.user_id = $1::uuid", P.user), planned);
    cr_assert_eq(tpipe_stop(&P, rest), 0);
    cr_assert_eq(tpipe_stop(&P, e1), 0);
    cr_assert_eq(tpipe_stop(&P, e2), 0);
}

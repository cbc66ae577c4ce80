/*
 * test_shared_ratelimit: the rate limit shared through PostgreSQL
 * (ratelimit.h, dp_ratelimit_share; schemas/sql/0015).
 *
 * Two limiters under one key are two embed processes calling one account:
 * together they admit at most the limit in a minute, where each alone would
 * admit all of it.  The window slides (admissions leave it 60 s after they
 * were made, by PostgreSQL's clock; the test moves them back in time rather
 * than waiting a minute).  While PostgreSQL does not answer a limiter keeps
 * to the limit by itself, and it goes back to the shared log once it
 * answers again.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ratelimit.h"
#include "support_env.h"

static tenv T;
static char key[128];

static void teardown(void)
{
    if (T.db && *key) {
        const char *p[] = {key};
        PQclear(PQexecParams(T.db, "DELETE FROM upload_pipeline.rate_limit_admissions"
                             " WHERE limit_key = $1", 1, NULL, p, NULL, NULL, 0));
    }
    tenv_teardown(&T);
}

TestSuite(shared_ratelimit, .fini = teardown, .timeout = 240);

static void setup(const char *name)
{
    tenv_setup(&T, name);
    snprintf(key, sizeof(key), "test %s", T.prefix);
}

static long long admitted(const char *what)
{
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT coalesce(%s, 0) FROM"
             " upload_pipeline.rate_limit_admissions WHERE limit_key = $1", what);
    const char *p[] = {key};
    PGresult *r = PQexecParams(T.db, sql, 1, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_TUPLES_OK, "%s", PQerrorMessage(T.db));
    long long v = atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

/* Moves every admission of the key `s` seconds into the past. */
static void age(int s)
{
    char sql[200], sec[16];
    snprintf(sql, sizeof(sql), "UPDATE upload_pipeline.rate_limit_admissions"
             " SET at = at - make_interval(secs => $2::int) WHERE limit_key = $1");
    snprintf(sec, sizeof(sec), "%d", s);
    const char *p[] = {key, sec};
    PGresult *r = PQexecParams(T.db, sql, 2, NULL, p, NULL, NULL, 0);
    cr_assert_eq(PQresultStatus(r), PGRES_COMMAND_OK, "%s", PQerrorMessage(T.db));
    PQclear(r);
}

static dp_ratelimit *shared(int rpm, int tpm, const char *conninfo)
{
    dp_ratelimit *rl = dp_ratelimit_new(rpm, tpm);
    cr_assert_not_null(rl);
    cr_assert_eq(dp_ratelimit_share(rl, conninfo, key), 0);
    return rl;
}

struct hammer {
    dp_ratelimit *rl;
    int tokens, tries;
    int admitted;       /* out */
    int64_t last_wait;  /* out: the wait of the last refusal */
    int shared_ok;      /* out: every decision came from the shared log */
};

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    h->shared_ok = 1;
    for (int i = 0; i < h->tries; i++) {
        int64_t w = dp_ratelimit_try(h->rl, h->tokens);
        if (w == 0)
            h->admitted++;
        else
            h->last_wait = w;
        if (!dp_ratelimit_shared_ok(h->rl))
            h->shared_ok = 0;
    }
    return NULL;
}

Test(shared_ratelimit, two_limiters_on_one_key_admit_the_token_limit_once_between_them)
{
    setup("srl_tokens");
    /* 100 tokens a minute, requests of 10: ten admissions in all, where
     * each limiter on its own admits ten. */
    struct hammer h[2] = {{shared(0, 100, T.dburl), 10, 40, 0, 0, 0},
                          {shared(0, 100, T.dburl), 10, 40, 0, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer_run, &h[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    cr_assert(h[0].shared_ok && h[1].shared_ok, "a decision was not the shared log's");
    cr_assert_eq(h[0].admitted + h[1].admitted, 10, "admitted %d + %d requests of 10"
                 " tokens under a limit of 100", h[0].admitted, h[1].admitted);
    cr_assert_eq(admitted("sum(tokens)"), 100);
    /* A refusal says when the oldest admission leaves: within the minute. */
    for (int i = 0; i < 2; i++)
        cr_assert(h[i].last_wait > 30000 && h[i].last_wait <= 60000,
                  "wait %lld ms", (long long)h[i].last_wait);
    /* The local windows hold each process's own share only. */
    int64_t t0 = 0, t1 = 0;
    dp_ratelimit_usage(h[0].rl, NULL, &t0);
    dp_ratelimit_usage(h[1].rl, NULL, &t1);
    cr_assert_eq(t0 + t1, 100);
    dp_ratelimit_free(h[0].rl);
    dp_ratelimit_free(h[1].rl);
}

Test(shared_ratelimit, two_limiters_on_one_key_admit_the_request_limit_once_between_them)
{
    setup("srl_requests");
    struct hammer h[2] = {{shared(7, 0, T.dburl), 1, 20, 0, 0, 0},
                          {shared(7, 0, T.dburl), 1, 20, 0, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, hammer_run, &h[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    cr_assert(h[0].shared_ok && h[1].shared_ok);
    cr_assert_eq(h[0].admitted + h[1].admitted, 7);
    cr_assert_eq(admitted("count(*)"), 7);
    dp_ratelimit_free(h[0].rl);
    dp_ratelimit_free(h[1].rl);
}

Test(shared_ratelimit, the_window_slides_admissions_leave_it_after_a_minute)
{
    setup("srl_slide");
    dp_ratelimit *a = shared(0, 100, T.dburl), *b = shared(0, 100, T.dburl);
    cr_assert_eq(dp_ratelimit_try(a, 60), 0);
    cr_assert_eq(dp_ratelimit_try(b, 40), 0);
    cr_assert_gt(dp_ratelimit_try(b, 1), 0, "the minute's 100 tokens are spent");
    /* 45 s later: the wait is what remains of the minute. */
    age(45);
    int64_t w = dp_ratelimit_try(a, 30);
    cr_assert(w > 5000 && w <= 15000, "wait %lld ms, 15 s expected", (long long)w);
    /* A minute later: the whole budget again, for either of them. */
    age(16);
    cr_assert_eq(dp_ratelimit_try(b, 70), 0);
    cr_assert_eq(dp_ratelimit_try(a, 30), 0);
    cr_assert_gt(dp_ratelimit_try(a, 1), 0);
    cr_assert_eq(admitted("sum(tokens)"), 100, "the old admissions were dropped");
    /* A request over the whole budget waits until the window is empty. */
    age(61);
    cr_assert_eq(dp_ratelimit_try(a, 250), 0);
    cr_assert_gt(dp_ratelimit_try(b, 1), 0);
    cr_assert(dp_ratelimit_shared_ok(a) && dp_ratelimit_shared_ok(b));
    dp_ratelimit_free(a);
    dp_ratelimit_free(b);
}

Test(shared_ratelimit, without_postgresql_a_limiter_keeps_to_the_limit_alone)
{
    setup("srl_down");
    /* Nothing listens on port 1. */
    dp_ratelimit *rl = shared(0, 100, "postgresql://docpipe@127.0.0.1:1/docpipe");
    for (int i = 0; i < 10; i++)
        cr_assert_eq(dp_ratelimit_try(rl, 10), 0, "request %d", i);
    cr_assert_gt(dp_ratelimit_try(rl, 10), 0, "the local window is full");
    cr_assert_not(dp_ratelimit_shared_ok(rl));
    dp_ratelimit_free(rl);
}

Test(shared_ratelimit, a_lost_connection_falls_back_then_reconnects_to_the_shared_log)
{
    setup("srl_reconnect");
    /* Its own application_name, so that the test cuts only its connection. */
    char app[96], url[800];
    snprintf(app, sizeof(app), "srl_%d", (int)getpid());
    snprintf(url, sizeof(url), "%s%sapplication_name=%s", T.dburl,
             strchr(T.dburl, '?') ? "&" : "?", app);
    dp_ratelimit *rl = shared(0, 100, url);
    cr_assert_eq(dp_ratelimit_try(rl, 60), 0);
    cr_assert(dp_ratelimit_shared_ok(rl));
    char sql[200];
    snprintf(sql, sizeof(sql), "SELECT count(pg_terminate_backend(pid)) FROM"
             " pg_stat_activity WHERE application_name = '%s'", app);
    cr_assert_eq(tenv_scalar(&T, sql), 1, "the limiter's connection");

    /* PostgreSQL does not answer it: the local window, which holds the 60
     * tokens admitted before, decides. */
    cr_assert_eq(dp_ratelimit_try(rl, 40), 0);
    cr_assert_not(dp_ratelimit_shared_ok(rl));
    cr_assert_gt(dp_ratelimit_try(rl, 1), 0, "60 + 40 tokens: the minute is spent");

    /* Within DP_RATELIMIT_SHARED_RETRY_MS it asks the shared log again. */
    int back = 0;
    for (int i = 0; i < 300 && !back; i++) {
        dp_ratelimit_try(rl, 1);
        back = dp_ratelimit_shared_ok(rl);
        if (!back)
            usleep(100000);
    }
    cr_assert(back, "the limiter did not go back to the shared log");
    /* The shared log holds what was admitted through it: the first 60 and
     * the request of 1 that found it again, not the 40 of the outage. */
    cr_assert_eq(admitted("sum(tokens)"), 61);
    cr_assert_gt(dp_ratelimit_try(rl, 40), 0, "the shared log has room for 39 only");
    cr_assert_eq(dp_ratelimit_try(rl, 39), 0);
    cr_assert_eq(admitted("sum(tokens)"), 100);
    dp_ratelimit_free(rl);
}

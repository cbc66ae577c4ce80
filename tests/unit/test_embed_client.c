/*
 * test_embed_client: the embeddings client against a real
 * docpipe-embedserver (started per test on a free port, faults switched
 * through /admin/faults, requests counted through /admin/stats), plus a
 * tiny libmicrohttpd server with canned replies for the shapes the real
 * server never sends (base64 vectors, broken JSON, HTTP-date Retry-After).
 *
 * The server binary is $DOCPIPE_EMBEDSERVER, else tools/ next to
 * $DOCPIPE_BIN (ctest sets it), else tools/ next to this test executable;
 * build it first (target docpipe-embedserver).
 */
#include <criterion/criterion.h>

#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "embed_client.h"
#include "ids.h"
#include "unit/support_embedserver.h"

/* ------------------------------------------------------------------------
 * The embedding server.
 * ---------------------------------------------------------------------- */

static pid_t server_pid;
static char base_url[64];

/* args: NULL-terminated extra flags. */
static void server_start(const char *const *args)
{
    server_pid = embedserver_spawn(args, NULL, base_url, sizeof(base_url));
}

static void server_stop(void)
{
    cr_assert_eq(kill(server_pid, SIGTERM), 0);
    int status = 0;
    cr_assert_eq(waitpid(server_pid, &status, 0), server_pid);
    server_pid = 0;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "server status 0x%x", status);
}

static void setup(void) { curl_global_init(CURL_GLOBAL_ALL); }

static void teardown(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
        server_pid = 0;
    }
}

TestSuite(embed_client, .init = setup, .fini = teardown, .timeout = 60);

struct body {
    char *p;
    size_t len;
};

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    struct body *b = arg;
    char *p = realloc(b->p, b->len + size * n + 1);
    if (!p)
        return 0;
    memcpy(p + b->len, data, size * n);
    b->p = p;
    b->len += size * n;
    b->p[b->len] = '\0';
    return size * n;
}

/* An admin call; returns the JSON reply (caller frees). */
static json_t *admin(const char *method, const char *path, const char *body)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", base_url, path);
    struct body b = {0};
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    cr_assert_eq(curl_easy_perform(c), CURLE_OK);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    cr_assert_eq(status, 200, "%s %s %s -> %ld", method, path, body ? body : "", status);
    json_t *j = json_loads(b.p, 0, NULL);
    free(b.p);
    cr_assert(j);
    return j;
}

static void set_faults(const char *json) { json_decref(admin("POST", "/admin/faults", json)); }

static long server_requests(void)
{
    json_t *j = admin("GET", "/admin/stats", NULL);
    long n = (long)json_integer_value(json_object_get(j, "requests"));
    json_decref(j);
    return n;
}

static long server_stat(const char *name)
{
    json_t *j = admin("GET", "/admin/stats", NULL);
    long n = (long)json_integer_value(json_object_get(j, name));
    json_decref(j);
    return n;
}

/* ------------------------------------------------------------------------
 * Client helpers.
 * ---------------------------------------------------------------------- */

static dp_config cfg_for(const char *url, int dim, int inflight)
{
    dp_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.embed_url = (char *)url;
    cfg.embed_model = "text-embedding-3-small";
    cfg.embed_api_key = "";
    cfg.embed_dim = dim;
    cfg.embed_inflight = inflight;
    cfg.embed_rpm = 3500;
    cfg.embed_tpm = 1000000;
    cfg.embed_timeout_ms = 10000;
    cfg.breaker_threshold = 5;
    cfg.breaker_reset_ms = 60000;
    return cfg;
}

static dp_embed_client *client_for(const dp_config *cfg)
{
    dp_embed_client *c = NULL;
    char err[256];
    cr_assert_eq(dp_embed_client_new(cfg, &c, err, sizeof(err)), DP_OK, "%s", err);
    return c;
}

static dp_embed_job job_of(const char *const *texts, size_t n)
{
    dp_embed_job j;
    memset(&j, 0, sizeof(j));
    j.texts = texts;
    j.n = n;
    return j;
}

/* Runs the jobs, expecting DP_OK; a failure names the first failed job. */
static void run_all_ok(dp_embed_client *c, dp_embed_job *jobs, size_t n)
{
    dp_err rc = dp_embed_run(c, jobs, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(jobs[i].result, DP_OK, "run %s; job %zu of %zu: %s (HTTP %d)",
                     dp_err2str(rc), i, n, jobs[i].error, jobs[i].http_status);
    cr_assert_eq(rc, DP_OK);
}

static void jobs_free(dp_embed_job *jobs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(jobs[i].vectors);
        free(jobs[i].shas);
        jobs[i].vectors = NULL;
        jobs[i].shas = NULL;
    }
}

/* Runs one job of one text and returns it (vectors freed). */
static dp_embed_job run_one(dp_embed_client *c, const char *text, dp_err want_run)
{
    const char *texts[] = {text};
    dp_embed_job j = job_of(texts, 1);
    cr_assert_eq(dp_embed_run(c, &j, 1), want_run);
    free(j.vectors);
    free(j.shas);
    j.vectors = NULL;
    j.shas = NULL;
    j.texts = NULL;
    return j;
}

/* ------------------------------------------------------------------------
 * Success.
 * ---------------------------------------------------------------------- */

#define NJOBS 64
#define PER_JOB 4

Test(embed_client, sixty_four_jobs_at_500ms_latency_run_32_at_a_time_in_two_waves)
{
    server_start(NULL);
    set_faults("{\"latency_ms\":500}");
    dp_config cfg = cfg_for(base_url, 1536, 32);
    dp_embed_client *c = client_for(&cfg);

    static char text[NJOBS][PER_JOB][32];
    static const char *texts[NJOBS][PER_JOB];
    dp_embed_job jobs[NJOBS];
    for (int j = 0; j < NJOBS; j++) {
        for (int k = 0; k < PER_JOB; k++) {
            snprintf(text[j][k], sizeof(text[j][k]), "chunk %d of document %d", k, j % 8);
            texts[j][k] = text[j][k];
        }
        jobs[j] = job_of(texts[j], PER_JOB);
    }
    double t0 = test_now_s();
    run_all_ok(c, jobs, NJOBS);
    double took = test_now_s() - t0;
    cr_assert(took >= 0.95 && took < 3.0, "64 jobs took %.2f s", took);
    cr_log_info("64 jobs x 4 texts, 500 ms latency, 32 in flight: %.3f s", took);

    for (int j = 0; j < NJOBS; j++) {
        cr_assert_eq(jobs[j].result, DP_OK, "job %d: %s", j, jobs[j].error);
        cr_assert_eq(jobs[j].http_status, 200);
        cr_assert_eq(jobs[j].dim, 1536);
        cr_assert_eq(jobs[j].retry_after_ms, -1);
        cr_assert(jobs[j].vectors);
        for (int k = 0; k < PER_JOB; k++) {
            const float *v = jobs[j].vectors + (size_t)k * 1536;
            double s = 0;
            for (int i = 0; i < 1536; i++)
                s += v[i] * v[i];
            cr_assert_float_eq(sqrt(s), 1.0, 1e-5, "job %d text %d norm %.9f", j, k, sqrt(s));
        }
    }
    /* Same text, same vector (job 0 and job 8 hold the same texts); and the
     * texts of one job each got their own vector, in order. */
    cr_assert(memcmp(jobs[0].vectors, jobs[8].vectors, PER_JOB * 1536 * sizeof(float)) == 0);
    cr_assert(memcmp(jobs[0].vectors, jobs[0].vectors + 1536, 1536 * sizeof(float)) != 0);

    cr_assert_eq(server_requests(), NJOBS);
    long peak = server_stat("in_flight_max");
    cr_assert(peak <= 32 && peak >= 16, "in_flight_max %ld", peak);

    dp_embed_stats st;
    dp_embed_client_stats(c, &st);
    cr_assert_eq(st.requests, NJOBS);
    cr_assert_eq(st.ok, NJOBS);
    cr_assert(st.connects >= 1 && st.connects <= 32, "%lld connections for 64 requests",
              (long long)st.connects);
    int64_t connects = st.connects;
    cr_log_info("first run opened %lld connections", (long long)connects);

    /* A second run reuses the kept-alive connections. */
    jobs_free(jobs, NJOBS);
    t0 = test_now_s();
    run_all_ok(c, jobs, NJOBS);
    took = test_now_s() - t0;
    cr_assert(took < 3.0, "second run took %.2f s", took);
    cr_log_info("second run on the same client: %.3f s", took);
    dp_embed_client_stats(c, &st);
    cr_assert_eq(st.requests, 2 * NJOBS);
    cr_assert_eq(st.connects, connects, "no new connections on the second run");
    jobs_free(jobs, NJOBS);

    cr_assert_eq(dp_breaker_state_now(dp_embed_client_breaker(c)), DP_BREAKER_CLOSED);
    dp_embed_client_free(c);
    server_stop();
}

/* dp_embed_run_each: done() sees each successful job once, with its vectors,
 * before the run returns; what it takes (and NULLs) stays taken. */
typedef struct seen_jobs {
    int calls;
    int with_vectors;
    size_t vectors;
    dp_embed_job *last;
} seen_jobs;

static void take_vectors(dp_embed_job *job, void *arg)
{
    seen_jobs *s = arg;
    s->calls++;
    s->with_vectors += job->vectors && job->shas && job->result == DP_OK;
    s->vectors += job->n;
    s->last = job;
    free(job->vectors);
    free(job->shas);
    job->vectors = NULL;
    job->shas = NULL;
}

Test(embed_client, run_each_hands_over_each_successful_job_as_it_is_answered)
{
    server_start(NULL);
    dp_config cfg = cfg_for(base_url, 1536, 4);
    dp_embed_client *c = client_for(&cfg);
    const char *two[] = {"alpha", "beta"}, *bad[] = {""}, *three[] = {"x", "y", "z"};
    dp_embed_job jobs[3] = {job_of(two, 2), job_of(bad, 1), job_of(three, 3)};
    seen_jobs seen = {0};
    cr_assert_eq(dp_embed_run_each(c, jobs, 3, take_vectors, &seen), DP_OK);
    cr_assert_eq(seen.calls, 2, "the 400 is not handed over");
    cr_assert_eq(seen.with_vectors, 2);
    cr_assert_eq(seen.vectors, 5);
    cr_assert_eq(jobs[0].result, DP_OK);
    cr_assert_eq(jobs[1].result, DP_ERR_PERMANENT);
    cr_assert_eq(jobs[2].result, DP_OK);
    for (int i = 0; i < 3; i++)
        cr_assert_null(jobs[i].vectors);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, an_empty_job_succeeds_without_a_request)
{
    server_start(NULL);
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = job_of(NULL, 0);
    cr_assert_eq(dp_embed_run(c, &j, 1), DP_OK);
    cr_assert_eq(j.result, DP_OK);
    cr_assert_null(j.vectors);
    cr_assert_eq(server_requests(), 0);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, bearer_key_is_sent_when_configured)
{
    const char *args[] = {"--api-key", "sekrit", NULL};
    server_start(args);
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_ERR_PERMANENT, "no key: 401 is permanent");
    cr_assert_eq(j.http_status, 401);
    dp_embed_client_free(c);

    cfg.embed_api_key = "sekrit";
    c = client_for(&cfg);
    j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_OK, "%s", j.error);
    dp_embed_client_free(c);
    server_stop();
}

/* ------------------------------------------------------------------------
 * Failures and their classes.
 * ---------------------------------------------------------------------- */

Test(embed_client, rate_limited_429_is_retryable_with_retry_after)
{
    server_start(NULL);
    set_faults("{\"fail_status\":429,\"retry_after_s\":7}");
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    cr_assert_eq(j.http_status, 429);
    cr_assert_eq(j.retry_after_ms, 7000);
    cr_assert_null(j.vectors);
    cr_assert(strstr(j.error, "429"), "%s", j.error);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, server_error_500_is_retryable)
{
    server_start(NULL);
    set_faults("{\"fail_status\":500}");
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    cr_assert_eq(j.http_status, 500);
    cr_assert_eq(j.retry_after_ms, -1);
    cr_assert_eq(dp_breaker_failures(dp_embed_client_breaker(c)), 1);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, empty_string_input_gets_400_which_is_permanent_and_spares_the_breaker)
{
    server_start(NULL);
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    for (int i = 0; i < 10; i++) {
        dp_embed_job j = run_one(c, "", DP_OK);
        cr_assert_eq(j.result, DP_ERR_PERMANENT);
        cr_assert_eq(j.http_status, 400);
        cr_assert(strstr(j.error, "HTTP 400"), "%s", j.error);
    }
    cr_assert_eq(dp_breaker_state_now(dp_embed_client_breaker(c)), DP_BREAKER_CLOSED,
                 "bad input says nothing about the service's health");
    dp_embed_job j = run_one(c, "fine", DP_OK);
    cr_assert_eq(j.result, DP_OK);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, vectors_of_another_dimension_are_a_permanent_mismatch)
{
    const char *args[] = {"--dim", "8", NULL};
    server_start(args);
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_ERR_PERMANENT);
    cr_assert_eq(j.http_status, 200);
    cr_assert(strstr(j.error, "dimension mismatch"), "%s", j.error);
    cr_assert_null(j.vectors);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, a_hung_server_times_out_as_retryable)
{
    server_start(NULL);
    set_faults("{\"timeout_rate\":1,\"timeout_ms\":60000}");
    dp_config cfg = cfg_for(base_url, 1536, 4);
    cfg.embed_timeout_ms = 300;
    dp_embed_client *c = client_for(&cfg);
    const char *texts[] = {"a"};
    dp_embed_job jobs[3] = {job_of(texts, 1), job_of(texts, 1), job_of(texts, 1)};
    double t0 = test_now_s();
    cr_assert_eq(dp_embed_run(c, jobs, 3), DP_OK);
    double took = test_now_s() - t0;
    cr_assert(took >= 0.29 && took < 2.0, "took %.2f s", took);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(jobs[i].result, DP_ERR_RETRYABLE);
        cr_assert_eq(jobs[i].http_status, 0);
        cr_assert(strstr(jobs[i].error, "imeout") || strstr(jobs[i].error, "timed out"),
                  "%s", jobs[i].error);
    }
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, nothing_listening_is_retryable)
{
    dp_config cfg = cfg_for("http://127.0.0.1:1", 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job j = run_one(c, "x", DP_OK);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    cr_assert_eq(j.http_status, 0);
    dp_embed_client_free(c);
}

Test(embed_client, alive_tells_an_outage_from_failing_requests)
{
    /* Nothing listening: down, and it counts on the breaker. */
    dp_config cfg = cfg_for("http://127.0.0.1:1", 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    cr_assert_eq(dp_embed_client_alive(c), 0);
    cr_assert_eq(dp_breaker_failures(dp_embed_client_breaker(c)), 1);
    dp_embed_client_free(c);

    server_start(NULL);
    cfg = cfg_for(base_url, 1536, 2);
    c = client_for(&cfg);
    /* Every embeddings request fails, but the service answers: up, so a
     * failure is the records' own. */
    set_faults("{\"fail_status\":500}");
    cr_assert_eq(run_one(c, "x", DP_OK).result, DP_ERR_RETRYABLE);
    cr_assert_eq(dp_embed_client_alive(c), 1);
    cr_assert_eq(dp_breaker_failures(dp_embed_client_breaker(c)), 1, "alive adds nothing");
    /* An outage window takes the whole service down. */
    set_faults("{\"fail_status\":0,\"fail_for_ms\":5000}");
    cr_assert_eq(dp_embed_client_alive(c), 0);
    cr_assert_eq(dp_breaker_failures(dp_embed_client_breaker(c)), 2);
    dp_embed_client_free(c);
    server_stop();
}

/* ------------------------------------------------------------------------
 * The breaker.
 * ---------------------------------------------------------------------- */

Test(embed_client, five_failures_open_the_breaker_and_then_runs_fail_without_calling)
{
    server_start(NULL);
    set_faults("{\"fail_status\":500}");
    dp_config cfg = cfg_for(base_url, 1536, 4);
    cfg.breaker_reset_ms = 1000;
    dp_embed_client *c = client_for(&cfg);
    dp_breaker *b = dp_embed_client_breaker(c);
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED, "after %d failures", i);
        dp_embed_job j = run_one(c, "x", DP_OK);
        cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    }
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);
    cr_assert_eq(server_requests(), 5);

    const char *texts[] = {"a", "b"};
    dp_embed_job jobs[3] = {job_of(texts, 2), job_of(texts, 1), job_of(texts + 1, 1)};
    cr_assert_eq(dp_embed_run(c, jobs, 3), DP_ERR_RETRYABLE);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(jobs[i].result, DP_ERR_RETRYABLE);
        cr_assert(strstr(jobs[i].error, "circuit breaker open"), "%s", jobs[i].error);
        cr_assert(jobs[i].retry_after_ms > 0 && jobs[i].retry_after_ms <= 1000);
        cr_assert_eq(jobs[i].http_status, 0);
    }
    cr_assert_eq(server_requests(), 5, "an open breaker sends nothing");
    dp_embed_stats st;
    dp_embed_client_stats(c, &st);
    cr_assert_eq(st.requests, 5);
    cr_assert_eq(st.retryable, 5);
    cr_assert_eq(st.refused, 3);

    /* After reset_ms one probe goes first; it fails and the breaker re-opens
     * with one more request on the server, the rest refused. */
    usleep(1100 * 1000);
    cr_assert_eq(dp_embed_run(c, jobs, 3), DP_ERR_RETRYABLE);
    cr_assert_eq(server_requests(), 6, "only the probe went out");
    cr_assert_eq(jobs[0].result, DP_ERR_RETRYABLE);
    cr_assert_eq(jobs[0].http_status, 500, "the probe's own answer");
    cr_assert(strstr(jobs[1].error, "circuit breaker open"), "%s", jobs[1].error);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);

    /* The service recovers: the next probe succeeds and the rest follow. */
    set_faults("{\"fail_status\":0}");
    usleep(1100 * 1000);
    run_all_ok(c, jobs, 3);
    cr_assert_eq(server_requests(), 9);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED);
    jobs_free(jobs, 3);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, the_breaker_opening_mid_run_stops_the_run)
{
    server_start(NULL);
    set_faults("{\"fail_status\":503,\"latency_ms\":50}");
    dp_config cfg = cfg_for(base_url, 1536, 4);
    dp_embed_client *c = client_for(&cfg);
    const char *texts[] = {"a"};
    dp_embed_job jobs[64];
    for (int i = 0; i < 64; i++)
        jobs[i] = job_of(texts, 1);
    cr_assert_eq(dp_embed_run(c, jobs, 64), DP_ERR_RETRYABLE);
    long sent = server_requests();
    cr_assert(sent >= 5 && sent <= 8, "%ld requests", sent);
    int refused = 0, failed = 0;
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(jobs[i].result, DP_ERR_RETRYABLE);
        if (strstr(jobs[i].error, "circuit breaker open"))
            refused++;
        else if (jobs[i].http_status == 503)
            failed++;
    }
    cr_assert_eq(refused + failed, 64);
    cr_assert_geq(failed, 5);
    cr_assert_leq(failed, sent);
    dp_embed_client_free(c);
    server_stop();
}

/* ------------------------------------------------------------------------
 * The rate limiter: jobs wait, they do not fail.  The limiter's clock runs
 * 60x faster than real time, so a minute's window passes in a second.
 * ---------------------------------------------------------------------- */

static int64_t fast_clock(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ((int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000) * 60;
}

Test(embed_client, a_full_rate_window_makes_jobs_wait_not_fail)
{
    server_start(NULL);
    dp_config cfg = cfg_for(base_url, 1536, 8);
    cfg.embed_rpm = 2;
    dp_embed_client *c = client_for(&cfg);
    dp_ratelimit_set_clock(dp_embed_client_ratelimit(c), fast_clock, NULL);
    const char *texts[] = {"a"};
    dp_embed_job jobs[6];
    for (int i = 0; i < 6; i++)
        jobs[i] = job_of(texts, 1);
    double t0 = test_now_s();
    run_all_ok(c, jobs, 6);
    double took = test_now_s() - t0;
    /* 2 now, 2 a (fast) minute later, 2 another minute later. */
    cr_assert(took >= 1.9 && took < 4.0, "took %.2f s", took);
    cr_log_info("6 jobs at 2 requests per (1 s) minute: %.3f s", took);
    cr_assert_eq(server_requests(), 6);
    jobs_free(jobs, 6);
    dp_embed_client_free(c);
    server_stop();
}

/* A run bounded by a deadline sends only what the rate limit admits before
 * it: the jobs the limiter would hold past the deadline are not sent (a
 * suffix, not_sent, with the wait), so an embed pass never outlasts its
 * bound waiting for the limit.  Without the bound the same run would wait
 * a whole minute for the third job. */
Test(embed_client, a_bounded_run_leaves_what_the_rate_limit_holds_past_its_deadline)
{
    server_start(NULL);
    dp_config cfg = cfg_for(base_url, 1536, 8);
    cfg.embed_tpm = 100; /* each job below is 40 tokens: two fit a minute */
    dp_embed_client *c = client_for(&cfg);
    char text[161];
    memset(text, 'x', 160);
    text[160] = '\0';
    const char *texts[] = {text};
    dp_embed_job jobs[5];
    for (int i = 0; i < 5; i++)
        jobs[i] = job_of(texts, 1);
    double t0 = test_now_s();
    dp_err rc = dp_embed_run_until(c, jobs, 5, NULL, NULL, NULL,
                                   dp_clock_mono_ms(NULL) + 5000);
    double took = test_now_s() - t0;
    cr_assert_eq(rc, DP_OK);
    for (int i = 0; i < 2; i++)
        cr_assert(jobs[i].result == DP_OK && !jobs[i].not_sent, "job %d: %s", i,
                  jobs[i].error);
    for (int i = 2; i < 5; i++) {
        cr_assert(jobs[i].not_sent, "job %d was sent", i);
        cr_assert_eq(jobs[i].result, DP_ERR_RETRYABLE);
        cr_assert(jobs[i].retry_after_ms > 5000, "job %d: wait %lld ms", i,
                  (long long)jobs[i].retry_after_ms);
    }
    cr_assert_eq(server_requests(), 2, "the service got exactly the jobs sent");
    /* It did not wait for the limit: the limiter's wait is past the deadline. */
    cr_assert(took < 30.0, "took %.2f s", took);
    jobs_free(jobs, 5);
    dp_embed_client_free(c);
    server_stop();
}

Test(embed_client, tokens_are_estimated_per_text_with_the_chunkers_count)
{
    /* tokens.h: a letter run costs one per 4 letters, a 2-byte UTF-8
     * character one: 2 + 1 + 4. */
    const char *texts[] = {"abcdefgh", "abc", "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9"};
    dp_embed_job j = job_of(texts, 3);
    cr_assert_eq(dp_embed_job_tokens(&j), 2 + 1 + 4, "summed over the texts");
    j.n = 2;
    texts[0] = "";
    texts[1] = "";
    cr_assert_eq(dp_embed_job_tokens(&j), 1, "at least one per request");
}

/* ------------------------------------------------------------------------
 * Canned replies: shapes the real server does not produce.
 * ---------------------------------------------------------------------- */

static struct canned {
    unsigned status;
    const char *body;
    const char *retry_after;
} canned;

static enum MHD_Result canned_handler(void *cls, struct MHD_Connection *conn, const char *url,
                                      const char *method, const char *version,
                                      const char *upload, size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version, (void)upload;
    if (!*state) {
        *state = (void *)1;
        return MHD_YES;
    }
    if (*upload_size) {
        *upload_size = 0;
        return MHD_YES;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(
        strlen(canned.body), (void *)canned.body, MHD_RESPMEM_PERSISTENT);
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (canned.retry_after)
        MHD_add_response_header(r, "Retry-After", canned.retry_after);
    enum MHD_Result ret = MHD_queue_response(conn, canned.status, r);
    MHD_destroy_response(r);
    return ret;
}

static struct MHD_Daemon *canned_start(char *url, size_t n)
{
    struct MHD_Daemon *d =
        MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0, NULL, NULL,
                         canned_handler, NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
                         MHD_OPTION_END);
    cr_assert(d);
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    snprintf(url, n, "http://127.0.0.1:%u", (unsigned)info->port);
    return d;
}

static dp_embed_job canned_run(const char *url, int dim, size_t n, unsigned status,
                               const char *body, const char *retry_after)
{
    canned = (struct canned){status, body, retry_after};
    dp_config cfg = cfg_for(url, dim, 2);
    dp_embed_client *c = client_for(&cfg);
    static const char *texts[] = {"a", "b", "c"};
    dp_embed_job j = job_of(texts, n);
    cr_assert_eq(dp_embed_run(c, &j, 1), DP_OK);
    dp_embed_client_free(c);
    return j;
}

Test(embed_client, numbers_are_taken_exactly_as_the_json_gives_them_by_index)
{
    char url[64];
    struct MHD_Daemon *d = canned_start(url, sizeof(url));
    dp_embed_job j = canned_run(
        url, 3, 2, 200,
        "{\"data\":[{\"index\":1,\"embedding\":[0,1,-1]},"
        "{\"index\":0,\"embedding\":[0.1,-0.30000000000000004,1e-7]}]}",
        NULL);
    cr_assert_eq(j.result, DP_OK, "%s", j.error);
    cr_assert_eq(j.dim, 3);
    const double want[] = {0.1, -0.30000000000000004, 1e-7, 0, 1, -1};
    for (int i = 0; i < 6; i++)
        cr_assert(j.vectors[i] == (float)want[i], "value %d: %.9g", i, j.vectors[i]);
    /* The sha is of the numbers exactly as the JSON gives them (doubles),
     * not of their float32 rounding. */
    for (int k = 0; k < 2; k++) {
        char exact[DP_SHA256_HEX_SIZE], rounded[DP_SHA256_HEX_SIZE];
        double r[3];
        for (int i = 0; i < 3; i++)
            r[i] = (double)(float)want[k * 3 + i];
        dp_vector_sha256(want + k * 3, 3, exact);
        dp_vector_sha256(r, 3, rounded);
        cr_assert_str_eq(j.shas + k * DP_SHA256_HEX_SIZE, exact, "vector %d", k);
        if (k == 0)
            cr_assert_str_neq(exact, rounded, "0.1 is not a float32");
    }
    free(j.vectors);
    free(j.shas);
    MHD_stop_daemon(d);
}

Test(embed_client, base64_vectors_are_little_endian_float32)
{
    char url[64];
    struct MHD_Daemon *d = canned_start(url, sizeof(url));
    /* [1.0, 0.5, -2.0] and [0.25, 0, 3.0] as little-endian float32. */
    dp_embed_job j = canned_run(url, 3, 2, 200,
                                "{\"data\":[{\"index\":0,\"embedding\":\"AACAPwAAAD8AAADA\"},"
                                "{\"index\":1,\"embedding\":\"AACAPgAAAAAAAEBA\"}]}",
                                NULL);
    cr_assert_eq(j.result, DP_OK, "%s", j.error);
    const double want[] = {1.0, 0.5, -2.0, 0.25, 0.0, 3.0};
    for (int i = 0; i < 6; i++)
        cr_assert(j.vectors[i] == want[i], "value %d: %g", i, j.vectors[i]);
    char sha[DP_SHA256_HEX_SIZE];
    dp_vector_sha256(want + 3, 3, sha);
    cr_assert_str_eq(j.shas + DP_SHA256_HEX_SIZE, sha);
    free(j.vectors);
    free(j.shas);

    /* A padded one: two floats are 8 bytes, "AACAPwAAAD8=" is not; 5 floats
     * are 20 bytes, encoded with one '='. */
    j = canned_run(url, 5, 1, 200,
                   "{\"data\":[{\"index\":0,\"embedding\":\"AACAPwAAAD8AAADAAACAPgAAQEA=\"}]}",
                   NULL);
    cr_assert_eq(j.result, DP_OK, "%s", j.error);
    cr_assert(j.vectors[4] == 3.0);
    free(j.vectors);
    free(j.shas);

    j = canned_run(url, 4, 1, 200, "{\"data\":[{\"index\":0,\"embedding\":\"AACAPwAAAD8AAADA\"}]}",
                   NULL);
    cr_assert_eq(j.result, DP_ERR_PERMANENT);
    cr_assert(strstr(j.error, "dimension mismatch"), "%s", j.error);
    MHD_stop_daemon(d);
}

Test(embed_client, a_reply_that_is_not_json_is_retryable)
{
    char url[64];
    struct MHD_Daemon *d = canned_start(url, sizeof(url));
    dp_embed_job j = canned_run(url, 3, 1, 200, "<html>bad gateway</html>", NULL);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE, "a proxy's page, not the service's answer");
    cr_assert(strstr(j.error, "not JSON"), "%s", j.error);
    j = canned_run(url, 3, 1, 200, "{\"data\":[{\"index\":0,\"embedding\":[1,2", NULL);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE, "a cut reply");
    MHD_stop_daemon(d);
}

Test(embed_client, json_of_the_wrong_shape_is_permanent)
{
    char url[64];
    struct MHD_Daemon *d = canned_start(url, sizeof(url));
    const char *bad[] = {
        "{\"object\":\"list\"}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]}]}",                      /* 1 for 2 */
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]},{\"index\":0,\"embedding\":[1,2,3]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]},{\"index\":5,\"embedding\":[1,2,3]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]},{\"index\":1,\"embedding\":[1,\"x\",3]}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]},{\"index\":1}]}",
        "{\"data\":[{\"index\":0,\"embedding\":[1,2,3]},{\"index\":1,\"embedding\":\"!!!!\"}]}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        dp_embed_job j = canned_run(url, 3, 2, 200, bad[i], NULL);
        cr_assert_eq(j.result, DP_ERR_PERMANENT, "%s -> %s", bad[i], dp_err2str(j.result));
        cr_assert_null(j.vectors);
        cr_assert_null(j.shas);
    }
    MHD_stop_daemon(d);
}

Test(embed_client, retry_after_as_an_http_date_and_503_408_are_retryable)
{
    char url[64];
    struct MHD_Daemon *d = canned_start(url, sizeof(url));
    char date[64];
    time_t when = time(NULL) + 120;
    struct tm tm;
    gmtime_r(&when, &tm);
    strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
    dp_embed_job j = canned_run(url, 3, 1, 503, "{\"error\":{\"message\":\"busy\"}}", date);
    cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    cr_assert(j.retry_after_ms > 115000 && j.retry_after_ms <= 120000, "%lld",
              (long long)j.retry_after_ms);
    cr_assert(strstr(j.error, "busy"), "the server's message: %s", j.error);

    j = canned_run(url, 3, 1, 408, "{}", "soon");
    cr_assert_eq(j.result, DP_ERR_RETRYABLE);
    cr_assert_eq(j.retry_after_ms, -1, "an unreadable Retry-After is ignored");

    j = canned_run(url, 3, 1, 404, "{\"error\":{\"message\":\"no such model\"}}", NULL);
    cr_assert_eq(j.result, DP_ERR_PERMANENT);
    MHD_stop_daemon(d);
}

Test(embed_client, base64_and_float_encodings_give_the_same_vectors)
{
    server_start(NULL);
    const char *texts[] = {"first text", "second text", "third"};
    float *got[2];
    const char *enc[2] = {"float", "base64"};
    for (int k = 0; k < 2; k++) {
        dp_config cfg = cfg_for(base_url, 1536, 2);
        cfg.embed_encoding = (char *)enc[k];
        dp_embed_client *c = client_for(&cfg);
        dp_embed_job j = job_of(texts, 3);
        run_all_ok(c, &j, 1);
        cr_assert_eq(j.dim, 1536);
        got[k] = j.vectors;
        free(j.shas);
        dp_embed_client_free(c);
    }
    for (size_t i = 0; i < 3 * 1536; i++)
        cr_assert(fabs(got[0][i] - got[1][i]) < 1e-7, "component %zu: %g vs %g", i,
                  got[0][i], got[1][i]);
    free(got[0]);
    free(got[1]);
    server_stop();
}

/* ------------------------------------------------------------------------
 * Reading replies: base64 embeddings are decoded straight from the reply
 * (cut out before jansson parses the rest); escaped ones go through
 * jansson.  Either way the same vectors and shas come out.
 * ---------------------------------------------------------------------- */

/* base64 of dim little-endian float32s i * 0.37 - 11 (varied bytes, so
 * '/' and '+' occur), into out. */
static void b64_vector(int dim, float base, char *out)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char bytes[4 * 64];
    for (int i = 0; i < dim; i++) {
        float f = base + (float)i * 0.37f - 11.0f;
        memcpy(bytes + 4 * i, &f, 4);
    }
    size_t n = (size_t)dim * 4, o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)bytes[i] << 16 |
                     (i + 1 < n ? (unsigned)bytes[i + 1] << 8 : 0) |
                     (i + 2 < n ? bytes[i + 2] : 0);
        out[o++] = tbl[v >> 18 & 63];
        out[o++] = tbl[v >> 12 & 63];
        out[o++] = i + 1 < n ? tbl[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    out[o] = '\0';
}

/* JSON-escapes every '/' as "\/" and '+' as "\u002B" (both legal). */
static void escape_b64(const char *in, char *out)
{
    for (; *in; in++) {
        if (*in == '/')
            out += sprintf(out, "\\/");
        else if (*in == '+')
            out += sprintf(out, "\\u002B");
        else
            *out++ = *in;
    }
    *out = '\0';
}

static void parse_into(dp_embed_client *c, const char *body, size_t n, float *vec,
                       char *shas)
{
    const char *texts[2] = {"a", "b"};
    dp_embed_job j = job_of(texts, n);
    cr_assert_eq(dp_embed_client_parse(c, &j, body, strlen(body)), DP_OK, "%s", j.error);
    memcpy(vec, j.vectors, n * 64 * sizeof(float));
    memcpy(shas, j.shas, n * DP_SHA256_HEX_SIZE);
    free(j.vectors);
    free(j.shas);
}

Test(embed_client, base64_replies_read_alike_cut_out_escaped_or_beside_a_decoy)
{
    dp_config cfg = cfg_for("http://127.0.0.1:1", 64, 2);
    dp_embed_client *c = client_for(&cfg);
    char v0[400], v1[400], e0[1200], e1[1200];
    b64_vector(64, 0.0f, v0);
    b64_vector(64, 5.5f, v1);
    escape_b64(v0, e0);
    escape_b64(v1, e1);
    cr_assert(strchr(v0, '/') || strchr(v0, '+'), "the vector exercises escapes: %s", v0);
    static char plain[4096], escaped[4096], decoy[4096];
    /* Index order reversed on purpose: index, not position, decides. */
    snprintf(plain, sizeof(plain),
             "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":1,"
             "\"embedding\":\"%s\"},{\"object\":\"embedding\",\"index\":0,"
             "\"embedding\": \"%s\"}],\"model\":\"m\"}", v1, v0);
    snprintf(escaped, sizeof(escaped),
             "{\"data\":[{\"index\":1,\"embedding\":\"%s\"},{\"index\":0,"
             "\"embedding\":\"%s\"}],\"model\":\"m\"}", e1, e0);
    /* A string that spells an embedding key and value inside itself. */
    snprintf(decoy, sizeof(decoy),
             "{\"model\":\"x\\\",\\\"embedding\\\":\\\"%s\\\\\",\"data\":[{\"index\":1,"
             "\"embedding\":\"%s\"},{\"index\":0,\"embedding\":\"%s\"}]}", v0, v1, v0);
    float a[128], b[128], d[128];
    char sa[2 * DP_SHA256_HEX_SIZE], sb[2 * DP_SHA256_HEX_SIZE], sd[2 * DP_SHA256_HEX_SIZE];
    parse_into(c, plain, 2, a, sa);
    parse_into(c, escaped, 2, b, sb);
    parse_into(c, decoy, 2, d, sd);
    for (int i = 0; i < 64; i++) {
        cr_assert_eq(a[i], 0.0f + (float)i * 0.37f - 11.0f, "element %d of input 0", i);
        cr_assert_eq(a[64 + i], 5.5f + (float)i * 0.37f - 11.0f, "element %d of input 1", i);
    }
    cr_assert_eq(memcmp(a, b, sizeof(a)), 0, "escaped base64 reads the same");
    cr_assert_eq(memcmp(a, d, sizeof(a)), 0, "the decoy string is not an embedding");
    cr_assert_eq(memcmp(sa, sb, sizeof(sa)), 0);
    cr_assert_eq(memcmp(sa, sd, sizeof(sa)), 0);

    /* A short vector (not cut out) and a broken reply keep their meaning. */
    cfg.embed_dim = 2;
    dp_embed_client *c2 = client_for(&cfg);
    char v2[32];
    b64_vector(2, 0.0f, v2);
    char small[256];
    snprintf(small, sizeof(small), "{\"data\":[{\"index\":0,\"embedding\":\"%s\"}]}", v2);
    const char *one[1] = {"a"};
    dp_embed_job j = job_of(one, 1);
    cr_assert_eq(dp_embed_client_parse(c2, &j, small, strlen(small)), DP_OK, "%s", j.error);
    cr_assert_eq(j.vectors[1], 0.37f - 11.0f);
    free(j.vectors);
    free(j.shas);
    const char *broken = "{\"data\":[{\"index\":0,\"embedding\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    j = job_of(one, 1);
    cr_assert_eq(dp_embed_client_parse(c2, &j, broken, strlen(broken)), DP_ERR_RETRYABLE);
    cr_assert(strstr(j.error, "not JSON"), "%s", j.error);
    dp_embed_client_free(c2);
    dp_embed_client_free(c);
}

/* dp_embed_run_hooks: prepare() fills a job's texts only when a request slot
 * is free for it, so no more jobs hold their texts than requests are in
 * flight; a job whose prepare fails keeps prepare's verdict and is not sent. */
typedef struct lazy_jobs {
    int prepared, done, outstanding, max_outstanding;
} lazy_jobs;

static const char *const lazy_text[] = {"lazy text"};

static int lazy_prepare(dp_embed_job *job, void *arg)
{
    lazy_jobs *s = arg;
    s->prepared++;
    if (s->prepared == 6) {
        job->result = DP_ERR_PERMANENT;
        snprintf(job->error, sizeof(job->error), "its chunks are missing");
        return -1;
    }
    job->texts = lazy_text;
    if (++s->outstanding > s->max_outstanding)
        s->max_outstanding = s->outstanding;
    return 0;
}

static void lazy_done(dp_embed_job *job, void *arg)
{
    lazy_jobs *s = arg;
    s->done++;
    s->outstanding--;
    job->texts = NULL;   /* what the stage does: its texts are released */
    free(job->vectors);
    free(job->shas);
    job->vectors = NULL;
    job->shas = NULL;
}

Test(embed_client, run_hooks_prepares_each_job_only_when_a_request_slot_is_free)
{
    const char *slow[] = {"--latency-ms", "150", NULL};
    server_start(slow);
    dp_config cfg = cfg_for(base_url, 1536, 2);
    dp_embed_client *c = client_for(&cfg);
    dp_embed_job jobs[8];
    for (int i = 0; i < 8; i++)
        jobs[i] = job_of(NULL, 1);   /* a count, no texts yet */
    lazy_jobs s = {0};
    cr_assert_eq(dp_embed_run_hooks(c, jobs, 8, lazy_prepare, lazy_done, &s), DP_OK);
    cr_assert_eq(s.prepared, 8);
    cr_assert_eq(s.done, 7);
    cr_assert_leq(s.max_outstanding, 2, "%d jobs held texts at once, 2 in flight",
                  s.max_outstanding);
    cr_assert_eq(jobs[5].result, DP_ERR_PERMANENT);
    cr_assert_str_eq(jobs[5].error, "its chunks are missing");
    for (int i = 0; i < 8; i++)
        if (i != 5)
            cr_assert_eq(jobs[i].result, DP_OK, "job %d", i);
    cr_assert_eq(server_requests(), 7, "the failed job was not sent");
    dp_embed_client_free(c);
    server_stop();
}

/* embed_buffer_kb bounds the reply bytes held at once: replies that arrive
 * together beyond it wait, unread, and are read once earlier ones are
 * freed; every job still succeeds. */
/* Handles an answer slowly, so the replies arriving meanwhile are all
 * there to be read at the next turn (unless the bound keeps them unread):
 * without it, whether several replies were held at once depended on how
 * the machine scheduled the test. */
static void slow_done(dp_embed_job *job, void *arg)
{
    (void)job, (void)arg;
    usleep(40 * 1000);
}

static int64_t peak_with_buffer(int buffer_kb)
{
    dp_config cfg = cfg_for(base_url, 1536, 6);
    cfg.embed_buffer_kb = buffer_kb;
    dp_embed_client *c = client_for(&cfg);
    static const char *const ten[] = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};
    dp_embed_job jobs[12];
    for (int i = 0; i < 12; i++)
        jobs[i] = job_of(ten, 10);
    cr_assert_eq(dp_embed_run_hooks(c, jobs, 12, NULL, slow_done, NULL), DP_OK);
    for (int i = 0; i < 12; i++) {
        cr_assert_eq(jobs[i].result, DP_OK, "job %d: %s", i, jobs[i].error);
        cr_assert_eq(jobs[i].dim, 1536);
    }
    jobs_free(jobs, 12);
    dp_embed_stats st;
    dp_embed_client_stats(c, &st);
    cr_assert_eq(st.ok, 12);
    dp_embed_client_free(c);
    return st.reply_bytes_peak;
}

Test(embed_client, reply_memory_is_bounded_by_embed_buffer_kb)
{
    const char *slow[] = {"--latency-ms", "100", NULL};  /* six replies arrive together */
    server_start(slow);
    int64_t unbounded = peak_with_buffer(65536);
    int64_t bounded = peak_with_buffer(64);   /* less than one reply */
    cr_assert_gt(bounded, 0);
    cr_assert_leq(bounded * 3, unbounded,
                  "peak reply bytes %lld with a 64 KB bound, %lld without",
                  (long long)bounded, (long long)unbounded);
    server_stop();
}

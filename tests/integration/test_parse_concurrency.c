/*
 * test_parse_concurrency: parse sends a batch's documents to Tika at once,
 * holds no row lock while Tika works, and bounds a pass by time.
 *
 * The real Apache Tika server ($DOCPIPE_TIKA_URL) sits behind a small
 * proxy in this test (libmicrohttpd, a thread per connection) that holds
 * each parse request for a while before passing it on, and counts the
 * requests, the most in flight at once, and how many documents were
 * already parsed (committed) when each request arrived.  The documents are
 * HTML, so each one goes to Tika.  `docpipe run intake` queues them; then
 * `docpipe run parse` alone works them, against the proxy.
 */
#include <criterion/criterion.h>

#include <curl/curl.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "support_docs.h"
#include "support_env.h"

#define MAX_REQ 64

static tenv T;
static pid_t parse_pid;
static char storage[512], env_storage[600], user[40], docdir[600];

static const char *tika_url(void)
{
    const char *u = getenv("DOCPIPE_TIKA_URL");
    return u && *u ? u : "http://127.0.0.1:39998";
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the proxy in front of Tika ------------------------------------- */

static struct {
    struct MHD_Daemon *d;
    char url[128];            /* what parse is given as tika_url */
    pthread_mutex_t mu;
    int delay_ms;             /* each PUT waits this long first */
    int inflight, max_inflight, requests;
    long long last_arrival;   /* mono_ms of the latest PUT */
    long long parsed_at[MAX_REQ]; /* documents parsed when request k arrived */
    PGconn *db;               /* for parsed_at, under mu */
} P = {.mu = PTHREAD_MUTEX_INITIALIZER};

typedef struct upload {
    char *p;
    size_t len, cap;
} upload;

static size_t keep(char *data, size_t size, size_t n, void *arg)
{
    upload *u = arg;
    size_t add = size * n;
    if (u->len + add + 1 > u->cap) {
        u->cap = (u->len + add + 1) * 2;
        u->p = realloc(u->p, u->cap);
    }
    memcpy(u->p + u->len, data, add);
    u->len += add;
    return add;
}

/* Passes the request on to Tika: its status, its reply in *reply. */
static long forward(const char *method, const char *content_type, const upload *body,
                    upload *reply)
{
    char url[600], ct[300];
    snprintf(url, sizeof(url), "%s/tika", tika_url());
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Accept: text/plain");
    h = curl_slist_append(h, "Expect:");
    snprintf(ct, sizeof(ct), "Content-Type:%s%.280s", content_type ? " " : "",
             content_type ? content_type : "");
    h = curl_slist_append(h, ct);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 60000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, keep);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, reply);
    if (strcmp(method, "PUT") == 0) {
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->len ? body->p : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    }
    long status = 502;
    if (curl_easy_perform(c) == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    return status;
}

static long long parsed_now(void)
{
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'parsed'", user);
    PGresult *r = PQexec(P.db, sql);
    long long n = PQresultStatus(r) == PGRES_TUPLES_OK ? atoll(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    return n;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *data, size_t *size, void **con_cls)
{
    (void)cls, (void)url, (void)version;
    if (!*con_cls) {
        *con_cls = calloc(1, sizeof(upload));
        return MHD_YES;
    }
    upload *u = *con_cls;
    if (*size) {
        keep((char *)data, 1, *size, u);
        *size = 0;
        return MHD_YES;
    }
    int put = strcmp(method, "PUT") == 0;
    if (put) {
        pthread_mutex_lock(&P.mu);
        if (P.requests < MAX_REQ)
            P.parsed_at[P.requests] = parsed_now();
        P.requests++;
        P.last_arrival = mono_ms();
        if (++P.inflight > P.max_inflight)
            P.max_inflight = P.inflight;
        int delay = P.delay_ms;
        pthread_mutex_unlock(&P.mu);
        usleep((useconds_t)delay * 1000);
    }
    upload reply = {0};
    long status = forward(method,
                          MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Type"),
                          u, &reply);
    if (put) {
        pthread_mutex_lock(&P.mu);
        P.inflight--;
        pthread_mutex_unlock(&P.mu);
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(reply.len, reply.p,
                                                             MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret = MHD_queue_response(conn, (unsigned)status, r);
    MHD_destroy_response(r);
    free(reply.p);
    return ret;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    (void)cls, (void)conn, (void)why;
    upload *u = *con_cls;
    if (u)
        free(u->p);
    free(u);
    *con_cls = NULL;
}

static void proxy_start(int delay_ms)
{
    P.delay_ms = delay_ms;
    P.inflight = P.max_inflight = P.requests = 0;
    P.last_arrival = 0;
    P.db = PQconnectdb(T.dburl);
    cr_assert_eq(PQstatus(P.db), CONNECTION_OK, "%s", PQerrorMessage(P.db));
    P.d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD,
                           0, NULL, NULL, on_request, NULL,
                           MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
                           MHD_OPTION_END);
    cr_assert(P.d, "the proxy did not start");
    snprintf(P.url, sizeof(P.url), "http://127.0.0.1:%u",
             (unsigned)MHD_get_daemon_info(P.d, MHD_DAEMON_INFO_BIND_PORT)->port);
}

static void proxy_counts(int *requests, int *max_inflight, int *inflight)
{
    pthread_mutex_lock(&P.mu);
    if (requests)
        *requests = P.requests;
    if (max_inflight)
        *max_inflight = P.max_inflight;
    if (inflight)
        *inflight = P.inflight;
    pthread_mutex_unlock(&P.mu);
}

/* ---- the pipeline's side -------------------------------------------- */

static void teardown(void)
{
    if (parse_pid > 0)
        tenv_stop(parse_pid, SIGTERM, 30000);
    parse_pid = 0;
    if (P.d)
        MHD_stop_daemon(P.d);
    P.d = NULL;
    if (P.db)
        PQfinish(P.db);
    P.db = NULL;
    tenv_teardown(&T);
}

TestSuite(parse_concurrency, .fini = teardown, .timeout = 300);

/* A prefix, storage, a user of its own, n HTML documents submitted and
 * queued for parse by intake (stopped again), the proxy holding each parse
 * request delay_ms. */
static void start(const char *name, int n, int delay_ms)
{
    tenv_setup(&T, name);
    char url[300];
    snprintf(url, sizeof(url), "%s/tika", tika_url());
    char *tika = tenv_http_get(url);
    cr_assert(tika, "Apache Tika server is not answering at %s (scripts/tika.sh start)",
              tika_url());
    free(tika);
    curl_global_init(CURL_GLOBAL_ALL);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    snprintf(docdir, sizeof(docdir), "/tmp/docpipe-%sdocs", T.prefix);
    mkdir(storage, 0755);
    mkdir(docdir, 0755);
    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    unsigned h = 2166136261u;
    for (const char *p = T.prefix; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", h, (unsigned)getpid());
    for (int k = 0; k < n; k++) {
        tdoc d;
        tdoc_make(&d, docdir, "html", 3000, h + (unsigned)k);
        tdoc_free(&d);
    }
    const char *args[] = {"submit", "--user", user, docdir, NULL};
    const char *env[] = {env_storage, NULL};
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "submit %s failed", docdir);

    char logf[600];
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%sintake.log", T.prefix);
    pid_t intake = tenv_spawn_stage(&T, "intake", logf, env);
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'parse_queued'", user);
    cr_assert_eq(tenv_wait_scalar(&T, sql, n, 120000), n,
                 "intake did not queue the %d documents (log: %s)", n, logf);
    cr_assert_eq(tenv_stop(intake, SIGTERM, 30000), 0, "intake did not stop cleanly");
    proxy_start(delay_ms);
}

/* `docpipe run parse` against the proxy, with extra settings. */
static void run_parse(const char *const *extra)
{
    static char env_tika[200];
    snprintf(env_tika, sizeof(env_tika), "DOCPIPE_TIKA_URL=%s", P.url);
    const char *env[16] = {env_storage, env_tika};
    int k = 2;
    for (int i = 0; extra && extra[i] && k < 15; i++)
        env[k++] = extra[i];
    env[k] = NULL;
    char logf[600];
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%sparse.log", T.prefix);
    parse_pid = tenv_spawn_stage(&T, "parse", logf, env);
}

static long long user_scalar(const char *fmt)
{
    char sql[1000];
    snprintf(sql, sizeof(sql), fmt, user);
    return tenv_scalar(&T, sql);
}

/* Every document parsed, each exactly once: one move to parsed (one
 * PARSED event), one DocumentParsed in the parsed topic, and one request
 * at Tika. */
static void assert_each_parsed_once(int n)
{
    char sql[400];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'parsed'", user);
    cr_assert_eq(tenv_wait_scalar(&T, sql, n, 120000), n, "not every document was parsed");
    cr_assert_eq(user_scalar("SELECT count(*) FROM upload_pipeline.events e"
                             " JOIN upload_pipeline.upload_jobs j USING (document_id)"
                             " WHERE j.user_id = '%s' AND e.code = 'PARSED'"), n,
                 "a document moved to parsed more than once");
    cr_assert_eq(user_scalar("SELECT count(DISTINCT e.document_id) FROM"
                             " upload_pipeline.events e JOIN upload_pipeline.upload_jobs j"
                             " USING (document_id) WHERE j.user_id = '%s'"
                             " AND e.code = 'PARSED'"), n);
    char topic[200];
    snprintf(topic, sizeof(topic), "%sparsed", T.prefix);
    tmsg *msgs = NULL;
    int got = tenv_consume_all(&T, topic, &msgs, 20000);
    tenv_free_msgs(msgs, got);
    cr_assert_eq(got, n, "%d DocumentParsed records for %d documents", got, n);
    int requests;
    proxy_counts(&requests, NULL, NULL);
    cr_assert_eq(requests, n, "Tika was asked %d times for %d documents", requests, n);
}

/* While Tika holds the batch's requests, another session locks the jobs
 * of every document with NOWAIT, as gather does: it must get them at once.
 * A check counts only if a request was held by the proxy from before it
 * began until after it ended (so parse was still waiting for Tika all
 * along).  Returns how many checks counted. */
static int check_rows_unlocked_while_tika_works(int n)
{
    PGconn *c = PQconnectdb(T.dburl);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "%s", PQerrorMessage(c));
    char sql[500];
    snprintf(sql, sizeof(sql), "SELECT job_id FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' ORDER BY document_id FOR UPDATE NOWAIT", user);
    int checks = 0;
    long long until = mono_ms() + 90000;
    while (mono_ms() < until) {
        int requests;
        pthread_mutex_lock(&P.mu);
        requests = P.requests;
        long long held_until = P.last_arrival + P.delay_ms;
        pthread_mutex_unlock(&P.mu);
        if (requests >= n && mono_ms() > held_until)
            break; /* every request answered */
        if (requests == 0 || mono_ms() + 500 > held_until) {
            usleep(20000);
            continue;
        }
        PQclear(PQexec(c, "BEGIN"));
        PGresult *r = PQexec(c, sql);
        int ok = PQresultStatus(r) == PGRES_TUPLES_OK;
        char why[300];
        snprintf(why, sizeof(why), "%s", PQerrorMessage(c));
        int rows = ok ? PQntuples(r) : -1;
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        if (mono_ms() < held_until) {
            cr_assert(ok, "the job rows are locked while Tika parses: %s", why);
            cr_assert_eq(rows, n, "%d jobs", rows);
            checks++;
        }
        usleep(100000);
    }
    PQfinish(c);
    return checks;
}

Test(parse_concurrency, a_batch_goes_to_tika_at_once_and_no_row_is_locked_meanwhile)
{
    const int n = 6;
    start("parsecc", n, 3000);
    /* One batch of all six (they wait in the topic already). */
    const char *extra[] = {"DOCPIPE_TIKA_CONCURRENCY=3", "DOCPIPE_BATCH_MAX=6",
                           "DOCPIPE_BATCH_WAIT_MS=3000", NULL};
    run_parse(extra);
    int checks = check_rows_unlocked_while_tika_works(n);
    cr_assert_gt(checks, 0, "no check while a request of parse was held");
    assert_each_parsed_once(n);
    int max_inflight;
    proxy_counts(NULL, &max_inflight, NULL);
    cr_assert_leq(max_inflight, 3, "%d parse requests at once, over tika_concurrency 3",
                  max_inflight);
    cr_assert_geq(max_inflight, 2, "Tika had at most %d request at a time", max_inflight);
    cr_assert_eq(tenv_stop(parse_pid, SIGTERM, 30000), 0, "parse did not stop cleanly");
    parse_pid = 0;
}

Test(parse_concurrency, a_pass_bounded_by_time_defers_the_rest_and_each_document_is_parsed_once)
{
    const int n = 6;
    start("parsepass", n, 1500);
    /* Two in flight, and no call starts 300 ms into a pass: each pass
     * sends two documents, defers the others, and commits. */
    const char *extra[] = {"DOCPIPE_TIKA_CONCURRENCY=2", "DOCPIPE_PARSE_PASS_MS=300",
                           "DOCPIPE_BATCH_MAX=6", "DOCPIPE_BATCH_WAIT_MS=3000", NULL};
    run_parse(extra);
    assert_each_parsed_once(n);
    int max_inflight;
    proxy_counts(NULL, &max_inflight, NULL);
    cr_assert_leq(max_inflight, 2);
    /* The third request came only after the first two documents were
     * parsed and committed: the first pass ended with them, it did not
     * wait for the others. */
    pthread_mutex_lock(&P.mu);
    long long at3 = P.parsed_at[2];
    pthread_mutex_unlock(&P.mu);
    cr_assert_geq(at3, 2, "the third request reached Tika with %lld documents parsed: "
                  "the pass did not end when its time was up", at3);
    cr_assert_eq(tenv_stop(parse_pid, SIGTERM, 30000), 0, "parse did not stop cleanly");
    parse_pid = 0;
}

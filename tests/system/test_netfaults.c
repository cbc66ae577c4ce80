/*
 * Network faults between the stages and everything they talk to.
 *
 * toxiproxy (scripts/toxiproxy.sh, started here if it is not running)
 * stands between `docpipe run all` and Kafka (a broker of its own that
 * advertises the proxy, so no connection bypasses it), PostgreSQL, Apache
 * Tika and the embedding service.  On each link in turn the test puts a
 * latency spike, a cut (the proxy disabled: connections reset, new ones
 * refused), a connection that hangs open (the timeout toxic: nothing
 * passes, then it is closed) and a slow link (the bandwidth toxic), while
 * waves of documents flow.  Afterwards every document is complete with
 * exactly its chunks and one completion, nothing is dead-lettered, and
 * every cut of a service opened its circuit breaker.
 *
 * The test's own connections (submit, checks) go around the proxy: the
 * broker's DIRECT listener and PostgreSQL's own port.
 *
 * CI version: one fault of each kind per link, 5 s each, 3 documents a
 * wave.  DOCPIPE_LONG=1: five of each kind, 20 s each, 1,000 documents.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "support_docs.h"
#include "support_env.h"

#define API "http://127.0.0.1:39474"
#define KAFKA_PROXIED "127.0.0.1:39475"
#define KAFKA_DIRECT "127.0.0.1:39394"

static tenv T;
static pid_t embed_pid, pipe_pid;
static char embed_url[256], storage[1200], user[64], logf[600];
static char env_storage[1300];

static size_t discard(char *p, size_t sz, size_t n, void *arg)
{
    (void)p;
    (void)arg;
    return sz * n;
}

static long api_call(const char *method, const char *path, const char *json, int ok);

static void teardown(void)
{
    if (pipe_pid > 0)
        tenv_stop(pipe_pid, SIGTERM, 60000);
    if (embed_pid > 0)
        tenv_stop(embed_pid, SIGTERM, 10000);
    pipe_pid = embed_pid = 0;
    api_call("POST", "/reset", NULL, 0);
    tenv_teardown(&T);
}

TestSuite(netfaults, .fini = teardown, .timeout = 3600);

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* toxiproxy's API: method on path, with a JSON body or none; the reply
 * must be 2xx.  Asserts when ok is set, else returns the status. */
static long api_call(const char *method, const char *path, const char *json, int ok)
{
    char url[300];
    snprintf(url, sizeof(url), API "%s", path);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, json ? json : "");
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 20L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(h);
    curl_easy_cleanup(c);
    if (ok)
        cr_assert(rc == CURLE_OK && status / 100 == 2, "toxiproxy %s %s %s: %s (%ld)",
                  method, path, json ? json : "", curl_easy_strerror(rc), status);
    return rc == CURLE_OK ? status : 0;
}

static void api(const char *path, const char *json) { api_call("POST", path, json, 1); }
static void api_delete(const char *path) { api_call("DELETE", path, NULL, 1); }

/* The proxies up, the broker behind one, the embedding service behind
 * another, then prefix, topics and `docpipe run all` through the proxies. */
static void start(const char *name, const char *const *extra_env)
{
    char cmd[1400];
    snprintf(cmd, sizeof(cmd), "%s/scripts/toxiproxy.sh start >&2",
             getenv("DOCPIPE_SOURCE_DIR") ? getenv("DOCPIPE_SOURCE_DIR") : DOCPIPE_SOURCE_DIR);
    cr_assert_eq(system(cmd), 0, "scripts/toxiproxy.sh start failed");
    api("/reset", NULL);
    /* The test's own clients go around the proxy. */
    setenv("DOCPIPE_BROKERS", KAFKA_DIRECT, 1);
    tenv_setup(&T, name);
    snprintf(storage, sizeof(storage), "/tmp/docpipe-%sstorage", T.prefix);
    mkdir(storage, 0755);
    unsigned h = 2166136261u;
    for (const char *p = T.prefix; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(user, sizeof(user), "%08x-0000-4000-8000-%012x", h, (unsigned)getpid());
    embed_pid = tenv_start_embedserver(&T, NULL, embed_url, sizeof(embed_url));
    char body[300];
    snprintf(body, sizeof(body), "{\"upstream\": \"%s\"}", embed_url + strlen("http://"));
    api("/proxies/embed", body);

    snprintf(env_storage, sizeof(env_storage), "DOCPIPE_STORAGE_DIR=%s", storage);
    static char env_db[600];
    /* PostgreSQL through its proxy (scripts/toxiproxy.sh points it at
     * DOCPIPE_PG_PORT, 55432 by default): the same URL on port 39476. */
    char pg_port[16];
    snprintf(pg_port, sizeof(pg_port), ":%s",
             getenv("DOCPIPE_PG_PORT") && *getenv("DOCPIPE_PG_PORT")
                 ? getenv("DOCPIPE_PG_PORT") : "55432");
    const char *port = strstr(T.dburl, pg_port);
    cr_assert(port, "DOCPIPE_DATABASE_URL %s is not on port %s", T.dburl, pg_port + 1);
    snprintf(env_db, sizeof(env_db), "DOCPIPE_DATABASE_URL=%.*s:39476%s",
             (int)(port - T.dburl), T.dburl, port + strlen(pg_port));
    static const char *env[32];
    const char *base[] = {env_storage, env_db,
        "DOCPIPE_BROKERS=" KAFKA_PROXIED,
        "DOCPIPE_TIKA_URL=http://127.0.0.1:39477",
        "DOCPIPE_EMBED_URL=http://127.0.0.1:39478",
        "DOCPIPE_EMBED_TPM=100000000", "DOCPIPE_EMBED_RPM=1000000",
        "DOCPIPE_BATCH_WAIT_MS=20",
        /* A service that hangs is given up on after 5 s; three failures
         * open a breaker, which tries again after 3 s. */
        "DOCPIPE_TIKA_TIMEOUT_MS=5000", "DOCPIPE_EMBED_TIMEOUT_MS=5000",
        "DOCPIPE_BREAKER_THRESHOLD=3", "DOCPIPE_BREAKER_RESET_MS=3000",
        "DOCPIPE_RETRY_BASE_MS=300", NULL};
    int n = 0;
    for (; base[n]; n++)
        env[n] = base[n];
    for (int i = 0; extra_env && extra_env[i] && n < 30; i++)
        env[n++] = extra_env[i];
    env[n] = NULL;
    snprintf(logf, sizeof(logf), "/tmp/docpipe-%spipeline.log", T.prefix);
    unlink(logf);
    const char *args[] = {"run", "all", NULL};
    pipe_pid = tenv_spawn(&T, args, logf, env);
}

/* Submits the folder; ids[i] becomes the id of docs[i] (submit prints
 * "id<TAB>mime<TAB>file" per file). Returns how many were matched. */
static int submit(const char *path, tdoc *docs, char ids[][40], int n)
{
    char out[700];
    snprintf(out, sizeof(out), "/tmp/docpipe-%ssubmit.out", T.prefix);
    const char *args[] = {"submit", "--user", user, path, NULL};
    const char *env[] = {env_storage, NULL};
    cr_assert_eq(tenv_docpipe_out(&T, args, env, out), 0, "submit %s failed", path);
    FILE *f = fopen(out, "r");
    char line[2048];
    int matched = 0;
    while (f && fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\n")] = '\0';
        char *file = strrchr(line, '\t');
        if (!file)
            continue;
        file++;
        for (int i = 0; i < n; i++) {
            const char *base = strrchr(docs[i].path, '/');
            base = base ? base + 1 : docs[i].path;
            const char *fb = strrchr(file, '/');
            fb = fb ? fb + 1 : file;
            if (strcmp(base, fb) == 0 && !ids[i][0]) {
                snprintf(ids[i], 40, "%.36s", line);
                matched++;
                break;
            }
        }
    }
    if (f)
        fclose(f);
    return matched;
}

static long long q1(const char *fmt, const char *arg)
{
    char sql[2048];
    snprintf(sql, sizeof(sql), fmt, arg, arg);
    return tenv_scalar(&T, sql);
}

/* How many times the pipeline's log says s. */
static int log_count(const char *s)
{
    char *log = tenv_slurp(logf);
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, s)); p += strlen(s))
        n++;
    free(log);
    return n;
}

/* Until each of the n documents submitted has a job (not only the jobs
 * that exist so far) and every job is complete or failed. */
static void wait_settled(int n, int timeout_s)
{
    char sql[600];
    snprintf(sql, sizeof(sql),
             "SELECT (count(*) >= %d AND count(*) FILTER (WHERE status = 'complete'"
             " OR status LIKE 'failed_%%') = count(*))::int"
             " FROM upload_pipeline.upload_jobs WHERE user_id = '%s'", n, user);
    tenv_wait_scalar(&T, sql, 1, timeout_s * 1000);
}

/* Every one of the n documents complete with exactly the chunks the
 * chunker makes (text ones) or the parser's text gives (the others), one
 * vector and one final row per chunk, each state transition once in one
 * chain, one completion each, nothing dead-lettered. */
static void assert_all_complete(tdoc *docs, char ids[][40], int n)
{
    char sql[900];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'complete'", user);
    long long complete = tenv_scalar(&T, sql);
    if (complete != n) {
        snprintf(sql, sizeof(sql), "SELECT d.filename, j.status, coalesce(j.last_error::text, '')"
                 " FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d"
                 " USING (document_id) WHERE j.user_id = '%s' AND j.status <> 'complete'",
                 user);
        PGresult *r = PQexec(T.db, sql);
        for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++)
            fprintf(stderr, "unfinished: %s %s %s\n", PQgetvalue(r, i, 0),
                    PQgetvalue(r, i, 1), PQgetvalue(r, i, 2));
        PQclear(r);
    }
    cr_assert_eq(complete, n, "complete: %lld of %d", complete, n);
    for (int i = 0; i < n; i++) {
        const char *doc = ids[i];
        long long chunks = q1("SELECT count(*) FROM upload_pipeline.document_chunk_buffer"
                              " WHERE document_id = '%s'", doc);
        long long final = q1("SELECT count(*) FROM upload_pipeline.document_chunks"
                             " WHERE document_id = '%s' AND vector_dim = 1536", doc);
        /* (The vector buffer is not counted: a later finalize empties it.) */
        long long vectors = q1("SELECT count(*) FROM upload_pipeline.document_chunks"
                               " WHERE document_id = '%s' AND embedding IS NOT NULL"
                               " AND cardinality(embedding) = 1536", doc);
        long long total = q1("SELECT (progress->>'chunks_total')::bigint FROM"
                             " upload_pipeline.upload_jobs WHERE document_id = '%s'", doc);
        cr_assert(chunks > 0, "%s has chunks", docs[i].path);
        cr_assert_eq(chunks, total, "%s: chunk rows = progress", docs[i].path);
        cr_assert_eq(vectors, chunks, "%s: a 1536-float vector per final chunk", docs[i].path);
        cr_assert_eq(final, chunks, "%s: every chunk final, 1536 dims", docs[i].path);
        long want = tdoc_expected_chunks(&docs[i]);
        if (want >= 0)
            cr_assert_eq(chunks, want, "%s: %lld chunks, the chunker makes %ld",
                         docs[i].path, chunks, want);
    }
    /* One completion each, and each document's transitions one chain. */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM upload_pipeline.events e JOIN"
             " upload_pipeline.upload_jobs j USING (document_id) WHERE j.user_id = '%s'"
             " AND e.to_status = 'complete'", user);
    cr_assert_eq(tenv_scalar(&T, sql), n, "one completion per document");
    snprintf(sql, sizeof(sql),
             "WITH e AS (SELECT e.from_status, e.to_status,"
             "   lag(e.to_status) OVER (PARTITION BY e.document_id"
             "     ORDER BY e.event_id) AS prev"
             " FROM upload_pipeline.events e JOIN upload_pipeline.upload_jobs j"
             "   USING (document_id) WHERE j.user_id = '%s'"
             "   AND e.type IN ('stage_done', 'finalized'))"
             " SELECT count(*) FROM e WHERE (prev IS NULL AND from_status <> 'uploaded')"
             "   OR prev <> from_status", user);
    cr_assert_eq(tenv_scalar(&T, sql), 0, "events out of chain");
    snprintf(sql, sizeof(sql),
             "SELECT (SELECT count(*) FROM upload_pipeline.events e JOIN"
             "   upload_pipeline.upload_jobs j USING (document_id)"
             "   WHERE j.user_id = '%s' AND e.type IN ('stage_done', 'finalized'))"
             " - (SELECT sum(8 + embed_batches_total) FROM upload_pipeline.upload_jobs"
             "   WHERE user_id = '%s')", user, user);
    cr_assert_eq(tenv_scalar(&T, sql), 0, "8 transitions and one per embedding batch");
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_dead_letters"
             " WHERE group_id LIKE '%s%%'", T.prefix);
    cr_assert_eq(tenv_scalar(&T, sql), 0, "nothing dead-lettered");
    /* Each document announced once or more on the completed topic (a
     * repeat is allowed there: consumers drop repeats by event id). */
    char topic[300];
    snprintf(topic, sizeof(topic), "%scompleted", T.prefix);
    tmsg *m;
    int got = tenv_consume_all(&T, topic, &m, 30000);
    int announced = 0;
    for (int i = 0; i < n; i++) {
        int seen = 0;
        for (int k = 0; k < got && !seen; k++)
            seen = m[k].key_len == 36 && memcmp(m[k].key, ids[i], 36) == 0;
        announced += seen;
    }
    tenv_free_msgs(m, got);
    cr_assert_eq(announced, n, "%d of %d documents on %s", announced, n, topic);
}

typedef enum { F_LATENCY, F_CUT, F_HANG, F_SLOW, F_KINDS } fault_kind;
static const char *const kind_names[F_KINDS] = {"latency", "cut", "hang", "slow"};
static const char *const links[] = {"kafka", "postgres", "tika", "embed"};
/* What the breaker of a service link is called in the log. */
static const char *const breaker_of[] = {NULL, NULL, "tika", "embeddings"};

/* Puts a fault of kind k on link for about ms (a cut of a service lasts
 * until its breaker has opened, at most 90 s more), then takes it away. */
static void fault(int link, fault_kind k, int ms, FILE *report)
{
    char path[200], body[400], opened[100] = "";
    const char *name = links[link];
    int breaker_before = 0;
    if (breaker_of[link]) {
        snprintf(opened, sizeof(opened), "%s circuit breaker opened", breaker_of[link]);
        breaker_before = log_count(opened);
    }
    long long t0 = now_ms();
    snprintf(path, sizeof(path), "/proxies/%s/toxics", name);
    switch (k) {
    case F_LATENCY: /* a spike of 1-2 s each way */
        api(path, "{\"name\":\"lat_down\",\"type\":\"latency\",\"stream\":\"downstream\","
                  "\"attributes\":{\"latency\":1500,\"jitter\":500}}");
        api(path, "{\"name\":\"lat_up\",\"type\":\"latency\",\"stream\":\"upstream\","
                  "\"attributes\":{\"latency\":500,\"jitter\":200}}");
        break;
    case F_CUT: /* open connections reset, new ones refused */
        snprintf(body, sizeof(body), "/proxies/%s", name);
        api(body, "{\"enabled\": false}");
        break;
    case F_HANG: /* nothing passes either way; closed after the fault */
        snprintf(body, sizeof(body), "{\"name\":\"hang_down\",\"type\":\"timeout\","
                 "\"stream\":\"downstream\",\"attributes\":{\"timeout\":%d}}", ms);
        api(path, body);
        snprintf(body, sizeof(body), "{\"name\":\"hang_up\",\"type\":\"timeout\","
                 "\"stream\":\"upstream\",\"attributes\":{\"timeout\":%d}}", ms);
        api(path, body);
        break;
    case F_SLOW: /* 16 KB/s each way, in small slices */
        api(path, "{\"name\":\"slow_down\",\"type\":\"bandwidth\",\"stream\":\"downstream\","
                  "\"attributes\":{\"rate\":16}}");
        api(path, "{\"name\":\"slow_up\",\"type\":\"bandwidth\",\"stream\":\"upstream\","
                  "\"attributes\":{\"rate\":16}}");
        break;
    default:
        break;
    }
    usleep((useconds_t)ms * 1000);
    int opened_now = 0;
    if (k == F_CUT && breaker_of[link]) {
        /* A cut of a service opens its breaker (calls fail at once). */
        while (!(opened_now = log_count(opened) > breaker_before) &&
               now_ms() - t0 < ms + 90000)
            usleep(200 * 1000);
        cr_assert(opened_now, "the %s cut opened no breaker in %lld ms", name,
                  now_ms() - t0);
        /* ... and the process says so in docpipe.dp_service_status
         * (written every 5 s; open, or half-open between its tries). */
        char sql[400];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM docpipe.dp_service_status"
                 " WHERE instance LIKE '%%-%d' AND service = '%s' AND breaker <> 'closed'",
                 (int)pipe_pid, breaker_of[link]);
        cr_assert_eq(tenv_wait_scalar(&T, sql, 1, 20000), 1,
                     "dp_service_status shows the %s breaker not closed during the cut",
                     breaker_of[link]);
    }
    switch (k) {
    case F_LATENCY:
        snprintf(body, sizeof(body), "/proxies/%s/toxics/lat_down", name);
        api_delete(body);
        snprintf(body, sizeof(body), "/proxies/%s/toxics/lat_up", name);
        api_delete(body);
        break;
    case F_CUT:
        snprintf(body, sizeof(body), "/proxies/%s", name);
        api(body, "{\"enabled\": true}");
        break;
    case F_HANG:
        snprintf(body, sizeof(body), "/proxies/%s/toxics/hang_down", name);
        api_delete(body);
        snprintf(body, sizeof(body), "/proxies/%s/toxics/hang_up", name);
        api_delete(body);
        break;
    case F_SLOW:
        snprintf(body, sizeof(body), "/proxies/%s/toxics/slow_down", name);
        api_delete(body);
        snprintf(body, sizeof(body), "/proxies/%s/toxics/slow_up", name);
        api_delete(body);
        break;
    default:
        break;
    }
    char sql[300];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM upload_pipeline.upload_jobs"
             " WHERE user_id = '%s' AND status = 'complete'", user);
    if (report)
        fprintf(report, "netfaults: %-8s %-7s %6lld ms%s, %lld documents complete\n",
                name, kind_names[k], now_ms() - t0,
                opened_now ? " (breaker opened)" : "", tenv_scalar(&T, sql));
}

Test(netfaults, test_faults_on_every_link_lose_and_repeat_nothing)
{
    int lng = getenv("DOCPIPE_LONG") && atoi(getenv("DOCPIPE_LONG")) > 0;
    int rounds = lng ? 5 : 1, ms = lng ? 20000 : 5000;
    int nfaults = rounds * 4 * F_KINDS;
    int n = lng ? 1000 : 3 * nfaults;
    start("netfaults", NULL);
    char dir[1300];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sdocs", T.prefix);
    mkdir(dir, 0755);
    tdoc *docs = calloc((size_t)n, sizeof(tdoc));
    char (*ids)[40] = calloc((size_t)n, 40);
    static const char *kinds[] = {"md", "txt", "html", "md", "pdf", "txt"};
    long long t0 = now_ms();
    int done = 0;
    for (int f = 0; f < nfaults; f++) {
        /* A wave of documents in a folder of its own, then the next fault
         * while they flow. */
        int wave = (n - done) / (nfaults - f);
        char wdir[1400];
        snprintf(wdir, sizeof(wdir), "%s/w%03d", dir, f);
        mkdir(wdir, 0755);
        for (int i = done; i < done + wave; i++)
            tdoc_make(&docs[i], wdir, kinds[i % 6], 2000 + (size_t)(i * 997) % 30000,
                      (unsigned)i + 31000);
        cr_assert_eq(submit(wdir, docs + done, ids + done, wave), wave,
                     "wave %d submitted", f);
        done += wave;
        int link = f % 4;
        fault_kind k = (fault_kind)((f / 4) % F_KINDS);
        fault(link, k, ms, stderr);
    }
    wait_settled(n, lng ? 1800 : 300);
    long long took = now_ms() - t0;
    fprintf(stderr, "netfaults: %d documents through %d faults in %.1f s\n", n, nfaults,
            (double)took / 1000.0);
    cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0, "the pipeline exits 0");
    pipe_pid = 0;
    assert_all_complete(docs, ids, n);
    for (int i = 0; i < n; i++)
        tdoc_free(&docs[i]);
    free(docs);
    free(ids);
}

/* Lines of the pipeline's log holding both a and b. */
static int log_lines(const char *a, const char *b)
{
    char *log = tenv_slurp(logf);
    int n = 0;
    for (char *line = log, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        n += strstr(line, a) && strstr(line, b);
    }
    free(log);
    return n;
}

static void wait_log(const char *a, const char *b, int want, int timeout_s)
{
    long long until = now_ms() + timeout_s * 1000LL;
    while (log_lines(a, b) < want && now_ms() < until)
        usleep(100 * 1000);
    cr_assert_geq(log_lines(a, b), want, "the log says %s ... %s %d times", a, b, want);
}

/* The attempts whose outputs are on topic: distinct ids, committed ones. */
static void attempts_on(const char *topic, int *n, int *committed)
{
    tmsg *m;
    int got = tenv_consume_all(&T, topic, &m, 30000);
    long long ids[64];
    *n = *committed = 0;
    for (int k = 0; k < got; k++) {
        char h[200];
        const char *v = tenv_header(&m[k], "docpipe-attempt", h, sizeof(h));
        cr_assert(v, "record %d of %s has no docpipe-attempt header", k, topic);
        long long id = strtoll(v, NULL, 10);
        int seen = 0;
        for (int i = 0; i < *n; i++)
            seen |= ids[i] == id;
        if (!seen && *n < 64)
            ids[(*n)++] = id;
    }
    tenv_free_msgs(m, got);
    for (int i = 0; i < *n; i++) {
        char sql[200], id[32];
        snprintf(id, sizeof(id), "%lld", ids[i]);
        snprintf(sql, sizeof(sql), "SELECT docpipe.dp_attempt_committed(%s)::int", id);
        *committed += (int)tenv_scalar(&T, sql);
    }
}

/* The chunk stage stalls between its acknowledged outputs and COMMIT
 * (fault point after-produce) twice.  The first time PostgreSQL's link is
 * cut: COMMIT never reaches the server and the transaction rolls back.
 * The second time only the replies stop (a timeout toxic downstream, the
 * connection closed 10 s later, after the 6 s stall): COMMIT reaches the
 * server and commits, and its reply is lost.  Both times the stage cannot know the outcome from
 * its connection; it must find it out from PostgreSQL, not guess: the
 * first batch done again, the second not.  The document completes once,
 * with its chunks; chunk's output topic holds exactly two attempts, one
 * committed. */
Test(netfaults, test_postgres_lost_in_the_middle_of_commit_outcome_resolved)
{
    const char *env[] = {"DOCPIPE_FAULT=chunk:after-produce:stall:1,chunk:after-produce:stall:2",
                         "DOCPIPE_FAULT_STALL_MS=6000", NULL};
    start("commitcut", env);
    char dir[1300];
    snprintf(dir, sizeof(dir), "/tmp/docpipe-%sdocs", T.prefix);
    mkdir(dir, 0755);
    tdoc doc;
    tdoc_make(&doc, dir, "md", 9000, 4242);
    char ids[1][40] = {""};
    cr_assert_eq(submit(dir, &doc, ids, 1), 1);

    /* 1: the link cut while the stage waits to COMMIT. */
    wait_log("\"stage\":\"chunk\"", "fault point after-produce: stall (hit 1)", 1, 180);
    api("/proxies/postgres", "{\"enabled\": false}");
    wait_log("\"stage\":\"chunk\"", "commit outcome unknown", 1, 60);
    api("/proxies/postgres", "{\"enabled\": true}");

    /* 2: COMMIT goes through, its reply does not. */
    wait_log("\"stage\":\"chunk\"", "fault point after-produce: stall (hit 2)", 1, 180);
    api("/proxies/postgres/toxics", "{\"name\":\"replies_lost\",\"type\":\"timeout\","
        "\"stream\":\"downstream\",\"attributes\":{\"timeout\":10000}}");
    wait_log("\"stage\":\"chunk\"", "commit outcome unknown", 2, 60);
    api_delete("/proxies/postgres/toxics/replies_lost");

    wait_settled(1, 300);
    cr_assert_eq(tenv_stop(pipe_pid, SIGTERM, 60000), 0, "the pipeline exits 0");
    pipe_pid = 0;
    assert_all_complete(&doc, ids, 1);
    char topic[300];
    snprintf(topic, sizeof(topic), "%schunked", T.prefix);
    int n, committed;
    attempts_on(topic, &n, &committed);
    cr_assert_eq(n, 2, "chunk published under %d attempts: the lost one and the one "
                 "whose reply was lost, no third", n);
    cr_assert_eq(committed, 1, "%d of chunk's attempts committed", committed);
    tdoc_free(&doc);
}

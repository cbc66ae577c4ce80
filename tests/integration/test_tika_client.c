/*
 * test_tika_client: the Tika client against a real Apache Tika server
 * (scripts/tika.sh start; $DOCPIPE_TIKA_URL, else http://127.0.0.1:39998).
 * Tests that need Tika skip when it does not answer.  The failure paths
 * (no server, a hung server, a 503) use local stand-ins and always run.
 */
#include <criterion/criterion.h>

#include <arpa/inet.h>
#include <curl/curl.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tika_client.h"

static const char *tika_url(void)
{
    const char *u = getenv("DOCPIPE_TIKA_URL");
    return u && *u ? u : "http://127.0.0.1:39998";
}

/* Skips the test unless GET {url}/tika answers 200 within 3 s. */
static void need_tika(void)
{
    char url[512];
    snprintf(url, sizeof(url), "%s/tika", tika_url());
    CURL *c = curl_easy_init();
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 3000L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK || status != 200)
        cr_skip_test("no Tika server answers on %s (scripts/tika.sh start)", tika_url());
}

static dp_config cfg_for(const char *url, int timeout_ms)
{
    dp_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.tika_url = (char *)url;
    cfg.tika_timeout_ms = timeout_ms;
    cfg.breaker_threshold = 5;
    cfg.breaker_reset_ms = 60000;
    return cfg;
}

static dp_tika_client *client_for(const char *url, int timeout_ms)
{
    dp_config cfg = cfg_for(url, timeout_ms);
    dp_tika_client *c = NULL;
    char err[256];
    cr_assert_eq(dp_tika_client_new(&cfg, &c, err, sizeof(err)), DP_OK, "%s", err);
    return c;
}

static void setup(void) { curl_global_init(CURL_GLOBAL_ALL); }

TestSuite(tika_client, .init = setup, .timeout = 120);

/* A one-page PDF 1.4 showing `text` in Helvetica, with a correct xref
 * table (byte offsets of each object), as scripts/tika.sh check makes it. */
static size_t make_pdf(const char *text, char *out, size_t cap)
{
    char content[256];
    int clen = snprintf(content, sizeof(content), "BT /F1 18 Tf 20 100 Td (%s) Tj ET", text);
    char stream[512];
    snprintf(stream, sizeof(stream), "<< /Length %d >>\nstream\n%s\nendstream", clen, content);
    const char *objs[] = {
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 144] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        stream,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    };
    enum { NOBJ = sizeof(objs) / sizeof(objs[0]) };
    size_t off[NOBJ];
    size_t n = (size_t)snprintf(out, cap, "%%PDF-1.4\n");
    for (int i = 0; i < NOBJ; i++) {
        off[i] = n;
        n += (size_t)snprintf(out + n, cap - n, "%d 0 obj\n%s\nendobj\n", i + 1, objs[i]);
    }
    size_t xref = n;
    n += (size_t)snprintf(out + n, cap - n, "xref\n0 %d\n0000000000 65535 f \n", NOBJ + 1);
    for (int i = 0; i < NOBJ; i++)
        n += (size_t)snprintf(out + n, cap - n, "%010zu 00000 n \n", off[i]);
    n += (size_t)snprintf(out + n, cap - n,
                          "trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%zu\n%%%%EOF\n",
                          NOBJ + 1, xref);
    cr_assert_lt(n, cap);
    return n;
}

/* ------------------------------------------------------------------------
 * Against Tika.
 * ---------------------------------------------------------------------- */

static const char html[] =
    "<html><head><title>Quarterly notes</title></head><body>"
    "<h1>Ingestion report</h1><p>The pipeline parsed every upload.</p>"
    "<script>var hidden = 'not text';</script></body></html>";

Test(tika_client, html_yields_the_words_of_its_body)
{
    need_tika();
    dp_tika_client *c = client_for(tika_url(), 60000);
    char *text = NULL, err[512];
    size_t len = 0;
    dp_err rc = dp_tika_parse(c, html, strlen(html), "text/html", 0, &text, &len, err,
                              sizeof(err));
    cr_assert_eq(rc, DP_OK, "%s", err);
    cr_assert_eq(strlen(text), len);
    cr_assert(strstr(text, "Ingestion report"), "got: %s", text);
    cr_assert(strstr(text, "The pipeline parsed every upload."), "got: %s", text);
    cr_assert_null(strstr(text, "<p>"), "markup is gone: %s", text);
    free(text);
    dp_tika_client_free(c);
}

Test(tika_client, a_hand_made_pdf_yields_its_text_declared_or_detected)
{
    need_tika();
    char pdf[2048];
    size_t n = make_pdf("Hello docpipe", pdf, sizeof(pdf));
    dp_tika_client *c = client_for(tika_url(), 60000);
    const char *types[] = {"application/pdf", NULL};
    for (int i = 0; i < 2; i++) {
        char *text = NULL, err[512];
        size_t len = 0;
        dp_err rc = dp_tika_parse(c, pdf, n, types[i], 0, &text, &len, err, sizeof(err));
        cr_assert_eq(rc, DP_OK, "%s: %s", types[i] ? types[i] : "detected", err);
        cr_assert(strstr(text, "Hello docpipe"), "%s: got '%s'",
                  types[i] ? types[i] : "detected", text);
        free(text);
    }
    cr_assert_eq(dp_breaker_state_now(dp_tika_client_breaker(c)), DP_BREAKER_CLOSED);
    dp_tika_client_free(c);
}

Test(tika_client, random_bytes_declared_as_pdf_are_permanent_422_and_spare_the_breaker)
{
    need_tika();
    unsigned char junk[4096];
    unsigned seed = 42;
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (unsigned char)rand_r(&seed);
    dp_tika_client *c = client_for(tika_url(), 60000);
    for (int i = 0; i < 6; i++) {
        char *text = (char *)1, err[512];
        size_t len = 99;
        dp_err rc = dp_tika_parse(c, junk, sizeof(junk), "application/pdf", 0, &text, &len,
                                  err, sizeof(err));
        cr_assert_eq(rc, DP_ERR_PERMANENT, "%s", err);
        cr_assert(strstr(err, "HTTP 422"), "%s", err);
        cr_assert_null(text);
        cr_assert_eq(len, 0);
    }
    cr_assert_eq(dp_breaker_state_now(dp_tika_client_breaker(c)), DP_BREAKER_CLOSED,
                 "six corrupt documents say nothing about Tika's health");
    /* And the same connection still parses a good one. */
    char *text = NULL, err[512];
    cr_assert_eq(dp_tika_parse(c, html, strlen(html), "text/html", 0, &text, NULL, err,
                               sizeof(err)),
                 DP_OK, "%s", err);
    free(text);
    dp_tika_client_free(c);
}

Test(tika_client, an_empty_document_is_permanent)
{
    need_tika();
    dp_tika_client *c = client_for(tika_url(), 60000);
    char *text = NULL, err[512];
    dp_err rc = dp_tika_parse(c, "", 0, NULL, 0, &text, NULL, err, sizeof(err));
    cr_assert_eq(rc, DP_ERR_PERMANENT, "%s", err);
    dp_tika_client_free(c);
}

Test(tika_client, text_over_max_bytes_is_permanent)
{
    need_tika();
    dp_tika_client *c = client_for(tika_url(), 60000);
    char *text = NULL, err[512];
    dp_err rc = dp_tika_parse(c, html, strlen(html), "text/html", 10, &text, NULL, err,
                              sizeof(err));
    cr_assert_eq(rc, DP_ERR_PERMANENT, "%s", err);
    cr_assert(strstr(err, "over 10 bytes"), "%s", err);
    cr_assert_null(text);
    rc = dp_tika_parse(c, html, strlen(html), "text/html", 4096, &text, NULL, err,
                       sizeof(err));
    cr_assert_eq(rc, DP_OK, "%s", err);
    free(text);
    dp_tika_client_free(c);
}

/* ------------------------------------------------------------------------
 * Without Tika: unreachable, hung and failing servers.
 * ---------------------------------------------------------------------- */

Test(tika_client, nothing_listening_is_retryable_and_five_of_those_open_the_breaker)
{
    dp_tika_client *c = client_for("http://127.0.0.1:1", 5000);
    char *text = NULL, err[512];
    for (int i = 0; i < 5; i++) {
        dp_err rc = dp_tika_parse(c, html, strlen(html), "text/html", 0, &text, NULL, err,
                                  sizeof(err));
        cr_assert_eq(rc, DP_ERR_RETRYABLE, "%s", err);
        cr_assert_null(strstr(err, "circuit breaker"), "call %d went out: %s", i, err);
    }
    dp_breaker *b = dp_tika_client_breaker(c);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);
    dp_err rc = dp_tika_parse(c, html, strlen(html), "text/html", 0, &text, NULL, err,
                              sizeof(err));
    cr_assert_eq(rc, DP_ERR_RETRYABLE);
    cr_assert(strstr(err, "circuit breaker open"), "%s", err);
    dp_tika_client_free(c);
}

Test(tika_client, alive_is_yes_for_tika_and_no_with_nothing_listening)
{
    dp_tika_client *c = client_for(tika_url(), 5000);
    cr_assert_eq(dp_tika_client_alive(c), 1, "Tika at %s", tika_url());
    cr_assert_eq(dp_breaker_failures(dp_tika_client_breaker(c)), 0);
    dp_tika_client_free(c);
    c = client_for("http://127.0.0.1:1", 5000);
    cr_assert_eq(dp_tika_client_alive(c), 0);
    cr_assert_eq(dp_breaker_failures(dp_tika_client_breaker(c)), 1, "counted on the breaker");
    dp_tika_client_free(c);
}

Test(tika_client, a_server_that_never_answers_times_out_as_retryable)
{
    /* A listening socket nobody accepts from: the kernel completes the
     * handshake, the request goes out, no answer ever comes. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    cr_assert_eq(listen(fd, 8), 0);
    socklen_t alen = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &alen);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u", ntohs(a.sin_port));

    dp_tika_client *c = client_for(url, 300);
    char *text = NULL, err[512];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dp_err rc = dp_tika_parse(c, html, strlen(html), "text/html", 0, &text, NULL, err,
                              sizeof(err));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    cr_assert_eq(rc, DP_ERR_RETRYABLE, "%s", err);
    cr_assert(strstr(err, "imeout") || strstr(err, "timed out"), "%s", err);
    cr_assert(took >= 0.29 && took < 2.0, "took %.2f s", took);
    cr_assert_eq(dp_breaker_failures(dp_tika_client_breaker(c)), 1);
    dp_tika_client_free(c);
    close(fd);
}

static unsigned canned_status;

static enum MHD_Result canned(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload,
                              size_t *upload_size, void **state)
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
    static char body[] = "java.lang.OutOfMemoryError";
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_PERSISTENT);
    enum MHD_Result ret = MHD_queue_response(conn, canned_status, r);
    MHD_destroy_response(r);
    return ret;
}

Test(tika_client, server_errors_are_retryable_and_other_4xx_permanent)
{
    struct MHD_Daemon *d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
                                            canned, NULL, MHD_OPTION_END);
    cr_assert(d);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u",
             (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    dp_tika_client *c = client_for(url, 5000);
    const struct {
        unsigned status;
        dp_err want;
    } cases[] = {{503, DP_ERR_RETRYABLE}, {500, DP_ERR_RETRYABLE}, {415, DP_ERR_PERMANENT},
                 {404, DP_ERR_PERMANENT}, {429, DP_ERR_RETRYABLE}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        canned_status = cases[i].status;
        char *text = NULL, err[512];
        dp_err rc = dp_tika_parse(c, html, strlen(html), NULL, 0, &text, NULL, err,
                                  sizeof(err));
        cr_assert_eq(rc, cases[i].want, "HTTP %u: %s", cases[i].status, err);
        cr_assert_null(text);
        if (cases[i].status == 503)
            cr_assert(strstr(err, "OutOfMemoryError"), "Tika's words: %s", err);
    }
    dp_tika_client_free(c);
    MHD_stop_daemon(d);
}

/* A stand-in Tika that answers each PUT with its own body after 400 ms,
 * a thread per connection, counting the requests in flight at once. */
static pthread_mutex_t echo_mu = PTHREAD_MUTEX_INITIALIZER;
static int echo_inflight, echo_max, echo_requests;

typedef struct echo_body {
    char p[256];
    size_t len;
} echo_body;

static enum MHD_Result echo_slow(void *cls, struct MHD_Connection *conn, const char *url,
                                 const char *method, const char *version,
                                 const char *upload, size_t *upload_size, void **state)
{
    (void)cls, (void)url, (void)method, (void)version;
    if (!*state) {
        *state = calloc(1, sizeof(echo_body));
        return MHD_YES;
    }
    echo_body *b = *state;
    if (*upload_size) {
        size_t n = *upload_size < sizeof(b->p) - b->len ? *upload_size : sizeof(b->p) - b->len;
        memcpy(b->p + b->len, upload, n);
        b->len += n;
        *upload_size = 0;
        return MHD_YES;
    }
    pthread_mutex_lock(&echo_mu);
    echo_requests++;
    if (++echo_inflight > echo_max)
        echo_max = echo_inflight;
    pthread_mutex_unlock(&echo_mu);
    usleep(400000);
    pthread_mutex_lock(&echo_mu);
    echo_inflight--;
    pthread_mutex_unlock(&echo_mu);
    struct MHD_Response *r =
        MHD_create_response_from_buffer(b->len, b->p, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret = MHD_queue_response(conn, 200, r);
    MHD_destroy_response(r);
    return ret;
}

static void echo_done(void *cls, struct MHD_Connection *conn, void **state,
                      enum MHD_RequestTerminationCode why)
{
    (void)cls, (void)conn, (void)why;
    free(*state);
    *state = NULL;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

Test(tika_client, parse_many_keeps_n_in_flight_and_starts_nothing_after_its_window)
{
    struct MHD_Daemon *d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL,
        echo_slow, NULL, MHD_OPTION_NOTIFY_COMPLETED, echo_done, NULL, MHD_OPTION_END);
    cr_assert(d);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%u",
             (unsigned)MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
    dp_tika_client *c = client_for(url, 20000);
    char docs[6][32];
    dp_tika_job jobs[6];
    for (int k = 0; k < 6; k++) {
        snprintf(docs[k], sizeof(docs[k]), "document number %d", k);
        jobs[k] = (dp_tika_job){.data = docs[k], .len = strlen(docs[k]),
                                .content_type = "text/html"};
    }

    /* No window: all six, three at a time, each its own answer. */
    dp_tika_parse_many(c, jobs, 6, 3, 0);
    for (int k = 0; k < 6; k++) {
        cr_assert(jobs[k].started);
        cr_assert_eq(jobs[k].result, DP_OK, "%s", jobs[k].error);
        cr_assert_str_eq(jobs[k].text, docs[k]);
        free(jobs[k].text);
    }
    cr_assert_eq(echo_requests, 6);
    cr_assert_eq(echo_max, 3, "%d in flight at most, not 3", echo_max);

    /* A window that closes before the first answer: the first two go (the
     * slots free only after it), the others are never sent. */
    echo_requests = echo_max = 0;
    dp_tika_parse_many(c, jobs, 6, 2, now_ms() + 150);
    for (int k = 0; k < 6; k++) {
        cr_assert_eq(jobs[k].started, k < 2, "job %d started: %d", k, jobs[k].started);
        if (k < 2)
            cr_assert_str_eq(jobs[k].text, docs[k]);
        else
            cr_assert_null(jobs[k].text);
        free(jobs[k].text);
    }
    cr_assert_eq(echo_requests, 2);

    /* A window already closed: one document still goes, so a run always
     * makes progress. */
    echo_requests = 0;
    dp_tika_parse_many(c, jobs, 6, 3, now_ms() - 1);
    cr_assert(jobs[0].started);
    cr_assert_eq(jobs[0].result, DP_OK, "%s", jobs[0].error);
    for (int k = 1; k < 6; k++)
        cr_assert_not(jobs[k].started, "job %d started", k);
    free(jobs[0].text);
    cr_assert_eq(echo_requests, 1);
    dp_tika_client_free(c);
    MHD_stop_daemon(d);
}

Test(tika_client, parse_many_gives_each_real_document_its_own_text)
{
    need_tika();
    dp_tika_client *c = client_for(tika_url(), 60000);
    char docs[8][320], words[8][32];
    dp_tika_job jobs[8];
    for (int k = 0; k < 8; k++) {
        snprintf(words[k], sizeof(words[k]), "zebra%dquartz", k * 7919);
        snprintf(docs[k], sizeof(docs[k]),
                 "<html><body><p>%s</p></body></html>", words[k]);
        jobs[k] = (dp_tika_job){.data = docs[k], .len = strlen(docs[k]),
                                .content_type = "text/html"};
    }
    dp_tika_parse_many(c, jobs, 8, 4, 0);
    for (int k = 0; k < 8; k++) {
        cr_assert_eq(jobs[k].result, DP_OK, "%s", jobs[k].error);
        cr_assert(strstr(jobs[k].text, words[k]), "document %d: %s", k, jobs[k].text);
        for (int o = 0; o < 8; o++)
            cr_assert(o == k || !strstr(jobs[k].text, words[o]));
        free(jobs[k].text);
    }
    dp_tika_client_free(c);
}

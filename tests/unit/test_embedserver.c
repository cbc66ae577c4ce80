/*
 * docpipe-embedserver, seen from outside: each test starts the binary on a
 * free port (--port 0, first stdout line), talks to it over HTTP with
 * libcurl, and stops it with a signal, expecting exit status 0 (which, in a
 * sanitizer build, also means no leaks were reported).
 *
 * The binary is $DOCPIPE_EMBEDSERVER (ctest sets it), else tools/ next to
 * $DOCPIPE_BIN (build/docpipe -> build/tools/docpipe-embedserver), else
 * tools/ next to this test executable.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <curl/curl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "unit/support_embedserver.h"


/* ------------------------------------------------------------------------
 * Starting and stopping the server.
 * ---------------------------------------------------------------------- */

static pid_t server_pid;
static char base_url[64];

/* args and env: NULL-terminated extras ("--flag", "value"; "NAME=value"). */
static void server_start_env(const char *const *args, const char *const *env)
{
    server_pid = embedserver_spawn(args, env, base_url, sizeof(base_url));
}

static void server_start(const char *const *args) { server_start_env(args, NULL); }

/* Sends sig and returns the seconds the server took to exit 0. */
static double server_stop_with(int sig)
{
    double t0 = test_now_s();
    cr_assert(kill(server_pid, sig) == 0);
    int status = 0;
    pid_t got = 0;
    while ((got = waitpid(server_pid, &status, WNOHANG)) == 0 && test_now_s() - t0 < 15)
        usleep(10000);
    cr_assert(got == server_pid, "server did not stop within 15 s");
    server_pid = 0;
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "server ended badly (status 0x%x)", status);
    return test_now_s() - t0;
}

static void server_stop(void) { server_stop_with(SIGTERM); }

static void setup(void) { curl_global_init(CURL_GLOBAL_ALL); }

static void teardown(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
    }
    curl_global_cleanup();
}

/* ------------------------------------------------------------------------
 * HTTP.
 * ---------------------------------------------------------------------- */

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

struct response {
    long status;
    json_t *json;          /* parsed body, NULL if not JSON */
    char retry_after[32];  /* "" if absent */
    CURLcode rc;
};

static CURL *easy_new(const char *method, const char *path, const char *body,
                      struct curl_slist *headers, struct body *sink)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", base_url, path);
    CURL *c = curl_easy_init();
    cr_assert(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 20000L);
    return c;
}

static struct response finish(CURL *c, CURLcode rc, struct body *b)
{
    struct response r = {0};
    r.rc = rc;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    struct curl_header *h = NULL;
    if (curl_easy_header(c, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        snprintf(r.retry_after, sizeof(r.retry_after), "%s", h->value);
    if (b->p)
        r.json = json_loads(b->p, 0, NULL);
    free(b->p);
    return r;
}

static struct response http_opts(const char *method, const char *path, const char *body,
                                 const char *auth, long timeout_ms)
{
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    if (auth)
        headers = curl_slist_append(headers, auth);
    struct body b = {0};
    CURL *c = easy_new(method, path, body, headers, &b);
    if (timeout_ms)
        curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    CURLcode rc = curl_easy_perform(c);
    struct response r = finish(c, rc, &b);
    curl_easy_cleanup(c);
    curl_slist_free_all(headers);
    return r;
}

static struct response http(const char *method, const char *path, const char *body)
{
    return http_opts(method, path, body, NULL, 0);
}

static void response_free(struct response *r) { json_decref(r->json); }

static void set_faults(const char *json)
{
    struct response r = http("POST", "/admin/faults", json);
    cr_assert_eq(r.status, 200, "POST /admin/faults %s -> %ld", json, r.status);
    response_free(&r);
}

/* POSTs to /v1/embeddings, expects 200 and returns the reply (caller frees). */
static json_t *embed_ok(const char *body)
{
    struct response r = http("POST", "/v1/embeddings", body);
    cr_assert_eq(r.status, 200, "POST /v1/embeddings %s -> %ld", body, r.status);
    cr_assert(r.json);
    return r.json;
}

static long embed_status(const char *body)
{
    struct response r = http("POST", "/v1/embeddings", body);
    response_free(&r);
    return r.status;
}

/* data[i].embedding as floats (JSON array form); returns the length. */
static size_t vector_at(json_t *reply, size_t i, float *out, size_t max)
{
    json_t *item = json_array_get(json_object_get(reply, "data"), i);
    cr_assert(item, "no data[%zu]", i);
    cr_assert_eq(json_integer_value(json_object_get(item, "index")), (json_int_t)i);
    cr_assert_str_eq(json_string_value(json_object_get(item, "object")), "embedding");
    json_t *arr = json_object_get(item, "embedding");
    cr_assert(json_is_array(arr));
    size_t n = json_array_size(arr);
    cr_assert(n <= max);
    for (size_t k = 0; k < n; k++)
        out[k] = (float)json_number_value(json_array_get(arr, k));
    return n;
}

static double norm(const float *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)v[i] * v[i];
    return sqrt(s);
}

static size_t base64_decode(const char *in, unsigned char *out, size_t max)
{
    static const char tbl[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = 0;
    unsigned acc = 0;
    int bits = 0;
    for (; *in && *in != '='; in++) {
        const char *p = strchr(tbl, *in);
        cr_assert(p, "bad base64 character '%c'", *in);
        acc = (acc << 6) | (unsigned)(p - tbl);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            cr_assert(n < max);
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return n;
}

/* Sends n requests at once (curl multi, one connection each); returns the
 * seconds until all have answered, asserting every one got 200. */
static double embed_in_parallel(int n)
{
    CURLM *m = curl_multi_init();
    CURL *easy[128];
    struct body bodies[128] = {0};
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    cr_assert(n <= 128);
    double t0 = test_now_s();
    for (int i = 0; i < n; i++) {
        easy[i] = easy_new("POST", "/v1/embeddings",
                           "{\"model\":\"m\",\"input\":[\"parallel\"],\"dimensions\":8}",
                           headers, &bodies[i]);
        curl_multi_add_handle(m, easy[i]);
    }
    int running = n;
    while (running) {
        curl_multi_perform(m, &running);
        if (running)
            curl_multi_poll(m, NULL, 0, 1000, NULL);
    }
    double elapsed = test_now_s() - t0;
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(m, &left)))
        cr_assert_eq(msg->data.result, CURLE_OK);
    for (int i = 0; i < n; i++) {
        long status = 0;
        curl_easy_getinfo(easy[i], CURLINFO_RESPONSE_CODE, &status);
        cr_assert_eq(status, 200, "request %d -> %ld", i, status);
        curl_multi_remove_handle(m, easy[i]);
        curl_easy_cleanup(easy[i]);
        free(bodies[i].p);
    }
    curl_slist_free_all(headers);
    curl_multi_cleanup(m);
    return elapsed;
}

static json_int_t stat_of(json_t *stats, const char *group, const char *key)
{
    json_t *g = group ? json_object_get(stats, group) : stats;
    return json_integer_value(json_object_get(g, key));
}

TestSuite(embedserver, .init = setup, .fini = teardown, .timeout = 60);

/* ------------------------------------------------------------------------
 * Vectors.
 * ---------------------------------------------------------------------- */

static float v1[16384], v2[16384], v3[16384];

Test(embedserver, same_text_gives_the_same_vector_in_every_process)
{
    const char *body = "{\"model\":\"text-embedding-3-small\",\"input\":[\"the quick brown fox\"]}";
    server_start(NULL);
    json_t *a = embed_ok(body);
    size_t n1 = vector_at(a, 0, v1, 16384);
    server_stop();

    server_start(NULL);
    json_t *b = embed_ok(body);
    size_t n2 = vector_at(b, 0, v2, 16384);
    server_stop();

    cr_assert_eq(n1, 1536);
    cr_assert_eq(n2, n1);
    cr_assert(memcmp(v1, v2, n1 * sizeof(float)) == 0);
    json_decref(a);
    json_decref(b);
}

Test(embedserver, vectors_follow_the_text_not_the_position_in_the_batch)
{
    server_start(NULL);
    json_t *r = embed_ok("{\"model\":\"m\",\"input\":[\"alpha\",\"beta\",\"alpha\"]}");
    size_t n = vector_at(r, 0, v1, 16384);
    vector_at(r, 1, v2, 16384);
    vector_at(r, 2, v3, 16384);
    cr_assert(memcmp(v1, v3, n * sizeof(float)) == 0, "same text, same vector");
    cr_assert(memcmp(v1, v2, n * sizeof(float)) != 0, "different text, different vector");
    double dot = 0;
    for (size_t i = 0; i < n; i++)
        dot += (double)v1[i] * v2[i];
    cr_assert_lt(fabs(dot), 0.2, "unrelated texts should be near orthogonal: %f", dot);
    json_decref(r);
    server_stop();
}

Test(embedserver, vectors_are_pinned_to_the_documented_algorithm)
{
    /* FNV-1a-64 -> splitmix64 -> xoshiro256** -> Box-Muller -> L2 norm. */
    static const float expected[4] = {0.250643194f, -0.45857498f, 0.62903595f,
                                      0.575500429f};
    server_start(NULL);
    json_t *r = embed_ok("{\"model\":\"m\",\"input\":\"hello world\",\"dimensions\":4}");
    cr_assert_eq(vector_at(r, 0, v1, 16384), 4);
    for (int i = 0; i < 4; i++)
        cr_assert_float_eq(v1[i], expected[i], 1e-6, "component %d: %.9g", i, v1[i]);
    json_decref(r);
    server_stop();
}

Test(embedserver, vectors_are_unit_length_with_1536_components_by_default)
{
    server_start(NULL);
    json_t *r = embed_ok("{\"model\":\"m\",\"input\":[\"one\",\"two words\",\"three more words\"]}");
    cr_assert_eq(json_array_size(json_object_get(r, "data")), 3);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_eq(vector_at(r, i, v1, 16384), 1536);
        cr_assert_float_eq(norm(v1, 1536), 1.0, 1e-5);
    }
    cr_assert_str_eq(json_string_value(json_object_get(r, "object")), "list");
    cr_assert_str_eq(json_string_value(json_object_get(r, "model")), "m");
    json_t *usage = json_object_get(r, "usage");
    cr_assert_eq(json_integer_value(json_object_get(usage, "prompt_tokens")), 6);
    cr_assert_eq(json_integer_value(json_object_get(usage, "total_tokens")), 6);
    json_decref(r);
    server_stop();
}

Test(embedserver, dimensions_in_the_request_or_dim_at_start_set_the_length)
{
    const char *args[] = {"--dim", "64", NULL};
    server_start(args);
    json_t *r = embed_ok("{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(vector_at(r, 0, v1, 16384), 64);
    json_decref(r);

    r = embed_ok("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":256}");
    cr_assert_eq(vector_at(r, 0, v1, 16384), 256);
    cr_assert_float_eq(norm(v1, 256), 1.0, 1e-5);
    json_decref(r);

    set_faults("{\"dim\":3072}");
    r = embed_ok("{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(vector_at(r, 0, v1, 16384), 3072);
    json_decref(r);
    server_stop();
}

Test(embedserver, base64_encoding_carries_the_same_little_endian_floats)
{
    server_start(NULL);
    const char *texts[] = {"base64 please", "odd", "x"};
    const int dims[] = {1536, 5, 7}; /* 20 and 28 bytes exercise the padding */
    for (int t = 0; t < 3; t++) {
        char body[256];
        snprintf(body, sizeof(body), "{\"model\":\"m\",\"input\":\"%s\",\"dimensions\":%d}",
                 texts[t], dims[t]);
        json_t *f = embed_ok(body);
        size_t n = vector_at(f, 0, v1, 16384);
        snprintf(body, sizeof(body),
                 "{\"model\":\"m\",\"input\":\"%s\",\"dimensions\":%d,"
                 "\"encoding_format\":\"base64\"}",
                 texts[t], dims[t]);
        json_t *b = embed_ok(body);
        const char *text = json_string_value(json_object_get(
            json_array_get(json_object_get(b, "data"), 0), "embedding"));
        cr_assert(text, "base64 embedding should be a string");
        static unsigned char bytes[16384 * 4];
        size_t nbytes = base64_decode(text, bytes, sizeof(bytes));
        cr_assert_eq(nbytes, n * 4);
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)bytes[4 * i] | (uint32_t)bytes[4 * i + 1] << 8 |
                         (uint32_t)bytes[4 * i + 2] << 16 | (uint32_t)bytes[4 * i + 3] << 24;
            float x;
            memcpy(&x, &u, 4);
            cr_assert(x == v1[i], "component %zu: base64 %.9g, float %.9g", i, x, v1[i]);
        }
        json_decref(f);
        json_decref(b);
    }
    server_stop();
}

/* ------------------------------------------------------------------------
 * Bad requests.
 * ---------------------------------------------------------------------- */

static void assert_openai_error(const char *body, long status, const char *type)
{
    struct response r = http("POST", "/v1/embeddings", body);
    cr_assert_eq(r.status, status, "%s -> %ld", body, r.status);
    json_t *err = json_object_get(r.json, "error");
    cr_assert(json_is_object(err), "no error object for %s", body);
    cr_assert(json_is_string(json_object_get(err, "message")));
    cr_assert_str_eq(json_string_value(json_object_get(err, "type")), type);
    cr_assert(json_object_get(err, "code"), "error.code should be present");
    response_free(&r);
}

Test(embedserver, empty_input_and_malformed_requests_get_openai_400s)
{
    server_start(NULL);
    assert_openai_error("{\"model\":\"m\",\"input\":[]}", 400, "invalid_request_error");
    assert_openai_error("{\"model\":\"m\",\"input\":\"\"}", 400, "invalid_request_error");
    assert_openai_error("{\"model\":\"m\",\"input\":[\"ok\",\"\"]}", 400,
                        "invalid_request_error");
    assert_openai_error("{\"model\":\"m\"}", 400, "invalid_request_error");
    assert_openai_error("{\"model\":\"m\",\"input\":[1,2]}", 400, "invalid_request_error");
    assert_openai_error("{not json", 400, "invalid_request_error");
    assert_openai_error("", 400, "invalid_request_error");
    assert_openai_error("{\"input\":\"no model\"}", 400, "invalid_request_error");
    assert_openai_error("{\"model\":\"m\",\"input\":\"x\",\"encoding_format\":\"hex\"}", 400,
                        "invalid_request_error");
    assert_openai_error("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":0}", 400,
                        "invalid_request_error");

    struct response r = http("GET", "/v1/nothing-here", NULL);
    cr_assert_eq(r.status, 404);
    response_free(&r);
    r = http("GET", "/v1/embeddings", NULL);
    cr_assert_eq(r.status, 405);
    response_free(&r);
    server_stop();
}

/* Like text-embedding-3 (8191 tokens), counted by the chunker's estimate. */
Test(embedserver, an_input_over_max_input_tokens_gets_openais_context_length_400)
{
    /* 100 tokens of "abcd " words (each word 1 token) fit 100, not 99. */
    char body[1024] = "{\"model\":\"m\",\"input\":[\"short\",\"";
    for (int i = 0; i < 100; i++)
        strcat(body, i ? " abcd" : "abcd");
    strcat(body, "\"]}");
    const char *limit100[] = {"--max-input-tokens", "100", NULL};
    server_start(limit100);
    json_decref(embed_ok(body));
    server_stop();
    const char *limit99[] = {"--max-input-tokens", "99", NULL};
    server_start(limit99);
    struct response r = http("POST", "/v1/embeddings", body);
    cr_assert_eq(r.status, 400);
    json_t *err = json_object_get(r.json, "error");
    cr_assert_str_eq(json_string_value(json_object_get(err, "type")), "invalid_request_error");
    const char *msg = json_string_value(json_object_get(err, "message"));
    cr_assert(msg && strstr(msg, "maximum context length is 99 tokens") &&
              strstr(msg, "requested 100 tokens (input[1])"), "%s", msg);
    response_free(&r);
    server_stop();
    /* The default is 8191; 0 switches the limit off. */
    const char *env[] = {"DOCPIPE_EMBED_SERVER_MAX_INPUT_TOKENS=0", NULL};
    server_start_env(NULL, env);
    char *big = malloc(200000);
    strcpy(big, "{\"model\":\"m\",\"dimensions\":4,\"input\":\"");
    size_t n = strlen(big);
    memset(big + n, 'x', 150000);       /* 37,500 estimated tokens */
    strcpy(big + n + 150000, "\"}");
    json_decref(embed_ok(big));
    server_stop();
    server_start(NULL);
    cr_assert_eq(embed_status(big), 400);
    server_stop();
    free(big);
}

Test(embedserver, bearer_key_is_required_on_v1_when_configured)
{
    const char *args[] = {"--api-key", "sekrit", NULL};
    server_start(args);
    const char *body = "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":2}";

    struct response r = http_opts("POST", "/v1/embeddings", body, NULL, 0);
    cr_assert_eq(r.status, 401);
    cr_assert_str_eq(json_string_value(json_object_get(json_object_get(r.json, "error"),
                                                       "code")),
                     "invalid_api_key");
    response_free(&r);
    r = http_opts("POST", "/v1/embeddings", body, "Authorization: Bearer wrong", 0);
    cr_assert_eq(r.status, 401);
    response_free(&r);
    r = http_opts("POST", "/v1/embeddings", body, "Authorization: Bearer sekrit", 0);
    cr_assert_eq(r.status, 200);
    response_free(&r);
    r = http("GET", "/health", NULL);
    cr_assert_eq(r.status, 200, "health needs no key");
    response_free(&r);
    server_stop();
}

/* ------------------------------------------------------------------------
 * Fault switches.
 * ---------------------------------------------------------------------- */

Test(embedserver, fail_status_429_answers_rate_limited_with_retry_after)
{
    server_start(NULL);
    set_faults("{\"fail_status\":429,\"retry_after_s\":7}");
    struct response r = http("POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(r.status, 429);
    cr_assert_str_eq(r.retry_after, "7");
    json_t *err = json_object_get(r.json, "error");
    cr_assert_str_eq(json_string_value(json_object_get(err, "code")), "rate_limit_exceeded");
    response_free(&r);

    set_faults("{\"fail_status\":0}");
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 200);
    server_stop();
}

Test(embedserver, fail_status_500_fails_every_request_until_switched_off)
{
    server_start(NULL);
    set_faults("{\"fail_status\":500,\"retry_after_s\":7}");
    for (int i = 0; i < 5; i++) {
        struct response r = http("POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"x\"}");
        cr_assert_eq(r.status, 500);
        cr_assert_str_eq(r.retry_after, "", "Retry-After only goes with 429 and 503");
        cr_assert_str_eq(
            json_string_value(json_object_get(json_object_get(r.json, "error"), "type")),
            "server_error");
        response_free(&r);
    }
    set_faults("{\"fail_status\":0}");
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 200);
    server_stop();
}

Test(embedserver, fail_rate_fails_about_that_share_of_requests)
{
    server_start(NULL);
    set_faults("{\"fail_status\":503,\"fail_rate\":0.5}");
    int failed = 0;
    for (int i = 0; i < 100; i++) {
        long st = embed_status("{\"model\":\"m\",\"input\":\"x\",\"dimensions\":2}");
        cr_assert(st == 200 || st == 503);
        failed += st == 503;
    }
    /* Binomial(100, 0.5): outside [20, 80] is a six-sigma event. */
    cr_assert(failed >= 20 && failed <= 80, "%d of 100 failed", failed);
    server_stop();
}

Test(embedserver, fail_mix_fails_with_several_statuses_each_by_its_share)
{
    const char *args[] = {"--fail-mix", "500:0.10,429:0.02", "--retry-after-s", "3", NULL};
    server_start(args);
    int n500 = 0, n429 = 0, n200 = 0;
    for (int i = 0; i < 1000; i++) {
        struct response r = http("POST", "/v1/embeddings",
                                 "{\"model\":\"m\",\"input\":\"x\",\"dimensions\":2}");
        cr_assert(r.status == 200 || r.status == 500 || r.status == 429,
                  "request %d -> %ld", i, r.status);
        if (r.status == 429)
            cr_assert_str_eq(r.retry_after, "3", "a 429 of the mix says when to come back");
        if (r.status == 500)
            cr_assert_str_eq(r.retry_after, "", "Retry-After only goes with 429 and 503");
        n500 += r.status == 500;
        n429 += r.status == 429;
        n200 += r.status == 200;
        response_free(&r);
    }
    /* Binomial(1000, 0.10): mean 100, sd 9.5; (1000, 0.02): mean 20, sd 4.4.
     * The bounds are over five sigma away. */
    cr_assert(n500 >= 50 && n500 <= 150, "%d of 1000 answered 500", n500);
    cr_assert(n429 >= 2 && n429 <= 45, "%d of 1000 answered 429", n429);
    cr_assert_eq(n200 + n500 + n429, 1000);

    struct response r = http("GET", "/admin/stats", NULL);
    cr_assert_eq(stat_of(r.json, "failures", "500"), n500, "stats count the mix's 500s");
    cr_assert_eq(stat_of(r.json, "failures", "429"), n429, "and its 429s");
    response_free(&r);
    server_stop();
}

Test(embedserver, fail_mix_that_is_malformed_or_over_one_is_refused_at_start)
{
    char path[4096];
    embedserver_path(path, sizeof(path));
    const char *bad[] = {"500", "500:x", "302:0.1", "500:0.7,429:0.4", "500:0.1;429:0.1",
                         "500:-0.1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        pid_t pid = fork();
        cr_assert_geq(pid, 0);
        if (pid == 0) {
            int null = open("/dev/null", O_WRONLY);
            dup2(null, 1);
            dup2(null, 2);
            execl(path, path, "--port", "0", "--fail-mix", bad[i], (char *)NULL);
            _exit(127);
        }
        int st = 0;
        cr_assert_eq(waitpid(pid, &st, 0), pid);
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2, "--fail-mix %s: usage error, exit %d", bad[i],
                  WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    }
}

Test(embedserver, fail_for_ms_fails_everything_for_a_while_then_recovers)
{
    server_start(NULL);
    set_faults("{\"fail_for_ms\":400,\"retry_after_s\":1}");
    struct response r = http("POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(r.status, 503, "no fail_status given: the window fails with 503");
    cr_assert_str_eq(r.retry_after, "1");
    response_free(&r);
    /* An outage takes the whole service down, admin endpoints aside. */
    r = http("GET", "/v1/models", NULL);
    cr_assert_eq(r.status, 503, "/v1/models in the window: %ld", r.status);
    response_free(&r);
    r = http("GET", "/health", NULL);
    cr_assert_eq(r.status, 503, "/health in the window: %ld", r.status);
    response_free(&r);

    r = http("GET", "/admin/faults", NULL);
    json_int_t left = json_integer_value(json_object_get(r.json, "fail_for_ms"));
    cr_assert(left > 0 && left <= 400, "fail_for_ms left: %lld", (long long)left);
    response_free(&r);

    usleep(600 * 1000);
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 200);
    r = http("GET", "/v1/models", NULL);
    cr_assert_eq(r.status, 200, "/v1/models after the window: %ld", r.status);
    response_free(&r);
    r = http("GET", "/admin/faults", NULL);
    cr_assert_eq(json_integer_value(json_object_get(r.json, "fail_for_ms")), 0);
    cr_assert_eq(json_integer_value(json_object_get(r.json, "fail_status")), 0);
    response_free(&r);

    /* With a status, the window uses it. */
    set_faults("{\"fail_status\":429,\"fail_for_ms\":300}");
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 429);
    usleep(450 * 1000);
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 200);
    server_stop();
}

Test(embedserver, latency_does_not_serialise_concurrent_requests)
{
    server_start(NULL);
    set_faults("{\"latency_ms\":500}");
    double t = embed_in_parallel(32);
    cr_assert(t >= 0.45 && t < 2.5, "32 requests at 500 ms took %.2f s", t);

    set_faults("{\"latency_ms\":1000}");
    t = embed_in_parallel(100);
    cr_assert(t >= 0.95 && t < 2.5, "100 requests at 1000 ms took %.2f s", t);

    struct response r = http("GET", "/admin/stats", NULL);
    cr_assert_geq(stat_of(r.json, NULL, "in_flight_max"), 64);
    response_free(&r);
    server_stop();
}

Test(embedserver, a_hung_request_outlasts_the_client_and_sigterm_still_stops_at_once)
{
    server_start(NULL);
    set_faults("{\"timeout_rate\":1,\"timeout_ms\":60000}");
    double t0 = test_now_s();
    struct response r =
        http_opts("POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"x\"}", NULL, 300);
    cr_assert_eq(r.rc, CURLE_OPERATION_TIMEDOUT);
    cr_assert_lt(test_now_s() - t0, 5.0);
    response_free(&r);

    r = http("GET", "/admin/stats", NULL);
    cr_assert_eq(stat_of(r.json, NULL, "timeouts"), 1);
    cr_assert_eq(stat_of(r.json, NULL, "in_flight"), 1, "the request still hangs");
    response_free(&r);

    double took = server_stop_with(SIGTERM);
    cr_assert_lt(took, 5.0, "stop took %.2f s", took);
}

Test(embedserver, sigint_stops_cleanly_too)
{
    server_start(NULL);
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 200);
    server_stop_with(SIGINT);
}

/* ------------------------------------------------------------------------
 * Configuration and admin.
 * ---------------------------------------------------------------------- */

Test(embedserver, environment_sets_faults_at_start_and_delete_goes_back_to_them)
{
    const char *env[] = {"DOCPIPE_EMBED_SERVER_DIM=8",
                         "DOCPIPE_EMBED_SERVER_FAIL_STATUS=503",
                         "DOCPIPE_EMBED_SERVER_RETRY_AFTER_S=2", NULL};
    const char *args[] = {"--retry-after-s", "4", NULL}; /* flags beat env */
    server_start_env(args, env);
    struct response r = http("POST", "/v1/embeddings", "{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(r.status, 503);
    cr_assert_str_eq(r.retry_after, "4");
    response_free(&r);

    set_faults("{\"fail_status\":0}");
    json_t *e = embed_ok("{\"model\":\"m\",\"input\":\"x\"}");
    cr_assert_eq(vector_at(e, 0, v1, 16384), 8);
    json_decref(e);

    r = http("DELETE", "/admin/faults", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(json_integer_value(json_object_get(r.json, "fail_status")), 503);
    response_free(&r);
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"x\"}"), 503);
    server_stop();
}

Test(embedserver, admin_rejects_unknown_settings_and_out_of_range_values_whole)
{
    server_start(NULL);
    const char *bad[] = {"{\"fail_rate\":2}", "{\"fail_status\":302}", "{\"nope\":1}",
                         "{\"latency_ms\":-1}", "{\"dim\":1.5}",
                         "{\"latency_ms\":5,\"dim\":0}", "[1]", "{oops"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct response r = http("POST", "/admin/faults", bad[i]);
        cr_assert_eq(r.status, 400, "%s -> %ld", bad[i], r.status);
        response_free(&r);
    }
    struct response r = http("GET", "/admin/faults", NULL);
    cr_assert_eq(json_integer_value(json_object_get(r.json, "latency_ms")), 0,
                 "a rejected change changes nothing");
    cr_assert_eq(json_integer_value(json_object_get(r.json, "dim")), 1536);
    cr_assert_float_eq(json_number_value(json_object_get(r.json, "fail_rate")), 1.0, 1e-9);
    response_free(&r);
    server_stop();
}

Test(embedserver, stats_count_requests_inputs_and_failures_by_status)
{
    server_start(NULL);
    json_decref(embed_ok("{\"model\":\"m\",\"input\":[\"a\",\"b\"],\"dimensions\":2}"));
    json_decref(embed_ok("{\"model\":\"m\",\"input\":\"c\",\"dimensions\":2}"));
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":[]}"), 400);
    set_faults("{\"fail_status\":429}");
    cr_assert_eq(embed_status("{\"model\":\"m\",\"input\":\"d\"}"), 429);

    struct response r = http("GET", "/admin/stats", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_eq(stat_of(r.json, NULL, "requests"), 4);
    cr_assert_eq(stat_of(r.json, NULL, "inputs"), 3);
    cr_assert_eq(stat_of(r.json, NULL, "in_flight"), 0);
    cr_assert_geq(stat_of(r.json, NULL, "in_flight_max"), 1);
    cr_assert_eq(stat_of(r.json, "responses", "200"), 2);
    cr_assert_eq(stat_of(r.json, "responses", "400"), 1);
    cr_assert_eq(stat_of(r.json, "responses", "429"), 1);
    cr_assert_eq(stat_of(r.json, "failures", "429"), 1);
    cr_assert_null(json_object_get(json_object_get(r.json, "failures"), "400"),
                   "a 400 is the client's fault, not an injected failure");
    response_free(&r);

    r = http("DELETE", "/admin/stats", NULL);
    cr_assert_eq(stat_of(r.json, NULL, "requests"), 0);
    response_free(&r);
    server_stop();
}

Test(embedserver, health_models_and_keep_alive)
{
    server_start(NULL);
    struct response r = http("GET", "/health", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(r.json, "status")), "ok");
    response_free(&r);
    r = http("GET", "/v1/models", NULL);
    cr_assert_eq(r.status, 200);
    cr_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(r.json, "data"), 0), "id")),
                     "text-embedding-3-small");
    response_free(&r);

    /* A second request on the same handle reuses the connection. */
    struct body b = {0};
    CURL *c = easy_new("GET", "/health", NULL, NULL, &b);
    cr_assert_eq(curl_easy_perform(c), CURLE_OK);
    cr_assert_eq(curl_easy_perform(c), CURLE_OK);
    long connects = -1;
    curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &connects);
    cr_assert_eq(connects, 0, "the second request should not open a new connection");
    curl_easy_cleanup(c);
    free(b.p);
    server_stop();
}

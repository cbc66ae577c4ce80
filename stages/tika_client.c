/* tika_client: Apache Tika server client (see tika_client.h). */
#include "tika_client.h"

#include "services.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "clock.h"
#include "http_alive.h"
#include "log.h"

struct dp_tika_client {
    pthread_mutex_t mu;      /* one run at a time on the handles */
    CURLM *multi;            /* keeps the connections to Tika between runs */
    CURL **easy;             /* one per request in flight, made as needed */
    size_t neasy;
    char *endpoint;          /* {tika_url}/tika */
    long timeout_ms;
    dp_breaker *breaker;
    dp_service *svc;         /* its figures in the metrics */
};

struct sink {
    char *p;
    size_t len, cap, max;    /* max 0: no limit */
    int over;                /* stopped: the text outgrew max */
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

dp_err dp_tika_client_new(const dp_config *cfg, dp_tika_client **out, char *err,
                          size_t errlen)
{
    *out = NULL;
    if (!cfg->tika_url || !*cfg->tika_url)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "tika_url is empty");
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "curl_global_init: %s",
                       curl_easy_strerror(curl_init_rc));
    dp_tika_client *c = calloc(1, sizeof(*c));
    if (!c)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    size_t ulen = strlen(cfg->tika_url);
    while (ulen && cfg->tika_url[ulen - 1] == '/')
        ulen--;
    if (asprintf(&c->endpoint, "%.*s/tika", (int)ulen, cfg->tika_url) < 0)
        c->endpoint = NULL;
    c->multi = curl_multi_init();
    c->breaker = dp_breaker_new("tika", cfg->breaker_threshold, cfg->breaker_reset_ms);
    c->svc = dp_service_get("tika");
    if (!c->endpoint || !c->multi || !c->breaker) {
        dp_tika_client_free(c);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    }
    c->timeout_ms = cfg->tika_timeout_ms > 0 ? cfg->tika_timeout_ms : 120000;
    *out = c;
    return DP_OK;
}

void dp_tika_client_free(dp_tika_client *c)
{
    if (!c)
        return;
    for (size_t k = 0; k < c->neasy; k++)
        curl_easy_cleanup(c->easy[k]);
    free(c->easy);
    if (c->multi)
        curl_multi_cleanup(c->multi);
    dp_breaker_free(c->breaker);
    free(c->endpoint);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

dp_breaker *dp_tika_client_breaker(dp_tika_client *c) { return c->breaker; }

int dp_tika_client_alive(dp_tika_client *c)
{
    /* GET /tika answers with Tika's greeting. */
    int up = dp_http_alive(c->endpoint, NULL, c->timeout_ms < 5000 ? c->timeout_ms : 5000);
    if (!up)
        dp_breaker_failure(c->breaker);
    return up;
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    struct sink *s = arg;
    size_t add = size * n;
    if (s->max && s->len + add > s->max) {
        s->over = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    if (s->len + add + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 16384;
        while (cap < s->len + add + 1)
            cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p)
            return 0;
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->len, data, add);
    s->len += add;
    s->p[s->len] = '\0';
    return add;
}

static int64_t ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/* What an answer means: the transfer's outcome cc, the HTTP status and the
 * body collected in sink (the text on DP_OK, the start of Tika's complaint
 * otherwise).  curl_err and endpoint only enter the message. */
static dp_err outcome(CURLcode cc, long status, const struct sink *sink, size_t len,
                      const char *content_type, const char *curl_err,
                      const char *endpoint, int64_t ms, char *err, size_t errlen)
{
    const char *what = content_type ? content_type : "undeclared type";
    if (cc != CURLE_OK) {
        if (sink->over)
            return dp_errf(DP_ERR_PERMANENT, err, errlen,
                           "tika: the text of the %zu-byte document (%s) is over %zu bytes",
                           len, what, sink->max);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "tika: %s after %lld ms (%s)",
                       curl_easy_strerror(cc), (long long)ms,
                       curl_err[0] ? curl_err : endpoint);
    }
    if (status >= 200 && status < 300)
        return DP_OK;
    int permanent = status >= 400 && status < 500 && status != 408 && status != 429;
    const char *why = status == 422   ? " (Tika could not parse it: corrupt, encrypted, "
                                        "or not of its declared type)"
                      : status == 415 ? " (unsupported media type)"
                                      : "";
    /* The start of Tika's complaint, quoted as valid UTF-8: its bytes cut at
     * 200 could end inside a character, and the message goes to PostgreSQL
     * (tests/fuzz/regressions/tika_reply). */
    char said[201];
    dp_err_quote(said, sizeof(said), sink->p ? sink->p : "", sink->len < 200 ? sink->len : 200);
    return dp_errf(permanent ? DP_ERR_PERMANENT : DP_ERR_RETRYABLE, err, errlen,
                   "tika: HTTP %ld for a %zu-byte document (%s)%s%s%s", status, len, what,
                   why, sink->len ? ": " : "", said);
}

/* One request in flight of a run. */
typedef struct tika_call {
    CURL *easy;
    dp_tika_job *job;
    struct sink sink;
    struct curl_slist *headers;
    char curl_err[CURL_ERROR_SIZE];
    struct timespec t0;
} tika_call;

/* The easy handle of slot k, made on first use; its connection stays in
 * the multi handle's cache for the next request. */
static CURL *easy_for(dp_tika_client *c, size_t k)
{
    if (k >= c->neasy) {
        CURL **more = realloc(c->easy, (k + 1) * sizeof(*more));
        if (!more)
            return NULL;
        c->easy = more;
        while (c->neasy <= k) {
            CURL *e = curl_easy_init();
            if (!e)
                return NULL;
            curl_easy_setopt(e, CURLOPT_URL, c->endpoint);
            curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
            curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                             c->timeout_ms < 10000 ? c->timeout_ms : 10000L);
            curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
            curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
            c->easy[c->neasy++] = e;
        }
    }
    return c->easy[k];
}

/* Sets up and adds call's request; DP_OK, or the job's own failure. */
static dp_err call_start(dp_tika_client *c, tika_call *call, char *err, size_t errlen)
{
    const dp_tika_job *job = call->job;
    if (job->content_type && strpbrk(job->content_type, "\r\n"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "tika: content type contains a line break");
    char ct[300];
    /* "Content-Type:" with no value removes libcurl's form type: Tika detects. */
    snprintf(ct, sizeof(ct), "Content-Type:%s%.280s", job->content_type ? " " : "",
             job->content_type ? job->content_type : "");
    struct curl_slist *t;
    const char *lines[] = {"Accept: text/plain", "Expect:", ct};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (!(t = curl_slist_append(call->headers, lines[i])))
            return dp_errf(DP_ERR_RETRYABLE, err, errlen, "tika: out of memory");
        call->headers = t;
    }
    CURL *e = call->easy;
    call->curl_err[0] = '\0';
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, call->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, job->len ? job->data : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)job->len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &call->sink);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, call->curl_err);
    curl_easy_setopt(e, CURLOPT_PRIVATE, call);
    clock_gettime(CLOCK_MONOTONIC, &call->t0);
    CURLMcode mc = curl_multi_add_handle(c->multi, e);
    if (mc != CURLM_OK)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "tika: cannot start a request: %s",
                       curl_multi_strerror(mc));
    dp_service_begin(c->svc);
    return DP_OK;
}

/* Nothing may point at the call once it is over. */
static void call_clear(tika_call *call)
{
    CURL *e = call->easy;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(e, CURLOPT_PRIVATE, NULL);
    curl_slist_free_all(call->headers);
    call->headers = NULL;
    call->job = NULL;
}

/* Hands the collected text over on DP_OK (an empty one too), frees it
 * otherwise. */
static dp_err take_text(dp_err rc, struct sink *sink, char **text, size_t *text_len,
                        char *err, size_t errlen)
{
    if (rc != DP_OK) {
        free(sink->p);
        return rc;
    }
    if (!sink->p && !(sink->p = calloc(1, 1)))
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "tika: out of memory");
    *text = sink->p;
    if (text_len)
        *text_len = sink->len;
    if (err && errlen)
        err[0] = '\0';
    return DP_OK;
}

dp_err dp_tika_reply(long status, const void *body, size_t body_len, size_t piece,
                     size_t len, const char *content_type, size_t max_bytes, char **text,
                     size_t *text_len, char *err, size_t errlen)
{
    *text = NULL;
    if (text_len)
        *text_len = 0;
    struct sink sink = {.max = max_bytes};
    CURLcode cc = CURLE_OK;
    for (size_t at = 0; at < body_len;) {
        size_t n = piece && piece < body_len - at ? piece : body_len - at;
        /* libcurl's write buffer is not const; collect() only reads it. */
        if (collect((char *)body + at, 1, n, &sink) != n) {
            cc = CURLE_WRITE_ERROR;
            break;
        }
        at += n;
    }
    dp_err rc = outcome(cc, status, &sink, len, content_type, "", "(no server)", 0, err,
                        errlen);
    return take_text(rc, &sink, text, text_len, err, errlen);
}

/* A job's result: the breaker told, the text or the reason kept. */
static void job_done(dp_tika_client *c, dp_tika_job *job, dp_err rc, struct sink *sink)
{
    if (rc == DP_ERR_RETRYABLE)
        dp_breaker_failure(c->breaker);
    else
        dp_breaker_success(c->breaker);
    if (rc != DP_OK && dp_log_enabled(DP_LOG_DEBUG))
        dp_logj(DP_LOG_DEBUG, NULL,
                json_pack("{s:s, s:s}", "service", "tika", "result", dp_err2str(rc)), "%s",
                job->error);
    job->result = take_text(rc, sink, &job->text, &job->text_len, job->error,
                            sizeof(job->error));
}

/* The answer of a finished transfer. */
static void call_finish(dp_tika_client *c, tika_call *call, CURLcode cc)
{
    dp_tika_job *job = call->job;
    long status = 0;
    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &status);
    int64_t ms = ms_since(&call->t0);
    dp_service_end(c->svc, (double)ms / 1000.0, cc == CURLE_OK && status > 0 && status < 500);
    dp_err rc = outcome(cc, status, &call->sink, job->len, job->content_type,
                        call->curl_err, c->endpoint, ms, job->error, sizeof(job->error));
    job_done(c, job, rc, &call->sink);
    call->sink = (struct sink){0};
    call_clear(call);
}

void dp_tika_parse_many(dp_tika_client *c, dp_tika_job *jobs, size_t n, int concurrency,
                        int64_t start_until_ms)
{
    size_t slots = concurrency > 0 ? (size_t)concurrency : 1;
    if (slots > n)
        slots = n;
    for (size_t k = 0; k < n; k++) {
        jobs[k].started = 0;
        jobs[k].result = DP_OK;
        jobs[k].text = NULL;
        jobs[k].text_len = 0;
        jobs[k].error[0] = '\0';
    }
    if (n == 0)
        return;
    tika_call *calls = calloc(slots, sizeof(*calls));
    pthread_mutex_lock(&c->mu);
    size_t next = 0, active = 0, sent = 0;
    for (;;) {
        /* Free slots take the next jobs, while the start window is open. */
        for (size_t k = 0; k < slots && next < n; k++) {
            if (!calls || calls[k].job)
                continue;
            if (sent > 0 && start_until_ms > 0 && dp_clock_mono_ms(NULL) >= start_until_ms) {
                next = n; /* the rest keep started = 0 */
                break;
            }
            dp_tika_job *job = &jobs[next++];
            job->started = 1;
            sent++;
            if (!dp_breaker_allow(c->breaker)) {
                job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                    "circuit breaker open: tika is refusing calls for another %lld ms",
                    (long long)dp_breaker_retry_in_ms(c->breaker));
                continue;
            }
            tika_call *call = &calls[k];
            call->job = job;
            call->sink = (struct sink){.max = job->max_bytes};
            dp_err rc = (call->easy = easy_for(c, k))
                            ? call_start(c, call, job->error, sizeof(job->error))
                            : dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                                      "tika: out of memory");
            if (rc != DP_OK) {
                job_done(c, job, rc, &call->sink);
                call->sink = (struct sink){0};
                if (call->easy)
                    call_clear(call);
                call->job = NULL;
                continue;
            }
            active++;
        }
        if (!calls) {
            /* No memory for the calls: every job fails retryably. */
            for (size_t k = 0; k < n; k++) {
                jobs[k].started = 1;
                jobs[k].result = dp_errf(DP_ERR_RETRYABLE, jobs[k].error,
                                         sizeof(jobs[k].error), "tika: out of memory");
            }
            break;
        }
        if (active == 0 && next >= n)
            break;
        if (active == 0)
            continue; /* every job just taken failed at once: take more */
        int running = 0;
        curl_multi_perform(c->multi, &running);
        CURLMsg *msg;
        int left;
        while ((msg = curl_multi_info_read(c->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            CURL *e = msg->easy_handle;
            CURLcode cc = msg->data.result;
            tika_call *call = NULL;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&call);
            curl_multi_remove_handle(c->multi, e);
            if (call && call->job) {
                call_finish(c, call, cc);
                active--;
            }
        }
        if (active > 0) {
            /* Wake for the next answer, or for the start window to close
             * while jobs wait for a slot (nothing to start then anyway). */
            curl_multi_poll(c->multi, NULL, 0, 1000, NULL);
        }
    }
    pthread_mutex_unlock(&c->mu);
    free(calls);
}

dp_err dp_tika_parse(dp_tika_client *c, const void *data, size_t len,
                     const char *content_type, size_t max_bytes, char **text,
                     size_t *text_len, char *err, size_t errlen)
{
    dp_tika_job job = {.data = data, .len = len, .content_type = content_type,
                       .max_bytes = max_bytes};
    dp_tika_parse_many(c, &job, 1, 1, 0);
    *text = job.text;
    if (text_len)
        *text_len = job.text_len;
    if (job.result != DP_OK && err && errlen)
        snprintf(err, errlen, "%s", job.error);
    else if (err && errlen)
        err[0] = '\0';
    return job.result;
}

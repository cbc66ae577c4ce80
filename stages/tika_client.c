/* tika_client: Apache Tika server client (see tika_client.h). */
#include "tika_client.h"

#include "services.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>

#include "http_alive.h"
#include "log.h"

struct dp_tika_client {
    pthread_mutex_t mu;      /* one request at a time on the easy handle */
    CURL *easy;
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
    c->easy = curl_easy_init();
    c->breaker = dp_breaker_new("tika", cfg->breaker_threshold, cfg->breaker_reset_ms);
    c->svc = dp_service_get("tika");
    if (!c->endpoint || !c->easy || !c->breaker) {
        dp_tika_client_free(c);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    }
    long timeout = cfg->tika_timeout_ms > 0 ? cfg->tika_timeout_ms : 120000;
    c->timeout_ms = timeout;
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_URL, c->endpoint);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PUT");
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, timeout < 10000 ? timeout : 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    *out = c;
    return DP_OK;
}

void dp_tika_client_free(dp_tika_client *c)
{
    if (!c)
        return;
    if (c->easy)
        curl_easy_cleanup(c->easy);
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

/* One request; the breaker is told by the caller. */
static dp_err put_document(dp_tika_client *c, const void *data, size_t len,
                           const char *content_type, struct sink *sink, char *err,
                           size_t errlen)
{
    if (content_type && strpbrk(content_type, "\r\n"))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "tika: content type contains a line break");
    char ct[300];
    /* "Content-Type:" with no value removes libcurl's form type: Tika detects. */
    snprintf(ct, sizeof(ct), "Content-Type:%s%.280s", content_type ? " " : "",
             content_type ? content_type : "");
    struct curl_slist *h = NULL, *t;
    const char *lines[] = {"Accept: text/plain", "Expect:", ct};
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (!(t = curl_slist_append(h, lines[i]))) {
            curl_slist_free_all(h);
            return dp_errf(DP_ERR_RETRYABLE, err, errlen, "tika: out of memory");
        }
        h = t;
    }
    char curl_err[CURL_ERROR_SIZE] = "";
    CURL *e = c->easy;
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, len ? data : "");
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, sink);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, curl_err);
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    dp_service_begin(c->svc);
    CURLcode cc = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    dp_service_end(c->svc, (double)ms_since(&t0) / 1000.0,
                   cc == CURLE_OK && status > 0 && status < 500);
    /* Nothing may point at this call's locals once it returns. */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, NULL);
    curl_slist_free_all(h);
    return outcome(cc, status, sink, len, content_type, curl_err, c->endpoint,
                   ms_since(&t0), err, errlen);
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

dp_err dp_tika_parse(dp_tika_client *c, const void *data, size_t len,
                     const char *content_type, size_t max_bytes, char **text,
                     size_t *text_len, char *err, size_t errlen)
{
    *text = NULL;
    if (text_len)
        *text_len = 0;
    if (!dp_breaker_allow(c->breaker))
        return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                       "circuit breaker open: tika is refusing calls for another %lld ms",
                       (long long)dp_breaker_retry_in_ms(c->breaker));

    struct sink sink = {.max = max_bytes};
    pthread_mutex_lock(&c->mu);
    dp_err rc = put_document(c, data, len, content_type, &sink, err, errlen);
    pthread_mutex_unlock(&c->mu);

    if (rc == DP_ERR_RETRYABLE)
        dp_breaker_failure(c->breaker);
    else
        dp_breaker_success(c->breaker);
    if (rc != DP_OK && dp_log_enabled(DP_LOG_DEBUG))
        dp_logj(DP_LOG_DEBUG, NULL,
                json_pack("{s:s, s:s}", "service", "tika", "result", dp_err2str(rc)), "%s",
                err ? err : "tika call failed");
    return take_text(rc, &sink, text, text_len, err, errlen);
}

/*
 * embed_client: OpenAI-compatible embeddings over libcurl multi (see
 * embed_client.h for the contract).
 *
 * dp_embed_run is one event loop: it starts jobs into free slots (one easy
 * handle each, kept for the client's life) while the rate limiter and the
 * breaker let it, waits in curl_multi_poll for the next answer or the next
 * rate-limit opening, and classifies each answer as it comes.  When the
 * breaker is open it stops at once, abandoning what is still in flight.
 * While a half-open probe is out no other request starts: its outcome
 * decides whether the rest go ahead or are refused.
 */
#include "embed_client.h"

#include "services.h"

#include <ctype.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>

#include "chunker.h"
#include "http_alive.h"
#include "ids.h"
#include "clock.h"
#include "log.h"
#include "redact.h"

struct buf {
    CURL *easy;  /* whose reply this is: its Content-Length sizes p */
    char *p;
    size_t len, cap, max;
    int over;   /* the reply outgrew max: the transfer was stopped */
    dp_embed_client *client; /* a slot's reply: counted in client->buffered */
    int paused;  /* waiting, unread, for room under client->buffer_max */
};

struct slot {
    CURL *easy;
    dp_embed_job *job;  /* NULL: free */
    int is_probe;
    char *req;          /* request body, owned while in flight */
    struct buf resp;
    char curl_err[CURL_ERROR_SIZE];
    struct timespec started;
};

struct dp_embed_client {
    pthread_mutex_t run_mu;  /* one dp_embed_run at a time */
    dp_service *svc;         /* its figures in the metrics */
    char *endpoint;          /* {embed_url}/v1/embeddings */
    char *models;            /* {embed_url}/v1/models: is the service up */
    char *model;
    const char *encoding;   /* "float" or "base64" */
    int dim;
    int inflight;
    size_t buffered;         /* reply bytes held by the slots (their capacity) */
    size_t buffered_peak;
    size_t buffer_max;       /* embed_buffer_kb */
    int npaused;             /* replies paused until there is room */
    long timeout_ms;
    struct curl_slist *headers;
    CURLM *multi;
    struct slot *slots;      /* inflight of them; easy handles made on first use */
    dp_breaker *breaker;
    dp_ratelimit *rl;
    pthread_mutex_t stats_mu; /* readable while a run goes on */
    dp_embed_stats stats;
};

/* ------------------------------------------------------------------------
 * Setup.
 * ---------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void) { curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT); }

int dp_embed_rate_key(const dp_config *cfg, char *out, size_t outlen)
{
    const char *url = cfg->embed_url ? cfg->embed_url : "";
    char shown[400];
    dp_redact_url(url, shown, sizeof(shown));
    size_t n = strlen(shown);
    while (n && shown[n - 1] == '/')
        shown[--n] = '\0';
    /* The account is the API key: 16 hex digits of its SHA-256 tell keys
     * apart without revealing one. */
    char hex[DP_SHA256_HEX_SIZE] = "none";
    const char *k = cfg->embed_api_key ? cfg->embed_api_key : "";
    if (*k && dp_sha256_hex(k, strlen(k), hex) != DP_OK)
        return -1;
    if (*k)
        hex[16] = '\0';
    int w = snprintf(out, outlen, "embeddings %s %s key:%s", shown,
                     cfg->embed_model ? cfg->embed_model : "", hex);
    return w < 0 || (size_t)w >= outlen ? -1 : 0;
}

dp_err dp_embed_client_new(const dp_config *cfg, dp_embed_client **out, char *err,
                           size_t errlen)
{
    *out = NULL;
    if (!cfg->embed_url || !*cfg->embed_url)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "embed_url is empty");
    if (cfg->embed_dim < 1)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "embed_dim must be >= 1, got %d",
                       cfg->embed_dim);
    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "curl_global_init: %s",
                       curl_easy_strerror(curl_init_rc));

    dp_embed_client *c = calloc(1, sizeof(*c));
    if (!c)
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    pthread_mutex_init(&c->run_mu, NULL);
    pthread_mutex_init(&c->stats_mu, NULL);
    c->dim = cfg->embed_dim;
    c->inflight = cfg->embed_inflight > 0 ? cfg->embed_inflight : 1;
    c->timeout_ms = cfg->embed_timeout_ms > 0 ? cfg->embed_timeout_ms : 60000;
    c->buffer_max = (size_t)(cfg->embed_buffer_kb > 0 ? cfg->embed_buffer_kb : 2048) * 1024;

    const char *url = cfg->embed_url;
    size_t ulen = strlen(url);
    while (ulen && url[ulen - 1] == '/')
        ulen--;
    if (asprintf(&c->endpoint, "%.*s/v1/embeddings", (int)ulen, url) < 0)
        c->endpoint = NULL;
    if (asprintf(&c->models, "%.*s/v1/models", (int)ulen, url) < 0)
        c->models = NULL;
    c->model = strdup(cfg->embed_model ? cfg->embed_model : "text-embedding-3-small");
    c->encoding = cfg->embed_encoding && strcmp(cfg->embed_encoding, "float") == 0
                      ? "float" : "base64";

    struct curl_slist *h = NULL, *t;
    const char *fixed[] = {"Content-Type: application/json", "Accept: application/json",
                           "Expect:" /* no 100-continue round trip on big bodies */};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if ((t = curl_slist_append(h, fixed[i])))
            h = t;
    if (cfg->embed_api_key && *cfg->embed_api_key) {
        char *auth = NULL;
        if (asprintf(&auth, "Authorization: Bearer %s", cfg->embed_api_key) >= 0) {
            if ((t = curl_slist_append(h, auth)))
                h = t;
            free(auth);
        }
    }
    c->headers = h;

    c->multi = curl_multi_init();
    c->slots = calloc((size_t)c->inflight, sizeof(*c->slots));
    c->breaker = dp_breaker_new("embeddings", cfg->breaker_threshold, cfg->breaker_reset_ms);
    c->svc = dp_service_get("embeddings");
    c->rl = dp_ratelimit_new(cfg->embed_rpm, cfg->embed_tpm);
    if (!c->endpoint || !c->models || !c->model || !c->headers || !c->multi || !c->slots || !c->breaker ||
        !c->rl) {
        dp_embed_client_free(c);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
    }
    if (cfg->embed_rate_scope && strcmp(cfg->embed_rate_scope, "shared") == 0 &&
        cfg->database_url && *cfg->database_url) {
        char key[600];
        if (dp_embed_rate_key(cfg, key, sizeof(key)) != 0 ||
            dp_ratelimit_share(c->rl, cfg->database_url, key) != 0) {
            dp_embed_client_free(c);
            return dp_errf(DP_ERR_RETRYABLE, err, errlen, "out of memory");
        }
    }
    /* Keep a connection per slot alive between runs. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)c->inflight);
    *out = c;
    return DP_OK;
}

static int64_t ms_since(const struct timespec *t0);

void dp_embed_client_free(dp_embed_client *c)
{
    if (!c)
        return;
    for (int i = 0; c->slots && i < c->inflight; i++) {
        struct slot *s = &c->slots[i];
        if (s->easy) {
            if (s->job) {
                curl_multi_remove_handle(c->multi, s->easy);
                dp_service_end(c->svc, (double)ms_since(&s->started) / 1000.0, 0);
            }
            curl_easy_cleanup(s->easy);
        }
        free(s->req);
        free(s->resp.p);
    }
    free(c->slots);
    if (c->multi)
        curl_multi_cleanup(c->multi);
    curl_slist_free_all(c->headers);
    dp_breaker_free(c->breaker);
    dp_ratelimit_free(c->rl);
    free(c->endpoint);
    free(c->models);
    free(c->model);
    pthread_mutex_destroy(&c->run_mu);
    pthread_mutex_destroy(&c->stats_mu);
    free(c);
}

dp_breaker *dp_embed_client_breaker(dp_embed_client *c) { return c->breaker; }

dp_ratelimit *dp_embed_client_ratelimit(dp_embed_client *c) { return c->rl; }

int dp_embed_client_alive(dp_embed_client *c)
{
    int up = dp_http_alive(c->models, c->headers,
                           c->timeout_ms < 5000 ? c->timeout_ms : 5000);
    if (!up)
        dp_breaker_failure(c->breaker);
    return up;
}

void dp_embed_client_stats(dp_embed_client *c, dp_embed_stats *out)
{
    pthread_mutex_lock(&c->stats_mu);
    *out = c->stats;
    pthread_mutex_unlock(&c->stats_mu);
    out->reply_bytes_peak = (int64_t)c->buffered_peak; /* the run's thread's */
}

/* Resumes the replies paused for lack of room; each is paused again at
 * once by collect() if there is still none. */
static void resume_paused(dp_embed_client *c)
{
    if (!c->npaused || (c->buffered && c->buffered >= c->buffer_max))
        return;
    for (int i = 0; i < c->inflight; i++) {
        struct slot *s = &c->slots[i];
        if (s->job && s->resp.paused) {
            s->resp.paused = 0;
            c->npaused--;
            curl_easy_pause(s->easy, CURLPAUSE_CONT);
        }
    }
}

/* ------------------------------------------------------------------------
 * Requests.
 * ---------------------------------------------------------------------- */

int64_t dp_embed_job_tokens(const dp_embed_job *job)
{
    int64_t sum = 0;
    for (size_t i = 0; i < job->n; i++)
        if (job->texts[i])
            sum += (int64_t)dp_embed_estimate_tokens(job->texts[i], strlen(job->texts[i]));
    return sum > 0 ? sum : 1;
}

static size_t collect(char *data, size_t size, size_t n, void *arg)
{
    struct buf *b = arg;
    size_t add = size * n;
    if (b->len + add > b->max) {
        b->over = 1;
        return 0; /* CURLE_WRITE_ERROR */
    }
    dp_embed_client *c = b->client;
    if (c && !b->cap) {
        /* A reply starts: it is read only if the replies already held
         * leave room for it (or nothing is held: one always proceeds).
         * Otherwise it waits in the socket, paused, and is resumed once
         * earlier replies are stored and freed (resume_paused). */
        curl_off_t announced = -1;
        curl_easy_getinfo(b->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
        size_t need = announced > 0 ? (size_t)announced : add;
        if (c->buffered && c->buffered + need > c->buffer_max) {
            if (!b->paused) {
                b->paused = 1;
                c->npaused++;
            }
            return CURL_WRITEFUNC_PAUSE;
        }
    }
    if (b->len + add + 1 > b->cap) {
        /* The first piece: room for the announced length at once, so a
         * reply of hundreds of kilobytes is neither copied while it grows
         * nor held in a buffer up to twice its size. */
        curl_off_t announced = -1;
        if (!b->cap && b->easy)
            curl_easy_getinfo(b->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
        size_t cap = b->cap ? b->cap : 16384;
        if (announced > 0 && (size_t)announced < b->max && (size_t)announced + 1 > cap)
            cap = (size_t)announced + 1;
        while (cap < b->len + add + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p)
            return 0;
        if (c) {
            c->buffered += cap - b->cap;
            if (c->buffered > c->buffered_peak)
                c->buffered_peak = c->buffered;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, add);
    b->len += add;
    b->p[b->len] = '\0';
    return add;
}

/* The request body, or NULL with job->result/error set (permanent). */
static char *request_body(dp_embed_client *c, dp_embed_job *job, size_t *len)
{
    json_t *input = json_array();
    for (size_t i = 0; input && i < job->n; i++) {
        const char *t = job->texts[i];
        json_t *s = t ? json_stringn(t, strlen(t)) : NULL;
        if (!s) {
            json_decref(input);
            job->result = dp_errf(DP_ERR_PERMANENT, job->error, sizeof(job->error),
                                  "embeddings: text %zu of %zu is %s", i, job->n,
                                  t ? "not valid UTF-8" : "NULL");
            return NULL;
        }
        json_array_append_new(input, s);
    }
    json_t *o = json_pack("{s:s, s:o, s:s}", "model", c->model, "input", input,
                          "encoding_format", c->encoding);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                              "embeddings: out of memory building the request");
        return NULL;
    }
    *len = strlen(body);
    return body;
}

static CURL *slot_easy(dp_embed_client *c, struct slot *s)
{
    if (s->easy)
        return s->easy;
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_URL, c->endpoint);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &s->resp);
    s->resp.easy = e;
    s->resp.client = c;
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, s->curl_err);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, c->timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->timeout_ms < 10000 ? c->timeout_ms : 10000L);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, ""); /* whatever libcurl can decode */
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    s->easy = e;
    return e;
}

static struct slot *free_slot(dp_embed_client *c)
{
    for (int i = 0; i < c->inflight; i++)
        if (!c->slots[i].job)
            return &c->slots[i];
    return NULL;
}

static int64_t ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Sends body (taking it) for job on slot s; 0, or -1 with job failed. */
static int slot_start(dp_embed_client *c, struct slot *s, dp_embed_job *job, char *body,
                      size_t len, int is_probe)
{
    CURL *e = slot_easy(c, s);
    s->job = job;
    s->is_probe = is_probe;
    s->req = body;
    s->resp.len = 0;
    s->resp.over = 0;
    /* Room for the reply: ~25 bytes per number, with slack for the rest. */
    s->resp.max = ((size_t)1 << 20) + job->n * (size_t)c->dim * 64;
    s->curl_err[0] = '\0';
    clock_gettime(CLOCK_MONOTONIC, &s->started);
    CURLMcode mc = CURLM_OUT_OF_MEMORY;
    if (e) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        mc = curl_multi_add_handle(c->multi, e);
    }
    if (mc == CURLM_OK) {
        dp_service_begin(c->svc);
        return 0;
    }
    job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                          "embeddings: cannot start a request: %s", curl_multi_strerror(mc));
    dp_breaker_failure(c->breaker); /* it let the call through: report back */
    s->job = NULL;
    free(s->req);
    s->req = NULL;
    return -1;
}

static void slot_release(struct slot *s)
{
    s->job = NULL;
    s->is_probe = 0;
    free(s->req);
    s->req = NULL;
    dp_embed_client *c = s->resp.client;
    if (c) {
        c->buffered -= s->resp.cap;
        if (s->resp.paused)
            c->npaused--;
        s->resp.paused = 0;
    }
    /* A reply can be megabytes: keep no slot's capacity between runs. */
    free(s->resp.p);
    s->resp.p = NULL;
    s->resp.len = s->resp.cap = 0;
}

/* ------------------------------------------------------------------------
 * Answers.
 * ---------------------------------------------------------------------- */

/* Retry-After: delay-seconds or an HTTP date; -1 if absent or unreadable. */
static int64_t retry_after_ms(CURL *e)
{
    struct curl_header *h = NULL;
    if (curl_easy_header(e, "Retry-After", 0, CURLH_HEADER, -1, &h) != CURLHE_OK || !h)
        return -1;
    const char *v = h->value;
    while (isspace((unsigned char)*v))
        v++;
    if (isdigit((unsigned char)*v)) {
        char *end = NULL;
        long long s = strtoll(v, &end, 10);
        while (end && isspace((unsigned char)*end))
            end++;
        if (end && *end == '\0' && s >= 0 && s < INT64_MAX / 1000)
            return (int64_t)s * 1000;
        return -1;
    }
    time_t when = curl_getdate(v, NULL);
    if (when == (time_t)-1)
        return -1;
    time_t now = time(NULL);
    return when > now ? (int64_t)(when - now) * 1000 : 0;
}

/* The server's own words for an error reply: error.message, else the body. */
static void reply_message(const struct buf *b, char *out, size_t outlen)
{
    out[0] = '\0';
    if (!b->len)
        return;
    json_t *root = json_loadb(b->p, b->len, 0, NULL);
    const char *msg = json_string_value(json_object_get(json_object_get(root, "error"),
                                                        "message"));
    if (!msg)
        msg = json_string_value(json_object_get(root, "error"));
    /* Quoted as valid UTF-8 on one line: 200 bytes of the body, or a
     * message cut at outlen, could end inside a character, and the message
     * goes to PostgreSQL (as in the Tika client). */
    if (outlen > 2) {
        memcpy(out, ": ", 3);
        if (msg)
            dp_err_quote(out + 2, outlen - 2, msg, strlen(msg));
        else
            dp_err_quote(out + 2, outlen - 2, b->p, b->len < 200 ? b->len : 200);
    }
    json_decref(root);
}

static int is_base64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* base64 of little-endian float32s into dim doubles; returns the count
 * decoded, or -1 if the text is not base64. */
static long decode_base64_floats(const char *text, size_t len, double *out, int dim)
{
    if (len % 4)
        return -1;
    /* EVP_DecodeBlock skips whitespace at both ends and takes an '=' in the
     * middle for zero bits, so "\t\t\t\tAAAAAAAAAAAAAAAA" or "AAA=AAAA..."
     * would pass for a vector (tests/fuzz/regressions/embed_reply): only
     * the base64 alphabet, padded by at most two final '=', is one. */
    size_t pad = 0;
    while (pad < 2 && pad < len && text[len - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < len - pad; i++)
        if (!is_base64_char(text[i]))
            return -1;
    unsigned char *bytes = malloc(len / 4 * 3 + 1);
    if (!bytes)
        return -1;
    int n = len ? EVP_DecodeBlock(bytes, (const unsigned char *)text, (int)len) : 0;
    if (n < 0) {
        free(bytes);
        return -1;
    }
    /* EVP_DecodeBlock counts the padding as zero bytes. */
    for (size_t i = len; i > 0 && text[i - 1] == '='; i--)
        n--;
    long count = n % 4 ? -1 : n / 4;
    for (long i = 0; count > 0 && i < count && i < dim; i++) {
        const unsigned char *b = bytes + 4 * i;
        uint32_t u = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 |
                     (uint32_t)b[3] << 24;
        float f;
        memcpy(&f, &u, sizeof(f));
        out[i] = (double)f;
    }
    free(bytes);
    return count;
}

/*
 * Base64 embeddings without jansson reading them.  A reply carries one
 * base64 string of ~8 KB per input; jansson lexes, checks and copies each one
 * byte by byte, which was half of the embed stage's CPU.  So before parsing,
 * the reply is copied with every string value of an "embedding" key replaced
 * by "\u0000<k>" and its text remembered as slice k (a pointer into the
 * reply): jansson then parses the small rest, and the vectors are decoded
 * straight from the reply.  String boundaries are found honouring escapes,
 * so a key spelled inside another string is not mistaken for one; a value
 * with an escape in it is left to jansson ("\/" is legal JSON for "/").
 *
 * The mark starts with a NUL so that no string of the reply can pass for
 * one: the copy is parsed with JSON_ALLOW_NUL, and a reply that itself
 * holds a \u0000 is parsed as it is, without the flag, which refuses it as
 * jansson always did.  (The mark used to be "#<k>": a reply whose second
 * embedding was the string "#0" got the first one's vector;
 * tests/fuzz/regressions/embed_reply.)
 */
struct slices {
    char *skeleton;          /* the reply, embedding strings cut out */
    size_t len;
    struct slice {
        const char *at;      /* slice k: its text in the reply */
        size_t n;
    } *cut;
    size_t count, cap;
    int nul;                 /* a string of the reply holds \u0000 */
};

static const char *string_end(const char *p, const char *end, int *escaped, int *nul)
{
    /* p is just past an opening quote; returns the closing quote or NULL. */
    *escaped = 0;
    for (; p < end; p++) {
        if (*p == '\\') {
            *escaped = 1;
            if (end - p >= 6 && memcmp(p + 1, "u0000", 5) == 0)
                *nul = 1;
            p++;
        } else if (*p == '"') {
            return p;
        }
    }
    return NULL;
}

static int only_base64(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!is_base64_char(p[i]) && p[i] != '=')
            return 0;
    return 1;
}

static int cut_embeddings(const char *reply, size_t len, struct slices *sl)
{
    memset(sl, 0, sizeof(*sl));
    if (!(sl->skeleton = malloc(len + 1)))
        return -1;
    const char *p = reply, *end = reply + len;
    char *o = sl->skeleton;
    int after_key = 0;       /* the last string was the key "embedding" */
    while (p < end) {
        char ch = *p;
        if (ch != '"') {
            if (after_key && ch != ':' && ch != ' ' && ch != '\t' && ch != '\n' &&
                ch != '\r')
                after_key = 0;
            *o++ = *p++;
            continue;
        }
        int escaped;
        const char *close = string_end(p + 1, end, &escaped, &sl->nul);
        if (!close)
            break;            /* unterminated: let jansson report it */
        size_t n = (size_t)(close - p - 1);
        /* Only a plain base64 string is cut: one with any other byte (a
         * control character, invalid UTF-8) makes the reply invalid JSON,
         * which jansson must see to call it so (retryable), rather than a
         * bad vector (permanent).  Found by tests/fuzz/fuzz_embed_reply.c. */
        if (after_key && !escaped && n >= 24 && only_base64(p + 1, n)) {
            /* The mark (8 bytes and the digits of k) never outgrows it. */
            if (sl->count == sl->cap) {
                size_t cap = sl->cap ? sl->cap * 2 : 64;
                struct slice *cut = realloc(sl->cut, cap * sizeof(*cut));
                if (!cut)
                    return -1;
                sl->cut = cut;
                sl->cap = cap;
            }
            sl->cut[sl->count] = (struct slice){p + 1, n};
            o += sprintf(o, "\"\\u0000%zu\"", sl->count++);
            after_key = 0;
        } else {
            after_key = !escaped && n == 9 && memcmp(p + 1, "embedding", 9) == 0;
            memcpy(o, p, n + 2);
            o += n + 2;
        }
        p = close + 1;
    }
    while (p < end)
        *o++ = *p++;
    *o = '\0';
    sl->len = (size_t)(o - sl->skeleton);
    return 0;
}

static void slices_free(struct slices *sl)
{
    free(sl->skeleton);
    free(sl->cut);
}

/* A 2xx body into job->vectors; the job's result. */
static dp_err parse_reply(dp_embed_client *c, dp_embed_job *job, const struct buf *b)
{
    char *err = job->error;
    size_t errlen = sizeof(job->error);
    json_error_t je;
    struct slices sl;
    if (cut_embeddings(b->p ? b->p : "", b->len, &sl) != 0) {
        slices_free(&sl);
        return dp_errf(DP_ERR_RETRYABLE, err, errlen, "embeddings: out of memory");
    }
    json_t *root = sl.nul ? NULL : json_loadb(sl.skeleton, sl.len, JSON_ALLOW_NUL, &je);
    if (!root) {
        /* Report where the reply itself breaks, not where its copy does. */
        json_t *again = json_loadb(b->p ? b->p : "", b->len, 0, &je);
        json_decref(again);
        slices_free(&sl);
        char why[sizeof(je.text)];
        dp_err_quote(why, sizeof(why), je.text, strlen(je.text)); /* it quotes the reply */
        return dp_errf(DP_ERR_RETRYABLE, err, errlen,
                       "embeddings: HTTP %d reply is not JSON (%s at byte %d)",
                       job->http_status, why, je.position);
    }
    dp_err rc = DP_OK;
    float *vec = NULL;
    char *shas = NULL;
    double *row = NULL;      /* one vector as the service sent it */
    unsigned char *seen = NULL;
    json_t *data = json_object_get(root, "data");
    if (!json_is_array(data)) {
        rc = dp_errf(DP_ERR_PERMANENT, err, errlen, "embeddings: reply has no data array");
        goto out;
    }
    if (json_array_size(data) != job->n) {
        rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                     "embeddings: reply has %zu embeddings for %zu inputs",
                     json_array_size(data), job->n);
        goto out;
    }
    size_t dim = (size_t)c->dim;
    vec = malloc(job->n * dim * sizeof(float));
    shas = malloc(job->n * DP_SHA256_HEX_SIZE);
    row = malloc(dim * sizeof(double));
    seen = calloc(job->n, 1);
    if (!vec || !shas || !row || !seen) {
        rc = dp_errf(DP_ERR_RETRYABLE, err, errlen, "embeddings: out of memory");
        goto out;
    }
    size_t i;
    json_t *item;
    json_array_foreach(data, i, item)
    {
        json_t *jindex = json_object_get(item, "index");
        json_int_t idx = jindex ? (json_is_integer(jindex) ? json_integer_value(jindex) : -1)
                                : (json_int_t)i;
        if (idx < 0 || (size_t)idx >= job->n || seen[idx]) {
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "embeddings: data[%zu] has a bad or repeated index", i);
            goto out;
        }
        seen[idx] = 1;
        double *dst = row;
        json_t *emb = json_object_get(item, "embedding");
        if (json_is_array(emb)) {
            if (json_array_size(emb) != dim) {
                rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                             "embeddings: dimension mismatch: input %lld has %zu values, "
                             "embed_dim is %d",
                             (long long)idx, json_array_size(emb), c->dim);
                goto out;
            }
            for (size_t k = 0; k < dim; k++) {
                json_t *x = json_array_get(emb, k);
                if (!json_is_number(x)) {
                    rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                                 "embeddings: input %lld value %zu is not a number",
                                 (long long)idx, k);
                    goto out;
                }
                dst[k] = json_number_value(x);
            }
        } else if (json_is_string(emb)) {
            const char *text = json_string_value(emb);
            size_t tlen = json_string_length(emb);
            size_t k;
            char tail;
            if (tlen > 1 && text[0] == '\0' && sscanf(text + 1, "%zu%c", &k, &tail) == 1 &&
                k < sl.count) {
                text = sl.cut[k].at;   /* cut out by cut_embeddings */
                tlen = sl.cut[k].n;
            }
            long got = decode_base64_floats(text, tlen, dst, c->dim);
            if (got < 0) {
                rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                             "embeddings: input %lld embedding is a string but not base64 "
                             "float32",
                             (long long)idx);
                goto out;
            }
            if (got != c->dim) {
                rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                             "embeddings: dimension mismatch: input %lld has %ld values, "
                             "embed_dim is %d",
                             (long long)idx, got, c->dim);
                goto out;
            }
        } else {
            rc = dp_errf(DP_ERR_PERMANENT, err, errlen,
                         "embeddings: input %lld has no embedding array or base64 string",
                         (long long)idx);
            goto out;
        }
        /* The sha of the exact values; float32 is what real[] keeps. */
        if (dp_vector_sha256(row, dim, shas + (size_t)idx * DP_SHA256_HEX_SIZE)) {
            rc = dp_errf(DP_ERR_RETRYABLE, err, errlen, "embeddings: vector sha failed");
            goto out;
        }
        float *out = vec + (size_t)idx * dim;
        for (size_t k = 0; k < dim; k++)
            out[k] = (float)row[k];
    }
    job->vectors = vec;
    job->shas = shas;
    job->dim = c->dim;
    vec = NULL;
    shas = NULL;
    job->error[0] = '\0';
out:
    free(vec);
    free(shas);
    free(row);
    free(seen);
    json_decref(root);
    slices_free(&sl);
    return rc;
}

dp_err dp_embed_client_parse(dp_embed_client *c, dp_embed_job *job, const char *body,
                             size_t len)
{
    struct buf b = {0};
    b.p = (char *)body;
    b.len = len;
    job->vectors = NULL;
    job->shas = NULL;
    job->result = parse_reply(c, job, &b);
    return job->result;
}

/* Classifies a finished transfer into its job and tells the breaker. */
static void slot_finish(dp_embed_client *c, struct slot *s, CURLcode cc)
{
    dp_embed_job *job = s->job;
    long status = 0;
    curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &status);
    job->http_status = (int)status;
    job->retry_after_ms = status ? retry_after_ms(s->easy) : -1;
    char said[300];
    if (cc != CURLE_OK) {
        if (s->resp.over)
            job->result = dp_errf(DP_ERR_PERMANENT, job->error, sizeof(job->error),
                                  "embeddings: reply larger than %zu bytes", s->resp.max);
        else
            job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                                  "embeddings: %s after %lld ms (%s)", curl_easy_strerror(cc),
                                  (long long)ms_since(&s->started),
                                  s->curl_err[0] ? s->curl_err : c->endpoint);
    } else if (status >= 200 && status < 300) {
        job->result = parse_reply(c, job, &s->resp);
    } else {
        int retryable = status == 408 || status == 429 || status >= 500;
        reply_message(&s->resp, said, sizeof(said));
        job->result = dp_errf(retryable ? DP_ERR_RETRYABLE : DP_ERR_PERMANENT, job->error,
                              sizeof(job->error), "embeddings: HTTP %ld from %s%s", status,
                              c->endpoint, said);
    }
    long connects = 0;
    curl_easy_getinfo(s->easy, CURLINFO_NUM_CONNECTS, &connects);
    pthread_mutex_lock(&c->stats_mu);
    c->stats.requests++;
    c->stats.connects += connects;
    c->stats.ok += job->result == DP_OK;
    c->stats.retryable += job->result == DP_ERR_RETRYABLE;
    c->stats.permanent += job->result == DP_ERR_PERMANENT;
    pthread_mutex_unlock(&c->stats_mu);
    if (job->result == DP_ERR_RETRYABLE)
        dp_breaker_failure(c->breaker);
    else
        dp_breaker_success(c->breaker);
    if (job->result != DP_OK && dp_log_enabled(DP_LOG_DEBUG))
        dp_logj(DP_LOG_DEBUG, NULL,
                json_pack("{s:s, s:i, s:s}", "service", "embeddings", "http_status",
                          job->http_status, "result", dp_err2str(job->result)),
                "%s", job->error);
    slot_release(s);
}

/* ------------------------------------------------------------------------
 * The loop.
 * ---------------------------------------------------------------------- */

static void refuse(dp_embed_client *c, dp_embed_job *job, const char *how)
{
    job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                          "circuit breaker open: embeddings %s", how);
    job->retry_after_ms = dp_breaker_retry_in_ms(c->breaker);
    pthread_mutex_lock(&c->stats_mu);
    c->stats.refused++;
    pthread_mutex_unlock(&c->stats_mu);
}

dp_err dp_embed_run(dp_embed_client *c, dp_embed_job *jobs, size_t njobs)
{
    return dp_embed_run_each(c, jobs, njobs, NULL, NULL);
}

dp_err dp_embed_run_each(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                         dp_embed_done_fn done, void *arg)
{
    return dp_embed_run_hooks(c, jobs, njobs, NULL, done, arg);
}

dp_err dp_embed_run_hooks(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                          dp_embed_prepare_fn prepare, dp_embed_done_fn done,
                          void *arg)
{
    return dp_embed_run_until(c, jobs, njobs, prepare, done, arg, 0);
}

dp_err dp_embed_run_until(dp_embed_client *c, dp_embed_job *jobs, size_t njobs,
                          dp_embed_prepare_fn prepare, dp_embed_done_fn done,
                          void *arg, int64_t deadline_ms)
{
    pthread_mutex_lock(&c->run_mu);
    for (size_t i = 0; i < njobs; i++) {
        jobs[i].vectors = NULL;
        jobs[i].shas = NULL;
        jobs[i].dim = 0;
        jobs[i].result = DP_OK;
        jobs[i].http_status = 0;
        jobs[i].retry_after_ms = -1;
        jobs[i].not_sent = 0;
        jobs[i].error[0] = '\0';
    }
    int stopped = 0;        /* the deadline: send nothing more */
    int64_t stopped_wait = 0; /* then, the limiter's wait for jobs[next] */

    int msgs_left = 0;      /* finished transfers not yet read from multi */
    size_t next = 0;        /* first job not started */
    int running = 0;
    int probe_out = 0;      /* our half-open probe is in flight */
    int cut = 0;            /* the breaker opened: stop */
    char *pending = NULL;   /* body of jobs[next], built but held by the limiter */
    size_t pending_len = 0;

    for (;;) {
        int64_t wait_ms = -1;
        while (!cut && !stopped && !probe_out && next < njobs &&
               running < c->inflight) {
            dp_embed_job *job = &jobs[next];
            if (job->n == 0) {
                job->dim = c->dim;
                next++;
                continue;
            }
            if (deadline_ms > 0 && dp_clock_mono_ms(NULL) >= deadline_ms) {
                stopped = 1;
                break;
            }
            if (dp_breaker_state_now(c->breaker) == DP_BREAKER_OPEN) {
                cut = 1;
                break;
            }
            if (!pending && prepare && prepare(job, arg) != 0) {
                next++; /* failed on its own; prepare set why */
                continue;
            }
            if (!pending && !(pending = request_body(c, job, &pending_len))) {
                next++; /* failed on its own */
                continue;
            }
            int64_t tokens = dp_embed_job_tokens(job);
            int64_t w = dp_ratelimit_try(c->rl, tokens > INT_MAX ? INT_MAX : (int)tokens);
            if (w > 0) {
                dp_service_throttled(c->svc);
                wait_ms = w;
                if (deadline_ms > 0 && dp_clock_mono_ms(NULL) + w >= deadline_ms) {
                    /* Admitted only after the deadline: left for later. */
                    stopped = 1;
                    stopped_wait = w;
                }
                break;
            }
            int is_probe = 0;
            if (!dp_breaker_allow_call(c->breaker, &is_probe)) {
                cut = 1;
                break;
            }
            char *body = pending;
            pending = NULL;
            next++;
            if (slot_start(c, free_slot(c), job, body, pending_len, is_probe) == 0) {
                running++;
                probe_out = is_probe;
            }
        }
        if (cut || (next >= njobs && running == 0) || (stopped && running == 0))
            break;

        int timeout = 1000;
        if (wait_ms >= 0 && wait_ms < timeout)
            timeout = (int)wait_ms;
        /* Answers still queued from the last read are handled first, one
         * at a time: each frees a slot that is refilled at once, so the
         * requests stay spread out instead of leaving and coming back in
         * waves. */
        if (!msgs_left)
            curl_multi_poll(c->multi, NULL, 0, timeout, NULL);
        int still = 0;
        curl_multi_perform(c->multi, &still);
        CURLMsg *msg;
        int left = 0;
        msgs_left = 0;
        while ((msg = curl_multi_info_read(c->multi, &left))) {
            if (msg->msg != CURLMSG_DONE)
                continue;
            char *priv = NULL;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
            struct slot *s = (struct slot *)priv;
            CURLcode cc = msg->data.result;
            curl_multi_remove_handle(c->multi, msg->easy_handle);
            if (s->is_probe)
                probe_out = 0;
            dp_embed_job *job = s->job;
            slot_finish(c, s, cc);
            dp_service_end(c->svc, (double)ms_since(&s->started) / 1000.0,
                           cc == CURLE_OK && job->http_status > 0 &&
                           job->http_status < 500);
            running--;
            if (done && job->result == DP_OK)
                done(job, arg);
            if (left > 0 && next < njobs) {
                msgs_left = left;
                break;
            }
        }
        resume_paused(c);
        if ((running > 0 || next < njobs) &&
            dp_breaker_state_now(c->breaker) == DP_BREAKER_OPEN)
            cut = 1;
    }
    free(pending);

    if (stopped && !cut) {
        for (; next < njobs; next++) {
            dp_embed_job *job = &jobs[next];
            job->not_sent = 1;
            job->retry_after_ms = stopped_wait;
            job->result = dp_errf(DP_ERR_RETRYABLE, job->error, sizeof(job->error),
                                  "embeddings: not sent, the pass's time is up%s",
                                  stopped_wait ? " (held by the rate limit)" : "");
        }
    }
    if (cut) {
        for (int i = 0; i < c->inflight; i++) {
            struct slot *s = &c->slots[i];
            if (!s->job)
                continue;
            curl_multi_remove_handle(c->multi, s->easy);
            dp_service_end(c->svc, (double)ms_since(&s->started) / 1000.0, 0);
            refuse(c, s->job, "is refusing calls (request abandoned in flight)");
            slot_release(s);
        }
        for (; next < njobs; next++)
            refuse(c, &jobs[next], "is refusing calls (request not sent)");
        dp_logj(DP_LOG_WARN, NULL,
                json_pack("{s:s, s:I}", "service", "embeddings", "retry_in_ms",
                          (json_int_t)dp_breaker_retry_in_ms(c->breaker)),
                "embeddings circuit breaker open: stopped a run of %zu jobs", njobs);
    }
    pthread_mutex_unlock(&c->run_mu);
    return cut ? DP_ERR_RETRYABLE : DP_OK;
}

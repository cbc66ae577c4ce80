/* ratelimit: sliding-window request and token limits (see ratelimit.h). */
#include "ratelimit.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"

struct entry {
    int64_t at;     /* admission time, ms */
    int64_t tokens;
};

struct dp_ratelimit {
    pthread_mutex_t mu;
    int64_t rpm, tpm;       /* <= 0: unlimited */
    struct entry *ring;     /* the window's admissions, oldest at head */
    size_t cap, head, len;
    int64_t window_tokens;  /* sum of tokens over the ring */
    int64_t (*now_ms)(void *arg);
    void *clock_arg;
    /* Shared: NULL conninfo means not shared. */
    char *conninfo, *key;
    PGconn *conn;
    int64_t retry_at;       /* monotonic ms: no shared attempt before */
    int shared_ok;          /* the last decision came from the shared log */
    int warned;             /* the fallback was logged (until it recovers) */
};

dp_ratelimit *dp_ratelimit_new(int requests_per_min, int tokens_per_min)
{
    dp_ratelimit *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return NULL;
    pthread_mutex_init(&rl->mu, NULL);
    rl->rpm = requests_per_min;
    rl->tpm = tokens_per_min;
    rl->now_ms = dp_clock_mono_ms;
    return rl;
}

void dp_ratelimit_free(dp_ratelimit *rl)
{
    if (!rl)
        return;
    pthread_mutex_destroy(&rl->mu);
    if (rl->conn)
        PQfinish(rl->conn);
    free(rl->conninfo);
    free(rl->key);
    free(rl->ring);
    free(rl);
}

void dp_ratelimit_set_clock(dp_ratelimit *rl, int64_t (*now_ms)(void *arg), void *arg)
{
    pthread_mutex_lock(&rl->mu);
    rl->now_ms = now_ms ? now_ms : dp_clock_mono_ms;
    rl->clock_arg = now_ms ? arg : NULL;
    pthread_mutex_unlock(&rl->mu);
}

static struct entry *at(dp_ratelimit *rl, size_t i)
{
    return &rl->ring[(rl->head + i) % rl->cap];
}

/* Drops admissions that have left the window. */
static void expire(dp_ratelimit *rl, int64_t now)
{
    while (rl->len && now - at(rl, 0)->at >= DP_RATELIMIT_WINDOW_MS) {
        rl->window_tokens -= at(rl, 0)->tokens;
        rl->head = (rl->head + 1) % rl->cap;
        rl->len--;
    }
}

static int push(dp_ratelimit *rl, int64_t now, int64_t tokens)
{
    if (rl->len == rl->cap) {
        size_t cap = rl->cap ? rl->cap * 2 : 64;
        struct entry *ring = malloc(cap * sizeof(*ring));
        if (!ring)
            return -1;
        for (size_t i = 0; i < rl->len; i++)
            ring[i] = *at(rl, i);
        free(rl->ring);
        rl->ring = ring;
        rl->cap = cap;
        rl->head = 0;
    }
    *at(rl, rl->len) = (struct entry){now, tokens};
    rl->len++;
    rl->window_tokens += tokens;
    return 0;
}

/* ms until admission i leaves the window. */
static int64_t until_expired(dp_ratelimit *rl, size_t i, int64_t now)
{
    return at(rl, i)->at + DP_RATELIMIT_WINDOW_MS - now;
}

int dp_ratelimit_share(dp_ratelimit *rl, const char *conninfo, const char *key)
{
    char *c = strdup(conninfo ? conninfo : ""), *k = strdup(key ? key : "");
    if (!c || !k) {
        free(c);
        free(k);
        return -1;
    }
    pthread_mutex_lock(&rl->mu);
    free(rl->conninfo);
    free(rl->key);
    rl->conninfo = c;
    rl->key = k;
    if (rl->conn)
        PQfinish(rl->conn);
    rl->conn = NULL;
    rl->retry_at = 0;
    pthread_mutex_unlock(&rl->mu);
    return 0;
}

int dp_ratelimit_shared_ok(dp_ratelimit *rl)
{
    pthread_mutex_lock(&rl->mu);
    int ok = rl->shared_ok;
    pthread_mutex_unlock(&rl->mu);
    return ok;
}

/* Waits up to ms for the connection's socket; 1 ready, 0 timed out or failed. */
static int wait_socket(PGconn *conn, int for_write, int64_t ms)
{
    struct pollfd p = {PQsocket(conn), (short)(for_write ? POLLOUT : POLLIN), 0};
    if (p.fd < 0)
        return 0;
    for (;;) {
        int rc = poll(&p, 1, ms > 0 ? (int)ms : 0);
        if (rc > 0)
            return 1;
        if (rc == 0 || errno != EINTR)
            return 0;
    }
}

/* One call of rate_limit_take within DP_RATELIMIT_SHARED_TIMEOUT_MS: the
 * wait it returns (>= 0), or -1 with why in err (the connection dropped). */
static int64_t shared_take(dp_ratelimit *rl, int64_t want, char *err, size_t errlen)
{
    int64_t deadline = dp_clock_mono_ms(NULL) + DP_RATELIMIT_SHARED_TIMEOUT_MS;
    if (!rl->conn) {
        /* Non-blocking connect so that a server that accepts and says
         * nothing cannot hold the embed stage. */
        /* The URL's own application_name, if it has one, wins. */
        const char *keys[] = {"application_name", "dbname", NULL};
        const char *vals[] = {"docpipe-ratelimit", rl->conninfo, NULL};
        rl->conn = PQconnectStartParams(keys, vals, 1);
        if (!rl->conn) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        PostgresPollingStatusType st = PGRES_POLLING_WRITING;
        while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED &&
               PQstatus(rl->conn) != CONNECTION_BAD) {
            int64_t left = deadline - dp_clock_mono_ms(NULL);
            if (left <= 0 || !wait_socket(rl->conn, st == PGRES_POLLING_WRITING, left)) {
                snprintf(err, errlen, "connect: no answer within %d ms",
                         DP_RATELIMIT_SHARED_TIMEOUT_MS);
                goto drop;
            }
            st = PQconnectPoll(rl->conn);
        }
        if (PQstatus(rl->conn) != CONNECTION_OK) {
            snprintf(err, errlen, "connect: %s", PQerrorMessage(rl->conn));
            goto drop;
        }
        if (PQsetnonblocking(rl->conn, 1) != 0) {
            snprintf(err, errlen, "connect: %s", PQerrorMessage(rl->conn));
            goto drop;
        }
    }
    char rpm[24], tpm[24], w[24];
    snprintf(rpm, sizeof(rpm), "%" PRId64, rl->rpm);
    snprintf(tpm, sizeof(tpm), "%" PRId64, rl->tpm);
    snprintf(w, sizeof(w), "%" PRId64, want);
    const char *params[] = {rl->key, rpm, tpm, w};
    if (!PQsendQueryParams(rl->conn,
                           "SELECT upload_pipeline.rate_limit_take($1, $2::int, $3::int,"
                           " $4::bigint)", 4, NULL, params, NULL, NULL, 0)) {
        snprintf(err, errlen, "%s", PQerrorMessage(rl->conn));
        goto drop;
    }
    int flushed;
    while ((flushed = PQflush(rl->conn)) == 1) {
        int64_t left = deadline - dp_clock_mono_ms(NULL);
        if (left <= 0 || !wait_socket(rl->conn, 1, left)) {
            snprintf(err, errlen, "no answer within %d ms", DP_RATELIMIT_SHARED_TIMEOUT_MS);
            goto drop;
        }
    }
    if (flushed < 0) {
        snprintf(err, errlen, "%s", PQerrorMessage(rl->conn));
        goto drop;
    }
    int64_t result = -1;
    char why[300] = "";
    for (;;) {
        if (!PQconsumeInput(rl->conn)) {
            snprintf(err, errlen, "%s", PQerrorMessage(rl->conn));
            goto drop;
        }
        if (PQisBusy(rl->conn)) {
            int64_t left = deadline - dp_clock_mono_ms(NULL);
            if (left <= 0 || !wait_socket(rl->conn, 0, left)) {
                snprintf(err, errlen, "no answer within %d ms",
                         DP_RATELIMIT_SHARED_TIMEOUT_MS);
                goto drop;
            }
            continue;
        }
        PGresult *r = PQgetResult(rl->conn);
        if (!r)
            break;
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
            !PQgetisnull(r, 0, 0))
            result = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
        else if (!*why)
            snprintf(why, sizeof(why), "%s", PQresultErrorMessage(r));
        PQclear(r);
    }
    if (result < 0) {
        /* An answer, but an error (the migration not applied, say): the
         * connection is fine, and asked again after the retry interval. */
        snprintf(err, errlen, "%s", *why ? why : "no result");
        return -1;
    }
    return result;
drop:
    PQfinish(rl->conn);
    rl->conn = NULL;
    return -1;
}

/* One line of a libpq message: newlines and tabs become spaces, the
 * trailing ones go. */
static void chomp(char *s)
{
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\t')
            *p = ' ';
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' '))
        s[--n] = '\0';
}

int64_t dp_ratelimit_try(dp_ratelimit *rl, int tokens)
{
    int64_t want = tokens > 0 ? tokens : 0;
    int64_t wait = 0;
    pthread_mutex_lock(&rl->mu);
    int64_t now = rl->now_ms(rl->clock_arg);
    expire(rl, now);

    if (rl->conninfo && dp_clock_mono_ms(NULL) >= rl->retry_at) {
        char err[400] = "";
        int64_t w = shared_take(rl, want, err, sizeof(err));
        if (w >= 0) {
            if (rl->warned)
                dp_log(DP_LOG_INFO, NULL, "rate limit %s: the shared limit answers"
                       " again", rl->key);
            rl->warned = 0;
            rl->shared_ok = 1;
            /* Admitted: remembered locally as well, for usage and for the
             * fallback's window. */
            if (w == 0)
                (void)push(rl, now, want); /* out of memory: the shared log counts */
            pthread_mutex_unlock(&rl->mu);
            return w;
        }
        rl->shared_ok = 0;
        rl->retry_at = dp_clock_mono_ms(NULL) + DP_RATELIMIT_SHARED_RETRY_MS;
        if (!rl->warned) {
            chomp(err);
            dp_log(DP_LOG_WARN, NULL, "rate limit %s: the shared limit in PostgreSQL"
                   " failed (%s); this process keeps to the limit alone, asking again"
                   " every %d ms", rl->key, err, DP_RATELIMIT_SHARED_RETRY_MS);
            rl->warned = 1;
        }
    } else {
        rl->shared_ok = 0;
    }

    /* Requests: the oldest admissions must leave until one slot is free. */
    if (rl->rpm > 0 && (int64_t)rl->len >= rl->rpm)
        wait = until_expired(rl, rl->len - (size_t)rl->rpm, now);

    /* Tokens: the window may hold at most tpm - want (0 for an oversized
     * request); find the admission whose expiry brings it there. */
    if (rl->tpm > 0 && want > 0) {
        int64_t room = want <= rl->tpm ? rl->tpm - want : 0;
        int64_t held = rl->window_tokens;
        for (size_t i = 0; i < rl->len && held > room; i++) {
            held -= at(rl, i)->tokens;
            if (held <= room) {
                int64_t w = until_expired(rl, i, now);
                if (w > wait)
                    wait = w;
            }
        }
    }

    if (wait <= 0 && push(rl, now, want) != 0)
        wait = 1; /* out of memory: ask again later */
    pthread_mutex_unlock(&rl->mu);
    return wait > 0 ? wait : 0;
}

void dp_ratelimit_usage(dp_ratelimit *rl, int64_t *requests, int64_t *tokens)
{
    pthread_mutex_lock(&rl->mu);
    expire(rl, rl->now_ms(rl->clock_arg));
    if (requests)
        *requests = (int64_t)rl->len;
    if (tokens)
        *tokens = rl->window_tokens;
    pthread_mutex_unlock(&rl->mu);
}

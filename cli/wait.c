/*
 * wait: until documents are complete or failed, telling a person why not.
 *
 * The domain table upload_pipeline.upload_jobs is polled five times a
 * second; each poll counts the documents by state.  Progress goes to
 * stderr: on a terminal one line redrawn in place every second, otherwise
 * a plain line every --progress-every seconds (10 by default), so a log
 * file or CI output stays readable.  The line gives the documents by state
 * (complete, failed, in flight per state), the rate of documents settled
 * over the last RATE_WINDOW_S seconds, an ETA from that rate, and what
 * holds the documents back: the stages' lag (lag.c's reading, refreshed
 * every LAG_EVERY_S seconds, shown only when not zero; not asked again
 * once it failed, since it then blocks for seconds) and documents
 * sitting in the embedding states while nothing settles.
 *
 * The end goes to stdout: "N complete, M failed" (or "timed out: ..."),
 * or with --json one summary object.  Exit codes are cli.h's.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "pg.h"
#include "stages.h"

#define POLL_MS 200
#define RATE_WINDOW_S 30
#define LAG_EVERY_S 5
#define STUCK_AFTER_S 10
#define MAX_SAMPLES (RATE_WINDOW_S * 1000 / POLL_MS + 2)

typedef struct sample {
    double t;
    long settled;
} sample;

/* One poll's counts. */
typedef struct counts {
    long complete, failed, known, embedding;
    json_t *states; /* state -> documents */
} counts;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int poll_counts(PGconn *db, const char *const *p, counts *c, char *err,
                       size_t errlen)
{
    PGresult *res = PQexecParams(db,
        "SELECT status, count(*) FROM upload_pipeline.upload_jobs"
        " WHERE $2 = '0' OR document_id = ANY($1::uuid[])"
        " GROUP BY status ORDER BY min(created_at)",
        2, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        snprintf(err, errlen, "%s", PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    memset(c, 0, sizeof(*c));
    c->states = json_object();
    for (int r = 0; r < PQntuples(res); r++) {
        const char *st = PQgetvalue(res, r, 0);
        long k = atol(PQgetvalue(res, r, 1));
        json_object_set_new(c->states, st, json_integer(k));
        c->known += k;
        if (strcmp(st, "complete") == 0)
            c->complete += k;
        else if (strncmp(st, "failed_", 7) == 0)
            c->failed += k;
        else if (strncmp(st, "embedding_", 10) == 0)
            c->embedding += k;
    }
    PQclear(res);
    return 0;
}

/* Sum of every stage's lag, and the lagging stages as "name N, ..." */
static long read_lag(rd_kafka_t *rk, PGconn *db, const dp_config *cfg,
                     char *who, size_t wholen)
{
    const char *names[32];
    int n = 0;
    for (const dp_stage_def *d = dp_stage_defs; d->name && n < 32; d++)
        if (strcmp(d->name, "demo") != 0)
            names[n++] = d->name;
    char err[512];
    json_t *doc = dp_lag_read(rk, db, cfg, names, n, err, sizeof(err));
    who[0] = '\0';
    if (!doc)
        return -1;
    long sum = 0;
    size_t i, len = 0;
    json_t *st;
    json_array_foreach(json_object_get(doc, "stages"), i, st) {
        long lag = (long)json_integer_value(
            json_object_get(json_object_get(st, "total"), "lag"));
        if (lag > 0 && len + 1 < wholen)
            len += (size_t)snprintf(who + len, wholen - len, "%s%s %ld",
                                    len ? ", " : "",
                                    json_string_value(json_object_get(st, "stage")),
                                    lag);
        sum += lag;
    }
    json_decref(doc);
    return sum;
}

/* The progress line, without a newline. */
/* What holds the services up, as the running stages report it
 * (docpipe.dp_service_status, rows of the last 30 s): "embeddings: breaker
 * open, at its rate limit", or "" when nothing does. */
static void read_holds(PGconn *db, char *out, size_t outlen)
{
    *out = '\0';
    PGresult *r = PQexec(db,
        "SELECT service, bool_or(breaker = 'open'), bool_or(breaker = 'half_open'),"
        "   bool_or(rate_limited) FROM docpipe.dp_service_status"
        " WHERE updated_at > now() - interval '30 seconds'"
        " GROUP BY service ORDER BY service");
    size_t len = 0;
    for (int i = 0; PQresultStatus(r) == PGRES_TUPLES_OK && i < PQntuples(r); i++) {
        int open = PQgetvalue(r, i, 1)[0] == 't', half = PQgetvalue(r, i, 2)[0] == 't',
            limited = PQgetvalue(r, i, 3)[0] == 't';
        if (!open && !half && !limited)
            continue;
        if (len + 1 < outlen)
            len += (size_t)snprintf(out + len, outlen - len, "%s%s: %s%s%s",
                                    len ? "; " : "", PQgetvalue(r, i, 0),
                                    open ? "breaker open" : half ? "breaker half-open" : "",
                                    (open || half) && limited ? ", " : "",
                                    limited ? "at its rate limit" : "");
    }
    PQclear(r);
}

static void format_line(char *out, size_t outlen, const counts *c, long want,
                        double rate, double stuck_s, long lag, const char *lagwho,
                        const char *holds)
{
    size_t len = (size_t)snprintf(out, outlen, "%ld/%ld complete, %ld failed",
                                  c->complete, want, c->failed);
    const char *st;
    json_t *v;
    int first = 1;
    json_object_foreach(c->states, st, v) {
        if (strcmp(st, "complete") == 0 || strncmp(st, "failed_", 7) == 0)
            continue;
        if (len + 1 < outlen)
            len += (size_t)snprintf(out + len, outlen - len, "%s%s %" JSON_INTEGER_FORMAT,
                                    first ? "; in flight: " : ", ", st,
                                    json_integer_value(v));
        first = 0;
    }
    long left = want - c->complete - c->failed;
    if (len + 1 < outlen)
        len += (size_t)snprintf(out + len, outlen - len, "; %.1f docs/s", rate);
    if (len + 1 < outlen && left > 0) {
        if (rate > 0)
            len += (size_t)snprintf(out + len, outlen - len, ", ETA %.0fs", left / rate);
        else
            len += (size_t)snprintf(out + len, outlen - len, ", ETA unknown");
    }
    if (len + 1 < outlen && lag > 0)
        len += (size_t)snprintf(out + len, outlen - len, "; lag: %s", lagwho);
    if (len + 1 < outlen && *holds)
        len += (size_t)snprintf(out + len, outlen - len, "; held by %s", holds);
    else if (len + 1 < outlen && c->embedding > 0 && stuck_s >= STUCK_AFTER_S)
        snprintf(out + len, outlen - len,
                 "; embedding: %ld waiting, nothing settled for %.0fs (rate limit"
                 " or open breaker?)", c->embedding, stuck_s);
}

static json_t *summary_of(const counts *c, long want, const char *result,
                          double elapsed)
{
    return json_pack("{s:s,s:i,s:i,s:i,s:i,s:O,s:f}", "result", result,
                     "complete", (json_int_t)c->complete, "failed",
                     (json_int_t)c->failed, "known", (json_int_t)c->known,
                     "wanted", (json_int_t)want, "states", c->states,
                     "elapsed_s", elapsed);
}

int dp_wait_docs(const dp_config *cfg, const char *const *ids, int n,
                 const dp_wait_opts *o, volatile sig_atomic_t *stop,
                 json_t **summary)
{
    PGconn *db;
    char err[1024];
    if (dp_pg_connect(cfg, "docpipe-wait", &db, err, sizeof(err))) {
        fprintf(stderr, "docpipe wait: %s\n", err);
        return DP_EXIT_FAILED;
    }
    /* Without ids: every document known. */
    dp_buf idbuf = {0};
    dp_buf_append(&idbuf, "{", 1);
    for (int i = 0; i < n; i++)
        dp_buf_appendf(&idbuf, "%s%s", i ? "," : "", ids[i]);
    dp_buf_append(&idbuf, "}", 1);
    const char *p[2] = {idbuf.data, n > 0 ? "1" : "0"};

    int tty = isatty(2);
    double every = tty ? 1 : o->progress_every_s;
    double start = now_s(), until = start + o->timeout_s, next_line = start + every,
           next_lag = start, last_change = start;
    static sample samples[MAX_SAMPLES];
    int ns = 0;
    long lag = 0, last_settled = -1;
    char lagwho[512] = "", holds[512] = "", line[2048];
    size_t drawn = 0;
    rd_kafka_t *rk = every > 0 ? dp_lag_client(cfg, err, sizeof(err)) : NULL;

    int rc = DP_EXIT_FAILED;
    const char *result = "error";
    counts c = {0};
    for (;;) {
        json_decref(c.states);
        c.states = NULL;
        if (poll_counts(db, p, &c, err, sizeof(err))) {
            fprintf(stderr, "%sdocpipe wait: %s", drawn ? "\n" : "", err);
            drawn = 0;
            break;
        }
        double t = now_s();
        long want = n > 0 ? n : c.known;
        long settled = c.complete + c.failed;
        if (settled != last_settled)
            last_change = t;
        last_settled = settled;
        if (ns == MAX_SAMPLES) {
            memmove(samples, samples + 1, sizeof(samples[0]) * (MAX_SAMPLES - 1));
            ns--;
        }
        samples[ns++] = (sample){t, settled};
        int old = 0;
        while (old < ns - 1 && samples[old].t < t - RATE_WINDOW_S)
            old++;
        double span = t - samples[old].t;
        double rate = span > 0.5 ? (settled - samples[old].settled) / span : 0;

        if (want > 0 && c.known >= want && settled >= want) {
            result = c.failed ? "failed" : "complete";
            rc = c.failed ? DP_EXIT_FAILED : DP_EXIT_OK;
            break;
        }
        if (*stop) {
            result = "interrupted";
            rc = DP_EXIT_SIGNAL_BASE + (int)*stop;
            break;
        }
        if (t >= until) {
            result = "timeout";
            rc = DP_EXIT_TIMEOUT;
            break;
        }
        if (every > 0 && t >= next_line) {
            if (t >= next_lag)
                read_holds(db, holds, sizeof(holds));
            if (rk && t >= next_lag) {
                lag = read_lag(rk, db, cfg, lagwho, sizeof(lagwho));
                next_lag = t + LAG_EVERY_S;
                if (lag < 0) { /* no topics yet, say: not asked again */
                    rd_kafka_destroy(rk);
                    rk = NULL;
                }
            }
            format_line(line, sizeof(line), &c, want, rate, t - last_change, lag,
                        lagwho, holds);
            if (tty) {
                size_t len = strlen(line);
                fprintf(stderr, "\r%s%*s", line,
                        drawn > len ? (int)(drawn - len) : 0, "");
                drawn = len;
            } else {
                fprintf(stderr, "docpipe wait: %s\n", line);
            }
            fflush(stderr);
            next_line = t + every;
        }
        usleep(POLL_MS * 1000); /* a signal cuts it short */
    }
    if (drawn)
        fputc('\n', stderr);
    if (c.states) {
        long want = n > 0 ? n : c.known;
        json_t *sum = summary_of(&c, want, result, now_s() - start);
        if (rc == DP_EXIT_SIGNAL_BASE + SIGINT || rc == DP_EXIT_SIGNAL_BASE + SIGTERM)
            fprintf(stderr, "docpipe wait: interrupted: %ld complete, %ld failed,"
                    " %ld of %ld known\n", c.complete, c.failed, c.known, want);
        if (summary) {
            *summary = sum;
        } else {
            if (o->json) {
                json_dumpf(sum, stdout, JSON_INDENT(2));
                fputc('\n', stdout);
            } else if (rc == DP_EXIT_OK || rc == DP_EXIT_FAILED) {
                printf("%ld complete, %ld failed\n", c.complete, c.failed);
            } else if (rc == DP_EXIT_TIMEOUT) {
                printf("timed out: %ld complete, %ld failed, %ld of %ld known\n",
                       c.complete, c.failed, c.known, want);
            }
            json_decref(sum);
        }
        json_decref(c.states);
    }
    if (rk)
        rd_kafka_destroy(rk);
    dp_buf_free(&idbuf);
    PQfinish(db);
    return rc;
}

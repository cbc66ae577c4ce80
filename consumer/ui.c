/*
 * ui: the dashboard page and its JSON (see ui.h).  The page does the
 * arithmetic (throughput from successive samples); this file only reports
 * what the runtimes and PostgreSQL hold now.  Numbers from the runtimes
 * are the process's own counters since it started, the same as /metrics.
 */
#include "ui.h"

#include "services.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "clock.h"

/* The page, generated from consumer/ui.html by CMake (ui_html.c). */
extern const unsigned char dp_ui_html[];
extern const size_t dp_ui_html_len;

struct dp_ui {
    const dp_config *cfg;
    dp_runtime *const *rts;
    int n;
    pthread_mutex_t mu;     /* guards everything below */
    PGconn *db;             /* the dashboard's own; NULL until needed */
    json_t *jobs;           /* documents per job state, last asked at jobs_ms */
    int64_t jobs_ms;
    const char *jobs_why;   /* why that failed (jobs NULL), or NULL */
};

dp_ui *dp_ui_new(const dp_config *cfg, dp_runtime *const *rts, int n)
{
    dp_ui *u = calloc(1, sizeof(*u));
    if (!u)
        abort();
    u->cfg = cfg;
    u->rts = rts;
    u->n = n;
    u->jobs_ms = -1000000;
    pthread_mutex_init(&u->mu, NULL);
    return u;
}

void dp_ui_free(dp_ui *u)
{
    if (!u)
        return;
    PQfinish(u->db);
    json_decref(u->jobs);
    pthread_mutex_destroy(&u->mu);
    free(u);
}

/* Runs sql with its text parameters on the dashboard's connection (held
 * mu), opening it if needed and dropping it on failure: the rows as an
 * array of objects of text (null for NULL), or NULL with *why set. */
static json_t *query(dp_ui *u, const char *sql, int nparams, const char *const *params,
                     const char **why)
{
    if (!u->db) {
        const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
        const char *vals[] = {u->cfg->database_url, "2", "docpipe-ui", NULL};
        u->db = PQconnectdbParams(keys, vals, 1);
    }
    PGresult *r = PQstatus(u->db) == CONNECTION_OK
                      ? PQexecParams(u->db, sql, nparams, NULL, params, NULL, NULL, 0)
                      : NULL;
    if (!r || PQresultStatus(r) != PGRES_TUPLES_OK) {
        /* The failure's class only: its message may name the server. */
        *why = PQstatus(u->db) == CONNECTION_OK ? "the query failed"
                                                 : "PostgreSQL is not reachable";
        PQclear(r);
        PQfinish(u->db);
        u->db = NULL;
        return NULL;
    }
    json_t *rows = json_array();
    for (int i = 0; i < PQntuples(r); i++) {
        json_t *row = json_object();
        for (int j = 0; j < PQnfields(r); j++)
            json_object_set_new(row, PQfname(r, j),
                                PQgetisnull(r, i, j) ? json_null()
                                                     : json_string(PQgetvalue(r, i, j)));
        json_array_append_new(rows, row);
    }
    PQclear(r);
    return rows;
}

/* Documents per job state, asked at most once a second (held mu), failures
 * included: a page polling while PostgreSQL is away waits on one connection
 * attempt a second, not one per request. */
static json_t *jobs_by_state(dp_ui *u, const char **why)
{
    int64_t now = dp_clock_mono_ms(NULL);
    if (now - u->jobs_ms >= 1000) {
        json_decref(u->jobs);
        u->jobs_why = NULL;
        u->jobs = query(u, "SELECT status AS state, count(*)::text AS documents"
                           " FROM upload_pipeline.upload_jobs GROUP BY status"
                           " ORDER BY status", 0, NULL, &u->jobs_why);
        u->jobs_ms = dp_clock_mono_ms(NULL);
    }
    *why = u->jobs_why;
    return json_incref(u->jobs);
}

/* The breaker of the service a stage calls (services.h), "none" for a
 * stage that calls none. */
static const char *stage_breaker(const char *stage)
{
    static const struct { const char *stage, *service; } calls[] = {
        {"parse", "tika"}, {"embed", "embeddings"}, {NULL, NULL}};
    const char *service = NULL;
    for (int i = 0; calls[i].stage; i++)
        if (strcmp(calls[i].stage, stage) == 0)
            service = calls[i].service;
    if (!service)
        return "none";
    dp_service_status st[16];
    int n = dp_services_status(st, 16);
    for (int i = 0; i < n; i++)
        if (strcmp(st[i].name, service) == 0)
            return st[i].breaker;
    return "none";
}

static json_t *stages(dp_ui *u)
{
    json_t *list = json_array();
    for (int i = 0; i < u->n; i++) {
        dp_runtime_view v;
        dp_runtime_view_get(u->rts[i], &v);
        json_array_append_new(list, json_pack(
            "{s:s, s:I, s:I, s:I, s:I, s:i, s:b, s:s}",
            "stage", dp_runtime_stage(u->rts[i]),
            "records", (json_int_t)v.stats.records,
            "dead_letters", (json_int_t)v.stats.dead_letters,
            "retries", (json_int_t)v.stats.retries,
            "lag", (json_int_t)v.lag,
            "assigned", v.assigned,
            "joined", v.joined,
            "breaker", stage_breaker(dp_runtime_stage(u->rts[i]))));
    }
    const char *why = NULL;
    json_t *jobs = jobs_by_state(u, &why);
    json_t *in_flight = json_object(), *failed = json_object();
    size_t k;
    json_t *row;
    json_array_foreach(jobs, k, row) {
        const char *state = json_string_value(json_object_get(row, "state"));
        json_int_t count = strtoll(json_string_value(json_object_get(row, "documents")),
                                   NULL, 10);
        if (strncmp(state, "failed_", 7) == 0)
            json_object_set_new(failed, state, json_integer(count));
        else if (strcmp(state, "complete") != 0)
            json_object_set_new(in_flight, state, json_integer(count));
    }
    json_decref(jobs);
    return json_pack("{s:o, s:o, s:o, s:o*}", "stages", list, "in_flight", in_flight,
                     "failed", failed, "database_error", why ? json_string(why) : NULL);
}

/* Whether s is a UUID in its text form (so a bad id is a 400, not a
 * failed query that drops the connection). */
static int is_uuid(const char *s)
{
    if (!s || strlen(s) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i]))
            return 0;
    }
    return 1;
}

static json_t *document(dp_ui *u, const char *id, const char **why)
{
    const char *p[] = {id};
    json_t *job = query(u, "SELECT j.status AS state, d.filename, d.mime,"
                           " j.retry_count::text AS retries, j.last_error::text AS last_error"
                           " FROM upload_pipeline.upload_jobs j JOIN upload_pipeline.documents d"
                           " USING (document_id) WHERE document_id = $1::uuid", 1, p, why);
    if (!job)
        return NULL;
    json_t *events = query(u, "SELECT to_char(ts AT TIME ZONE 'UTC',"
                              " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS ts, stage, type,"
                              " code, from_status, to_status FROM upload_pipeline.events"
                              " WHERE document_id = $1::uuid ORDER BY ts, event_id", 1, p, why);
    if (!events) {
        json_decref(job);
        return NULL;
    }
    json_t *first = json_array_get(job, 0);
    json_t *out = json_pack("{s:s, s:b, s:O*, s:o}", "id", id, "found", first != NULL,
                            "job", first, "events", events);
    json_decref(job);
    return out;
}

static json_t *dead_letters(dp_ui *u, const char **why)
{
    const char *p[] = {u->cfg->topic_prefix ? u->cfg->topic_prefix : ""};
    json_t *rows = query(u, "SELECT id::text, stage, topic, partition::text,"
                            " \"offset\"::text, category, attempts::text, error,"
                            " to_char(created_at AT TIME ZONE 'UTC',"
                            " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS created_at,"
                            " resolved_at IS NOT NULL AS resolved"
                            " FROM docpipe.dp_dead_letters WHERE starts_with(topic, $1)"
                            " ORDER BY created_at DESC, id DESC LIMIT 20", 1, p, why);
    return rows ? json_pack("{s:o}", "dead_letters", rows) : NULL;
}

/* j (taken) as the body, or {"error": why} with status fail when j is NULL. */
static unsigned json_reply(json_t *j, unsigned fail, const char *why, const char **type,
                           dp_buf *body)
{
    *type = "application/json";
    unsigned status = 200;
    if (!j) {
        j = json_pack("{s:s}", "error", why);
        status = fail;
    }
    char *text = json_dumps(j, JSON_COMPACT);
    dp_buf_append(body, text, strlen(text));
    free(text);
    json_decref(j);
    return status;
}

unsigned dp_ui_serve(dp_ui *u, const char *url, const char *id, const char **type,
                     dp_buf *body)
{
    if (strcmp(url, "/") == 0) {
        *type = "text/html; charset=utf-8";
        dp_buf_append(body, dp_ui_html, dp_ui_html_len);
        return 200;
    }
    const char *why = NULL;
    json_t *j;
    if (strcmp(url, "/api/stages") == 0) {
        pthread_mutex_lock(&u->mu);
        j = stages(u);
        pthread_mutex_unlock(&u->mu);
        return json_reply(j, 503, why, type, body);
    }
    if (strcmp(url, "/api/document") == 0) {
        if (!is_uuid(id))
            return json_reply(NULL, 400, "id=UUID expected", type, body);
        pthread_mutex_lock(&u->mu);
        j = document(u, id, &why);
        pthread_mutex_unlock(&u->mu);
        return json_reply(j, 503, why, type, body);
    }
    if (strcmp(url, "/api/dead-letters") == 0) {
        pthread_mutex_lock(&u->mu);
        j = dead_letters(u, &why);
        pthread_mutex_unlock(&u->mu);
        return json_reply(j, 503, why, type, body);
    }
    return 0;
}

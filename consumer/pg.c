/* pg: libpq helpers (see pg.h). */
#include "pg.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"

dp_err dp_pg_connect_once(const dp_config *cfg, const char *app, PGconn **out,
                          char *err, size_t errlen)
{
    char opts[320];
    snprintf(opts, sizeof(opts),
             "-c idle_in_transaction_session_timeout=%d -c lock_timeout=%d"
             " -c plan_cache_mode=%s",
             cfg->idle_txn_timeout_ms, cfg->lock_timeout_ms, cfg->pg_plan_cache_mode);
    const char *keys[] = {"dbname", "application_name", "options", NULL};
    const char *vals[] = {cfg->database_url, app, opts, NULL};
    PGconn *conn = PQconnectdbParams(keys, vals, 1);
    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        char clean[512];
        snprintf(clean, sizeof(clean), "%s",
                 conn ? PQerrorMessage(conn) : "out of memory");
        size_t n = strlen(clean);
        while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
            clean[--n] = '\0';
        dp_errf(DP_ERR_RETRYABLE, err, errlen, "connect to PostgreSQL: %s", clean);
        PQfinish(conn);
        *out = NULL;
        return DP_ERR_RETRYABLE;
    }
    *out = conn;
    return DP_OK;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* At start PostgreSQL may not accept connections yet (a container starting
 * beside docpipe's): wait for it, 100 ms doubling up to 2 s between
 * attempts, for at most db_connect_timeout_ms. */
dp_err dp_pg_connect(const dp_config *cfg, const char *app, PGconn **out,
                     char *err, size_t errlen)
{
    int64_t start = now_ms(), deadline = start + cfg->db_connect_timeout_ms;
    int delay = 100, attempts = 0;
    for (;;) {
        attempts++;
        dp_err e = dp_pg_connect_once(cfg, app, out, err, errlen);
        if (e == DP_OK)
            return DP_OK;
        int64_t now = now_ms();
        if (now >= deadline) {
            if (attempts > 1) {
                char first[768];
                snprintf(first, sizeof(first), "%s", err);
                dp_errf(e, err, errlen, "%s (gave up after %d attempts in %lld ms;"
                        " db_connect_timeout_ms=%d)", first, attempts,
                        (long long)(now - start), cfg->db_connect_timeout_ms);
            }
            return e;
        }
        int64_t wait = delay < deadline - now ? delay : deadline - now;
        if (attempts == 1)
            dp_log(DP_LOG_WARN, NULL, "%s; retrying for up to %d ms", err,
                   cfg->db_connect_timeout_ms);
        struct timespec ts = {(time_t)(wait / 1000), (long)(wait % 1000) * 1000000};
        nanosleep(&ts, NULL);
        delay = delay * 2 > 2000 ? 2000 : delay * 2;
    }
}

dp_err dp_pg_classify(PGconn *conn, const PGresult *res)
{
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return DP_ERR_RETRYABLE;
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    if (!state)
        return DP_ERR_RETRYABLE;
    if (strncmp(state, "08", 2) == 0 ||  /* connection exception */
        strncmp(state, "40", 2) == 0 ||  /* serialization, deadlock */
        strncmp(state, "53", 2) == 0 ||  /* insufficient resources */
        strncmp(state, "57", 2) == 0 ||  /* operator intervention */
        strcmp(state, "55P03") == 0 ||   /* lock not available */
        strcmp(state, "25P03") == 0)     /* idle transaction timeout */
        return DP_ERR_RETRYABLE;
    return DP_ERR_PERMANENT;
}

dp_err dp_pg_check(PGconn *conn, PGresult *res, ExecStatusType want,
                   const char *what, char *err, size_t errlen)
{
    if (res && PQresultStatus(res) == want)
        return DP_OK;
    dp_err e = dp_pg_classify(conn, res);
    const char *msg = res ? PQresultErrorMessage(res) : "";
    if (!msg || !*msg)
        msg = PQerrorMessage(conn);
    char clean[512];
    snprintf(clean, sizeof(clean), "%s", msg ? msg : "unknown error");
    size_t n = strlen(clean);
    while (n && (clean[n - 1] == '\n' || clean[n - 1] == ' '))
        clean[--n] = '\0';
    dp_errf(e, err, errlen, "%s: %s", what, clean);
    PQclear(res);
    return e;
}

dp_err dp_pg_exec(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult *res = PQexec(conn, sql);
    dp_err e = dp_pg_check(conn, res, PGRES_COMMAND_OK, sql, err, errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

dp_err dp_pg_command(PGconn *conn, const char *sql, int nparams,
                     const char *const *values, const char *what, char *err,
                     size_t errlen)
{
    PGresult *res = dp_pg_execp(conn, sql, nparams, NULL, values, NULL, NULL, 0);
    dp_err e = dp_pg_check(conn, res, PGRES_COMMAND_OK, what, err, errlen);
    if (e == DP_OK)
        PQclear(res);
    return e;
}

dp_err dp_pg_replan(PGconn *conn, char *err, size_t errlen)
{
    return dp_pg_exec(conn, "DISCARD PLANS", err, errlen);
}

void dp_buf_append(dp_buf *b, const void *data, size_t len)
{
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + len + 1)
            cap *= 2;
        b->data = realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
}

static void put_be32(dp_buf *b, uint32_t v)
{
    v = htonl(v);
    dp_buf_append(b, &v, 4);
}

void dp_buf_float4_array(dp_buf *b, const float *v, size_t n)
{
    put_be32(b, 1);   /* dimensions */
    put_be32(b, 0);   /* no nulls */
    put_be32(b, 700); /* element type: float4 */
    put_be32(b, (uint32_t)n);
    put_be32(b, 1);   /* lower bound */
    /* Each element: its length (4), then its bits, big-endian; converted a
     * block at a time, one append per block. */
    uint32_t w[512];
    for (size_t i = 0; i < n;) {
        size_t m = n - i < 256 ? n - i : 256;
        for (size_t k = 0; k < m; k++) {
            uint32_t bits;
            memcpy(&bits, &v[i + k], 4);
            w[2 * k] = htonl(4);
            w[2 * k + 1] = htonl(bits);
        }
        dp_buf_append(b, w, m * 8);
        i += m;
    }
}

void dp_buf_text_array_begin(dp_buf *b)
{
    dp_buf_reset(b);
    put_be32(b, 1);   /* dimensions */
    put_be32(b, 0);   /* no nulls */
    put_be32(b, 25);  /* element type: text */
    put_be32(b, 0);   /* elements: counted by _add */
    put_be32(b, 1);   /* lower bound */
}

void dp_buf_text_array_add(dp_buf *b, const char *s, size_t len)
{
    uint32_t n;
    memcpy(&n, b->data + 12, 4);
    n = htonl(ntohl(n) + 1);
    memcpy(b->data + 12, &n, 4);
    put_be32(b, (uint32_t)len);
    dp_buf_append(b, s, len);
}

void dp_buf_appendf(dp_buf *b, const char *fmt, ...)
{
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(tmp)) {
        dp_buf_append(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    dp_buf_append(b, big, (size_t)n);
    free(big);
}

void dp_buf_array_text(dp_buf *b, const char *s, size_t len)
{
    dp_buf_append(b, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '"' || s[i] == '\\') {
            dp_buf_append(b, s + start, i - start);
            dp_buf_append(b, "\\", 1);
            start = i;
        }
    }
    dp_buf_append(b, s + start, len - start);
    dp_buf_append(b, "\"", 1);
}

void dp_buf_reset(dp_buf *b) { b->len = 0; if (b->data) b->data[0] = '\0'; }

void dp_buf_free(dp_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/*
 * Prepared once per connection.  Each thread keeps the statements it has
 * prepared on up to DP_PG_CONNS connections, keyed by the connection and its
 * server process (a reset connection has a new one and starts afresh); a
 * statement is known by its SQL text's address, so only string literals may
 * be passed.  Names are unique per thread, never reused, so a forgotten
 * entry cannot collide with what a server still holds.
 */
#define DP_PG_CONNS 4
#define DP_PG_STMTS 64

typedef struct pg_prepared {
    PGconn *conn;
    int pid;
    const char *sql[DP_PG_STMTS];
    char name[DP_PG_STMTS][24];
    int n;
} pg_prepared;

static _Thread_local pg_prepared pg_cache[DP_PG_CONNS];
static _Thread_local unsigned pg_next_name, pg_next_victim;

void dp_pg_finish(PGconn *conn)
{
    for (int i = 0; i < DP_PG_CONNS; i++)
        if (pg_cache[i].conn == conn)
            pg_cache[i].conn = NULL;
    PQfinish(conn);
}

/* The name conn knows sql by, prepared now if it is new.  NULL with *res
 * set: preparing failed; NULL without: the cache is full (send unnamed). */
static const char *prepared_name(PGconn *conn, const char *sql, int nparams,
                                 const Oid *types, PGresult **res)
{
    *res = NULL;
    int pid = PQbackendPID(conn);
    pg_prepared *c = NULL;
    for (int i = 0; i < DP_PG_CONNS && !c; i++)
        if (pg_cache[i].conn == conn && pg_cache[i].pid == pid)
            c = &pg_cache[i];
    if (!c) {
        c = &pg_cache[pg_next_victim++ % DP_PG_CONNS];
        c->conn = conn;
        c->pid = pid;
        c->n = 0;
    }
    int k;
    for (k = 0; k < c->n && c->sql[k] != sql; k++)
        ;
    if (k == c->n) {
        if (c->n == DP_PG_STMTS)
            return NULL;
        snprintf(c->name[k], sizeof(c->name[k]), "dp_%u", pg_next_name++);
        PGresult *r = PQprepare(conn, c->name[k], sql, nparams, types);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            *res = r; /* the caller's check reports it */
            return NULL;
        }
        PQclear(r);
        c->sql[k] = sql;
        c->n++;
    }
    return c->name[k];
}

PGresult *dp_pg_execp(PGconn *conn, const char *sql, int nparams, const Oid *types,
                      const char *const *values, const int *lengths, const int *formats,
                      int result_format)
{
    PGresult *res;
    const char *name = prepared_name(conn, sql, nparams, types, &res);
    if (res)
        return res;
    if (!name)
        return PQexecParams(conn, sql, nparams, types, values, lengths, formats,
                            result_format);
    return PQexecPrepared(conn, name, nparams, values, lengths, formats,
                          result_format);
}

PGresult *dp_pg_sendp(PGconn *conn, const char *sql, int nparams, const Oid *types,
                      const char *const *values, const int *lengths,
                      const int *formats, int result_format)
{
    PGresult *res;
    const char *name = prepared_name(conn, sql, nparams, types, &res);
    if (res)
        return res;
    int sent = name ? PQsendQueryPrepared(conn, name, nparams, values, lengths,
                                          formats, result_format)
                    : PQsendQueryParams(conn, sql, nparams, types, values, lengths,
                                        formats, result_format);
    return sent ? NULL : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

PGresult *dp_pg_collect(PGconn *conn)
{
    PGresult *first = NULL, *r;
    while ((r = PQgetResult(conn))) {
        if (!first)
            first = r;
        else
            PQclear(r);
    }
    return first ? first : PQmakeEmptyPGresult(conn, PGRES_FATAL_ERROR);
}

/* http: /metrics, /livez and /readyz for `docpipe run` (see http.h). */
#include "http.h"
#include "redact.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <libpq-fe.h>
#include <microhttpd.h>

#include "clock.h"
#include "metrics.h"
#include "pg.h"
#include "ui.h"

struct dp_http {
    const dp_config *cfg;
    dp_runtime **rts;            /* a copy of the caller's array */
    int n;
    struct MHD_Daemon *daemon;
    dp_ui *ui;                   /* the dashboard: /, /api/... */
    pthread_mutex_t mu;
    int64_t pg_checked_ms;       /* when PostgreSQL was last asked */
    int pg_ok;
    char pg_error[256];
};

/* Whether PostgreSQL answers, asked at most once a second. */
static int pg_ready(dp_http *h, char *why, size_t whylen)
{
    pthread_mutex_lock(&h->mu);
    int64_t now = dp_clock_mono_ms(NULL);
    if (now - h->pg_checked_ms >= 1000) {
        const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
        const char *vals[] = {h->cfg->database_url, "2", "docpipe-readyz", NULL};
        PGconn *c = PQconnectdbParams(keys, vals, 1);
        PGresult *r = PQstatus(c) == CONNECTION_OK ? PQexec(c, "SELECT 1") : NULL;
        h->pg_ok = r && PQresultStatus(r) == PGRES_TUPLES_OK;
        if (!h->pg_ok) {
            /* The message, not the connection string: it may hold a password. */
            const char *m = PQerrorMessage(c);
            snprintf(h->pg_error, sizeof(h->pg_error), "%.*s",
                     (int)strcspn(m, "\n"), m);
            dp_redact(h->pg_error); /* libpq quotes a malformed URL's parts */
        }
        PQclear(r);
        PQfinish(c);
        h->pg_checked_ms = dp_clock_mono_ms(NULL);
    }
    int ok = h->pg_ok;
    if (!ok)
        snprintf(why, whylen, "PostgreSQL is not reachable: %s\n", h->pg_error);
    pthread_mutex_unlock(&h->mu);
    return ok;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status,
                             const char *type, const char *body, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body,
                                                             MHD_RESPMEM_MUST_COPY);
    MHD_add_response_header(r, "Content-Type", type);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url,
                              const char *method, const char *version,
                              const char *upload, size_t *upload_len, void **state)
{
    (void)version;
    (void)upload;
    (void)upload_len;
    (void)state;
    dp_http *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(c, 405, "text/plain", "GET only\n", 9);
    if (strcmp(url, "/metrics") == 0) {
        dp_buf b = {0};
        dp_metrics_render(h->rts, h->n, &b);
        enum MHD_Result ok = reply(c, 200, "text/plain; version=0.0.4; charset=utf-8",
                                   b.data ? b.data : "", b.len);
        dp_buf_free(&b);
        return ok;
    }
    char why[512] = "";
    if (strcmp(url, "/livez") == 0) {
        int64_t now = dp_clock_mono_ms(NULL);
        for (int i = 0; i < h->n; i++) {
            dp_runtime_view v;
            dp_runtime_view_get(h->rts[i], &v);
            if (v.last_turn_ms && now - v.last_turn_ms > h->cfg->http_live_ms) {
                snprintf(why, sizeof(why), "stage %s: its loop has not turned for "
                         "%lld ms\n", dp_runtime_stage(h->rts[i]),
                         (long long)(now - v.last_turn_ms));
                return reply(c, 503, "text/plain", why, strlen(why));
            }
        }
        return reply(c, 200, "text/plain", "ok\n", 3);
    }
    if (strcmp(url, "/readyz") == 0) {
        if (!pg_ready(h, why, sizeof(why)))
            return reply(c, 503, "text/plain", why, strlen(why));
        for (int i = 0; i < h->n; i++) {
            dp_runtime_view v;
            dp_runtime_view_get(h->rts[i], &v);
            if (!v.joined) {
                snprintf(why, sizeof(why), "stage %s has not joined its group yet\n",
                         dp_runtime_stage(h->rts[i]));
                return reply(c, 503, "text/plain", why, strlen(why));
            }
        }
        return reply(c, 200, "text/plain", "ok\n", 3);
    }
    dp_buf b = {0};
    const char *type = NULL;
    unsigned st = dp_ui_serve(h->ui, url,
                              MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "id"),
                              &type, &b);
    if (st) {
        enum MHD_Result ok = reply(c, st, type, b.data ? b.data : "", b.len);
        dp_buf_free(&b);
        return ok;
    }
    static const char where[] = "/, /api/..., /metrics, /livez or /readyz\n";
    return reply(c, 404, "text/plain", where, sizeof(where) - 1);
}

dp_err dp_http_start(const dp_config *cfg, const char *addr, dp_runtime *const *rts,
                     int n, dp_http **out, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    long port = colon ? strtol(colon + 1, NULL, 10) : 0;
    if (!colon || port <= 0 || port > 65535 || (size_t)(colon - addr) >= sizeof(host))
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "http address '%s' is not host:port", addr);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (!*host || strcmp(host, "*") == 0)
        sa.sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "http address '%s': '%s' is not an IPv4 address", addr, host);
    dp_http *h = calloc(1, sizeof(*h));
    h->cfg = cfg;
    h->rts = calloc((size_t)(n > 0 ? n : 1), sizeof(*h->rts));
    for (int i = 0; i < n; i++)
        h->rts[i] = rts[i];
    h->n = n;
    h->pg_checked_ms = -1000000;
    pthread_mutex_init(&h->mu, NULL);
    h->ui = dp_ui_new(cfg, rts, n);
    h->daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG,
                                 0, NULL, NULL, handle, h, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&sa, MHD_OPTION_END);
    if (!h->daemon) {
        dp_ui_free(h->ui);
        pthread_mutex_destroy(&h->mu);
        free(h->rts);
        free(h);
        return dp_errf(DP_ERR_PERMANENT, err, errlen,
                       "cannot listen on %s (in use, or not an address of this host)",
                       addr);
    }
    *out = h;
    return DP_OK;
}

void dp_http_stop(dp_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    dp_ui_free(h->ui);
    pthread_mutex_destroy(&h->mu);
    free(h->rts);
    free(h);
}

/*
 * http: the listener of `docpipe run --http ADDR` (libmicrohttpd, its own
 * thread): /metrics (metrics.h), /livez and /readyz; the dashboard at / and
 * /api/... (ui.h).
 *
 *   /livez   200 while every stage's poll loop turned within
 *            http_live_ms; 503 naming the stuck stage otherwise.
 *   /readyz  200 when PostgreSQL answers (a connection of its own, asked at
 *            most once a second) and every stage joined its group; 503 with
 *            the reason otherwise.
 * The runtimes are only read, through dp_runtime_view_get.
 */
#ifndef DP_HTTP_H
#define DP_HTTP_H

#include "config.h"
#include "dp_error.h"
#include "runtime.h"

typedef struct dp_http dp_http;

/* Serves the n runtimes (which must outlive it) at addr ("host:port").
 * rts itself is copied: the caller's array may go out of scope. */
dp_err dp_http_start(const dp_config *cfg, const char *addr, dp_runtime *const *rts,
                     int n, dp_http **out, char *err, size_t errlen);
void dp_http_stop(dp_http *h);

#endif

/*
 * http_alive: is a service up at all?
 *
 * When every call of a run fails retryably, a stage cannot tell a service
 * outage from a record the service chokes on.  One cheap GET settles it:
 * any HTTP answer below 500 (404 included: something is listening and
 * answering) means the service is up, so the failure is the record's own and
 * spends its retry budget; no answer, or a 5xx, means an outage, which
 * spends nothing and counts toward the service's circuit breaker.
 */
#ifndef DP_HTTP_ALIVE_H
#define DP_HTTP_ALIVE_H

#include <curl/curl.h>

/* GET url with the given headers (may be NULL) and timeout; returns 1 if
 * an HTTP status from 100 to 499 came back, 0 otherwise. */
int dp_http_alive(const char *url, const struct curl_slist *headers,
                  long timeout_ms);

#endif

/*
 * services: what the stages' calls to outside services look like, for the
 * metrics: requests in flight, their durations and outcomes, and the
 * state of each service's circuit breakers.
 *
 * A process-wide registry keyed by service name ("tika", "embeddings"),
 * safe from any thread.  Clients mark each request's start and end; a
 * breaker (breaker.c) attaches itself to its service when made and
 * detaches when freed.  Entries live as long as the process.
 */
#ifndef DP_SERVICES_H
#define DP_SERVICES_H

#include "pg.h"

typedef struct dp_service dp_service;
struct dp_breaker;
struct dp_config;

/* The entry of name, made on first use. */
dp_service *dp_service_get(const char *name);

/* A request goes out. */
void dp_service_begin(dp_service *s);
/* It came back after seconds: ok (an answer below 500) or not. */
void dp_service_end(dp_service *s, double seconds, int ok);

/* A call waited for the service's rate limit (the client's limiter). */
void dp_service_throttled(dp_service *s);

void dp_service_attach_breaker(dp_service *s, struct dp_breaker *b);
void dp_service_detach_breaker(dp_service *s, struct dp_breaker *b);

/* The services' metrics, in the Prometheus text format. */
void dp_services_render(dp_buf *out);

/* What holds a service up, as the status table and the dashboard show it. */
typedef struct dp_service_status {
    char name[64];
    const char *breaker;     /* "closed", "half_open", "open", or "none" */
    long long in_flight;
    int rate_limited;        /* a call waited for the rate limit in the last 10 s */
} dp_service_status;

/* Up to max services known to this process; returns how many. */
int dp_services_status(dp_service_status *out, int max);

/* A thread with a PostgreSQL connection of its own that writes this
 * process's service status into docpipe.dp_service_status every 5 s (best
 * effort: failures are logged at debug and retried), whatever the stages
 * are doing: a batch may wait on a rate limit for minutes. */
typedef struct dp_services_publisher dp_services_publisher;
dp_services_publisher *dp_services_publisher_start(const struct dp_config *cfg);
void dp_services_publisher_stop(dp_services_publisher *p);

#endif

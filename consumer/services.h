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

/* The entry of name, made on first use. */
dp_service *dp_service_get(const char *name);

/* A request goes out. */
void dp_service_begin(dp_service *s);
/* It came back after seconds: ok (an answer below 500) or not. */
void dp_service_end(dp_service *s, double seconds, int ok);

void dp_service_attach_breaker(dp_service *s, struct dp_breaker *b);
void dp_service_detach_breaker(dp_service *s, struct dp_breaker *b);

/* The services' metrics, in the Prometheus text format. */
void dp_services_render(dp_buf *out);

#endif

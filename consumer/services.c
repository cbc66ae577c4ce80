/* services: the outside services' figures for the metrics (see services.h). */
#include "services.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "breaker.h"
#include "runtime.h"

#define MAX_SERVICES 16
#define MAX_BREAKERS 8

struct dp_service {
    char name[64];
    int64_t in_flight;
    uint64_t ok, failed;
    dp_hist duration;
    dp_breaker *breakers[MAX_BREAKERS];
    int nbreakers;
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static dp_service services[MAX_SERVICES];
static int nservices;

dp_service *dp_service_get(const char *name)
{
    pthread_mutex_lock(&mu);
    dp_service *s = NULL;
    for (int i = 0; i < nservices && !s; i++)
        if (strcmp(services[i].name, name) == 0)
            s = &services[i];
    if (!s && nservices < MAX_SERVICES) {
        s = &services[nservices++];
        memset(s, 0, sizeof(*s));
        strncpy(s->name, name, sizeof(s->name) - 1);
    }
    if (!s) /* more services than anyone has: the last one takes the rest */
        s = &services[MAX_SERVICES - 1];
    pthread_mutex_unlock(&mu);
    return s;
}

void dp_service_begin(dp_service *s)
{
    pthread_mutex_lock(&mu);
    s->in_flight++;
    pthread_mutex_unlock(&mu);
}

void dp_service_end(dp_service *s, double seconds, int ok)
{
    pthread_mutex_lock(&mu);
    s->in_flight--;
    if (ok)
        s->ok++;
    else
        s->failed++;
    dp_hist_observe(&s->duration, seconds);
    pthread_mutex_unlock(&mu);
}

void dp_service_attach_breaker(dp_service *s, dp_breaker *b)
{
    pthread_mutex_lock(&mu);
    if (s->nbreakers < MAX_BREAKERS)
        s->breakers[s->nbreakers++] = b;
    pthread_mutex_unlock(&mu);
}

void dp_service_detach_breaker(dp_service *s, dp_breaker *b)
{
    pthread_mutex_lock(&mu);
    for (int i = 0; i < s->nbreakers; i++)
        if (s->breakers[i] == b) {
            s->breakers[i] = s->breakers[--s->nbreakers];
            break;
        }
    pthread_mutex_unlock(&mu);
}

void dp_services_render(dp_buf *out)
{
    pthread_mutex_lock(&mu);
    dp_buf_appendf(out, "# HELP docpipe_service_requests_in_flight Requests to the "
                   "service not answered yet.\n# TYPE docpipe_service_requests_in_flight"
                   " gauge\n");
    for (int i = 0; i < nservices; i++)
        dp_buf_appendf(out, "docpipe_service_requests_in_flight{service=\"%s\"} %lld\n",
                       services[i].name, (long long)services[i].in_flight);
    dp_buf_appendf(out, "# HELP docpipe_service_requests_total Requests to the service"
                   " by outcome (ok: an answer below 500).\n# TYPE "
                   "docpipe_service_requests_total counter\n");
    for (int i = 0; i < nservices; i++)
        dp_buf_appendf(out, "docpipe_service_requests_total{service=\"%s\",outcome=\"ok\"}"
                       " %llu\ndocpipe_service_requests_total{service=\"%s\",outcome="
                       "\"error\"} %llu\n", services[i].name,
                       (unsigned long long)services[i].ok, services[i].name,
                       (unsigned long long)services[i].failed);
    dp_buf_appendf(out, "# HELP docpipe_service_request_duration_seconds Time from a "
                   "request to its answer.\n# TYPE docpipe_service_request_duration_seconds"
                   " histogram\n");
    for (int i = 0; i < nservices; i++) {
        const dp_service *s = &services[i];
        uint64_t cum = 0;
        for (int b = 0; b <= DP_HIST_BUCKETS; b++) {
            cum += s->duration.counts[b];
            if (b < DP_HIST_BUCKETS)
                dp_buf_appendf(out, "docpipe_service_request_duration_seconds_bucket{"
                               "service=\"%s\",le=\"%g\"} %llu\n", s->name,
                               dp_hist_bounds[b], (unsigned long long)cum);
            else
                dp_buf_appendf(out, "docpipe_service_request_duration_seconds_bucket{"
                               "service=\"%s\",le=\"+Inf\"} %llu\n", s->name,
                               (unsigned long long)cum);
        }
        dp_buf_appendf(out, "docpipe_service_request_duration_seconds_sum{service=\"%s\"}"
                       " %.9g\ndocpipe_service_request_duration_seconds_count{service="
                       "\"%s\"} %llu\n", s->name, s->duration.sum, s->name,
                       (unsigned long long)s->duration.count);
    }
    dp_buf_appendf(out, "# HELP docpipe_breaker_state The service's circuit breaker: 0 "
                   "closed, 1 half-open, 2 open (the worst of the process's).\n# TYPE "
                   "docpipe_breaker_state gauge\n");
    for (int i = 0; i < nservices; i++) {
        if (!services[i].nbreakers)
            continue;
        int worst = 0;
        for (int k = 0; k < services[i].nbreakers; k++) {
            dp_breaker_state st = dp_breaker_state_now(services[i].breakers[k]);
            int v = st == DP_BREAKER_OPEN ? 2 : st == DP_BREAKER_HALF_OPEN ? 1 : 0;
            if (v > worst)
                worst = v;
        }
        dp_buf_appendf(out, "docpipe_breaker_state{service=\"%s\"} %d\n",
                       services[i].name, worst);
    }
    pthread_mutex_unlock(&mu);
}

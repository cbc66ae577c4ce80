/* services: the outside services' figures for the metrics (see services.h). */
#include "services.h"

#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "breaker.h"
#include "clock.h"
#include "log.h"
#include "config.h"
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
    int64_t throttled_ms;       /* dp_clock_mono_ms of the last wait, 0 none */
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

void dp_service_throttled(dp_service *s)
{
    pthread_mutex_lock(&mu);
    s->throttled_ms = dp_clock_mono_ms(NULL);
    pthread_mutex_unlock(&mu);
}

/* The worst state of the service's breakers, 0 closed .. 2 open; -1 none. */
static int worst_breaker(const dp_service *s)
{
    int worst = s->nbreakers ? 0 : -1;
    for (int k = 0; k < s->nbreakers; k++) {
        dp_breaker_state st = dp_breaker_state_now(s->breakers[k]);
        int v = st == DP_BREAKER_OPEN ? 2 : st == DP_BREAKER_HALF_OPEN ? 1 : 0;
        if (v > worst)
            worst = v;
    }
    return worst;
}

static int rate_limited(const dp_service *s, int64_t now)
{
    return s->throttled_ms && now - s->throttled_ms < 10000;
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
        int worst = worst_breaker(&services[i]);
        if (worst >= 0)
            dp_buf_appendf(out, "docpipe_breaker_state{service=\"%s\"} %d\n",
                           services[i].name, worst);
    }
    int64_t now = dp_clock_mono_ms(NULL);
    dp_buf_appendf(out, "# HELP docpipe_service_rate_limited 1 when a call to the "
                   "service waited for its rate limit in the last 10 s.\n# TYPE "
                   "docpipe_service_rate_limited gauge\n");
    for (int i = 0; i < nservices; i++)
        dp_buf_appendf(out, "docpipe_service_rate_limited{service=\"%s\"} %d\n",
                       services[i].name, rate_limited(&services[i], now));
    pthread_mutex_unlock(&mu);
}

int dp_services_status(dp_service_status *out, int max)
{
    static const char *const names[3] = {"closed", "half_open", "open"};
    pthread_mutex_lock(&mu);
    int64_t now = dp_clock_mono_ms(NULL);
    int n = 0;
    for (int i = 0; i < nservices && n < max; i++, n++) {
        int worst = worst_breaker(&services[i]);
        memcpy(out[n].name, services[i].name, sizeof(out[n].name)); /* both 64, NUL-ended */
        out[n].breaker = worst < 0 ? "none" : names[worst];
        out[n].in_flight = services[i].in_flight;
        out[n].rate_limited = rate_limited(&services[i], now);
    }
    pthread_mutex_unlock(&mu);
    return n;
}

struct dp_services_publisher {
    const dp_config *cfg;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stop;
};

static void publish(PGconn *db, const char *instance)
{
    dp_service_status st[MAX_SERVICES];
    int n = dp_services_status(st, MAX_SERVICES);
    for (int i = 0; i < n; i++) {
        char inflight[32], err[512];
        snprintf(inflight, sizeof(inflight), "%lld", st[i].in_flight);
        const char *params[5] = {instance, st[i].name, st[i].breaker, inflight,
                                 st[i].rate_limited ? "true" : "false"};
        if (dp_pg_command(db, "INSERT INTO docpipe.dp_service_status (instance,"
                " service, breaker, in_flight, rate_limited) VALUES ($1, $2, $3,"
                " $4::bigint, $5::boolean) ON CONFLICT (instance, service) DO UPDATE"
                " SET breaker = EXCLUDED.breaker, in_flight = EXCLUDED.in_flight,"
                " rate_limited = EXCLUDED.rate_limited, updated_at = now()",
                5, params, "publish service status", err, sizeof(err))) {
            dp_log(DP_LOG_DEBUG, NULL, "%s", err);
            return;
        }
    }
}

static void *publisher_main(void *arg)
{
    dp_services_publisher *p = arg;
    PGconn *db = NULL;
    pthread_mutex_lock(&p->mu);
    while (!p->stop) {
        pthread_mutex_unlock(&p->mu);
        if (db && PQstatus(db) != CONNECTION_OK) {
            PQfinish(db);
            db = NULL;
        }
        if (!db) {
            const char *keys[] = {"dbname", "connect_timeout", "application_name", NULL};
            const char *vals[] = {p->cfg->database_url, "2", "docpipe-services", NULL};
            db = PQconnectdbParams(keys, vals, 1);
        }
        if (PQstatus(db) == CONNECTION_OK)
            publish(db, p->cfg->instance_id);
        pthread_mutex_lock(&p->mu);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 5;
        while (!p->stop && pthread_cond_timedwait(&p->cv, &p->mu, &until) == 0)
            ;
    }
    pthread_mutex_unlock(&p->mu);
    PQfinish(db);
    return NULL;
}

dp_services_publisher *dp_services_publisher_start(const dp_config *cfg)
{
    dp_services_publisher *p = calloc(1, sizeof(*p));
    p->cfg = cfg;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, publisher_main, p) != 0) {
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
        free(p);
        return NULL;
    }
    return p;
}

void dp_services_publisher_stop(dp_services_publisher *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

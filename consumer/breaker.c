/* breaker: per-service circuit breaker (see breaker.h). */
#include "breaker.h"
#include "services.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "log.h"

struct dp_breaker {
    pthread_mutex_t mu;
    char *service;
    int threshold;
    int64_t reset_ms;
    dp_breaker_state state;
    int failures;           /* consecutive */
    int64_t opened_at;      /* when it last opened */
    int probe_in_flight;    /* half-open: a probe went ahead, no outcome yet */
    int64_t probe_started;
    int64_t (*now_ms)(void *arg);
    void *clock_arg;
};

dp_breaker *dp_breaker_new(const char *service, int threshold, int64_t reset_ms)
{
    dp_breaker *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->service = strdup(service ? service : "service");
    if (!b->service) {
        free(b);
        return NULL;
    }
    pthread_mutex_init(&b->mu, NULL);
    b->threshold = threshold > 0 ? threshold : DP_BREAKER_DEFAULT_THRESHOLD;
    b->reset_ms = reset_ms > 0 ? reset_ms : DP_BREAKER_DEFAULT_RESET_MS;
    b->state = DP_BREAKER_CLOSED;
    b->now_ms = dp_clock_mono_ms;
    dp_service_attach_breaker(dp_service_get(b->service), b);
    return b;
}

void dp_breaker_free(dp_breaker *b)
{
    if (!b)
        return;
    dp_service_detach_breaker(dp_service_get(b->service), b);
    pthread_mutex_destroy(&b->mu);
    free(b->service);
    free(b);
}

void dp_breaker_set_clock(dp_breaker *b, int64_t (*now_ms)(void *arg), void *arg)
{
    pthread_mutex_lock(&b->mu);
    b->now_ms = now_ms ? now_ms : dp_clock_mono_ms;
    b->clock_arg = now_ms ? arg : NULL;
    pthread_mutex_unlock(&b->mu);
}

const char *dp_breaker_state_name(dp_breaker_state s)
{
    switch (s) {
    case DP_BREAKER_CLOSED: return "closed";
    case DP_BREAKER_OPEN: return "open";
    case DP_BREAKER_HALF_OPEN: return "half_open";
    }
    return "unknown";
}

const char *dp_breaker_service(const dp_breaker *b) { return b->service; }

/* Called with the mutex held. */
static void set_state(dp_breaker *b, dp_breaker_state to, int64_t now)
{
    dp_breaker_state from = b->state;
    b->state = to;
    if (to == DP_BREAKER_OPEN)
        b->opened_at = now;
    if (to != DP_BREAKER_HALF_OPEN)
        b->probe_in_flight = 0;
    if (from == to)
        return;
    json_t *extra = json_pack("{s:s, s:s, s:s, s:i, s:I}", "service", b->service,
                              "from", dp_breaker_state_name(from), "to",
                              dp_breaker_state_name(to), "failures", b->failures,
                              "reset_ms", (json_int_t)b->reset_ms);
    if (to == DP_BREAKER_OPEN)
        dp_logj(DP_LOG_WARN, NULL, extra, "%s circuit breaker opened%s", b->service,
                from == DP_BREAKER_HALF_OPEN ? " again: the probe failed" : "");
    else if (to == DP_BREAKER_HALF_OPEN)
        dp_logj(DP_LOG_INFO, NULL, extra, "%s circuit breaker half-open: next call probes",
                b->service);
    else
        dp_logj(DP_LOG_INFO, NULL, extra, "%s circuit breaker closed", b->service);
}

/* An open breaker turns half-open once reset_ms has passed. */
static void refresh(dp_breaker *b, int64_t now)
{
    if (b->state == DP_BREAKER_OPEN && now - b->opened_at >= b->reset_ms)
        set_state(b, DP_BREAKER_HALF_OPEN, now);
}

int dp_breaker_allow_call(dp_breaker *b, int *is_probe)
{
    int ok = 0, probe = 0;
    pthread_mutex_lock(&b->mu);
    int64_t now = b->now_ms(b->clock_arg);
    refresh(b, now);
    switch (b->state) {
    case DP_BREAKER_CLOSED:
        ok = 1;
        break;
    case DP_BREAKER_OPEN:
        break;
    case DP_BREAKER_HALF_OPEN:
        if (!b->probe_in_flight || now - b->probe_started >= b->reset_ms) {
            b->probe_in_flight = 1;
            b->probe_started = now;
            ok = probe = 1;
        }
        break;
    }
    pthread_mutex_unlock(&b->mu);
    if (is_probe)
        *is_probe = probe;
    return ok;
}

int dp_breaker_allow(dp_breaker *b) { return dp_breaker_allow_call(b, NULL); }

void dp_breaker_success(dp_breaker *b)
{
    pthread_mutex_lock(&b->mu);
    b->failures = 0;
    set_state(b, DP_BREAKER_CLOSED, b->now_ms(b->clock_arg));
    pthread_mutex_unlock(&b->mu);
}

void dp_breaker_failure(dp_breaker *b)
{
    pthread_mutex_lock(&b->mu);
    int64_t now = b->now_ms(b->clock_arg);
    b->failures++;
    /* Failures reported while open come from calls that went ahead before it
     * opened: they do not extend the open period. */
    if (b->state == DP_BREAKER_HALF_OPEN ||
        (b->state == DP_BREAKER_CLOSED && b->failures >= b->threshold))
        set_state(b, DP_BREAKER_OPEN, now);
    pthread_mutex_unlock(&b->mu);
}

dp_breaker_state dp_breaker_state_now(dp_breaker *b)
{
    pthread_mutex_lock(&b->mu);
    refresh(b, b->now_ms(b->clock_arg));
    dp_breaker_state s = b->state;
    pthread_mutex_unlock(&b->mu);
    return s;
}

int64_t dp_breaker_retry_in_ms(dp_breaker *b)
{
    int64_t wait = 0;
    pthread_mutex_lock(&b->mu);
    int64_t now = b->now_ms(b->clock_arg);
    refresh(b, now);
    if (b->state == DP_BREAKER_OPEN)
        wait = b->opened_at + b->reset_ms - now;
    else if (b->state == DP_BREAKER_HALF_OPEN && b->probe_in_flight)
        wait = b->probe_started + b->reset_ms - now; /* at the latest */
    pthread_mutex_unlock(&b->mu);
    return wait > 0 ? wait : 0;
}

int dp_breaker_failures(dp_breaker *b)
{
    pthread_mutex_lock(&b->mu);
    int n = b->failures;
    pthread_mutex_unlock(&b->mu);
    return n;
}

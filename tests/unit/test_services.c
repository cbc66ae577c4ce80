/*
 * services: the outside services' figures as the metrics show them.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "breaker.h"
#include "pg.h"
#include "services.h"

static int has(const char *text, const char *line)
{
    char pat[512];
    snprintf(pat, sizeof(pat), "\n%s\n", line);
    return strstr(text, pat) != NULL;
}

Test(services, test_requests_in_flight_durations_outcomes_and_breaker_state)
{
    dp_service *s = dp_service_get("unit-svc");
    cr_assert_eq(dp_service_get("unit-svc"), s, "one entry per name");
    dp_service_begin(s);
    dp_service_begin(s);
    dp_service_end(s, 0.2, 1);
    dp_service_begin(s);
    dp_service_end(s, 3.0, 0);
    dp_breaker *b = dp_breaker_new("unit-svc", 2, 60000);
    dp_buf out = {0};
    dp_services_render(&out);
    cr_assert(has(out.data, "docpipe_service_requests_in_flight{service=\"unit-svc\"} 1"),
              "%s", out.data);
    cr_assert(has(out.data, "docpipe_service_requests_total{service=\"unit-svc\","
                            "outcome=\"ok\"} 1"));
    cr_assert(has(out.data, "docpipe_service_requests_total{service=\"unit-svc\","
                            "outcome=\"error\"} 1"));
    cr_assert(has(out.data, "docpipe_service_request_duration_seconds_bucket{"
                            "service=\"unit-svc\",le=\"0.25\"} 1"));
    cr_assert(has(out.data, "docpipe_service_request_duration_seconds_bucket{"
                            "service=\"unit-svc\",le=\"5\"} 2"));
    cr_assert(has(out.data, "docpipe_service_request_duration_seconds_count{"
                            "service=\"unit-svc\"} 2"));
    cr_assert(has(out.data, "docpipe_breaker_state{service=\"unit-svc\"} 0"), "closed");
    dp_breaker_failure(b);
    dp_breaker_failure(b);
    dp_buf_reset(&out);
    dp_services_render(&out);
    cr_assert(has(out.data, "docpipe_breaker_state{service=\"unit-svc\"} 2"), "open");
    dp_breaker_free(b);
    dp_buf_reset(&out);
    dp_services_render(&out);
    cr_assert(!strstr(out.data, "docpipe_breaker_state{service=\"unit-svc\"}"),
              "a freed breaker is gone");
    dp_buf_free(&out);
}

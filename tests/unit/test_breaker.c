/*
 * test_breaker: the circuit breaker's states, driven by a fake clock.
 *
 * closed -> open after `threshold` consecutive failures; open refuses calls
 * for reset_ms; then exactly one half-open probe goes ahead, and its outcome
 * closes or re-opens the breaker.
 */
#include <criterion/criterion.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "breaker.h"

static int64_t fake_now;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static dp_breaker *breaker(int threshold, int64_t reset_ms)
{
    fake_now = 1000000;
    dp_breaker *b = dp_breaker_new("test", threshold, reset_ms);
    cr_assert(b);
    dp_breaker_set_clock(b, fake_clock, NULL);
    return b;
}

static void fail_times(dp_breaker *b, int n)
{
    for (int i = 0; i < n; i++)
        dp_breaker_failure(b);
}

Test(breaker, starts_closed_and_allows_calls)
{
    dp_breaker *b = breaker(5, 60000);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED);
    cr_assert_eq(dp_breaker_allow(b), 1);
    cr_assert_eq(dp_breaker_retry_in_ms(b), 0);
    cr_assert_str_eq(dp_breaker_service(b), "test");
    dp_breaker_free(b);
}

Test(breaker, opens_after_five_consecutive_failures)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 4);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED, "4 failures keep it closed");
    cr_assert_eq(dp_breaker_allow(b), 1);
    dp_breaker_failure(b);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);
    cr_assert_eq(dp_breaker_failures(b), 5);
    dp_breaker_free(b);
}

Test(breaker, a_success_resets_the_count_of_consecutive_failures)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 4);
    dp_breaker_success(b);
    cr_assert_eq(dp_breaker_failures(b), 0);
    fail_times(b, 4);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED);
    dp_breaker_free(b);
}

Test(breaker, defaults_are_five_failures_and_sixty_seconds)
{
    dp_breaker *b = breaker(0, 0);
    fail_times(b, 4);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED);
    dp_breaker_failure(b);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);
    cr_assert_eq(dp_breaker_retry_in_ms(b), 60000);
    dp_breaker_free(b);
}

Test(breaker, refuses_calls_while_open_and_says_how_long)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 5);
    cr_assert_eq(dp_breaker_allow(b), 0);
    cr_assert_eq(dp_breaker_retry_in_ms(b), 60000);
    fake_now += 59999;
    cr_assert_eq(dp_breaker_allow(b), 0, "still open 1 ms before reset");
    cr_assert_eq(dp_breaker_retry_in_ms(b), 1);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN);
    dp_breaker_free(b);
}

Test(breaker, failures_of_calls_started_before_it_opened_do_not_extend_it)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 5);
    fake_now += 30000;
    fail_times(b, 10); /* stragglers still in flight when it opened */
    cr_assert_eq(dp_breaker_retry_in_ms(b), 30000);
    dp_breaker_free(b);
}

Test(breaker, allows_exactly_one_half_open_probe_after_reset)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 5);
    fake_now += 60000;
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_HALF_OPEN);
    cr_assert_eq(dp_breaker_retry_in_ms(b), 0);
    int probe = 0;
    cr_assert_eq(dp_breaker_allow_call(b, &probe), 1);
    cr_assert_eq(probe, 1, "the first caller is the probe");
    for (int i = 0; i < 10; i++)
        cr_assert_eq(dp_breaker_allow(b), 0, "a second call while the probe is out");
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_HALF_OPEN);
    cr_assert_gt(dp_breaker_retry_in_ms(b), 0);
    dp_breaker_free(b);
}

Test(breaker, probe_success_closes_it)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 5);
    fake_now += 60000;
    cr_assert_eq(dp_breaker_allow(b), 1);
    dp_breaker_success(b);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED);
    cr_assert_eq(dp_breaker_failures(b), 0);
    int probe = 1;
    cr_assert_eq(dp_breaker_allow_call(b, &probe), 1);
    cr_assert_eq(probe, 0, "a closed breaker has no probes");
    cr_assert_eq(dp_breaker_allow(b), 1);
    fail_times(b, 4);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_CLOSED, "counting starts again");
    dp_breaker_free(b);
}

Test(breaker, probe_failure_reopens_it_for_another_reset_period)
{
    dp_breaker *b = breaker(5, 60000);
    fail_times(b, 5);
    fake_now += 61000;
    cr_assert_eq(dp_breaker_allow(b), 1);
    fake_now += 500;
    dp_breaker_failure(b);
    cr_assert_eq(dp_breaker_state_now(b), DP_BREAKER_OPEN, "one failed probe is enough");
    cr_assert_eq(dp_breaker_allow(b), 0);
    cr_assert_eq(dp_breaker_retry_in_ms(b), 60000, "counted from the failed probe");
    fake_now += 60000;
    cr_assert_eq(dp_breaker_allow(b), 1, "then another probe");
    dp_breaker_free(b);
}

Test(breaker, a_probe_that_never_reports_stops_blocking_after_reset_ms)
{
    dp_breaker *b = breaker(5, 1000);
    fail_times(b, 5);
    fake_now += 1000;
    cr_assert_eq(dp_breaker_allow(b), 1);
    fake_now += 999;
    cr_assert_eq(dp_breaker_allow(b), 0);
    fake_now += 1;
    int probe = 0;
    cr_assert_eq(dp_breaker_allow_call(b, &probe), 1);
    cr_assert_eq(probe, 1);
    dp_breaker_free(b);
}

Test(breaker, state_names)
{
    cr_assert_str_eq(dp_breaker_state_name(DP_BREAKER_CLOSED), "closed");
    cr_assert_str_eq(dp_breaker_state_name(DP_BREAKER_OPEN), "open");
    cr_assert_str_eq(dp_breaker_state_name(DP_BREAKER_HALF_OPEN), "half_open");
}

/* Many threads racing for the half-open probe: exactly one wins. */
static dp_breaker *race_b;
static atomic_int race_wins;

static void *race(void *arg)
{
    (void)arg;
    for (int i = 0; i < 1000; i++)
        if (dp_breaker_allow(race_b))
            atomic_fetch_add(&race_wins, 1);
    return NULL;
}

Test(breaker, concurrent_callers_get_one_probe_between_them)
{
    race_b = breaker(1, 60000);
    dp_breaker_failure(race_b);
    fake_now += 60000;
    pthread_t th[8];
    for (int i = 0; i < 8; i++)
        cr_assert_eq(pthread_create(&th[i], NULL, race, NULL), 0);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(atomic_load(&race_wins), 1);
    dp_breaker_free(race_b);
}

/*
 * test_ratelimit: requests and tokens per minute over a sliding 60 s window,
 * driven by a fake clock.
 */
#include <criterion/criterion.h>

#include <stdint.h>

#include "ratelimit.h"

static int64_t fake_now;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return fake_now;
}

static dp_ratelimit *limiter(int rpm, int tpm)
{
    fake_now = 5000000;
    dp_ratelimit *rl = dp_ratelimit_new(rpm, tpm);
    cr_assert(rl);
    dp_ratelimit_set_clock(rl, fake_clock, NULL);
    return rl;
}

Test(ratelimit, admits_up_to_rpm_requests_then_says_when_the_oldest_leaves)
{
    dp_ratelimit *rl = limiter(3, 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    fake_now += 10000;
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 50000, "the first request leaves at +60 s");
    fake_now += 49999;
    cr_assert_eq(dp_ratelimit_try(rl, 1), 1);
    fake_now += 1;
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 10000, "then the next two at +70 s");
    dp_ratelimit_free(rl);
}

Test(ratelimit, refused_requests_are_not_counted)
{
    dp_ratelimit *rl = limiter(2, 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    for (int i = 0; i < 100; i++)
        cr_assert_gt(dp_ratelimit_try(rl, 1), 0);
    int64_t reqs = -1;
    dp_ratelimit_usage(rl, &reqs, NULL);
    cr_assert_eq(reqs, 2);
    fake_now += 60000;
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    dp_ratelimit_free(rl);
}

Test(ratelimit, never_more_than_rpm_in_any_sixty_seconds)
{
    /* Ask every 100 ms for 5 minutes; every admitted 60 s span holds <= 50. */
    dp_ratelimit *rl = limiter(50, 0);
    static int64_t admitted[4000];
    int n = 0;
    for (int step = 0; step < 3000; step++, fake_now += 100)
        if (dp_ratelimit_try(rl, 1) == 0)
            admitted[n++] = fake_now;
    cr_assert_eq(n, 250, "50 a minute for 5 minutes, got %d", n);
    for (int i = 50; i < n; i++)
        cr_assert_geq(admitted[i] - admitted[i - 50], 60000);
    dp_ratelimit_free(rl);
}

Test(ratelimit, admits_up_to_tpm_tokens_then_waits_for_enough_to_leave)
{
    dp_ratelimit *rl = limiter(0, 1000);
    cr_assert_eq(dp_ratelimit_try(rl, 400), 0);
    fake_now += 1000;
    cr_assert_eq(dp_ratelimit_try(rl, 400), 0);
    fake_now += 1000;
    cr_assert_eq(dp_ratelimit_try(rl, 200), 0, "exactly the budget");
    cr_assert_eq(dp_ratelimit_try(rl, 1), 58000, "waits for the first 400 to leave");
    cr_assert_eq(dp_ratelimit_try(rl, 700), 59000, "700 needs the first two gone");
    fake_now += 58000;
    cr_assert_eq(dp_ratelimit_try(rl, 500), 1000);
    cr_assert_eq(dp_ratelimit_try(rl, 400), 0);
    int64_t tokens = -1;
    dp_ratelimit_usage(rl, NULL, &tokens);
    cr_assert_eq(tokens, 1000);
    dp_ratelimit_free(rl);
}

Test(ratelimit, request_over_the_whole_token_budget_goes_once_the_window_is_empty)
{
    dp_ratelimit *rl = limiter(0, 1000);
    cr_assert_eq(dp_ratelimit_try(rl, 10), 0);
    fake_now += 20000;
    cr_assert_eq(dp_ratelimit_try(rl, 5000), 40000, "waits until nothing is in the window");
    fake_now += 40000;
    cr_assert_eq(dp_ratelimit_try(rl, 5000), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 60000, "and blocks the next minute");
    dp_ratelimit_free(rl);
}

Test(ratelimit, the_stricter_of_rpm_and_tpm_decides_the_wait)
{
    dp_ratelimit *rl = limiter(2, 100);
    cr_assert_eq(dp_ratelimit_try(rl, 90), 0);
    fake_now += 5000;
    cr_assert_eq(dp_ratelimit_try(rl, 10), 0);
    cr_assert_eq(dp_ratelimit_try(rl, 0), 55000, "rpm is full; tokens are not");
    fake_now += 55000;
    cr_assert_eq(dp_ratelimit_try(rl, 95), 5000, "rpm has room now, tokens need 10 to leave");
    fake_now += 5000;
    cr_assert_eq(dp_ratelimit_try(rl, 95), 0);
    dp_ratelimit_free(rl);
}

Test(ratelimit, zero_limits_mean_unlimited)
{
    dp_ratelimit *rl = limiter(0, 0);
    for (int i = 0; i < 100000; i++)
        cr_assert_eq(dp_ratelimit_try(rl, 1000000), 0);
    int64_t reqs = 0, tokens = 0;
    dp_ratelimit_usage(rl, &reqs, &tokens);
    cr_assert_eq(reqs, 100000);
    cr_assert_eq(tokens, 100000LL * 1000000);
    fake_now += 60000;
    dp_ratelimit_usage(rl, &reqs, &tokens);
    cr_assert_eq(reqs, 0, "the window forgets after 60 s");
    cr_assert_eq(tokens, 0);
    dp_ratelimit_free(rl);
}

Test(ratelimit, real_clock_admits_then_asks_to_wait_about_a_minute)
{
    dp_ratelimit *rl = dp_ratelimit_new(1, 0);
    cr_assert_eq(dp_ratelimit_try(rl, 1), 0);
    int64_t w = dp_ratelimit_try(rl, 1);
    cr_assert(w > 59000 && w <= 60000, "wait %lld", (long long)w);
    dp_ratelimit_free(rl);
}

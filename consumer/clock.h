/*
 * clock: the monotonic millisecond clock that the runtime, the breaker and
 * the rate limiter measure time with.  dp_clock_mono_ms has the shape of
 * their injectable clocks (tests pass a fake one; arg is unused here).
 */
#ifndef DP_CLOCK_H
#define DP_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline int64_t dp_clock_mono_ms(void *arg)
{
    (void)arg;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#endif

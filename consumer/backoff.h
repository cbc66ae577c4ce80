/*
 * backoff: retry delays.  Attempt n (0-based) waits base * 2^n ms, spread
 * by +-jitter (a fraction) so that records failing together do not retry in
 * lock step.  The original system's numbers are the defaults: 3 s, 6 s, 12 s.
 */
#ifndef DP_BACKOFF_H
#define DP_BACKOFF_H

#include <stdint.h>

int64_t dp_backoff_ms(int64_t base_ms, int n, double jitter,
                      unsigned int *rand_state);

#endif

/*
 * bench_util: what the benchmarks measure with: a monotonic clock, a
 * process's peak resident memory and CPU time, and sorting figures for
 * medians.
 */
#ifndef DP_BENCH_UTIL_H
#define DP_BENCH_UTIL_H

#include <sys/types.h>

/* Seconds on the monotonic clock. */
double bench_now(void);

/* Peak resident set (VmHWM) of a running process in kB, -1 if unknown. */
long bench_vm_hwm_kb(pid_t pid);

/* User + system CPU seconds of a running process, -1 if unknown. */
double bench_cpu_seconds(pid_t pid);

/* qsort comparator for doubles, ascending. */
int bench_cmp_double(const void *a, const void *b);

/* Median of v[0..n) (sorts v); n > 0. */
double bench_median(double *v, int n);

#endif

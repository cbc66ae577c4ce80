/*
 * metrics: the stages of a process in the Prometheus text format (version
 * 0.0.4), rendered from each runtime's view (runtime.h) when scraped.
 *
 * Every metric is named docpipe_*, labelled by stage (and category,
 * client, le where it applies).  The list, with what each means, is in
 * docs/operations.md; the test reads this output with a real Prometheus
 * parser and checks the numbers against what went through.
 */
#ifndef DP_METRICS_H
#define DP_METRICS_H

#include "pg.h"
#include "runtime.h"

/* Appends the exposition of the n runtimes (and the process) to out. */
void dp_metrics_render(dp_runtime *const *rts, int n, dp_buf *out);

#endif

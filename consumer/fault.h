/*
 * fault: deterministic crash points, compiled into test builds only.
 *
 * The windows of a batch (after the handler, between delivery and COMMIT,
 * inside a claim, inside a retry wait, ...) are too narrow to hit by
 * killing a process at random.  A test names the window instead:
 *
 *   DOCPIPE_FAULT=<stage>:<point>:<action>[:<nth>][,...]
 *
 * action is kill (SIGKILL at once), stall (sleep DOCPIPE_FAULT_STALL_MS,
 * default 60000, then go on) or fail (the caller treats the step as failed
 * the way it would fail for real).  nth (default 1) picks the one hit that
 * fires; 0 fires on every hit, -N on the first N.  stage "*" matches any stage.  Points are named
 * where DP_FAULT is called (docs/design.md lists them).
 *
 * Release builds define neither DOCPIPE_FAULTS nor the code: DP_FAULT is 0.
 */
#ifndef DP_FAULT_H
#define DP_FAULT_H

#ifdef DOCPIPE_FAULTS
/* Returns 1 if the caller must fail the step (action fail); kill and stall
 * act here.  Thread-safe enough for one stage thread per stage. */
int dp_fault_hit(const char *stage, const char *point);
#define DP_FAULT(stage, point) dp_fault_hit((stage), (point))
#else
/* A call, not a bare 0: DP_FAULT(...) used as a statement must not be a
 * statement with no effect (-Werror=unused-value in Release builds). */
static inline int dp_fault_off(void) { return 0; }
#define DP_FAULT(stage, point) dp_fault_off()
#endif

#endif

/* fault: the test builds' crash points (see fault.h). */
#include "fault.h"

#ifdef DOCPIPE_FAULTS
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define MAX_RULES 16

typedef struct rule {
    char stage[64], point[64], action[16];
    long nth;
    atomic_long hits;
} rule;

static rule rules[MAX_RULES];
static int nrules = -1;
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void load(void)
{
    nrules = 0;
    const char *spec = getenv("DOCPIPE_FAULT");
    if (!spec || !*spec)
        return;
    char *copy = strdup(spec), *save = NULL;
    for (char *tok = strtok_r(copy, ",", &save); tok && nrules < MAX_RULES;
         tok = strtok_r(NULL, ",", &save)) {
        rule *r = &rules[nrules];
        char nth[32] = "1";
        int n = sscanf(tok, "%63[^:]:%63[^:]:%15[^:]:%31s", r->stage, r->point,
                       r->action, nth);
        if (n < 3) {
            dp_log(DP_LOG_ERROR, NULL, "DOCPIPE_FAULT: cannot read '%s'", tok);
            continue;
        }
        r->nth = strtol(nth, NULL, 10);
        atomic_init(&r->hits, 0);
        nrules++;
    }
    free(copy);
}

int dp_fault_hit(const char *stage, const char *point)
{
    pthread_once(&once, load);
    for (int i = 0; i < nrules; i++) {
        rule *r = &rules[i];
        if ((strcmp(r->stage, "*") && strcmp(r->stage, stage ? stage : "")) ||
            strcmp(r->point, point))
            continue;
        long hit = atomic_fetch_add(&r->hits, 1) + 1;
        if ((r->nth > 0 && hit != r->nth) || (r->nth < 0 && hit > -r->nth))
            continue;
        dp_log_ctx ctx = {stage, NULL, NULL, -1, -1};
        dp_log(DP_LOG_WARN, &ctx, "fault point %s: %s (hit %ld)", point,
               r->action, hit);
        if (strcmp(r->action, "kill") == 0) {
            raise(SIGKILL);
        } else if (strcmp(r->action, "stall") == 0) {
            const char *ms = getenv("DOCPIPE_FAULT_STALL_MS");
            usleep((useconds_t)(ms ? atol(ms) : 60000) * 1000);
        } else if (strcmp(r->action, "fail") == 0) {
            return 1;
        }
    }
    return 0;
}
#endif

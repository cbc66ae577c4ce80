/* stages: the stage table (see stages.h). */
#include "stages.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

dp_err dp_demo_open(const dp_config *cfg, dp_stage *stage, char *err,
                    size_t errlen);
void dp_demo_close(dp_stage *stage);

const dp_stage_def dp_stage_defs[] = {
    {"demo", "pass-through demonstration: one row per record, output copied",
     dp_demo_open, dp_demo_close},
    {NULL, NULL, NULL, NULL},
};

const dp_stage_def *dp_stages_find(const char *name)
{
    for (const dp_stage_def *d = dp_stage_defs; d->name; d++)
        if (strcmp(d->name, name) == 0)
            return d;
    return NULL;
}

dp_err dp_stages_open(const dp_config *cfg, const char *name, dp_stage *stage,
                      char *err, size_t errlen)
{
    const dp_stage_def *d = dp_stages_find(name);
    if (!d)
        return dp_errf(DP_ERR_PERMANENT, err, errlen, "unknown stage '%s'",
                       name);
    memset(stage, 0, sizeof(*stage));
    return d->open(cfg, stage, err, errlen);
}

void dp_stages_close(const char *name, dp_stage *stage)
{
    const dp_stage_def *d = dp_stages_find(name);
    if (d)
        d->close(stage);
}

char *dp_topic_name(const dp_config *cfg, const char *suffix)
{
    size_t n = strlen(cfg->topic_prefix) + strlen(suffix) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%s%s", cfg->topic_prefix, suffix);
    return s;
}

/* stages: the stage table (see stages.h). */
#include "stages.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DP_STAGE_DECL(fn)                                                  \
    dp_err dp_##fn##_open(const dp_config *cfg, dp_stage *stage, char *err, \
                          size_t errlen);                                   \
    void dp_##fn##_close(dp_stage *stage)

DP_STAGE_DECL(intake);
DP_STAGE_DECL(parse);
DP_STAGE_DECL(validate);
DP_STAGE_DECL(chunk);
DP_STAGE_DECL(embed_plan);
DP_STAGE_DECL(embed);
DP_STAGE_DECL(gather);
DP_STAGE_DECL(finalize);
DP_STAGE_DECL(demo);

/* In pipeline order: a document travels down this table. */
const dp_stage_def dp_stage_defs[] = {
    {"intake", "1. check uploads, record document and job (uploaded -> parse_queued)",
     dp_intake_open, dp_intake_close},
    {"parse", "2. extract text through the parser service (-> parsed)",
     dp_parse_open, dp_parse_close},
    {"validate", "3. normalise, hash, spot duplicate content (-> parse_validated)",
     dp_validate_open, dp_validate_close},
    {"chunk", "4. chunks (the job's chunker) into the chunk buffer (-> chunks_stored)",
     dp_chunk_open, dp_chunk_close},
    {"embed-plan", "5. split chunks into embedding batches (-> embedding_queued)",
     dp_embed_plan_open, dp_embed_plan_close},
    {"embed", "6. embed each batch, store vectors (-> embedding_in_progress)",
     dp_embed_open, dp_embed_close},
    {"gather", "7. when every batch is stored (-> embeddings_stored)",
     dp_gather_open, dp_gather_close},
    {"finalize", "8. promote into document_chunks, publish completed (-> complete)",
     dp_finalize_open, dp_finalize_close},
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

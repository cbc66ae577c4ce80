/*
 * stages: the table of every stage docpipe can run.
 *
 * dp_stages_open() builds a ready dp_stage for a name (allocating its state:
 * schemas, service clients); dp_stages_close() frees it.  The CLI, the tests
 * and the benchmarks all go through this table.
 */
#ifndef DP_STAGES_H
#define DP_STAGES_H

#include "config.h"
#include "stage.h"

typedef struct dp_stage_def {
    const char *name;
    const char *help;
    dp_err (*open)(const dp_config *cfg, dp_stage *stage, char *err,
                   size_t errlen);
    void (*close)(dp_stage *stage);
} dp_stage_def;

/* NULL-terminated by a row whose name is NULL. */
extern const dp_stage_def dp_stage_defs[];

const dp_stage_def *dp_stages_find(const char *name);

/* Fills *stage; topic names are built from cfg->topic_prefix and owned by
 * the stage (freed by dp_stages_close). */
dp_err dp_stages_open(const dp_config *cfg, const char *name, dp_stage *stage,
                      char *err, size_t errlen);
void dp_stages_close(const char *name, dp_stage *stage);

/* The estimated tokens of a document's embedding batches released and not
 * yet gathered (embed_plan.c, gather.c): embed_window_tokens, or when it is
 * 0 ten seconds of embed_tpm; -1 (all at once) when it is -1. */
long dp_embed_window_tokens(const dp_config *cfg);

/* Topic name helper: malloc'd "<prefix><suffix>". */
char *dp_topic_name(const dp_config *cfg, const char *suffix);

#endif

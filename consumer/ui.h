/*
 * ui: the dashboard of `docpipe run --http ADDR`, served by http.c.
 *
 *   /                 one HTML page (consumer/ui.html, embedded at build
 *                     time by CMake) that polls the endpoints below.
 *   /api/stages       this process's stages in the order they were given
 *                     (pipeline order for `run all`): records, dead letters,
 *                     lag, partitions from dp_runtime_view_get; and documents
 *                     per job state from upload_pipeline.upload_jobs (one
 *                     query, kept for a second).
 *   /api/document?id= a job's state and its events timeline.
 *   /api/dead-letters the 20 newest dead letters of this topic prefix.
 * PostgreSQL is reached through one connection of the dashboard's own,
 * opened on first use and dropped on any failure (reopened next time),
 * behind one mutex; never the stages' connections.
 */
#ifndef DP_UI_H
#define DP_UI_H

#include "config.h"
#include "pg.h"
#include "runtime.h"

typedef struct dp_ui dp_ui;

/* The runtimes and cfg must outlive the dashboard. */
dp_ui *dp_ui_new(const dp_config *cfg, dp_runtime *const *rts, int n);
void dp_ui_free(dp_ui *u);

/* Answers url (id: the "id" query argument, or NULL) into body with its
 * content type: the HTTP status, or 0 when url is not the dashboard's. */
unsigned dp_ui_serve(dp_ui *u, const char *url, const char *id, const char **type,
                     dp_buf *body);

#endif

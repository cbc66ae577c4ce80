-- docpipe retry's runs: a selection of documents worked through in chunks,
-- in document id order, each chunk committed on its own.
--
-- A run is known by its selector, the canonical text of the arguments that
-- chose its documents (--from, --user, --state, --since, --until, --all,
-- the named ids' digest).  after_document is the last document id of the
-- last committed chunk, written in that chunk's transaction: an interrupted
-- run, started again with the same arguments, continues after it, so a
-- document the run already sent (which, from complete, may be complete
-- again by then) is not sent twice.  --since and --until are kept as the
-- first session resolved them ("yesterday" stays the same day).  At most
-- one unfinished run per selector; the running process holds a session
-- advisory lock on (4242002, run_id).
CREATE TABLE upload_pipeline.retry_runs (
    run_id         bigserial   PRIMARY KEY,
    selector       text        NOT NULL,
    since_at       timestamptz,
    until_at       timestamptz,
    after_document uuid,                  -- NULL: no chunk committed yet
    done           bigint      NOT NULL DEFAULT 0, -- documents looked at
    sent           bigint      NOT NULL DEFAULT 0, -- of which sent again
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,           -- NULL: unfinished
    abandoned      boolean     NOT NULL DEFAULT false -- ended by --restart
);
CREATE UNIQUE INDEX retry_runs_unfinished ON upload_pipeline.retry_runs (selector)
    WHERE finished_at IS NULL;

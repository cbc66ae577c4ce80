-- The embedding batches embed-plan cut a document into, and which of them
-- have been released to <prefix>embed-batches.  embed-plan releases the
-- first ones (at most embed_window_tokens estimated tokens, at least one
-- batch); gather releases the next ones as earlier ones are recorded in
-- embedding_batches.  So a huge document holds only a window of batches in
-- the embed stage's partitions at a time, and a small one submitted after
-- it does not queue behind all of its batches (docs/design.md, "Fair
-- shares and bounded passes").  Rewritten whenever the document is
-- planned again (a retry, a replay).
CREATE TABLE upload_pipeline.embed_batch_plan (
    document_id uuid    NOT NULL,
    batch_index int     NOT NULL,
    first_ord   int     NOT NULL,
    count       int     NOT NULL,
    tokens      bigint  NOT NULL,   -- estimated, as the rate limiter counts them
    released    boolean NOT NULL,
    PRIMARY KEY (document_id, batch_index)
);

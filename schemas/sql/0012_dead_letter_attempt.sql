-- The docpipe-attempt header a dead letter was published with (the id of
-- the batch attempt that committed it, with its partition's epoch and
-- position), so `docpipe dlq show` prints the headers exactly as sent.
ALTER TABLE docpipe.dp_dead_letters ADD COLUMN attempt text;

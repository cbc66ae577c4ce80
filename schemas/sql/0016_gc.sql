-- Retention (`docpipe gc`, cli/gc.c; docs/operations.md, "Retention").
--
-- dp_attempts grows by a row per committed batch.  A row may go only once
-- no consumer can still read a record that carries its attempt id: a
-- consumer that found no row would take the record for one of an aborted
-- attempt and skip it.  gc proves that with marks: a mark is the set of
-- log ends of every stage's input partitions, read after an instant
-- (horizon) before which every attempt had ended, so every output of those
-- attempts lies below the mark.  Once every stage's committed position
-- reached its partitions' ends in a mark, the attempts committed before
-- its horizon were read and decided by everyone, and their rows go.
CREATE TABLE docpipe.dp_gc_marks (
    prefix    text        NOT NULL,   -- the topic prefix gc ran under
    horizon   timestamptz NOT NULL,
    group_id  text        NOT NULL,
    topic     text        NOT NULL,
    partition int         NOT NULL,
    log_start bigint      NOT NULL,
    log_end   bigint      NOT NULL,
    PRIMARY KEY (prefix, horizon, group_id, topic, partition)
);

-- Events are removed by age: without this index every gc read them all.
CREATE INDEX events_ts ON upload_pipeline.events (ts);

-- Resolved dead letters are removed by the age of their resolution.
CREATE INDEX dp_dead_letters_resolved ON docpipe.dp_dead_letters (resolved_at)
    WHERE resolved_at IS NOT NULL;

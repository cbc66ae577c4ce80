-- Commit visibility (docs/design.md, "Acting only on committed batches").
--
-- Every attempt at settling a batch has a random 64-bit id, carried by each
-- of its outputs and dead letters in the header docpipe-attempt together
-- with the epoch and the committed position of the record's input
-- partition when the attempt began.  The attempt's transaction inserts its
-- row here with the fenced offset update, so the row exists if and only if
-- the attempt committed.  A consumer acts on a record whose attempt row it
-- can see, skips one whose attempt provably aborted (the partition's epoch
-- or position moved on without it), and waits for the rest.
CREATE TABLE docpipe.dp_attempts (
    attempt_id   bigint      PRIMARY KEY,
    group_id     text        NOT NULL,
    topic        text        NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dp_attempts_committed_at ON docpipe.dp_attempts (committed_at);

-- Watermarks compare (epoch, offset, index): a replay or a new owner of the
-- upstream partition publishes under a higher epoch, so its outputs pass.
ALTER TABLE docpipe.dp_dedup ADD COLUMN src_epoch bigint NOT NULL DEFAULT 0;

-- Offsets below replay_until were processed before a replay moved the
-- partition back: records there are replays (dp_record.replay).
ALTER TABLE docpipe.dp_offsets ADD COLUMN replay_until bigint;

-- Records that could not be read because the log no longer held them
-- (retention, DeleteRecords, a recreated topic): the stage resumed at the
-- earliest retained offset and wrote down what it never saw.
CREATE TABLE docpipe.dp_offset_gaps (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    from_offset bigint      NOT NULL,
    to_offset   bigint      NOT NULL,       -- exclusive: where it resumed
    owner       text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Replays asked for by `docpipe replay`, newest last.
CREATE TABLE docpipe.dp_replays (
    id          bigserial   PRIMARY KEY,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    from_offset bigint,                     -- the position before
    to_offset   bigint      NOT NULL,       -- the position set
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Whether the attempt that published a record committed: for tools that
-- read docpipe's topics themselves (the same rule the runtime applies).
CREATE FUNCTION docpipe.dp_attempt_committed(id bigint) RETURNS boolean
    LANGUAGE sql STABLE AS
    'SELECT EXISTS (SELECT 1 FROM docpipe.dp_attempts WHERE attempt_id = id)';

-- The stage runtime's own tables (consumer/).
--
-- dp_offsets is the source of truth for consumer offsets: Kafka's committed
-- offsets are never used.  epoch is bumped by every claim of a partition; a
-- commit is a compare-and-set on (epoch, next_offset), so an instance that
-- lost the partition (or a stalled zombie) cannot advance it.
CREATE SCHEMA IF NOT EXISTS docpipe;

CREATE TABLE docpipe.dp_offsets (
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    next_offset bigint,                 -- NULL: never committed
    epoch       bigint      NOT NULL,
    owner       text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Highest (source offset, output index) consumed from each upstream stream,
-- per input partition: records a crashed or fenced upstream instance
-- published twice are recognised and skipped.  Written in the same
-- transaction as dp_offsets.
CREATE TABLE docpipe.dp_dedup (
    group_id   text   NOT NULL,
    topic      text   NOT NULL,
    partition  int    NOT NULL,
    stream     text   NOT NULL,          -- upstream group/topic/partition
    src_offset bigint NOT NULL,
    src_index  int    NOT NULL,
    PRIMARY KEY (group_id, topic, partition, stream)
);

-- Every dead letter, recorded in the transaction that moves the offset past
-- it; the copy on the dead-letter topic carries the same facts as headers.
CREATE TABLE docpipe.dp_dead_letters (
    group_id       text        NOT NULL,
    topic          text        NOT NULL,
    partition      int         NOT NULL,
    "offset"       bigint      NOT NULL,
    stage          text        NOT NULL,
    dlq_topic      text        NOT NULL,
    record_key     bytea,
    record_value   bytea,
    record_ts      timestamptz,
    attempts       int         NOT NULL,
    category       text        NOT NULL
        CHECK (category IN ('permanent', 'retryable', 'poison')),
    error          text        NOT NULL,
    first_failure  timestamptz NOT NULL,
    last_failure   timestamptz NOT NULL,
    correlation_id text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition, "offset")
);

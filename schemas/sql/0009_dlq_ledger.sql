-- Dead letters worked off by `docpipe dlq` (cli/dlq.c, cli/dlq_redrive.c).
--
-- A dead letter gets a short id to be named by on the command line, and a
-- resolution: resolved_at and resolution stay NULL until the record has gone
-- back to its stage's input topic (`redriven`).  A resolved dead letter is
-- never sent again.
--
-- dp_dlq_redrives is the ledger of sends, one row per attempt to send a dead
-- letter back.  The row is committed as 'sending' before the record is
-- produced, with the end offset of the target partition observed before it:
-- whatever happens to the process afterwards, the record (it carries the
-- row's redrive_id in its docpipe-redrive-id header) can only be at or after
-- scan_from.  Once Kafka confirms it with an offset, the row becomes 'sent'
-- in the transaction that resolves the dead letter.  A row left 'sending' by
-- a run that died is settled by the next run: it fences the dead run's
-- Kafka transaction, then reads the partition from scan_from: the record
-- found makes the row 'sent', none makes it 'lost' (that attempt is over;
-- the dead letter may be sent again).  At most one attempt per dead letter
-- is 'sending' or 'sent': the database refuses a second.  docs/design.md,
-- "Sending dead letters back", argues the whole protocol.
--
-- Rows go with their dead letter (`docpipe dlq purge`).
ALTER TABLE docpipe.dp_dead_letters
    ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN resolved_at timestamptz,
    ADD COLUMN resolution text CHECK (resolution IN ('redriven')),
    ADD CONSTRAINT dp_dead_letters_id_key UNIQUE (id),
    ADD CONSTRAINT dp_dead_letters_resolution_complete
        CHECK ((resolved_at IS NULL) = (resolution IS NULL));

-- list --since, purge --older-than
CREATE INDEX dp_dead_letters_created ON docpipe.dp_dead_letters (created_at);

CREATE TABLE docpipe.dp_dlq_redrives (
    redrive_id     uuid        PRIMARY KEY,
    dead_letter_id bigint      NOT NULL
        REFERENCES docpipe.dp_dead_letters (id) ON DELETE CASCADE,
    topic          text        NOT NULL,   -- where the record is sent
    partition      int         NOT NULL,
    scan_from      bigint      NOT NULL,   -- the partition's end offset before sending
    state          text        NOT NULL CHECK (state IN ('sending', 'sent', 'lost')),
    sent_offset    bigint,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz,
    CHECK ((state = 'sent') = (sent_offset IS NOT NULL)),
    CHECK ((state = 'sending') = (finished_at IS NULL))
);

CREATE UNIQUE INDEX dp_dlq_redrives_one_live
    ON docpipe.dp_dlq_redrives (dead_letter_id) WHERE state <> 'lost';
CREATE INDEX dp_dlq_redrives_sending
    ON docpipe.dp_dlq_redrives (topic, partition) WHERE state = 'sending';

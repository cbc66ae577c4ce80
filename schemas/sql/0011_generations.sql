-- Generations (docs/design.md, "Replaying a stage").  A job's generation
-- grows each time its work is started over from a stage (`docpipe replay`,
-- `docpipe retry`); every record carries the generation it was made for
-- (header docpipe-generation), and a stage discards work of an older
-- generation still in flight.  A replay's move back is an event of its own.
ALTER TABLE upload_pipeline.upload_jobs ADD COLUMN generation int NOT NULL DEFAULT 0;

ALTER TABLE upload_pipeline.events DROP CONSTRAINT events_type_check;
ALTER TABLE upload_pipeline.events ADD CONSTRAINT events_type_check
    CHECK (type IN ('stage_started', 'stage_done', 'retry', 'error', 'finalized',
                    'replay'));

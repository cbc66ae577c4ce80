-- Results of the demonstration pass-through stage (stages/demo.c): one row
-- per processed record.  Deliberately no unique key, so a duplicate effect
-- shows up as a second row instead of being hidden by a conflict clause.
CREATE TABLE docpipe.demo_results (
    id         text        NOT NULL,
    seq        bigint      NOT NULL,
    topic      text        NOT NULL,
    partition  int         NOT NULL,
    "offset"   bigint      NOT NULL,
    body       text        NOT NULL,
    instance   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

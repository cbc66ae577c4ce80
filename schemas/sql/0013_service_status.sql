-- What each docpipe process sees of the outside services, written every
-- few seconds by its stages (consumer/services.c): whether the service's
-- circuit breaker is open and whether calls wait for its rate limit.  For
-- `docpipe wait` and the dashboard to say what holds documents up; rows
-- not updated for a while belong to processes that stopped.
CREATE TABLE docpipe.dp_service_status (
    instance     text        NOT NULL,
    service      text        NOT NULL,
    breaker      text        NOT NULL,   -- closed, half_open, open
    in_flight    bigint      NOT NULL,
    rate_limited boolean     NOT NULL,   -- a call waited for the rate limit lately
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (instance, service)
);

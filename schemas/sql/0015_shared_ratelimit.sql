-- The embedding service's rate limit shared by every embed instance (and
-- `docpipe search`) that calls the same account: a sliding 60 s log of the
-- admitted requests per limit key, the same rule as the per-process limiter
-- (consumer/ratelimit.h), kept here so that N instances together send at
-- most embed_rpm requests and embed_tpm estimated tokens in any minute.
-- The key names the service, the model and a short hash of the API key,
-- never the key itself (stages/embed_client.c).  Rows older than a minute
-- are deleted as new ones are admitted.  See docs/design.md, "One rate
-- limit per account".
CREATE TABLE upload_pipeline.rate_limit_admissions (
    limit_key text        NOT NULL,
    at        timestamptz NOT NULL,   -- the server's clock: one clock for all
    tokens    bigint      NOT NULL,
    id        bigserial,
    PRIMARY KEY (limit_key, at, id)
);

-- Admits a request of `want` tokens under limit_key if the last 60 s
-- (including it) hold at most rpm requests and tpm tokens (<= 0: no limit on
-- that count; a request over the whole token budget is admitted when the
-- window holds no tokens) and returns 0; otherwise admits nothing and
-- returns the ms to wait before asking again.  Callers run it alone in
-- autocommit: the advisory lock serialises the callers of one key for the
-- few statements below only, and each statement of a plpgsql function
-- sees what the previous holder committed.
CREATE FUNCTION upload_pipeline.rate_limit_take(k text, rpm int, tpm int, want bigint)
RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    now_ timestamptz;
    n bigint;
    held bigint;
    room bigint;
    t timestamptz;
    w double precision := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('docpipe rate limit ' || k, 0));
    now_ := clock_timestamp();
    DELETE FROM upload_pipeline.rate_limit_admissions
     WHERE limit_key = k AND at <= now_ - interval '60 seconds';
    SELECT count(*), coalesce(sum(tokens), 0) INTO n, held
      FROM upload_pipeline.rate_limit_admissions WHERE limit_key = k;
    IF rpm > 0 AND n >= rpm THEN
        -- The oldest admissions must leave until one slot is free.
        SELECT a.at INTO t FROM upload_pipeline.rate_limit_admissions a
         WHERE a.limit_key = k ORDER BY a.at, a.id OFFSET n - rpm LIMIT 1;
        w := greatest(w, extract(epoch FROM t + interval '60 seconds' - now_) * 1000);
    END IF;
    IF tpm > 0 AND want > 0 THEN
        room := CASE WHEN want <= tpm THEN tpm - want ELSE 0 END;
        IF held > room THEN
            -- The admission whose expiry brings the window down to room.
            SELECT s.at INTO t FROM (
                SELECT a.at, a.id, sum(a.tokens) OVER (ORDER BY a.at, a.id) AS c
                  FROM upload_pipeline.rate_limit_admissions a WHERE a.limit_key = k) s
             WHERE held - s.c <= room ORDER BY s.at, s.id LIMIT 1;
            w := greatest(w, extract(epoch FROM t + interval '60 seconds' - now_) * 1000);
        END IF;
    END IF;
    IF w <= 0 THEN
        INSERT INTO upload_pipeline.rate_limit_admissions (limit_key, at, tokens)
        VALUES (k, now_, greatest(want, 0));
        RETURN 0;
    END IF;
    RETURN greatest(1, ceil(w))::bigint;
END
$$;

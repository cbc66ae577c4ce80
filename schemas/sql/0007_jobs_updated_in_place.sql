-- Job and document rows are updated in place, beside their old version.
--
-- A job moves through about nine states and its document row follows it.
-- An update that changes no indexed column and finds room on the row's page
-- is a HOT update: no new index entries, and the old version is pruned with
-- the page.  Two things prevented that:
--   - the index on upload_jobs (status, created_at), the original's job-queue
--     poll.  Kafka replaced that poll and nothing reads jobs by state and age
--     any more, but every state change wrote a new entry into each of the
--     table's five indexes.  `docpipe status` counts states with a scan;
--   - full pages: the next version had to go to another page.  Pages are now
--     filled to half, so a row's next versions fit beside it.
-- Measured on 1,000 documents (bench_pipeline a, pg_stat_statements): the
-- batch transition statement went from 10.1 to 6.0 ms per call; HOT updates
-- from under a third of the updates to about three quarters.
DROP INDEX IF EXISTS upload_pipeline.upload_jobs_status_created;
ALTER TABLE upload_pipeline.upload_jobs SET (fillfactor = 50);
ALTER TABLE upload_pipeline.documents SET (fillfactor = 50);

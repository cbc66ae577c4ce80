-- No planner statistics for embedding vectors.
--
-- ANALYZE (autovacuum's too) builds element statistics for array columns:
-- every element of every sampled row goes through a hash table, 1536 per
-- vector for up to 30,000 sampled rows.  During a pipeline benchmark that
-- was the largest single use of PostgreSQL's CPU.  No query filters or joins
-- on vector elements, so the statistics were never used.
ALTER TABLE upload_pipeline.document_vector_buffer
    ALTER COLUMN vector SET STATISTICS 0;
ALTER TABLE upload_pipeline.document_chunks
    ALTER COLUMN embedding SET STATISTICS 0;

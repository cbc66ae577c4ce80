-- Embedding vectors are stored out of line without compression.
--
-- A vector of 1536 float4 is about 6 KB, above the TOAST threshold, so
-- PostgreSQL tries to compress each one, in the buffer and again in the
-- final table.  Model output does not compress: the attempt only costs CPU
-- (about two thirds of the insert's time, measured on 5,000 vectors).
-- EXTERNAL keeps them out of line and uncompressed.  Rows already stored
-- keep their form.
ALTER TABLE upload_pipeline.document_vector_buffer
    ALTER COLUMN vector SET STORAGE EXTERNAL;
ALTER TABLE upload_pipeline.document_chunks
    ALTER COLUMN embedding SET STORAGE EXTERNAL;

-- The document domain, as in the original system (schema upload_pipeline),
-- with what it meant where it had gaps: events are really written, the final
-- table is really filled (vectors as real[]: pgvector is not in Debian 12),
-- and intake has a failure state of its own.
CREATE SCHEMA IF NOT EXISTS upload_pipeline;

CREATE TABLE upload_pipeline.documents (
    document_id       uuid        PRIMARY KEY,
    user_id           uuid        NOT NULL,
    filename          text        NOT NULL,
    mime              text        NOT NULL,
    bytes_len         bigint      NOT NULL,
    file_sha256       text        NOT NULL,
    parsed_sha256     text,
    raw_path          text        NOT NULL,
    parsed_path       text,
    processing_status text        NOT NULL DEFAULT 'uploaded',
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, file_sha256)
);

CREATE TABLE upload_pipeline.upload_jobs (
    job_id                  uuid        PRIMARY KEY,
    user_id                 uuid        NOT NULL,
    document_id             uuid        NOT NULL UNIQUE
        REFERENCES upload_pipeline.documents (document_id),
    status                  text        NOT NULL CHECK (status IN (
        'uploaded', 'parse_queued', 'parsed', 'parse_validated', 'chunking',
        'chunks_stored', 'embedding_queued', 'embedding_in_progress',
        'embeddings_stored', 'complete',
        'failed_upload', 'failed_parse', 'failed_chunking', 'failed_embedding')),
    raw_path                text        NOT NULL,
    parsed_path             text,
    parsed_sha256           text,
    chunks_version          text        NOT NULL DEFAULT 'markdown-simple@1',
    embed_model             text        NOT NULL DEFAULT 'text-embedding-3-small',
    embed_version           text        NOT NULL DEFAULT '1',
    embed_batches_total     int,
    progress                jsonb       NOT NULL DEFAULT '{}',
    retry_count             int         NOT NULL DEFAULT 0,
    last_error              jsonb,
    correlation_id          uuid        NOT NULL,
    processing_started_at   timestamptz,
    processing_completed_at timestamptz,
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upload_jobs_status_created ON upload_pipeline.upload_jobs (status, created_at);
CREATE INDEX upload_jobs_correlation ON upload_pipeline.upload_jobs (correlation_id);
CREATE INDEX upload_jobs_parsed_sha ON upload_pipeline.upload_jobs (parsed_sha256);

CREATE TABLE upload_pipeline.document_chunk_buffer (
    chunk_id        uuid        PRIMARY KEY,
    document_id     uuid        NOT NULL,
    chunk_ord       int         NOT NULL,
    chunker_name    text        NOT NULL,
    chunker_version text        NOT NULL,
    chunk_sha       text        NOT NULL,
    text            text        NOT NULL,
    meta            jsonb       NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, chunker_name, chunker_version, chunk_ord)
);

CREATE TABLE upload_pipeline.document_vector_buffer (
    document_id   uuid        NOT NULL,
    chunk_id      uuid        NOT NULL
        REFERENCES upload_pipeline.document_chunk_buffer (chunk_id),
    embed_model   text        NOT NULL,
    embed_version text        NOT NULL,
    batch_index   int         NOT NULL,
    vector        real[]      NOT NULL,
    vector_sha    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (chunk_id, embed_model, embed_version)
);
CREATE INDEX document_vector_buffer_doc ON upload_pipeline.document_vector_buffer (document_id);

-- Fan-in bookkeeping of the gather stage: one row per stored embedding batch.
CREATE TABLE upload_pipeline.embedding_batches (
    document_id uuid        NOT NULL,
    batch_index int         NOT NULL,
    vectors     int         NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (document_id, batch_index)
);

CREATE TABLE upload_pipeline.events (
    event_id       bigserial   PRIMARY KEY,
    job_id         uuid,
    document_id    uuid        NOT NULL,
    ts             timestamptz NOT NULL DEFAULT clock_timestamp(),
    type           text        NOT NULL
        CHECK (type IN ('stage_started', 'stage_done', 'retry', 'error', 'finalized')),
    severity       text        NOT NULL CHECK (severity IN ('info', 'warn', 'error')),
    code           text        NOT NULL,
    stage          text        NOT NULL,
    from_status    text,
    to_status      text,
    payload        jsonb       NOT NULL DEFAULT '{}',
    correlation_id uuid
);
CREATE INDEX events_document_ts ON upload_pipeline.events (document_id, ts DESC);
CREATE INDEX events_job_ts ON upload_pipeline.events (job_id, ts DESC);

-- The final table: chunks with their embeddings, ready for search.
CREATE TABLE upload_pipeline.document_chunks (
    chunk_id        uuid        PRIMARY KEY,
    document_id     uuid        NOT NULL,
    chunker_name    text        NOT NULL,
    chunker_version text        NOT NULL,
    chunk_ord       int         NOT NULL,
    text            text        NOT NULL,
    chunk_sha       text        NOT NULL,
    meta            jsonb       NOT NULL DEFAULT '{}',
    embed_model     text        NOT NULL,
    embed_version   text        NOT NULL,
    embedding       real[]      NOT NULL,
    vector_dim      int         NOT NULL,
    vector_sha      text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, chunker_name, chunker_version, chunk_ord)
);

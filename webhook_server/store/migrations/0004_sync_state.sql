-- Where each SyncSchedule stands. A run commits each page's events and its row here in one
-- transaction, so a run killed at any moment resumes at the first page not committed: nothing is
-- stored twice (the events' dedup would catch it anyway) and nothing is skipped.
CREATE TABLE dfm_sync_state (
    schedule       text        PRIMARY KEY,          -- the SyncSchedule, <namespace>/<name>
    fingerprint    text        NOT NULL,             -- of the request settings the row is about
    resume         jsonb,                            -- the next page of an unfinished run
    run_id         text,                             -- the unfinished run's id
    run_started_at timestamptz,
    run_items      bigint      NOT NULL DEFAULT 0,   -- items the unfinished run committed so far
    run_watermark  jsonb,                            -- greatest incremental value it committed
    watermark      jsonb,                            -- where the next complete walk starts
    circuit        jsonb,                            -- the upstream circuit breaker, across runs
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- The event store. Events are range-partitioned by UTC day on received_at so that retention is
-- a partition drop. A partitioned table cannot hold a unique index without the partition key, so
-- the dedup keys live in their own small table: a redelivery after midnight is still a duplicate.
CREATE TABLE webhook_events (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    event_type  text,
    received_at timestamptz NOT NULL,
    request_id  text        NOT NULL,
    payload     bytea       NOT NULL,
    headers     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (source, event_id, received_at)
) PARTITION BY RANGE (received_at);

CREATE INDEX webhook_events_source_received_at ON webhook_events (source, received_at DESC);

CREATE TABLE webhook_event_ids (
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (source, event_id)
);

CREATE INDEX webhook_event_ids_received_at ON webhook_event_ids (received_at);

-- Retention per source, so a receiver that shares the database with others never drops a
-- partition another source still needs.
CREATE TABLE webhook_sources (
    source         text        PRIMARY KEY,
    retention_days integer     NOT NULL,
    last_seen_at   timestamptz NOT NULL DEFAULT now()
);

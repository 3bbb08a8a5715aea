-- The forward outbox. A source with spec.forward gets one delivery row per stored event, written
-- by the same statement as the event (webhook_server.store.insert_events), so an acknowledged
-- event always has a pending delivery. Rows are partitioned like the events (same UTC day, same
-- bounds) and dropped with them: a dead letter stays visible as long as its event is kept.
CREATE TABLE webhook_deliveries (
    source          text        NOT NULL,
    subject         text        NOT NULL DEFAULT '',
    event_id        text        NOT NULL,
    received_at     timestamptz NOT NULL,
    -- The webhook-id header: stable per stored event, header-safe (webhook_server.store.outbox).
    webhook_id      text        NOT NULL,
    -- pending -> delivered | dead
    state           text        NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    -- A claimed delivery belongs to leased_by until lease_until; then anyone may claim it.
    lease_until     timestamptz,
    leased_by       text,
    last_attempt_at timestamptz,
    -- The target's last HTTP status, and a closed-set word for the last failure (never a body).
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    -- When it was dead-lettered, and why (max_attempts, expired, gone).
    dead_at         timestamptz,
    PRIMARY KEY (source, subject, event_id, received_at)
) PARTITION BY RANGE (received_at);

-- Claiming due work, and the backlog figures (count, oldest).
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (source, next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_pending_age ON webhook_deliveries (source, received_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (source, dead_at)
    WHERE state = 'dead';

-- Whether a source forwards, as its receivers last registered it: used by inserts that do not
-- know (a sync writing into a source's store), so their events get deliveries too. And when a
-- delivery last succeeded (any replica), kept here so that it outlives the processes.
ALTER TABLE webhook_sources ADD COLUMN forward boolean NOT NULL DEFAULT false;
ALTER TABLE webhook_sources ADD COLUMN last_delivered_at timestamptz;

-- Each receiver process's circuit per target, written on every transition and refreshed while
-- the process lives (updated_at), removed when it stops: what the operator reads for status.
CREATE TABLE webhook_forward_circuits (
    source               text        NOT NULL,
    replica              text        NOT NULL,
    state                text        NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures integer     NOT NULL DEFAULT 0,
    opened_at            timestamptz,
    last_failure_at      timestamptz,
    updated_at           timestamptz NOT NULL,
    PRIMARY KEY (source, replica)
);

-- A database that already has event partitions gets the matching delivery partitions.
DO $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = 'webhook_events' AND c.relname LIKE 'webhook\_events\_p%'
    LOOP
        EXECUTE format(
            'CREATE TABLE IF NOT EXISTS %I PARTITION OF webhook_deliveries %s',
            'webhook_deliveries_p' || substr(part.relname, length('webhook_events_p') + 1),
            part.bound
        );
    END LOOP;
END
$$;
